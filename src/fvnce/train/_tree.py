"""Copies of nested tensor containers (state dicts, optimiser states, RNG states)."""

from __future__ import annotations

from torch import Tensor

from .._tree import map_tensors

__all__ = ["clone_state", "deepclone", "map_tensors", "to_cpu"]


def clone_state(sd: dict) -> dict:
    return {k: (v.detach().clone() if isinstance(v, Tensor) else v) for k, v in sd.items()}


def deepclone(obj):
    return map_tensors(obj, lambda t: t.detach().clone())


def to_cpu(obj):
    return map_tensors(obj, lambda t: t.detach().cpu())
