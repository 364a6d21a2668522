"""What an alarm costs: the threshold that minimises the expected cost per 1,000 items.

An item raises an alarm when its anomaly score is *strictly above* the threshold ``t``
(as everywhere in fvnce).  With ``A`` the cost of a false alarm (an alarm on a normal
item), ``B`` the cost of a miss (no alarm on an anomaly), both in the user's own units,
and ``p`` the share of anomalies among the items, the expected cost per 1,000 items is

    cost(t) = 1000 * ((1 - p) * A * FPR(t) + p * B * (1 - TPR(t)))

with ``FPR(t)`` the share of normal scores above ``t`` and ``TPR(t)`` the share of
anomalous scores above ``t``.  Both are step functions of ``t`` that change only at the
scores themselves, so every threshold gives the same alarms as one of the candidates
``{just below the smallest score} U {every distinct score}`` (the largest candidate not
above it): the minimum over the candidates is the minimum over all thresholds, and in
particular never above the cost at the alarm-rate threshold.  Ties are broken towards
the higher threshold (fewer alarms).  "Never alarm" costs ``1000 p B``, "always alarm"
``1000 (1 - p) A``.

Numpy only; the callers (the poc, ``fvnce train`` and ``fvnce score``) provide the scores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["candidate_thresholds", "check_costs", "cheapest_threshold", "cost_report", "error_rates",
           "expected_cost", "unavailable"]


def check_costs(cost_false_alarm, cost_miss, anomaly_share=None) -> None:
    """ConfigError unless both costs are finite and non-negative, not both zero, and the
    share (when given) lies in (0, 1)."""
    for flag, v in (("--cost-false-alarm", cost_false_alarm), ("--cost-miss", cost_miss)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{flag} must be a finite number >= 0, got {v!r}")
    if cost_false_alarm == 0 and cost_miss == 0:
        raise ConfigError("--cost-false-alarm and --cost-miss are both 0: every threshold costs nothing")
    if anomaly_share is not None:
        p = anomaly_share
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or not 0 < p < 1:
            raise ConfigError(f"--anomaly-share must be a number between 0 and 1 (exclusive), got {p!r}")


def _scores(a) -> np.ndarray:
    s = np.asarray(a, dtype=np.float64).reshape(-1)
    return np.sort(s[~np.isnan(s)])


def error_rates(normal, anomaly, threshold: float) -> tuple[float | None, float | None]:
    """``(FPR, miss rate)`` at ``threshold``: the share of normal scores strictly above it,
    the share of anomalous scores not above it (None for an empty class)."""
    n, a = _scores(normal), _scores(anomaly)
    fpr = float((n > threshold).mean()) if n.size else None
    miss = float((a <= threshold).mean()) if a.size else None
    return fpr, miss


def expected_cost(normal, anomaly, threshold: float, share: float, cost_false_alarm: float,
                  cost_miss: float) -> float:
    """Expected cost per 1,000 items at ``threshold`` (both classes needed)."""
    fpr, miss = error_rates(normal, anomaly, threshold)
    if fpr is None or miss is None:
        raise ValueError("the expected cost needs normal and anomalous scores")
    return 1000.0 * ((1.0 - share) * cost_false_alarm * fpr + share * cost_miss * miss)


def candidate_thresholds(normal, anomaly) -> np.ndarray:
    """Just below the smallest score (always alarm), then every distinct score (the largest
    one: never alarm); every threshold alarms on the same items as one of these."""
    s = np.unique(np.concatenate([_scores(normal), _scores(anomaly)]))
    if s.size == 0:
        return s
    return np.concatenate([[np.nextafter(s[0], -np.inf)], s])


def cheapest_threshold(normal, anomaly, share: float, cost_false_alarm: float, cost_miss: float) -> dict:
    """The candidate threshold of lowest expected cost per 1,000 items (ties: the higher
    threshold).  Returns ``{"threshold", "cost_per_1000", "false_alarm_rate",
    "detection_rate"}``."""
    n, a = _scores(normal), _scores(anomaly)
    if n.size == 0 or a.size == 0:
        raise ValueError("the cheapest threshold needs normal and anomalous scores")
    t = candidate_thresholds(n, a)
    fpr = (n.size - np.searchsorted(n, t, side="right")) / n.size
    tpr = (a.size - np.searchsorted(a, t, side="right")) / a.size
    cost = 1000.0 * ((1.0 - share) * cost_false_alarm * fpr + share * cost_miss * (1.0 - tpr))
    best = cost.min()
    i = int(np.flatnonzero(cost <= best)[-1])  # exact ties only: the highest threshold
    return {"threshold": float(t[i]), "cost_per_1000": float(cost[i]), "false_alarm_rate": float(fpr[i]),
            "detection_rate": float(tpr[i])}


def unavailable(reason: str, cost_false_alarm: float, cost_miss: float, share: float | None = None) -> dict:
    """The record when the cost cannot be estimated: why, and (with a share) the costs of
    never and always alarming."""
    return {"available": False, "reason": reason, "cost_false_alarm": cost_false_alarm, "cost_miss": cost_miss,
            "anomaly_share": share, "share_source": None if share is None else "given (--anomaly-share)",
            "never_alarm_per_1000": None if share is None else 1000.0 * share * cost_miss,
            "always_alarm_per_1000": None if share is None else 1000.0 * (1.0 - share) * cost_false_alarm}


def _at(normal, anomaly, threshold: float, share: float, a: float, b: float) -> dict:
    n, m = _scores(normal), _scores(anomaly)
    fa, det = int((n > threshold).sum()), int((m > threshold).sum())
    out: dict[str, Any] = {"n_normal": int(n.size), "false_alarms": fa, "n_anomaly": int(m.size), "detected": det,
                           "false_alarms_per_1000": 1000.0 * fa / n.size if n.size else None,
                           "detection_rate": det / m.size if m.size else None, "cost_per_1000": None}
    if n.size and m.size:
        out["cost_per_1000"] = expected_cost(n, m, threshold, share, a, b)
    return out


def cost_report(val_normal, val_anomaly, test_normal=None, test_anomaly=None, *, cost_false_alarm: float,
                cost_miss: float, anomaly_share: float | None = None, alarm_threshold: float | None = None) -> dict:
    """The cost record: the threshold of lowest expected validation cost, what it costs and
    does on validation and test rows, the same for the alarm-rate threshold
    ``alarm_threshold`` (when given), and the costs of never and always alarming.

    The anomaly share is ``anomaly_share`` when given, else the share of anomalies among
    the labelled validation rows (``share_source`` says which); the test cost uses the same
    share with the test rows' error rates.  Without anomalous (or normal) validation scores
    the miss rate (or false-alarm rate) of a threshold is unknown: the record then has
    ``available = False`` and ``reason``."""
    check_costs(cost_false_alarm, cost_miss, anomaly_share)
    a, b = float(cost_false_alarm), float(cost_miss)
    vn, va = _scores(val_normal), _scores(val_anomaly if val_anomaly is not None else [])
    if va.size == 0 or vn.size == 0:
        what = "anomalous" if va.size == 0 else "normal"
        return unavailable(f"the cost cannot be estimated: the validation rows have no {what} rows with labels, so "
                           f"the {'miss' if va.size == 0 else 'false-alarm'} rate of a threshold is unknown (a cost "
                           "needs labelled validation rows of both kinds)", a, b, anomaly_share)
    if anomaly_share is None:
        share, source = va.size / (va.size + vn.size), f"validation labels ({va.size} of {va.size + vn.size} rows)"
    else:
        share, source = float(anomaly_share), "given (--anomaly-share)"
    best = cheapest_threshold(vn, va, share, a, b)
    tn = _scores(test_normal if test_normal is not None else [])
    ta = _scores(test_anomaly if test_anomaly is not None else [])
    rec: dict[str, Any] = {
        "available": True, "cost_false_alarm": a, "cost_miss": b, "anomaly_share": share, "share_source": source,
        "threshold": best["threshold"],
        "validation": _at(vn, va, best["threshold"], share, a, b),
        "test": _at(tn, ta, best["threshold"], share, a, b) if tn.size or ta.size else None,
        "never_alarm_per_1000": 1000.0 * share * b, "always_alarm_per_1000": 1000.0 * (1.0 - share) * a,
        "alarm_rate_point": None,
    }
    if alarm_threshold is not None:
        t = float(alarm_threshold)
        rec["alarm_rate_point"] = {"threshold": t, "validation": _at(vn, va, t, share, a, b),
                                   "test": _at(tn, ta, t, share, a, b) if tn.size or ta.size else None}
    rec["sentence"] = cost_sentence(rec)
    return rec


def _money(v: float | None) -> str:
    return "n/a" if v is None else f"{v:,.4g}"


def cost_sentence(rec: dict) -> str:
    """The cost record in one or two plain sentences."""
    if not rec.get("available"):
        return str(rec.get("reason"))
    v, t = rec["validation"], rec.get("test") or {}
    text = (f"At a false alarm costing {rec['cost_false_alarm']:g} and a miss {rec['cost_miss']:g}, with "
            f"{100 * rec['anomaly_share']:.3g} % anomalies ({rec['share_source']}), the cheapest threshold on the "
            f"validation rows is {rec['threshold']:.6g}: {_money(v['cost_per_1000'])} per 1,000 items there"
            + (f", {_money(t.get('cost_per_1000'))} on the test rows" if t.get("cost_per_1000") is not None else "")
            + f"; never alarming costs {_money(rec['never_alarm_per_1000'])}, always alarming "
              f"{_money(rec['always_alarm_per_1000'])}.")
    ar = rec.get("alarm_rate_point")
    if ar:
        text += (f" The alarm-rate threshold {ar['threshold']:.6g} costs {_money(ar['validation']['cost_per_1000'])} "
                 "per 1,000 on the validation rows"
                 + (f", {_money(ar['test']['cost_per_1000'])} on the test rows"
                    if ar.get("test") and ar["test"].get("cost_per_1000") is not None else "") + ".")
    return text
