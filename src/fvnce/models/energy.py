"""Unnormalised latent-variable models with neural energies.

* :class:`EnergyTiltedVAE` -- a VAE joint tilted by a learned function of ``x``:
  ``log p~(x, z) = log p_base(x, z) + g(x) - c``.  Starting from ``g = 0`` it *is* the
  base VAE (a pre-trained VAE is a natural start), and the base VAE is a good importance
  proposal for its partition function ``Z = E_{p_base}[exp g(x)]``.
* :class:`MLPEnergy` -- ``log p~(x, z) = -E(x, z) - |z|^2/2 - lam |x|^2/2 - c`` with
  ``E`` an MLP of ``(x, z)``; the quadratic terms keep it integrable.
"""

from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch import Tensor, nn

from ..encoders import mlp
from .base import LatentVariableModel

__all__ = ["EnergyTiltedVAE", "MLPEnergy"]


class EnergyTiltedVAE(LatentVariableModel):
    normalised = False

    def __init__(self, base: LatentVariableModel, x_dim: int, hidden: Sequence[int] = (128,)) -> None:
        super().__init__()
        self.base = base
        self.tilt = mlp([x_dim, *hidden, 1])
        last = self.tilt[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self._init_log_normaliser()

    @classmethod
    def from_vae(cls, vae: LatentVariableModel, x_dim: int, hidden: Sequence[int] = (128,), copy_base: bool = True):
        """Start from a (pre-trained) normalised model; ``copy_base=False`` shares its weights."""
        return cls(copy.deepcopy(vae) if copy_base else vae, x_dim, hidden)

    def g(self, x: Tensor) -> Tensor:
        return self.tilt(x).squeeze(-1)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.base.log_joint(x, z) + self.g(x) - self.log_normaliser

    def proposal(self) -> LatentVariableModel:
        return self.base

    def sample(self, n: int) -> Tensor:  # pragma: no cover - documented limitation
        raise NotImplementedError("EnergyTiltedVAE has no exact sampler; use fvnce.evaluate.sample "
                                  "(importance resampling through the base model)")


class MLPEnergy(LatentVariableModel):
    normalised = False

    def __init__(self, x_dim: int, z_dim: int = 4, hidden: Sequence[int] = (128, 128), lam: float = 0.05) -> None:
        super().__init__()
        if lam <= 0:
            raise ValueError(f"lam must be positive to keep the model integrable, got {lam}")
        self.energy = mlp([x_dim + z_dim, *hidden, 1])
        self.lam, self.z_dim = lam, z_dim
        self._init_log_normaliser()

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        xb = x.expand(*z.shape[:-1], x.shape[-1])
        e = self.energy(torch.cat([xb, z], dim=-1)).squeeze(-1)
        return -e - 0.5 * (z ** 2).sum(-1) - 0.5 * self.lam * (xb ** 2).sum(-1) - self.log_normaliser

