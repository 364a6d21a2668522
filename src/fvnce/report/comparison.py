"""The comparison section of the poc page: every run and baseline in one table, with the
verdicts the poc recorded (degraded, unreliable) and why, and one noise x rule grid per
model family."""

from __future__ import annotations

import re
from typing import Any

from .cells import NOISE_TERM_WORDS, ll_cell, rule_label, weights_cell
from .html import DASH, as_dict, esc, fmt_frac, fmt_num, fmt_pct, fmt_time, section, table
from .load import RunFiles, finite
from .verdicts import (config_text, is_unreliable, log_z_diagnostics, noise_term_diagnostics, reference_vae,
                       run_ll_cell)

__all__ = ["comparison_section"]


def _status_cell(r: dict, unreliable: bool) -> str:
    """Status word, with ``degraded`` and ``unreliable`` drawn as distinct tags."""
    status = r.get("status") or "unknown"
    if status == "unreliable":  # the poc's status for an unreliable log-likelihood
        return '<span class="tag unreliable">unreliable</span>'
    cell = f'<span class="tag {esc(status)}">{esc(status)}</span>' if status == "degraded" else esc(status)
    if unreliable:
        cell += ' <span class="tag unreliable">unreliable</span>'
    return cell


def _details(r: dict, unreliable: bool) -> list[tuple[str, str]]:
    """(row class, HTML) of the full-width rows below a run: error, degradation, warnings."""
    status = r.get("status") or "unknown"
    out = []
    if r.get("error"):
        out.append(("bad", f'<span class="small">Why it {esc(status)}:</span> '
                           f'<span class="err">{esc(r["error"])}</span>'))
    if status == "degraded" and r.get("status_reason"):
        out.append(("degraded", f'<span class="small">Why it is degraded:</span> {esc(r["status_reason"])}'))
    warnings = [w for w in r.get("warnings") or [] if isinstance(w, str)]
    if unreliable and not any("unreliable" in w for w in warnings):
        warnings.insert(0, "The log-likelihood estimate of this run is unreliable (see k-hat and ESS of log Z); "
                           "it is not used for ranking and the run cannot be recommended.")
    for w in warnings:
        what = (f"Noise term, {NOISE_TERM_WORDS} (a diagnostic of training; the figures in the row stand, see "
                "the glossary):" if w.startswith("The noise term") else "Warning:")
        out.append(("warn", f'<span class="small">{what}</span> {esc(w)}'))
    return out


_COMPARE_HEADER = ["Configuration", "Status", "Test AUROC", "Test AUPRC", "False alarms at 95% detection",
                   "Test log-likelihood (nats)", "log Z: k-hat · ESS", "Noise term (training): k-hat · ESS",
                   "Noise accuracy", "Validation AUROC", "Train time"]


def _run_rows(r: dict, run: RunFiles | None, is_rec: bool, criteria: dict, badge_text: str = "recommended"
              ) -> list[tuple[list[str], str]]:
    """The comparison-table row of one run and the full-width rows that explain it."""
    m, vm = as_dict(r.get("metrics")), as_dict(r.get("val_metrics"))
    status = r.get("status") or "unknown"
    unreliable = is_unreliable(r, run)
    badge = f'<span class="badge">{esc(badge_text)}</span>' if is_rec else ""
    cells = [f"<b>{esc(r.get('name'))}</b>{badge}<br><span class=\"small\">{esc(config_text(r))}</span>",
             _status_cell(r, unreliable), fmt_frac(m.get("auroc")), fmt_frac(m.get("auprc")),
             fmt_pct(m.get("fpr_at_95_tpr")), run_ll_cell(m.get("log_likelihood"), r, run),
             weights_cell(log_z_diagnostics(r, run)),
             weights_cell(noise_term_diagnostics(r, run, criteria), noise_term=True),
             fmt_pct(m.get("noise_accuracy")), fmt_frac(vm.get("auroc")), fmt_time(r.get("train_time_s"))]
    if is_rec:
        cls = "rec"
    elif status in ("ok", "degraded", "unreliable"):
        cls = "degraded" if status == "degraded" else ("unreliable" if unreliable else "")
    else:
        cls = "bad"
    details = _details(r, unreliable)
    rows = [(cells, (cls + (" first" if details and cls else "")).strip())]
    return rows + [([html], f"{kind} detail") for kind, html in details]


def _baseline_row(b: dict) -> tuple[list[str], str]:
    m, vm = as_dict(b.get("metrics")), as_dict(b.get("val_metrics"))
    return ([f"<b>{esc(b.get('name'))}</b><br><span class=\"small\">baseline</span>", "ok",
             fmt_frac(m.get("auroc")), fmt_frac(m.get("auprc")), fmt_pct(m.get("fpr_at_95_tpr")),
             ll_cell(m.get("log_likelihood"), m.get("log_likelihood_kind")), DASH, DASH,
             fmt_pct(m.get("noise_accuracy")), fmt_frac(vm.get("auroc")), fmt_time(b.get("train_time_s"))], "")


def _comparison_explain(c: dict, has_labels: bool) -> str:
    """How to read the table, with the thresholds behind ``degraded`` and ``unreliable``."""
    k, f = c["se_factor"], c["auroc_margin_min"]
    text = ("Every configuration tried, with its results on the held-out test data. "
            "Higher AUROC/AUPRC and log-likelihood are better; fewer false alarms are better. "
            "The highlighted row is the recommendation. Failed or diverged runs are shown "
            "in red with the reason. "
            f"<b>degraded</b> (amber): the run ended clearly worse on validation data than the VAE "
            f"({esc(c['reference'])}): its validation AUROC is lower by more than "
            f"the larger of {f:g} and {k:g} standard errors of the difference (each from Hanley "
            f"&amp; McNeil 1982, combined as the square root of the sum of squares), or, for a run "
            f"that started from the VAE and when both log-likelihoods are reliable, its validation "
            f"log-likelihood is lower by more than {k:g} standard errors of the difference (the "
            f"diagonal mixtures, not started from the VAE, have a lower log-likelihood by design). "
            "<b>unreliable</b>: the log-likelihood rests on a log Z estimate whose importance weights "
            f"have a Pareto k-hat above {c['khat_max']:g} or an effective sample size (ESS) below "
            f"{100 * c['ess_fraction_min']:g}% of the samples; such a figure may be off by many nats, "
            "is never used for ranking, and the run is never recommended. The k-hat · ESS columns "
            "show these diagnostics for log Z and for the training objective's noise term (k-hat up "
            f"to 0.5 is good, up to {c['khat_max']:g} usable). Beyond the limits, log Z is marked "
            f"<b>unreliable</b>; the noise term is marked <b>{NOISE_TERM_WORDS}</b> instead: it concerns "
            "training only, not the log-likelihood or the detection figures of the row (see the glossary).")
    if not has_labels:
        text += " Detection figures are empty because the data has no anomaly labels."
    return text


def comparison_section(runs: list[dict], files: dict[str, RunFiles], baselines: list[dict], rec_name: Any,
                       has_labels: bool, criteria: dict, members: list | None = None) -> str:
    """``members``: the runs of a recommended union (:mod:`fvnce.runs.union`), marked as such."""
    rows = []
    for r in runs:
        if members:
            rows += _run_rows(r, files.get(r.get("name")), r.get("name") in members, criteria,
                              "in the recommended union")
        else:
            rows += _run_rows(r, files.get(r.get("name")), rec_name is not None and r.get("name") == rec_name,
                              criteria)
    rows += [_baseline_row(b) for b in baselines]
    body = table(_COMPARE_HEADER, rows, cls="compare") + _matrix(runs, files, has_labels, criteria)
    return section("comparison", "Comparison of all configurations", _comparison_explain(criteria, has_labels), body)


def _family(r: dict) -> str:
    """The model family of a run, for one noise x rule grid each: the model, with the number
    of mixture components (``model_options.components``, else the name's ``-mixN``)."""
    model = str(r.get("model") or "model not recorded")
    k = finite(as_dict(r.get("model_options")).get("components"))
    if k is None:
        m = re.search(r"-mix(\d+)$", str(r.get("name") or ""))
        k = float(m.group(1)) if m else None
    return model + (f", {int(k)} component{'s' if int(k) != 1 else ''}" if k is not None else "")


def _matrix(runs: list[dict], files: dict[str, RunFiles], has_labels: bool, criteria: dict) -> str:
    """One noise x rule grid per model family (:func:`_family`), so that a cell never shows
    another family's run; a cell with several runs names each."""
    fv = [r for r in runs if r.get("objective") == "fvnce"]
    if not fv:
        return ""
    key, what = ("auroc", "validation AUROC") if has_labels else ("log_likelihood",
                                                                 "validation log-likelihood")
    fmt = (lambda v: fmt_frac(v, 3)) if has_labels else (lambda v: fmt_num(v, 2))  # noqa: E731
    families: dict[str, list[dict]] = {}
    for r in fv:
        families.setdefault(_family(r), []).append(r)
    cells = []  # (family, noise, rule, name, value, status, mark)
    for fam, members in families.items():
        for r in members:
            status = r.get("status") or "unknown"
            v = finite(as_dict(r.get("val_metrics")).get(key)) if status in ("ok", "degraded", "unreliable") else None
            mark = "degraded" if status == "degraded" else (
                "unreliable" if is_unreliable(r, files.get(r.get("name"))) else "")
            cells.append((fam, str(r.get("noise") or DASH), rule_label(r.get("rule"), r.get("rule_params")),
                          str(r.get("name")), v, status, mark))
    # the star: the best value that could be chosen on this criterion, over all families
    ranks = [c[4] for c in cells if c[4] is not None and not c[6]]
    best = max(ranks) if ranks else None

    def show(c: tuple, named: bool) -> str:
        _, _, _, name, v, status, mark = c
        if v is None:
            text = esc(status) if status and status != "ok" else DASH
        else:
            text = fmt(v)
            if mark:
                text += f' <span class="tag {mark}">{mark}</span>'
            if not mark and best is not None and v == best:
                text = f'<span class="best-cell">{text} ★</span>'
        return f'<span class="small">{esc(name)}:</span> {text}' if named else text

    grids = []
    for fam in families:
        mine = [c for c in cells if c[0] == fam]
        noises = list(dict.fromkeys(c[1] for c in mine))
        rules = list(dict.fromkeys(c[2] for c in mine))
        rows = []
        for n in noises:
            out = [f"<b>{esc(n)}</b>"]
            for ru in rules:
                here = [c for c in mine if c[1] == n and c[2] == ru]
                out.append("<br>".join(show(c, len(here) > 1) for c in here) if here else DASH)
            rows.append((out, ""))
        title = f"Model {esc(fam)}" if len(families) > 1 else ""
        grids.append((f'<p class="grid-title"><b>{title}</b> <span class="small">({len(mine)} run'
                       f'{"s" if len(mine) != 1 else ""})</span></p>' if title else "")
                     + table(["Noise \\ rule", *rules], rows, cls="grid-family"))
    vae = reference_vae(runs, criteria)
    ref = ""
    if vae is not None and vae.get("status") == "ok" and finite(as_dict(vae.get("val_metrics")).get(key)) is not None:
        ref = (f" For reference, the VAE {esc(vae.get('name'))} they started from has "
               f"{fmt(as_dict(vae.get('val_metrics')).get(key))}.")
    per = (" There is one grid per model family, so a cell only ever shows a run of that family."
           if len(families) > 1 else "")
    return (f"<h3>Noise distribution × rule ({esc(what)})</h3>"
            f'<p class="explain">The {esc(what)} of each FVNCE run, by the noise distribution '
            "(rows) and the rule (columns) it was trained with." + per + " ★ marks the best of those that "
            "are neither degraded nor unreliable. &ldquo;—&rdquo; means not tried." + ref + "</p>"
            + "".join(grids))
