"""Using a trained run: one anomaly score per row of a file, and model samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import evaluate as ev
from ..data import image_files, is_image_input, prepare_scoring_data
from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_npy, atomic_write_text
from .alarm import resolve_threshold
from .files import check_output_file, check_run_dir
from .loading import load_run, score_rows
from .union import is_union, score_union

__all__ = ["sample_run", "score_file"]


def score_file(run_dir: str | Path, data_file: str, out: str | Path, *, k: int | None = None,
               missing: str | None = None, alarm_rate: float | None = None, threshold: float | None = None) -> dict:
    """Write one anomaly score and alarm per row of ``data_file`` (same order) to the CSV
    ``out``, with the columns ``row,score,alarm``; for a run trained on image files,
    ``data_file`` may also be a folder (every image under it, in the order of their sorted
    relative paths) or one image file, and the columns are ``path,score,alarm`` (the path
    relative to the folder, or the file as given), the images read and scaled as the
    training images were.

    The score is the negative estimated log-density (higher = more anomalous; for an
    unnormalised model ``log Z`` is left out, which shifts every score alike); for a union
    of runs, :func:`fvnce.runs.union.combine` of its members' scores.  ``alarm``
    is 1 when the score is strictly above the alarm threshold: the run's own
    (``alarm.json``), that of ``alarm_rate`` (recomputed from the run's stored validation
    scores), or ``threshold`` itself.  Every setting is checked before any work, and the
    file is written atomically.  Returns ``{"rows", "alarms", "threshold", "rate",
    "source", "note", "k"}`` (``k`` the samples per row the threshold was set with).
    """
    check_run_dir(Path(run_dir))
    if alarm_rate is not None and threshold is not None:
        raise ConfigError("give --alarm-rate or --threshold, not both")
    if threshold is not None:
        ev.check_threshold(threshold)
    if alarm_rate is not None:
        ev.check_alarm_rate(alarm_rate, "--alarm-rate")
    check_output_file(Path(out))
    chosen = resolve_threshold(run_dir, alarm_rate, threshold)
    names = image_files(data_file)[1] if is_image_input(data_file) else None
    if is_union(run_dir):  # a union of runs (fvnce.runs.union): every member scores, the union combines
        scores = score_union(run_dir, data_file, k=k, missing=missing)
    else:
        run = load_run(run_dir)
        x = prepare_scoring_data(data_file, run.preprocessor, missing=missing)
        torch.manual_seed(run.config.train.seed + 2)
        scores = score_rows(run, x, k=k)
    alarms = scores > chosen["threshold"]
    if k and chosen["k"] and k != chosen["k"]:  # fewer samples lower the estimate: scores rise
        more = f"the threshold was set with --k {chosen['k']}; scores with --k {k} are not on the same footing"
        chosen["note"] = f"{chosen['note']}; {more}" if chosen["note"] else more
    if names is None:
        lines = ["row,score,alarm"] + [f"{i},{s:.9g},{int(a)}" for i, (s, a) in enumerate(zip(scores, alarms))]
    else:
        lines = ["path,score,alarm"] + [f"{_csv_field(p)},{s:.9g},{int(a)}" for p, s, a in zip(names, scores, alarms)]
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    return {"rows": len(scores), "alarms": int(alarms.sum()), **chosen}


def _csv_field(text: str) -> str:
    """``text`` as one CSV field: quoted (quotes doubled) when it holds a comma, quote or line break."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def sample_run(run_dir: str | Path, n: int, out: str | Path) -> str:
    """Draw ``n`` model samples into ``out``: ``.npy`` (in model space), or ``.png``
    (an image grid; image data only).  Returns the sampling method used."""
    out = Path(out)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--n must be a positive integer, got {n!r}")
    if out.suffix not in (".npy", ".png"):
        raise ConfigError(f"sample output must end in .npy or .png, got {out.name!r}")
    check_output_file(out)
    run = load_run(run_dir)
    if out.suffix == ".png" and run.image_shape is None:
        raise ConfigError("a .png grid needs image data; this run's data are not images: use .npy")
    shape = run.image_shape
    if out.suffix == ".png" and len(shape) == 3:  # (C, H, W) of image files: the grid draws one channel
        if shape[0] != 1:
            raise ConfigError(f"a .png grid draws grayscale images; this run's are {shape[0]}-channel: use .npy")
        shape = shape[1:]
    torch.manual_seed(run.config.train.seed + 3)
    try:
        samples, method = ev.sample(run.model, run.encoder, n, noise=run.noise)
    except NotImplementedError as exc:
        raise ConfigError(f"this model cannot be sampled: {exc}") from None
    arr = samples.detach().cpu().numpy()
    if out.suffix == ".npy":
        atomic_write_npy(out, arr)
    else:
        from ..report.plots import image_grid_png
        png = image_grid_png(arr, shape, f"{n} samples ({method})")
        if png is None:
            raise ConfigError(f"cannot draw {n} samples of shape {tuple(arr.shape[1:])} as {shape} images: use .npy")
        atomic_write_bytes(out, png)
    return method
