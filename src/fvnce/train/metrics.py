"""``metrics.jsonl``: one JSON object per line, and the records in memory.

Training records (``step``, ``loss``, ``data_loss``, ``noise_loss``, the objective's
diagnostics, ``grad_norm``, ``lr``, ``elapsed``), validation records (``val_loss``) and
events (``"event": "retry"``, ``"stabilise"``, ``"warning"``).  On resume and after a
rollback the file is cut back to the step training continues from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch import Tensor

from ..fileio import atomic_write_text, read_jsonl
from ..filenames import METRICS_NAME

__all__ = ["METRICS_NAME", "MetricsLog", "train_record", "truncate_metrics"]


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


class MetricsLog:
    """The run's records: ``history`` in memory, appended to ``path`` when given."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.history: list[dict] = []
        self._file = None

    def open(self, resume_step: int | None, retries: int | None = None) -> None:
        """Start writing: keep the records up to ``resume_step`` (and the rollbacks up to
        the ``retries``-th, see :func:`truncate_metrics`), or start a new file."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self.history = truncate_metrics(self.path, resume_step, retries)
        elif self.path.exists():
            self.path.unlink()
        self._file = open(self.path, "a", encoding="utf-8")

    def record(self, rec: dict) -> None:
        rec = {k: _json_safe(v) for k, v in rec.items()}
        self.history.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()

    def truncate(self, step: int) -> None:
        """Forget the records after ``step`` (in memory and in the file)."""
        self.history = [h for h in self.history if h.get("step", 0) <= step]
        if self.path is None:
            return
        reopen = self._file is not None
        if reopen:
            self._file.close()
        truncate_metrics(self.path, step)
        if reopen:
            self._file = open(self.path, "a", encoding="utf-8")

    def flush(self) -> None:
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def truncate_metrics(path: Path, step: int, retries: int | None = None) -> list[dict]:
    """Keep the records of ``path`` up to ``step`` (dropping unparsable lines, e.g. a
    line cut by a crash) and rewrite the file atomically.  Returns the kept records.

    With ``retries`` (the rollback count of the checkpoint resumed from), the ``retry``
    events of later rollbacks and the ``stabilise`` event that follows each are dropped
    too: a rollback is stamped with the step it went back to, which may be at or before
    ``step`` although it happened after the checkpoint was written, and the resumed run
    replays it."""
    if not path.exists():
        return []
    kept, dropping = [], False
    for rec in read_jsonl(path)[0]:
        event = rec.get("event")
        if event == "retry":
            dropping = retries is not None and int(rec.get("retry", 0)) > retries
        elif event != "stabilise":
            dropping = False
        if not dropping and int(rec.get("step", 0)) <= step:
            kept.append(rec)
    lines = [json.dumps(rec) for rec in kept]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return kept


def train_record(out, norm: Tensor, step: int, lr: float, elapsed: float) -> dict:
    """The logged record of a training step from the objective's output."""
    diag = out.diagnostics or {}
    rec: dict[str, Any] = {"step": step, "loss": float(out.loss.detach())}
    for k, terms in (("data_loss", out.data_terms), ("noise_loss", out.noise_terms)):
        # the mean of the terms only when the objective gives no value of its own
        rec[k] = None if terms is None or k in diag else float(terms.detach().mean())
    for k, v in diag.items():  # the objective's own values win
        if isinstance(v, Tensor) and v.numel() == 1:
            v = float(v)
        if k != "step" and (v is None or isinstance(v, (int, float, bool, str))):
            rec[k] = v
    rec["grad_norm"] = float(norm)
    rec["lr"] = lr
    rec["elapsed"] = elapsed
    return rec
