"""Latent-variable models and the registry that pairs each with a default encoder.

``make_model(name, x_dim, **options) -> (model, encoder)``; ``encoder`` is ``None`` for
models trained without one.  Adding a model = one file + one entry in ``MODELS``.
"""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

from torch import nn

from ..encoders import BernoulliEncoder, CategoricalEncoder, ConvGaussianEncoder, ExactPosterior, GaussianEncoder
from ..errors import ConfigError
from .base import LatentVariableModel
from .discretized import DiscretizedLogistic
from .energy import ConvTilt, EnergyTiltedVAE, GaussianReference, MLPEnergy
from .gaussian_mixture import DiagonalGaussianMixture
from .linear_gaussian import LinearGaussian
from .mixture import TwoGaussianMixture
from .rbm import RBM
from .vae import VAE
from .wrap import FromLogJoint, FromVAE

__all__ = [
    "ConvTilt",
    "DiagonalGaussianMixture",
    "DiscretizedLogistic",
    "EnergyTiltedVAE",
    "FromLogJoint",
    "FromVAE",
    "GaussianReference",
    "LatentVariableModel",
    "LinearGaussian",
    "MLPEnergy",
    "MODELS",
    "RBM",
    "TwoGaussianMixture",
    "VAE",
    "make_model",
]


def _encoder(x_dim: int, z_dim: int, hidden: Sequence[int], image_shape, arch: str, channels: int = 32,
             stages: int | None = None) -> nn.Module:
    if arch == "conv":
        return ConvGaussianEncoder(image_shape, z_dim, channels, stages=stages)
    return GaussianEncoder(x_dim, z_dim, tuple(reversed(tuple(hidden))))


def _arch(name: str, arch: str, image_shape, **sizes) -> None:
    """ConfigError unless ``arch`` is known and fits the data, and ``sizes`` are positive integers."""
    for key, v in sizes.items():
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"model {name!r}: {key} must be a positive integer, got {v!r}")
    if arch not in ("mlp", "conv"):
        raise ConfigError(f"model {name!r}: arch must be 'mlp' or 'conv', got {arch!r}")
    if arch == "conv" and image_shape is None:
        raise ConfigError(f"model {name!r} with arch 'conv' needs image data (an image_shape)")


def _vae(x_dim: int, z_dim: int = 8, hidden: Sequence[int] = (128, 256), likelihood: str = "bernoulli",
         image_shape: Sequence[int] | None = None, arch: str = "mlp", channels: int = 32,
         stages: int | None = None):
    """Normalised VAE: MLP decoder and encoder, or convolutional ones (``arch="conv"``)."""
    _arch("vae", arch, image_shape, channels=channels)
    return (VAE(x_dim, z_dim, hidden, likelihood, arch=arch, image_shape=image_shape, channels=channels, stages=stages),
            _encoder(x_dim, z_dim, hidden, image_shape, arch, channels, stages))


def _conv_vae(x_dim: int, z_dim: int = 8, likelihood: str = "bernoulli", image_shape: Sequence[int] | None = None,
              channels: int = 32, stages: int | None = None):
    """Normalised VAE with convolutional decoder and encoder (needs image_shape); the
    ``logistic`` likelihood is the discretised logistic for 8-bit intensities in [0, 1]."""
    if image_shape is None:
        raise ConfigError("model 'conv_vae' needs image data (an image_shape)")
    _arch("conv_vae", "conv", image_shape, channels=channels)
    return VAE(x_dim, z_dim, likelihood=likelihood, arch="conv", image_shape=image_shape, channels=channels,
               stages=stages), _encoder(x_dim, z_dim, (), image_shape, "conv", channels, stages)


#: default bound B of the tilt of ``tilted_vae`` (docs/benchmarks.md: unbounded tilts made
#: log Z unreliable (Pareto k-hat up to 2.6) where B = 5 kept every estimate reliable)
TILT_BOUND = 5.0


def _tilted_vae(x_dim: int, z_dim: int = 8, hidden: Sequence[int] = (128, 256), likelihood: str = "bernoulli",
                tilt_hidden: Sequence[int] = (128,), tilt_bound: float | None = TILT_BOUND,
                freeze_base: bool = False, image_shape: Sequence[int] | None = None, arch: str = "mlp",
                channels: int = 32, stages: int | None = None, tilt_channels: int = 16):
    """Unnormalised: a VAE joint times exp(g(x)) with a learnable log-normaliser;
    ``tilt_bound`` bounds |g| (default 5, ``None``: unbounded), ``freeze_base`` trains the
    tilt only.  ``arch="conv"``: convolutional base VAE and encoder, and a CNN tilt
    (``tilt_channels``, first of ``tilt_hidden`` as its head) that sees the 8-bit bins
    when the likelihood is ``logistic``."""
    _arch("tilted_vae", arch, image_shape, channels=channels, tilt_channels=tilt_channels)
    base = VAE(x_dim, z_dim, hidden, likelihood, arch=arch, image_shape=image_shape, channels=channels, stages=stages)
    tilt = None
    if arch == "conv":
        tilt = ConvTilt(image_shape, tilt_channels, (tuple(tilt_hidden) or (64,))[0], stages,
                        grid=likelihood == "logistic")
    return (EnergyTiltedVAE(base, x_dim, tilt_hidden, tilt_bound, freeze_base, tilt),
            _encoder(x_dim, z_dim, hidden, image_shape, arch, channels, stages))


def _mlp_energy(x_dim: int, z_dim: int = 4, hidden: Sequence[int] = (128, 128), lam: float = 0.05,
                energy_bound: float | None = None, image_shape: Sequence[int] | None = None):
    """Unnormalised: an MLP energy E(x, z) with Gaussian confinement; ``energy_bound``
    bounds |E| (then the confinement is a reliable log Z proposal)."""
    return MLPEnergy(x_dim, z_dim, hidden, lam, energy_bound), GaussianEncoder(x_dim, z_dim, tuple(hidden))


def _rbm(x_dim: int, h_dim: int = 8, visible: str = "bernoulli", image_shape: Sequence[int] | None = None):
    """Unnormalised RBM; its hidden units are summed over exactly under a Bernoulli encoder."""
    return RBM(x_dim, h_dim, visible), BernoulliEncoder(x_dim, h_dim)


def _gb_rbm(x_dim: int, h_dim: int = 8, image_shape: Sequence[int] | None = None):
    """Gaussian-Bernoulli RBM for continuous data."""
    return _rbm(x_dim, h_dim, "gaussian")


def _two_gaussians(x_dim: int = 1, theta: float = 1.0, sigma1: float = 4.0,
                   image_shape: Sequence[int] | None = None):
    """The unnormalised 1-D two-Gaussian mixture of the VNCE paper."""
    if x_dim != 1:
        raise ConfigError(f"model 'two_gaussians' is one-dimensional, data has {x_dim} features")
    return TwoGaussianMixture(theta, sigma1), CategoricalEncoder(1, 2, hidden=(16,))


def _linear_gaussian(x_dim: int, z_dim: int = 2, sigma: float = 0.5, normalised: bool = True,
                     image_shape: Sequence[int] | None = None, init: str = "random"):
    """Linear-Gaussian factor analysis model (exact marginal and posterior); ``init="pca"``
    starts training from probabilistic PCA of the training rows."""
    try:
        model = LinearGaussian(x_dim, z_dim, sigma, normalised, init=init)
    except ValueError as exc:
        raise ConfigError(f"model 'linear_gaussian': {exc}") from None
    # probabilistic PCA keeps the exact posterior as its encoder: a learned one drifts off it
    # at thousands of pixels (each Adam step moves a linear encoder's mean by about lr x D)
    return model, (ExactPosterior(model) if init == "pca" else GaussianEncoder(x_dim, z_dim, ()))


def _gaussian_mixture(x_dim: int, components: int = 4, normalised: bool = True, hidden: Sequence[int] = (64,),
                      image_shape: Sequence[int] | None = None, init: str = "random"):
    """Mixture of diagonal Gaussians, the component as latent (summed over exactly);
    ``init="data"`` starts from the training rows' moments."""
    try:
        model = DiagonalGaussianMixture(x_dim, components, normalised, init=init)
    except ValueError as exc:
        raise ConfigError(f"model 'gaussian_mixture': {exc}") from None
    return (model,
            CategoricalEncoder(x_dim, components, hidden=tuple(hidden)))


MODELS: dict[str, Callable] = {
    "vae": _vae,
    "conv_vae": _conv_vae,
    "tilted_vae": _tilted_vae,
    "mlp_energy": _mlp_energy,
    "rbm": _rbm,
    "gb_rbm": _gb_rbm,
    "two_gaussians": _two_gaussians,
    "linear_gaussian": _linear_gaussian,
    "gaussian_mixture": _gaussian_mixture,
}


def model_options(name: str) -> list[str]:
    """The options a registered model accepts (besides x_dim)."""
    return [p for p in inspect.signature(MODELS[name]).parameters if p != "x_dim"]


def make_model(name: str, x_dim: int, **options):
    """Build ``(model, encoder)`` by registry name; unknown names and options raise ConfigError."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
    valid = model_options(name)
    bad = [k for k in options if k not in valid]
    if bad:
        raise ConfigError(f"model {name!r} has no option {bad[0]!r}; its options: {', '.join(valid)}")
    try:
        return MODELS[name](x_dim, **options)
    except (ValueError, RuntimeError) as exc:  # e.g. torch refusing a negative layer size
        raise ConfigError(f"model {name!r}: {str(exc).splitlines()[0]}") from None
