"""Report sections shared by the POC report and the single-run report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..diagnostics import weights_reliable  # re-exported: it lives with the thresholds it applies
from . import plots
from .html import DASH, bounded, esc, fmt_count, fmt_frac, fmt_num, fmt_pct, img, kv_table
from .load import RunFiles, finite


__all__ = ["Entry", "Ref", "alarm_section", "event_text", "events_list", "glossary", "headline", "ll_cell",
           "operating_sentence", "rate_range", "roc_section", "rule_label", "samples_section", "training_events",
           "training_section", "weights_cell", "weights_reliable", "NOISE_TERM_WORDS"]

#: what a noise-term diagnostic above the limits is called: not "unreliable", which is the
#: run status of an unreliable log-likelihood (the noise term plays no part in that figure)
NOISE_TERM_WORDS = "heavy-tailed weights"


@dataclass
class Entry:
    """One curve source for the ROC / training / samples sections."""

    name: str
    run: RunFiles | None = None  # None for baselines
    roc: dict | None = None
    scores: dict | None = None
    auroc: Any = None
    recommended: bool = False


def rule_label(rule: Any, params: Any = None) -> str:
    """Plain-text rule name with its numeric parameters, e.g. ``power (alpha=0.5)``."""
    if isinstance(rule, dict):
        params = {k: v for k, v in rule.items() if k in ("alpha", "c")}
        rule = rule.get("name")
    if not rule:
        return DASH
    if isinstance(params, dict) and params:
        inner = ", ".join(f"{k}={v:g}" if finite(v) is not None else f"{k}={v}"
                          for k, v in sorted(params.items()))
        return f"{rule} ({inner})"
    return str(rule)


def _diag_text(khat: Any, ess_fraction: Any) -> str:
    k, e = finite(khat), finite(ess_fraction)
    parts = ([f"k-hat {k:.2f}"] if k is not None else []) + ([f"ESS fraction {e:.1e}"] if e is not None else [])
    return ", ".join(parts)


def ll_cell(value: Any, kind: Any, ess_fraction: Any = None, khat: Any = None, reliable: Any = None) -> str:
    """Log-likelihood with an "(estimate)" marker when it is not a proper bound, and a
    warning naming k-hat and ESS when it is unreliable: ``reliable`` false, or (for an
    estimate through log Z, when ``reliable`` is unknown) k-hat > KHAT_MAX or ESS fraction
    < ESS_FRACTION_MIN."""
    text = fmt_num(value, 2)
    if text == DASH:
        return text
    estimate = kind == "estimate"
    if reliable is False or (estimate and weights_reliable(khat, ess_fraction, reliable) is False):
        diag = _diag_text(khat, ess_fraction) if estimate else ""
        why = f": log Z weights have {esc(diag)}" if diag else ""
        text += f' <span class="small bad-text">({"estimate, " if estimate else ""}unreliable{why})</span>'
    elif estimate:
        text += ' <span class="small">(estimate)</span>'
    return text


def weights_cell(diag: Any, noise_term: bool = False) -> str:
    """``0.42 · 12.0%`` (k-hat · ESS) of a set of importance weights.  Beyond the limits:
    log Z weights in red with "unreliable" (the log-likelihood rests on them); the training
    objective's noise-term weights (``noise_term``) in amber with "heavy-tailed weights",
    a diagnostic of training only, so that "unreliable" keeps one meaning."""
    if not isinstance(diag, dict):
        return DASH
    k, e = finite(diag.get("khat")), finite(diag.get("ess_fraction"))
    if k is None and e is None:
        return DASH
    text = f'<span class="nowrap">{fmt_num(k, 2)} ·</span> {fmt_pct(e, 2 if e is not None and e < 0.01 else 1)}'
    if weights_reliable(k, e, diag.get("reliable")) is False:
        if noise_term:
            return f'<span class="warn-text">{text} {NOISE_TERM_WORDS}</span>'
        return f'<span class="bad-text">{text} unreliable</span>'
    return text


# --------------------------------------------------------------------------- training events

#: event kinds of metrics.jsonl shown in the report, with their plain name
EVENT_KINDS = {"retry": "restart", "stabilise": "stabilisation changed", "warning": "warning"}


def _setting(d: Any) -> str:
    if not isinstance(d, dict):
        return str(d)
    return ", ".join(f"{k}={v:g}" if finite(v) is not None else f"{k}={v}" for k, v in d.items())


def event_text(rec: dict) -> str:
    """Plain-text line for one event record of metrics.jsonl (not escaped)."""
    kind = rec.get("event")
    if kind == "stabilise":
        text = (f"the objective's stabilisation was changed automatically from {_setting(rec.get('from'))} "
                f"to {_setting(rec.get('to'))}")
        return text + (f" ({rec['reason']})" if rec.get("reason") else "")
    if kind == "warning":
        what = f" ({rec['kind']})" if rec.get("kind") else ""
        return f"warning{what}: {rec.get('message') or ''}".rstrip(": ")
    return f"restarted: {rec.get('reason', '')}".rstrip(": ")


def training_events(records: Sequence[dict]) -> list[dict]:
    """Event records (retry, stabilise, warning) of a run's metrics, in order."""
    return [r for r in records if isinstance(r, dict) and r.get("event") in EVENT_KINDS]


def events_list(events: Sequence[dict], limit: int = 10, text: Callable[[dict], str] = event_text) -> str:
    """``<ul>`` of events (``step N: text``), at most ``limit`` items."""
    items = "".join(f"<li>step {esc(r.get('step'))}: {esc(text(r))}</li>" for r in events[:limit])
    more = f"<li>… and {len(events) - limit} more</li>" if len(events) > limit else ""
    return f"<ul>{items}{more}</ul>"


def _events_overview(entries: Sequence[Entry]) -> str:
    """The short "Training events" list: how many of each kind per run."""
    rows = []
    for e in entries:
        evs = training_events(e.run.metrics if e.run is not None else [])
        if not evs:
            continue
        counts = [f"{sum(r.get('event') == k for r in evs)} × {name}" for k, name in EVENT_KINDS.items()
                  if any(r.get("event") == k for r in evs)]
        first = next((r for r in evs if r.get("event") != "retry"), evs[0])
        rows.append(f"<li><b>{esc(e.name)}</b>: {esc(', '.join(counts))} &mdash; first at step "
                    f"{esc(first.get('step'))}: {esc(event_text(first))}</li>")
    if not rows:
        return ""
    return ('<h3 id="training-events">Training events</h3><p class="explain">Automatic interventions '
            "and warnings during training: a <i>restart</i> after a numerical problem, a "
            "<i>stabilisation change</i> (the rule's weight frozen outside a band of log ratios: "
            "still a proper rule with the same minimiser, and still a bound), and <i>warnings</i> such as "
            f"heavy-tailed importance weights.</p><ul class=\"events\">{''.join(rows)}</ul>")


def _section(anchor: str, title: str, explain: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{esc(title)}</h2>'
            f'<p class="explain">{explain}</p>{body}</section>')


def training_section(entries: Sequence[Entry]) -> str:
    figs, missing = [], []
    for e in entries:
        recs = e.run.metrics if e.run is not None else []
        png = plots.training_png(recs, e.name) if recs else None
        if png is None:
            missing.append(e.name)
            continue
        caption = _events_caption(recs)
        figs.append(f"<figure>{img(png, f'Training curves of {e.name}')}{caption}</figure>")
    body = _events_overview(entries) + (f'<div class="grid wide">{"".join(figs)}</div>' if figs else "")
    if missing:
        body += ('<p class="note">No training log (metrics.jsonl) for: '
                 + ", ".join(f"<b>{esc(n)}</b>" for n in missing) + ".</p>")
    explain = ("How each model learned. Left: the training loss and its two parts &mdash; the "
               "<i>data term</i> (how well the model explains real data) and the <i>noise term</i> "
               "(how well it rejects artificial noise) &mdash; plus the loss on validation data; "
               "curves that flatten out mean training converged. Right: how often the model "
               "tells real data from noise (50% is guessing). Dotted red lines mark automatic "
               "restarts after a numerical problem, dashed purple lines automatic changes of the "
               "objective's stabilisation. Where a few steps spike far above the rest, the loss axis stops at the "
               "range of the other steps and the points beyond it are drawn as triangles on its edge.")
    return _section("training", "Training curves", explain, body)


def _events_caption(recs: Sequence[dict]) -> str:
    """Figure caption listing a run's restarts, stabilisation changes and warnings."""
    evs = training_events(recs)
    if not evs:
        return ""
    parts = []
    retries = [r for r in evs if r.get("event") == "retry"]
    if retries:
        parts.append(f"Training was restarted {len(retries)} time(s) (dotted red lines):"
                     + events_list(retries, text=lambda r: str(r.get("reason", ""))))
    stab = [r for r in evs if r.get("event") == "stabilise"]
    if stab:
        parts.append(f"The objective's stabilisation was changed automatically {len(stab)} time(s) "
                     "(dashed purple lines):" + events_list(stab))
    warns = [r for r in evs if r.get("event") == "warning"]
    if warns:
        parts.append(f"{len(warns)} warning(s):" + events_list(warns))
    return f"<figcaption>{''.join(parts)}</figcaption>"


def _roc_of(e: Entry) -> tuple[list, list] | None:
    if isinstance(e.roc, dict) and e.roc.get("fpr") and e.roc.get("tpr"):
        return list(e.roc["fpr"]), list(e.roc["tpr"])
    if isinstance(e.scores, dict):
        return plots.roc_curve(e.scores.get("normal") or [], e.scores.get("anomaly") or [])
    return None


def _hist(e: Entry, what: str) -> str:
    if not isinstance(e.scores, dict):
        return ""
    png = plots.score_hist_png(e.scores.get("normal") or [], e.scores.get("anomaly") or [],
                               f"{what}: {e.name}")
    return f"<figure>{img(png, f'Score histogram of {e.name}')}</figure>" if png else ""


def roc_section(entries: Sequence[Entry], has_labels: bool, no_label_reason: str = "",
                single: bool = False) -> str:
    title = "Detection quality: ROC curves and score distributions"
    if not has_labels:
        reason = no_label_reason or (
            "The test data has no anomaly labels, so it is unknown which items are truly "
            "anomalous; detection quality (ROC curves, AUROC, false-alarm rates) therefore "
            "cannot be measured and this section is empty. Supply labelled test data to see it.")
        return _section("roc", title, esc(reason), "")
    curves = []
    for e in entries:
        roc = _roc_of(e)
        if roc is not None:
            label = e.name + (f" (AUROC {fmt_frac(e.auroc, 3)})" if finite(e.auroc) is not None else "")
            curves.append((label, roc[0], roc[1], e.recommended))
    parts = []
    png = plots.roc_png(curves) if curves else None
    if png:
        parts.append(f"<figure>{img(png, 'ROC curves of all runs and baselines')}"
                     "<figcaption>Each curve shows, for every possible alarm threshold, the share "
                     "of anomalies caught (up) against the share of normal items wrongly flagged "
                     "(right). Higher and further left is better"
                     + ("." if single else "; the bold line is the recommended configuration.")
                     + "</figcaption></figure>")
    else:
        parts.append('<p class="note">No ROC data was found in the evaluation files.</p>')
    rec = next((e for e in entries if e.recommended), None)
    base = next((e for e in entries if e.run is None and isinstance(e.scores, dict)), None)
    hists = (_hist(rec, "Scores" if single else "Recommended") if rec else "") + (_hist(base, "For comparison") if base else "")
    if hists:
        parts.append("<h3>Score distributions</h3><p class=\"explain\">Anomaly scores of normal "
                     "(blue) and anomalous (red) test items. The less the two overlap, the "
                     "easier it is to set a threshold that catches anomalies without false "
                     f"alarms.</p><div class=\"grid\">{hists}</div>")
    explain = ("How well each configuration separates anomalies from normal items on the held-out "
               "test data.")
    return _section("roc", title, explain, "".join(parts))


# --------------------------------------------------------------------------- the alarm threshold


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
        return _section("alarm", title, explain, f'<p class="note">No alarm threshold: {esc(note)}.</p>')
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
    return _section("alarm", title, explain, body)


def samples_section(entries: Sequence[Entry], image_shape: Any, dim: Any) -> str:
    title = "Samples generated by the models"
    explain = ("Examples the trained models generate. If they look like real data, the model "
               "has learned what &ldquo;normal&rdquo; looks like.")
    have = [(e.name, e.run.samples) for e in entries
            if e.run is not None and e.run.samples is not None and len(e.run.samples)]
    shape = image_shape if (isinstance(image_shape, (list, tuple)) and len(image_shape) == 2
                            and all(finite(v) for v in image_shape)) else None
    d = int(finite(dim)) if finite(dim) is not None else None
    if d is None and have:
        d = int(have[0][1].shape[1])
    if shape is None and d != 2:
        dtext = f"{d}-dimensional" if d is not None else "this kind of"
        return _section("samples", title, explain,
                        f'<p class="note">Samples are not shown for {esc(dtext)} data (only image '
                        "data and 2-D data can be drawn).</p>")
    figs, missing = [], [e.name for e in entries if e.run is not None
                         and (e.run.samples is None or not len(e.run.samples))]
    limits = plots.scatter_limits([s for _, s in have]) if shape is None else None
    for name, s in have:
        if shape is not None:
            png = plots.image_grid_png(s, shape, name)
        else:
            png = plots.scatter_png(s, name, limits)
        if png is None:
            missing.append(f"{name} (samples have an unexpected shape {tuple(s.shape)})")
        else:
            figs.append(f"<figure>{img(png, f'Samples of {name}')}</figure>")
    body = f'<div class="grid">{"".join(figs)}</div>' if figs else ""
    if missing:
        body += ('<p class="note">No samples for: '
                 + ", ".join(f"<b>{esc(n)}</b>" for n in missing) + ".</p>")
    return _section("samples", title, explain, body)


def glossary() -> str:
    items = [
        ("AUROC (area under the ROC curve)",
         "The probability that a randomly chosen anomalous item gets a higher anomaly score "
         "than a randomly chosen normal item. 1.0 is perfect, 0.5 is guessing."),
        ("AUPRC (area under the precision-recall curve)",
         "Like AUROC but focused on the anomalies; it is more informative when anomalies are "
         "rare. Its value for random guessing equals the share of anomalies."),
        ("Alarm threshold",
         "The anomaly score above which an item raises an alarm. It is set on validation data for a target "
         "false-alarm rate (default 1 %): the conformal quantile of the normal validation items' scores, so that "
         "new normal items exceed it at most that often on average. 'fvnce score' marks each row's alarm."),
        ("False alarms per 1,000 normal items; detection rate",
         "At the alarm threshold: how many of the normal test items raised an alarm (and how many that makes "
         "per 1,000), and how many of the anomalous test items did. A count seen on a few hundred items says "
         "little about the true rate, so it comes with its 99 % range (exact binomial, Clopper-Pearson): the "
         "rates under which the count seen is not unusual. When the normal test items are fewer than one "
         "expected false alarm at the target (fewer than 100 for 1 %), zero false alarms is what a threshold "
         "working at the target gives too: the report then says the target cannot be checked. The report also "
         "gives the range a threshold working as designed produces on that many items. Rates are never "
         "rounded to 0 % or 100 % unless they are exact."),
        ("FPR@95TPR (false alarms at 95% detection)",
         "Set the alarm threshold so that 95% of anomalies are caught; this is the share of "
         "normal items that would then be flagged by mistake. Lower is better."),
        ("Log-likelihood (nats per example)",
         "How probable the model finds the held-out test data; higher (closer to zero) means a better fit of "
         "that model. Values marked \u201c(estimate)\u201d come from a model whose normalising "
         "constant had to be estimated, so they are approximate; other values are lower bounds. With anomaly "
         "labels it is not how the recommendation is chosen (that is the validation AUROC): between model "
         "families (a VAE, a diagonal Gaussian mixture) a higher log-likelihood does not mean a better "
         "detector; a model that explains more of the data, the anomalies' features included, can separate "
         "anomalies worse."),
        ("Noise accuracy",
         "How often the model tells real data apart from artificial noise. Around 50% means it "
         "cannot; close to 100% means the task was easy (the noise may be too unlike the data "
         "to teach much)."),
        ("Noise distribution",
         "The artificial \u201cfake data\u201d the model learns to reject during training. Noise "
         "that resembles the data more closely usually teaches the model more."),
        ("Rule",
         "The scoring rule used to compare data and noise during training (for example "
         "kl, power, shifted_log or logistic). Different rules weigh mistakes differently and "
         "can be more or less stable."),
        ("Degraded",
         "A run that ended clearly worse on validation data than the VAE: by more than twice the "
         "statistical uncertainty of the difference (and, for AUROC, by at least 0.02); the "
         "log-likelihood is compared only for runs that started from the VAE. It is never recommended."),
        ("Mixture runs (names ending in -mix1, -mix4)",
         "A mixture of 1 or 4 Gaussians that treats the features as independent within each component, "
         "trained from scratch by the same rule. It cannot learn how the features move together, so a row "
         "that is extreme in one feature stays improbable even when it follows the normal rows' "
         "correlations; on some tables that makes it the better detector, though its log-likelihood is "
         "lower."),
        ("Union of runs (the recommendation without labels)",
         "One detector made of two runs: the most probable model of the features together and the most "
         "probable one-component mixture (independent features). Each run's score is put in units of its "
         "own spread on the validation rows, and the union's score is the larger of the two, so an item "
         "raises an alarm when either run finds it extreme. Without labels nothing says which of the two "
         "kinds of anomaly the data holds; the union covers both. Score new data with fvnce score on its "
         "folder, runs/union."),
        ("Unreliable (a run's status); k-hat and ESS of log Z",
         "An estimated log-likelihood rests on importance sampling of the normaliser log Z. The Pareto "
         "k-hat describes the tail of the importance weights (below 0.5 good, up to 0.7 usable, above 0.7 "
         "unreliable: the estimate can be far off however many samples are drawn); the effective sample "
         "size (ESS) is the share of samples that actually carry the estimate (below 5% is too few). "
         "\u201cUnreliable\u201d in this report means only this: a run whose log-likelihood is unreliable "
         "is never ranked by it nor recommended."),
        ("Noise term: heavy-tailed weights",
         "A diagnostic of training, not of the results: the training objective's noise term is itself "
         "estimated by importance sampling, and its weights (k-hat above 0.7 or ESS below 5%) can be "
         "heavy-tailed. Training then followed a noisy estimate of its objective; it may have learned less "
         "than it could, and a noise distribution closer to the data, or more noise samples, may do better. "
         "It does not touch the figures the choice rests on: the log-likelihood (through log Z, with its own "
         "k-hat and ESS) and the detection figures are measured afterwards on validation and test data, so "
         "for a chosen run they stand as shown."),
        ("Training curves with spikes",
         "When a few steps have losses far outside the rest (numerical spikes), the loss axis is cut at the "
         "range of the other steps so the curves stay readable; the points beyond it are drawn as triangles on "
         "the edge and counted in the plot, with the largest value."),
        ("Training events",
         "Automatic interventions during training: a restart after a numerical problem, a change "
         "of the objective's stabilisation (the rule's weight frozen outside a band of log ratios; "
         "it stays a proper rule with the same minimiser and a bound), and warnings such as "
         "heavy-tailed weights."),
        ("Validation vs test data",
         "Validation data is used to choose between configurations; test data is kept apart "
         "and only used to report the final figures, so they are not flattered by the choice."),
    ]
    body = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items)
    return _section("glossary", "How to read this report",
                    "Short explanations of the terms used above.",
                    f'<dl class="glossary">{body}</dl>')


@dataclass
class Ref:
    """A figure to compare a headline card with: another run or a baseline."""

    name: str
    what: str  # e.g. "the VAE", "baseline"
    auroc: Any = None
    fpr95: Any = None
    ll: Any = None
    model: Any = None


def _compare_line(refs: Sequence[Ref], key: str, fmt: Callable[[Any], str]) -> str:
    have = [r for r in refs if finite(getattr(r, key)) is not None]
    if not have:
        return ""
    items = "; ".join(f"{esc(r.name)} ({esc(r.what)}): {fmt(getattr(r, key))}" for r in have)
    return f'<span class="card-compare">Compare: {items}.</span>'


def headline(auroc: Any, fpr95: Any, ll: Any, ll_kind: Any, *, who: str = "this run", model: Any = None,
             refs: Sequence[Ref] = (), chosen_by: str | None = None) -> str:
    """Three headline figures of ``who`` on the held-out test data, each saying what it is
    and what it is compared with (``refs``).  ``chosen_by``: "auroc" or "log_likelihood",
    the criterion of the recommendation, which the log-likelihood card explains: with labels
    the choice is by validation AUROC, and log-likelihoods of different model families are
    not a detection criterion (so a lower one can win)."""
    cards = []
    a = finite(auroc)
    cards.append(f"<div>Detection quality (test AUROC)<b>{fmt_frac(a, 3)}</b>"
                 + (f"An anomalous test item outranks a normal one {bounded(a, 100.0, 1)}% of the time; 0.5 is "
                    "guessing. " if a is not None else "Not available (no anomaly labels in the test data). ")
                 + _compare_line(refs, "auroc", lambda v: fmt_frac(v, 3)) + "</div>")
    f = finite(fpr95)
    cards.append(f"<div>False alarms at 95% detection (test)<b>{fmt_pct(f)}</b>"
                 + (f"To catch 95% of the anomalies, {fmt_pct(f)} of normal items would be flagged; lower is "
                    "better. " if f is not None else "Not available (no anomaly labels in the test data). ")
                 + _compare_line(refs, "fpr95", fmt_pct) + "</div>")
    est = " (estimate)" if ll_kind == "estimate" else ""
    why = ""
    v = finite(ll)
    if chosen_by == "auroc" and v is not None:
        lower = [r for r in refs if finite(r.ll) is not None and finite(r.ll) > v]
        families = sorted({str(x) for x in [model, *(r.model for r in refs)] if x})
        here = f" (here {esc(', '.join(families))})" if len(families) > 1 else ""
        why = (" Not how the choice was made: that is the validation AUROC, measured with the anomaly labels. "
               f"Log-likelihoods of different model families{here} are not a detection criterion: "
               + ("a lower one can be the better detector, as here." if lower
                  else "a higher one need not be the better detector."))
    elif chosen_by == "log_likelihood" and v is not None:
        why = (" Without anomaly labels it is the criterion of the choice: the highest validation "
               "log-likelihood among reliable estimates.")
    cards.append(f"<div>Test log-likelihood{esc(est)}<b>{fmt_num(ll, 2)}</b>"
                 + ("nats per example; higher: the model finds the held-out data more probable."
                    if v is not None else "Not available for this configuration.")
                 + why + " " + _compare_line(refs, "ll", lambda x: f"{fmt_num(x, 2)} nats") + "</div>")
    versus = [w for w in ("the VAE", "the baselines")
              if any((r.what == "the VAE") == (w == "the VAE") for r in refs)]
    against = f", each compared with {' and '.join(versus)}" if versus else ""
    return (f'<p class="headline-what">Figures of <b>{esc(who)}</b> on the held-out test data{against}:</p>'
            f'<div class="headline">{"".join(cards)}</div>')
