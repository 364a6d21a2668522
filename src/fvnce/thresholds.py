"""Alarm thresholds for a target false-alarm rate: the split-conformal quantile of calibration
scores, what it does on labelled items, the range of false alarms it should give, and detection /
false alarms against the threshold.  Numpy only (no torch).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import ConfigError, DataError

__all__ = [
    "ALARM_RANGE_LEVEL",
    "DEFAULT_ALARM_RATE",
    "alarm_curve",
    "alarm_threshold",
    "check_alarm_rate",
    "check_threshold",
    "false_alarm_range",
    "operating_point",
]

#: the default target false-alarm rate of a run
DEFAULT_ALARM_RATE = 0.01


def _to_numpy(a) -> np.ndarray:
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return np.asarray(a)


#: probability of the expected range of false alarms that :func:`operating_point` reports
ALARM_RANGE_LEVEL = 0.99


def check_alarm_rate(rate: Any, name: str = "alarm rate") -> float:
    """``rate`` as a float strictly between 0 and 1, else ConfigError naming it."""
    ok = not isinstance(rate, bool) and isinstance(rate, (int, float)) and math.isfinite(float(rate))
    if not ok or not 0.0 < float(rate) < 1.0:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1 (a target false-alarm rate, "
                          f"e.g. 0.01), got {rate!r}")
    return float(rate)


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a finite float, else ConfigError naming it."""
    ok = not isinstance(threshold, bool) and isinstance(threshold, (int, float))
    if not ok or not math.isfinite(float(threshold)):
        raise ConfigError(f"alarm threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def _conformal_rank(n: int, rate: float) -> int:
    """``ceil((n + 1)(1 - rate))`` computed exactly (the rate as written in decimal)."""
    from fractions import Fraction

    return (n + 1) - math.floor((n + 1) * Fraction(repr(float(rate))))


def alarm_threshold(scores, rate: float) -> dict:
    """The alarm threshold for a target false-alarm rate ``rate`` from calibration
    ``scores`` (higher = more anomalous; an item raises an alarm when its score is
    *strictly above* the threshold).

    With ``n`` calibration scores the threshold is their ``k``-th smallest value,
    ``k = ceil((n + 1)(1 - rate))`` (split-conformal, Vovk et al. 2005; Angelopoulos &
    Bates 2021, "A gentle introduction to conformal prediction", sec. 1): for a new score
    exchangeable with the calibration scores, ``P(score > threshold) <= (n + 1 - k)/(n + 1)
    <= rate``, with equality up to ``1/(n + 1)`` when the scores have no ties.  The plain
    empirical quantile (``k = ceil(n (1 - rate))``) would exceed the rate on average.

    When ``n < (1 - rate)/rate`` (e.g. fewer than 99 rows for 1 %) that ``k`` exceeds
    ``n``: the largest score is used and ``note`` says so; its expected false-alarm rate
    ``1/(n + 1)`` is then above ``rate``.  NaN scores are left out (and counted in
    ``note``).  Returns ``{"threshold", "rate", "n", "rank", "expected_rate", "note"}``;
    ``threshold`` is None without any score.
    """
    rate = check_alarm_rate(rate)
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    n_nan = int(np.isnan(s).sum())
    s = np.sort(s[~np.isnan(s)])
    n = int(s.size)
    notes = [f"{n_nan} NaN score(s) left out"] if n_nan else []
    if n == 0:
        return {"threshold": None, "rate": rate, "n": 0, "rank": None, "expected_rate": None,
                "note": "; ".join(notes + ["no calibration scores: no threshold"])}
    k = _conformal_rank(n, rate)
    if k > n:
        need = _min_rows(rate)
        notes.append(f"only {n} validation row(s): a false-alarm rate of {rate:g} needs at least {need}; the "
                     f"threshold is the largest validation score, whose expected false-alarm rate is "
                     f"1/{n + 1} = {1 / (n + 1):.3g}")
        k = n
    return {"threshold": float(s[k - 1]), "rate": rate, "n": n, "rank": int(k),
            "expected_rate": (n + 1 - k) / (n + 1), "note": "; ".join(notes) or None}


def _min_rows(rate: float) -> int:
    """The fewest calibration scores for which :func:`alarm_threshold` meets ``rate``."""
    n = max(1, math.floor(1.0 / rate) - 1)
    while _conformal_rank(n, rate) > n:
        n += 1
    while n > 1 and _conformal_rank(n - 1, rate) <= n - 1:
        n -= 1
    return n


def false_alarm_range(n: int, rank: int, m: int, level: float = ALARM_RANGE_LEVEL) -> tuple[int, int]:
    """The central ``level`` range of the number of false alarms among ``m`` new normal
    items at the threshold of :func:`alarm_threshold` (``rank``-th smallest of ``n``
    calibration scores), when all ``n + m`` scores are exchangeable and have no ties.

    Derivation: the threshold's coverage ``F(s_(k))`` is the ``k``-th order statistic of
    ``n`` uniforms, ``Beta(k, n + 1 - k)``; given it, each new item alarms independently
    with probability ``p = 1 - F(s_(k)) ~ Beta(n + 1 - k, k)``, so the count is
    beta-binomial ``BB(m, n + 1 - k, k)`` (under exchangeability alone the count depends
    on ranks only, whose law is the same).  Its mean is ``m (n + 1 - k)/(n + 1)``; its
    variance ``m p (1 - p) (n + 1 + m)/(n + 2)`` is the binomial one widened by the
    threshold's own randomness (about ``p (1 - p)(1/m + 1/n)`` for the rate).
    """
    from scipy.stats import betabinom

    if m < 1 or n < 1:
        return 0, 0
    dist = betabinom(int(m), int(n + 1 - rank), int(rank))
    tail = (1.0 - level) / 2.0
    return int(dist.ppf(tail)), int(dist.ppf(1.0 - tail))


def operating_point(scores, labels, threshold: float, calibration: dict | None = None,
                    level: float = ALARM_RANGE_LEVEL) -> dict:
    """What an alarm threshold does on labelled (or unlabelled) items.

    ``scores`` higher = more anomalous, ``labels`` 1 = anomaly, 0 = normal, or None; an
    item alarms when its score is strictly above ``threshold``.  Returns ``threshold``,
    ``n_items``, ``alarms``, ``alarms_per_1000``; with labels ``n_normal``,
    ``false_alarms``, ``false_alarm_rate``, ``false_alarms_per_1000``, ``n_anomaly``,
    ``detected`` and ``detection_rate`` (None where a class is absent).  With the
    ``calibration`` record of :func:`alarm_threshold` (and ``labelled``: whether it was
    calibrated on normal rows only, the default when ``labels`` are given),
    ``expected_per_1000`` is the central ``level`` range (:func:`false_alarm_range`) of the
    rate per 1,000 that the same kind of rows (normal items, or all items) should show, and
    ``within_expected`` whether they do.
    """
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    alarm = s > threshold
    out: dict[str, Any] = {"threshold": float(threshold), "n_items": int(s.size), "alarms": int(alarm.sum()),
                           "alarms_per_1000": 1000.0 * float(alarm.mean()) if s.size else None}
    keys = ("n_normal", "false_alarms", "false_alarm_rate", "false_alarms_per_1000", "n_anomaly", "detected",
            "detection_rate")
    out.update(dict.fromkeys(keys))
    if labels is not None:
        y = _to_numpy(labels).reshape(-1).astype(bool)
        if y.shape != s.shape:
            raise DataError(f"scores and labels differ in length: {s.size} scores, {y.size} labels")
        n0, n1 = int((~y).sum()), int(y.sum())
        fa, det = int(alarm[~y].sum()), int(alarm[y].sum())
        out.update(n_normal=n0, false_alarms=fa, n_anomaly=n1, detected=det)
        if n0:
            out.update(false_alarm_rate=fa / n0, false_alarms_per_1000=1000.0 * fa / n0)
        if n1:
            out["detection_rate"] = det / n1
    out["expected_per_1000"], out["within_expected"], out["range_level"] = None, None, None
    on_normal = bool((calibration or {}).get("labelled", labels is not None))
    if on_normal and labels is None:  # calibrated on normal rows: unlabelled items say nothing about it
        return out
    m, count = (out["n_normal"], out["false_alarms"]) if on_normal else (out["n_items"], out["alarms"])
    if calibration and calibration.get("rank") and m:
        lo, hi = false_alarm_range(calibration["n"], calibration["rank"], m, level)
        out["expected_per_1000"] = [1000.0 * lo / m, 1000.0 * hi / m]
        out["within_expected"] = bool(lo <= count <= hi)
        out["range_level"] = level
    return out


def alarm_curve(scores, labels, max_points: int = 200) -> dict | None:
    """Detection rate and false alarms per 1,000 normal items against the threshold
    (``labels`` None: alarms per 1,000 items), at most ``max_points`` thresholds spread
    over the score quantiles; None without finite scores."""
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    y = None if labels is None else _to_numpy(labels).reshape(-1).astype(bool)
    finite = np.isfinite(s)
    if not finite.any():
        return None
    grid = np.unique(np.quantile(s[finite], np.linspace(0.0, 1.0, max_points)))

    def per_1000(part):
        return [1000.0 * float((part > t).mean()) if part.size else None for t in grid]

    if y is None:
        return {"threshold": grid.tolist(), "alarms_per_1000": per_1000(s), "false_alarms_per_1000": None,
                "detection_rate": None}
    anom = s[y]
    return {"threshold": grid.tolist(), "alarms_per_1000": per_1000(s), "false_alarms_per_1000": per_1000(s[~y]),
            "detection_rate": [float((anom > t).mean()) for t in grid] if anom.size else None}


