"""Bring your own model: adapt existing PyTorch modules without rewriting them.

* :class:`FromVAE` -- a decoder module ``z -> Distribution over x`` plus a prior gives
  ``log p(x, z) = log p(z) + log p(x | z)``.  Your encoder module, if it returns a
  Distribution over ``z``, is used as it is.
* :class:`FromLogJoint` -- any module with a ``log_joint(x, z)`` method (or a callable
  module computing it); ``normalised=False`` adds the learnable log-normaliser.

To continue training a pre-trained VAE with an unnormalised FVNCE model, wrap it and
tilt it: ``EnergyTiltedVAE.from_vae(FromVAE(decoder, z_dim=16), x_dim)``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from .base import LatentVariableModel

__all__ = ["FromLogJoint", "FromVAE"]


class FromVAE(LatentVariableModel):
    """``log p(z) + decoder(z).log_prob(x)``; the prior defaults to ``N(0, I_{z_dim})``.

    ``prior`` may be a Distribution or a callable returning one (for a learnable prior);
    ``decoder(z)`` must return a Distribution whose ``log_prob(x)`` has shape ``z.shape[:-1]``.
    """

    normalised = True

    def __init__(self, decoder: nn.Module, z_dim: int | None = None,
                 prior: Distribution | Callable[[], Distribution] | None = None) -> None:
        super().__init__()
        if prior is None and z_dim is None:
            raise ValueError("FromVAE needs z_dim (for the standard normal prior) or a prior")
        self.decoder = decoder
        self.z_dim = z_dim
        self._prior = prior

    def prior(self, like: Tensor) -> Distribution:
        if self._prior is None:
            zero = torch.zeros(self.z_dim, dtype=like.dtype, device=like.device)
            return Independent(Normal(zero, torch.ones_like(zero)), 1)
        return self._prior() if callable(self._prior) and not isinstance(self._prior, Distribution) else self._prior

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        return self.prior(z).log_prob(z) + self.decoder(z).log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        p = next(self.parameters())
        z = self.prior(p).sample((n,))
        return self.decoder(z).sample()

    @torch.no_grad()
    def sample_joint(self, n: int) -> tuple[Tensor, Tensor]:
        """Exact joint samples ``(x, z) ~ p(z) p(x | z)`` (``x`` is ``(n, D)``)."""
        p = next(self.parameters())
        z = self.prior(p).sample((n,))
        return self.decoder(z).sample(), z


class FromLogJoint(LatentVariableModel):
    """Wraps ``module.log_joint(x, z)`` (or ``module(x, z)``) as a model."""

    def __init__(self, module: nn.Module, normalised: bool = True) -> None:
        super().__init__()
        self.module = module
        self.normalised = normalised
        if not normalised:
            self._init_log_normaliser()

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        fn = getattr(self.module, "log_joint", self.module)
        out = fn(x, z)
        return out if self.c is None else out - self.c
