"""PyTorch data-loading over several map-style datasets, mixed by the live MoS mixture.

    sampler = MixtureSampler({"maths": maths_ds, "code": code_ds}, seed=0)
    loader = DataLoader(sampler.dataset, batch_size=8, sampler=sampler, collate_fn=...)

`sampler.dataset` concatenates the datasets; the sampler yields indices into it, drawn by the
global plan of `mos_client.plan` (seeded, resumable, one disjoint slice per rank). It never does
I/O: a new mixture arrives through `set_mixture` (MixtureController / MosCallback, at the same
round on every rank) or, in a single process, from a `LiveMixture` polled in the background.
"""

from __future__ import annotations

import bisect
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch.utils.data as tud

from .plan import LiveMixture, MixturePlan

__all__ = ["MixtureDataset", "MixtureSampler", "MixtureIterableDataset"]

Datasets = Union[Mapping[str, Any], Sequence[Tuple[str, Any]]]


class MixtureDataset(tud.Dataset[Any]):
    """Map-style concatenation of named datasets (any objects with `__len__` and
    `__getitem__`), in the given order: the registration order of the service."""

    def __init__(self, datasets: Datasets):
        items = list(datasets.items() if isinstance(datasets, Mapping) else datasets)
        if not items:
            raise ValueError("no datasets")
        self.names: List[str] = [str(n) for n, _ in items]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"dataset names must be unique: {self.names}")
        self.parts = [d for _, d in items]
        self.sizes = [len(d) for d in self.parts]
        self.offsets: List[int] = []
        total = 0
        for s in self.sizes:
            self.offsets.append(total)
            total += s
        self.total = total

    def __len__(self) -> int:
        return self.total

    def locate(self, index: int) -> Tuple[int, int]:
        """(dataset, example) of a global index."""
        if not 0 <= index < self.total:
            raise IndexError(index)
        i = bisect.bisect_right(self.offsets, index) - 1
        while self.sizes[i] == 0:  # empty datasets share their offset with the next one
            i += 1
        return i, index - self.offsets[i]

    def __getitem__(self, index: int) -> Any:
        i, j = self.locate(int(index))
        return self.parts[i][j]


def _dist_rank_world() -> Tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class MixtureSampler(tud.Sampler[int]):
    """Yields indices of `self.dataset` (a MixtureDataset of `datasets`), each example's dataset
    drawn from the mixture in effect. Under torch.distributed (or with `rank`/`world_size`
    given) each rank yields its own disjoint slice of one global plan; every rank must use the
    same seed and datasets.

    `num_samples` is this rank's epoch length (default: the total size over the ranks). The
    stream does not restart at an epoch: the next epoch continues it, so examples come with
    replacement across epochs, as the method samples. `record=True` keeps every yielded index
    in `self.drawn` (for tests and audits).
    """

    def __init__(self, datasets: Union[Datasets, MixtureDataset], seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 num_samples: Optional[int] = None, record: bool = False):
        self.dataset = datasets if isinstance(datasets, MixtureDataset) else MixtureDataset(datasets)
        if rank is None or world_size is None:
            r, w = _dist_rank_world()
            rank = r if rank is None else rank
            world_size = w if world_size is None else world_size
        epoch = num_samples if num_samples is not None else max(1, self.dataset.total // world_size)
        self.plan = MixturePlan(self.dataset.sizes, seed=seed, rank=rank, world_size=world_size,
                                epoch_len=int(epoch), names=self.dataset.names)
        self.record = record
        self.drawn: List[int] = []

    @property
    def names(self) -> List[str]:
        return self.dataset.names

    def __len__(self) -> int:
        return int(self.plan.epoch_len or 0)

    def set_epoch_length(self, n: int) -> None:
        """Own draws per epoch (MosTrainer makes it a multiple of the batch, so a loader never
        draws an example it then drops)."""
        if n <= 0:
            raise ValueError(f"epoch length must be positive, got {n}")
        self.plan.epoch_len = int(n)
        self.plan.in_epoch %= self.plan.epoch_len

    def set_epoch(self, epoch: int) -> None:
        """Accepted for DistributedSampler compatibility; the stream simply continues."""

    def __iter__(self) -> Iterator[int]:
        offsets = self.dataset.offsets
        for i, j in self.plan.iter_epoch():
            g = offsets[i] + j
            if self.record:
                self.drawn.append(g)
            yield g

    # Mixture and state -------------------------------------------------------------------------

    def set_mixture(self, version: int, weights: Sequence[float],
                    at_round: Optional[int] = None) -> int:
        """See MixturePlan.set_mixture: a distributed caller passes the agreed round."""
        return self.plan.set_mixture(version, weights, at_round)

    def follow(self, live: LiveMixture) -> None:
        """Adopt every newer mixture a background `LiveMixture` sees (single process only)."""
        self.plan.follow(live)

    @property
    def version(self) -> Optional[int]:
        return self.plan.version

    @property
    def weights(self) -> Optional[List[float]]:
        return self.plan.weights

    def state_dict(self, consumed: Optional[int] = None) -> Dict[str, Any]:
        """The sampler's state; `consumed` = own indices the training actually used (the loader
        may have read ahead), e.g. steps x batch size x gradient accumulation."""
        return self.plan.state_dict(at_round=consumed)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.plan.load_state_dict(state)


class MixtureIterableDataset(tud.IterableDataset[Any]):
    """The same stream as an IterableDataset of examples (for loops that take one): iterating it
    yields `dataset[index]` for the indices of its `sampler`. Live mixture switches need the
    iteration in the main process, so DataLoader workers are refused: with workers, use
    MixtureSampler (indices are drawn in the main process, workers only load)."""

    def __init__(self, datasets: Union[Datasets, MixtureDataset], seed: int = 0,
                 rank: Optional[int] = None, world_size: Optional[int] = None,
                 num_samples: Optional[int] = None, record: bool = False):
        self.sampler = MixtureSampler(datasets, seed, rank, world_size, num_samples, record)
        self.dataset = self.sampler.dataset

    @property
    def plan(self) -> MixturePlan:
        return self.sampler.plan

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        if tud.get_worker_info() is not None:
            raise RuntimeError(
                "MixtureIterableDataset runs in the main process only (a worker holds a copy of "
                "the plan that never sees mixture updates): use num_workers=0, or MixtureSampler "
                "with a map-style DataLoader for worker processes")
        for g in self.sampler:
            yield self.dataset[g]

    def set_mixture(self, version: int, weights: Sequence[float],
                    at_round: Optional[int] = None) -> int:
        return self.sampler.set_mixture(version, weights, at_round)

    def state_dict(self, consumed: Optional[int] = None) -> Dict[str, Any]:
        return self.sampler.state_dict(consumed)

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
