"""The criteria behind the proof of concept's verdicts, in one leaf module (no torch).

The poc (:mod:`fvnce.poc`) applies them and writes them into ``summary.json`` under
``criteria`` (:func:`criteria_record`); the report (:mod:`fvnce.report`) reads them from
there and uses the values below only for a summary written before they were recorded.

* A run is **degraded** when its validation AUROC is below the VAE's by more than
  max(AUROC_MARGIN_MIN, SE_FACTOR x standard error of the difference) (each standard error
  from :func:`auroc_standard_error`); SE_FACTOR also sets the log-likelihood margin and
  what counts as a tie in the choice.
* A log-likelihood is **unreliable** when the importance weights behind its log Z have a
  Pareto k-hat above KHAT_MAX or an effective sample size fraction below ESS_FRACTION_MIN
  (:mod:`fvnce.diagnostics`).
* The **reference** is the poc's VAE run (VAE_RUN), which every FVNCE run starts from.
* Objectives in NO_NOISE_TERM have no noise side: their noise-term diagnostics describe no
  training term.
"""

from __future__ import annotations

import math
from typing import Any

from .diagnostics import ESS_FRACTION_MIN, KHAT_MAX, finite

__all__ = ["AUROC_MARGIN_MIN", "ESS_FRACTION_MIN", "KHAT_MAX", "NO_NOISE_TERM", "SE_FACTOR", "VAE_RUN",
           "auroc_standard_error", "criteria_record", "find_vae"]

#: the VAE every FVNCE run of a poc starts from (and is compared with)
VAE_RUN = "elbo-vae"
#: the smallest validation AUROC drop below the VAE's that makes a run "degraded"
AUROC_MARGIN_MIN = 0.02
#: how many standard errors of a difference count as "clearly" different
SE_FACTOR = 2.0
#: objectives without a noise side: their runs' noise-term diagnostics describe no training term
NO_NOISE_TERM = ("elbo", "iwae")


def criteria_record() -> dict[str, Any]:
    """The criteria as ``summary.json`` records them (``criteria``)."""
    return {"auroc_margin_min": AUROC_MARGIN_MIN, "se_factor": SE_FACTOR, "khat_max": KHAT_MAX,
            "ess_fraction_min": ESS_FRACTION_MIN, "reference": VAE_RUN, "no_noise_term": list(NO_NOISE_TERM)}


def find_vae(runs: list[dict], name: str = VAE_RUN) -> dict | None:
    """The poc's VAE run among summary entries: the one called ``name``, else the first ``elbo`` run."""
    return (next((r for r in runs if r.get("name") == name), None)
            or next((r for r in runs if r.get("objective") == "elbo"), None))


def auroc_standard_error(auroc: Any, n_anomaly: Any, n_normal: Any) -> float | None:
    """Standard error of an AUROC from ``n_anomaly`` anomalous and ``n_normal`` normal items
    (Hanley & McNeil 1982, Radiology 143:29, eq. 2, with Q1 = A/(2-A), Q2 = 2A^2/(1+A)).
    None when the AUROC or either count is unknown."""
    a, n1, n0 = finite(auroc), finite(n_anomaly), finite(n_normal)
    if a is None or not n1 or not n0 or n1 < 1 or n0 < 1:
        return None
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n1 - 1.0) * (q1 - a * a) + (n0 - 1.0) * (q2 - a * a)) / (n1 * n0)
    return math.sqrt(max(var, 0.0))
