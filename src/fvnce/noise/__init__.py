"""Noise distributions p_n: what NCE contrasts the data against.

Each noise is a :class:`torch.distributions.Distribution` (``event_shape (D,)``) that can
be sampled (with torch's global RNG) and has an exact ``log_prob``; most are fitted on
the training data (reproducibly, given ``seed``). Pick one by name::

    noise = make_noise("kde", train_x, seed=0, bandwidth_factor=0.5)
    torch.save(noise.state(), path)
    noise = load_noise(torch.load(path, weights_only=True))

Adding a noise = one small file in this folder (a :class:`NoiseDistribution` subclass
with ``name``, ``_fit``, ``sample``, ``log_prob``) + one line in :data:`NOISES`.
A name ``"module:callable"`` loads a user plug-in (see :mod:`fvnce.noise.plugin`); that
is the only place user code is executed.  The ``base`` noise (:mod:`fvnce.noise.frozen_base`)
is built from an energy-tilted model's frozen base instead of being fitted, so it is not
in the registry.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from fvnce.errors import ConfigError

from .base import NoiseDistribution
from .frozen_base import BaseModelNoise
from .flow import FlowNoise
from .gaussian import DiagGaussianNoise, FullGaussianNoise, StandardNormalNoise
from .kde import KDENoise
from .marginals import MarginalsNoise
from .mixture import MixtureNoise
from .plugin import PluginNoise, is_plugin_spec
from .student_t import StudentTNoise
from .uniform import UniformNoise

__all__ = ["BaseModelNoise", "NOISES", "NoiseDistribution", "PluginNoise", "load_noise", "make_noise", "noise_options"]

NOISES: dict[str, type[NoiseDistribution]] = {
    "standard_normal": StandardNormalNoise,
    "diag_gaussian": DiagGaussianNoise,
    "student_t": StudentTNoise,
    "full_gaussian": FullGaussianNoise,
    "uniform": UniformNoise,
    "marginals": MarginalsNoise,
    "gmm": MixtureNoise,
    "flow": FlowNoise,
    "kde": KDENoise,
}


def _lookup(name: str) -> type[NoiseDistribution]:
    try:
        return NOISES[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown noise {name!r}; valid names: {', '.join(sorted(NOISES))}, or 'module:callable'"
        ) from None


def noise_options(name: str) -> dict[str, Any]:
    """Option names of a registered noise and their defaults."""
    sig = inspect.signature(_lookup(name)._fit)
    return {p.name: p.default for p in sig.parameters.values()
            if p.name not in ("cls", "data", "seed")
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def make_noise(name: str, data: torch.Tensor, seed: int = 0, **options: Any) -> NoiseDistribution:
    """Fit the noise called ``name`` on ``data`` (N, D).

    ``name`` is a key of :data:`NOISES` or a plug-in spec ``"module:callable"`` (imports
    and runs user code). Unknown names or options raise :class:`fvnce.errors.ConfigError`.
    """
    if is_plugin_spec(name):
        return PluginNoise.fit(data, seed=seed, spec=name, **options)
    cls = _lookup(name)
    valid = noise_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(
            f"noise {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or '(none)'}"
        )
    return cls.fit(data, seed=seed, **options)


def load_noise(state: dict, data: torch.Tensor | None = None) -> NoiseDistribution:
    """Rebuild a noise from :meth:`NoiseDistribution.state` (``data`` only for plug-ins)."""
    if not isinstance(state, dict) or "name" not in state:
        raise ConfigError("load_noise: state must be a dict with a 'name' entry")
    if state["name"] == "plugin":
        return PluginNoise.from_state(state, data)
    return _lookup(state["name"]).from_state(state, data)
