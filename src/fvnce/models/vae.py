"""Normalised VAE-style model: Gaussian prior, Bernoulli, Gaussian or discretised
logistic decoder.

    p(z) = N(0, I),   p(x | z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d))   or   N(x_d; f(z)_d, s_d^2)
                                 or   prod_d DLogistic(x_d; f(z)_d, s(z)_d)

with ``f`` an MLP or a transposed-convolution network.  The discretised logistic
(:mod:`fvnce.models.discretized`) is for 8-bit intensities scaled to [0, 1]; its
per-pixel scale comes from the decoder, and ``log p(x | z)`` is the density of the
dequantised pixels (``log pmf + D log 255``).  Every decoder factorises over the
features: :meth:`VAE.pixel_log_probs` gives the terms (per-pixel anomaly maps,
:mod:`fvnce.maps`).  Trained with ``elbo`` /
``iwae`` it is the usual VAE; trained with ``fvnce`` and the KL rule it is the same
VAE (the noise term is constant); other rules give other estimators of the same model.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal
from torch.nn import functional as F

from ..encoders import conv_stages, conv_widths, image_chw, mlp
from .discretized import DiscretizedLogistic
from .base import LatentVariableModel

__all__ = ["ConvDecoder", "VAE"]

LIKELIHOODS = ("bernoulli", "gaussian", "logistic")


class ConvDecoder(nn.Module):
    """``z -> (out_channels, H, W)`` maps: an MLP to a coarse feature map, ``stages``
    stride-2 transposed convolutions (the mirror of
    :class:`~fvnce.encoders.ConvGaussianEncoder`: default two for images up to 32 pixels
    a side, one more per doubling), cropped to the image size; flattened on return."""

    def __init__(self, z_dim: int, image_shape: Sequence[int], channels: int = 32, hidden: int = 256,
                 out_channels: int | None = None, stages: int | None = None) -> None:
        super().__init__()
        self.image_shape = image_chw(image_shape)
        c, h, w = self.image_shape
        n = conv_stages(self.image_shape, stages)
        widths = conv_widths(channels, n)
        self.hh, self.ww = math.ceil(h / 2 ** n), math.ceil(w / 2 ** n)
        self.top = widths[-1]
        self.out_channels = c if out_channels is None else out_channels
        self.fc = nn.Sequential(nn.Linear(z_dim, hidden), nn.SiLU(), nn.Linear(hidden, self.top * self.hh * self.ww),
                                nn.SiLU())
        layers: list[nn.Module] = []
        outs = [*reversed(widths[:-1]), self.out_channels]
        for i, (c_in, c_out) in enumerate(zip(reversed(widths), outs)):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
            if i < n - 1:
                layers.append(nn.SiLU())
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(z).reshape(-1, self.top, self.hh, self.ww)
        _, hh, ww = self.image_shape
        out = self.deconv(h)[:, :, :hh, :ww]
        return out.reshape(*lead, self.out_channels * hh * ww)


class VAE(LatentVariableModel):
    """Normalised latent-variable model with a neural decoder.

    ``arch="mlp"`` uses ``hidden`` layer sizes; ``arch="conv"`` needs ``image_shape``
    and uses ``channels`` and ``stages`` (:class:`ConvDecoder`).  The Gaussian decoder
    has a learnable per-feature standard deviation, the logistic one a per-pixel scale
    output by the decoder; both are floored at ``min_scale``.
    """

    normalised = True

    def __init__(self, x_dim: int, z_dim: int = 8, hidden: Sequence[int] = (128, 256),
                 likelihood: str = "bernoulli", arch: str = "mlp", image_shape: Sequence[int] | None = None,
                 min_scale: float = 1e-3, channels: int = 32, stages: int | None = None) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        per_feature = 2 if likelihood == "logistic" else 1  # the logistic's location and scale
        if arch == "mlp":
            self.decoder = mlp([z_dim, *hidden, per_feature * x_dim])
        elif arch == "conv":
            if image_shape is None or math.prod(image_shape) != x_dim:
                raise ValueError(f"arch='conv' needs image_shape with {x_dim} pixels, got {image_shape}")
            c = image_chw(image_shape)[0]
            self.decoder = ConvDecoder(z_dim, image_shape, channels, out_channels=per_feature * c, stages=stages)
        else:
            raise ValueError(f"arch must be 'mlp' or 'conv', got {arch!r}")
        self.likelihood = likelihood
        self.z_dim, self.x_dim, self.min_scale = z_dim, x_dim, min_scale
        if likelihood == "gaussian":
            self.raw_scale = nn.Parameter(torch.full((x_dim,), math.log(math.expm1(0.5))))

    def prior(self, like: Tensor) -> Distribution:
        zero = torch.zeros(self.z_dim, dtype=like.dtype, device=like.device)
        return Independent(Normal(zero, torch.ones_like(zero), validate_args=False), 1, validate_args=False)

    def decode(self, z: Tensor) -> Distribution:
        """``p(x | z)`` as a Distribution with event shape ``(D,)``."""
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            return Independent(Bernoulli(logits=out, validate_args=False), 1, validate_args=False)
        if self.likelihood == "logistic":
            loc, raw = out.unflatten(-1, (2, self.x_dim)).unbind(-2)
            return Independent(DiscretizedLogistic(loc, F.softplus(raw) + self.min_scale), 1, validate_args=False)
        return Independent(Normal(out, F.softplus(self.raw_scale) + self.min_scale, validate_args=False), 1,
                           validate_args=False)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.prior(z).log_prob(z) + self.decode(z).log_prob(x)

    def pixel_log_probs(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x_d | z)`` per feature, shape ``(*S, B, D)``: the terms whose sum over
        ``d`` is ``decode(z).log_prob(x)``."""
        return self.decode(z).base_dist.log_prob(x)

    @torch.no_grad()
    def sample(self, n: int, mean: bool = False) -> Tensor:
        p = next(self.parameters())
        z = self.prior(p).sample((n,))
        px = self.decode(z)
        return px.mean if mean else px.sample()

    @torch.no_grad()
    def sample_joint(self, n: int) -> tuple[Tensor, Tensor]:
        """Exact joint samples ``(x, z) ~ p(z) p(x | z)``: ``x`` is ``(n, D)``, ``z`` is
        ``(n, z_dim)`` (used as importance proposal by :mod:`fvnce.evaluate`)."""
        p = next(self.parameters())
        z = self.prior(p).sample((n,))
        return self.decode(z).sample(), z
