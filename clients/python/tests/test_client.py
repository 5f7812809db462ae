"""MosClient against a real `mos-runtime serve` on loopback (standard library only).

tests/python_client.rs starts the service and passes MOS_SERVICE_URL / MOS_SERVICE_TOKEN; run by
hand, this file starts its own from MOS_RUNTIME_BIN or target/release/mos-runtime.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
import unittest
import urllib.error
import urllib.request
from pathlib import Path

import mos_client
from mos_client import (
    API_VERSION,
    LiveMixture,
    MixtureController,
    MixturePlan,
    MosAuthError,
    MosClient,
    MosServiceError,
    MosUnreachableError,
    MosVersionError,
)
from mos_client._client import _openapi_version

from _support import FakeService, ServiceProcess, closed_port, runtime_bin, wait_for

NAMES = ["maths", "medicine", "chat", "nlp"]
SIZES = [26200, 5200, 9300, 62600]
PROBE = 6

_own_service = None


def setUpModule() -> None:
    global _own_service
    if os.environ.get("MOS_SERVICE_URL"):
        return
    if runtime_bin() is None:
        raise unittest.SkipTest("no service: set MOS_SERVICE_URL/MOS_SERVICE_TOKEN or build "
                                "target/release/mos-runtime")
    _own_service = ServiceProcess('reward = "diff"\nema = true\nscorer_lr = 1e-3\nscorer_steps = 50')
    _own_service.__enter__()
    os.environ["MOS_SERVICE_URL"] = _own_service.url
    os.environ["MOS_SERVICE_TOKEN"] = _own_service.token


def tearDownModule() -> None:
    if _own_service is not None:
        _own_service.__exit__(None, None, None)
        del os.environ["MOS_SERVICE_URL"]
        del os.environ["MOS_SERVICE_TOKEN"]


def raw_error(url: str, method: str, path: str, body: dict, token: str) -> tuple:
    """The service's own answer to a request, read without mos_client."""
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method=method,
                                 headers={"Content-Type": "application/json",
                                          "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def nll_rows(k: int) -> list:
    """Per-example NLLs after `k` updates: each dataset learns at its own rate."""
    return [[(2.5 + 0.3 * i + 0.01 * j) * (0.5 + 0.5 * math.exp(-k * (0.05 + 0.1 * i)))
             for j in range(PROBE)] for i in range(len(NAMES))]


class ServiceTest(unittest.TestCase):
    """Everything that needs the one registered service. Each test reads the version it starts
    from, so they do not depend on each other's order."""

    url: str
    token: str
    client: MosClient
    prior: dict

    @classmethod
    def setUpClass(cls) -> None:
        cls.url = os.environ["MOS_SERVICE_URL"]
        cls.token = os.environ["MOS_SERVICE_TOKEN"]
        cls.client = MosClient(cls.url, token=cls.token, retries=2, backoff=0.05)
        if cls.client.health()["registered"]:
            raise AssertionError(f"{cls.url} is already registered: these tests need a fresh service")
        cls.prior = cls.client.register(dict(zip(NAMES, SIZES)))

    def test_the_package_version_is_the_api_version(self) -> None:
        self.assertEqual(mos_client.__version__.split(".")[0], API_VERSION)
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
        declared = re.search(r'^version\s*=\s*"([^"]+)"', text, re.M)
        assert declared is not None
        self.assertEqual(declared.group(1), mos_client.__version__)

    def test_the_service_speaks_this_api(self) -> None:
        client = MosClient(self.url)
        self.assertEqual(client.check_version(), API_VERSION)
        with urllib.request.urlopen(self.url + "/v1/openapi.yaml", timeout=10) as r:
            self.assertEqual(_openapi_version(r.read().decode()), API_VERSION)
        health = client.health()
        self.assertEqual(health["status"], "ok")
        self.assertTrue(health["registered"])

    def test_registration_gives_the_temperature_prior(self) -> None:
        self.assertEqual(self.prior["version"], 0)
        self.assertEqual(self.prior["names"], NAMES)
        tau = self.client.datasets()["start"]["scheduler"]["init_temperature"]
        q = [s / sum(SIZES) for s in SIZES]
        qt = [x ** (1.0 / tau) for x in q]
        expected = [x / sum(qt) for x in qt]
        for got, want in zip(self.prior["weights"], expected):
            self.assertAlmostEqual(got, want, delta=1e-12)
        self.assertEqual([d["name"] for d in self.client.datasets()["datasets"]], NAMES)

    def test_a_second_registration_is_refused_with_the_services_message(self) -> None:
        body = {"datasets": [{"name": n, "size": s} for n, s in zip(NAMES, SIZES)]}
        status, answer = raw_error(self.url, "POST", "/v1/datasets", body, self.token)
        self.assertEqual(status, 409)
        with self.assertRaises(MosServiceError) as cm:
            self.client.register(dict(zip(NAMES, SIZES)))
        self.assertEqual(cm.exception.status, 409)
        self.assertEqual(cm.exception.message, answer["error"])
        self.assertIn(answer["error"], str(cm.exception))

    def test_ensure_registered_accepts_the_same_datasets_only(self) -> None:
        mix = self.client.ensure_registered(dict(zip(NAMES, SIZES)))
        self.assertEqual(mix["names"], NAMES)
        with self.assertRaises(MosServiceError) as cm:
            self.client.ensure_registered({"maths": 1, "other": 2})
        self.assertEqual(cm.exception.status, 409)
        self.assertIn("other", cm.exception.message)

    def test_an_update_is_applied_once_and_read_back_bit_for_bit(self) -> None:
        before = self.client.mixture()
        record = self.client.post_nll(100, now=nll_rows(3), initial=nll_rows(0),
                                      counts=[1, 2, 3, 4])
        self.assertEqual(record["version"], before["version"] + 1)
        self.assertEqual(record["before"], before["weights"])
        self.assertEqual(record["counts"], [1, 2, 3, 4])
        after = self.client.mixture()
        self.assertEqual(after["version"], record["version"])
        self.assertEqual(after["weights"], record["after"])  # float equality: bit for bit
        self.assertAlmostEqual(math.fsum(after["weights"]), 1.0, delta=1e-12)
        page = self.client.history(since=record["version"] - 1, limit=1)
        self.assertEqual(len(page["updates"]), 1)
        self.assertEqual(page["updates"][0]["after"], record["after"])

    def test_an_invalid_update_raises_the_services_message_and_changes_nothing(self) -> None:
        before = self.client.mixture()
        bad = {"nll": {"now": nll_rows(1)[:2], "initial": nll_rows(0)[:2]}}
        status, answer = raw_error(self.url, "POST", "/v1/updates", bad, self.token)
        self.assertEqual(status, 422)
        with self.assertRaises(MosServiceError) as cm:
            self.client.post_nll(1, now=nll_rows(1)[:2], initial=nll_rows(0)[:2])
        self.assertEqual(cm.exception.status, 422)
        self.assertEqual(cm.exception.message, answer["error"])
        self.assertIn("nll.now", cm.exception.message)
        self.assertEqual(self.client.mixture(), before)

    def test_a_nan_statistic_is_refused_before_it_is_sent(self) -> None:
        before = self.client.mixture()
        with self.assertRaises(ValueError) as cm:
            self.client.post_rewards(1, [1.0, float("nan"), 1.0, 1.0])
        self.assertIn("NaN", str(cm.exception))
        self.assertEqual(self.client.mixture(), before)

    def test_a_wrong_token_is_an_auth_error_naming_the_fix(self) -> None:
        before = self.client.mixture()
        status, answer = raw_error(self.url, "POST", "/v1/updates", {"rewards": [1, 1, 1, 1]},
                                   "wrong-token")
        self.assertEqual(status, 401)
        with self.assertRaises(MosAuthError) as cm:
            MosClient(self.url, token="wrong-token").post_rewards(1, [1.0, 1.0, 1.0, 1.0])
        self.assertEqual(cm.exception.status, 401)
        self.assertEqual(cm.exception.message, answer["error"])
        self.assertIn("token", str(cm.exception))
        self.assertNotIn(self.token, str(cm.exception))
        with self.assertRaises(MosAuthError):
            MosClient(self.url).post_rewards(1, [1.0, 1.0, 1.0, 1.0])  # no token at all
        self.assertEqual(self.client.mixture(), before)
        self.assertNotIn(self.token, repr(self.client))

    def test_the_live_mixture_follows_updates_off_the_calling_thread(self) -> None:
        live = LiveMixture(MosClient(self.url), interval=0.05).start()
        try:
            # Steps must not go backwards on the shared service (409), so this test posts after
            # whatever the tests before it posted.
            step = self.client.mixture()["step"] + 7
            record = self.client.post_rewards(step, [2.0, 1.0, 1.0, 0.5])
            wait_for("the poller to see the update",
                     lambda: live.snapshot is not None and live.snapshot[0] >= record["version"])
            self.assertIsNone(live.error)
        finally:
            live.stop()
        plan = MixturePlan(SIZES, seed=1, names=NAMES)
        plan.follow(live)
        plan.draw()
        self.assertGreaterEqual(plan.version, record["version"])

    def test_the_controller_posts_every_update_every_steps_and_switches_the_plan(self) -> None:
        class Probes:
            reward = "diff"

            def __init__(self) -> None:
                self.k = 0
                self.prepared = 0

            def prepare(self, model: object) -> None:
                self.prepared += 1

            def compute(self, model: object) -> dict:
                self.k += 1
                return {"nll": {"now": nll_rows(self.k), "initial": nll_rows(0)}}

            def state_dict(self) -> dict:
                return {"k": self.k}

            def load_state_dict(self, s: dict) -> None:
                self.k = s["k"]

        plan = MixturePlan(SIZES, seed=3, names=NAMES)
        probes = Probes()
        ctl = MixtureController(self.client, plan, probes, update_every=5)
        start = ctl.start()
        self.assertEqual(plan.version, start["version"])
        self.assertEqual(probes.prepared, 1)
        records = []
        # The shared service refuses a step below its last one (409): count from the next
        # multiple of update_every after it, so the posts still fall on steps 5 and 10 of this loop.
        base = (self.client.mixture()["step"] // 5 + 1) * 5
        for step in range(1, 11):
            for _ in range(4):
                plan.draw()
            records.append(ctl.step(base + step))
        posted = [r for r in records if r is not None]
        self.assertEqual([i + 1 for i, r in enumerate(records) if r is not None], [5, 10])
        self.assertEqual(posted[1]["version"], posted[0]["version"] + 1)
        self.assertEqual(plan.version, posted[1]["version"])
        self.assertEqual(plan.weights, posted[1]["after"])
        # Counts are the examples drawn since the previous update, per dataset.
        self.assertEqual(sum(posted[0]["counts"]), 20)
        self.assertEqual(sum(posted[1]["counts"]), 20)
        self.assertEqual([a + b for a, b in zip(posted[0]["counts"], posted[1]["counts"])],
                         plan.totals)
        # A restored controller continues the same stream with the same probes.
        state = json.loads(json.dumps(ctl.state_dict()))
        expected = [plan.draw() for _ in range(30)]
        plan2 = MixturePlan(SIZES, seed=3, names=NAMES)
        probes2 = Probes()
        ctl2 = MixtureController(self.client, plan2, probes2, update_every=5)
        ctl2.load_state_dict(state)
        ctl2.start()
        self.assertEqual(probes2.k, 2)
        self.assertEqual([plan2.draw() for _ in range(30)], expected)

    def test_probes_of_the_wrong_reward_family_are_refused_at_the_start(self) -> None:
        class Cossim:
            reward = "cossim"

            def prepare(self, model: object) -> None:
                raise AssertionError("must not prepare probes the service cannot use")

        ctl = MixtureController(self.client, MixturePlan(SIZES, names=NAMES), Cossim(),
                                update_every=5)
        with self.assertRaises(mos_client.MosError) as cm:
            ctl.start()
        self.assertIn("diff", str(cm.exception))


class UnreachableTest(unittest.TestCase):
    def test_a_closed_port_is_retried_with_back_off_then_named(self) -> None:
        url = f"http://127.0.0.1:{closed_port()}"
        slept: list = []
        # check_version=False: the write itself must be retried, not a version check before it.
        client = MosClient(url, token="t", retries=3, backoff=0.01, max_backoff=0.03,
                           sleep=slept.append, check_version=False)
        for call in (client.mixture, lambda: client.post_rewards(1, [1.0])):
            slept.clear()
            with self.assertRaises(MosUnreachableError) as cm:
                call()
            self.assertEqual(slept, [0.01, 0.02, 0.03])  # doubling, capped
            self.assertEqual(cm.exception.attempts, 4)
            self.assertEqual(cm.exception.url, url)
            self.assertIn(url, str(cm.exception))
            self.assertEqual(cm.exception.status, 0)  # still a MosServiceError(0, ...)

    def test_real_back_off_waits(self) -> None:
        client = MosClient(f"http://127.0.0.1:{closed_port()}", retries=2, backoff=0.05)
        t0 = time.monotonic()
        with self.assertRaises(MosUnreachableError):
            client.health()
        self.assertGreaterEqual(time.monotonic() - t0, 0.15 - 0.01)

    def test_a_write_without_an_answer_is_not_replayed(self) -> None:
        ok = (200, '{"status": "ok", "registered": true, "version": 0, "api": "1"}')
        with FakeService({"/v1/health": ok}, hang=True) as fake:
            client = MosClient(fake.url, token="t", timeout=0.3, retries=3, backoff=0.01,
                               check_version=False)
            with self.assertRaises(MosServiceError) as cm:
                client.post_rewards(1, [1.0])
            self.assertEqual(cm.exception.status, 0)
            self.assertIn("may or may not have applied", str(cm.exception))
            self.assertEqual(fake.requests, ["POST /v1/updates"])


class VersionTest(unittest.TestCase):
    def refused(self, routes: dict) -> MosVersionError:
        with FakeService(routes) as fake:
            client = MosClient(fake.url, retries=0)
            with self.assertRaises(MosVersionError) as cm:
                client.mixture()
            self.assertIn(fake.url, str(cm.exception))
            self.assertNotIn("GET /v1/mixture", fake.requests)  # refused before any real call
            return cm.exception

    def test_a_health_naming_another_api_is_refused(self) -> None:
        e = self.refused({"/v1/health": (200, '{"status": "ok", "registered": false, "api": "2"}')})
        self.assertEqual(e.found, "2")

    def test_a_served_spec_of_another_version_is_refused(self) -> None:
        spec = 'openapi: 3.0.3\ninfo:\n  title: x\n  version: "2"\npaths: {}\n'
        e = self.refused({"/v1/health": (200, '{"status": "ok", "registered": false}'),
                          "/v1/openapi.yaml": (200, spec)})
        self.assertEqual(e.found, "2")

    def test_a_server_without_v1_routes_is_refused(self) -> None:
        self.refused({})
        self.refused({"/v1/health": (200, '{"healthy": true}')})

    def test_a_server_of_this_version_is_accepted(self) -> None:
        spec = 'openapi: 3.0.3\ninfo:\n  title: x\n  version: "1"\npaths: {}\n'
        mix = '{"version": 0, "step": 0, "names": ["a"], "weights": [1.0]}'
        with FakeService({"/v1/health": (200, '{"status": "ok", "registered": true}'),
                          "/v1/openapi.yaml": (200, spec), "/v1/mixture": (200, mix)}) as fake:
            self.assertEqual(MosClient(fake.url).mixture()["weights"], [1.0])


if __name__ == "__main__":
    unittest.main()
