"""Base class of noise distributions and small shared helpers (data checks, scale floors).

A noise distribution p_n is what NCE contrasts the data against: the objectives need
samples from it and its exact log-density (log-pmf for binary data). Every noise here is
a :class:`torch.distributions.Distribution` with ``batch_shape == ()`` and
``event_shape == (D,)``, built by :meth:`NoiseDistribution.fit` on training data and
rebuilt exactly from :meth:`NoiseDistribution.state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from fvnce._tree import map_tensors
from fvnce.errors import ConfigError

__all__ = ["NoiseDistribution"]


class NoiseDistribution(Distribution):
    """A fixed (non-trainable) noise distribution over vectors of length D.

    Subclasses set ``name`` and implement :meth:`_fit`, :meth:`sample` and
    :meth:`log_prob`; their ``__init__(dim, **fields)`` takes exactly the fields that
    :meth:`state` records, so that ``cls(**fields)`` rebuilds the same distribution.

    Attributes:
        name: registry name.
        discrete: True when :meth:`log_prob` is a pmf over {0,1}^D, False for a density.
        warnings: messages the user should see (e.g. constant columns that were floored).
    """

    name: str = ""
    discrete: bool = False
    #: whether ``log_prob`` exists (False for the model-derived ``base`` noise)
    has_density: bool = True
    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, dim: int, **fields: Any):
        self.warnings: list[str] = []
        self._fields = dict(fields)
        super().__init__(
            batch_shape=torch.Size(), event_shape=torch.Size([int(dim)]), validate_args=False
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def fit(cls, data: Tensor, seed: int = 0, **options: Any) -> NoiseDistribution:
        """Fit the noise on ``data`` (N, D); reproducible given ``seed``.

        Fitting runs on the CPU; the result is moved to the data's device.
        """
        data = check_data(data, cls.name)
        device = data.device
        noise = cls._fit(data.cpu(), seed=int(seed), **options)
        return noise if device.type == "cpu" else noise.to(device)

    @classmethod
    def _fit(cls, data: Tensor, seed: int = 0, **options: Any) -> NoiseDistribution:
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict, data: Tensor | None = None) -> NoiseDistribution:
        """Rebuild from :meth:`state` (``data`` is only used by plug-ins)."""
        fields = {k: v for k, v in state.items() if k not in ("name", "warnings")}
        noise = cls(**fields)
        noise.warnings = list(state.get("warnings", []))
        return noise

    def state(self) -> dict:
        """Plain dict (tensors on the CPU, str, numbers, lists, dicts) for ``torch.save``."""
        fields = map_tensors(self._fields, lambda t: t.detach().cpu().clone())
        return {"name": self.name, "warnings": list(self.warnings), "dim": self.dim, **fields}

    def to(self, device: torch.device | str) -> NoiseDistribution:
        """A copy of this noise with all its tensors on ``device``."""
        state = map_tensors(self.state(), lambda t: t.to(device))
        return type(self).from_state(state)

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        return int(self.event_shape[0])

    @property
    def support(self):  # type: ignore[override]
        base = constraints.boolean if self.discrete else constraints.real
        return constraints.independent(base, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


# ---------------------------------------------------------------------- helpers
def check_data(data: Any, name: str = "noise") -> Tensor:
    """Validate training data: a finite float tensor (N, D) with N, D >= 1."""
    if not isinstance(data, Tensor):
        try:
            data = torch.as_tensor(data)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{name}: data must be a tensor (N, D), got {type(data).__name__}") from exc
    if not data.is_floating_point():
        data = data.to(torch.get_default_dtype())
    if data.dim() != 2:
        raise ConfigError(f"{name}: data must have shape (N, D), got {tuple(data.shape)}")
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise ConfigError(f"{name}: cannot fit a noise on empty data of shape {tuple(data.shape)}")
    finite = torch.isfinite(data)
    if not bool(finite.all()):
        bad = (~finite).nonzero()[0].tolist()
        raise ConfigError(
            f"{name}: data has {int((~finite).sum())} non-finite value(s) "
            f"(first at row {bad[0]}, column {bad[1]})"
        )
    return data.detach()


def binary_columns(data: Tensor) -> Tensor:
    """Bool mask (D,): columns whose values all lie in {0, 1}."""
    return ((data == 0) | (data == 1)).all(0)


def constant_columns(data: Tensor) -> Tensor:
    """Bool mask (D,): columns with a single value."""
    return data.amax(0) == data.amin(0)


def _fmt_cols(idx: list[int]) -> str:
    shown = ", ".join(str(i) for i in idx[:20])
    return f"[{shown}{', ...' if len(idx) > 20 else ''}] ({len(idx)} in all)"


def floor_scale(
    scale: Tensor, const: Tensor, what: str, noise: str, warnings: list[str], rel: float = 1e-3,
    columns: Tensor | None = None,
) -> Tensor:
    """Replace zero / non-positive scales (and those of constant columns) by a floor.

    The floor is ``rel`` times the mean scale of the other columns, or ``rel`` absolute if
    every column is degenerate. A message naming the columns is appended to ``warnings``
    (``columns`` maps positions in ``scale`` to data column indices when they differ).
    """
    bad = const | ~(scale > 0) | ~torch.isfinite(scale)
    if not bool(bad.any()):
        return scale
    good = scale[~bad]
    floor = rel * float(good.mean()) if good.numel() else rel
    scale = torch.where(bad, torch.full_like(scale, floor), scale)
    idx = bad.nonzero().flatten()
    idx = (columns[idx] if columns is not None else idx).tolist()
    warnings.append(
        f"{noise}: column(s) {_fmt_cols(idx)} are constant (zero spread); "
        f"their {what} was floored at {floor:.3g}"
    )
    return scale


def population_std(data: Tensor) -> Tensor:
    if data.shape[0] < 2 or data.shape[1] == 0:
        return torch.zeros_like(data[0])
    return data.std(0, correction=0)


def chunked_rows(fn: Callable[[Tensor], Tensor], x: Tensor, cost_per_row: int, budget: int = 1 << 22) -> Tensor:
    """Apply ``fn`` to rows of ``x`` (..., D) in chunks; returns (...)."""
    batch = x.shape[:-1]
    flat = x.reshape(-1, x.shape[-1])
    step = max(1, budget // max(1, cost_per_row))
    if flat.shape[0] <= step:
        return fn(flat).reshape(batch)
    out = torch.cat([fn(flat[i : i + step]) for i in range(0, flat.shape[0], step)])
    return out.reshape(batch)


def subsample(data: Tensor, max_points: int, seed: int) -> Tensor:
    """At most ``max_points`` rows of ``data`` chosen without replacement (seeded)."""
    n = data.shape[0]
    if n <= max_points:
        return data
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(n, generator=g)[:max_points].sort().values
    return data[idx]


# option validation: each returns the converted value or raises ConfigError naming it
def opt_int(noise: str, key: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int,)) and not (
        isinstance(value, float) and value.is_integer()
    ):
        raise ConfigError(f"{noise}: option {key} must be an integer >= {low}, got {value!r}")
    if int(value) < low:
        raise ConfigError(f"{noise}: option {key} must be an integer >= {low}, got {value!r}")
    return int(value)


def opt_float(
    noise: str, key: str, value: Any, low: float = 0.0, high: float = math.inf,
    low_open: bool = True, high_open: bool = False,
) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not math.isfinite(v) or (v <= low if low_open else v < low) or (
        v >= high if high_open else v > high
    ):
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"{noise}: option {key} must be a number in {lo}{low}, {high}{hi}, got {value!r}")
    return v


def opt_choice(noise: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{noise}: option {key} must be one of {', '.join(choices)}; got {value!r}")
    return value


class TorchBackedNoise(NoiseDistribution):
    """A noise whose density is a ready-made torch Distribution kept in ``self._dist``."""

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        return self._dist.sample(sample_shape)

    def log_prob(self, x: Tensor) -> Tensor:
        return self._dist.log_prob(x)
