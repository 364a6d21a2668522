"""User-supplied noise distributions given as ``"module:callable"``.

This is the ONLY place where fvnce imports and executes user code: the module named in
the spec is imported and the callable is called with the training data.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution

from fvnce.errors import ConfigError

from .base import NoiseDistribution, check_data

__all__ = ["PluginNoise", "is_plugin_spec"]


def is_plugin_spec(name: str) -> bool:
    return isinstance(name, str) and ":" in name


def _resolve(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"plugin noise {spec!r}: expected 'module:callable', e.g. 'mypkg.noises:near_miss'")
    try:
        module = _import(module_name)
    except Exception as exc:  # noqa: BLE001 - any failure importing user code
        hint = " (is it in the current folder or on PYTHONPATH?)" if isinstance(exc, ModuleNotFoundError) else ""
        raise ConfigError(
            f"plugin noise {spec!r}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}){hint}"
        ) from exc
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"plugin noise {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"plugin noise {spec!r}: {attr!r} is not callable")
    return obj


def _import(module_name: str):
    """Import the named module; a module in the current folder is found too (as under
    ``python -m fvnce``; the ``fvnce`` console script does not put the folder on
    ``sys.path``).  The folder is searched last and only for this one, explicitly named module."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        cwd = os.getcwd()
        if exc.name != top or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(module_name)
        finally:
            if cwd in sys.path:
                sys.path.remove(cwd)


def _accepts_seed(fn: Any) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "seed" or p.kind is p.VAR_KEYWORD for p in params)


class PluginNoise(NoiseDistribution):
    r"""Wraps the distribution returned by a user callable ``module:callable``.

    For noises that encode domain knowledge (e.g. "near-miss" perturbations of normal
    operating data, physically plausible but wrong readings). The callable receives the
    training data (N, D) (and ``seed=`` when it accepts it, plus any extra options) and
    must return a ``torch.distributions.Distribution`` whose ``sample(shape)`` gives
    (*shape, D) and ``log_prob(x)`` gives (...,) exact log-densities (log-pmf if it sets
    ``discrete = True`` or has a discrete support).

    The spec, not the user object, is saved: :func:`fvnce.noise.load_noise` needs the
    data to call the plug-in again. **Executes user code** (the only place fvnce does).
    """

    name = "plugin"

    def __init__(self, dim: int, spec: str, base: Distribution, seed: int = 0,
                 options: dict | None = None, device: torch.device | None = None,
                 base_device: torch.device | None = None):
        super().__init__(dim, spec=spec, seed=seed, options=dict(options or {}))
        self._base = base
        self._device = device  # where outputs go (None: leave them where the plug-in puts them)
        self._base_device = base_device  # where the plug-in's tensors live
        discrete = getattr(base, "discrete", None)
        if discrete is None:
            try:
                discrete = bool(base.support.is_discrete)
            except (NotImplementedError, AttributeError):
                discrete = False
        self.discrete = bool(discrete)

    @property
    def spec(self) -> str:
        return self._fields["spec"]

    @property
    def base(self) -> Distribution:
        return self._base

    @classmethod
    def fit(cls, data: Tensor, seed: int = 0, spec: str = "", **options: Any) -> PluginNoise:  # type: ignore[override]
        data = check_data(data, f"plugin noise {spec!r}")
        fn = _resolve(spec)
        kwargs = dict(options)
        if _accepts_seed(fn):
            kwargs["seed"] = int(seed)
        try:
            base = fn(data, **kwargs)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"plugin noise {spec!r}: the callable raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(base, Distribution) or not callable(getattr(base, "sample", None)) \
                or not callable(getattr(base, "log_prob", None)):
            raise ConfigError(
                f"plugin noise {spec!r}: callable must return a torch.distributions.Distribution "
                f"with sample and log_prob, got {type(base).__name__}"
            )
        d = data.shape[1]
        try:
            with torch.no_grad():
                s = base.sample(torch.Size([2]))
                lp = base.log_prob(data[:2].to(s.dtype) if isinstance(s, Tensor) else data[:2])
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"plugin noise {spec!r}: sample/log_prob failed ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(s, Tensor) or tuple(s.shape) != (2, d):
            raise ConfigError(
                f"plugin noise {spec!r}: sample((2,)) must have shape (2, {d}), "
                f"got {tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__}"
            )
        n2 = min(2, data.shape[0])
        if not isinstance(lp, Tensor) or tuple(lp.shape) != (n2,):
            raise ConfigError(
                f"plugin noise {spec!r}: log_prob of {n2} rows must have shape ({n2},), "
                f"got {tuple(lp.shape) if isinstance(lp, Tensor) else type(lp).__name__}"
            )
        return cls(d, spec, base, seed=int(seed), options=options, base_device=s.device)

    @classmethod
    def from_state(cls, state: dict, data: Tensor | None = None) -> PluginNoise:
        spec = state.get("spec", "?")
        if data is None:
            raise ConfigError(
                f"plugin noise {spec!r}: load_noise needs the training data to rebuild a plug-in noise"
            )
        noise = cls.fit(data, seed=state.get("seed", 0), spec=spec, **state.get("options", {}))
        noise.warnings = list(state.get("warnings", []))
        return noise

    def state(self) -> dict:
        return {"name": "plugin", "spec": self.spec, "seed": self._fields["seed"],
                "options": dict(self._fields["options"]), "warnings": list(self.warnings)}

    def to(self, device) -> PluginNoise:
        """A view that moves inputs to the plug-in's own device and outputs to ``device``
        (torch distributions have no generic ``.to``)."""
        noise = PluginNoise(self.dim, self.spec, self._base, self._fields["seed"],
                            self._fields["options"], torch.device(device), self._base_device)
        noise.warnings = list(self.warnings)
        return noise

    def _out(self, t: Tensor) -> Tensor:
        return t if self._device is None else t.to(self._device)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self._out(self._base.sample(torch.Size(sample_shape)))

    def log_prob(self, x: Tensor) -> Tensor:
        if self._base_device is not None:
            x = x.to(self._base_device)
        return self._out(self._base.log_prob(x))
