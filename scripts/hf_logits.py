#!/usr/bin/env python3
"""Print the logits transformers computes for a Hugging Face Llama directory, as JSON.

    python3 scripts/hf_logits.py DIR ID [ID ...]

Used by the gated export test in tests/pretrained.rs (it runs only where torch and transformers
are importable) to check that an exported directory loads in transformers and gives our logits.
Also checks that the tokenizer.json in DIR loads.
"""
import json
import sys

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast


def main():
    path = sys.argv[1]
    ids = [int(x) for x in sys.argv[2:]]
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
    tok = PreTrainedTokenizerFast(tokenizer_file=f"{path}/tokenizer.json")
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    json.dump(
        {
            "logits": [[float(x) for x in row] for row in logits.tolist()],
            "tokenizer_vocab": len(tok),
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
