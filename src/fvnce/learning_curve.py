"""How much data is enough: the poc's recommended configuration retrained on fractions of
its training rows.

The subsets are nested (the first ``ceil(f n)`` rows of one fixed random order of the
training rows, seeded by the poc's seed), the validation and test rows are the same, and
the preprocessing is the one fitted on all training rows (so every point is scored on the
same inputs).  Each fraction retrains the whole recipe: the VAE an FVNCE run starts from
(your own VAE as it is is not retrained: it never saw these rows), then the run, into
``DIR/learning_curve/f<fraction>/runs/<name>``.  For a union recommendation the union's
members are retrained and combined into a union the same way (``.../runs/union``).

Per point: test AUROC and AUPRC (with labels), mean test log-likelihood of the normal rows
(a single run only: a union is not a density), false alarms per 1,000 normal test items at
the point's own alarm threshold; standard errors: AUROC by Hanley & McNeil
(:func:`fvnce.criteria.auroc_standard_error`), log-likelihood over the rows, false alarms as a
binomial proportion.  The verdict compares the full training set with the largest fraction
below it: the difference against ``SE_FACTOR`` standard errors of the difference (which
ignores the positive correlation of two models scored on the same rows, so it errs towards
"cannot tell").
"""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .criteria import SE_FACTOR, VAE_RUN, auroc_standard_error  # a difference counts beyond SE_FACTOR SEs
from .errors import ConfigError

__all__ = ["DEFAULT_FRACTIONS", "learning_curve", "parse_fractions", "subset", "verdict"]

DEFAULT_FRACTIONS = (0.25, 0.5)
LC_DIR = "learning_curve"
#: fewer training rows than this: the fraction is skipped
MIN_ROWS = 10


def parse_fractions(text: str | None) -> tuple[float, ...]:
    """``"0.25,0.5"`` -> (0.25, 0.5); ``"none"`` -> (); each in (0, 1)."""
    if text is None or str(text).strip().lower() == "none":
        return ()
    try:
        values = [float(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--learning-curve must be fractions like 0.25,0.5 or 'none', got {text!r}") from None
    bad = [v for v in values if not 0 < v < 1]
    if bad or not values:
        raise ConfigError(f"--learning-curve fractions must lie strictly between 0 and 1, got {text!r}")
    return tuple(sorted(set(values)))


def subset_rows(n: int, fraction: float, seed: int) -> np.ndarray:
    """The first ``ceil(fraction n)`` of one random order of ``range(n)``: nested in the fraction."""
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:max(1, math.ceil(fraction * n))])


def subset(dataset, fraction: float, seed: int):
    """``dataset`` with its training rows cut to the nested subset of ``fraction``."""
    idx = subset_rows(len(dataset.train), fraction, seed)
    return dataclasses.replace(dataset, train=dataset.train[idx],
                               train_labels=None if dataset.train_labels is None else dataset.train_labels[idx],
                               notes=list(dataset.notes))


def _se_binomial(count, n) -> float | None:
    if count is None or not n:
        return None
    p = count / n
    return 1000.0 * math.sqrt(p * (1 - p) / n)


def _point(fraction: float, rows: int, metrics: dict, op: dict | None, counts: dict) -> dict:
    op = op or {}
    return {"fraction": fraction, "rows": rows, "auroc": metrics.get("auroc"),
            "auroc_se": auroc_standard_error(metrics.get("auroc"), counts.get("anomaly"), counts.get("normal")),
            "auprc": metrics.get("auprc"), "log_likelihood": metrics.get("log_likelihood"),
            "log_likelihood_se": metrics.get("log_likelihood_se"),
            "log_likelihood_reliable": metrics.get("log_likelihood_reliable"),
            "false_alarms_per_1000": op.get("false_alarms_per_1000"),
            "false_alarms_per_1000_se": _se_binomial(op.get("false_alarms"), op.get("n_normal"))}


def _union_point(fraction: float, rows: int, union_dir: Path, members: list[Path], dataset, rate: float,
                 counts: dict, create: bool) -> dict:
    """The union's AUROC, AUPRC and false alarms on the test rows (``create``: build it first)."""
    from . import evaluate as ev
    from .runs import create_union
    from .runs.alarm import read_alarm
    from .runs.costing import run_scores

    if create:
        create_union(union_dir, members, dataset, rate)
    scores = run_scores(union_dir, dataset.test, 2, dataset)
    labels = None if dataset.test_labels is None else dataset.test_labels.numpy()
    metrics: dict[str, Any] = {}
    if labels is not None and 0 < labels.sum() < len(labels):
        m = ev.anomaly_metrics(scores, labels)
        metrics = {"auroc": m["auroc"], "auprc": m["auprc"]}
    alarm = read_alarm(union_dir)
    op = ev.operating_point(scores, labels, alarm["threshold"]) if alarm and alarm.get("threshold") is not None \
        else None
    return _point(fraction, rows, metrics, op, counts)


def verdict(points: list[dict], key: str) -> str | None:
    """One sentence: does going from the largest fraction below 100 % to 100 % change
    ``key`` (auroc or log_likelihood) beyond ``SE_FACTOR`` standard errors?"""
    full = next((p for p in points if p["fraction"] == 1.0), None)
    part = [p for p in points if p["fraction"] < 1.0 and p.get(key) is not None and p.get(f"{key}_se") is not None]
    if full is None or full.get(key) is None or full.get(f"{key}_se") is None or not part:
        return None
    half = part[-1]
    what = "test AUROC" if key == "auroc" else "test log-likelihood"
    unit = "" if key == "auroc" else " nats"
    d = full[key] - half[key]
    se = math.sqrt(full[f"{key}_se"] ** 2 + half[f"{key}_se"] ** 2)
    per = 1000.0 * d / max(1, full["rows"] - half["rows"])
    head = (f"From {half['rows']} to {full['rows']} training rows ({100 * half['fraction']:.3g} % to 100 %) the "
            f"{what} changed by {d:+.4g}{unit} ({per:+.3g}{unit} per 1,000 rows; standard error of the change "
            f"{se:.2g}{unit})")
    if d > SE_FACTOR * se:
        return head + ": it was still rising, so more data is likely to help."
    if d < -SE_FACTOR * se:
        return head + ": it fell, so more rows of the same kind are unlikely to help; the configuration, not the " \
                      "amount of data, limits it."
    return head + (f": within {SE_FACTOR:g} standard errors, so more data is unlikely to help much at this size "
                   "(these rows cannot show a gain smaller than the noise).")


def learning_curve(fractions, plan: dict, recommended: dict | None, runs: list[dict], dataset, out_dir: Path,
                   config, run_one: Callable, log: Callable[[str], None] = lambda m: None) -> dict:
    """The learning curve of the poc's recommendation: ``{"learning_curve": [points],
    "learning_curve_verdict": sentence or None, "learning_curve_note": what was done}``.

    ``plan``: the poc's RunConfig of every run by name; ``run_one``: the poc's
    ``run_one(name, rc, dataset, fitted, out_dir, log)``."""
    lc_root = Path(out_dir) / LC_DIR
    shutil.rmtree(lc_root, ignore_errors=True)  # an earlier poc's curve in this folder
    out = _curve(fractions, plan, recommended, runs, dataset, out_dir, config, run_one, log)
    if out["learning_curve_verdict"] is None:  # always a sentence for the report
        out["learning_curve_verdict"] = f"No learning curve: {out['learning_curve_note']}."
    return out


def _curve(fractions, plan: dict, recommended: dict | None, runs: list[dict], dataset, out_dir: Path, config,
           run_one: Callable, log: Callable[[str], None]) -> dict:
    lc_root = Path(out_dir) / LC_DIR
    out = {"learning_curve": [], "learning_curve_verdict": None, "learning_curve_note": None}
    if not fractions:
        out["learning_curve_note"] = "it was not asked for (--learning-curve none)"
        return out
    if not recommended or recommended.get("run") is None:
        out["learning_curve_note"] = "no configuration was recommended"
        return out
    members = list(recommended.get("members") or [recommended["run"]])
    by_name = {r["name"]: r for r in runs}
    if any(m not in plan for m in members):
        out["learning_curve_note"] = "the recommendation is not one of the poc's trained runs"
        return out
    adopted = VAE_RUN in plan and plan[VAE_RUN].vae is not None  # your VAE as it is: never trained here
    if adopted and members == [VAE_RUN]:
        out["learning_curve_note"] = ("the recommendation is your own VAE as it is, which fvnce did not "
                                      "train on these rows")
        return out
    labels = dataset.test_labels
    n1 = 0 if labels is None else int((labels != 0).sum())
    counts = {"anomaly": n1, "normal": len(dataset.test) - n1}
    union = bool(recommended.get("members"))
    n_all = len(dataset.train)
    curve: dict[str, list[dict]] = {m: [] for m in members}
    union_pts: list[dict] = []
    for f in fractions:
        rows = len(subset_rows(n_all, f, config.train.seed))
        if rows < MIN_ROWS:
            log(f"fvnce: learning curve: {100 * f:.3g} % is {rows} training rows (fewer than {MIN_ROWS}): skipped")
            continue
        sub = subset(dataset, f, config.train.seed)
        where = lc_root / f"f{f:g}"
        done: dict[str, dict] = {}
        needs = [n for n in members if plan[n].init_from]  # runs that start from the VAE: retrain it first
        order = ([VAE_RUN] if needs and not adopted and VAE_RUN not in members else []) + members
        for name in order:
            rc = copy.deepcopy(plan[name])
            if rc.init_from:
                base = (Path(out_dir) / "runs" / VAE_RUN) if adopted else (where / "runs" / VAE_RUN)
                rc.init_from = str(base)
            if name == VAE_RUN and adopted:
                continue
            entry = run_one(name, rc, sub, {}, where, log)
            done[name] = entry
            log(f"fvnce: learning curve {100 * f:.3g} % ({rows} rows): {name}: {entry['status']}")
        for m in members:
            e = done.get(m, {})
            if e.get("status") in ("ok", "degraded", "unreliable") or e.get("metrics"):
                curve[m].append(_point(f, rows, e.get("metrics") or {}, e.get("operating_point"), counts))
        if union and all(done.get(m, {}).get("metrics") for m in members):
            union_pts.append(_union_point(f, rows, where / "runs" / "union", [where / "runs" / m for m in members],
                                          sub, config.alarm_rate, counts, create=True))
    for m in members:  # the full training set: the poc's own runs
        e = by_name.get(m, {})
        curve[m].append(_point(1.0, n_all, e.get("metrics") or {}, e.get("operating_point"), counts))
    key = "auroc" if n1 and counts["normal"] else "log_likelihood"
    if union:
        union_pts.append(_union_point(1.0, n_all, Path(out_dir) / "runs" / recommended["run"], [], dataset,
                                      config.alarm_rate, counts, create=False))
        for p in union_pts:
            p["members"] = {m: next((q for q in curve[m] if q["fraction"] == p["fraction"]), None) for m in members}
        out["learning_curve"] = union_pts
        if key == "auroc":
            out["learning_curve_verdict"] = verdict(union_pts, "auroc")
        else:
            said = [f"{m}: {s}" for m in members if (s := verdict(curve[m], "log_likelihood"))]
            out["learning_curve_verdict"] = " ".join(said) or None
        out["learning_curve_note"] = (f"the union {recommended['run']} of {' and '.join(members)}: each member "
                                      "retrained on each fraction and combined again; AUROC and false alarms are the "
                                      "union's, log-likelihoods its members' (a union is not a density)")
    else:
        out["learning_curve"] = curve[members[0]]
        out["learning_curve_verdict"] = verdict(curve[members[0]], key)
        out["learning_curve_note"] = f"{members[0]} retrained on each fraction" + (
            ", starting from a VAE retrained on the same rows" if plan[members[0]].init_from and not adopted else
            ", starting from your VAE as it is" if plan[members[0]].init_from else "")
    if out["learning_curve_verdict"] is None:
        out["learning_curve_verdict"] = ("No verdict: the curve lacks a point below 100 % or a standard error "
                                         f"of the {'AUROC' if key == 'auroc' else 'log-likelihood'}.")
    return out
