"""What the command line prints: log lines on stderr, the alarm threshold, the operating
point and the evaluation headline."""

from __future__ import annotations

import sys

from ..numfmt import bounded

__all__ = ["alarm_line", "headline", "operating_text", "pct", "share", "stderr_log"]


def stderr_log(quiet: bool):
    """A ``log(msg)`` that prints to stderr (flushed), or does nothing when ``quiet``."""
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)
    return log


def alarm_line(rec: dict | None) -> str:
    """``alarm threshold 12.3 (target false-alarm rate 1 %, set on 270 validation normal rows)``."""
    if not rec or rec.get("threshold") is None:
        return "no alarm threshold" + (f": {rec['note']}" if rec and rec.get("note") else "")
    text = (f"alarm threshold {rec['threshold']:.6g} (target false-alarm rate {pct(rec['rate'])}, set on "
            f"{rec['n']} {rec['calibrated_on']})")
    return text + (f"; note: {rec['note']}" if rec.get("note") else "")


def share(frac: float, scale: float = 100.0) -> str:
    """``frac * scale`` for a share ``frac`` in [0, 1], to three significant digits, or with
    as many decimals as it takes never to show 0 or ``scale`` unless ``frac`` is exactly 0 or 1."""
    text = f"{frac * scale:.3g}"
    if 0.0 < frac < 1.0 and ("e" in text or not 0.0 < float(text) < scale):
        return bounded(frac, scale, 1)
    return text


def pct(rate: float) -> str:
    """A rate as a percentage (``1 %``), never rounded to 0 % or 100 % unless exact."""
    return f"{share(rate, 100.0)} %"


def _of(count, total) -> str:
    """`` (2 of 809)`` when both counts are known, else nothing."""
    return f" ({count:,} of {total:,})" if isinstance(count, int) and isinstance(total, int) else ""


def operating_text(op: dict | None, alarm: dict | None) -> str | None:
    """The operating point in words: false alarms per 1,000 normal items and the share of
    anomalies detected at the alarm threshold (alarms per 1,000 items without labels), each
    with the counts it comes from."""
    if not op or not alarm:
        return None
    target = f"at the alarm threshold (target {pct(alarm['rate'])})"
    if op.get("false_alarms_per_1000") is not None:
        text = (f"{target}: {share(op['false_alarms_per_1000'] / 1000.0, 1000.0)} false alarms per 1,000 normal "
                f"test items{_of(op.get('false_alarms'), op.get('n_normal'))}")
        if op.get("detection_rate") is not None:
            text += (f", {pct(op['detection_rate'])} of anomalies detected"
                     f"{_of(op.get('detected'), op.get('n_anomaly'))}")
        return text
    if op.get("alarms_per_1000") is None:
        return None
    return (f"{target}: {share(op['alarms_per_1000'] / 1000.0, 1000.0)} alarms per 1,000 test items"
            f"{_of(op.get('alarms'), op.get('n_items'))}")


def headline(ev: dict) -> str:
    """One line of what ``fvnce evaluate`` measured (``evaluate_run``'s record)."""
    parts = []
    if ev.get("log_likelihood") is not None:
        kind = " (estimate)" if ev.get("log_likelihood_kind") == "estimate" else ""
        lz = ev.get("log_z") or {}
        if lz:  # an importance-sampled log Z: its diagnostics always go with the number
            khat, ess = lz.get("khat"), lz.get("ess_fraction")
            diag = f"log Z k-hat {khat:.2f}" if isinstance(khat, (int, float)) else "log Z k-hat n/a"
            diag += f", ESS {100 * ess:.2g} %" if isinstance(ess, (int, float)) else ""
            kind = f" ({'estimate' if lz.get('reliable') else 'UNRELIABLE estimate'}: {diag})"
        parts.append(f"test log-likelihood {ev['log_likelihood']:.3f} nats{kind}")
    if ev.get("noise_accuracy") is not None:
        parts.append(f"noise accuracy {ev['noise_accuracy']:.3f}")
    if ev.get("auroc") is not None:
        parts.append(f"AUROC {ev['auroc']:.3f}")
    if ev.get("fpr_at_95_tpr") is not None:
        parts.append(f"FPR@95TPR {ev['fpr_at_95_tpr']:.3f}")
    op = operating_text(ev.get("operating_point"), ev.get("alarm"))
    if op:
        parts.append(op)
    return ", ".join(parts) or "evaluated"
