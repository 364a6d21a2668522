"""Mixture of ``K`` Gaussians with diagonal covariances; the component is the latent:

    z ~ Categorical(pi),   x | z ~ N(mu_z, diag(sigma_z^2))

The low-capacity model of tabular data.  Each component treats the features as
independent, so a row that is extreme in one feature is improbable even when the
features of the normal rows are strongly correlated and the row lies along that
correlation: a model that learns the correlations (a full-covariance Gaussian, a VAE)
explains such a row away.  On the ADBench sets wbc and cardiotocography that difference
decides detection (docs/benchmarks.md, "ADBench").

Everything is exact: the marginal is a ``logsumexp`` over the ``K`` components, the
posterior ``p(z | x)`` a Categorical, and discrete encoders are summed over exactly by the
objectives.  ``normalised=False`` adds a learnable log-normaliser ``c`` (true value 0).

The default start (distinct random means, unit scales) suits standardised tables.  Data
that are not standardised (images: intensities in [0, 1]) take ``init="data"``: training
starts from the training rows' moments (:meth:`DiagonalGaussianMixture.start_from_data`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution

from .base import LatentVariableModel

__all__ = ["DiagonalGaussianMixture"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class DiagonalGaussianMixture(LatentVariableModel):
    latent_type = "discrete"

    #: how the parameters start: ``random`` (for standardised data) or ``data`` (set by the
    #: training run through :meth:`start_from_data`)
    INITS = ("random", "data")
    #: floor on the starting scales, in the data's units (constant pixels)
    MIN_START_SCALE = 1e-3

    def __init__(self, x_dim: int, components: int = 4, normalised: bool = True, spread: float = 1.0,
                 generator: torch.Generator | None = None, init: str = "random") -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"components must be at least 1, got {components}")
        if init not in self.INITS:
            raise ValueError(f"init must be one of {', '.join(self.INITS)}, got {init!r}")
        #: whether the training run calls :meth:`start_from_data` before the first step
        self.starts_from_data = init == "data"
        # components start at distinct random means (data are standardised: spread 1), unit scales
        means = spread * torch.randn(components, x_dim, generator=generator) if components > 1 \
            else torch.zeros(1, x_dim)
        self.means = nn.Parameter(means)
        self.log_scales = nn.Parameter(torch.zeros(components, x_dim))
        self.logits = nn.Parameter(torch.zeros(components))
        self.normalised = normalised
        if not normalised:
            self._init_log_normaliser()
        self.components = components

    def _component_log_probs(self, x: Tensor) -> Tensor:
        """``(B, K)``: ``log pi_k + log N(x; mu_k, diag sigma_k^2)``."""
        u = (x.unsqueeze(-2) - self.means) * torch.exp(-self.log_scales)  # (B, K, D)
        log_n = -0.5 * u.pow(2).sum(-1) - self.log_scales.sum(-1) - x.shape[-1] * _HALF_LOG_2PI
        return log_n + torch.log_softmax(self.logits, -1)

    @torch.no_grad()
    def start_from_data(self, x: Tensor, encoder=None, quantum: float | None = None) -> str:
        """Start from the rows ``x`` (N, D): equal weights, every component's scales the
        features' standard deviations (with ``quantum``, the step of quantised values, the
        variance ``quantum^2 / 12`` of uniform dequantisation added; floored at
        :data:`MIN_START_SCALE`), the means the
        mean row (one component) or ``K`` distinct rows drawn with torch's global random
        state (several).  ValueError with fewer rows than components.  Returns a line for
        the log."""
        n, k = x.shape[0], self.components
        if n < max(k, 2):
            raise ValueError(f"{k} component(s) need at least {max(k, 2)} training rows, got {n}")
        xd = x.to(torch.float64)
        std = (xd.var(0) + (quantum or 0.0) ** 2 / 12).sqrt().clamp_min(self.MIN_START_SCALE)
        means = xd.mean(0, keepdim=True) if k == 1 else xd[torch.randperm(n)[:k]]
        self.means.copy_(means)
        self.log_scales.copy_(std.log().expand(k, -1))
        self.logits.zero_()
        return f"mixture start: {k} component(s) at the training rows' moments"

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        comps = self._component_log_probs(x)  # (B, K)
        comps = comps.expand(*z.shape, self.components)
        return comps.gather(-1, z.long().unsqueeze(-1)).squeeze(-1) - self._shift()

    def pixel_log_probs(self, x: Tensor, z: Tensor) -> Tensor:
        """``log N(x_d; mu_zd, sigma_zd^2)`` per feature, shape ``(*z.shape, D)``: the terms
        whose sum over ``d`` is ``log_joint`` less ``log pi_z - c`` (per-pixel maps,
        :mod:`fvnce.maps`)."""
        idx = z.long()
        u = (x - self.means[idx]) * torch.exp(-self.log_scales[idx])
        return -0.5 * u.pow(2) - self.log_scales[idx] - _HALF_LOG_2PI

    def log_unnormalised_marginal(self, x: Tensor) -> Tensor:
        return self.log_marginal(x) - self._shift()

    def log_marginal(self, x: Tensor) -> Tensor:
        return torch.logsumexp(self._component_log_probs(x), -1)

    def log_partition(self) -> Tensor:
        return torch.zeros((), dtype=self.means.dtype, device=self.means.device)

    def posterior(self, x: Tensor) -> Distribution:
        return Categorical(logits=self._component_log_probs(x))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        z = Categorical(logits=self.logits).sample((n,))
        return self.means[z] + torch.exp(self.log_scales[z]) * torch.randn(n, self.means.shape[-1],
                                                                             dtype=self.means.dtype,
                                                                             device=self.means.device)
