"""The sampling plan behind `MixtureSampler`, in pure Python (no torch), so that it can be tested
anywhere and reasoned about on its own.

One *global* plan draws, at every global position g = 0, 1, 2, ..., a dataset from the mixture in
effect at g and then the next example of that dataset's current epoch permutation. With W ranks,
position g belongs to rank g % W: the plan advances in rounds of W positions, and every rank
simulates the whole round (cheap: a few integer operations per position) but yields only its own
position. So every rank holds the same global state after the same number of its own draws, no two
ranks ever take the same (dataset, example) within an epoch of that dataset, and the union of the
ranks' streams *is* the single-process stream of the same seed.

Randomness is counter-based (splitmix64 of the seed and the position), and the per-dataset
permutations are keyed Feistel networks walked in cycle, so the whole state is a handful of
integers: `state_dict()` is small JSON, and a resumed run continues the same stream exactly.

A new mixture takes effect at a round boundary (`set_mixture(..., at_round=R)`); a distributed
caller agrees on R first (the largest round any rank has reached), so that every rank switches at
the same global position even though DataLoaders read ahead.
"""

from __future__ import annotations

import bisect
import copy
import math
import threading
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["MixturePlan", "LiveMixture", "PLAN_FORMAT"]

PLAN_FORMAT = 1
_M64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Stream tags, so that the dataset choices and the permutations never share random numbers.
_CHOICE = 0x43484F494345  # "CHOICE"
_PERM = 0x5045524D  # "PERM"


def _mix(z: int) -> int:
    """The splitmix64 finaliser: a bijection of 64-bit integers with good avalanche."""
    z &= _M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
    return z ^ (z >> 31)


def _key(*parts: int) -> int:
    h = 0
    for p in parts:
        h = _mix((h ^ (p & _M64)) + _GOLDEN)
    return h


def _uniform(key: int, g: int) -> float:
    """The g-th number of the splitmix64 stream keyed by `key`, as a float in [0, 1)."""
    return (_mix(key + (g + 1) * _GOLDEN) >> 11) * (1.0 / (1 << 53))


class _Permutation:
    """A keyed pseudo-random permutation of range(n) in O(1) memory: a 4-round balanced Feistel
    network on the smallest even number of bits covering n, walked in cycle until the value
    falls below n (fewer than 4 steps on average, since the domain is under 4n)."""

    __slots__ = ("n", "key", "half", "mask")

    def __init__(self, n: int, key: int):
        self.n = n
        self.key = key
        bits = max(2, (max(n, 2) - 1).bit_length())
        bits += bits & 1
        self.half = bits // 2
        self.mask = (1 << self.half) - 1

    def __getitem__(self, x: int) -> int:
        half, mask, key = self.half, self.mask, self.key
        while True:
            left, right = x >> half, x & mask
            for r in range(4):
                left, right = right, left ^ (_mix(key ^ (r << 56) ^ right) & mask)
            x = (left << half) | right
            if x < self.n:
                return x


def _check_weights(weights: Sequence[float], n: int) -> List[float]:
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"mixture has {len(w)} weights for {n} datasets")
    if any(not math.isfinite(x) or x < 0.0 for x in w):
        raise ValueError(f"mixture weights must be finite and non-negative: {w}")
    return w


class MixturePlan:
    """The global sampling plan (see the module docstring). `sizes` are the datasets' lengths in
    registration order (`names`, optional, their names); `rank` / `world_size` pick this
    process's slice; `epoch_len` (optional) is the number of own draws per epoch of
    `iter_epoch`."""

    def __init__(self, sizes: Sequence[int], seed: int = 0, rank: int = 0, world_size: int = 1,
                 epoch_len: Optional[int] = None, names: Optional[Sequence[str]] = None):
        self.sizes = [int(s) for s in sizes]
        self.names = [f"dataset{i}" for i in range(len(self.sizes))] if names is None \
            else [str(n) for n in names]
        if len(self.names) != len(self.sizes):
            raise ValueError(f"{len(self.names)} names for {len(self.sizes)} datasets")
        if not self.sizes or any(s < 0 for s in self.sizes) or not any(self.sizes):
            raise ValueError(f"need at least one non-empty dataset, got sizes {self.sizes}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.epoch_len = epoch_len
        self._choice_key = _key(self.seed, _CHOICE)
        self.round = 0
        self.in_epoch = 0
        self.cursors = [[0, 0] for _ in self.sizes]  # [epoch, offset] per dataset
        self.totals = [0] * len(self.sizes)  # global draws per dataset (all ranks)
        self.version: Optional[int] = None
        self.weights: Optional[List[float]] = None
        self._cum: List[float] = []
        self.pending: List[Tuple[int, int, List[float]]] = []
        self._perms: Dict[Tuple[int, int], _Permutation] = {}
        self.live: Optional["LiveMixture"] = None
        # state_dict(at_round=...) replays from `_base` (a state no later than any round asked
        # for) with the switches scheduled since (`_switches`).
        self._base: Dict[str, Any] = self.state_dict()
        self._switches: List[Tuple[int, int, List[float]]] = []

    # Mixture -----------------------------------------------------------------------------------

    def set_mixture(self, version: int, weights: Sequence[float], at_round: Optional[int] = None
                    ) -> int:
        """Schedules `weights` (mixture `version`) from round `at_round` on (default: the next
        round this plan simulates). Returns the round it takes effect at. A round already
        simulated cannot change: that would rewrite examples already handed out."""
        w = _check_weights(weights, len(self.sizes))
        at = self.round if at_round is None else int(at_round)
        if at < self.round:
            raise ValueError(f"cannot switch the mixture at round {at}: round {self.round} "
                             "is already drawn")
        self.pending.append((at, int(version), w))
        self._switches.append((at, int(version), w))
        self.pending.sort(key=lambda p: (p[0], p[1]))
        self._apply_due()
        return at

    def follow(self, live: "LiveMixture") -> None:
        """Adopts every newer mixture `live` holds at the next round (single process only: in a
        distributed run the ranks must agree on the round, see `set_mixture`)."""
        if self.world_size > 1:
            raise RuntimeError("follow() would switch ranks at different positions; in a "
                               "distributed run switch through set_mixture(at_round=...)")
        self.live = live

    def _apply_due(self) -> None:
        while self.pending and self.pending[0][0] <= self.round:
            _, version, w = self.pending.pop(0)
            self._adopt(version, w)

    def _adopt(self, version: int, w: List[float]) -> None:
        # Empty datasets cannot be drawn from, whatever their weight.
        eff = [x if s > 0 else 0.0 for x, s in zip(w, self.sizes)]
        total = math.fsum(eff)
        if total <= 0.0:
            raise ValueError(f"mixture version {version} gives no weight to a non-empty dataset")
        acc, cum = 0.0, []
        for x in eff:
            acc += x / total
            cum.append(acc)
        self._cum = cum
        self.version = version
        self.weights = w

    # Drawing -----------------------------------------------------------------------------------

    def _perm(self, i: int, epoch: int) -> _Permutation:
        p = self._perms.get((i, epoch))
        if p is None:
            # Only the current epoch of each dataset is ever needed again.
            self._perms = {k: v for k, v in self._perms.items() if k[0] != i}
            p = _Permutation(self.sizes[i], _key(self.seed, _PERM, i, epoch))
            self._perms[(i, epoch)] = p
        return p

    def _choose(self, g: int) -> int:
        u = _uniform(self._choice_key, g)
        i = bisect.bisect_right(self._cum, u)
        if i >= len(self._cum):  # u at the rounding edge of the last bin
            i = max(k for k, s in enumerate(self.sizes) if s > 0 and self._cum[k] > 0.0)
        while self.sizes[i] == 0:  # a zero-width bin cannot be hit; kept for safety
            i += 1
        return i

    def _take(self, i: int) -> int:
        cur = self.cursors[i]
        j = self._perm(i, cur[0])[cur[1]]
        cur[1] += 1
        if cur[1] == self.sizes[i]:
            cur[0] += 1
            cur[1] = 0
        self.totals[i] += 1
        return j

    def draw(self) -> Tuple[int, int]:
        """Simulates one round and returns this rank's (dataset, example index)."""
        live = self.live
        if live is not None and not self.pending:
            snap = live.snapshot
            if snap is not None and (self.version is None or snap[0] > self.version):
                self.set_mixture(snap[0], snap[1])
        self._apply_due()
        if self.weights is None:
            raise RuntimeError("no mixture yet: call set_mixture() (MosCallback / MixtureController "
                               "do so from the service) before drawing")
        own = (0, 0)
        base = self.round * self.world_size
        for slot in range(self.world_size):
            i = self._choose(base + slot)
            j = self._take(i)
            if slot == self.rank:
                own = (i, j)
        self.round += 1
        if self.epoch_len:
            self.in_epoch = (self.in_epoch + 1) % self.epoch_len
        return own

    def iter_epoch(self) -> Iterator[Tuple[int, int]]:
        """The rest of the current epoch (all of it when `epoch_len` is None: endless)."""
        if not self.epoch_len:
            while True:
                yield self.draw()
        remaining = self.epoch_len - self.in_epoch
        for _ in range(remaining):
            yield self.draw()

    # State -------------------------------------------------------------------------------------

    def state_dict(self, at_round: Optional[int] = None) -> Dict[str, Any]:
        """The plan's state (JSON-serialisable). With `at_round`, the state as it was after that
        many rounds, for a consumer that reads ahead (a DataLoader's prefetch): it is recomputed
        from an earlier state and the mixture switches, which it keeps (including those due after
        `at_round`), so a run resumed from it draws exactly what this one did. Requests must not
        go back before an earlier `at_round` request."""
        if at_round is None or at_round == self.round:
            return {
                "format": PLAN_FORMAT,
                "seed": self.seed,
                "sizes": list(self.sizes),
                "world_size": self.world_size,
                "epoch_len": self.epoch_len,
                "round": self.round,
                "in_epoch": self.in_epoch,
                "cursors": [list(c) for c in self.cursors],
                "totals": list(self.totals),
                "version": self.version,
                "weights": None if self.weights is None else list(self.weights),
                "pending": [[r, v, list(w)] for r, v, w in self.pending],
            }
        at_round = int(at_round)
        if at_round > self.round:
            raise ValueError(f"round {at_round} is not drawn yet (at {self.round})")
        base = self._base
        if base["round"] > at_round:
            raise ValueError(f"the state at round {at_round} is no longer known (states are kept "
                             f"from round {base['round']} on)")
        replay = MixturePlan(self.sizes, self.seed, self.rank, self.world_size, self.epoch_len,
                             self.names)
        replay._load(base)
        # Switches scheduled after the base was taken are not in its pending list.
        replay.pending.extend((r, v, list(w)) for r, v, w in self._switches)
        replay.pending.sort(key=lambda p: (p[0], p[1]))
        while replay.round < at_round:
            replay.draw()
        state = replay.state_dict()
        # Every switch known now is applied in, or pending in, this state: it is the new base.
        self._base = copy.deepcopy(state)
        self._switches = []
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores a `state_dict()`: the next draws continue its stream. The datasets, the seed
        and the world size must be the same (a different world size would give the positions
        to other ranks)."""
        if state.get("format") != PLAN_FORMAT:
            raise ValueError(f"unknown sampler state format {state.get('format')!r}")
        for key, mine in (("sizes", self.sizes), ("seed", self.seed),
                          ("world_size", self.world_size)):
            if state[key] != mine:
                raise ValueError(f"the saved sampler state has {key} = {state[key]!r}, this "
                                 f"sampler {mine!r}: resume with the same datasets, seed and "
                                 "number of ranks")
        self._load(state)
        self._base = copy.deepcopy(state)
        self._switches = []

    def _load(self, state: Dict[str, Any]) -> None:
        self.epoch_len = state["epoch_len"] if self.epoch_len is None else self.epoch_len
        self.round = int(state["round"])
        self.in_epoch = int(state["in_epoch"])
        if self.epoch_len:
            self.in_epoch %= self.epoch_len
        self.cursors = [list(map(int, c)) for c in state["cursors"]]
        self.totals = [int(t) for t in state["totals"]]
        self.version, self.weights, self._cum = None, None, []
        if state["weights"] is not None:
            self._adopt(int(state["version"]), _check_weights(state["weights"], len(self.sizes)))
        self.pending = [(int(r), int(v), list(w)) for r, v, w in state["pending"]]


class LiveMixture:
    """The latest mixture of a service, refreshed off the training thread: `start()` polls
    `GET /v1/mixture` every `interval` seconds in a daemon thread, and `snapshot` is read without
    a lock (one attribute holding an immutable tuple), so a sampler never waits for the network."""

    def __init__(self, client: Any, interval: float = 5.0):
        self.client = client
        self.interval = interval
        self.snapshot: Optional[Tuple[int, Tuple[float, ...], int]] = None
        self.error: Optional[BaseException] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def refresh(self) -> Tuple[int, Tuple[float, ...], int]:
        m = self.client.mixture()
        snap = (int(m["version"]), tuple(float(w) for w in m["weights"]), int(m["step"]))
        self.snapshot = snap
        return snap

    def start(self) -> "LiveMixture":
        if self._thread is None:
            self.refresh()  # fail early (and loudly) if the service is not there
            self._thread = threading.Thread(target=self._run, name="mos-live-mixture", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.refresh()
                self.error = None
            except Exception as e:  # keep the last good mixture; the error is visible
                self.error = e

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
