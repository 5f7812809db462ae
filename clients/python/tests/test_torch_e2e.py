"""End to end with real torch and transformers: examples/hf_trainer_mixture.py fine-tunes the tiny
Llama fixture with transformers.Trainer and MosCallback against live `mos-runtime serve`
processes. Skipped (with the reason) where torch, transformers or accelerate is missing, or no
mos-runtime binary is built; scripts/python-e2e.sh makes a virtual environment with them and
runs this file.

What it shows:
- a 20-step Trainer run with the callback moves the mixture (4 updates, at steps 5/10/15/20);
- the service's mixture.jsonl replays bit for bit (`mos-runtime replay --log`);
- the examples trained on follow the mixture in effect (chi-square), in the run and over a
  larger draw through a DataLoader with workers;
- a run stopped at step 10 and resumed from its checkpoint trains on the same examples as the
  uninterrupted run, and its service's log is identical byte for byte;
- two gloo ranks under torchrun draw disjoint examples, adopt the same versions at the same
  rounds, and together draw exactly the single-process plan;
- the probes: DIFF at theta_0 gives a ratio of exactly 1 and the NLL equals transformers' own
  response-only loss; COSSIM embeddings post to a cossim service.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

from _support import REPO, ServiceProcess, chi_square, chi_square_p, closed_port, runtime_bin

MISSING = [m for m in ("torch", "transformers", "accelerate") if importlib.util.find_spec(m) is None]
EXAMPLE = REPO / "examples" / "hf_trainer_mixture.py"
FIXTURE = REPO / "tests" / "fixtures" / "tiny-llama"
SCHEDULER = 'reward = "diff"\nema = true\nscorer_lr = 1e-2\nscorer_steps = 100'
STEPS, EVERY, BATCH = 20, 5, 4


def skip_reason() -> Optional[str]:
    if MISSING:
        return (f"{', '.join(MISSING)} not installed in {sys.executable} "
                "(scripts/python-e2e.sh makes an environment with them)")
    if runtime_bin() is None:
        return "no mos-runtime binary (cargo build --release, or set MOS_RUNTIME_BIN)"
    return None


# scripts/python-e2e.sh sets MOS_REQUIRE_TORCH=1: there a skip would hide a broken environment.
if os.environ.get("MOS_REQUIRE_TORCH") and skip_reason() is not None:
    raise RuntimeError(f"MOS_REQUIRE_TORCH is set but {skip_reason()}")


def run(cmd: List[str], timeout: float = 600) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = p.stdout + p.stderr
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{out[-6000:]}")
    return out


def example(service: ServiceProcess, out_dir: str, record: str, *extra: str,
            ranks: int = 1) -> str:
    args = [str(EXAMPLE), "--url", service.url, "--token", service.token,
            "--output-dir", out_dir, "--record", record, "--steps", str(STEPS),
            "--update-every", str(EVERY), "--batch-size", str(BATCH), *extra]
    if ranks == 1:
        return run([sys.executable, *args])
    return run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                "--master-addr", "127.0.0.1", "--master-port", str(closed_port()), *args])


def load(path: str) -> Dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def mixtures(service: ServiceProcess) -> Dict[int, List[float]]:
    """Version -> weights, from the service's own history."""
    from mos_client import MosClient

    h = MosClient(service.url).history()
    out = {0: h["start"]["prior"]}
    out.update({u["version"]: u["after"] for u in h["updates"]})
    return out


def dataset_of(index: int, offsets: List[int]) -> int:
    return max(i for i, o in enumerate(offsets) if o <= index)


@unittest.skipIf(skip_reason() is not None, skip_reason() or "")
class TrainerEndToEnd(unittest.TestCase):
    tmp: tempfile.TemporaryDirectory
    base: ServiceProcess
    base_out: str
    base_record: Dict[str, Any]

    @classmethod
    def setUpClass(cls) -> None:
        cls.tmp = tempfile.TemporaryDirectory(prefix="mos-e2e-")
        cls.base = ServiceProcess(SCHEDULER).__enter__()
        rec = os.path.join(cls.tmp.name, "base.json")
        cls.base_out = example(cls.base, os.path.join(cls.tmp.name, "base"), rec)
        cls.base_record = load(rec)
        print(f"\n--- the 20-step Trainer run ---\n"
              + "\n".join(l for l in cls.base_out.splitlines()
                          if l.startswith(("[mos]", "done:"))), flush=True)

    @classmethod
    def tearDownClass(cls) -> None:
        cls.base.__exit__(None, None, None)
        cls.tmp.cleanup()

    def test_a_trainer_run_with_the_callback_moves_the_mixture(self) -> None:
        history = self.base_record["history"]
        self.assertEqual([(h["step"], h["version"]) for h in history],
                         [(0, 0), (5, 1), (10, 2), (15, 3), (20, 4)])
        mix = mixtures(self.base)
        moved = max(abs(a - b) for a, b in zip(mix[0], mix[4]))
        self.assertGreater(moved, 1e-3, f"the mixture did not move: {mix}")
        self.assertIn("[mos] step    20 mixture v4", self.base_out)
        self.assertEqual(len(self.base_record["drawn"]), STEPS * BATCH)

    def test_the_services_mixture_log_replays_bit_for_bit(self) -> None:
        r = self.base.replay()
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("replay OK: 4 updates", r.stdout)
        print(f"\n{r.stdout.strip()}", flush=True)

    def test_the_examples_trained_on_follow_the_mixture_in_effect(self) -> None:
        rec = self.base_record
        mix = mixtures(self.base)
        switches = [(h["at_round"], h["version"]) for h in rec["history"]]
        k = len(rec["names"])
        stat, dof = 0.0, 0
        for n, (at, version) in enumerate(switches):
            end = switches[n + 1][0] if n + 1 < len(switches) else len(rec["drawn"])
            part = rec["drawn"][at:end]
            if not part:
                continue
            counts = Counter(dataset_of(g, rec["offsets"]) for g in part)
            s, d = chi_square([counts[i] for i in range(k)], mix[version])
            stat, dof = stat + s, dof + d
        p = chi_square_p(stat, dof)
        print(f"\nchi-square of the run's {len(rec['drawn'])} examples against the mixture in "
              f"effect: {stat:.2f} on {dof} dof, p = {p:.3f}", flush=True)
        self.assertGreater(p, 1e-3)

    def test_a_resumed_run_continues_the_same_sample_stream(self) -> None:
        out = os.path.join(self.tmp.name, "resumed")
        first, second = os.path.join(self.tmp.name, "r1.json"), os.path.join(self.tmp.name, "r2.json")
        with ServiceProcess(SCHEDULER) as service:
            example(service, out, first, "--stop-at", "10")
            self.assertTrue(os.path.exists(os.path.join(out, "checkpoint-10", "mos_state.json")))
            example(service, out, second, "--resume")
            a, b = load(first), load(second)
            self.assertEqual((a["steps"], b["start_step"], b["steps"]), (10, 10, 20))
            self.assertEqual(a["drawn"] + b["drawn"], self.base_record["drawn"])
            self.assertEqual(b["history"], self.base_record["history"])
            # Same examples, same model, same probes: the service saw the same updates.
            self.assertEqual(service.log_path.read_bytes(), self.base.log_path.read_bytes())

    def test_two_gloo_ranks_draw_disjoint_slices_of_one_plan_and_adopt_the_same_versions(self) -> None:
        from mos_client import MixturePlan

        rec = os.path.join(self.tmp.name, "ddp.{rank}.json")
        with ServiceProcess(SCHEDULER) as service:
            out = example(service, os.path.join(self.tmp.name, "ddp"), rec, ranks=2)
            self.assertIn("[mos] step    20 mixture v4", out)
            r = [load(rec.replace("{rank}", str(k))) for k in (0, 1)]
            mix = mixtures(service)
            self.assertEqual(service.replay().returncode, 0)
        self.assertEqual([x["world"] for x in r], [2, 2])
        self.assertEqual(r[0]["history"], r[1]["history"])
        self.assertEqual([h["version"] for h in r[0]["history"]], [0, 1, 2, 3, 4])
        self.assertEqual([len(x["drawn"]) for x in r], [STEPS * BATCH] * 2)
        # The single-process plan with the same switches (at global position round x 2).
        plan = MixturePlan(r[0]["sizes"], seed=0, names=r[0]["names"])
        global_stream = []
        switches = {h["at_round"] * 2: h["version"] for h in r[0]["history"]}
        for g in range(2 * STEPS * BATCH):
            if g in switches:
                plan.set_mixture(switches[g], mix[switches[g]])
            i, j = plan.draw()
            global_stream.append(r[0]["offsets"][i] + j)
        interleaved = [r[g % 2]["drawn"][g // 2] for g in range(2 * STEPS * BATCH)]
        self.assertEqual(interleaved, global_stream)
        # Disjoint within each dataset's epoch (none of the three wraps in 160 draws).
        sizes = r[0]["sizes"]
        drawn = Counter(dataset_of(g, r[0]["offsets"]) for g in interleaved)
        self.assertTrue(all(drawn[i] <= sizes[i] for i in drawn), (drawn, sizes))
        self.assertFalse(set(r[0]["drawn"]) & set(r[1]["drawn"]))


@unittest.skipIf(skip_reason() is not None, skip_reason() or "")
class TorchPieces(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        import torch
        from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

        torch.manual_seed(0)
        cls.tok = PreTrainedTokenizerFast(tokenizer_file=str(FIXTURE / "tokenizer.json"))
        cls.model = AutoModelForCausalLM.from_pretrained(str(FIXTURE), dtype=torch.float32)
        demo = REPO / "data" / "demo"
        cls.data = {}
        for n in ("maths", "code", "qa"):
            with open(demo / f"{n}.train.jsonl") as f:
                cls.data[n] = [json.loads(line) for line in f]

    def test_diff_probes_at_theta_0_give_a_ratio_of_one_and_the_models_own_loss(self) -> None:
        import torch
        from mos_client import DiffProbes
        from mos_client.hf import CausalLMCollator
        from mos_client.probes import split_example

        probes = DiffProbes(self.tok, self.data, probe_size=5, seed=3, max_length=64, batch_size=2)
        probes.prepare(self.model)
        stats = probes.compute(self.model)["nll"]
        self.assertEqual(stats["now"], stats["initial"])  # method 7e: exactly 1 at step 0
        self.assertEqual([len(r) for r in stats["now"]], [5, 5, 5])
        # The first probe example of qa, scored by transformers' own response-only loss.
        example = self.data["qa"][probes.ids[2][0]]
        batch = CausalLMCollator(self.tok, max_length=64)([example])
        with torch.no_grad():
            loss = float(self.model(**batch).loss)
        self.assertAlmostEqual(stats["now"][2][0], loss, delta=1e-5)
        self.assertTrue(split_example(example)[0].startswith("<|im_start|>user"))
        # The same seed draws the same probe examples; the state restores them and theta_0.
        again = DiffProbes(self.tok, self.data, probe_size=5, seed=3, max_length=64)
        self.assertEqual(again.ids, probes.ids)
        other = DiffProbes(self.tok, self.data, probe_size=5, seed=4, max_length=64)
        other.load_state_dict(json.loads(json.dumps(probes.state_dict())))
        self.assertEqual((other.ids, other.initial), (probes.ids, probes.initial))

    def test_cossim_probes_post_to_a_cossim_service(self) -> None:
        from mos_client import CossimProbes, MosClient

        probes = CossimProbes(self.tok, self.data, probe_size=4, max_length=64)
        emb = probes.compute(self.model)["embeddings"]
        self.assertEqual([len(e) for e in emb], [self.model.config.hidden_size] * 3)
        with ServiceProcess('reward = "cossim"') as service:
            client = MosClient(service.url, token=service.token)
            client.register({n: len(d) for n, d in self.data.items()})
            record = client.post_embeddings(5, emb)
            self.assertEqual((record["version"], record["reward"]), (1, "cossim"))
            # Each reward is the mean cosine to all datasets, its own 1 included.
            self.assertTrue(all(0.0 < x <= 1.0 for x in record["raw"]), record["raw"])

    def test_a_plain_torch_loop_with_the_controller(self) -> None:
        import copy

        import torch
        from torch.utils.data import DataLoader
        from mos_client import DiffProbes, MixtureController, MixtureSampler, MosClient
        from mos_client.hf import CausalLMCollator

        model = copy.deepcopy(self.model)
        sampler = MixtureSampler(self.data, seed=1, num_samples=10 * 4)
        loader = DataLoader(sampler.dataset, batch_size=4, sampler=sampler,
                            collate_fn=CausalLMCollator(self.tok, max_length=64))
        probes = DiffProbes(self.tok, sampler.dataset, probe_size=4, max_length=64)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        with ServiceProcess(SCHEDULER) as service:
            ctl = MixtureController(MosClient(service.url, token=service.token), sampler, probes,
                                    update_every=5)
            ctl.start(model)
            records = []
            for step, batch in enumerate(loader, start=1):
                model(**batch).loss.backward()
                opt.step()
                opt.zero_grad()
                records.append(ctl.step(step, model))
            self.assertEqual([k + 1 for k, r in enumerate(records) if r], [5, 10])
            self.assertEqual(sampler.version, 2)
            last = records[-1]
            assert last is not None
            self.assertEqual(sampler.weights, last["after"])
            self.assertEqual(sum(last["counts"]), 20)  # examples drawn in steps 6..10
            # Trained: the probes' NLLs fell from theta_0, so the DIFF rewards are below 1.
            self.assertTrue(all(0.0 < x < 1.0 for x in last["raw"]), last["raw"])
            print(f"\nplain loop: DIFF rewards after 10 steps {last['raw']}", flush=True)
            self.assertEqual(service.replay().returncode, 0)

    def test_the_sampler_through_a_dataloader_with_workers_follows_the_mixture(self) -> None:
        from torch.utils.data import DataLoader
        from mos_client import MixtureSampler

        sampler = MixtureSampler(self.data, seed=5, num_samples=4000, record=True)
        weights = [0.5, 0.3, 0.2]
        sampler.set_mixture(1, weights)
        loader = DataLoader(sampler.dataset, batch_size=16, sampler=sampler, num_workers=2,
                            collate_fn=lambda b: b)
        seen = [e for batch in loader for e in batch]
        self.assertEqual(len(seen), 4000)
        self.assertEqual(seen[0], sampler.dataset[sampler.drawn[0]])
        counts = Counter(sampler.dataset.locate(g)[0] for g in sampler.drawn)
        stat, dof = chi_square([counts[i] for i in range(3)], weights)
        self.assertGreater(chi_square_p(stat, dof), 1e-3, counts)
        stat, dof = chi_square([counts[i] for i in range(3)], [0.45, 0.35, 0.2])
        self.assertLess(chi_square_p(stat, dof), 1e-6, counts)  # the test has power

    def test_the_iterable_variant_yields_the_same_stream_in_the_main_process_only(self) -> None:
        from torch.utils.data import DataLoader
        from mos_client import MixtureIterableDataset, MixtureSampler

        it = MixtureIterableDataset(self.data, seed=8, num_samples=64)
        ref = MixtureSampler(self.data, seed=8, num_samples=64)
        for x in (it, ref):
            x.set_mixture(0, [0.2, 0.2, 0.6])
        got = [e for b in DataLoader(it, batch_size=8, collate_fn=lambda b: b) for e in b]
        self.assertEqual(got, [ref.dataset[g] for g in ref])
        with self.assertRaises(Exception) as cm:
            list(DataLoader(it, batch_size=8, num_workers=1, collate_fn=lambda b: b))
        self.assertIn("main process", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
