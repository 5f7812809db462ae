"""Shared helpers of the mos_client tests: a real `mos-runtime serve` process, a fake server for
the cases a real one cannot produce, and the chi-square test (standard library only)."""

from __future__ import annotations

import http.server
import math
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[3]


def runtime_bin() -> Optional[str]:
    """The mos-runtime binary: $MOS_RUNTIME_BIN (set by tests/python_client.rs), else a release
    build in this checkout."""
    env = os.environ.get("MOS_RUNTIME_BIN")
    if env:
        return env
    built = REPO / "target" / "release" / "mos-runtime"
    return str(built) if built.exists() else None


class ServiceProcess:
    """`mos-runtime serve` on a free loopback port with its own config and mixture log, stopped
    (SIGTERM: a graceful shutdown) on exit."""

    def __init__(self, scheduler: str, token: str = "test-token-py", seed: int = 7,
                 binary: Optional[str] = None):
        self.binary = binary or runtime_bin()
        if not self.binary:
            raise RuntimeError("no mos-runtime binary: set MOS_RUNTIME_BIN or cargo build --release")
        self.token = token
        self.dir = tempfile.TemporaryDirectory(prefix="mos-service-")
        d = Path(self.dir.name)
        self.log_path = d / "mixture.jsonl"
        (d / "token").write_text(token + "\n")
        self.config = d / "service.toml"
        self.config.write_text(
            f'[runtime]\nseed = {seed}\n[service]\nlisten = "127.0.0.1:0"\ntoken_file = "token"\n'
            # Absolute: the service resolves mixture_log against its working directory.
            f'mixture_log = "{self.log_path}"\n[scheduler]\n{scheduler}\n'
        )
        self.output = d / "serve.log"
        self.proc: Optional[subprocess.Popen] = None
        self.url = ""

    def __enter__(self) -> "ServiceProcess":
        env = {k: v for k, v in os.environ.items() if not k.startswith("MOS_SERVICE")}
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen([self.binary, "serve", "--config", str(self.config)],
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"service on (http://[0-9.]+:\d+)", self.output.read_text(errors="replace"))
            if m:
                self.url = m.group(1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mos-runtime serve did not start:\n{self.output.read_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.dir.cleanup()

    def replay(self) -> subprocess.CompletedProcess:
        """`mos-runtime replay --log` on this service's mixture log."""
        return subprocess.run([self.binary, "replay", "--log", str(self.log_path)],
                              capture_output=True, text=True, timeout=120)


class FakeService:
    """A loopback HTTP server answering fixed (status, body) per path, for answers a real
    service never gives (another API version) and for a service that never answers."""

    def __init__(self, routes: Dict[str, Tuple[int, str]], hang: bool = False):
        self.routes = routes
        self.requests: List[str] = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                fake.requests.append(f"{self.command} {self.path}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if hang:
                    time.sleep(2.0)
                    return
                status, body = fake.routes.get(self.path.split("?")[0],
                                               (404, '{"error": "no route"}'))
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = _answer
            do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeService":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# Chi-square ------------------------------------------------------------------------------------

def _gamma_q(a: float, x: float) -> float:
    """The regularised upper incomplete gamma function Q(a, x) (Numerical Recipes 6.2: the
    series below a + 1, the continued fraction above)."""
    if x <= 0.0:
        return 1.0
    gln = math.lgamma(a)
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(10000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return max(0.0, 1.0 - total * math.exp(-x + a * math.log(x) - gln))
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - gln) * h


def chi_square(observed: Sequence[int], probs: Sequence[float]) -> Tuple[float, int]:
    """Pearson's statistic of `observed` counts against `probs`, and its degrees of freedom
    (cells of zero probability must be empty and are left out)."""
    n = sum(observed)
    stat, cells = 0.0, 0
    for o, p in zip(observed, probs):
        if p <= 0.0:
            if o:
                return math.inf, max(1, cells)
            continue
        e = n * p
        stat += (o - e) ** 2 / e
        cells += 1
    return stat, max(1, cells - 1)


def chi_square_p(stat: float, dof: int) -> float:
    """P(X >= stat) for X ~ chi-square(dof)."""
    if math.isinf(stat):
        return 0.0
    return _gamma_q(dof / 2.0, stat / 2.0)


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
