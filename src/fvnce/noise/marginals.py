"""Product of per-feature marginals (Bernoulli for binary columns, 1-D KDE otherwise)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import (
    NoiseDistribution, binary_columns, chunked_rows, constant_columns, floor_scale,
    opt_float, opt_int, population_std, subsample,
)

__all__ = ["MarginalsNoise"]


class MarginalsNoise(NoiseDistribution):
    r"""p_n(x) = ∏_{j binary} Bern(x_j; p_j) · ∏_{j continuous} KDE_j(x_j).

    Keeps every feature's marginal shape (skew, multimodality, binary frequencies) and
    drops all dependence: the classifier must learn the dependence structure. A good
    default for mixed binary/continuous tabular data and pixel data.

    Binary columns (all values in {0,1}): p_j = (Σ_i x_ij + α) / (N + 2α) (Laplace, α=``alpha``).
    Continuous columns: KDE_j(t) = (1/n) Σ_i N(t; c_ij, h_j²) over at most ``max_points``
    rows c, h_j = ``bandwidth_factor`` · 0.9 · min(σ_j, IQR_j/1.34) · n^(-1/5) (Silverman).
    Exact log-density via logsumexp. ``discrete`` is True only when every column is binary.

    Options: ``max_points=1000``, ``bandwidth_factor=1.0``, ``alpha=1.0``.
    """

    name = "marginals"

    def __init__(self, dim: int, binary: Tensor, probs: Tensor, points: Tensor, bandwidth: Tensor):
        super().__init__(dim, binary=binary, probs=probs, points=points, bandwidth=bandwidth)
        self._bin = binary.bool()
        self._bin_idx = self._bin.nonzero().flatten()
        self._cont_idx = (~self._bin).nonzero().flatten()
        self._logits = torch.logit(probs) if probs.numel() else probs
        self._points, self._h = points, bandwidth
        self.discrete = bool(self._bin.all())
        self._dtype = points.dtype if points.numel() else probs.dtype

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, max_points: int = 1000,
             bandwidth_factor: float = 1.0, alpha: float = 1.0) -> MarginalsNoise:
        max_points = opt_int(cls.name, "max_points", max_points)
        bandwidth_factor = opt_float(cls.name, "bandwidth_factor", bandwidth_factor)
        alpha = opt_float(cls.name, "alpha", alpha)
        warnings: list[str] = []
        n, d = data.shape
        binary = binary_columns(data)
        xb = data[:, binary]
        probs = (xb.sum(0) + alpha) / (n + 2 * alpha)
        xc = data[:, ~binary]
        pts = subsample(xc, max_points, seed)
        m = pts.shape[0]
        std = population_std(xc.double())
        if n > 1 and xc.shape[1]:
            q = torch.quantile(xc.double(), torch.tensor([0.25, 0.75], dtype=torch.float64), dim=0)
            iqr = (q[1] - q[0]) / 1.34
            spread = torch.where(iqr > 0, torch.minimum(std, iqr), std)
        else:
            spread = std
        h = bandwidth_factor * 0.9 * spread * m ** (-0.2)
        h = floor_scale(h, constant_columns(xc), "bandwidth", cls.name, warnings,
                        columns=(~binary).nonzero().flatten())
        noise = cls(d, binary=binary, probs=probs, points=pts, bandwidth=h.to(data.dtype))
        noise.warnings = warnings
        return noise

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape)
        out = torch.empty((*shape, self.dim), dtype=self._dtype, device=self._h.device)
        if self._bin_idx.numel():
            p = torch.sigmoid(self._logits).to(self._dtype).expand(*shape, -1)
            out[..., self._bin_idx] = torch.bernoulli(p)
        if self._cont_idx.numel():
            m, dc = self._points.shape
            idx = torch.randint(m, (*shape, dc), device=self._points.device)
            centre = torch.gather(self._points.expand(*shape, m, dc), -2, idx.unsqueeze(-2)).squeeze(-2)
            out[..., self._cont_idx] = centre + self._h * torch.randn_like(centre)
        return out

    def log_prob(self, x: Tensor) -> Tensor:
        lp = torch.zeros(x.shape[:-1], dtype=torch.promote_types(x.dtype, self._dtype), device=x.device)
        if self._bin_idx.numel():
            xb = x[..., self._bin_idx]
            lg = self._logits
            # x log p + (1-x) log(1-p) in log space
            lp = lp + (xb * torch.nn.functional.logsigmoid(lg)
                       + (1 - xb) * torch.nn.functional.logsigmoid(-lg)).sum(-1)
        if self._cont_idx.numel():
            m, dc = self._points.shape
            pts, h = self._points, self._h
            const = -math.log(m) - 0.5 * math.log(2 * math.pi)

            def kde(rows: Tensor) -> Tensor:  # rows (B, Dc) -> (B,)
                z = (rows[:, None, :] - pts) / h  # (B, m, Dc)
                return (torch.logsumexp(-0.5 * z * z, dim=1) - torch.log(h) + const).sum(-1)

            lp = lp + chunked_rows(kde, x[..., self._cont_idx], m * dc)
        return lp
