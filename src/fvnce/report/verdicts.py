"""What the poc recorded in ``summary.json`` about its verdicts, as the report reads it: the
criteria behind them (``criteria``), which run is the VAE the FVNCE runs are compared with,
and whether a run's log-likelihood is unreliable (the run's ``status`` and ``reliable``).

For a summary written before a value was recorded, the report uses the values of
:mod:`fvnce.criteria` (the leaf module the poc takes them from), and for a run entry without
the poc's ``reliable`` verdict, the k-hat and ESS limits of :mod:`fvnce.diagnostics` on its
log Z weights: such files then read exactly as they did when they were written, rather than
showing no verdict at all."""

from __future__ import annotations

from typing import Any

from ..criteria import (AUROC_MARGIN_MIN, ESS_FRACTION_MIN, KHAT_MAX, NO_NOISE_TERM, SE_FACTOR, VAE_RUN,
                        find_vae)
from ..diagnostics import weights_reliable
from .cells import ll_cell, rule_label
from .html import DASH, as_dict
from .load import RunFiles, finite

__all__ = ["config_text", "is_unreliable", "ll_kind", "log_z_diagnostics", "noise_term_diagnostics",
           "poc_criteria", "reference_vae", "run_ll_cell"]


def poc_criteria(summary: dict) -> dict:
    """Thresholds the poc used (summary.json ``criteria``), with the defaults of
    :mod:`fvnce.criteria` for older files."""
    c = as_dict(summary.get("criteria"))
    no_noise = c.get("no_noise_term")
    return {"auroc_margin_min": finite(c.get("auroc_margin_min")) or AUROC_MARGIN_MIN,
            "se_factor": finite(c.get("se_factor")) or SE_FACTOR,
            "khat_max": finite(c.get("khat_max")) or KHAT_MAX,
            "ess_fraction_min": finite(c.get("ess_fraction_min")) or ESS_FRACTION_MIN,
            "reference": c.get("reference") or VAE_RUN,
            "no_noise_term": tuple(no_noise) if isinstance(no_noise, list) else NO_NOISE_TERM}


def reference_vae(runs: list[dict], criteria: dict) -> dict | None:
    """The VAE run the FVNCE runs are compared with (``criteria["reference"]``)."""
    return find_vae(runs, criteria["reference"])


def config_text(r: dict) -> str:
    """``fvnce · power (alpha=1.5) · noise: kde · model: tilted_vae``."""
    bits = [str(r.get("objective") or DASH)]
    if r.get("rule"):
        bits.append(rule_label(r.get("rule"), r.get("rule_params")))
    if r.get("noise"):
        bits.append(f"noise: {r['noise']}")
    if r.get("model"):
        bits.append(f"model: {r['model']}")
    return " · ".join(bits)


def log_z_diagnostics(r: dict, run: RunFiles | None) -> dict:
    """Diagnostics of the run's log Z estimate: from summary.json, else from evaluation.json."""
    lz = as_dict(r.get("log_z"))
    return lz or as_dict(as_dict(run.evaluation if run is not None else None).get("log_z"))


def noise_term_diagnostics(r: dict, run: RunFiles | None, criteria: dict) -> dict:
    """Diagnostics of the noise-side weights; none for objectives without a noise side
    (``criteria["no_noise_term"]``)."""
    if r.get("objective") in criteria["no_noise_term"]:
        return {}
    nt = as_dict(r.get("noise_term"))
    return nt or as_dict(as_dict(run.evaluation if run is not None else None).get("noise_term"))


def run_ll_cell(value: Any, r: dict, run: RunFiles | None) -> str:
    """Log-likelihood cell of a summary entry: marked unreliable when the poc marked it so."""
    lz = log_z_diagnostics(r, run)
    rel = r.get("reliable") if isinstance(r.get("reliable"), bool) else lz.get("reliable")
    return ll_cell(value, ll_kind(r, run), lz.get("ess_fraction"), lz.get("khat"), rel)


def is_unreliable(r: dict, run: RunFiles | None) -> bool:
    """Whether the poc found ``r``'s log-likelihood unreliable: its status ``unreliable``, or
    ``reliable`` false on an ``ok`` or ``degraded`` run; for an entry without ``reliable``
    (older files), the k-hat and ESS of its log Z weights."""
    if r.get("status") == "unreliable":
        return True
    if r.get("status") not in ("ok", "degraded"):
        return False
    if isinstance(r.get("reliable"), bool):
        return not r["reliable"]
    lz = log_z_diagnostics(r, run)
    return bool(lz) and weights_reliable(lz.get("khat"), lz.get("ess_fraction"), lz.get("reliable")) is False


def ll_kind(r: dict, run: RunFiles | None) -> Any:
    """``estimate`` or ``iwae_bound``: what kind of figure ``r``'s log-likelihood is."""
    kind = as_dict(r.get("metrics")).get("log_likelihood_kind")
    if kind is None and run is not None:
        kind = as_dict(run.evaluation).get("log_likelihood_kind")
    return kind
