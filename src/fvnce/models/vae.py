"""Normalised VAE-style model: Gaussian prior, Bernoulli or Gaussian decoder.

    p(z) = N(0, I),   p(x | z) = prod_d Bernoulli(x_d; sigmoid(f(z)_d))   or   N(x_d; f(z)_d, s_d^2)

with ``f`` an MLP or a small transposed-convolution network.  Trained with ``elbo`` /
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

from ..encoders import mlp
from .base import LatentVariableModel

__all__ = ["ConvDecoder", "VAE"]

LIKELIHOODS = ("bernoulli", "gaussian")


class ConvDecoder(nn.Module):
    """``z -> (C, H, W)`` logits/means: a linear layer to a quarter-size feature map and
    two stride-2 transposed convolutions, cropped to the image size."""

    def __init__(self, z_dim: int, image_shape: Sequence[int], channels: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape) if len(image_shape) == 3 else (1, *image_shape)
        c, h, w = self.image_shape
        self.hh, self.ww = math.ceil(h / 4), math.ceil(w / 4)
        self.channels = channels
        self.fc = nn.Sequential(nn.Linear(z_dim, hidden), nn.SiLU(), nn.Linear(hidden, 2 * channels * self.hh * self.ww), nn.SiLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1), nn.SiLU(),
            nn.ConvTranspose2d(channels, c, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        lead = z.shape[:-1]
        h = self.fc(z).reshape(-1, 2 * self.channels, self.hh, self.ww)
        c, hh, ww = self.image_shape
        out = self.deconv(h)[:, :, :hh, :ww]
        return out.reshape(*lead, c * hh * ww)


class VAE(LatentVariableModel):
    """Normalised latent-variable model with a neural decoder.

    ``arch="mlp"`` uses ``hidden`` layer sizes; ``arch="conv"`` needs ``image_shape``.
    The Gaussian decoder has a learnable per-feature standard deviation (floored at
    ``min_scale``).
    """

    normalised = True

    def __init__(self, x_dim: int, z_dim: int = 8, hidden: Sequence[int] = (128, 256),
                 likelihood: str = "bernoulli", arch: str = "mlp", image_shape: Sequence[int] | None = None,
                 min_scale: float = 1e-3) -> None:
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        if arch == "mlp":
            self.decoder = mlp([z_dim, *hidden, x_dim])
        elif arch == "conv":
            if image_shape is None or math.prod(image_shape) != x_dim:
                raise ValueError(f"arch='conv' needs image_shape with {x_dim} pixels, got {image_shape}")
            self.decoder = ConvDecoder(z_dim, image_shape)
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
        return Independent(Normal(out, F.softplus(self.raw_scale) + self.min_scale, validate_args=False), 1,
                           validate_args=False)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.prior(z).log_prob(z) + self.decode(z).log_prob(x)

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
