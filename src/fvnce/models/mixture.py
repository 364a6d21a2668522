"""The unnormalised two-component Gaussian mixture of the VNCE paper
(Rhodes & Gutmann 2019, section 5.1):

    phi(x, z; theta) = (1 - z) exp(-x^2 / (2 theta^2)) + z exp(-x^2 / (2 sigma1^2)),  z in {0, 1}

with ``sigma1`` fixed (4 in the paper) and ``theta > 0`` learned together with the
log-normaliser ``c``: ``log p~(x, z) = log phi(x, z) - c``.  Normalised, it is the
mixture ``p(x) = w N(0, theta^2) + (1 - w) N(0, sigma1^2)`` with
``w = theta / (theta + sigma1)``, and ``Z(theta) = sqrt(2 pi) (theta + sigma1)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from .base import LatentVariableModel

__all__ = ["TwoGaussianMixture"]


class TwoGaussianMixture(LatentVariableModel):
    normalised = False
    latent_type = "discrete"

    def __init__(self, theta: float = 1.0, sigma1: float = 4.0) -> None:
        super().__init__()
        if theta <= 0 or sigma1 <= 0:
            raise ValueError(f"theta and sigma1 must be positive, got theta={theta}, sigma1={sigma1}")
        self.log_theta = nn.Parameter(torch.tensor(math.log(theta)))
        self.sigma1 = float(sigma1)
        self._init_log_normaliser()

    @property
    def theta(self) -> Tensor:
        return self.log_theta.exp()

    def _log_phi_components(self, x: Tensor) -> Tensor:
        """``(..., 2)``: log phi(x, z=0), log phi(x, z=1)."""
        x = x.squeeze(-1) if x.shape[-1:] == (1,) else x
        x2 = x ** 2
        return torch.stack([-x2 / (2 * self.theta ** 2), -x2 / (2 * self.sigma1 ** 2)], dim=-1)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        comps = self._log_phi_components(x)  # (B, 2)
        comps = comps.expand(*z.shape, 2)
        return comps.gather(-1, z.long().unsqueeze(-1)).squeeze(-1) - self.log_normaliser

    def log_unnormalised_marginal(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._log_phi_components(x), -1) - self.log_normaliser

    def log_partition(self) -> Tensor:
        return 0.5 * math.log(2 * math.pi) + torch.log(self.theta + self.sigma1)

    def log_marginal(self, x: Tensor) -> Tensor:
        return self.log_unnormalised_marginal(x) + self.log_normaliser - self.log_partition()

    def posterior(self, x: Tensor) -> Distribution:
        return Categorical(logits=self._log_phi_components(x))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        w = self.theta / (self.theta + self.sigma1)
        z = torch.rand(n, dtype=w.dtype) < w
        scale = torch.where(z, self.theta, torch.full_like(self.theta, self.sigma1))
        return (torch.randn(n, dtype=w.dtype) * scale).unsqueeze(-1)
