"""Model, encoder, objective and noise of a run: built from its configuration,
checked against each other, optionally started from another run's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..checkpoint import load_checkpoint
from ..errors import ConfigError
from ..models import make_model
from ..noise import BaseModelNoise
from ..objectives import make_objective
from ..user_vae import build_user_model
from .config import RunConfig
from .files import CONFIG_NAME, weights_file

__all__ = ["IMAGE_MODELS", "RunParts", "base_noise", "build_parts", "check_noise_support", "image_model_options",
           "warm_start"]


#: the VAE family, which on continuous (C, H, W) images is convolutional by default
IMAGE_MODELS = ("vae", "tilted_vae", "conv_vae")


def image_model_options(config: RunConfig, name: str, opts: dict, image_shape, binary: bool) -> dict:
    """Defaults of the VAE family on continuous images given as ``(C, H, W)`` (8-bit
    intensities scaled to [0, 1]): convolutional encoder, decoder and tilt
    (``arch="conv"``) and the discretised-logistic decoder (``likelihood="logistic"``),
    unless the run's model options name them.  This covers ``model="auto"`` (which
    resolves to ``vae`` or ``tilted_vae``) and the poc's VAE run, whose weights start the
    tilted runs.  Binary images and images given as ``(H, W)`` keep the MLP defaults."""
    if binary or image_shape is None or len(image_shape) != 3 or name not in IMAGE_MODELS:
        return opts
    opts = dict(opts)
    if name != "conv_vae" and "arch" not in config.model_options:
        opts["arch"] = "conv"
    if "likelihood" not in config.model_options:
        opts["likelihood"] = "logistic"
    return opts


class RunParts(NamedTuple):
    """What :func:`build_parts` builds from a run's configuration."""

    model_name: str
    model_options: dict
    model: torch.nn.Module
    encoder: torch.nn.Module | None  # None when the objective uses none
    objective: Any


def build_parts(config: RunConfig, x_dim: int, image_shape, binary: bool, *, module_file=None,
                load_weights: bool = False) -> RunParts:
    """The model (resolved name and options), encoder and objective of ``config`` for data of
    ``x_dim`` features (``image_shape``, ``binary``), the objective checked against the model.
    ``module_file``, ``load_weights``: for a run with the user's own VAE
    (:func:`fvnce.user_vae.build_user_model`)."""
    name, opts = config.resolved_model(binary)
    if config.vae is not None:  # the user's own VAE, or a tilted model over it
        model, encoder = build_user_model(config.vae, name, opts, x_dim, module_file=module_file,
                                          load_weights=load_weights)
    else:
        opts = image_model_options(config, name, opts, image_shape, binary)
        if image_shape is not None:
            opts.setdefault("image_shape", tuple(image_shape))
        model, encoder = make_model(name, x_dim, **opts)
    objective = make_objective(config.objective, **config.objective_options)
    objective.check_model(model)
    if not objective.uses_encoder:
        encoder = None
    return RunParts(name, opts, model, encoder, objective)


def check_noise_support(noise, binary: bool, model_name: str, opts: dict) -> None:
    """ConfigError when a continuous noise meets a probability mass function, or the reverse."""
    discrete_model = opts.get("likelihood") == "bernoulli" or model_name == "rbm"
    if discrete_model and not getattr(noise, "discrete", False):
        raise ConfigError(f"noise {noise.name!r} is a continuous density but the model ({model_name}, binary "
                          "data) is a probability mass function, so their ratio is meaningless; use a discrete "
                          "noise for binary data: marginals, gmm or kde")
    if not discrete_model and getattr(noise, "discrete", False):
        raise ConfigError(f"noise {noise.name!r} is discrete but the model is a density; use a continuous noise")


def base_noise(model, state: dict | None = None):
    """The ``base`` noise of a tilted model; on resume ``state``, the model state of the
    checkpoint, is loaded first, so that its frozen base is the one the run started with
    (the noise must not change)."""
    if state is not None:
        model.load_state_dict(state)
    return BaseModelNoise.from_model(model)


def warm_start(model, encoder, source: str) -> None:
    """Copy a finished run's parameters into ``model`` (or into its ``base`` when the
    model is an energy-tilted version of the source) and into ``encoder``."""
    src = Path(source)
    path, _ = weights_file(src)
    if not (src / CONFIG_NAME).exists():
        raise ConfigError(f"--init-from {source}: not an fvnce run directory (no {CONFIG_NAME})")
    ckpt = load_checkpoint(path)
    target = model.base if hasattr(model, "base") and not _fits(model, ckpt["model"]) else model
    try:
        target.load_state_dict(ckpt["model"])
        if encoder is not None and ckpt.get("encoder") is not None:
            encoder.load_state_dict(ckpt["encoder"])
    except RuntimeError as exc:
        raise ConfigError(f"--init-from {source}: its model does not match this one "
                          f"({str(exc).splitlines()[0]}); use the same model size options") from None


def _fits(module, state: dict) -> bool:
    return set(module.state_dict()) == set(state)
