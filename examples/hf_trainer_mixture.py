#!/usr/bin/env python3
"""Fine-tune a Hugging Face causal LM with transformers.Trainer on several demo datasets, the
mixture learned by a live `mos-runtime serve`.

    MOS_SERVICE_TOKEN=dev-token cargo run --release -- serve --config configs/service.toml &
    pip install "./clients/python[hf]"
    MOS_SERVICE_TOKEN=dev-token python3 examples/hf_trainer_mixture.py --url http://127.0.0.1:8750

    # two ranks on CPU (gloo): every rank draws its own slice of one global plan
    MOS_SERVICE_TOKEN=dev-token torchrun --nproc-per-node 2 examples/hf_trainer_mixture.py \\
        --url http://127.0.0.1:8750 --output-dir runs/hf-demo-ddp

By default it trains the tiny Llama fixture (tests/fixtures/tiny-llama, 2 layers, CPU-fast) on
maths, code and qa of data/demo, 20 steps, a mixture update every 5, and prints the mixture as
it moves. `--resume` continues from the latest checkpoint in --output-dir; `--stop-at N` stops
after step N (a stand-in for a crash, used by the end-to-end test); `--record FILE` writes, per
rank, the examples it trained on and the mixture versions it adopted (JSON; `{rank}` in FILE is
replaced by the rank).
"""

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import mos_client  # noqa: F401  (installed with pip install ./clients/python)
except ImportError:  # running from a checkout without installing
    sys.path.insert(0, str(ROOT / "clients" / "python"))

import torch  # noqa: E402
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    PreTrainedTokenizerFast,
    TrainerCallback,
    TrainingArguments,
)

from mos_client import DiffProbes, CossimProbes, MixtureSampler, MosClient  # noqa: E402
from mos_client.hf import CausalLMCollator, MosCallback, MosTrainer  # noqa: E402


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class StopAt(TrainerCallback):
    """Stops training after step `n` (its checkpoint is saved first: n is a multiple of
    --save-steps)."""

    def __init__(self, n):
        self.n = n

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= self.n:
            control.should_training_stop = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8750")
    ap.add_argument("--token", default=os.environ.get("MOS_SERVICE_TOKEN"))
    ap.add_argument("--datasets", default="maths,code,qa", help="names under --data-dir")
    ap.add_argument("--data-dir", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--model", default=str(ROOT / "tests" / "fixtures" / "tiny-llama"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--update-every", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=4, help="per device")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reward", choices=["diff", "cossim"], default="diff",
                    help="the statistics to post: the service's scheduler.reward")
    ap.add_argument("--probe-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--output-dir", default=str(ROOT / "runs" / "hf-demo"))
    ap.add_argument("--save-steps", type=int, default=10)
    ap.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    ap.add_argument("--stop-at", type=int, default=None)
    ap.add_argument("--record", default=None)
    args = ap.parse_args()
    if not args.token:
        sys.exit("no token: pass --token or set MOS_SERVICE_TOKEN")

    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.manual_seed(args.seed)
    targs = TrainingArguments(
        output_dir=args.output_dir,
        max_steps=args.steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr,
        # Constant: a run stopped and resumed follows the same schedule as one that is not.
        lr_scheduler_type="constant",
        save_strategy="steps",
        save_steps=args.save_steps,
        logging_steps=5,
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        ddp_backend="gloo" if world > 1 and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        remove_unused_columns=False,  # the collator tokenizes the text fields
        seed=args.seed,
        disable_tqdm=True,
    )

    tokenizer = PreTrainedTokenizerFast(tokenizer_file=os.path.join(args.model, "tokenizer.json"))
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    names = args.datasets.split(",")
    data = {n: load_jsonl(os.path.join(args.data_dir, f"{n}.train.jsonl")) for n in names}

    client = MosClient(args.url, token=args.token)
    sampler = MixtureSampler(data, seed=args.seed, rank=rank, world_size=world,
                             record=args.record is not None)
    # The service's scheduler.reward decides; a mismatch is refused at the start, by name.
    Probes = CossimProbes if args.reward == "cossim" else DiffProbes
    probes = Probes(tokenizer, sampler.dataset, probe_size=args.probe_size, seed=args.seed,
                    max_length=args.max_length, batch_size=8)
    mos = MosCallback(client, sampler, probes, update_every=args.update_every)
    callbacks = [mos] + ([StopAt(args.stop_at)] if args.stop_at else [])
    trainer = MosTrainer(model=model, args=targs, train_dataset=sampler.dataset,
                         data_collator=CausalLMCollator(tokenizer, max_length=args.max_length),
                         callbacks=callbacks)
    start_step = 0
    if args.resume:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(args.output_dir)
        start_step = int(last.rsplit("-", 1)[1]) if last else 0
    trainer.train(resume_from_checkpoint=True if args.resume else None)

    step = trainer.state.global_step
    if rank == 0:
        final = client.mixture()
        print(f"done: {step} steps, mixture version {final['version']}: "
              + " ".join(f"{n}={w:.4f}" for n, w in zip(final["names"], final["weights"])))
    if args.record:
        unit = targs.train_batch_size * targs.gradient_accumulation_steps
        consumed = (step - start_step) * unit
        # The sampler may have read ahead of training; the first `consumed` indices trained.
        record = {
            "rank": rank, "world": world, "start_step": start_step, "steps": step,
            "names": sampler.names, "offsets": sampler.dataset.offsets,
            "sizes": sampler.dataset.sizes,
            "drawn": sampler.drawn[:consumed], "history": mos.controller.history,
        }
        with open(args.record.replace("{rank}", str(rank)), "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main()
