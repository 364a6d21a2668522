"""Report sections shared by the POC report and the single-run report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

from ..diagnostics import weights_reliable  # re-exported: it lives with the thresholds it applies
from . import plots
from .html import DASH, esc, fmt_num, fmt_pct, img, kv_table
from .load import RunFiles, finite


__all__ = ["Entry", "alarm_section", "event_text", "events_list", "glossary", "headline", "ll_cell",
           "operating_sentence", "roc_section", "rule_label", "samples_section", "training_events", "training_section",
           "weights_cell", "weights_reliable"]


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


def weights_cell(diag: Any) -> str:
    """``k-hat 0.42 · ESS 12%`` of a set of importance weights, red and marked when unreliable."""
    if not isinstance(diag, dict):
        return DASH
    k, e = finite(diag.get("khat")), finite(diag.get("ess_fraction"))
    if k is None and e is None:
        return DASH
    text = f"{fmt_num(k, 2)} · {fmt_pct(e, 2 if e is not None and e < 0.01 else 1)}"
    if weights_reliable(k, e, diag.get("reliable")) is False:
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
               "objective's stabilisation.")
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
            label = e.name + (f" (AUROC {finite(e.auroc):.3f})" if finite(e.auroc) is not None else "")
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
    v = finite(v)
    return DASH if v is None else (f"{v:.0f}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}")


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
    """The operating point in a manager's words (plain text), or None without one:
    "At the alarm threshold set for 1 % false alarms, the model raised 9 false alarms per
    1,000 normal test items and detected 87 % of the anomalies." """
    if not isinstance(op, dict) or not isinstance(alarm, dict):
        return None
    rate = _rate_text(alarm.get("rate"))
    if finite(op.get("false_alarms_per_1000")) is not None:
        text = (f"At the alarm threshold set for {rate} false alarms, {who} raised "
                f"{_per_1000(op['false_alarms_per_1000'])} false alarms per 1,000 normal test items")
        d = finite(op.get("detection_rate"))
        text += f" and detected {100 * d:.0f} % of the anomalies." if d is not None else "."
        return text + _expected_clause(op, "false alarms")
    if finite(op.get("alarms_per_1000")) is not None:
        return (f"At the alarm threshold set for {rate} alarms on the validation data, {who} raised "
                f"{_per_1000(op['alarms_per_1000'])} alarms per 1,000 test items (the data has no anomaly labels, so "
                "false alarms and detections cannot be told apart)." + _expected_clause(op, "alarms"))
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
                     f"{esc(op.get('detected'))} of {esc(op.get('n_anomaly'))} ({fmt_pct(op.get('detection_rate'), 0)})"))
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
         "At the alarm threshold: how many of every 1,000 normal test items raised an alarm, and the share of "
         "anomalous test items that did. The realised false alarms vary around the target by chance; the report "
         "gives the range a threshold working as designed produces on that many items."),
        ("FPR@95TPR (false alarms at 95% detection)",
         "Set the alarm threshold so that 95% of anomalies are caught; this is the share of "
         "normal items that would then be flagged by mistake. Lower is better."),
        ("Log-likelihood (nats per example)",
         "How probable the model finds the held-out test data; higher (closer to zero) is "
         "better. Values marked \u201c(estimate)\u201d come from a model whose normalising "
         "constant had to be estimated, so they are approximate; other values are lower bounds."),
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
        ("Unreliable log-likelihood; k-hat and ESS",
         "An estimated log-likelihood rests on importance sampling. The Pareto k-hat describes the "
         "tail of the importance weights (below 0.5 good, up to 0.7 usable, above 0.7 unreliable: "
         "the estimate can be far off however many samples are drawn); the effective sample size "
         "(ESS) is the share of samples that actually carry the estimate (below 5% is too few). "
         "A run whose log-likelihood is unreliable is never ranked by it nor recommended."),
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


def headline(auroc: Any, fpr95: Any, ll: Any, ll_kind: Any) -> str:
    """Three headline figures for a manager."""
    cards = []
    a = finite(auroc)
    cards.append(f"<div>Detection quality (AUROC)<b>{fmt_num(a, 3)}</b>"
                 + (f"An anomalous item outranks a normal one {100 * a:.1f}% of the time."
                    if a is not None else "Not available (no anomaly labels in the test data).")
                 + "</div>")
    f = finite(fpr95)
    cards.append(f"<div>False alarms at 95% detection<b>{fmt_pct(f)}</b>"
                 + (f"To catch 95% of anomalies, {100 * f:.1f}% of normal items would be flagged."
                    if f is not None else "Not available (no anomaly labels in the test data).")
                 + "</div>")
    est = " (estimate)" if ll_kind == "estimate" else ""
    cards.append(f"<div>Test log-likelihood{esc(est)}<b>{fmt_num(ll, 2)}</b>"
                 + ("nats per example; higher is better." if finite(ll) is not None
                    else "Not available for this configuration.") + "</div>")
    return f'<div class="headline">{"".join(cards)}</div>'

