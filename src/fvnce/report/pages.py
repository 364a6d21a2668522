"""Assembly of the two kinds of report page: a POC comparison and a single run.

Each page is a sequence of sections.  The poc page's are listed in :data:`POC_SECTIONS`, each
a function of the :class:`PocView` (what the page reads from the poc's folder); a new section
of the poc page is one function added there."""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .alarm import alarm_section, operating_sentence
from .cells import Entry, headline, ll_cell, rule_label, weights_cell
from .comparison import comparison_section
from .extras import extras_sections
from .glossary import glossary
from .html import DASH, as_dict, esc, fmt_count, fmt_frac, fmt_num, fmt_pct, fmt_time, kv_table, page, section, table
from .load import RunFiles, finite, read_run_files
from .recommendation import headline_text, recommendation_section, recommended_operating
from .pictures import poc_pictures, run_pictures, samples_shape
from .roc import roc_section
from .samples import samples_section
from .training import training_section
from .verdicts import poc_criteria, reference_vae

__all__ = ["POC_SECTIONS", "PocView", "poc_page", "run_page"]


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

POC_TITLE = "Anomaly detection proof of concept: results"


@dataclass
class PocView:
    """What the poc page shows, read from the poc's folder once: ``summary.json`` and the run
    directories it names."""

    folder: Path
    summary: dict
    data: dict = field(init=False)
    runs: list[dict] = field(init=False)
    baselines: list[dict] = field(init=False)
    recommended: dict = field(init=False)
    rec_name: Any = field(init=False)
    has_labels: bool = field(init=False)
    criteria: dict = field(init=False)
    files: dict[str, RunFiles] = field(init=False)
    #: the recommended run's operating point sentence and its evaluation record
    operating: str | None = field(init=False)
    rec_ev: dict = field(init=False)
    #: curve sources: every run, then the baselines
    entries: list[Entry] = field(init=False)

    def __post_init__(self) -> None:
        self.data = as_dict(self.summary.get("data"))
        self.runs = [r for r in self.summary.get("runs") or [] if isinstance(r, dict)]
        self.baselines = [b for b in self.summary.get("baselines") or [] if isinstance(b, dict)]
        self.recommended = as_dict(self.summary.get("recommended"))
        self.rec_name = self.recommended.get("run")
        self.has_labels = bool(self.data.get("has_labels", True))
        self.criteria = poc_criteria(self.summary)
        self.files = {}
        for r in self.runs:
            rd = r.get("run_dir")
            if isinstance(rd, str) and rd:
                self.files[r.get("name")] = read_run_files(self.folder / rd)
        self.operating, self.rec_ev = recommended_operating(self.summary, self.runs, self.files)
        self.entries = []
        for r in self.runs:
            name = r.get("name")
            run = self.files.get(name)
            ev = as_dict(run.evaluation) if run else {}
            self.entries.append(Entry(name=str(name), run=run, roc=ev.get("roc"), scores=ev.get("scores"),
                                      auroc=as_dict(r.get("metrics")).get("auroc"),
                                      recommended=self.rec_name is not None and name == self.rec_name))
        for b in self.baselines:
            self.entries.append(Entry(name=f"{b.get('name')} (baseline)", roc=b.get("roc"),
                                      scores=b.get("scores"), auroc=as_dict(b.get("metrics")).get("auroc")))

    @property
    def run_entries(self) -> list[Entry]:
        """The entries of runs whose directory was found."""
        return [e for e in self.entries if e.run is not None]


def _poc_header(v: PocView) -> str:
    return (f"<header><h1>{esc(POC_TITLE)}</h1>"
            f'<p class="meta">Created {esc(v.summary.get("created") or DASH)} · total run time '
            f"{fmt_time(v.summary.get('wall_time_s'))} · fvnce {esc(v.summary.get('fvnce_version') or DASH)}"
            f" · report generated {_generated()}</p>"
            '<p class="lead">Several ways of training an anomaly detector were tried on the same '
            "data and compared. This page recommends one, shows how well it works, and lets you "
            "check the evidence.</p>" + headline_text(v.recommended, v.operating) + "</header>")


def _data_section(v: PocView) -> str:
    data = v.data
    notes = [n for n in data.get("notes") or [] if n is not None]
    data_rows = [
        ("Data source", esc(data.get("source") or DASH)),
        ("Items (training / validation / test)",
         f"{_count(data.get('n_train'))} / {_count(data.get('n_val'))} / {_count(data.get('n_test'))}"),
        ("Shape of one item", _shape_text(data.get("image_shape"), data.get("dim"), data.get("binary"))),
        ("Anomaly labels in validation/test data", "yes" if v.has_labels else "no"),
    ]
    if notes:
        data_rows.append(("Notes", "<ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>"))
    return section("data", "The data", "What the models were trained and tested on.", kv_table(data_rows))


def _training_section(v: PocView) -> str:
    """Training curves of every run; runs without a directory are named as missing."""
    missing_dirs = [Entry(name=str(r.get("name"))) for r in v.runs if r.get("name") not in v.files]
    return training_section(v.run_entries + missing_dirs)


#: the sections of the poc page, in order (an empty string leaves a section out)
POC_SECTIONS: tuple[Callable[[PocView], str], ...] = (
    _poc_header,
    _data_section,
    lambda v: recommendation_section(v.summary, v.runs, v.files, v.baselines, v.operating, v.criteria),
    lambda v: comparison_section(v.runs, v.files, v.baselines, v.rec_name, v.has_labels, v.criteria,
                                 v.recommended.get("members")),
    lambda v: _problems_note([(e.name, e.run) for e in v.run_entries]),
    lambda v: alarm_section(str(v.rec_name), v.rec_ev, "the recommended model") if v.rec_ev else "",
    lambda v: extras_sections(v.summary),  # your own VAE, the learning curve, the cost of an alarm (report/extras.py)
    _training_section,
    lambda v: roc_section([e for e in v.entries if e.run is None or (e.run.evaluation is not None)], v.has_labels),
    lambda v: poc_pictures(v.summary, v.runs, v.files, reference_vae(v.runs, v.criteria)),  # images only
    lambda v: samples_section(v.run_entries, samples_shape(v.data.get("image_shape")), v.data.get("dim")),
    lambda v: glossary(),
)


def poc_page(folder: Path, summary: dict) -> str:
    """The report page of a poc folder whose ``summary.json`` holds ``summary``."""
    view = PocView(folder, summary)
    return page(POC_TITLE, "".join(build(view) for build in POC_SECTIONS))


# --------------------------------------------------------------------------- single run


def _json_text(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def run_page(run: RunFiles) -> str:
    cfg = as_dict(run.config)
    ev = run.evaluation
    name = run.path.resolve().name
    title = f"FVNCE run report: {name}"
    data, model, obj, noise = (as_dict(cfg.get(k)) for k in ("data", "model", "objective", "noise"))
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
    for k, v in sorted(as_dict(cfg.get("train")).items()):
        rows.append((f"Training: {k}", esc(_json_text(v))))
    if not cfg:
        rows.append(("Note", "config.json is missing or unreadable."))
    conf = section("configuration", "Data and configuration", "What was trained, and on what.",
                kv_table(rows))
    if ev is None:
        res_body = ('<p class="note">No evaluation results: evaluation.json is missing (evaluation '
                    "failed or has not been run). Only the training curves are shown.</p>")
        has_labels = False
        reason = "No evaluation results are available for this run, so detection quality cannot be shown."
    else:
        val = as_dict(ev.get("val"))
        kind = ev.get("log_likelihood_kind")
        has_labels = finite(ev.get("auroc")) is not None or bool(ev.get("roc")) or bool(
            as_dict(ev.get("scores")).get("anomaly"))
        reason = ""
        lz = as_dict(ev.get("log_z"))
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
        nt = as_dict(ev.get("noise_term"))
        if nt:
            metric_rows.append((["Noise term importance weights of training (k-hat · ESS)",
                                 weights_cell(nt, noise_term=True), DASH], ""))
        op = as_dict(ev.get("operating_point"))
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
    results = section("results", "Results", "Headline figures are on held-out test data.", res_body)
    entry = Entry(name=name, run=run, roc=as_dict(ev).get("roc"), scores=as_dict(ev).get("scores"),
                  auroc=as_dict(ev).get("auroc"), recommended=True)
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
