"""The recommendation on the poc page: the verdict at the top, the recommendation section
(one run or a union of runs) with its headline figures, and the command lines that take it
to production."""

from __future__ import annotations

from .alarm import operating_sentence
from .cells import Ref, headline
from .html import DASH, as_dict, esc, fmt_frac, fmt_pct, section
from .load import RunFiles, finite
from .verdicts import config_text, ll_kind, reference_vae

__all__ = ["headline_text", "recommendation_section", "recommended_operating"]


def _verdict(rec: dict) -> str:
    """The recommendation sentence and, when the VAE won, the plain-words statement (HTML)."""
    parts = []
    if rec.get("vae_statement"):
        parts.append(f'<p class="verdict"><b>{esc(rec["vae_statement"])}</b></p>')
    if rec.get("reason"):
        parts.append(f'<p class="verdict">{esc(rec["reason"])}</p>')
    return "".join(parts)


def headline_text(rec: dict, operating: str | None = None) -> str:
    """The verdict at the top of the page: the recommended run's operating point in words,
    the VAE statement (when it applies) and the reason."""
    text = (f'<p class="verdict"><b>{esc(operating)}</b></p>' if operating else "") + _verdict(rec)
    return f'<div class="card verdict-box">{text}</div>' if text else ""


def recommended_operating(summary: dict, runs: list[dict], files: dict[str, RunFiles]) -> tuple[str | None, dict]:
    """The recommended run's operating point sentence and its evaluation record."""
    name = as_dict(summary.get("recommended")).get("run")
    union = as_dict(as_dict(summary.get("recommended")).get("union"))
    if union:  # a union of runs (fvnce.runs.union): the poc measured its operating point itself
        ev = {k: union.get(k) for k in ("alarm", "operating_point", "alarm_curve")}
        return operating_sentence(ev["operating_point"], ev["alarm"], "the recommended model"), ev
    r = next((x for x in runs if x.get("name") == name), None) if name is not None else None
    if r is None:
        return None, {}
    run = files.get(name)
    ev = dict(as_dict(run.evaluation if run is not None else None))
    for key in ("alarm", "operating_point"):  # summary.json has them too (older runs may not)
        if ev.get(key) is None:
            ev[key] = r.get(key)
    return operating_sentence(ev.get("operating_point"), ev.get("alarm"), "the recommended model"), ev


def recommendation_section(summary: dict, runs: list[dict], files: dict[str, RunFiles], baselines: list[dict],
                           operating: str | None, criteria: dict) -> str:
    """The recommendation section; ``operating`` is the recommended run's operating point
    sentence (:func:`recommended_operating`)."""
    rec = as_dict(summary.get("recommended"))
    name = rec.get("run")
    r = next((x for x in runs if x.get("name") == name), None) if name is not None else None
    explain = ("The configuration we suggest taking forward. It was chosen using the "
               "<b>validation data only</b>, among the runs that finished normally (not failed, "
               "diverged or degraded) and whose log-likelihood is reliable; the VAE every FVNCE "
               "run starts from competes too. All figures shown are measured on <b>held-out test "
               "data</b> that played no part in training or in the choice.")
    if not bool(as_dict(summary.get("data")).get("has_labels", True)):
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
    has_labels = bool(as_dict(summary.get("data")).get("has_labels", True))
    union = as_dict(rec.get("union"))
    if union:
        members = [x for m in rec.get("members") or [] for x in runs if x.get("name") == m]
        items = "".join(f"<li>{esc(m.get('name'))} <span class=\"small\">({esc(config_text(m))})</span></li>"
                        for m in members)
        body = (f'<div class="card"><p><b>Recommended:</b> the union of two runs, in <code>'
                f'{esc(union.get("run_dir") or DASH)}</code> (score new data with <code>fvnce score '
                f'{esc(union.get("run_dir") or DASH)}</code>):</p><ul>{items}</ul>'
                f"<p><b>Chosen by:</b> {esc(rec.get('criterion') or DASH)}.</p>"
                f"<p><b>Its score:</b> {esc(union.get('combination') or DASH)}.</p>"
                + (f"<p>{esc(operating)}</p>" if operating else "")
                + (f"<p>The single run of highest validation log-likelihood was {esc(rec['single_choice'])}.</p>"
                   if rec.get("single_choice") else "") + _commands(rec) + "</div>")
        return section("recommendation", "Recommendation", explain, body)
    if r is None:
        if name is None and rec.get("reason"):
            text = esc(rec["reason"])
        elif name:
            text = (f"No configuration could be recommended (the recommended run {esc(name)} is not in the "
                    "list of runs).")
        else:
            text = ("No configuration could be recommended &mdash; most likely every run failed; see the "
                    "comparison table below.")
        return section("recommendation", "Recommendation", explain, f'<div class="card none">{text}</div>')
    m = as_dict(r.get("metrics"))
    base = ""
    for b in baselines:
        bm = as_dict(b.get("metrics"))
        if finite(bm.get("auroc")) is not None:
            base += (f"<li>Baseline <b>{esc(b.get('name'))}</b>: AUROC {fmt_frac(bm.get('auroc'))}, "
                     f"false alarms at 95% detection {fmt_pct(bm.get('fpr_at_95_tpr'))}.</li>")
    base = f"<p>For comparison:</p><ul>{base}</ul>" if base else ""
    body = (f'<div class="card"><p><b>Recommended:</b> {esc(name)} '
            f'<span class="small">({esc(config_text(r))})</span></p>'
            + f"<p><b>Chosen by:</b> {esc(rec.get('criterion') or DASH)}.</p>"
            + (f"<p>{esc(operating)}</p>" if operating else "")
            + headline(m.get("auroc"), m.get("fpr_at_95_tpr"), m.get("log_likelihood"),
                       ll_kind(r, files.get(name)), who=str(name), model=r.get("model"),
                       refs=_refs(runs, baselines, r, criteria), chosen_by="auroc" if has_labels else "log_likelihood")
            + base + _commands(rec) + "</div>")
    return section("recommendation", "Recommendation", explain, body)


def _refs(runs: list[dict], baselines: list[dict], chosen: dict, criteria: dict) -> list[Ref]:
    """What the recommended run's headline figures are compared with: the VAE the FVNCE runs
    started from (unless it is the recommended run) and the baselines."""
    out = []
    vae = reference_vae(runs, criteria)
    if vae is not None and vae is not chosen and vae.get("status") in ("ok", "degraded"):
        m = as_dict(vae.get("metrics"))
        out.append(Ref(str(vae.get("name")), "the VAE", m.get("auroc"), m.get("fpr_at_95_tpr"),
                       m.get("log_likelihood"), vae.get("model")))
    for b in baselines:
        m = as_dict(b.get("metrics"))
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
