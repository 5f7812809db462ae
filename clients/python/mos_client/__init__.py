"""mos_client: the Python side of `mos-runtime serve`, the Mixture-of-Skills scheduler service.

Standard library only at import time:

    from mos_client import MosClient
    client = MosClient("http://127.0.0.1:8750", token=os.environ["MOS_SERVICE_TOKEN"])
    client.register({"maths": 26200, "code": 5200})
    mix = client.mixture()                      # {"version", "step", "names", "weights"}
    client.post_nll(step, now=[[...], [...]], initial=[[...], [...]])

With the optional extras (`pip install "./clients/python[torch]"` or `[hf]`):

- `MixtureSampler` / `MixtureIterableDataset` (torch): draw each example's dataset from the
  live mixture, seeded, resumable, one disjoint slice per rank under torch.distributed;
- `DiffProbes` / `CossimProbes` (torch): the probe statistics of the method, computed from a
  model and a tokenizer;
- `MixtureController`: the plain-loop helper (probe, post, switch every `update_every` steps);
- `mos_client.hf.MosCallback` and `mos_client.hf.MosTrainer` for transformers.Trainer.

Those names are imported on first use, so `import mos_client` never needs torch.
"""

from __future__ import annotations

from typing import Any

from ._client import (
    API_VERSION,
    MosAuthError,
    MosClient,
    MosError,
    MosServiceError,
    MosUnreachableError,
    MosVersionError,
)
from .controller import MixtureController
from .plan import LiveMixture, MixturePlan

#: The package version; its major number is the service API version it speaks.
__version__ = "1.0.0"

__all__ = [
    "API_VERSION",
    "CossimProbes",
    "DiffProbes",
    "LiveMixture",
    "MixtureController",
    "MixtureDataset",
    "MixtureIterableDataset",
    "MixturePlan",
    "MixtureSampler",
    "MosAuthError",
    "MosClient",
    "MosError",
    "MosServiceError",
    "MosUnreachableError",
    "MosVersionError",
    "__version__",
]

# name -> submodule that defines it; those submodules import torch.
_LAZY = {
    "MixtureSampler": "sampler",
    "MixtureIterableDataset": "sampler",
    "MixtureDataset": "sampler",
    "DiffProbes": "probes",
    "CossimProbes": "probes",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mos_client' has no attribute {name!r}")
    import importlib

    try:
        mod = importlib.import_module(f".{module}", __name__)
    except ImportError as e:
        raise ImportError(
            f"mos_client.{name} needs torch ({e}); install it with "
            "pip install \"./clients/python[torch]\""
        ) from e
    return getattr(mod, name)
