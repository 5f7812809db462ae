"""The HTTP client of the mos-runtime scheduler service (`mos-runtime serve`), standard library only.

Every method maps to one endpoint of docs/openapi.yaml and returns the decoded JSON. Errors are
exceptions a user can act on:

- `MosUnreachableError`: nothing answered at the URL after the retries (it names the URL);
- `MosAuthError`: 401, a missing or wrong bearer token;
- `MosServiceError`: any other 4xx/5xx, with the service's message unchanged in `.message`;
- `MosVersionError`: the service does not speak this client's API version.

Floats travel as JSON numbers in shortest round-trip form on both sides, so the weights read here
are bit-identical to the service's.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

__all__ = [
    "API_VERSION",
    "MosAuthError",
    "MosClient",
    "MosError",
    "MosServiceError",
    "MosUnreachableError",
    "MosVersionError",
]

#: The service API this client speaks: the `/v1/` route prefix and `info.version` of
#: docs/openapi.yaml. The package's major version is this number.
API_VERSION = "1"

Json = Dict[str, Any]


class MosError(Exception):
    """Base class of every error this package raises about the service."""


class MosServiceError(MosError):
    """An error response from the service. `status` is the HTTP status (0: no answer) and
    `message` the service's own message, unchanged (it names the offending field)."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class MosAuthError(MosServiceError):
    """401: the request carried no bearer token or the wrong one. Nothing changed."""

    def __init__(self, status: int, message: str):
        super().__init__(status, message)
        # The hint goes into str() only; `.message` stays the service's text.
        self.args = (
            f"HTTP {status}: {message} (writes need the service's bearer token: pass "
            "MosClient(url, token=...), e.g. from MOS_SERVICE_TOKEN)",
        )


class MosUnreachableError(MosServiceError):
    """Nothing answered at `url` after `attempts` tries. A subclass of MosServiceError with
    status 0, as the single-file client raised, so existing `except` clauses keep working."""

    def __init__(self, url: str, attempts: int, reason: str):
        super().__init__(0, f"cannot reach the mos-runtime service at {url} after {attempts} "
                            f"attempt(s): {reason}; is `mos-runtime serve` running there?")
        self.url = url
        self.attempts = attempts
        self.reason = reason


class MosVersionError(MosError):
    """The service at `url` reports an API this client does not speak."""

    def __init__(self, url: str, found: str, detail: str = ""):
        super().__init__(
            f"the service at {url} speaks API {found!r}, this mos_client speaks API "
            f"{API_VERSION!r}{detail}: install the mos_client that matches the service "
            "(pip install ./clients/python from the same checkout)"
        )
        self.url = url
        self.found = found


class _NoAnswer(Exception):
    """A transport failure; `sent` says whether the request may have reached the service."""

    def __init__(self, reason: str, sent: bool):
        super().__init__(reason)
        self.reason = reason
        self.sent = sent


def _transport_failure(e: BaseException) -> _NoAnswer:
    """Classifies a transport error. urllib wraps in URLError exactly the failures of connecting
    and sending, so such a request never fully reached the service (a write is safe to retry);
    anything raised while waiting for or reading the answer (a timeout, a reset) may follow a
    request the service applied (a write is not)."""
    if isinstance(e, urllib.error.URLError):
        reason = e.reason
        return _NoAnswer(str(reason) or type(reason).__name__, sent=False)
    return _NoAnswer(str(e) or type(e).__name__, sent=True)


class MosClient:
    """Talks to one scheduler service. Reads need no token; writes send `Authorization: Bearer`.

    `retries` extra attempts are made when nothing answers, `backoff` seconds apart, doubling up
    to `max_backoff`. A write is retried only when its connection was refused (so it cannot have
    been applied); a write that timed out after sending is not replayed, since the service may
    have applied it: the error says so. `check_version` (default) checks the service's API on the
    first request.
    """

    def __init__(
        self,
        url: str,
        token: Optional[str] = None,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        check_version: bool = True,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._sleep = sleep
        self._version_checked = not check_version
        self.api_version: Optional[str] = None

    def __repr__(self) -> str:  # never shows the token
        return f"MosClient({self.url!r}, token={'set' if self.token else None})"

    # Transport ---------------------------------------------------------------------------------

    def _once(self, method: str, path: str, data: Optional[bytes], headers: Dict[str, str]
              ) -> Tuple[int, bytes, str]:
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return resp.status, resp.read(), resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            return e.code, e.read(), e.headers.get("Content-Type", "") if e.headers else ""
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            raise _transport_failure(e) from None

    def _raw(self, method: str, path: str, body: Any = None, auth: bool = False
             ) -> Tuple[int, bytes, str]:
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            # allow_nan=False: JSON has no NaN; refusing here gives a clearer error than the
            # service's "malformed JSON".
            try:
                data = json.dumps(body, allow_nan=False).encode("utf-8")
            except ValueError as e:
                raise ValueError(f"{method} {path}: {e} (a NaN or infinite statistic?)") from None
            headers["Content-Type"] = "application/json"
        if auth:
            if not self.token:
                raise MosAuthError(401, "this client has no token; writes need one")
            headers["Authorization"] = "Bearer " + self.token
        delay = self.backoff
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(method, path, data, headers)
            except _NoAnswer as e:
                if method != "GET" and e.sent:
                    raise MosServiceError(
                        0,
                        f"no answer from {self.url} to {method} {path} after sending it ({e.reason}); "
                        "the service may or may not have applied it: check GET /v1/history "
                        "before posting again",
                    ) from None
                if attempt > self.retries:
                    raise MosUnreachableError(self.url, attempt, e.reason) from None
            self._sleep(delay)
            delay = min(delay * 2.0, self.max_backoff)

    def _request(self, method: str, path: str, body: Any = None, auth: bool = False) -> Json:
        if not self._version_checked:
            self.check_version()
        status, raw, _ = self._raw(method, path, body, auth)
        text = raw.decode("utf-8", "replace")
        if status >= 400:
            try:
                message = json.loads(text)["error"]
            except (ValueError, KeyError, TypeError):
                message = text
            if status == 401:
                raise MosAuthError(status, message)
            raise MosServiceError(status, message)
        try:
            answer: Json = json.loads(text)
            return answer
        except ValueError:
            raise MosServiceError(status, f"not JSON from {self.url}{path}: {text[:200]!r}") from None

    # Version -----------------------------------------------------------------------------------

    def check_version(self) -> str:
        """Checks that the service speaks API_VERSION and returns the version it reports.

        `GET /v1/health` must answer in the shape of this API (a 404 means no v1 routes). When
        the health answer names its API (`api`), that is compared; otherwise the `info.version`
        of the OpenAPI document the service serves is. Raises MosVersionError on a mismatch."""
        status, raw, _ = self._raw("GET", "/v1/health")
        if status == 404:
            raise MosVersionError(self.url, "unknown", " (it has no GET /v1/health)")
        try:
            health = json.loads(raw.decode("utf-8", "replace"))
        except ValueError:
            health = None
        if status != 200 or not isinstance(health, dict) or health.get("status") != "ok" \
                or not isinstance(health.get("registered"), bool):
            raise MosVersionError(
                self.url, "unknown",
                f" (GET /v1/health answered {status} {raw[:120]!r}, not this API's health)")
        found = health.get("api")
        if found is None:
            status, raw, _ = self._raw("GET", "/v1/openapi.yaml")
            found = _openapi_version(raw.decode("utf-8", "replace")) if status == 200 else None
            if found is None:
                raise MosVersionError(
                    self.url, "unknown", " (it serves no readable /v1/openapi.yaml info.version)")
        found = str(found)
        if found != API_VERSION:
            raise MosVersionError(self.url, found)
        self.api_version = found
        self._version_checked = True
        return found

    # Reads -------------------------------------------------------------------------------------

    def health(self) -> Json:
        """`GET /v1/health`: {"status", "registered", "version"}."""
        return self._request("GET", "/v1/health")

    def mixture(self) -> Json:
        """`GET /v1/mixture`: {"version", "step", "names", "weights"}."""
        return self._request("GET", "/v1/mixture")

    def datasets(self) -> Json:
        """`GET /v1/datasets`: the registration and the scheduler settings."""
        return self._request("GET", "/v1/datasets")

    def history(self, since: int = 0, limit: Optional[int] = None) -> Json:
        """`GET /v1/history`: {"start", "updates", "version"}; updates above version `since`."""
        query = f"?since={int(since)}"
        if limit is not None:
            query += f"&limit={int(limit)}"
        return self._request("GET", "/v1/history" + query)

    # Writes ------------------------------------------------------------------------------------

    def register(self, sizes: Union[Mapping[str, int], Iterable[Tuple[str, int]]]) -> Json:
        """`POST /v1/datasets`, once. `sizes` maps name -> training examples (insertion order is
        the dataset order) or is a list of (name, size). Returns the prior mixture (version 0)."""
        items = sizes.items() if isinstance(sizes, Mapping) else sizes
        body = {"datasets": [{"name": n, "size": int(s)} for n, s in items]}
        return self._request("POST", "/v1/datasets", body, auth=True)

    def ensure_registered(self, sizes: Union[Mapping[str, int], Sequence[Tuple[str, int]]]) -> Json:
        """Registers `sizes`, or, when the service already holds a registration (a restarted
        trainer), checks it is the same one and returns the current mixture. A different
        registration raises MosServiceError(409) naming both."""
        items = list(sizes.items() if isinstance(sizes, Mapping) else sizes)
        try:
            return self.register(items)
        except MosServiceError as e:
            if e.status != 409:
                raise
        held = [(d["name"], int(d["size"])) for d in self.datasets()["datasets"]]
        wanted = [(n, int(s)) for n, s in items]
        if held != wanted:
            raise MosServiceError(
                409, f"the service at {self.url} is registered with {held}, not {wanted}: "
                     "restart it (state is in memory) or use another service")
        return self.mixture()

    def update(self, step: Optional[int] = None, counts: Optional[Sequence[int]] = None,
               datasets: Optional[Sequence[str]] = None, **stats: Any) -> Json:
        """`POST /v1/updates` with exactly one of nll=, perplexities=, embeddings=, rewards=.
        Returns the update record (before/after mixture, raw and smoothed rewards, version)."""
        body: Json = {k: v for k, v in stats.items() if v is not None}
        if step is not None:
            body["step"] = int(step)
        if counts is not None:
            body["counts"] = [int(c) for c in counts]
        if datasets is not None:
            body["datasets"] = list(datasets)
        return self._request("POST", "/v1/updates", body, auth=True)

    def post_nll(self, step: Optional[int], now: Sequence[Sequence[float]],
                 initial: Sequence[Sequence[float]], counts: Optional[Sequence[int]] = None) -> Json:
        """DIFF from per-example mean NLLs (nats): rows per dataset, same probe examples."""
        return self.update(step=step, counts=counts, nll={"now": _rows(now), "initial": _rows(initial)})

    def post_perplexities(self, step: Optional[int], now: Sequence[Sequence[float]],
                          initial: Sequence[Sequence[float]],
                          counts: Optional[Sequence[int]] = None) -> Json:
        """DIFF from per-example perplexities."""
        return self.update(step=step, counts=counts,
                           perplexities={"now": _rows(now), "initial": _rows(initial)})

    def post_embeddings(self, step: Optional[int], embeddings: Sequence[Sequence[float]],
                        counts: Optional[Sequence[int]] = None) -> Json:
        """COSSIM from per-dataset mean embeddings (one vector per dataset)."""
        return self.update(step=step, counts=counts, embeddings=_rows(embeddings))

    def post_rewards(self, step: Optional[int], rewards: Sequence[float],
                     counts: Optional[Sequence[int]] = None) -> Json:
        """Ready-made rewards, used as given by the REINFORCE update."""
        return self.update(step=step, counts=counts, rewards=[float(r) for r in rewards])


def _rows(rows: Sequence[Sequence[float]]) -> List[List[float]]:
    # float(): numpy / torch scalars are not JSON-serialisable; float() of them is exact.
    return [[float(x) for x in row] for row in rows]


_INFO_VERSION = re.compile(r"^info:\s*\n(?:[ \t]+.*\n)*?[ \t]+version:\s*[\"']?([^\"'\s#]+)", re.M)


def _openapi_version(text: str) -> Optional[str]:
    """`info.version` of an OpenAPI YAML document, read without a YAML parser: the first
    `version:` line indented under the top-level `info:` key."""
    m = _INFO_VERSION.search(text if text.endswith("\n") else text + "\n")
    return m.group(1) if m else None
