"""The training section: training curves of each run and the events of training (restarts,
stabilisation changes, warnings)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from . import plots
from .cells import Entry
from .html import esc, img, section
from .load import finite

__all__ = ["EVENT_KINDS", "event_text", "events_list", "training_events", "training_section"]

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
    return section("training", "Training curves", explain, body)


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
