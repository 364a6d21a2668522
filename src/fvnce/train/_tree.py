"""Copies of nested tensor containers (state dicts, optimiser states, RNG states)."""

from __future__ import annotations

from .._tree import map_tensors

__all__ = ["deepclone", "to_cpu"]


def deepclone(obj):
    return map_tensors(obj, lambda t: t.detach().clone())


def to_cpu(obj):
    return map_tensors(obj, lambda t: t.detach().cpu())
