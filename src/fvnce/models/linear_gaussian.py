"""Linear-Gaussian latent model: the exact oracle of the test suite.

    z ~ N(0, I_k),   x | z ~ N(W z + b, sigma^2 I_D)

Marginal ``x ~ N(b, W W^T + sigma^2 I)``; posterior ``z | x ~ N(m, S)`` with
``S = (I + W^T W / sigma^2)^{-1}`` and ``m = S W^T (x - b) / sigma^2``.  With
``q = p(z|x)`` every log-weight equals ``log p(x) - log p_n(x)`` whatever ``z``, so
every bound is exact with one sample.  ``normalised=False`` adds a learnable
log-normaliser ``c`` (the true value is 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal, Normal

from .base import LatentVariableModel

__all__ = ["LinearGaussian"]


class LinearGaussian(LatentVariableModel):
    def __init__(self, x_dim: int, z_dim: int, sigma: float = 0.5, normalised: bool = True,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.W = nn.Parameter(torch.randn(x_dim, z_dim, generator=generator) / math.sqrt(z_dim))
        self.b = nn.Parameter(0.1 * torch.randn(x_dim, generator=generator))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(sigma)))
        self.normalised = normalised
        if not normalised:
            self._init_log_normaliser()
        self.z_dim = z_dim

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        sigma = self.log_sigma.exp()
        prior = Normal(torch.zeros((), dtype=z.dtype, device=z.device), 1.0).log_prob(z).sum(-1)
        mean = z @ self.W.T + self.b
        lik = Normal(mean, sigma).log_prob(x).sum(-1)
        return prior + lik - self._shift()

    def marginal(self) -> MultivariateNormal:
        d = self.W.shape[0]
        cov = self.W @ self.W.T + self.log_sigma.exp() ** 2 * torch.eye(d, dtype=self.W.dtype, device=self.W.device)
        return MultivariateNormal(self.b, covariance_matrix=cov)

    def log_marginal(self, x: Tensor) -> Tensor:
        return self.marginal().log_prob(x)

    def log_unnormalised_marginal(self, x: Tensor) -> Tensor:
        return self.log_marginal(x) - self._shift()

    def log_partition(self) -> Tensor:
        return torch.zeros((), dtype=self.W.dtype, device=self.W.device)

    def posterior(self, x: Tensor) -> Distribution:
        k = self.z_dim
        s2 = self.log_sigma.exp() ** 2
        eye = torch.eye(k, dtype=self.W.dtype, device=self.W.device)
        prec = eye + self.W.T @ self.W / s2
        cov = torch.linalg.inv(prec)
        mean = (x - self.b) @ self.W @ cov.T / s2
        tril = torch.linalg.cholesky(cov)
        return MultivariateNormal(mean, scale_tril=tril.expand(*x.shape[:-1], k, k))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.marginal().sample((n,))
