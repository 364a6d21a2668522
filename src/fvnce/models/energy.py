"""Unnormalised latent-variable models with neural energies.

* :class:`EnergyTiltedVAE` -- a VAE joint tilted by a learned function of ``x``:
  ``log p~(x, z) = log p_base(x, z) + g(x) - c``.  Starting from ``g = 0`` it *is* the
  base VAE (a pre-trained VAE is a natural start), and the base VAE is a good importance
  proposal for its partition function ``Z = E_{p_base}[exp g(x)]``.

  Staying honest.  An unbounded tilt can hide mass from finitely many noise samples
  (spikes at training points), and then ``log Z`` through any proposal rests on a few
  weights.  ``tilt_bound=B`` makes ``g = B tanh(h / B)``, so ``|g| <= B``: the model's
  density stays within ``e^{+-B}`` of its base, the weights ``exp(g - c)`` of ``Z``
  through the base lie in an interval of ratio ``e^{2B}``, and their Pareto k-hat cannot
  exceed zero (bounded weights).  ``freeze_base=True`` trains the tilt and ``c`` only;
  with the base frozen the base is a fixed distribution and can serve as the noise
  (:class:`fvnce.noise.BaseModelNoise`), for which ``r(x) = exp(g(x) - c)`` exactly.
* :class:`MLPEnergy` -- ``log p~(x, z) = -E(x, z) - |z|^2/2 - lam |x|^2/2 - c`` with
  ``E`` an MLP of ``(x, z)``; the quadratic terms keep it integrable.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..encoders import mlp
from .base import LatentVariableModel

__all__ = ["EnergyTiltedVAE", "MLPEnergy"]


class EnergyTiltedVAE(LatentVariableModel):
    """``log p~(x, z) = log p_base(x, z) + g(x) - c`` (see the module docstring).

    ``tilt_bound``: ``None`` (unbounded ``g = h``) or ``B > 0`` (``g = B tanh(h/B)``);
    ``freeze_base``: the base's parameters get no gradient.
    """

    normalised = False

    def __init__(self, base: LatentVariableModel, x_dim: int, hidden: Sequence[int] = (128,),
                 tilt_bound: float | None = None, freeze_base: bool = False) -> None:
        super().__init__()
        if tilt_bound is not None and not (isinstance(tilt_bound, (int, float)) and not isinstance(tilt_bound, bool)
                                           and math.isfinite(tilt_bound) and tilt_bound > 0):
            raise ValueError(f"tilt_bound must be a positive number or None, got tilt_bound={tilt_bound!r}")
        self.base = base
        self.tilt = mlp([x_dim, *hidden, 1])
        last = self.tilt[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.tilt_bound = None if tilt_bound is None else float(tilt_bound)
        self.freeze_base = bool(freeze_base)
        if self.freeze_base:
            self.base.requires_grad_(False)
        self._init_log_normaliser()

    @classmethod
    def from_vae(cls, vae: LatentVariableModel, x_dim: int, hidden: Sequence[int] = (128,), copy_base: bool = True,
                 tilt_bound: float | None = None, freeze_base: bool = False):
        """Start from a (pre-trained) normalised model; ``copy_base=False`` shares its weights."""
        return cls(copy.deepcopy(vae) if copy_base else vae, x_dim, hidden, tilt_bound, freeze_base)

    def g(self, x: Tensor) -> Tensor:
        h = self.tilt(x).squeeze(-1)
        if self.tilt_bound is None:
            return h
        return self.tilt_bound * torch.tanh(h / self.tilt_bound)

    def log_ratio_to_base(self, x: Tensor) -> Tensor:
        """``log p~(x) - log p_base(x) = g(x) - c``, exact (the tilt depends on ``x`` only)."""
        return self.g(x) - self.log_normaliser

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

