"""A small client for the mos-runtime scheduler service (`mos-runtime serve`).

Standard library only (urllib, json), so it drops into any training script. Every method maps to
one endpoint of docs/openapi.yaml and returns the decoded JSON; an error response raises
MosServiceError with the HTTP status and the service's message (which names the offending field).

    client = MosClient("http://127.0.0.1:8750", token=os.environ["MOS_SERVICE_TOKEN"])
    client.register({"maths": 26200, "code": 5200})
    mix = client.mixture()                      # {"version", "step", "names", "weights"}
    client.post_nll(step, now=[[...], [...]], initial=[[...], [...]])

Floats travel as JSON numbers in shortest round-trip form on both sides, so the weights read here
are bit-identical to the service's.
"""

import json
import urllib.error
import urllib.request

__all__ = ["MosClient", "MosServiceError"]


class MosServiceError(Exception):
    """An error response from the service (or a refused connection, with status 0)."""

    def __init__(self, status, message):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class MosClient:
    """Talks to one scheduler service. Reads need no token; writes send `Authorization: Bearer`."""

    def __init__(self, url, token=None, timeout=30.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def _request(self, method, path, body=None, auth=False):
        data = None
        headers = {"Accept": "application/json"}
        if body is not None:
            # allow_nan=False: JSON has no NaN; refusing here gives a clearer error than the
            # service's "malformed JSON".
            data = json.dumps(body, allow_nan=False).encode("utf-8")
            headers["Content-Type"] = "application/json"
        if auth:
            if not self.token:
                raise MosServiceError(401, "this client has no token; writes need one")
            headers["Authorization"] = "Bearer " + self.token
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read().decode("utf-8"))
        except urllib.error.HTTPError as e:
            raw = e.read().decode("utf-8", "replace")
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw
            raise MosServiceError(e.code, message) from None
        except urllib.error.URLError as e:
            raise MosServiceError(0, f"cannot reach {self.url}: {e.reason}") from None

    # Reads -------------------------------------------------------------------------------------

    def health(self):
        """`GET /v1/health`: {"status", "registered", "version"}."""
        return self._request("GET", "/v1/health")

    def mixture(self):
        """`GET /v1/mixture`: {"version", "step", "names", "weights"}."""
        return self._request("GET", "/v1/mixture")

    def datasets(self):
        """`GET /v1/datasets`: the registration and the scheduler settings."""
        return self._request("GET", "/v1/datasets")

    def history(self, since=0, limit=None):
        """`GET /v1/history`: {"start", "updates", "version"}; updates above version `since`."""
        query = f"?since={int(since)}"
        if limit is not None:
            query += f"&limit={int(limit)}"
        return self._request("GET", "/v1/history" + query)

    # Writes ------------------------------------------------------------------------------------

    def register(self, sizes):
        """`POST /v1/datasets`, once. `sizes` maps name -> training examples (insertion order is
        the dataset order) or is a list of (name, size). Returns the prior mixture (version 0)."""
        items = sizes.items() if isinstance(sizes, dict) else sizes
        body = {"datasets": [{"name": n, "size": int(s)} for n, s in items]}
        return self._request("POST", "/v1/datasets", body, auth=True)

    def update(self, step=None, counts=None, datasets=None, **stats):
        """`POST /v1/updates` with exactly one of nll=, perplexities=, embeddings=, rewards=.
        Returns the update record (before/after mixture, raw and smoothed rewards, version)."""
        body = {k: v for k, v in stats.items() if v is not None}
        if step is not None:
            body["step"] = int(step)
        if counts is not None:
            body["counts"] = [int(c) for c in counts]
        if datasets is not None:
            body["datasets"] = list(datasets)
        return self._request("POST", "/v1/updates", body, auth=True)

    def post_nll(self, step, now, initial, counts=None):
        """DIFF from per-example mean NLLs (nats): rows per dataset, same probe examples."""
        return self.update(step=step, counts=counts, nll={"now": now, "initial": initial})

    def post_perplexities(self, step, now, initial, counts=None):
        """DIFF from per-example perplexities."""
        return self.update(step=step, counts=counts, perplexities={"now": now, "initial": initial})

    def post_embeddings(self, step, embeddings, counts=None):
        """COSSIM from per-dataset mean embeddings (one vector per dataset)."""
        return self.update(step=step, counts=counts, embeddings=embeddings)

    def post_rewards(self, step, rewards, counts=None):
        """Ready-made rewards, used as given by the REINFORCE update."""
        return self.update(step=step, counts=counts, rewards=rewards)

