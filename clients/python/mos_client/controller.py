"""`MixtureController`: the mixture update of the method, for any training loop.

    ctl = MixtureController(client, sampler, probes)      # sampler: MixtureSampler or MixturePlan
    ctl.start(model)                                       # register, theta_0, adopt the prior
    for step in range(1, steps + 1):
        train_one_step(next(batches))
        ctl.step(step, model)                              # every update_every steps: probe,
                                                           # post, switch the sampler
    torch.save({"mos": ctl.state_dict(consumed_rounds=step * batch_size), ...}, path)

Only rank 0 runs the probes and talks to the service; the new mixture is broadcast, and every
rank switches its sampler at the same global position (the largest round any rank has drawn, so
that no rank has drawn past it). The controller itself needs no torch: with a single process and
probes that return plain lists it runs on the standard library (the tests do that).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional

from ._client import MosClient, MosError, MosServiceError
from .dist import default_comm
from .plan import MixturePlan

__all__ = ["MixtureController", "CONTROLLER_FORMAT"]

CONTROLLER_FORMAT = 1


def _plan_of(sampler: Any) -> MixturePlan:
    plan = getattr(sampler, "plan", sampler)
    if not isinstance(plan, MixturePlan):
        raise TypeError(f"expected a MixtureSampler, MixtureIterableDataset or MixturePlan, "
                        f"got {type(sampler).__name__}")
    return plan


class MixtureController:
    """Runs the mixture updates of one training run (see the module docstring).

    `probes` computes the statistics: an object with `reward` ("diff" or "cossim"),
    `prepare(model)` (called once at the start: DIFF computes its theta_0 values there),
    `compute(model)` returning the keyword arguments of `MosClient.update` (e.g.
    `{"nll": {"now": ..., "initial": ...}}`), and `state_dict()` / `load_state_dict()`.
    `probes=None` posts nothing (the mixture is only read). `update_every` defaults to the
    service's `scheduler.update_every`.
    """

    def __init__(self, client: MosClient, sampler: Any, probes: Any = None,
                 update_every: Optional[int] = None, comm: Any = None):
        self.client = client
        self.plan = _plan_of(sampler)
        self.probes = probes
        self.update_every = update_every
        self.comm = comm
        self.settings: Dict[str, Any] = {}
        self.history: List[Dict[str, Any]] = []  # {step, version, at_round} per adopted mixture
        self.last_record: Optional[Dict[str, Any]] = None
        self.on_update: List[Callable[[Dict[str, Any]], None]] = []
        self._last_totals: List[int] = [0] * len(self.plan.sizes)
        self._restored = False
        self._started = False

    @property
    def names(self) -> List[str]:
        return list(self.plan.names)

    @property
    def rank(self) -> int:
        return int(self._comm().rank)

    def _comm(self) -> Any:
        if self.comm is None:
            self.comm = default_comm()
        return self.comm

    def _on_rank0(self, fn: Callable[[], Any]) -> Any:
        """Runs `fn` on rank 0 and hands its result (or its error) to every rank, so that a
        failure on rank 0 raises everywhere instead of leaving the others waiting."""
        comm = self._comm()
        payload: Any = None
        failure: Optional[BaseException] = None
        if comm.rank == 0:
            try:
                payload = {"ok": fn()}
            except Exception as e:  # noqa: BLE001 - re-raised below, on every rank
                failure = e
                if isinstance(e, MosServiceError):
                    payload = {"service_error": [e.status, e.message, str(e)]}
                else:
                    payload = {"error": f"{type(e).__name__}: {e}"}
        shipped = comm.broadcast(payload)
        if failure is not None:
            raise failure  # rank 0: the original exception, with its type and traceback
        if "service_error" in shipped:
            status, message, text = shipped["service_error"]
            err = MosServiceError(status, message)
            err.args = (f"on rank 0: {text}",)
            raise err
        if "error" in shipped:
            raise MosError(f"rank 0 failed: {shipped['error']}")
        return shipped["ok"]

    # Start -------------------------------------------------------------------------------------

    def start(self, model: Any = None) -> Dict[str, Any]:
        """Registers the datasets (or checks an existing registration), prepares the probes
        (DIFF: theta_0 values, unless restored from a checkpoint) and, unless restored, adopts
        the service's current mixture. Returns that mixture."""
        plan = self.plan
        comm = self._comm()
        if comm.world_size != plan.world_size or comm.rank != plan.rank:
            raise MosError(f"the sampler is rank {plan.rank} of {plan.world_size} but this process "
                           f"is rank {comm.rank} of {comm.world_size}: build the sampler after "
                           "torch.distributed is initialised, or pass the right rank/world_size")

        def begin() -> Dict[str, Any]:
            mixture = self.client.ensure_registered(list(zip(plan.names, plan.sizes)))
            settings = self.client.datasets()["start"]["scheduler"]
            if self.probes is not None:
                want = str(settings.get("reward"))
                have = getattr(self.probes, "reward", None)
                if have is not None and have != want:
                    raise MosError(f"the service at {self.client.url} computes the {want!r} "
                                   f"reward but the probes give {have!r} statistics: use "
                                   f"{'DiffProbes' if want == 'diff' else 'CossimProbes'}")
                self.probes.prepare(model)
            return {"mixture": mixture, "settings": settings}

        got = self._on_rank0(begin)
        self.settings = got["settings"]
        if self.update_every is None:
            self.update_every = int(self.settings.get("update_every") or 100)
        if self.update_every <= 0:
            raise ValueError(f"update_every must be positive, got {self.update_every}")
        mixture = got["mixture"]
        if not self._restored:
            at = self._comm().max_int(plan.round)
            plan.set_mixture(int(mixture["version"]), mixture["weights"], at_round=at)
            self.history.append({"step": int(mixture["step"]), "version": int(mixture["version"]),
                                 "at_round": at})
        self._started = True
        return dict(mixture)

    # Steps -------------------------------------------------------------------------------------

    def step(self, step: int, model: Any = None) -> Optional[Dict[str, Any]]:
        """Call after every optimiser step with the number of steps done. Every `update_every`
        steps: rank 0 computes the probes and posts them with the examples drawn since the last
        update, and every rank switches its sampler to the new mixture. Returns the service's
        update record then (the same on every rank), else None. No collective runs on other
        steps, so ranks must call it with the same step numbers."""
        if not self._started:
            raise RuntimeError("call start() before step()")
        every = self.update_every
        assert every is not None  # start() set it
        if self.probes is None or step <= 0 or step % every != 0:
            return None
        plan = self.plan
        counts = [t - p for t, p in zip(plan.totals, self._last_totals)]

        def post() -> Dict[str, Any]:
            stats = self.probes.compute(model)
            _check_finite(stats)
            return self.client.update(step=step, counts=counts, **stats)

        record = self._on_rank0(post)
        at = self._comm().max_int(plan.round)
        plan.set_mixture(int(record["version"]), record["after"], at_round=at)
        self._last_totals = list(plan.totals)
        self.history.append({"step": int(step), "version": int(record["version"]), "at_round": at})
        self.last_record = record
        for hook in self.on_update:
            hook(record)
        return dict(record)

    # State -------------------------------------------------------------------------------------

    def state_dict(self, consumed_rounds: Optional[int] = None) -> Dict[str, Any]:
        """JSON-serialisable state: the sampler's plan (as of `consumed_rounds` own draws when
        the loader reads ahead, e.g. steps x batch size x accumulation), the probes (their
        example ids and theta_0 values) and the bookkeeping of the counts."""
        return {
            "format": CONTROLLER_FORMAT,
            "plan": self.plan.state_dict(at_round=consumed_rounds),
            "probes": None if self.probes is None else self.probes.state_dict(),
            "last_totals": list(self._last_totals),
            "history": [dict(h) for h in self.history],
            "update_every": self.update_every,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores `state_dict()` before `start()`: the sampler continues its stream, and the
        probes keep their examples and theta_0 values (a resumed model is no longer theta_0)."""
        if state.get("format") != CONTROLLER_FORMAT:
            raise ValueError(f"unknown mixture controller state format {state.get('format')!r}")
        self.plan.load_state_dict(state["plan"])
        if self.probes is not None and state.get("probes") is not None:
            self.probes.load_state_dict(state["probes"])
        self._last_totals = [int(t) for t in state["last_totals"]]
        self.history = [dict(h) for h in state["history"]]
        if self.update_every is None:
            self.update_every = state.get("update_every")
        self._restored = True


def _check_finite(stats: Dict[str, Any]) -> None:
    """A NaN statistic (a diverged model) would be refused by JSON; say which one it is."""

    def walk(x: Any, path: str) -> None:
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, f"{path}.{k}" if path else k)
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                walk(v, f"{path}[{i}]")
        elif isinstance(x, float) and not math.isfinite(x):
            raise ValueError(f"probe statistic {path} is {x}: the model's outputs are not finite")

    walk(stats, "")
