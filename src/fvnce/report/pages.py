"""Assembly of the two kinds of report page: a POC comparison and a single run."""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path
from typing import Any

from ..diagnostics import ESS_FRACTION_MIN, KHAT_MAX
from ..poc import AUROC_MARGIN_MIN, NO_NOISE_TERM, SE_FACTOR, VAE_RUN, find_vae
from .extras import extras_sections
from .html import DASH, esc, fmt_count, fmt_frac, fmt_num, fmt_pct, fmt_time, kv_table, page, table
from .load import RunFiles, finite, load_run
from .pictures import poc_pictures, run_pictures, samples_shape
from .sections import (NOISE_TERM_WORDS, Entry, Ref, alarm_section, glossary, headline, ll_cell, operating_sentence,
                       roc_section, rule_label, samples_section, training_section, weights_cell, weights_reliable)

__all__ = ["poc_page", "run_page"]


def _d(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else {}


def _generated() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _shape_text(shape: Any, dim: Any, binary: Any) -> str:
    parts = []
    if finite(dim) is not None:
        parts.append(f"{int(dim)} values per item")
    if isinstance(shape, (list, tuple)) and len(shape) == 2:
        parts.append(f"images of {esc(shape[0])} × {esc(shape[1])} pixels")
    if binary is True:
        parts.append("binary (0/1) values")
    return ", ".join(parts) or DASH


def _count(x: Any) -> str:
    v = finite(x)
    return f"{int(v):,}" if v is not None else DASH


def _problems_note(runs: list[tuple[str, RunFiles]]) -> str:
    items = [f"<li><b>{esc(name)}</b>: {esc(p)}</li>" for name, r in runs for p in r.problems]
    if not items:
        return ""
    return ('<div class="note">Some files could not be used; the affected parts are left '
            f"out:<ul>{''.join(items)}</ul></div>")


# --------------------------------------------------------------------------- POC report


def _config_text(r: dict) -> str:
    bits = [str(r.get("objective") or DASH)]
    if r.get("rule"):
        bits.append(rule_label(r.get("rule"), r.get("rule_params")))
    if r.get("noise"):
        bits.append(f"noise: {r['noise']}")
    if r.get("model"):
        bits.append(f"model: {r['model']}")
    return " · ".join(bits)


def _log_z(r: dict, run: RunFiles | None) -> dict:
    """Diagnostics of the run's log Z estimate: from summary.json, else from evaluation.json."""
    lz = _d(r.get("log_z"))
    return lz or _d(_d(run.evaluation if run is not None else None).get("log_z"))


def _noise_term(r: dict, run: RunFiles | None) -> dict:
    """Diagnostics of the noise-side weights; none for objectives without a noise side."""
    if r.get("objective") in NO_NOISE_TERM:
        return {}
    nt = _d(r.get("noise_term"))
    return nt or _d(_d(run.evaluation if run is not None else None).get("noise_term"))


def _run_ll_cell(value: Any, r: dict, run: RunFiles | None) -> str:
    """Log-likelihood cell of a summary entry: marked unreliable when the poc marked it so."""
    lz = _log_z(r, run)
    rel = r.get("reliable") if isinstance(r.get("reliable"), bool) else lz.get("reliable")
    return ll_cell(value, _ll_kind(r, run), lz.get("ess_fraction"), lz.get("khat"), rel)


def _is_unreliable(r: dict, run: RunFiles | None) -> bool:
    if r.get("status") == "unreliable":
        return True
    if r.get("status") not in ("ok", "degraded"):
        return False
    if isinstance(r.get("reliable"), bool):
        return not r["reliable"]
    lz = _log_z(r, run)
    return bool(lz) and weights_reliable(lz.get("khat"), lz.get("ess_fraction"), lz.get("reliable")) is False


def _ll_kind(r: dict, run: RunFiles | None) -> Any:
    kind = _d(r.get("metrics")).get("log_likelihood_kind")
    if kind is None and run is not None:
        kind = _d(run.evaluation).get("log_likelihood_kind")
    return kind


def _verdict(rec: dict) -> str:
    """The recommendation sentence and, when the VAE won, the plain-words statement (HTML)."""
    parts = []
    if rec.get("vae_statement"):
        parts.append(f'<p class="verdict"><b>{esc(rec["vae_statement"])}</b></p>')
    if rec.get("reason"):
        parts.append(f'<p class="verdict">{esc(rec["reason"])}</p>')
    return "".join(parts)


def _headline_text(rec: dict, operating: str | None = None) -> str:
    """The verdict at the top of the page: the recommended run's operating point in words,
    the VAE statement (when it applies) and the reason."""
    text = (f'<p class="verdict"><b>{esc(operating)}</b></p>' if operating else "") + _verdict(rec)
    return f'<div class="card verdict-box">{text}</div>' if text else ""


def _rec_operating(summary: dict, runs: list[dict], files: dict[str, RunFiles]) -> tuple[str | None, dict]:
    """The recommended run's operating point sentence and its evaluation record."""
    name = _d(summary.get("recommended")).get("run")
    union = _d(_d(summary.get("recommended")).get("union"))
    if union:  # a union of runs (fvnce.runs.union): the poc measured its operating point itself
        ev = {k: union.get(k) for k in ("alarm", "operating_point", "alarm_curve")}
        return operating_sentence(ev["operating_point"], ev["alarm"], "the recommended model"), ev
    r = next((x for x in runs if x.get("name") == name), None) if name is not None else None
    if r is None:
        return None, {}
    run = files.get(name)
    ev = dict(_d(run.evaluation if run is not None else None))
    for key in ("alarm", "operating_point"):  # summary.json has them too (older runs may not)
        if ev.get(key) is None:
            ev[key] = r.get(key)
    return operating_sentence(ev.get("operating_point"), ev.get("alarm"), "the recommended model"), ev


def _recommendation(summary: dict, runs: list[dict], files: dict[str, RunFiles],
                    baselines: list[dict], operating: str | None) -> str:
    """The recommendation section; ``operating`` is the recommended run's operating point
    sentence (:func:`_rec_operating`)."""
    rec = _d(summary.get("recommended"))
    name = rec.get("run")
    r = next((x for x in runs if x.get("name") == name), None) if name is not None else None
    explain = ("The configuration we suggest taking forward. It was chosen using the "
               "<b>validation data only</b>, among the runs that finished normally (not failed, "
               "diverged or degraded) and whose log-likelihood is reliable; the VAE every FVNCE "
               "run starts from competes too. All figures shown are measured on <b>held-out test "
               "data</b> that played no part in training or in the choice.")
    if not bool(_d(summary.get("data")).get("has_labels", True)):
        explain += (" The data has no anomaly labels, so the choice cannot use detection figures: it takes the "
                    "model under which the held-out validation data is most probable (the highest validation "
                    "log-likelihood), counting only estimates that are reliable. That is the best density, not "
                    "necessarily the best detector: when the training rows hold many anomalies, the most probable "
                    "model can be one that learned them too, and a model that learns how the features go together "
                    "can explain away a row that is extreme in one feature. So when the poc trained both kinds, it "
                    "recommends their union: the most probable model of the features jointly and the most "
                    "probable model of independent features (one diagonal Gaussian), with an alarm when either "
                    "finds an item extreme. If you can label some anomalies (even a few dozen), give the label "
                    "column: the choice then uses detection figures.")
    has_labels = bool(_d(summary.get("data")).get("has_labels", True))
    union = _d(rec.get("union"))
    if union:
        members = [x for m in rec.get("members") or [] for x in runs if x.get("name") == m]
        items = "".join(f"<li>{esc(m.get('name'))} <span class=\"small\">({esc(_config_text(m))})</span></li>"
                        for m in members)
        body = (f'<div class="card"><p><b>Recommended:</b> the union of two runs, in <code>'
                f'{esc(union.get("run_dir") or DASH)}</code> (score new data with <code>fvnce score '
                f'{esc(union.get("run_dir") or DASH)}</code>):</p><ul>{items}</ul>'
                f"<p><b>Chosen by:</b> {esc(rec.get('criterion') or DASH)}.</p>"
                f"<p><b>Its score:</b> {esc(union.get('combination') or DASH)}.</p>"
                + (f"<p>{esc(operating)}</p>" if operating else "")
                + (f"<p>The single run of highest validation log-likelihood was {esc(rec['single_choice'])}.</p>"
                   if rec.get("single_choice") else "") + _commands(rec) + "</div>")
        return _sec("recommendation", "Recommendation", explain, body)
    if r is None:
        if name is None and rec.get("reason"):
            text = esc(rec["reason"])
        elif name:
            text = (f"No configuration could be recommended (the recommended run {esc(name)} is not in the "
                    "list of runs).")
        else:
            text = ("No configuration could be recommended &mdash; most likely every run failed; see the "
                    "comparison table below.")
        return _sec("recommendation", "Recommendation", explain, f'<div class="card none">{text}</div>')
    m = _d(r.get("metrics"))
    base = ""
    for b in baselines:
        bm = _d(b.get("metrics"))
        if finite(bm.get("auroc")) is not None:
            base += (f"<li>Baseline <b>{esc(b.get('name'))}</b>: AUROC {fmt_frac(bm.get('auroc'))}, "
                     f"false alarms at 95% detection {fmt_pct(bm.get('fpr_at_95_tpr'))}.</li>")
    base = f"<p>For comparison:</p><ul>{base}</ul>" if base else ""
    body = (f'<div class="card"><p><b>Recommended:</b> {esc(name)} '
            f'<span class="small">({esc(_config_text(r))})</span></p>'
            + f"<p><b>Chosen by:</b> {esc(rec.get('criterion') or DASH)}.</p>"
            + (f"<p>{esc(operating)}</p>" if operating else "")
            + headline(m.get("auroc"), m.get("fpr_at_95_tpr"), m.get("log_likelihood"),
                       _ll_kind(r, files.get(name)), who=str(name), model=r.get("model"),
                       refs=_refs(runs, baselines, r), chosen_by="auroc" if has_labels else "log_likelihood")
            + base + _commands(rec) + "</div>")
    return _sec("recommendation", "Recommendation", explain, body)


def _refs(runs: list[dict], baselines: list[dict], chosen: dict) -> list[Ref]:
    """What the recommended run's headline figures are compared with: the VAE the FVNCE runs
    started from (unless it is the recommended run) and the baselines."""
    out = []
    vae = find_vae(runs)
    if vae is not None and vae is not chosen and vae.get("status") in ("ok", "degraded"):
        m = _d(vae.get("metrics"))
        out.append(Ref(str(vae.get("name")), "the VAE", m.get("auroc"), m.get("fpr_at_95_tpr"),
                       m.get("log_likelihood"), vae.get("model")))
    for b in baselines:
        m = _d(b.get("metrics"))
        out.append(Ref(str(b.get("name")), "baseline", m.get("auroc"), m.get("fpr_at_95_tpr")))
    return out


def _commands(rec: dict) -> str:
    """The command lines that reproduce the recommendation in production (summary.json
    ``recommended.train_command``; for a union ``member_commands`` and ``score_command``),
    each in a block that copies whole; nothing when summary.json has none."""
    blocks = []
    if isinstance(rec.get("train_command"), str) and rec["train_command"].strip():
        blocks.append(("Train the recommended configuration on the same data and split (choose your own "
                       "<code>--out</code> folder):", rec["train_command"]))
    for m in rec.get("member_commands") or []:
        if isinstance(m, dict) and isinstance(m.get("command"), str) and m["command"].strip():
            blocks.append((f"Train the union's member <b>{esc(m.get('run') or DASH)}</b>:", m["command"]))
    if isinstance(rec.get("score_command"), str) and rec["score_command"].strip():
        blocks.append(("Score new data with the union of the members:", rec["score_command"]))
    if not blocks:
        return ""
    return ('<h3 id="production">From recommendation to production</h3>'
            + "".join(f'<p>{label}</p><pre class="command"><code>{esc(cmd)}</code></pre>' for label, cmd in blocks))


def _sec(anchor: str, title: str, explain: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{esc(title)}</h2>'
            f'<p class="explain">{explain}</p>{body}</section>')


def _criteria(summary: dict) -> dict:
    """Thresholds the poc used (summary.json ``criteria``), with today's defaults for older files."""
    c = _d(summary.get("criteria"))
    return {"auroc_margin_min": finite(c.get("auroc_margin_min")) or AUROC_MARGIN_MIN,
            "se_factor": finite(c.get("se_factor")) or SE_FACTOR,
            "khat_max": finite(c.get("khat_max")) or KHAT_MAX,
            "ess_fraction_min": finite(c.get("ess_fraction_min")) or ESS_FRACTION_MIN,
            "reference": c.get("reference") or VAE_RUN}


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


def _run_rows(r: dict, run: RunFiles | None, is_rec: bool, badge_text: str = "recommended"
              ) -> list[tuple[list[str], str]]:
    """The comparison-table row of one run and the full-width rows that explain it."""
    m, vm = _d(r.get("metrics")), _d(r.get("val_metrics"))
    status = r.get("status") or "unknown"
    unreliable = _is_unreliable(r, run)
    badge = f'<span class="badge">{esc(badge_text)}</span>' if is_rec else ""
    cells = [f"<b>{esc(r.get('name'))}</b>{badge}<br><span class=\"small\">{esc(_config_text(r))}</span>",
             _status_cell(r, unreliable), fmt_frac(m.get("auroc")), fmt_frac(m.get("auprc")),
             fmt_pct(m.get("fpr_at_95_tpr")), _run_ll_cell(m.get("log_likelihood"), r, run),
             weights_cell(_log_z(r, run)), weights_cell(_noise_term(r, run), noise_term=True),
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
    m, vm = _d(b.get("metrics")), _d(b.get("val_metrics"))
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
            f"diagonal mixtures, trained from scratch, have a lower log-likelihood by design). "
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


def _comparison(runs: list[dict], files: dict[str, RunFiles], baselines: list[dict],
                rec_name: Any, has_labels: bool, criteria: dict, members: list | None = None) -> str:
    """``members``: the runs of a recommended union (:mod:`fvnce.runs.union`), marked as such."""
    rows = []
    for r in runs:
        if members:
            rows += _run_rows(r, files.get(r.get("name")), r.get("name") in members, "in the recommended union")
        else:
            rows += _run_rows(r, files.get(r.get("name")), rec_name is not None and r.get("name") == rec_name)
    rows += [_baseline_row(b) for b in baselines]
    body = table(_COMPARE_HEADER, rows, cls="compare") + _matrix(runs, files, has_labels)
    return _sec("comparison", "Comparison of all configurations",
                _comparison_explain(criteria, has_labels), body)


def _family(r: dict) -> str:
    """The model family of a run, for one noise x rule grid each: the model, with the number
    of mixture components (``model_options.components``, else the name's ``-mixN``)."""
    model = str(r.get("model") or "model not recorded")
    k = finite(_d(r.get("model_options")).get("components"))
    if k is None:
        m = re.search(r"-mix(\d+)$", str(r.get("name") or ""))
        k = float(m.group(1)) if m else None
    return model + (f", {int(k)} component{'s' if int(k) != 1 else ''}" if k is not None else "")


def _matrix(runs: list[dict], files: dict[str, RunFiles], has_labels: bool) -> str:
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
            v = finite(_d(r.get("val_metrics")).get(key)) if status in ("ok", "degraded", "unreliable") else None
            mark = "degraded" if status == "degraded" else (
                "unreliable" if _is_unreliable(r, files.get(r.get("name"))) else "")
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
    vae = find_vae(runs)
    ref = ""
    if vae is not None and vae.get("status") == "ok" and finite(_d(vae.get("val_metrics")).get(key)) is not None:
        ref = (f" For reference, the VAE {esc(vae.get('name'))} they started from has "
               f"{fmt(_d(vae.get('val_metrics')).get(key))}.")
    per = (" There is one grid per model family, so a cell only ever shows a run of that family."
           if len(families) > 1 else "")
    return (f"<h3>Noise distribution × rule ({esc(what)})</h3>"
            f'<p class="explain">The {esc(what)} of each FVNCE run, by the noise distribution '
            "(rows) and the rule (columns) it was trained with." + per + " ★ marks the best of those that "
            "are neither degraded nor unreliable. &ldquo;—&rdquo; means not tried." + ref + "</p>"
            + "".join(grids))


def poc_page(folder: Path, summary: dict) -> str:
    data = _d(summary.get("data"))
    runs = [r for r in summary.get("runs") or [] if isinstance(r, dict)]
    baselines = [b for b in summary.get("baselines") or [] if isinstance(b, dict)]
    rec_name = _d(summary.get("recommended")).get("run")
    has_labels = bool(data.get("has_labels", True))
    files: dict[str, RunFiles] = {}
    for r in runs:
        rd = r.get("run_dir")
        if isinstance(rd, str) and rd:
            files[r.get("name")] = load_run(folder / rd)
    title = "Anomaly detection proof of concept: results"
    operating, rec_ev = _rec_operating(summary, runs, files)
    notes = [n for n in data.get("notes") or [] if n is not None]
    data_rows = [
        ("Data source", esc(data.get("source") or DASH)),
        ("Items (training / validation / test)",
         f"{_count(data.get('n_train'))} / {_count(data.get('n_val'))} / {_count(data.get('n_test'))}"),
        ("Shape of one item", _shape_text(data.get("image_shape"), data.get("dim"), data.get("binary"))),
        ("Anomaly labels in validation/test data", "yes" if has_labels else "no"),
    ]
    if notes:
        data_rows.append(("Notes", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"))
    head = (f"<header><h1>{esc(title)}</h1>"
            f'<p class="meta">Created {esc(summary.get("created") or DASH)} · total run time '
            f"{fmt_time(summary.get('wall_time_s'))} · fvnce {esc(summary.get('fvnce_version') or DASH)}"
            f" · report generated {_generated()}</p>"
            '<p class="lead">Several ways of training an anomaly detector were tried on the same '
            "data and compared. This page recommends one, shows how well it works, and lets you "
            "check the evidence.</p>" + _headline_text(_d(summary.get("recommended")), operating) + "</header>")
    data_sec = _sec("data", "The data", "What the models were trained and tested on.",
                    kv_table(data_rows))
    entries = []
    for r in runs:
        name = r.get("name")
        run = files.get(name)
        ev = _d(run.evaluation) if run else {}
        entries.append(Entry(name=str(name), run=run, roc=ev.get("roc"), scores=ev.get("scores"),
                             auroc=_d(r.get("metrics")).get("auroc"),
                             recommended=rec_name is not None and name == rec_name))
    for b in baselines:
        entries.append(Entry(name=f"{b.get('name')} (baseline)", roc=b.get("roc"),
                             scores=b.get("scores"), auroc=_d(b.get("metrics")).get("auroc")))
    run_entries = [e for e in entries if e.run is not None]
    missing_dirs = [Entry(name=str(r.get("name"))) for r in runs if r.get("name") not in files]
    body = "".join([
        head, data_sec,
        _recommendation(summary, runs, files, baselines, operating),
        _comparison(runs, files, baselines, rec_name, has_labels, _criteria(summary),
                    _d(summary.get("recommended")).get("members")),
        _problems_note([(e.name, e.run) for e in run_entries]),
        alarm_section(str(rec_name), rec_ev, "the recommended model") if rec_ev else "",
        extras_sections(summary),  # your own VAE, the learning curve, the cost of an alarm (report/extras.py)
        training_section(run_entries + missing_dirs),
        roc_section([e for e in entries if e.run is None or (e.run.evaluation is not None)],
                    has_labels),
        poc_pictures(summary, runs, files, find_vae(runs)),  # image data only (report/pictures.py)
        samples_section(run_entries, samples_shape(data.get("image_shape")), data.get("dim")),
        glossary(),
    ])
    return page(title, body)


# --------------------------------------------------------------------------- single run


def _json_text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def run_page(run: RunFiles) -> str:
    cfg = _d(run.config)
    ev = run.evaluation
    name = run.path.resolve().name
    title = f"FVNCE run report: {name}"
    data, model, obj, noise = (_d(cfg.get(k)) for k in ("data", "model", "objective", "noise"))
    rule = obj.get("rule")
    head = (f"<header><h1>{esc(title)}</h1>"
            f'<p class="meta">fvnce {esc(cfg.get("fvnce_version") or DASH)} · report generated '
            f"{_generated()}</p><p class=\"lead\">Results of one training run: what was trained, "
            "how training went and how well the model detects anomalies.</p></header>")
    feats = [str(f) for f in cfg.get("feature_names") or []]
    feat_text = esc(", ".join(feats[:20]) + (f" … ({len(feats)} in total)" if len(feats) > 20 else ""))
    rows = [
        ("Data source", esc(data.get("source") or DASH)),
        ("Shape of one item", _shape_text(cfg.get("image_shape"), cfg.get("x_dim"), cfg.get("binary"))),
        ("Features", feat_text or DASH),
        ("Model", esc(model.get("name") or DASH)
         + (f' <span class="small">{esc(_json_text(model.get("options")))}</span>'
            if model.get("options") else "")),
        ("Objective", esc(obj.get("name") or DASH)),
        ("Rule", esc(rule_label(rule)) + (
            f' <span class="small">{esc(_json_text({k: v for k, v in rule.items() if k != "name"}))}</span>'
            if isinstance(rule, dict) else "")),
        ("Noise distribution", esc(noise.get("name") or DASH)),
        ("k / nu", f"{esc(obj.get('k', DASH))} / {esc(obj.get('nu', DASH))}"),
    ]
    for k, v in sorted(_d(cfg.get("train")).items()):
        rows.append((f"Training: {k}", esc(_json_text(v))))
    if not cfg:
        rows.append(("Note", "config.json is missing or unreadable."))
    conf = _sec("configuration", "Data and configuration", "What was trained, and on what.",
                kv_table(rows))
    if ev is None:
        res_body = ('<p class="note">No evaluation results: evaluation.json is missing (evaluation '
                    "failed or has not been run). Only the training curves are shown.</p>")
        has_labels = False
        reason = "No evaluation results are available for this run, so detection quality cannot be shown."
    else:
        val = _d(ev.get("val"))
        kind = ev.get("log_likelihood_kind")
        has_labels = finite(ev.get("auroc")) is not None or bool(ev.get("roc")) or bool(
            _d(ev.get("scores")).get("anomaly"))
        reason = ""
        lz = _d(ev.get("log_z"))
        ll_diag = (lz.get("ess_fraction"), lz.get("khat"), lz.get("reliable"))
        metric_rows = [
            (["AUROC", fmt_frac(ev.get("auroc")), fmt_frac(val.get("auroc"))], ""),
            (["AUPRC", fmt_frac(ev.get("auprc")), fmt_frac(val.get("auprc"))], ""),
            (["False alarms at 95% detection", fmt_pct(ev.get("fpr_at_95_tpr")),
              fmt_pct(val.get("fpr_at_95_tpr"))], ""),
            (["Log-likelihood (nats per example)",
              ll_cell(ev.get("log_likelihood"), kind, *ll_diag),
              ll_cell(val.get("log_likelihood"), kind, *ll_diag)], ""),
            (["Noise accuracy", fmt_pct(ev.get("noise_accuracy")), fmt_pct(val.get("noise_accuracy"))], ""),
        ]
        if lz:
            metric_rows.append((["Estimated log normaliser (log Z)", fmt_num(lz.get("log_z"), 3)
                                 + f' <span class="small">k-hat · ESS {weights_cell(lz)}, '
                                 f'proposal {esc(lz.get("proposal") or DASH)}</span>', DASH], ""))
        nt = _d(ev.get("noise_term"))
        if nt:
            metric_rows.append((["Noise term importance weights of training (k-hat · ESS)",
                                 weights_cell(nt, noise_term=True), DASH], ""))
        op = _d(ev.get("operating_point"))
        if op:
            metric_rows[3:3] = [
                (["False alarms among normal items at the alarm threshold",
                  fmt_count(op.get("false_alarms"), op.get("n_normal"), op.get("false_alarm_rate")), DASH], ""),
                (["Anomalies detected at the alarm threshold",
                  fmt_count(op.get("detected"), op.get("n_anomaly"), op.get("detection_rate")), DASH], "")]
        sentence = operating_sentence(ev.get("operating_point"), ev.get("alarm"))
        res_body = ((f'<p class="verdict"><b>{esc(sentence)}</b></p>' if sentence else "")
                    + headline(ev.get("auroc"), ev.get("fpr_at_95_tpr"), ev.get("log_likelihood"), kind)
                    + table(["Metric", "Test", "Validation"], metric_rows))
    results = _sec("results", "Results", "Headline figures are on held-out test data.", res_body)
    entry = Entry(name=name, run=run, roc=_d(ev).get("roc"), scores=_d(ev).get("scores"),
                  auroc=_d(ev).get("auroc"), recommended=True)
    body = "".join([
        head, conf, results, _problems_note([(name, run)]),
        alarm_section(name, ev) if ev is not None else "",
        training_section([entry]),
        roc_section([entry], has_labels, reason, single=True),
        run_pictures(run),  # image data only (report/pictures.py)
        samples_section([entry], samples_shape(cfg.get("image_shape")), cfg.get("x_dim")),
        glossary(),
    ])
    return page(title, body)
