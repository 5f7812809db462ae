"""The few collectives the mixture needs across ranks, with a single-process stand-in.

torch.distributed is used only when the program has already imported and initialised it: a
process that never imported torch cannot be in a process group, so checking `sys.modules`
keeps the standard-library path free of a (slow) torch import.
"""

from __future__ import annotations

import sys
from typing import Any


class LocalComm:
    """One process: rank 0 of 1; collectives are identities."""

    rank = 0
    world_size = 1

    def broadcast(self, obj: Any) -> Any:
        return obj

    def max_int(self, value: int) -> int:
        return int(value)


class TorchComm:
    """torch.distributed's default group. `broadcast` sends rank 0's object to every rank
    (pickled; small: a version and a weight vector), `max_int` is an all-reduce MAX."""

    def __init__(self, dist: Any):
        self.dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def broadcast(self, obj: Any) -> Any:
        box = [obj if self.rank == 0 else None]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def max_int(self, value: int) -> int:
        import torch

        # NCCL reduces only CUDA tensors; gloo only CPU ones.
        device = "cpu"
        if self.dist.get_backend() == "nccl":
            device = f"cuda:{torch.cuda.current_device()}"
        t = torch.tensor([int(value)], dtype=torch.int64, device=device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX)
        return int(t.item())


def default_comm() -> Any:
    """TorchComm when torch.distributed is initialised in this process, else LocalComm."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return TorchComm(dist)
    return LocalComm()
