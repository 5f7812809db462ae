#!/usr/bin/env bash
# Runs every benchmark of issue 7 and writes BENCHMARKS.md (machine, command, date, commit and
# one table per section). Each comparison inside is a ratio measured in the same run with the
# two sides alternating; nothing here asserts on time.
#
# Usage: scripts/bench.sh [-o FILE] [SECTION...]
#   sections: train (3, 7, 7b), pytorch (4), e2e (1, 2, 5), scale (6); default: all of them.
#   -o FILE   write the report there instead of BENCHMARKS.md
#
# Environment:
#   BENCH_QUICK=1        smoke run: every section shrunk to seconds (the numbers mean nothing)
#   MOS_PYTHON=PATH      interpreter with torch for section 4 (default python3); without torch
#                        the section says it was skipped. PyTorch's OpenMP threads spin while
#                        they wait: on a machine with other load that made it ~12x slower in a
#                        smoke run; OMP_WAIT_POLICY=PASSIVE (passed through) avoids it, but the
#                        honest comparison is on an idle machine. To get torch (the default Linux wheel
#                        pulls the CUDA libraries, several GB; the CPU wheel is smaller):
#                          python3 -m venv .venv && .venv/bin/pip install torch
#                          #  or: .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
#                          MOS_PYTHON=.venv/bin/python scripts/bench.sh
#   RAYON_NUM_THREADS=N  compute threads for burn-flex/gemm (and PyTorch: the same N)
#   BENCH_TRAIN_STEPS, BENCH_M25_BATCH, BENCH_PEAK_N, BENCH_E2E_STEPS, BENCH_E2E_ROUNDS,
#   BENCH_PAPER_STEPS, BENCH_PAPER_ROUNDS, BENCH_STALL_STEPS, BENCH_STALL_MS, BENCH_UPDATE_EVERY,
#   BENCH_PROBE_SIZE, BENCH_SCALE_COUNTS: sizes (see the header comment of each file in benches/).
#
# The full run takes about 35 minutes on 2 cores; run it on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/.."

args="$*"
out=BENCHMARKS.md
sections=()
while [ $# -gt 0 ]; do
    case "$1" in
        -o) out=$2; shift 2 ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        train|pytorch|e2e|scale) sections+=("$1"); shift ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
done
[ ${#sections[@]} -gt 0 ] || sections=(train pytorch e2e scale)

cargo bench --no-run --bench train_step --bench runtime_e2e --bench scale
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

threads=${RAYON_NUM_THREADS:-$(nproc)}
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//' || true)
flags=$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx|avx2|avx512f|fma)$' | tr '\n' ' ' || true)
mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo " (with uncommitted changes)" || true)
started=$(date -u '+%Y-%m-%d %H:%M UTC')
t0=$SECONDS

run() { # $1 = bench, rest = sections; stdout (Markdown) into the report body
    echo "== cargo bench --bench $*" >&2
    cargo bench --quiet --bench "$@" >>"$tmp/body.md"
}
has() { [[ " ${sections[*]} " == *" $1 "* ]]; }
# In the report's order (sections 1 to 7), whatever order they were asked in.
if has e2e; then run runtime_e2e -- overhead stall loaders; fi
if has train; then run train_step -- peak demo m25; fi
if has pytorch; then run train_step -- pytorch; fi
if has scale; then run scale -- memory update; fi
if has train; then run train_step -- hotspots probe; fi

{
    echo "# Benchmarks"
    echo
    if [ -n "${BENCH_QUICK:-}" ] && [ "${BENCH_QUICK}" != 0 ]; then
        echo "> **Quick mode (BENCH_QUICK=1)**: shrunk sizes for a smoke run; these numbers are not results."
        echo
    fi
    echo "Produced by \`scripts/bench.sh${args:+ $args}\` (sections: ${sections[*]}); every ratio compares two sides measured"
    echo "in the same run, alternating (A B A B ...). Regenerate with the same command."
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| machine | ${cpu:-unknown CPU}, $(nproc) cores (nproc), ${mem}; flags: ${flags:-?} |"
    echo "| compute threads | ${threads} (burn-flex / gemm rayon pool; PyTorch set to the same) |"
    echo "| commit | ${commit}${dirty} |"
    echo "| date | ${started}, took $(( (SECONDS - t0) / 60 )) min |"
    echo "| command | \`$(env | grep -E '^(BENCH_[A-Z0-9_]+|MOS_PYTHON|RAYON_NUM_THREADS|OMP_[A-Z_]+)=' | sort | tr '\n' ' ')scripts/bench.sh${args:+ $args}\` |"
    echo
    cat "$tmp/body.md"
    # The hand-written reading (what limits a missed target, with the profile behind it) is kept
    # in benches/reading.md so that regenerating the tables never loses it.
    if [ -f benches/reading.md ]; then
        echo
        cat benches/reading.md
    fi
} >"$out"
echo "wrote $out" >&2
