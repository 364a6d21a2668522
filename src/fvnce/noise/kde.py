"""Kernel density over (a subsample of) the training data: "perturbed training data"."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import (
    NoiseDistribution, binary_columns, chunked_rows, constant_columns, floor_scale,
    opt_float, opt_int, population_std, subsample,
)

__all__ = ["KDENoise"]


class KDENoise(NoiseDistribution):
    r"""p_n(x) = (1/n) Σ_i K(x; c_i) over n ≤ ``max_points`` training rows c_i.

    Samples are training points with noise added: plausible but not real, and with an
    exact density. The closest-to-the-data simple noise, which keeps log w moderate;
    pick it when simple parametric noises are too easy to tell apart from the data.

    Continuous data: K(x; c) = ∏_j N(x_j; c_j, h_j²), h_j = ``bandwidth_factor`` · σ_j ·
    n^(-1/(D+4)) (Scott's rule per feature).
    All-binary data: bit-flip kernel K(x; c) = ∏_j f^[x_j≠c_j] (1-f)^[x_j=c_j],
    f = ``flip``; an exact pmf on {0,1}^D (``discrete`` True).
    log p_n(x) = logsumexp_i log K(x; c_i) - log n.

    Options: ``max_points=1000``, ``bandwidth_factor=1.0`` (continuous),
    ``flip=0.05`` in (0, 0.5] (binary).
    """

    name = "kde"

    def __init__(self, dim: int, kind: str, points: Tensor, bandwidth: Tensor | None = None,
                 flip: float = 0.05):
        super().__init__(dim, kind=kind, points=points, bandwidth=bandwidth, flip=flip)
        self._points, self._h, self._flip = points, bandwidth, float(flip)
        self.discrete = kind == "binary"
        n = points.shape[0]
        if self.discrete:
            self._log_norm = -math.log(n)
        else:
            self._centre = points.mean(0)
            self._scaled = (points - self._centre) / bandwidth  # (n, D)
            self._sq = self._scaled.pow(2).sum(-1)  # (n,)
            self._log_norm = -math.log(n) - 0.5 * dim * math.log(2 * math.pi)
            self._log_det = torch.log(bandwidth).sum()

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, max_points: int = 1000,
             bandwidth_factor: float = 1.0, flip: float = 0.05) -> KDENoise:
        max_points = opt_int(cls.name, "max_points", max_points)
        bandwidth_factor = opt_float(cls.name, "bandwidth_factor", bandwidth_factor)
        flip = opt_float(cls.name, "flip", flip, 0.0, 0.5)
        pts = subsample(data, max_points, seed)
        n, d = pts.shape
        if bool(binary_columns(data).all()):
            return cls(d, "binary", points=pts, flip=flip)
        warns: list[str] = []
        std = floor_scale(population_std(data.double()), constant_columns(data), "std", cls.name, warns)
        h = bandwidth_factor * std * n ** (-1.0 / (d + 4))
        noise = cls(d, "gaussian", points=pts, bandwidth=h.to(data.dtype))
        noise.warnings = warns
        return noise

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape)
        n = self._points.shape[0]
        idx = torch.randint(n, shape, device=self._points.device)
        centre = self._points[idx]
        if self.discrete:
            flips = torch.bernoulli(torch.full_like(centre, self._flip))
            return (centre - flips).abs()  # XOR on {0,1}
        return centre + self._h * torch.randn_like(centre)

    def log_prob(self, x: Tensor) -> Tensor:
        n, d = self._points.shape
        pts = self._points.to(torch.promote_types(x.dtype, self._points.dtype))
        if self.discrete:
            lf, lk = math.log(self._flip), math.log1p(-self._flip)

            def pmf(rows: Tensor) -> Tensor:  # hamming distance by matmul
                rows = rows.to(pts.dtype)
                ham = rows @ (1 - pts).T + (1 - rows) @ pts.T  # (B, n)
                return torch.logsumexp(ham * lf + (d - ham) * lk, dim=-1) + self._log_norm

            return chunked_rows(pmf, x, n)

        scaled, sq = self._scaled.to(pts.dtype), self._sq.to(pts.dtype)

        def dens(rows: Tensor) -> Tensor:  # ‖(x-c)/h‖² = ‖x'‖² - 2 x'·c' + ‖c'‖², clamped >= 0
            xs = (rows.to(pts.dtype) - self._centre) / self._h
            d2 = (xs.pow(2).sum(-1, keepdim=True) - 2 * xs @ scaled.T + sq).clamp_min(0)
            return torch.logsumexp(-0.5 * d2, dim=-1)

        return chunked_rows(dens, x, n) + self._log_norm - self._log_det
