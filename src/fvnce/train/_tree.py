"""Copies of nested tensor containers (state dicts, optimiser states, RNG states)."""

from __future__ import annotations

from torch import Tensor


def map_tensors(obj, fn):
    """Apply ``fn`` to every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(map_tensors(v, fn) for v in obj)
    return obj


def clone_state(sd: dict) -> dict:
    return {k: (v.detach().clone() if isinstance(v, Tensor) else v) for k, v in sd.items()}


def deepclone(obj):
    return map_tensors(obj, lambda t: t.detach().clone())


def to_cpu(obj):
    return map_tensors(obj, lambda t: t.detach().cpu())
