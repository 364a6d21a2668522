"""Crash-safe files: atomic writes and versioned, code-free checkpoints.

Writes go through :mod:`fvnce.fileio` (temporary file, fsync, rename).

Checkpoints are loaded with ``torch.load(weights_only=True)`` only: tensors and plain
containers are rebuilt, no Python object is ever constructed from the file, so a
crafted checkpoint cannot execute code.  Accordingly :func:`save_checkpoint` accepts
plain payloads only (tensors, numbers, strings, booleans, None, lists, tuples, dicts).
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "load_checkpoint",
    "save_checkpoint",
]

#: marker stored under ``"format"`` in every checkpoint
CHECKPOINT_FORMAT = "fvnce-checkpoint"
#: layout version of the checkpoint payload; bump when it changes incompatibly
CHECKPOINT_VERSION = 1


def _package_version() -> str:
    try:
        from importlib.metadata import version

        return version("fvnce")
    except Exception:  # not installed (e.g. run from a source tree)
        return "unknown"


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)``, atomically (serialised before anything is written)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getbuffer())


_PLAIN_SCALARS = (int, float, str, bool, type(None))


def _check_plain(obj: Any, where: str) -> None:
    if isinstance(obj, _PLAIN_SCALARS) or isinstance(obj, torch.Tensor):
        return
    if isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            if not isinstance(k, (int, str)):
                raise CheckpointError(f"checkpoint payload key {where}[{k!r}] is a {type(k).__name__}; "
                                      "keys must be str or int")
            _check_plain(v, f"{where}[{k!r}]")
        return
    raise CheckpointError(f"checkpoint payload {where} is a {type(obj).__name__}; only tensors, numbers, "
                          "strings, booleans, None, lists and dicts can be saved")


def save_checkpoint(path: str | os.PathLike, payload: dict) -> None:
    """Save a plain ``payload`` atomically, stamped with the format marker and versions.

    The keys ``format``, ``version`` and ``fvnce_version`` are reserved.
    """
    if not isinstance(payload, dict):
        raise CheckpointError(f"checkpoint payload must be a dict, got {type(payload).__name__}")
    _check_plain(payload, "payload")
    full = {**payload, "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
            "fvnce_version": _package_version()}
    atomic_torch_save(full, path)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`save_checkpoint`, on the CPU, without running code.

    Raises :class:`~fvnce.errors.CheckpointError` with a one-line message when the file
    is missing, truncated or corrupt, contains executable objects, is not an fvnce
    checkpoint, or has an incompatible version.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": we answer with our own message
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        low = msg.lower()
        if "unsupported global" in low or "unsupported class" in low:  # a crafted pickle naming code
            raise CheckpointError(f"refusing to load {path}: it contains executable objects "
                                  "(only tensors and plain data are accepted)") from None
        if "weights only" in low or "weights_only" in low:  # an opcode the safe reader refuses
            raise CheckpointError(f"refusing to load {path}: it is corrupt or it contains executable objects "
                                  "(only tensors and plain data are accepted; nothing in it was run)") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(exc)})") from None
    except Exception as exc:  # RuntimeError (zip reader), EOFError, ValueError, ...
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({_first_line(exc)})") from None
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an fvnce checkpoint (format marker "
                              f"{obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r} "
                              f"instead of {CHECKPOINT_FORMAT!r})")
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version}, this fvnce reads version "
                              f"{CHECKPOINT_VERSION}")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= 200 else line[:197] + "..."
