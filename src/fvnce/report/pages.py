"""Assembly of the two kinds of report page: a POC comparison and a single run."""

from __future__ import annotations

import datetime as _dt
import json
from pathlib import Path
from typing import Any

from .html import DASH, esc, fmt_num, fmt_pct, fmt_time, kv_table, page, table
from .load import RunFiles, finite, load_run
from .sections import (Entry, glossary, headline, ll_cell, roc_section, rule_label,
                       samples_section, training_section)

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


def _ll_ess(run: RunFiles | None) -> Any:
    """ESS fraction behind the run's log Z estimate (None when there is none)."""
    return _d(_d(run.evaluation if run is not None else None).get("log_z")).get("ess_fraction")


def _ll_kind(r: dict, run: RunFiles | None) -> Any:
    kind = _d(r.get("metrics")).get("log_likelihood_kind")
    if kind is None and run is not None:
        kind = _d(run.evaluation).get("log_likelihood_kind")
    return kind


def _recommendation(summary: dict, runs: list[dict], files: dict[str, RunFiles],
                    baselines: list[dict]) -> str:
    rec = _d(summary.get("recommended"))
    name = rec.get("run")
    r = next((x for x in runs if x.get("name") == name), None) if name is not None else None
    explain = ("The configuration we suggest taking forward. It was chosen using the "
               "<b>validation data only</b>; all figures shown are measured on <b>held-out test "
               "data</b> that played no part in training or in the choice.")
    if r is None:
        body = ('<div class="card none">No configuration could be recommended'
                + (f" (the recommended run {esc(name)!s} is not in the list of runs)" if name else
                   " &mdash; most likely every run failed; see the comparison table below")
                + ".</div>")
        return _sec("recommendation", "Recommendation", explain, body)
    m = _d(r.get("metrics"))
    base = ""
    for b in baselines:
        bm = _d(b.get("metrics"))
        if finite(bm.get("auroc")) is not None:
            base += (f"<li>Baseline <b>{esc(b.get('name'))}</b>: AUROC {fmt_num(bm.get('auroc'))}, "
                     f"false alarms at 95% detection {fmt_pct(bm.get('fpr_at_95_tpr'))}.</li>")
    base = f"<p>For comparison:</p><ul>{base}</ul>" if base else ""
    body = (f'<div class="card"><p><b>Recommended:</b> {esc(name)} '
            f'<span class="small">({esc(_config_text(r))})</span></p>'
            f"<p><b>Chosen by:</b> {esc(rec.get('criterion') or DASH)}. "
            f"{esc(rec.get('reason') or '')}</p>"
            + headline(m.get("auroc"), m.get("fpr_at_95_tpr"), m.get("log_likelihood"),
                       _ll_kind(r, files.get(name)))
            + base + "</div>")
    return _sec("recommendation", "Recommendation", explain, body)


def _sec(anchor: str, title: str, explain: str, body: str) -> str:
    return (f'<section id="{anchor}"><h2>{esc(title)}</h2>'
            f'<p class="explain">{explain}</p>{body}</section>')




def _comparison(runs: list[dict], files: dict[str, RunFiles], baselines: list[dict],
                rec_name: Any, has_labels: bool) -> str:
    header = ["Configuration", "Test AUROC", "Test AUPRC", "False alarms at 95% detection",
              "Test log-likelihood (nats)", "Noise accuracy", "Validation AUROC", "Train time",
              "Status"]
    rows = []
    for r in runs:
        m, vm = _d(r.get("metrics")), _d(r.get("val_metrics"))
        name = r.get("name")
        is_rec = rec_name is not None and name == rec_name
        badge = '<span class="badge">recommended</span>' if is_rec else ""
        status = r.get("status") or "unknown"
        cells = [f"<b>{esc(name)}</b>{badge}<br><span class=\"small\">{esc(_config_text(r))}</span>",
                 fmt_num(m.get("auroc")), fmt_num(m.get("auprc")), fmt_pct(m.get("fpr_at_95_tpr")),
                 ll_cell(m.get("log_likelihood"), _ll_kind(r, files.get(name)), _ll_ess(files.get(name))),
                 fmt_pct(m.get("noise_accuracy")), fmt_num(vm.get("auroc")),
                 fmt_time(r.get("train_time_s")), esc(status)]
        bad = status != "ok"
        error = r.get("error")
        rows.append((cells, "rec" if is_rec else ("bad" + (" first" if error else "") if bad else "")))
        if error:
            rows.append(([f'<span class="small">Why it {esc(status)}:</span> '
                          f'<span class="err">{esc(error)}</span>'], "bad detail"))
    for b in baselines:
        m, vm = _d(b.get("metrics")), _d(b.get("val_metrics"))
        cells = [f"<b>{esc(b.get('name'))}</b><br><span class=\"small\">baseline</span>",
                 fmt_num(m.get("auroc")), fmt_num(m.get("auprc")), fmt_pct(m.get("fpr_at_95_tpr")),
                 ll_cell(m.get("log_likelihood"), m.get("log_likelihood_kind")),
                 fmt_pct(m.get("noise_accuracy")), fmt_num(vm.get("auroc")),
                 fmt_time(b.get("train_time_s")), "ok"]
        rows.append((cells, ""))
    explain = ("Every configuration tried, with its results on the held-out test data. "
               "Higher AUROC/AUPRC and log-likelihood are better; fewer false alarms are better. "
               "The highlighted row is the recommendation. Failed or diverged runs are shown "
               "in red with the reason.")
    if not has_labels:
        explain += " Detection figures are empty because the data has no anomaly labels."
    body = table(header, rows, cls="compare") + _matrix(runs, has_labels)
    return _sec("comparison", "Comparison of all configurations", explain, body)


def _matrix(runs: list[dict], has_labels: bool) -> str:
    fv = [r for r in runs if r.get("objective") == "fvnce"]
    if not fv:
        return ""
    key, what = ("auroc", "validation AUROC") if has_labels else ("log_likelihood",
                                                                 "validation log-likelihood")
    noises, rules, cells = [], [], {}
    for r in fv:
        noise, rule = str(r.get("noise") or DASH), rule_label(r.get("rule"), r.get("rule_params"))
        noises += [noise] if noise not in noises else []
        rules += [rule] if rule not in rules else []
        v = finite(_d(r.get("val_metrics")).get(key)) if r.get("status") == "ok" else None
        old = cells.get((noise, rule))
        if old is None or (v is not None and (old[0] is None or v > old[0])):
            cells[(noise, rule)] = (v, r.get("status") or "unknown")
    vals = [v for v, _ in cells.values() if v is not None]
    best = max(vals) if vals else None
    rows = []
    for n in noises:
        out = [f"<b>{esc(n)}</b>"]
        for ru in rules:
            v, status = cells.get((n, ru), (None, None))
            if v is not None:
                text = fmt_num(v, 3 if has_labels else 2)
                out.append(f'<span class="best-cell">{text} ★</span>' if v == best else text)
            else:
                out.append(esc(status) if status and status != "ok" else DASH)
        rows.append((out, ""))
    return (f"<h3>Noise distribution × rule ({esc(what)})</h3>"
            f'<p class="explain">The {esc(what)} of each FVNCE run, by the noise distribution '
            "(rows) and the rule (columns) it was trained with; ★ marks the best. "
            "&ldquo;—&rdquo; means not tried.</p>" + table(["Noise \\ rule", *rules], rows))


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
            "check the evidence.</p></header>")
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
        _recommendation(summary, runs, files, baselines),
        _comparison(runs, files, baselines, rec_name, has_labels),
        _problems_note([(e.name, e.run) for e in run_entries]),
        training_section(run_entries + missing_dirs),
        roc_section([e for e in entries if e.run is None or (e.run.evaluation is not None)],
                    has_labels),
        samples_section(run_entries, data.get("image_shape"), data.get("dim")),
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
        metric_rows = [
            (["AUROC", fmt_num(ev.get("auroc")), fmt_num(val.get("auroc"))], ""),
            (["AUPRC", fmt_num(ev.get("auprc")), fmt_num(val.get("auprc"))], ""),
            (["False alarms at 95% detection", fmt_pct(ev.get("fpr_at_95_tpr")),
              fmt_pct(val.get("fpr_at_95_tpr"))], ""),
            (["Log-likelihood (nats per example)",
              ll_cell(ev.get("log_likelihood"), kind, _d(ev.get("log_z")).get("ess_fraction")),
              ll_cell(val.get("log_likelihood"), kind, _d(ev.get("log_z")).get("ess_fraction"))], ""),
            (["Noise accuracy", fmt_pct(ev.get("noise_accuracy")), fmt_pct(val.get("noise_accuracy"))], ""),
        ]
        lz = _d(ev.get("log_z"))
        if lz:
            metric_rows.append((["Estimated log normaliser (log Z)", fmt_num(lz.get("log_z"), 3)
                                 + f' <span class="small">ESS {fmt_pct(lz.get("ess_fraction"))}, '
                                 f'proposal {esc(lz.get("proposal") or DASH)}</span>', DASH], ""))
        res_body = (headline(ev.get("auroc"), ev.get("fpr_at_95_tpr"), ev.get("log_likelihood"), kind)
                    + table(["Metric", "Test", "Validation"], metric_rows))
    results = _sec("results", "Results", "Headline figures are on held-out test data.", res_body)
    entry = Entry(name=name, run=run, roc=_d(ev).get("roc"), scores=_d(ev).get("scores"),
                  auroc=_d(ev).get("auroc"), recommended=True)
    body = "".join([
        head, conf, results, _problems_note([(name, run)]),
        training_section([entry]),
        roc_section([entry], has_labels, reason, single=True),
        samples_section([entry], cfg.get("image_shape"), cfg.get("x_dim")),
        glossary(),
    ])
    return page(title, body)
