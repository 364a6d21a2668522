"""Encoders ``q_phi(z | x)``: modules whose ``forward(x)`` returns a Distribution.

* :class:`GaussianEncoder` -- diagonal Gaussian from an MLP (continuous latents,
  reparameterised samples);
* :class:`ConvGaussianEncoder` -- the same from a small convolutional network for images;
* :class:`CategoricalEncoder` -- one categorical latent with few states (enumerated);
* :class:`BernoulliEncoder` -- independent binary latents (enumerated when
  ``2**z_dim`` is small);
* :class:`ExactPosterior` -- ``p(z | x)`` of a tractable model (test oracle, or to train
  with the exact E-step as VNCE does).
"""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal
from torch.nn import functional as F

__all__ = [
    "BernoulliEncoder",
    "CategoricalEncoder",
    "ConvGaussianEncoder",
    "ExactPosterior",
    "GaussianEncoder",
    "mlp",
]

#: floor on encoder standard deviations, keeps log q finite
MIN_SCALE = 1e-4


def mlp(sizes: Sequence[int], activation: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """Fully connected network ``sizes[0] -> ... -> sizes[-1]``, no final activation."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def _diag_gaussian(params: Tensor) -> Distribution:
    loc, raw = params.chunk(2, dim=-1)
    # argument validation off: these are built every step from network outputs
    return Independent(Normal(loc, F.softplus(raw) + MIN_SCALE, validate_args=False), 1, validate_args=False)


class GaussianEncoder(nn.Module):
    """``q(z|x) = N(mu(x), diag sigma(x)^2)`` from an MLP ``x_dim -> hidden -> 2 z_dim``."""

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = (256, 128)) -> None:
        super().__init__()
        self.net = mlp([x_dim, *hidden, 2 * z_dim])

    def forward(self, x: Tensor) -> Distribution:
        return _diag_gaussian(self.net(x))


class ConvGaussianEncoder(nn.Module):
    """Diagonal Gaussian ``q(z|x)`` from two stride-2 convolutions on ``(C, H, W)`` images
    (``x`` arrives flattened and is reshaped)."""

    def __init__(self, image_shape: Sequence[int], z_dim: int, channels: int = 32, hidden: int = 256) -> None:
        super().__init__()
        self.image_shape = tuple(image_shape) if len(image_shape) == 3 else (1, *image_shape)
        c, h, w = self.image_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.SiLU(),
        )
        hh, ww = math.ceil(math.ceil(h / 2) / 2), math.ceil(math.ceil(w / 2) / 2)
        self.head = mlp([2 * channels * hh * ww, hidden, 2 * z_dim])

    def forward(self, x: Tensor) -> Distribution:
        lead = x.shape[:-1]
        h = self.conv(x.reshape(-1, *self.image_shape))
        return _diag_gaussian(self.head(h.flatten(1)).reshape(*lead, -1))


class CategoricalEncoder(nn.Module):
    """``q(z|x) = Categorical(softmax(net(x)))`` over ``n_states`` values (summed exactly)."""

    def __init__(self, x_dim: int, n_states: int, hidden: Sequence[int] = (64,)) -> None:
        super().__init__()
        self.net = mlp([x_dim, *hidden, n_states])

    def forward(self, x: Tensor) -> Distribution:
        return Categorical(logits=self.net(x), validate_args=False)


class BernoulliEncoder(nn.Module):
    """``q(z|x) = prod_j Bernoulli(sigmoid(net(x)_j))`` over ``z_dim`` binary latents.

    ``hidden=()`` makes it a single linear layer, the family of an RBM's exact posterior.
    """

    def __init__(self, x_dim: int, z_dim: int, hidden: Sequence[int] = ()) -> None:
        super().__init__()
        self.net = mlp([x_dim, *hidden, z_dim])

    def forward(self, x: Tensor) -> Distribution:
        return Independent(Bernoulli(logits=self.net(x), validate_args=False), 1, validate_args=False)


class ExactPosterior(nn.Module):
    """Wraps a tractable model so that ``forward(x)`` is its exact posterior ``p(z|x)``."""

    def __init__(self, model) -> None:
        super().__init__()
        # not registered as a submodule: its parameters belong to the model alone
        object.__setattr__(self, "_model", model)

    def forward(self, x: Tensor) -> Distribution:
        return self._model.posterior(x)
