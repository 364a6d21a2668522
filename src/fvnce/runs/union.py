"""A union of trained runs: one detector that raises an alarm when any member finds a row
extreme.

Why: without anomaly labels nothing tells which *kind* of anomaly the data holds.  Rows
extreme in one feature are flagged by a model of independent features (the one-component
diagonal mixture) and explained away by a model that learns the features' relations (the
VAE family); rows that break those relations are the other way round (ADBench,
``docs/benchmarks.md``, "ADBench": cardiotocography and wbc against wilt).  The union
flags both kinds.

Score of a row: ``max_m (s_m - c_m) / w_m`` over the members ``m``, where ``s_m`` is the
member's own anomaly score of the row (exactly what ``fvnce score`` writes for it), and
``c_m`` and ``w_m`` are the median and the inter-quartile range of the member's scores of
the validation rows (the rows its alarm threshold is set on): each member in units of its
own spread, so that neither dominates by its scale.  Held-out rows, not training rows:
a flexible member fits its own training rows, so its spread there is too small and its
scaled scores of new rows too large (ADBench wbc, unsupervised: 0.972 with training-row
scales against 0.983).  The alarm threshold is set from the union's scores of the same
validation rows as for a run (split-conformal, :func:`fvnce.evaluate.alarm_threshold`).
The scales are two robust statistics per member of those rows, so a new row is
exchangeable with them up to the O(1/n) change its presence would make to a median or
quartile; ``tests/test_union.py`` measures the realised false-alarm rate against the
target.

``union.json``::

    kind        "union"
    members     [{name, run_dir (relative to the union's folder), center, spread, identity}]
    scale_rows  how many validation rows set the scales (and the threshold)
    combination the formula above, in words

``identity`` is what defines a member's scores (:func:`member_identity`: SHA-256 of its
weights file, preprocessing, noise and configuration); ``fvnce score`` refuses a union
whose member no longer matches it (retrained, resumed or replaced), since its scale and the
union's threshold were set from the member as it was.  A ``union.json`` written before
members had identities is refused too: nothing tells whether its members changed, so it is
rebuilt by running the poc again.

``alarm.json`` beside it has the format of a run's (:mod:`fvnce.runs.alarm`).  Only
``fvnce score`` takes a union; the other commands take its members.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data import normal_rows, prepare_scoring_data
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_json
from ..thresholds import check_alarm_rate
from ..version import __version__
from .alarm import alarm_record
from .files import ALARM_NAME, BEST_NAME, CHECKPOINT_NAME, CONFIG_NAME, NOISE_NAME, PREPROCESS_NAME, UNION_NAME
from .loading import load_run, score_rows

__all__ = ["COMBINATION", "IDENTITY_PARTS", "check_members", "combine", "create_union", "is_union",
           "member_identity", "member_scores", "read_union", "robust_scale", "score_union"]

COMBINATION = ("the largest, over the members, of (member score - median) / inter-quartile range, both taken over "
               "the member's scores of the validation rows")


def is_union(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a union of runs (``union.json``) rather than one run."""
    return (Path(run_dir) / UNION_NAME).is_file()


def robust_scale(scores) -> tuple[float, float]:
    """``(median, spread)`` of ``scores`` (NaN and infinite values left out): the spread is
    the inter-quartile range, else the standard deviation, else 1 when the scores are all
    equal (or there are none)."""
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    s = s[np.isfinite(s)]
    if s.size == 0:
        return 0.0, 1.0
    q1, med, q3 = np.percentile(s, [25.0, 50.0, 75.0])
    spread = float(q3 - q1)
    if not spread > 0:
        spread = float(s.std())
    return float(med), spread if spread > 0 else 1.0


def combine(member_scores: Sequence, scales: Sequence[tuple[float, float]]) -> np.ndarray:
    """The union's score of each row: ``max_m (s_m - c_m) / w_m`` (see the module's text).
    A NaN member score is ignored when another member has a number (a row no member can
    score stays NaN)."""
    if len(member_scores) != len(scales) or not member_scores:
        raise ValueError("one (center, spread) per member score array, and at least one member")
    z = np.stack([(np.asarray(s, dtype=np.float64).reshape(-1) - c) / w for s, (c, w) in zip(member_scores, scales)])
    out = np.full(z.shape[1], np.nan)
    seen = ~np.isnan(z).all(axis=0)
    out[seen] = np.nanmax(z[:, seen], axis=0)
    return out


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


#: the parts of a member's identity, and their names in a refusal
IDENTITY_PARTS = {"weights_sha256": "weights", "preprocess_sha256": f"preprocessing ({PREPROCESS_NAME})",
                  "noise_sha256": f"noise ({NOISE_NAME})", "config_sha256": f"settings ({CONFIG_NAME})"}


def member_identity(run_dir: str | Path) -> dict:
    """What defines a trained run's scores, as SHA-256 digests: the weights file that
    :func:`fvnce.runs.loading.load_run` reads (``best.pt``, else ``checkpoint.pt``; its name
    in ``weights``), ``preprocess.json``, ``noise.pt`` and ``config.json`` (read as JSON,
    without ``init_from``, the run it started from, whose path may be rewritten when a poc
    folder is moved into place)."""
    run_dir = Path(run_dir)
    weights = BEST_NAME if (run_dir / BEST_NAME).is_file() else CHECKPOINT_NAME
    try:
        record = json.loads((run_dir / CONFIG_NAME).read_text(encoding="utf-8"))
        if isinstance(record, dict) and isinstance(record.get("run"), dict):
            record["run"].pop("init_from", None)
        config = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    except (OSError, ValueError, UnicodeDecodeError):
        config = None
    return {"weights": weights, "weights_sha256": _sha256(run_dir / weights),
            "preprocess_sha256": _sha256(run_dir / PREPROCESS_NAME), "noise_sha256": _sha256(run_dir / NOISE_NAME),
            "config_sha256": config}


def check_members(union_dir: str | Path, rec: dict) -> None:
    """CheckpointError (one line, naming the member) unless every member of the union record
    ``rec`` (:func:`read_union`) is the run the union was built from."""
    path = Path(union_dir) / UNION_NAME
    rebuild = "rebuild the union: run the poc again (with --overwrite)"
    for m in rec["members"]:
        want = m.get("identity")
        if not isinstance(want, dict):
            raise CheckpointError(f"{path} does not record what its members were when it was built (it predates "
                                  f"member identities), so it cannot tell whether {m['name']} changed since: "
                                  f"{rebuild}")
        have = member_identity(m["path"])
        changed = [IDENTITY_PARTS[k] + (f" ({have['weights']})" if k == "weights_sha256" else "")
                   for k in IDENTITY_PARTS if have.get(k) != want.get(k)]
        if changed:
            raise CheckpointError(f"member {m['name']} of the union {union_dir} changed since the union was built "
                                  f"(its {' and '.join(changed)} differ): the union's scales and alarm threshold "
                                  f"no longer fit it; {rebuild}")


def read_union(run_dir: str | Path) -> dict:
    """The record of ``union.json`` with each member's ``path`` resolved; CheckpointError when
    it is corrupt or a member's folder is gone."""
    run_dir = Path(run_dir)
    path = run_dir / UNION_NAME
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
        members = rec["members"]
        if not isinstance(members, list) or not members:
            raise ValueError("no members")
        for m in members:
            if not isinstance(m["run_dir"], str) or not float(m["spread"]) > 0 or not np.isfinite(float(m["center"])):
                raise ValueError(f"member {m.get('name')} has run_dir {m['run_dir']!r}, center {m['center']!r}, "
                                 f"spread {m['spread']!r}")
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    for m in members:
        m["path"] = (run_dir / m["run_dir"]).resolve()
        if not (m["path"] / CONFIG_NAME).is_file():
            raise CheckpointError(f"{path}: member run {m['run_dir']} is not there (the union's folder was moved "
                                  "without its members?)")
    return rec


def member_scores(run, x, seed_offset: int, k: int | None = None) -> np.ndarray:
    """``run``'s scores of the preprocessed rows ``x``, torch seeded with the run's seed plus
    ``seed_offset`` (2: as ``fvnce score``; 4: as the alarm calibration) and left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.train.seed + seed_offset)
        return score_rows(run, x, k=k) if len(x) else np.zeros(0)


def create_union(union_dir: str | Path, member_dirs: Sequence[str | Path], dataset, rate: float, *,
                 rows: torch.Tensor | None = None) -> dict:
    """Write a union of the trained runs ``member_dirs`` (all trained on ``dataset``) into
    ``union_dir``: each member's scale and the alarm threshold for the false-alarm rate
    ``rate`` from their scores of the validation normal rows (every validation row without
    labels), scored as the alarm calibration scores them.  Returns ``{"union": union.json's
    record, "alarm": alarm.json's record, "scores": the union's scores of the preprocessed
    ``rows`` (as ``fvnce score`` gives them), or None}``."""
    rate = check_alarm_rate(rate)
    union_dir = Path(union_dir)
    if union_dir.exists() and any(union_dir.iterdir()) and not is_union(union_dir):
        raise ConfigError(f"output directory {union_dir} exists and is not a union of runs; choose a new one")
    val = normal_rows(dataset.val, dataset.val_labels)
    members, val_scores, ks, row_scores = [], [], [], []
    for d in member_dirs:
        run = load_run(d, dataset=dataset)
        val_scores.append(member_scores(run, val, 4))
        center, spread = robust_scale(val_scores[-1])
        members.append({"name": Path(d).name, "run_dir": os.path.relpath(Path(d).resolve(), union_dir.resolve()),
                        "center": center, "spread": spread, "identity": member_identity(d)})
        ks.append(run.config.eval_k)
        if rows is not None:
            row_scores.append(member_scores(run, rows, 2))
    scales = [(m["center"], m["spread"]) for m in members]
    record = {"fvnce_version": __version__, "kind": "union", "members": members, "scale_rows": int(len(val)),
              "combination": COMBINATION}
    alarm = alarm_record(combine(val_scores, scales), rate, dataset.val_labels is not None,
                         k=ks[0] if len(set(ks)) == 1 else None, weights="best")
    union_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(union_dir / ALARM_NAME, alarm)
    atomic_write_json(union_dir / UNION_NAME, record)
    return {"union": record, "alarm": alarm, "scores": combine(row_scores, scales) if rows is not None else None}


def score_union(union_dir: str | Path, data_file: str, *, k: int | None = None, missing: str | None = None) -> np.ndarray:
    """The union's score of each row of ``data_file``: every member scores the file as
    ``fvnce score`` would (its own preprocessing, seed and ``k``), then :func:`combine`."""
    rec = read_union(union_dir)
    check_members(union_dir, rec)
    scores = []
    for m in rec["members"]:
        run = load_run(m["path"])
        scores.append(member_scores(run, prepare_scoring_data(data_file, run.preprocessor, missing=missing), 2, k))
    return combine(scores, [(m["center"], m["spread"]) for m in rec["members"]])
