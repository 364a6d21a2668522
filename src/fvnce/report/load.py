"""Reading run and POC directories for the report (tolerant of missing or damaged files).

Nothing here trains or imports the command line: a report is built from files only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..diagnostics import finite
from ..errors import CheckpointError
from ..fileio import atomic_write_text, read_jsonl

__all__ = ["RunFiles", "atomic_write_text", "finite", "load_json", "load_summary", "read_run_files"]

#: At most this many samples are read from ``samples.npy`` (the report shows a few).
MAX_SAMPLES = 500


def load_json(path: Path) -> Any:
    """Parsed JSON of ``path``; raises OSError / ValueError on failure."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _try_json(path: Path, problems: list[str]) -> Any:
    if not path.is_file():
        return None
    try:
        return load_json(path)
    except (OSError, ValueError) as exc:
        problems.append(f"{path.name} could not be read ({type(exc).__name__}: {exc})")
        return None


def _load_metrics(path: Path, problems: list[str]) -> list[dict]:
    """Records of ``metrics.jsonl``; unreadable lines (e.g. a truncated last line) are skipped."""
    if not path.is_file():
        return []
    records, bad = [], 0
    try:
        records, bad = read_jsonl(path)
    except OSError as exc:
        problems.append(f"metrics.jsonl could not be read ({exc})")
    if bad:
        problems.append(f"{bad} unreadable line(s) in metrics.jsonl were skipped")
    return records


def _load_samples(path: Path, problems: list[str]) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        arr = np.asarray(arr[:MAX_SAMPLES], dtype=float)
    except Exception as exc:  # noqa: BLE001 - any damaged file just means "no samples"
        problems.append(f"{path.name} could not be read ({type(exc).__name__})")
        return None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim > 2:
        arr = arr.reshape(arr.shape[0], -1)
    return arr


@dataclass
class RunFiles:
    """Everything the report uses from one run directory (any part may be missing)."""

    path: Path
    config: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    evaluation: dict | None = None
    samples: np.ndarray | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.path.is_dir()


def _as_dict(obj: Any) -> dict | None:
    return obj if isinstance(obj, dict) else None


def read_run_files(path: str | os.PathLike) -> RunFiles:
    """Read a run directory; never raises for missing or damaged files."""
    path = Path(path)
    run = RunFiles(path=path)
    if not path.is_dir():
        run.problems.append("run directory not found")
        return run
    run.config = _as_dict(_try_json(path / "config.json", run.problems))
    run.metrics = _load_metrics(path / "metrics.jsonl", run.problems)
    run.evaluation = _as_dict(_try_json(path / "evaluation.json", run.problems))
    samples_name = "samples.npy"
    if run.evaluation and isinstance(run.evaluation.get("samples_file"), str):
        name = Path(run.evaluation["samples_file"]).name  # never leave the run directory
        if name:
            samples_name = name
    run.samples = _load_samples(path / samples_name, run.problems)
    return run


def load_summary(folder: Path) -> dict:
    """Parsed ``summary.json`` of a POC directory; CheckpointError if it cannot be used."""
    try:
        summary = load_json(folder / "summary.json")
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {folder / 'summary.json'}: {exc}") from None
    if not isinstance(summary, dict):
        raise CheckpointError(f"{folder / 'summary.json'} is not a JSON object")
    return summary
