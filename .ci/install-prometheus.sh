#!/usr/bin/env bash
# Installs Prometheus (server + promtool) from Debian's `prometheus` package when either binary is
# missing, for tests/prometheus.rs (run with MOS_REQUIRE_PROMETHEUS=1 in CI). CI runs as root in a
# container without systemd, so the packaged service must not be started: a temporary policy-rc.d
# answering 101 ("action forbidden") tells invoke-rc.d/deb-systemd-invoke to skip it. The tests
# start their own Prometheus on a free loopback port instead.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus already installed: $(prometheus --version 2>&1 | head -n1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi

policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    # Only remove what we created: an existing policy-rc.d belongs to the image.
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created_policy=1
fi
cleanup() {
    if [ "$created_policy" -eq 1 ]; then
        $SUDO rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# --no-install-recommends: the recommended node-exporter and web assets are not needed by tests.
$SUDO apt-get install -y -q --no-install-recommends prometheus

command -v prometheus >/dev/null && command -v promtool >/dev/null || {
    echo "prometheus package installed but prometheus/promtool not on PATH" >&2
    exit 1
}
echo "installed: $(prometheus --version 2>&1 | head -n1)"
