#!/usr/bin/env bash
# Installs python3 from Debian's `python3` package when it is missing, for tests/python_client.rs
# and the Python loop of tests/service.rs (run with MOS_REQUIRE_PYTHON=1 in CI). The Python tests
# use only the standard library, so nothing else is installed; an interpreter already on PATH
# (3.8 or newer) is used as it is.
set -euo pipefail

if command -v python3 >/dev/null 2>&1 \
    && python3 -c 'import sys; assert sys.version_info >= (3, 8)' >/dev/null 2>&1; then
    echo "python3 already installed: $(python3 --version 2>&1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# --no-install-recommends: the tests need the interpreter and its standard library only.
$SUDO apt-get install -y -q --no-install-recommends python3

command -v python3 >/dev/null || {
    echo "python3 package installed but python3 not on PATH" >&2
    exit 1
}
echo "installed: $(python3 --version 2>&1)"
