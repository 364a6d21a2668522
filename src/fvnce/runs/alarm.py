"""The alarm threshold of a run: ``alarm.json``.

Every trained run stores the threshold above which a row's anomaly score (the score
column of ``fvnce score``: negative estimated log-density, ``log Z`` left out) raises an
alarm, set for a target false-alarm rate ``a`` (``alarm_rate`` of the run, default 0.01)
as the split-conformal quantile of the scores of its validation normal rows
(:func:`fvnce.evaluate.alarm_threshold`).  Without anomaly labels every validation row
counts, and the file says so.  The validation scores are stored with it, so that another
rate can be applied later without the data (``fvnce score --alarm-rate``).

``alarm.json``::

    rate, threshold, n, rank, expected_rate, note   as fvnce.evaluate.alarm_threshold
    calibrated_on     "validation normal rows" | "all validation rows (the data has no anomaly labels)"
    labelled          whether the validation rows had labels
    k, weights        importance samples per row and the weights scored ("best" or "last")
    validation_scores the calibration scores, sorted
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import load_dataset, normal_rows
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_json
from ..thresholds import DEFAULT_ALARM_RATE, alarm_threshold, check_alarm_rate
from ..version import __version__
from .files import ALARM_NAME
from .loading import load_run, score_rows

__all__ = ["ALL_ROWS", "DEFAULT_ALARM_RATE", "NORMAL_ROWS", "alarm_record", "calibrate_alarm", "read_alarm",
           "resolve_threshold"]

NORMAL_ROWS = "validation normal rows"
ALL_ROWS = "validation rows, all of them (the data has no anomaly labels)"


def calibrate_alarm(run_dir: str | Path, dataset=None, rate: float | None = None, *, write: bool = True,
                    run=None) -> dict:
    """Score the run's validation normal rows (every validation row when there are no
    labels: :func:`fvnce.data.normal_rows`) as ``fvnce score`` does
    (:func:`fvnce.runs.loading.score_rows`: same weights, ``eval_k`` importance samples;
    torch's global random state is left as it was) and set the alarm threshold for
    ``rate`` (default: the run's ``alarm_rate``).  ``run``: the run already loaded
    (:func:`fvnce.runs.loading.load_run` with its default weights), else it is loaded from
    ``run_dir``.  Writes ``alarm.json`` atomically when ``write``; returns its record."""
    if run is None:
        run = load_run(run_dir, dataset=dataset)
    rate = check_alarm_rate(run.config.alarm_rate if rate is None else rate)
    if dataset is None:
        dataset = load_dataset(run.config.data)
    x, labelled = normal_rows(dataset.val, dataset.val_labels), dataset.val_labels is not None
    k = run.config.eval_k
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.train.seed + 4)
        scores = score_rows(run, x, k=k) if len(x) else np.zeros(0)
    record = alarm_record(scores, rate, labelled, k=k, weights=run.weights)
    if write:
        atomic_write_json(Path(run_dir) / ALARM_NAME, record)
    return record


def alarm_record(scores, rate: float, labelled: bool, *, k: int | None = None, weights: str | None = None) -> dict:
    """The content of ``alarm.json`` for calibration ``scores``."""
    big = np.finfo(np.float64).max  # infinite scores are kept as +-1.8e308: plain JSON, same order
    s = np.sort(np.clip(np.asarray(scores, dtype=np.float64).reshape(-1), -big, big))
    rec: dict[str, Any] = {"fvnce_version": __version__, **alarm_threshold(s, rate),
                           "calibrated_on": NORMAL_ROWS if labelled else ALL_ROWS, "labelled": bool(labelled),
                           "k": k, "weights": weights}
    rec["validation_scores"] = [None if np.isnan(v) else float(v) for v in s]
    return rec


def read_alarm(run_dir: str | Path) -> dict | None:
    """The run's ``alarm.json`` record, None when the run has none (trained before alarm
    thresholds existed); CheckpointError when it cannot be used."""
    path = Path(run_dir) / ALARM_NAME
    if not path.exists():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(rec, dict) or not isinstance(rec.get("validation_scores"), list):
            raise ValueError("no validation_scores")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    return rec


def resolve_threshold(run_dir: str | Path, rate: float | None = None, threshold: float | None = None) -> dict:
    """The threshold ``fvnce score`` applies: ``threshold`` when given, else the run's
    stored one, recomputed from its stored validation scores when ``rate`` is given.
    Returns ``{"threshold", "rate", "source", "note", "k"}`` (``k``: the importance samples
    per row the threshold was set with); ConfigError when there is none.  ``rate`` and
    ``threshold`` are checked by the caller (:func:`fvnce.runs.scoring.score_file`, before
    any work)."""
    if threshold is not None:
        return {"threshold": float(threshold), "rate": None, "source": "--threshold", "note": None, "k": None}
    rec = read_alarm(run_dir)
    if rec is None:
        raise ConfigError(f"run {run_dir} has no alarm threshold ({ALARM_NAME}: it was trained before alarm "
                          f"thresholds existed); run 'fvnce evaluate {run_dir}' to set one, or give --threshold")
    if rate is not None:
        scores = [v for v in rec["validation_scores"] if v is not None]
        rec = {**rec, **alarm_threshold(np.asarray(scores, dtype=np.float64), float(rate))}
    if rec.get("threshold") is None:
        raise ConfigError(f"run {run_dir} has no alarm threshold: {rec.get('note') or 'no validation rows'}; "
                          "give --threshold")
    return {"threshold": float(rec["threshold"]), "rate": rec.get("rate"), "source": rec.get("calibrated_on"),
            "note": rec.get("note"), "k": rec.get("k")}
