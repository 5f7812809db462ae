#!/usr/bin/env python3
"""Write the tiny Hugging Face Llama checkpoint and reference logits of tests/fixtures/tiny-llama.

    python3 scripts/make_parity_reference.py [OUT_DIR]

Needs torch and transformers (CPU is enough). The model is random (seeded) but has every feature
our loader must get right: grouped-query attention (4 query heads, 2 key/value heads), a
non-default RoPE base, a non-default RMSNorm epsilon and an untied output projection. The
tokenizer is the committed tiny byte-level BPE (tests/fixtures/data/tiny_bpe_tokenizer.json), so
the directory is a complete checkpoint. `reference.json` holds the input ids and the logits
transformers computes for them in float32; tests/pretrained.rs loads the directory with our
loader and compares, without needing Python.
"""
import json
import os
import shutil
import sys

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests", "fixtures", "tiny-llama")

# Fixed input: covers low, high and special ids and is longer than one RoPE period of the fast
# frequencies.
INPUT_IDS = [0, 1, 72, 101, 108, 108, 111, 267, 32, 299, 150, 7, 42, 255, 2, 131]


def main():
    torch.manual_seed(1234)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        rope_theta=5000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=0,
        eos_token_id=0,
    )
    model = LlamaForCausalLM(config).eval()
    # Random norm scales, so a loader that ignored them (all ones) would fail the comparison.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    os.makedirs(OUT, exist_ok=True)
    model.save_pretrained(OUT, safe_serialization=True)
    shutil.copy(
        os.path.join(ROOT, "tests", "fixtures", "data", "tiny_bpe_tokenizer.json"),
        os.path.join(OUT, "tokenizer.json"),
    )
    # save_pretrained may add files we do not need; keep the fixture to the three files.
    for extra in ("generation_config.json",):
        path = os.path.join(OUT, extra)
        if os.path.exists(path):
            os.remove(path)
    with torch.no_grad():
        logits = model(torch.tensor([INPUT_IDS])).logits[0]
    ref = {
        "input_ids": INPUT_IDS,
        "vocab_size": config.vocab_size,
        "logits": [[float(x) for x in row] for row in logits.tolist()],
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
    }
    with open(os.path.join(OUT, "reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
