#!/usr/bin/env bash
# Behaviour check for refactors: trains a MoS demo and a static demo with
# runtime.deterministic = true, once with the binary built from REF and once with the binary
# built from the working tree, and compares `mixture.jsonl`, `samples.jsonl` and the per-step
# training losses byte for byte. A refactor that keeps behaviour prints "identical" for every
# file and exits 0; any difference prints the first differing lines and exits 1.
#
#   scripts/equivalence.sh REF [STEPS]     e.g. scripts/equivalence.sh 0fc64d9 60
#
# REF is built in a temporary git worktree that shares this tree's target directory, so only
# the crate itself is compiled again (the dependencies are the same). Each run updates the
# mixture every 10 steps, evaluates every 20 and checkpoints every 30, so the probe, tick,
# evaluation and checkpoint paths are all on the compared trajectory.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

ref=${1:?usage: scripts/equivalence.sh REF [STEPS]}
steps=${2:-60}
sha=$(git rev-parse --verify "$ref^{commit}")
work=$(mktemp -d /tmp/mos-equivalence.XXXXXX)
export CARGO_TARGET_DIR="$root/target"

cleanup() {
    git worktree remove --force "$work/ref" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== building $ref ($sha)"
git worktree add --detach "$work/ref" "$sha" >/dev/null
(cd "$work/ref" && cargo build --release --quiet --bin mos-runtime)
cp "$CARGO_TARGET_DIR/release/mos-runtime" "$work/mos-runtime-ref"

echo "== building the working tree"
cargo build --release --quiet --bin mos-runtime
cp "$CARGO_TARGET_DIR/release/mos-runtime" "$work/mos-runtime-new"

# Runs one side: $1 the binary, $2 the tree whose config and data it reads, $3 the config,
# $4 the output directory.
train() {
    local bin=$1 tree=$2 config=$3 out=$4
    "$bin" --config "$tree/$config" \
        --set runtime.deterministic=true \
        --set runtime.trace_samples=true \
        --set runtime.max_steps="$steps" \
        --set runtime.log_every=1 \
        --set runtime.eval_every=20 \
        --set runtime.checkpoint_every=30 \
        --set scheduler.update_every=10 \
        --set metrics.enabled=false \
        --set runtime.output_dir="$out" \
        >"$out.log" 2>&1 || {
        echo "run failed: $bin $config (log: $out.log)"
        tail -20 "$out.log"
        exit 1
    }
}

# The per-step training losses (and learning rates) from run.jsonl, without the timing fields.
losses() {
    python3 -c '
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("kind") == "train":
        print(r["step"], repr(r["loss"]), repr(r["lr"]), r["mixture_version"], r["mixture"])
' "$1"
}

status=0
for config in configs/demo-mos.toml configs/demo.toml; do
    name=$(basename "$config" .toml)
    echo "== $name: $steps steps, deterministic"
    train "$work/mos-runtime-ref" "$work/ref" "$config" "$work/$name-ref"
    train "$work/mos-runtime-new" "$root" "$config" "$work/$name-new"
    for file in mixture.jsonl samples.jsonl; do
        if cmp -s "$work/$name-ref/$file" "$work/$name-new/$file"; then
            echo "   $file: identical ($(wc -l <"$work/$name-new/$file") lines)"
        else
            echo "   $file: DIFFERENT"
            diff "$work/$name-ref/$file" "$work/$name-new/$file" | head -6 || true
            status=1
        fi
    done
    losses "$work/$name-ref/run.jsonl" >"$work/$name-ref.losses"
    losses "$work/$name-new/run.jsonl" >"$work/$name-new.losses"
    if [ ! -s "$work/$name-new.losses" ]; then
        echo "   per-step losses: none recorded"
        status=1
    elif cmp -s "$work/$name-ref.losses" "$work/$name-new.losses"; then
        echo "   per-step losses: identical ($(wc -l <"$work/$name-new.losses") steps)"
    else
        echo "   per-step losses: DIFFERENT"
        diff "$work/$name-ref.losses" "$work/$name-new.losses" | head -6 || true
        status=1
    fi
done
exit $status
