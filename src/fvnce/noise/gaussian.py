"""Gaussian noises: standard normal, fitted diagonal Gaussian, fitted full-covariance Gaussian."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Independent, MultivariateNormal, Normal

from .base import NoiseDistribution, TorchBackedNoise, constant_columns, floor_scale, opt_float, population_std

__all__ = ["DiagGaussianNoise", "FullGaussianNoise", "StandardNormalNoise"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
           "bfloat16": torch.bfloat16}


class StandardNormalNoise(NoiseDistribution):
    r"""p_n(x) = N(x; 0, I).

    For data already standardised (zero mean, unit variance per feature), or as a
    reference baseline; nothing is fitted except the dimension D.

    log p_n(x) = -½‖x‖² - (D/2) log 2π.
    """

    name = "standard_normal"

    def __init__(self, dim: int, dtype: str = "float32", device: str = "cpu"):
        super().__init__(dim, dtype=dtype, device=device)
        self._dtype = _DTYPES[dtype]
        self._device = torch.device(device)

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0) -> StandardNormalNoise:
        return cls(data.shape[1], dtype=str(data.dtype).replace("torch.", ""))

    def to(self, device) -> StandardNormalNoise:
        noise = type(self)(self.dim, self._fields["dtype"], str(torch.device(device)))
        noise.warnings = list(self.warnings)
        return noise

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            return torch.randn(
                (*torch.Size(sample_shape), self.dim), dtype=self._dtype, device=self._device
            )

    def log_prob(self, x: Tensor) -> Tensor:
        return -0.5 * x.pow(2).sum(-1) - 0.5 * self.dim * math.log(2 * math.pi)


class DiagGaussianNoise(TorchBackedNoise):
    r"""p_n(x) = ∏_j N(x_j; μ_j, σ_j²) with the data's mean and (population) std per feature.

    The cheapest fitted noise: matches location and scale of each feature but no
    correlations. Good first choice for roughly unimodal, standardised-ish tabular data.

    log p_n(x) = Σ_j [ -½((x_j-μ_j)/σ_j)² - log σ_j - ½ log 2π ].
    """

    name = "diag_gaussian"

    def __init__(self, dim: int, loc: Tensor, scale: Tensor):
        super().__init__(dim, loc=loc, scale=scale)
        self._dist = Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0) -> DiagGaussianNoise:
        warnings: list[str] = []
        scale = floor_scale(population_std(data), constant_columns(data), "std", cls.name, warnings)
        noise = cls(data.shape[1], loc=data.mean(0), scale=scale)
        noise.warnings = warnings
        return noise


class FullGaussianNoise(TorchBackedNoise):
    r"""p_n(x) = N(x; μ, Σ) with the data's mean and a shrunk covariance.

    Captures linear correlations between features (e.g. sensor channels that move
    together). Σ = S (ρ̂ + jitter·I) S, where S = diag(std) (constant columns floored) and
    ρ̂ = (1-λ) R + λ I is the correlation matrix R shrunk towards I; λ is the
    Ledoit-Wolf estimate on standardised data (``shrinkage="auto"``) or a given number in
    [0, 1]. Stored as MultivariateNormal(μ, scale_tril = S chol(ρ̂ + jitter·I)).

    Options: ``shrinkage="auto"`` | float in [0, 1]; ``jitter=1e-6`` (added to ρ̂'s
    diagonal; increased automatically until the Cholesky factorisation succeeds).
    """

    name = "full_gaussian"

    def __init__(self, dim: int, loc: Tensor, scale_tril: Tensor):
        super().__init__(dim, loc=loc, scale_tril=scale_tril)
        self._dist = MultivariateNormal(loc, scale_tril=scale_tril, validate_args=False)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        """``μ + ε Lᵀ`` with ``ε ~ N(0, I)`` drawn as MultivariateNormal draws it (same
        random numbers), as one matrix product: MultivariateNormal multiplies ``L`` by each
        draw separately, a matrix-vector product per row that reads all of ``L`` every time
        (minutes for a few hundred draws at D = 4096; this is one matrix-matrix product).
        The log-density is MultivariateNormal's (a triangular solve for all rows at once)."""
        loc, tril = self._fields["loc"], self._fields["scale_tril"]
        with torch.no_grad():
            shape = torch.Size(sample_shape) + loc.shape
            eps = torch.empty(shape, dtype=loc.dtype, device=loc.device).normal_()
            return loc + eps @ tril.T

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, shrinkage: float | str = "auto",
             jitter: float = 1e-6) -> FullGaussianNoise:
        if shrinkage != "auto":
            shrinkage = opt_float(cls.name, "shrinkage", shrinkage, 0.0, 1.0, low_open=False)
        jitter = opt_float(cls.name, "jitter", jitter, 0.0, 1.0, low_open=False)
        warnings: list[str] = []
        x = data.double()
        n, d = x.shape
        std = floor_scale(population_std(x), constant_columns(x), "std", cls.name, warnings)
        z = (x - x.mean(0)) / std
        corr = z.T @ z / n
        corr.fill_diagonal_(1.0)  # exact for standardised columns; constant columns get 1
        if shrinkage == "auto":
            if n > 1:
                from sklearn.covariance import ledoit_wolf_shrinkage

                lam = float(ledoit_wolf_shrinkage(z.numpy(), assume_centered=True))
            else:
                lam = 1.0
        else:
            lam = float(shrinkage)
        eye = torch.eye(d, dtype=torch.float64)
        corr = (1 - lam) * corr + lam * eye
        corr = 0.5 * (corr + corr.T)
        jit = max(jitter, 0.0)
        for _ in range(12):
            chol, info = torch.linalg.cholesky_ex(corr + jit * eye)
            if int(info) == 0 and bool(torch.isfinite(chol).all()):
                break
            jit = max(jit * 10, 1e-8)
        else:  # pragma: no cover - 1e3 jitter always succeeds
            chol = torch.linalg.cholesky(corr + eye)
        if jit > jitter:
            warnings.append(f"{cls.name}: correlation matrix was singular; jitter raised to {jit:.3g}")
        tril = std[:, None] * chol
        noise = cls(d, loc=x.mean(0).to(data.dtype), scale_tril=tril.to(data.dtype))
        noise.warnings = warnings
        return noise
