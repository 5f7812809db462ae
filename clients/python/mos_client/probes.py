"""Probe statistics of the MoS rewards (method.md section 3), computed from a model and a tokenizer.

A probe set is a fixed sample of `probe_size` training examples per dataset, drawn once from
`seed` on its own random stream (never the training sampler's, so probing does not change which
examples train) and reused at every update, as the runtime does.

- `DiffProbes` (reward "diff"): per-example mean negative log-likelihood of the response tokens
  given the prompt. The theta_0 values are computed once by `prepare(model)` before training and
  kept in `state_dict()`, so a resumed run does not take its trained model for theta_0 and no
  second copy of the model is held.
- `CossimProbes` (reward "cossim"): per-dataset mean of the examples' mean-pooled last hidden
  state (after the final norm), over non-padding tokens.

Both run batched, under `torch.no_grad()`, in eval mode (restored afterwards), in the model's own
dtype and on its device; log-softmax is taken in float32 so that a bf16/fp16 model's NLLs do
not lose their low digits (the same upcast transformers' own loss makes).
"""

from __future__ import annotations

import random
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .sampler import MixtureDataset

__all__ = ["CossimProbes", "DiffProbes", "encode_example", "split_example"]

FormatFn = Callable[[Any], Tuple[str, str]]


def split_example(example: Any) -> Tuple[str, str]:
    """(prompt, response) of an example: `{"prompt", "response"}`, `{"messages": [...]}` (the
    last assistant turn is the response; the turns before it, rendered ChatML-style, the
    prompt), `{"text"}` or a plain string (all response). Pass your own `format_fn` for other
    shapes."""
    if isinstance(example, str):
        return "", example
    if isinstance(example, Mapping):
        if "prompt" in example and "response" in example:
            return str(example["prompt"]), str(example["response"])
        if "messages" in example:
            msgs = list(example["messages"])
            last = max((k for k, m in enumerate(msgs) if m.get("role") == "assistant"), default=None)
            if last is None:
                raise ValueError("a chat example without an assistant turn has no response")
            prompt = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                             for m in msgs[:last]) + "<|im_start|>assistant\n"
            return prompt, f"{msgs[last]['content']}<|im_end|>"
        if "text" in example:
            return "", str(example["text"])
    keys = sorted(example) if isinstance(example, Mapping) else type(example).__name__
    raise ValueError(f"cannot split an example with keys {keys} into prompt and response: "
                     "pass format_fn=(example -> (prompt, response))")


def encode_example(tokenizer: Any, prompt: str, response: str, max_length: int
                   ) -> Tuple[List[int], List[bool]]:
    """Token ids of BOS + prompt + response + EOS (those the tokenizer has) and the mask of
    the response tokens. Over `max_length`, the prompt loses tokens from its start first (the
    response keeps at least half the window), then the response from its end."""
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    eos = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    p = list(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else []
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + eos
    budget = max_length - len(bos)
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for a response")
    if len(p) + len(r) > budget:
        keep_r = min(len(r), max(budget - len(p), budget // 2))
        keep_p = budget - keep_r
        p = p[len(p) - keep_p:] if keep_p > 0 else []
        r = r[:keep_r]
    ids = bos + p + r
    mask = [False] * (len(bos) + len(p)) + [True] * len(r)
    return ids, mask


def _pad_batch(seqs: Sequence[Tuple[List[int], List[bool]]], pad_id: int, device: Any
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids, _ in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    resp = torch.zeros((len(seqs), width), dtype=torch.bool)
    for k, (s, m) in enumerate(seqs):
        ids[k, : len(s)] = torch.tensor(s, dtype=torch.long)
        attn[k, : len(s)] = 1
        resp[k, : len(m)] = torch.tensor(m, dtype=torch.bool)
    return ids.to(device), attn.to(device), resp.to(device)


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


class _Probes:
    reward = ""

    def __init__(self, tokenizer: Any, datasets: Union[MixtureDataset, Mapping[str, Any],
                                                       Sequence[Tuple[str, Any]]],
                 probe_size: int = 64, seed: int = 0, max_length: int = 512, batch_size: int = 16,
                 format_fn: FormatFn = split_example):
        self.tokenizer = tokenizer
        self.dataset = datasets if isinstance(datasets, MixtureDataset) else MixtureDataset(datasets)
        self.probe_size = int(probe_size)
        self.seed = int(seed)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.format_fn = format_fn
        self.pad_id = _pad_id(tokenizer)
        self.ids = [self._draw_ids(name, n) for name, n in zip(self.dataset.names, self.dataset.sizes)]
        self._encode()

    def _draw_ids(self, name: str, n: int) -> List[int]:
        if n == 0:
            raise ValueError(f"dataset {name!r} is empty: every dataset needs probe examples")
        # A string seed is hashed with SHA-512 by `random`, so the draw is the same in every
        # process and Python version, whatever PYTHONHASHSEED says.
        rng = random.Random(f"mos-probe:{self.seed}:{name}")
        return rng.sample(range(n), min(self.probe_size, n))

    def _encode(self) -> None:
        self.sets: List[List[Tuple[List[int], List[bool]]]] = []
        for i, ids in enumerate(self.ids):
            part = self.dataset.parts[i]
            encoded = []
            for j in ids:
                ids_, mask = encode_example(self.tokenizer, *self.format_fn(part[j]), self.max_length)
                if not any(mask[1:]):
                    raise ValueError(f"probe example {j} of {self.dataset.names[i]!r} has no "
                                     "response token to score")
                encoded.append((ids_, mask))
            self.sets.append(encoded)

    def _batches(self, i: int, device: Any):  # type: ignore[no-untyped-def]
        seqs = self.sets[i]
        for k in range(0, len(seqs), self.batch_size):
            yield _pad_batch(seqs[k:k + self.batch_size], self.pad_id, device)

    def _run(self, model: Any, fn: Callable[..., List[Any]]) -> List[List[Any]]:
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return [[x for batch in self._batches(i, device) for x in fn(model, *batch)]
                        for i in range(len(self.sets))]
        finally:
            model.train(was_training)

    def prepare(self, model: Any) -> None:
        """Called once before training."""

    def state_dict(self) -> Dict[str, Any]:
        return {"reward": self.reward, "seed": self.seed, "ids": [list(x) for x in self.ids]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state.get("reward") != self.reward:
            raise ValueError(f"saved probes are {state.get('reward')!r}, these {self.reward!r}")
        ids = [list(map(int, x)) for x in state["ids"]]
        if len(ids) != len(self.ids):
            raise ValueError(f"saved probes cover {len(ids)} datasets, these {len(self.ids)}")
        # The examples theta_0 was measured on, even if the seed or probe_size changed since.
        self.ids = ids
        self._encode()


def _nll(model: Any, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor) -> List[float]:
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1]
    targets = ids[:, 1:]
    mask = resp[:, 1:].to(torch.float32)
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    per_example = -(logp * mask).sum(dim=1) / mask.sum(dim=1)
    return [float(x) for x in per_example.tolist()]


def _pooled(model: Any, ids: torch.Tensor, attn: torch.Tensor, resp: torch.Tensor
            ) -> List[torch.Tensor]:
    out = model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    h = out.hidden_states[-1].float()  # transformers' last entry is after the final norm
    m = attn.unsqueeze(-1).to(h.dtype)
    return list(((h * m).sum(dim=1) / m.sum(dim=1)).to(torch.float64))


class DiffProbes(_Probes):
    """DIFF: per-example response NLLs now and under theta_0 (see the module docstring)."""

    reward = "diff"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.initial: Optional[List[List[float]]] = None

    def nll(self, model: Any) -> List[List[float]]:
        """Per dataset, per probe example: mean NLL (nats) of the response tokens."""
        return self._run(model, _nll)

    def prepare(self, model: Any) -> None:
        if self.initial is None:
            if model is None:
                raise ValueError("DiffProbes.prepare needs the model before training (theta_0)")
            self.initial = self.nll(model)

    def compute(self, model: Any) -> Dict[str, Any]:
        if self.initial is None:
            raise RuntimeError("DiffProbes: prepare(model) was not called before training")
        return {"nll": {"now": self.nll(model), "initial": self.initial}}

    def state_dict(self) -> Dict[str, Any]:
        s = super().state_dict()
        s["initial"] = self.initial
        return s

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.initial = state.get("initial")


class CossimProbes(_Probes):
    """COSSIM: one mean embedding per dataset (see the module docstring)."""

    reward = "cossim"

    def embeddings(self, model: Any) -> List[List[float]]:
        rows = self._run(model, _pooled)
        return [[float(x) for x in torch.stack(r).mean(dim=0).tolist()] for r in rows]

    def compute(self, model: Any) -> Dict[str, Any]:
        return {"embeddings": self.embeddings(model)}
