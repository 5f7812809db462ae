#!/usr/bin/env bash
# End-to-end test of the Python package (clients/python) with real torch and transformers:
# builds mos-runtime, makes a virtual environment (torch's CPU wheel when its index is
# reachable, else PyPI's default wheel; transformers and accelerate from PyPI; the package from
# ./clients/python, installed as a user would), then runs every test in clients/python/tests,
# the end-to-end ones included (MOS_REQUIRE_TORCH=1 makes a missing package a failure rather
# than a skip). Takes a few minutes the first time (the download), under a minute after.
#
#   scripts/python-e2e.sh                # venv in target/python-e2e/venv (MOS_E2E_VENV overrides)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${MOS_E2E_VENV:-target/python-e2e/venv}
PY="$VENV/bin/python"

echo "== build"
cargo build --release
export MOS_RUNTIME_BIN="$PWD/target/release/mos-runtime"

echo "== environment ($VENV)"
[ -x "$PY" ] || python3 -m venv "$VENV"
if ! "$PY" -c "import torch" 2>/dev/null; then
    # The CPU-only wheel is a fraction of the default one (which bundles CUDA libraries); fall
    # back to PyPI where that index cannot be reached.
    "$PY" -m pip install --retries 1 --timeout 20 --index-url https://download.pytorch.org/whl/cpu torch \
        || "$PY" -m pip install torch
fi
# Not editable: the tests must import the package as `pip install` lays it out.
"$PY" -m pip install --upgrade "./clients/python[hf]"
"$PY" -c "import mos_client, torch, transformers, accelerate; print('mos_client', mos_client.__version__, 'from', mos_client.__file__); print('torch', torch.__version__, '| transformers', transformers.__version__, '| accelerate', accelerate.__version__)"

echo "== tests"
MOS_REQUIRE_TORCH=1 "$PY" -m unittest discover -v -s clients/python/tests
