"""transformers.Trainer integration: `MosCallback` runs the mixture updates, `MosTrainer` feeds
the Trainer from the callback's `MixtureSampler`.

    sampler = MixtureSampler({"maths": maths, "code": code}, seed=0)
    probes = DiffProbes(tokenizer, sampler.dataset, probe_size=64)
    mos = MosCallback(MosClient(url, token=token), sampler, probes)
    trainer = MosTrainer(model=model, args=args, train_dataset=sampler.dataset,
                         data_collator=CausalLMCollator(tokenizer), callbacks=[mos])
    trainer.train()

Every `update_every` optimiser steps (default: the service's `scheduler.update_every`) the
callback runs the probes on rank 0, posts them, and every rank switches its sampler to the new
mixture at the same global position. The mixture goes to the Trainer's logs (`mos/weight/<name>`,
`mos/version`: TensorBoard, W&B, ... show it like any scalar). The callback's state (the
sampler's position as of the checkpoint's step, the probes and their theta_0 values) is saved as
`mos_state.json` in every checkpoint and restored on `trainer.train(resume_from_checkpoint=...)`.

Set `remove_unused_columns=False` in TrainingArguments: the examples reach the collator as the
datasets hold them (text), and the collator tokenizes them.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch
from transformers import Trainer, TrainerCallback

from ._client import MosClient, MosError
from .controller import MixtureController
from .probes import FormatFn, encode_example, split_example
from .sampler import MixtureSampler

__all__ = ["CausalLMCollator", "MosCallback", "MosTrainer", "STATE_FILE"]

STATE_FILE = "mos_state.json"
logger = logging.getLogger("mos_client")


class CausalLMCollator:
    """Tokenizes examples as the probes do (`encode_example`) and pads them on the right:
    `input_ids`, `attention_mask`, and `labels` with -100 on the prompt and the padding (the
    loss on response tokens only, the paper's Eq. 1; `loss_on_prompt=True` trains on all)."""

    def __init__(self, tokenizer: Any, max_length: int = 512, format_fn: FormatFn = split_example,
                 loss_on_prompt: bool = False):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.format_fn = format_fn
        self.loss_on_prompt = loss_on_prompt
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else (tokenizer.eos_token_id or 0))

    def __call__(self, examples: List[Any]) -> Dict[str, torch.Tensor]:
        if examples and isinstance(examples[0], dict) and not examples[0]:
            raise ValueError("the collator got empty examples: set remove_unused_columns=False "
                             "in TrainingArguments (the Trainer dropped the text fields)")
        rows = [encode_example(self.tokenizer, *self.format_fn(e), self.max_length)
                for e in examples]
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for k, (s, m) in enumerate(rows):
            t = torch.tensor(s, dtype=torch.long)
            ids[k, : len(s)] = t
            attn[k, : len(s)] = 1
            keep = torch.ones(len(s), dtype=torch.bool) if self.loss_on_prompt \
                else torch.tensor(m, dtype=torch.bool)
            labels[k, : len(s)] = torch.where(keep, t, torch.full_like(t, -100))
        return {"input_ids": ids, "attention_mask": attn, "labels": labels}


def _holds(obj: Any, target: Any, depth: int = 0) -> bool:
    """Whether `target` is reachable from a (wrapped) DataLoader through its sampler chain."""
    if obj is target:
        return True
    if obj is None or depth > 5:
        return False
    return any(_holds(getattr(obj, a, None), target, depth + 1)
               for a in ("sampler", "batch_sampler", "base_dataloader", "_loader"))


class MosCallback(TrainerCallback):
    """The mixture updates inside transformers.Trainer (see the module docstring). `resume_from`
    names the checkpoint directory to restore from when it is not the usual
    `output_dir/checkpoint-<step>` (MosTrainer sets it from `train(resume_from_checkpoint=)`)."""

    def __init__(self, client: MosClient, sampler: MixtureSampler, probes: Any = None,
                 update_every: Optional[int] = None, verbose: bool = True):
        self.client = client
        self.sampler = sampler
        self.controller = MixtureController(client, sampler, probes, update_every)
        self.verbose = verbose
        self.trainer: Optional[Trainer] = None
        self.resume_from: Optional[str] = None

    # Helpers -----------------------------------------------------------------------------------

    @staticmethod
    def _unit(args: Any) -> int:
        """Own draws per optimiser step."""
        return int(args.train_batch_size) * int(args.gradient_accumulation_steps)

    def _report(self, state: Any, mixture: Dict[str, Any], version: int) -> None:
        names = self.controller.names
        weights = mixture["weights"] if "weights" in mixture else mixture["after"]
        logs: Dict[str, float] = {f"mos/weight/{n}": float(w) for n, w in zip(names, weights)}
        logs["mos/version"] = float(version)
        if self.trainer is not None:
            self.trainer.log(dict(logs))
        if state.is_world_process_zero:
            line = " ".join(f"{n}={w:.4f}" for n, w in zip(names, weights))
            logger.info("mixture version %d at step %d: %s", version, state.global_step, line)
            if self.verbose:
                print(f"[mos] step {state.global_step:5d} mixture v{version}: {line}", flush=True)

    # Events ------------------------------------------------------------------------------------

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None,
                       train_dataloader: Any = None, **kwargs: Any) -> None:
        if train_dataloader is not None and not _holds(train_dataloader, self.sampler):
            raise MosError("the Trainer's training DataLoader does not draw from this "
                           "MosCallback's sampler: use mos_client.hf.MosTrainer (or return "
                           "callback.sampler from your Trainer's _get_train_sampler)")
        if state.global_step > 0:
            folder = self.resume_from or os.path.join(args.output_dir,
                                                      f"checkpoint-{state.global_step}")
            path = os.path.join(folder, STATE_FILE)
            if not os.path.exists(path):
                raise MosError(f"resuming at step {state.global_step}, but {path} is missing: the "
                               "checkpoint was not written with this MosCallback, so the sampler "
                               "cannot continue its stream")
            with open(path) as f:
                saved = json.load(f)
            if saved.get("step") != state.global_step:
                raise MosError(f"{path} is for step {saved.get('step')}, the Trainer resumes "
                               f"at step {state.global_step}")
            self.controller.load_state_dict(saved["controller"])
        self.controller.start(model)
        # The latest mixture adopted: a resumed sampler may still be drawing the one before it
        # for the examples its loader had read ahead (the switch is pending at a later round).
        plan = self.sampler.plan
        if plan.pending:
            version, weights = plan.pending[-1][1], plan.pending[-1][2]
        else:
            assert plan.version is not None and plan.weights is not None  # start() adopted one
            version, weights = plan.version, plan.weights
        self._report(state, {"weights": weights}, int(version))

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None,
                    **kwargs: Any) -> None:
        record = self.controller.step(state.global_step, model)
        if record is not None:
            self._report(state, record, int(record["version"]))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # Every rank computes the state (it is the same global state on all of them, and
        # keeps their bookkeeping in step); rank 0 writes it next to the checkpoint.
        consumed = state.global_step * self._unit(args)
        saved = {"step": state.global_step,
                 "controller": self.controller.state_dict(consumed_rounds=consumed)}
        if not state.is_world_process_zero:
            return
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        os.makedirs(folder, exist_ok=True)
        tmp = os.path.join(folder, STATE_FILE + ".tmp")
        with open(tmp, "w") as f:
            json.dump(saved, f)
        os.replace(tmp, os.path.join(folder, STATE_FILE))  # never a half-written state


class MosTrainer(Trainer):
    """transformers.Trainer that draws its training examples from the MosCallback's sampler
    (given in `callbacks=`): the sampler already slices the global plan per rank, so the
    accelerate shard wrapper is made a passthrough, and a resumed run restores the sampler's
    position instead of skipping batches."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        found = [c for c in self.callback_handler.callbacks if isinstance(c, MosCallback)]
        if len(found) != 1:
            raise MosError(f"MosTrainer needs exactly one MosCallback in callbacks=, got {len(found)}")
        if not hasattr(Trainer, "get_resumed_dataloader"):
            raise MosError("MosTrainer needs a transformers whose Trainer has "
                           "get_resumed_dataloader (5.x): pip install -U transformers")
        self.mos = found[0]
        self.mos.trainer = self

    def _get_train_sampler(self, train_dataset: Any = None) -> MixtureSampler:
        return self.mos.sampler

    def get_train_dataloader(self) -> Any:
        sampler = self.mos.sampler
        if self.train_dataset is not sampler.dataset:
            raise MosError("MosTrainer's train_dataset must be the sampler's dataset "
                           "(train_dataset=sampler.dataset)")
        unit = self._train_batch_size * self.args.gradient_accumulation_steps
        if self.args.max_steps > 0:
            # One epoch spans the run: the stream never restarts, and a resumed run with the
            # same max_steps sees the same epoch length.
            sampler.set_epoch_length(self.args.max_steps * unit)
        else:
            per_rank = len(sampler.dataset) // sampler.plan.world_size
            sampler.set_epoch_length(max(unit, per_rank // unit * unit))
        loader = super().get_train_dataloader()
        shard = getattr(loader, "batch_sampler", None)
        if shard is not None and getattr(shard, "num_processes", 1) > 1 and _holds(shard, sampler):
            # The same passthrough transformers applies to its own rank-aware batch sampler.
            shard.num_processes = 1
            shard.process_index = 0
        return loader

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        # MosCallback restores the sampler at the checkpoint's position: skipping batches as
        # well would skip them twice.
        return dataloader

    def train(self, resume_from_checkpoint: Any = None, *args: Any, **kwargs: Any) -> Any:
        if resume_from_checkpoint is True:
            from transformers.trainer_utils import get_last_checkpoint

            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)  # type: ignore[no-untyped-call]
            if resume_from_checkpoint is None:
                raise MosError(f"no checkpoint to resume from in {self.args.output_dir}")
        self.mos.resume_from = resume_from_checkpoint if isinstance(resume_from_checkpoint, str) \
            else None
        return super().train(resume_from_checkpoint, *args, **kwargs)
