"""Restricted Boltzmann machines with binary hidden units ``h`` as the latent variable.

Bernoulli-Bernoulli:  ``log p~(v, h) = v^T W h + a^T v + b^T h - c``, ``v in {0,1}^D``.
Gaussian-Bernoulli:   ``log p~(v, h) = -|v - a|^2 / 2 + v^T W h + b^T h - c`` (unit variance).

Both have a closed-form free energy (sum over ``h``), a factorised exact posterior
``p(h | v) = prod_j Bernoulli(sigmoid(b_j + W_j^T v))`` and, for few hidden units
(at most :attr:`RBM.MAX_EXACT_HIDDEN`; ``log_partition_tractable`` says so), an exact log
partition function by enumerating ``h``:

    BB:  Z = sum_h exp(b^T h) prod_i (1 + exp(a_i + (W h)_i))
    GB:  Z = sum_h (2 pi)^{D/2} exp(b^T h + a^T W h + |W h|^2 / 2)
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent
from torch.nn import functional as F

from .base import LatentVariableModel

__all__ = ["RBM"]

VISIBLE = ("bernoulli", "gaussian")


class RBM(LatentVariableModel):
    normalised = False
    latent_type = "discrete"
    #: most hidden units whose ``2^h_dim`` states :meth:`log_partition` enumerates
    MAX_EXACT_HIDDEN = 20

    def __init__(self, x_dim: int, h_dim: int = 8, visible: str = "bernoulli", init_scale: float = 0.1,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if visible not in VISIBLE:
            raise ValueError(f"visible must be one of {VISIBLE}, got {visible!r}")
        self.visible = visible
        self.W = nn.Parameter(init_scale * torch.randn(x_dim, h_dim, generator=generator))
        self.a = nn.Parameter(torch.zeros(x_dim))
        self.b = nn.Parameter(torch.zeros(h_dim))
        self.h_dim = h_dim
        self._init_log_normaliser()

    def _visible_term(self, v: Tensor) -> Tensor:
        if self.visible == "bernoulli":
            return v @ self.a
        return -0.5 * ((v - self.a) ** 2).sum(-1)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        vw = x @ self.W  # (B, H), broadcasts against z (..., B, H)
        return self._visible_term(x) + (z * (vw + self.b)).sum(-1) - self.log_normaliser

    def log_unnormalised_marginal(self, x: Tensor) -> Tensor:
        return self._visible_term(x) + F.softplus(x @ self.W + self.b).sum(-1) - self.log_normaliser

    def posterior(self, x: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=x @ self.W + self.b), 1)

    @property
    def log_partition_tractable(self) -> bool:
        """Whether :meth:`log_partition` can enumerate the ``2^h_dim`` hidden states
        (``h_dim <= MAX_EXACT_HIDDEN``); otherwise estimate ``log Z`` by importance
        sampling (:func:`fvnce.evaluate.estimate_log_partition` checks this)."""
        return self.h_dim <= self.MAX_EXACT_HIDDEN

    def _all_hidden(self) -> Tensor:
        if not self.log_partition_tractable:
            raise ValueError(f"exact log Z enumerates 2^{self.h_dim} hidden states: too many (at most "
                             f"2^{self.MAX_EXACT_HIDDEN}); estimate it with fvnce.evaluate.estimate_log_partition")
        return torch.tensor(list(itertools.product((0.0, 1.0), repeat=self.h_dim)), dtype=self.W.dtype,
                            device=self.W.device)

    def log_partition(self) -> Tensor:
        h = self._all_hidden()
        wh = h @ self.W.T  # (S, D)
        if self.visible == "bernoulli":
            terms = h @ self.b + F.softplus(self.a + wh).sum(-1)
        else:
            d = self.W.shape[0]
            terms = h @ self.b + wh @ self.a + 0.5 * (wh ** 2).sum(-1) + 0.5 * d * math.log(2 * math.pi)
        return torch.logsumexp(terms, 0)

    def log_marginal(self, x: Tensor) -> Tensor:
        return self.log_unnormalised_marginal(x) + self.log_normaliser - self.log_partition()

    @torch.no_grad()
    def sample(self, n: int, steps: int = 500) -> Tensor:
        """Block Gibbs sampling from ``n`` independent chains (approximate for finite steps)."""
        d = self.W.shape[0]
        v = torch.zeros(n, d, dtype=self.W.dtype, device=self.W.device)
        if self.visible == "bernoulli":
            v = torch.bernoulli(torch.full_like(v, 0.5))
        for _ in range(steps):
            h = torch.bernoulli(torch.sigmoid(v @ self.W + self.b))
            mean = h @ self.W.T + self.a
            v = torch.bernoulli(torch.sigmoid(mean)) if self.visible == "bernoulli" else mean + torch.randn_like(mean)
        return v
