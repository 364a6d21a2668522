"""Uniform noise on a box around the data."""

from __future__ import annotations

import torch
from torch import Tensor

from .base import NoiseDistribution, constant_columns, floor_scale, opt_float

__all__ = ["UniformNoise"]


class UniformNoise(NoiseDistribution):
    r"""p_n(x) = ∏_j U(x_j; a_j, b_j), the box [min_j - m·r_j, max_j + m·r_j], r_j = max_j - min_j.

    For bounded features (pixel intensities, percentages) with no better prior: it
    covers the whole range evenly. Poor in high dimension (most of the box is empty).
    log p_n(x) = -Σ_j log(b_j - a_j) inside the box, -inf outside (points outside the
    training range, e.g. test outliers, get log p_n = -inf: widen ``margin`` if needed).

    Options: ``margin=0.1`` (fraction of each feature's range added on both sides, >= 0).
    """

    name = "uniform"

    def __init__(self, dim: int, low: Tensor, high: Tensor):
        super().__init__(dim, low=low, high=high)
        self._low, self._high = low, high
        self._log_volume = torch.log(high - low).sum()

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, margin: float = 0.1) -> UniformNoise:
        margin = opt_float(cls.name, "margin", margin, 0.0, low_open=False)
        warnings: list[str] = []
        lo, hi = data.amin(0), data.amax(0)
        rng = floor_scale(hi - lo, constant_columns(data), "range", cls.name, warnings)
        # constant columns: a box of width `rng` centred on the value (plus the margin)
        centre = 0.5 * (lo + hi)
        lo, hi = torch.minimum(lo, centre - 0.5 * rng), torch.maximum(hi, centre + 0.5 * rng)
        noise = cls(data.shape[1], low=lo - margin * rng, high=hi + margin * rng)
        noise.warnings = warnings
        return noise

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = (*torch.Size(sample_shape), self.dim)
        u = torch.rand(shape, dtype=self._low.dtype, device=self._low.device)
        return self._low + (self._high - self._low) * u

    def log_prob(self, x: Tensor) -> Tensor:
        inside = ((x >= self._low) & (x <= self._high)).all(-1)
        lp = (-self._log_volume).to(torch.promote_types(x.dtype, self._low.dtype))
        return torch.where(inside, lp, torch.full_like(lp, -torch.inf)).expand(inside.shape)
