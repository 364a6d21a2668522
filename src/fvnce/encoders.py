"""Encoders ``q_phi(z | x)``: modules whose ``forward(x)`` returns a Distribution.

* :class:`GaussianEncoder` -- diagonal Gaussian from an MLP (continuous latents,
  reparameterised samples);
* :class:`ConvGaussianEncoder` -- the same from a convolutional network for images (its
  depth grows with the image size);
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
    "conv_stages",
    "conv_widths",
    "image_chw",
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


def conv_stages(image_shape: Sequence[int], stages: int | None = None, side: int = 8) -> int:
    """Number of stride-2 stages of the image networks: ``stages`` when given, else the
    fewest (at least two) that bring the longer image side down to ``side`` pixels or
    fewer (28 -> 7 in two, 64 -> 8 in three, 128 -> 8 in four)."""
    if stages is not None:
        if isinstance(stages, bool) or not isinstance(stages, int) or stages < 1:
            raise ValueError(f"stages must be a positive integer, got {stages!r}")
        return stages
    longest = max(image_shape[-2:])
    n = 2
    while math.ceil(longest / 2 ** n) > side:
        n += 1
    return n


def conv_widths(channels: int, stages: int) -> list[int]:
    """Channels of each stage, finest first: the last two have ``channels`` and
    ``2 channels``, each earlier one half the next (at least 1), so that the costly
    full-resolution stages of large images stay narrow."""
    return [max(1, (channels * 2 ** (i + 2)) // 2 ** stages) for i in range(stages)]


def image_chw(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(C, H, W)`` of an image shape given as ``(H, W)`` (one channel) or ``(C, H, W)``."""
    shape = tuple(int(v) for v in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"image_shape must be (H, W) or (C, H, W) with positive sizes, got {tuple(image_shape)}")
    return shape  # type: ignore[return-value]


class ConvGaussianEncoder(nn.Module):
    """Diagonal Gaussian ``q(z|x)`` from stride-2 convolutions on ``(C, H, W)`` images
    (``x`` arrives flattened and is reshaped), then an MLP head.

    ``stages`` stride-2 3x3 convolutions (default :func:`conv_stages`: two for images up
    to 32 pixels a side, one more per doubling) with widths :func:`conv_widths`.
    """

    def __init__(self, image_shape: Sequence[int], z_dim: int, channels: int = 32, hidden: int = 256,
                 stages: int | None = None) -> None:
        super().__init__()
        self.image_shape = image_chw(image_shape)
        c, h, w = self.image_shape
        n = conv_stages(self.image_shape, stages)
        layers: list[nn.Module] = []
        for c_in, c_out in zip([c, *conv_widths(channels, n)], conv_widths(channels, n)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.SiLU()]
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.conv = nn.Sequential(*layers)
        self.head = mlp([conv_widths(channels, n)[-1] * h * w, hidden, 2 * z_dim])

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
