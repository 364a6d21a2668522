"""Heavy-tailed noise: a product of Student-t distributions fitted to the data."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, StudentT

from .base import TorchBackedNoise, constant_columns, floor_scale, opt_float, population_std

__all__ = ["StudentTNoise"]


class StudentTNoise(TorchBackedNoise):
    r"""p_n(x) = ∏_j t_ν(x_j; μ_j, s_j), location = data mean, heavy (polynomial) tails.

    Why heavy tails matter: every fully variational rule has a noise-side loss ℓ0(r)
    that grows at least linearly in r (ℓ0 is convex with ℓ0' = r f''(r) non-decreasing),
    so the noise term is an importance-sampling estimate through p_n, and its variance
    is finite only if the model's tails are lighter than p_n's (E_{p_n} r² < ∞). A
    Gaussian noise fitted to data whose tails are Gaussian with a larger spread (a wide
    mixture component, outliers) breaks this; a Student-t never does for a model with
    Gaussian tails. Logistic NCE does not need it (its ℓ0 = log(1 + r) grows slowly).

    The scale is chosen so that the variance equals the data's: s_j = σ_j √((ν−2)/ν)
    for ν > 2, and s_j = σ_j for ν ≤ 2 (infinite variance).

    Options: ``df=4.0`` (degrees of freedom ν > 0; smaller = heavier tails; ν → ∞ is
    ``diag_gaussian``).
    """

    name = "student_t"

    def __init__(self, dim: int, df: Tensor, loc: Tensor, scale: Tensor):
        super().__init__(dim, df=df, loc=loc, scale=scale)
        self._dist = Independent(StudentT(df, loc, scale, validate_args=False), 1, validate_args=False)

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, df: float = 4.0) -> StudentTNoise:
        df = opt_float(cls.name, "df", df, 0.0)
        warnings: list[str] = []
        std = floor_scale(population_std(data), constant_columns(data), "std", cls.name, warnings)
        scale = std * math.sqrt((df - 2) / df) if df > 2 else std
        noise = cls(data.shape[1], df=torch.full_like(std, df), loc=data.mean(0), scale=scale)
        noise.warnings = warnings
        return noise
