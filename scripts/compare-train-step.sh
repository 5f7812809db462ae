#!/usr/bin/env bash
# Speed check for changes to the training step: runs section 3b of the train_step bench
# (benches/train_step.rs, `section_train`: tokens/s of full training steps per model and
# trainer) with the binary built from REF and with the binary built from the working tree, and
# prints the median tokens/s of each side, their ratio and a verdict per (model, trainer) row.
#
#   scripts/compare-train-step.sh REF [ROUNDS]     e.g. scripts/compare-train-step.sh 0fc64d9 5
#
# Each round runs three processes one after the other: REF, NEW (the working tree) and NEW2
# (the working tree's binary again). NEW2 against NEW is an A/A comparison of one binary with
# itself, so |NEW2/NEW - 1| is how far two runs differ on this machine with nothing changed: the
# resolution of the measurement. A row says "within resolution" when
# |NEW/REF - 1| <= |NEW2/NEW - 1| + 0.01 and "changed" otherwise. The verdict is information,
# not a test: the script exits 0 whenever it ran, and non-zero only when a build, a run or the
# parsing of a run's table failed.
#
# Environment:
#   COMPARE_M25=1        also run the 25M model (section `m25`; minutes per run) besides `demo`
#   BENCH_QUICK=1        smoke run (1 warm-up and 2 steps; the numbers mean nothing)
#   BENCH_TRAIN_STEPS=N  timed steps per run (the bench's default is 8); other BENCH_* settings
#                        and RAYON_NUM_THREADS pass through to both sides alike
#   CARGO_TARGET_DIR     shared target directory (default: this repository's target/)
#
# Run it on an otherwise idle machine: other load moves the numbers more than most changes do,
# and the A/A column shows it when it does.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

usage="usage: scripts/compare-train-step.sh REF [ROUNDS]"
ref=${1:?$usage}
rounds=${2:-5}
case "$rounds" in
    '' | *[!0-9]* | 0) echo "ROUNDS must be a positive integer: $rounds" >&2; exit 2 ;;
esac
sha=$(git rev-parse --verify "$ref^{commit}")
work=$(mktemp -d /tmp/mos-compare-train-step.XXXXXX)
# Both builds share one target directory so the dependencies, which are the same on both
# sides, are compiled once; only the crate itself (and its bench) is compiled for each side.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target}"

cleanup() {
    git worktree remove --force "$work/ref" >/dev/null 2>&1 || true
    git worktree prune >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
# An interrupted run exits through the EXIT trap as well, so no worktree is left behind.
trap 'exit 130' INT TERM

sections=(demo)
if [ "${COMPARE_M25:-0}" = 1 ]; then
    sections+=(m25)
fi

# Builds the train_step bench in the tree $1 and copies its executable to $2. The executable's
# name carries a hash that is not known in advance, so its path is read from cargo's JSON
# messages. Cargo hashes a path package's location relative to its workspace, so both sides get
# the same hash and the same file name: the second build writes over the first one's
# executable, which is why each is copied out before the other side is built. (It also means
# the crate is compiled in full on both sides each time the script runs.)
build() {
    local tree=$1 dest=$2 exe
    (cd "$tree" && cargo bench --quiet --bench train_step --no-run --message-format=json) \
        >"$dest.json" || {
        echo "build failed in $tree" >&2
        exit 1
    }
    exe=$(python3 -c '
import json, sys
exe = None
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "train_step" \
            and m.get("executable"):
        exe = m["executable"]
if exe is None:
    sys.exit("no train_step executable in the output of cargo bench --no-run")
print(exe)
' "$dest.json") || exit 1
    cp "$exe" "$dest"
}

echo "== building $ref ($sha)" >&2
git worktree add --detach "$work/ref" "$sha" >/dev/null
build "$work/ref" "$work/train_step-ref"

echo "== building the working tree" >&2
build "$root" "$work/train_step-new"

# Runs one side once: $1 the binary, $2 the file for its Markdown output. Both sides run from
# this tree's root so that they see the same working directory and environment.
run() {
    local bin=$1 out=$2
    "$bin" "${sections[@]}" >"$out" 2>"$out.err" || {
        echo "run failed: $bin ${sections[*]} (stderr below)" >&2
        tail -20 "$out.err" >&2
        exit 1
    }
}

# The sides run alternately, one process each per round, so that a slow stretch of the machine
# falls on all of them instead of on whichever side happened to run then; the order reverses
# every other round, so no side always runs first (a warming or cooling machine favours one).
for round in $(seq 1 "$rounds"); do
    order="ref new new2"
    if (( round % 2 == 0 )); then order="new2 new ref"; fi
    for side in $order; do
        bin=$work/train_step-${side%2}
        echo "== round $round/$rounds: $side" >&2
        run "$bin" "$work/$side.$round.md"
    done
done

# Reads the 3b table of every run, takes the median tokens/s per (model, trainer) row and side,
# and prints the comparison. A run without a 3b table, without the model, trainer or tokens/s
# column, or with a tokens/s that is not a number is a parse failure (exit 1), because the
# medians would otherwise be taken over fewer runs than the table claims.
python3 - "$work" "$rounds" "$ref" "$sha" "${sections[*]}" <<'EOF'
import os, statistics, subprocess, sys

work, rounds, ref, sha, sections = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
sides = ["ref", "new", "new2"]

def parse(path):
    """(model, trainer) -> tokens/s from the first Markdown table after the 3b heading."""
    lines = open(path).read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith("### 3b.")), None)
    if start is None:
        sys.exit(f"parse failure: no '### 3b.' heading in {path}")
    table = []
    for l in lines[start + 1:]:
        if l.startswith("|"):
            table.append(l)
        elif table or l.startswith("#"):
            break
    if len(table) < 3:
        sys.exit(f"parse failure: no 3b table with rows in {path}")
    cells = lambda l: [c.strip() for c in l.strip().strip("|").split("|")]
    header = cells(table[0])
    try:
        im, it, ik = header.index("model"), header.index("trainer"), header.index("tokens/s")
    except ValueError:
        sys.exit(f"parse failure: 3b table header lacks model, trainer or tokens/s in {path}: {header}")
    rows = {}
    for l in table[2:]:
        c = cells(l)
        try:
            rows[(c[im], c[it])] = float(c[ik])
        except (IndexError, ValueError):
            sys.exit(f"parse failure: 3b row without a numeric tokens/s in {path}: {l}")
    return rows

runs = {s: [parse(os.path.join(work, f"{s}.{r}.md")) for r in range(1, rounds + 1)] for s in sides}

# The rows in the order the working tree prints them, then any that only REF has.
keys = []
for s in ["new", "ref"]:
    for run in runs[s]:
        for k in run:
            if k not in keys:
                keys.append(k)

def med(side, key):
    values = [run[key] for run in runs[side] if key in run]
    return statistics.median(values) if len(values) == rounds else None

desc = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()
quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
print(f"### train_step 3b: {ref} ({sha[:10]}) against the working tree ({desc})\n")
print(f"Sections: {sections}; {rounds} rounds of REF, NEW, NEW2 (NEW2 = the working tree's binary "
      f"again, the A/A control); median tokens/s per side."
      + (" BENCH_QUICK=1: a smoke run, the numbers mean nothing." if quick else "") + "\n")
print("| model | trainer | REF tokens/s | NEW tokens/s | NEW2 tokens/s | NEW/REF | NEW2/NEW (A/A) | verdict |")
print("|---|---|---|---|---|---|---|---|")
fmt = lambda v: "n/a" if v is None else f"{v:.0f}"
for key in keys:
    r, n, n2 = med("ref", key), med("new", key), med("new2", key)
    if None in (r, n, n2):
        missing = [name for name, v in (("REF", r), ("NEW", n), ("NEW2", n2)) if v is None]
        print(f"| {key[0]} | {key[1]} | {fmt(r)} | {fmt(n)} | {fmt(n2)} | n/a | n/a | "
              f"not comparable (missing from some {', '.join(missing)} runs) |")
        continue
    ratio, aa = n / r, n2 / n
    verdict = "within resolution" if abs(ratio - 1) <= abs(aa - 1) + 0.01 else "changed"
    print(f"| {key[0]} | {key[1]} | {r:.0f} | {n:.0f} | {n2:.0f} | {ratio:.3f} | {aa:.3f} | {verdict} |")
print()
print("Verdict: \"within resolution\" when |NEW/REF - 1| <= |NEW2/NEW - 1| + 0.01, else \"changed\".")
EOF
