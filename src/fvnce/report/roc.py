"""The detection section: ROC curves of the runs and baselines, and score distributions."""

from __future__ import annotations

from typing import Sequence

from . import plots
from .cells import Entry
from .html import esc, fmt_frac, img, section
from .load import finite

__all__ = ["roc_section"]


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
        return section("roc", title, esc(reason), "")
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
    return section("roc", title, explain, "".join(parts))
