#!/usr/bin/env python3
"""The PyTorch baseline of the CPU throughput comparison (BENCHMARKS.md section 4).

The same architecture as mos-runtime's `Llama` (src/model/llama.rs): token embedding, pre-norm
blocks of RMSNorm, grouped-query causal attention with rotary positions in the Hugging Face
`rotate_half` layout, SwiGLU MLP, final RMSNorm, output projection tied to the embedding (or
not), no biases; initialised normal(0, 0.02). The same training step: mean token NLL, backward,
global-norm clipping at 1.0, AdamW (betas 0.9/0.95, eps 1e-8, weight decay 0.1 on matrices only,
as our trainer). Batches of random byte tokens, every position a target.

Attention uses `torch.nn.functional.scaled_dot_product_attention(is_causal=True)`, what a PyTorch
user would write; the key/value heads are repeated for the query groups as Hugging Face does.

Prints one JSON line: {"tokens_per_second", "step_seconds" (median), "steps", "threads",
"torch"}. `cargo bench --bench train_step -- pytorch` runs it, alternating with our own steps.

Needs torch (CPU is enough): python3 -m venv .venv && .venv/bin/pip install torch
(the default Linux wheel also pulls the CUDA libraries, several GB; the CPU-only wheel is
`pip install torch --index-url https://download.pytorch.org/whl/cpu`).
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    def __init__(self, d, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(var + self.eps) * self.weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Block(nn.Module):
    def __init__(self, a):
        super().__init__()
        d, hd = a.d_model, a.d_model // a.heads
        self.heads, self.kv_heads, self.hd = a.heads, a.kv_heads, hd
        self.input_layernorm = RMSNorm(d, a.norm_eps)
        self.q_proj = nn.Linear(d, a.heads * hd, bias=False)
        self.k_proj = nn.Linear(d, a.kv_heads * hd, bias=False)
        self.v_proj = nn.Linear(d, a.kv_heads * hd, bias=False)
        self.o_proj = nn.Linear(a.heads * hd, d, bias=False)
        self.post_attention_layernorm = RMSNorm(d, a.norm_eps)
        self.gate_proj = nn.Linear(d, a.ffn, bias=False)
        self.up_proj = nn.Linear(d, a.ffn, bias=False)
        self.down_proj = nn.Linear(a.ffn, d, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        h = self.input_layernorm(x)
        q = self.q_proj(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k = self.k_proj(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        v = self.v_proj(h).view(b, t, self.kv_heads, self.hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        if rep > 1:
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o_proj(o.transpose(1, 2).reshape(b, t, -1))
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Llama(nn.Module):
    def __init__(self, a):
        super().__init__()
        self.embed_tokens = nn.Embedding(a.vocab, a.d_model)
        self.layers = nn.ModuleList(Block(a) for _ in range(a.layers))
        self.norm = RMSNorm(a.d_model, a.norm_eps)
        self.lm_head = None if a.tie else nn.Linear(a.d_model, a.vocab, bias=False)
        hd = a.d_model // a.heads
        inv_freq = 1.0 / (a.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd))
        angles = torch.outer(torch.arange(a.seq, dtype=torch.float32), inv_freq)
        emb = torch.cat((angles, angles), dim=-1)
        self.register_buffer("cos", emb.cos()[None, None], persistent=False)
        self.register_buffer("sin", emb.sin()[None, None], persistent=False)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, mean=0.0, std=0.02)

    def forward(self, tokens):
        t = tokens.shape[1]
        cos, sin = self.cos[:, :, :t], self.sin[:, :, :t]
        h = self.embed_tokens(tokens)
        for layer in self.layers:
            h = layer(h, cos, sin)
        h = self.norm(h)
        w = self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return h @ w.t()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vocab", type=int, default=259)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--ffn", type=int, default=352)
    p.add_argument("--seq", type=int, default=96)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--norm-eps", type=float, default=1e-5)
    p.add_argument("--untied", dest="tie", action="store_false")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
        torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    model = Llama(a)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=1e-3,
        betas=(0.9, 0.95),
        eps=1e-8,
    )
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 256, (a.batch, a.seq), generator=g) for _ in range(4)]

    def step(tokens):
        logits = model(tokens)
        # Position k predicts token k + 1; the last position predicts nothing.
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, a.vocab), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for i in range(a.warmup):
        step(batches[i % len(batches)])
    secs = []
    for i in range(a.steps):
        t0 = time.perf_counter()
        step(batches[i % len(batches)])
        secs.append(time.perf_counter() - t0)
    med = statistics.median(secs)
    print(
        json.dumps(
            {
                "tokens_per_second": a.batch * a.seq / med,
                "step_seconds": med,
                "steps": a.steps,
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
