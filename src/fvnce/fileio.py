"""Crash-safe file writes (no torch import, so light modules such as the report use it).

Every write goes to a temporary file in the destination's folder, is flushed and
``fsync``-ed, then ``os.replace``-d over the destination, and the folder itself is
``fsync``-ed: a reader sees either the old file or the complete new one, never half a
file, even after a crash or ``SIGKILL``.  On failure the temporary file is removed and
the old file stays as it was.  New files get the usual permissions (``0666 & ~umask``),
not the private ones of a temporary file.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np

__all__ = ["atomic_write_bytes", "atomic_write_json", "atomic_write_npy", "atomic_write_text", "finite_json",
           "jsonable", "read_jsonl"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable by syncing its folder (a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (all or nothing)."""
    data = bytes(data)
    _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (serialised before anything is written)."""
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def atomic_write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as a ``.npy`` file (no pickled objects) to ``path`` atomically."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


def finite_json(obj):
    """``obj`` with every NaN/inf float replaced by None (nested dicts, lists and tuples;
    tuples become lists), so that its JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    return obj


def jsonable(d: dict) -> dict:
    """A copy of the mapping ``d`` with its tuple values as lists (as JSON reads them back)."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def read_jsonl(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The JSON objects of a JSON-lines file, and how many non-empty lines were not
    objects (e.g. a last line cut by a crash).  Blank lines are ignored."""
    records, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad += 1
    return records, bad
