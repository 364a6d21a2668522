"""The output record of an objective: its loss, terms and diagnostics computed when read."""

from __future__ import annotations

import math
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from ..errors import NonFiniteLossError


__all__ = ["Diagnostics", "ObjectiveOutput", "read_floats"]


def read_floats(values: list) -> list:
    """``values`` (0-dim tensors, numbers or None) as Python floats (numbers and None
    unchanged), with at most one host transfer: tensors off the CPU are stacked and read
    together (each ``.item()`` there would wait for the device); on the CPU a read costs
    nothing and each is read by itself (stacking would cost more than it saves).  Every
    value is exactly what ``.item()`` gives (float32 and bfloat16 widen to float64 exactly)."""
    out = list(values)
    where = [i for i, v in enumerate(out) if isinstance(v, Tensor)]
    if len(where) > 1 and any(out[i].device.type != "cpu" for i in where):
        read = torch.stack([out[i].detach().reshape(()).to(out[where[0]].device, torch.float64)
                            for i in where]).tolist()
        for i, v in zip(where, read):
            out[i] = v
        return out
    for i in where:
        out[i] = out[i].item()
    return out


class Diagnostics(MutableMapping):
    """The detached diagnostics of one batch, computed when first read.

    A value is a number, a 0-dim tensor, or a callable without arguments returning one
    (run under ``torch.no_grad`` when first needed).  Reading gives a Python float (the
    value's ``.item()``) and keeps it, so a training step pays for the diagnostics only
    when something reads them: the trainer's explosion check reads one or two, its
    logging steps read all.  :meth:`tensor` gives the value before the host read, for
    callers that read several values at once (:func:`read_floats`).

    The callables must not read state that changes after the objective returns (the
    parameters change in the optimiser step): capture values, not modules.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._raw: dict[str, Any] = dict(values or {})
        self._read: dict[str, Any] = {}

    def tensor(self, key: str, default=None):
        """The value of ``key`` without reading it to the host (a tensor, a number or
        ``default``); a callable is evaluated once and replaced by its result."""
        if key in self._read:
            return self._read[key]
        if key not in self._raw:
            return default
        v = self._raw[key]
        if callable(v) and not isinstance(v, Tensor):
            with torch.no_grad():
                v = v()
            self._raw[key] = v
        return v

    def __getitem__(self, key: str):
        if key not in self._read:
            if key not in self._raw:
                raise KeyError(key)
            v = self.tensor(key)
            self._read[key] = v.item() if isinstance(v, Tensor) else v
        return self._read[key]

    def __setitem__(self, key: str, value) -> None:
        self._raw[key] = value
        self._read.pop(key, None)

    def __delitem__(self, key: str) -> None:
        del self._raw[key]
        self._read.pop(key, None)

    def __iter__(self):
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Diagnostics({dict(self)!r})"


@dataclass
class ObjectiveOutput:
    """What an objective returns for one batch.

    ``loss`` is the scalar to minimise; ``data_terms`` (B,) and ``noise_terms``
    (nu * B,) the per-example values whose means make it (``noise_terms`` is None for
    objectives without a noise side); ``diagnostics`` detached floats (a plain dict, or
    :class:`Diagnostics`, which computes them only when read); ``parts`` the
    raw tensors that let :meth:`check_finite` name a failing term; ``noise_log_ratio``
    the detached per-point ``log r(y)`` estimates of the noise samples (the importance
    weights of the noise term, whose tail the trainer watches), or None.
    """

    loss: Tensor
    data_terms: Tensor
    noise_terms: Tensor | None
    diagnostics: Mapping[str, float] = field(default_factory=dict)
    parts: dict[str, Tensor] = field(default_factory=dict, repr=False)
    noise_log_ratio: Tensor | None = field(default=None, repr=False)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` naming the first non-finite term."""
        if math.isfinite(self.loss.detach().item()):  # one host read, no kernel, on the healthy path
            return
        found = []
        for name, t in self.parts.items():
            if t is not None and not bool(torch.isfinite(t).all()):
                bad = t[~torch.isfinite(t)]
                found.append(f"{name} ({bad.numel()} non-finite of {t.numel()}, e.g. {bad.reshape(-1)[0].item()})")
        for name, t in (("data-side loss", self.data_terms), ("noise-side loss", self.noise_terms)):
            if t is not None and not bool(torch.isfinite(t).all()):
                found.append(name)
        where = "; ".join(found) if found else "the loss itself"
        hint = ""
        if any("noise" in f for f in found) and not any("log q" in f or "log p~" in f for f in found):
            hint = " - the noise-side exponentials overflowed: use exp_mode='linear' or a noise closer to the data"
        raise NonFiniteLossError(f"non-finite loss ({self.loss.item()}) in {where}{hint}")
