#!/usr/bin/env python3
"""A training-like loop against the mos-runtime scheduler service, with a simulated model.

Start the service, then run this:

    MOS_SERVICE_TOKEN=dev-token cargo run --release -- serve --config configs/service.toml &
    python3 examples/python_client_loop.py --url http://127.0.0.1:8750 --token dev-token

It registers four datasets, then repeatedly reads the mixture, samples a "batch" of dataset
indices from it, lets a toy model learn (each dataset's loss falls with the examples it has seen,
at its own rate), measures per-example NLLs on fixed probe sets (DIFF reward: now vs. the start),
posts them, and prints the mixture as it moves. Datasets that stay hard relative to where they
started gain weight. The script exits non-zero if the service's answers are inconsistent.
"""

import argparse
import math
import os
import random
import sys

# The mos_client package of this checkout (clients/python/mos_client/), ahead of any installed
# copy, so the example always runs against the client it ships with. Elsewhere,
# `pip install ./clients/python` and drop this line.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "clients", "python"))

from mos_client import MosClient, MosServiceError  # noqa: E402

# name, training examples, initial loss (nats), learning speed (per 1000 examples seen)
DATASETS = [
    ("maths", 26200, 3.2, 0.15),
    ("medicine", 5200, 3.6, 0.60),
    ("chat", 9300, 2.9, 0.90),
    ("nlp", 62600, 3.0, 1.50),
]
PROBE = 16  # probe examples per dataset


def loss_after(initial, speed, seen):
    """Toy learning curve: the loss decays toward 40% of where it started."""
    return initial * (0.4 + 0.6 * math.exp(-speed * seen / 1000.0))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8750")
    ap.add_argument("--token", default=os.environ.get("MOS_SERVICE_TOKEN"))
    ap.add_argument("--updates", type=int, default=12, help="mixture updates to run")
    ap.add_argument("--steps-per-update", type=int, default=50)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.token:
        sys.exit("no token: pass --token or set MOS_SERVICE_TOKEN")

    rng = random.Random(args.seed)
    client = MosClient(args.url, token=args.token)
    names = [d[0] for d in DATASETS]
    try:
        prior = client.register({name: size for name, size, _, _ in DATASETS})
    except MosServiceError as e:
        if e.status != 409:
            raise
        prior = client.mixture()  # already registered by an earlier run of this script
    print("prior   ", fmt(prior["names"], prior["weights"]))

    # Per-example offsets of the fixed probe sets: the same examples at every probe.
    offsets = [[rng.gauss(0.0, 0.3) for _ in range(PROBE)] for _ in DATASETS]
    initial = [
        [max(0.05, d[2] + o) for o in offs] for d, offs in zip(DATASETS, offsets)
    ]
    seen = [0] * len(DATASETS)
    start_version = prior["version"]
    for u in range(1, args.updates + 1):
        mix = client.mixture()
        counts = [0] * len(DATASETS)
        for _ in range(args.steps_per_update):
            for i in rng.choices(range(len(DATASETS)), weights=mix["weights"], k=args.batch):
                counts[i] += 1
        for i, c in enumerate(counts):
            seen[i] += c
        now = []
        for (name, _, init_loss, speed), offs, n in zip(DATASETS, offsets, seen):
            level = loss_after(init_loss, speed, n)
            now.append([max(0.05, level + o + rng.gauss(0.0, 0.02)) for o in offs])
        step = u * args.steps_per_update
        record = client.post_nll(step, now=now, initial=initial, counts=counts)
        after = client.mixture()
        if after["version"] < record["version"] or record["names"] != names:
            sys.exit(f"inconsistent answer: update {record['version']}, mixture {after['version']}")
        if after["version"] == record["version"] and after["weights"] != record["after"]:
            sys.exit("the mixture read back differs from the update's result")
        print(f"step {step:5d}", fmt(names, record["after"]), f"(version {record['version']})")

    final = client.mixture()
    done = final["version"] - start_version
    print(f"final version {final['version']}: {done} updates applied")
    if done < args.updates:
        sys.exit(f"expected at least {args.updates} updates, the service applied {done}")


def fmt(names, weights):
    return " ".join(f"{n}={w:.4f}" for n, w in zip(names, weights))


if __name__ == "__main__":
    try:
        main()
    except MosServiceError as e:
        sys.exit(f"service error: {e}")
