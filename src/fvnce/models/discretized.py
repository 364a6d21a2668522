"""Discretised logistic distribution for 8-bit intensities scaled to [0, 1].

A pixel value ``v / 255`` (``v = 0 .. 255``) has the probability that a logistic variable
``L ~ Logistic(loc, scale)`` falls into its bin,

    P(v) = F((v + 1/2) / 255) - F((v - 1/2) / 255),    F the logistic CDF,

with the two edge bins open (``v = 0`` takes ``(-inf, 1/510)``, ``v = 255`` takes
``[1 - 1/510, inf)``), so the 256 probabilities sum to one exactly (a pmf).

Everything is computed in log space.  For an interior bin with ``a = (x + h - loc)/scale``
and ``b = (x - h - loc)/scale`` (``h = 1/510``),

    sigmoid(a) - sigmoid(b) = sigmoid(a) sigmoid(-b) (1 - exp(-(a - b))),

so ``log P = log sigmoid(a) + log sigmoid(-b) + log(1 - exp(-(a - b)))``: three terms that
are each computed without cancellation (``log sigmoid`` via softplus, ``log1mexp`` of a
positive argument), however far the bin lies in a tail and however small the scale.

:meth:`DiscretizedLogistic.log_pmf` is the pmf; :meth:`DiscretizedLogistic.log_prob` is
the density of the dequantised value (value plus uniform noise on its bin of width
1/255): ``log P + log 255``, piecewise constant, integrating to one over
``[-1/510, 1 + 1/510]``.  Models use the density so that their log-likelihoods are
comparable with continuous models and continuous noise densities; the two differ by the
constant ``D log 255`` over ``D`` pixels.  A value is assigned to the nearest bin (values
outside [0, 1] fall into the open edge bins), and :meth:`sample` returns bin centres.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints
from torch.nn import functional as F

__all__ = ["BINS", "DiscretizedLogistic", "log1mexp", "to_bins"]

#: number of intensity levels (8-bit)
BINS = 256
_LOG_WIDTH = math.log(BINS - 1)  # log of 1 / bin width


def log1mexp(d: Tensor) -> Tensor:
    """``log(1 - exp(-d))`` for ``d > 0``, accurate for small and large ``d``."""
    return torch.where(d < math.log(2.0), torch.log(-torch.expm1(-d)), torch.log1p(-torch.exp(-d)))


def to_bins(x: Tensor) -> Tensor:
    """Bin index (0..255, as a float) of each value: nearest level, edges open."""
    return torch.round(x * (BINS - 1)).clamp(0, BINS - 1)


class DiscretizedLogistic(Distribution):
    """Independent discretised logistics with parameters ``loc`` and ``scale`` (same shape)."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    has_rsample = False

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        self.loc, self.scale = torch.broadcast_tensors(loc, scale)
        super().__init__(self.loc.shape, validate_args=False)

    def log_pmf(self, x: Tensor) -> Tensor:
        """``log P(bin of x)`` elementwise (module docstring)."""
        k = to_bins(x).to(self.loc.dtype)
        centre = k / (BINS - 1)
        inv = 1.0 / self.scale
        half = 0.5 / (BINS - 1)
        a = (centre + half - self.loc) * inv  # upper edge, standardised
        b = (centre - half - self.loc) * inv  # lower edge
        log_cdf_a = -F.softplus(-a)  # log sigmoid(a)
        log_sf_b = -F.softplus(b)  # log (1 - sigmoid(b))
        interior = log_cdf_a + log_sf_b + log1mexp(inv / (BINS - 1))
        return torch.where(k == 0, log_cdf_a, torch.where(k == BINS - 1, log_sf_b, interior))

    def log_prob(self, value: Tensor) -> Tensor:
        """Log density of the dequantised value: ``log_pmf + log 255`` (module docstring)."""
        return self.log_pmf(value) + _LOG_WIDTH

    @property
    def mean(self) -> Tensor:
        """Mean of the discretised values, summed over the 256 bins (exact)."""
        levels = torch.arange(BINS, dtype=self.loc.dtype, device=self.loc.device) / (BINS - 1)
        pmf = self.log_pmf(levels.reshape(-1, *([1] * self.loc.dim()))).exp()
        return (pmf * levels.reshape(-1, *([1] * self.loc.dim()))).sum(0)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))
        info = torch.finfo(self.loc.dtype)
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(info.tiny, 1 - info.eps)
        logistic = self.loc + self.scale * (torch.log(u) - torch.log1p(-u))
        return to_bins(logistic) / (BINS - 1)
