"""The poc page's answers to three questions: where the VAE came from (``vae_source``), how
much data is enough (``learning_curve``), what an alarm costs (``recommended.cost``).
Each section is left out when summary.json has nothing for it."""

from __future__ import annotations

from typing import Any

from ..numfmt import bounded
from .html import DASH, as_dict, esc, fmt_frac, kv_table, section, table
from .load import finite

__all__ = ["extras_sections"]


def _pm(value: Any, se: Any, digits: int = 3, share: float | None = None) -> str:
    """``value ± se``; a ``share`` (the scale of a rate: 1 for an AUROC, 1,000 for false
    alarms per 1,000) is never rounded to 0 or to the scale unless exact."""
    v, s = finite(value), finite(se)
    if v is None:
        return DASH
    text = bounded(v / share, share, digits) if share else f"{v:.{digits}f}"
    return text + (f" ± {s:.{digits}f}" if s is not None else "")


def _money(v: Any) -> str:
    x = finite(v)
    return DASH if x is None else f"{x:,.4g}"


def _vae(summary: dict) -> str:
    src = as_dict(summary.get("vae_source"))
    if not src:
        return ""
    rows = [("Code", f"<code>{esc(src.get('file'))}</code>, function <code>{esc(src.get('function'))}</code>"),
            ("Weights", f"<code>{esc(src.get('weights'))}</code>"),
            ("sha256 of the code", f"<code>{esc(src.get('sha256'))}</code>"),
            ("Used as", "the VAE baseline <b>elbo-vae</b>, evaluated as it is (not trained); the base of every "
                        "energy-tilted FVNCE run and of the <code>base</code> noise")]
    if summary.get("vae_finetune"):
        rows.append(("Fine-tuned", f"also by the ELBO for {esc(summary['vae_finetune'])} steps: "
                                   "<b>elbo-vae-finetuned</b>"))
    return section("your-vae", "Your own VAE", "The VAE this proof of concept started from. Each run folder keeps a "
                "copy of the code; reloading a run refuses a copy whose hash differs.", kv_table(rows))


def _curve(summary: dict) -> str:
    verdict = summary.get("learning_curve_verdict")
    points = [p for p in summary.get("learning_curve") or [] if isinstance(p, dict)]
    if not verdict and not points:
        return ""
    body = f"<p><b>{esc(verdict)}</b></p>" if verdict else ""
    if points:
        rows = []
        for p in points:
            rows.append(([esc(f"{100 * (finite(p.get('fraction')) or 0):.3g} %"), esc(p.get("rows")),
                          _pm(p.get("auroc"), p.get("auroc_se"), share=1.0), fmt_frac(p.get("auprc")),
                          _pm(p.get("false_alarms_per_1000"), p.get("false_alarms_per_1000_se"), 1, share=1000.0),
                          _pm(p.get("log_likelihood"), p.get("log_likelihood_se"), 2)], ""))
        body += table(["Training rows used", "Rows", "Test AUROC ± SE", "Test AUPRC", "False alarms per 1,000 ± SE",
                       "Log-likelihood ± SE (nats)"], rows)
    note = summary.get("learning_curve_note")
    if note and points:
        body += f'<p class="explain">{esc(note)}.</p>'
    return section("learning-curve", "How much data is enough", "The recommended configuration retrained on part of "
                "the training rows (nested subsets); validation and test rows unchanged. ± one standard error.", body)


def _cost(summary: dict) -> str:
    cost = as_dict(as_dict(summary.get("recommended")).get("cost"))
    if not cost:
        return ""
    if not cost.get("available"):
        return section("cost", "What an alarm costs", "Expected cost per 1,000 items, in your units.",
                    f"<p>{esc(cost.get('reason'))}.</p>")
    ar = as_dict(cost.get("alarm_rate_point"))

    def row(name: str, t: Any, val: dict, test: dict) -> tuple[list[str], str]:
        det = test.get("detection_rate")
        return ([esc(name), esc(f"{t:.6g}") if finite(t) is not None else DASH, _money(val.get("cost_per_1000")),
                 _money(test.get("cost_per_1000")), esc(test.get("false_alarms", DASH)),
                 esc(f"{test.get('detected', DASH)} ({100 * det:.3g} %)") if finite(det) is not None else DASH], "")

    rows = [row("lowest expected cost (on validation rows)", cost.get("threshold"), as_dict(cost.get("validation")),
                as_dict(cost.get("test")))]
    if ar:
        rows.append(row("alarm-rate threshold", ar.get("threshold"), as_dict(ar.get("validation")),
                        as_dict(ar.get("test"))))
    rows.append(([esc("never alarm"), DASH, _money(cost.get("never_alarm_per_1000")),
                  _money(cost.get("never_alarm_per_1000")), "0", "0"], ""))
    rows.append(([esc("always alarm"), DASH, _money(cost.get("always_alarm_per_1000")),
                  _money(cost.get("always_alarm_per_1000")), esc(as_dict(cost.get("test")).get("n_normal", DASH)),
                  esc(as_dict(cost.get("test")).get("n_anomaly", DASH))], ""))
    share = finite(cost.get("anomaly_share"))
    share_text = DASH if share is None else f"{100 * share:.3g} %"
    explain = (f"A false alarm costs {esc(cost.get('cost_false_alarm'))}, a miss {esc(cost.get('cost_miss'))} (your "
               f"units); anomaly share {esc(share_text)}, {esc(cost.get('share_source'))}.")
    return section("cost", "What an alarm costs", explain,
                table(["Threshold", "Value", "Cost per 1,000 (validation)", "Cost per 1,000 (test)",
                       "False alarms (test)", "Detected (test)"], rows) + f"<p>{esc(cost.get('sentence'))}</p>")


def extras_sections(summary: dict) -> str:
    """The three sections (empty strings where summary.json has nothing)."""
    return _vae(summary) + _curve(summary) + _cost(summary)
