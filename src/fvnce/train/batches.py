"""Training data on the device, the noise density of its rows, and the batch order.

The data order of epoch ``e`` is a ``randperm`` from a generator seeded with ``(seed,
e)``: it can be regenerated on resume without saving it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .config import steps_per_epoch

__all__ = ["BatchOrder", "noise_log_prob", "prepare_data"]


class BatchOrder:
    """Row indices of the batch of every step: epoch permutations seeded with ``seed``."""

    def __init__(self, seed: int, batch_size: int) -> None:
        self.seed, self.batch_size = seed, batch_size
        self._cache: tuple[int, Tensor] | None = None

    def perm(self, epoch: int, n: int) -> Tensor:
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        g = torch.Generator()
        g.manual_seed((self.seed * 1_000_003 + epoch * 7919 + 12345) % (2 ** 63))
        perm = torch.randperm(n, generator=g)
        self._cache = (epoch, perm)
        return perm

    def index(self, step: int, n: int) -> Tensor:
        """Row indices of the batch for 0-based ``step``."""
        bs = min(self.batch_size, n)
        spe = steps_per_epoch(n, bs)
        epoch, i = divmod(step, spe)
        return self.perm(epoch, n)[i * bs:(i + 1) * bs]


def prepare_data(x: Tensor | None, what: str, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """``x`` checked, in the parameters' floating dtype, on ``device``."""
    if x is None:
        return None
    if not isinstance(x, Tensor):
        raise ConfigError(f"{what} data must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ConfigError(f"{what} data must have shape (N, D) with N >= 1, got {tuple(x.shape)}")
    if x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x.to(device)


@torch.no_grad()
def noise_log_prob(x: Tensor | None, objective, noise) -> Tensor | None:
    """``log p_n(x)`` of every row, computed once (None when the objective or noise has no use for it)."""
    if x is None or not getattr(objective, "uses_noise", True) or noise is None \
            or not getattr(noise, "has_density", True):
        return None
    chunks = [noise.log_prob(x[i:i + 8192]) for i in range(0, x.shape[0], 8192)]
    return torch.cat(chunks).detach().to(x.dtype)
