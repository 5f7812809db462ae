#!/usr/bin/env bash
# Does scraping /metrics at a high rate slow training? Runs the demo config for a fixed number of
# steps, alternating runs without and with a bounded loop of loopback scrapes (as fast as curl
# goes, for at most the run's duration), and prints steps/s for each and the ratio.
# Usage: benches/scrape_overhead.sh [pairs=2] [steps=80]
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-2}
steps=${2:-80}
port=19555
cargo build --release --quiet
bin=target/release/mos-runtime
out=$(mktemp -d)
run() { # $1 = label; prints steps/s
    local log="$out/$1.err"
    "$bin" --config configs/demo.toml --set runtime.max_steps="$steps" --set runtime.eval_every=0 \
        --set runtime.output_dir="$out/$1" --set metrics.listen=127.0.0.1:$port >"$out/$1.out" 2>"$log"
    # "finished: N steps in S s" -> N / S
    sed -n 's/^finished: \([0-9]*\) steps in \([0-9.]*\)s.*/\1 \2/p' "$out/$1.out" | awk '{printf "%.4f\n", $1/$2}'
}
scrape() { # bounded: stops when the daemon is gone or after 600 s / 200000 requests
    local n=0 t0=$SECONDS
    sleep 1
    while [ $n -lt 200000 ] && [ $((SECONDS - t0)) -lt 600 ]; do
        curl -s -o /dev/null "http://127.0.0.1:$port/metrics" || { sleep 0.05; pgrep -f "$out/$1" >/dev/null || break; }
        n=$((n + 1))
    done
    echo "$n" >"$out/$1.scrapes"
}
base=(); load=()
for i in $(seq 1 "$pairs"); do
    base+=("$(run "plain$i")")
    scrape "scraped$i" & sp=$!
    load+=("$(run "scraped$i")")
    wait $sp || true
    echo "pair $i: plain ${base[-1]} steps/s, scraped ${load[-1]} steps/s ($(cat "$out/scraped$i.scrapes") scrapes)"
done
awk -v a="${base[*]}" -v b="${load[*]}" 'BEGIN { n = split(a, x, " "); split(b, y, " "); for (i = 1; i <= n; i++) { sa += x[i]; sb += y[i] } printf "mean steps/s: plain %.4f, scraped %.4f, ratio scraped/plain %.3f\n", sa/n, sb/n, sb/sa }'
