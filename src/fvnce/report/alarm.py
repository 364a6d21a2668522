"""The alarm threshold: the operating point in plain words, with the exact range of a rate
seen on the test items, and the alarm section."""

from __future__ import annotations

from typing import Any

from . import plots
from .html import DASH, bounded, esc, fmt_count, fmt_num, img, kv_table, section
from .load import finite

__all__ = ["RATE_RANGE_LEVEL", "alarm_section", "operating_sentence", "rate_range"]


def _rate_text(rate: Any) -> str:
    r = finite(rate)
    return DASH if r is None else f"{100 * r:g} %"


def _per_1000(v: Any) -> str:
    """A rate per 1,000 (0 to 1,000), never rounded to 0 or 1,000 unless exact."""
    v = finite(v)
    if v is None:
        return DASH
    if not 0.0 <= v <= 1000.0:
        return f"{v:.0f}"
    return bounded(v / 1000.0, 1000.0, 0 if v >= 10 or v == int(v) else 1)


#: probability of the range given for a rate measured on the test items
RATE_RANGE_LEVEL = 0.99


def rate_range(count: int, n: int, level: float = RATE_RANGE_LEVEL) -> tuple[float, float]:
    """Exact (Clopper-Pearson) central ``level`` range of a rate seen as ``count`` of ``n``:
    the rates for which ``count`` or more, resp. ``count`` or fewer, events have probability
    ``(1 - level) / 2``, from the beta quantiles of the binomial tails."""
    from scipy.stats import beta

    tail = (1.0 - level) / 2.0
    lo = 0.0 if count <= 0 else float(beta.ppf(tail, count, n - count + 1))
    hi = 1.0 if count >= n else float(beta.ppf(1.0 - tail, count + 1, n - count))
    return lo, hi


def _count_clause(count: Any, n: Any, rate: Any, per_1000: Any, what: str, items: str) -> tuple[str, bool]:
    """("0 false alarms among 27 normal test items (0 per 1,000) — too few items to check the
    1 % target ...: the rate could be anywhere from 0 to 178 per 1,000 (99 % range)", True):
    the count with the exact 99 % range of its rate, and whether the items are too few to
    check the target; the per-1,000 figure alone without counts.  Too few: fewer items than
    one expected event at the target (``n * rate < 1``), so that seeing none is also what a
    threshold working at the target gives."""
    k, m, r = finite(count), finite(n), finite(rate)
    if k is None or m is None or m < 1 or not 0 <= k <= m:
        return f"{_per_1000(per_1000)} {what} per 1,000 {items}", False
    k, m = int(k), int(m)
    lo, hi = rate_range(k, m)
    band = f"{_per_1000(1000 * lo)} to {_per_1000(1000 * hi)} per 1,000"
    level = f"{100 * RATE_RANGE_LEVEL:g} %"
    head = f"{k:,} {what} among {m:,} {items} ({_per_1000(1000 * k / m)} per 1,000"
    if r is not None and lo > r:
        return f"{head}; {level} range of the rate: {band}, wholly above the {_rate_text(r)} target)", False
    if r is not None and m * r < 1:
        return (f"{head}) — too few items to check the {_rate_text(r)} target (at that rate {m:,} items "
                f"show {m * r:.2g} {what} on average): the rate could be anywhere from {band} ({level} range)",
                True)
    if r is not None and hi < r:
        return f"{head}; {level} range of the rate: {band}, wholly below the {_rate_text(r)} target)", False
    return f"{head}; {level} range of the rate: {band})", False


def _expected_clause(op: dict, what: str) -> str:
    """How the realised rate compares with what a threshold working as designed gives."""
    rng = op.get("expected_per_1000")
    if not (isinstance(rng, list) and len(rng) == 2) or finite(op.get("range_level")) is None:
        return ""
    band = f"{_per_1000(rng[0])} to {_per_1000(rng[1])} {what} per 1,000"
    level = f"{100 * op['range_level']:g} %"
    if op.get("within_expected") is False:
        return (f" That is outside the range a threshold working as designed gives on this many items "
                f"({band}, with {level} probability): the validation rows it was set on differ from the test rows.")
    return f" A threshold working as designed gives {band} on this many items, with {level} probability."


def operating_sentence(op: Any, alarm: Any, who: str = "the model") -> str | None:
    """The operating point in a manager's words (plain text), or None without one: "At the
    alarm threshold set for 1 % false alarms, the model raised 9 false alarms among 1,000
    normal test items (9 per 1,000; 99 % range of the rate: 4 to 20 per 1,000) and detected
    807 of 809 anomalies (99.8 %)."  When the test part has too few items to check the
    target, the same sentence says so."""
    if not isinstance(op, dict) or not isinstance(alarm, dict):
        return None
    rate = _rate_text(alarm.get("rate"))
    if finite(op.get("false_alarms_per_1000")) is not None:
        clause, few = _count_clause(op.get("false_alarms"), op.get("n_normal"), alarm.get("rate"),
                                    op["false_alarms_per_1000"], "false alarms", "normal test items")
        text = f"At the alarm threshold set for {rate} false alarms, {who} raised {clause}"
        d, k, n = finite(op.get("detection_rate")), finite(op.get("detected")), finite(op.get("n_anomaly"))
        join = " — and detected" if few else " and detected"
        if k is not None and n and 0 <= k <= n:
            text += f"{join} {int(k):,} of {int(n):,} anomalies ({bounded(k / n, 100.0, 1)} %)."
        elif d is not None:
            text += f"{join} {bounded(d, 100.0, 1)} % of the anomalies."
        else:
            text += "."
        return text + _expected_clause(op, "false alarms")
    if finite(op.get("alarms_per_1000")) is not None:
        clause, _ = _count_clause(op.get("alarms"), op.get("n_items"), alarm.get("rate"), op["alarms_per_1000"],
                                  "alarms", "test items")
        return (f"At the alarm threshold set for {rate} alarms on the validation data, {who} raised {clause}; "
                "the data has no anomaly labels, so false alarms and detections cannot be told apart."
                + _expected_clause(op, "alarms"))
    return None


def alarm_section(name: str, ev: Any, who: str = "the model") -> str:
    """The alarm threshold of one run: how it was set, what it does on the test data, and
    detection and false alarms against the threshold with the chosen point marked."""
    title = "The alarm threshold: false alarms and detections"
    explain = ("A model raises an alarm when an item's anomaly score is above a threshold. The threshold is set "
               "on the validation data for a target false-alarm rate: it is the score that only that share of "
               "normal validation items exceed (a conformal quantile, which keeps the expected false-alarm rate "
               "of new normal items at or below the target). Raising it gives fewer false alarms and fewer "
               "detections. Figures are on held-out test data.")
    ev = ev if isinstance(ev, dict) else {}
    alarm, op = ev.get("alarm"), ev.get("operating_point")
    if not isinstance(alarm, dict) or finite(alarm.get("threshold")) is None:
        note = (alarm.get("note") if isinstance(alarm, dict) and alarm.get("note") else
                "this run has no alarm threshold (it was evaluated before fvnce stored one; "
                "'fvnce evaluate RUN_DIR' sets it)")
        return section("alarm", title, explain, f'<p class="note">No alarm threshold: {esc(note)}.</p>')
    rows = [("Target false-alarm rate", esc(_rate_text(alarm.get("rate")))),
            ("Alarm threshold (anomaly score)", fmt_num(alarm.get("threshold"), 4)),
            ("Set on", f"{esc(alarm.get('n'))} {esc(alarm.get('calibrated_on') or DASH)}")]
    op = op if isinstance(op, dict) else {}
    if finite(op.get("n_normal")) is not None and op.get("n_normal"):
        rows.append(("False alarms on the test data",
                     f"{esc(op.get('false_alarms'))} of {esc(op.get('n_normal'))} normal items "
                     f"({esc(_per_1000(op.get('false_alarms_per_1000')))} per 1,000)"))
    if finite(op.get("n_anomaly")) is not None and op.get("n_anomaly"):
        rows.append(("Anomalies detected on the test data",
                     esc(fmt_count(op.get("detected"), op.get("n_anomaly"), op.get("detection_rate")))))
    if op.get("false_alarms_per_1000") is None and finite(op.get("alarms_per_1000")) is not None:
        rows.append(("Alarms on the test data", f"{esc(op.get('alarms'))} of {esc(op.get('n_items'))} items "
                                                f"({esc(_per_1000(op.get('alarms_per_1000')))} per 1,000)"))
    if alarm.get("note"):
        rows.append(("Note", esc(alarm["note"])))
    sentence = operating_sentence(op, alarm, who)
    body = (f'<p class="verdict">{esc(sentence)}</p>' if sentence else "") + kv_table(rows)
    png = plots.alarm_png(ev.get("alarm_curve"), finite(alarm.get("threshold")), op,
                          f"Detection and false alarms against the threshold: {name}")
    if png:
        what = ("the share of anomalies detected (blue, left axis) and the false alarms per 1,000 normal items "
                "(orange, right axis, log scale)" if op.get("false_alarms_per_1000") is not None else
                "the alarms per 1,000 items (log scale; without labels false alarms and detections cannot be "
                "told apart)")
        body += (f"<figure>{img(png, f'Alarm threshold of {name}')}<figcaption>Every possible threshold "
                 f"(left to right: stricter): {what} on the test data; the dashed line and dots mark the "
                 "threshold the run uses.</figcaption></figure>")
    return section("alarm", title, explain, body)
