"""The poc's verdicts on its runs, after the grid has run: whether each log-likelihood can be
trusted (:func:`ll_reliability`), which runs ended clearly worse than the VAE
(:func:`degradation`), set on the summary entries by :func:`assess_runs`.  The thresholds
live in :mod:`fvnce.criteria`."""

from __future__ import annotations

import math

from ..criteria import AUROC_MARGIN_MIN, NO_NOISE_TERM, SE_FACTOR, auroc_standard_error, find_vae
from ..diagnostics import ESS_FRACTION_MIN, KHAT_MAX, finite, weights_reliable

__all__ = ["assess_runs", "auroc_se", "combined_se", "degradation", "is_reliable", "ll_reliability",
           "noise_term_warning", "weights_ok", "weights_text"]

# After the grid has run, every entry gets a verdict that the choice and the report rest on:
#
# * ``reliable`` (bool): is its log-likelihood trustworthy? A normalised model's is an IWAE
#   lower bound (reliable); an unnormalised model's rests on an importance-sampled log Z,
#   reliable only if the Pareto k-hat of its weights is at most KHAT_MAX and their effective
#   sample size fraction at least ESS_FRACTION_MIN (fvnce.diagnostics). Unreliable runs
#   never rank by log-likelihood and are never recommended.
# * status ``degraded``: an FVNCE run that ended clearly worse on validation data than the
#   VAE of the same poc (see :func:`degradation`).


def weights_ok(diag: dict) -> bool | None:
    """Are the importance weights of ``diag`` (``log_z`` or ``noise_term``) usable? Its
    ``reliable`` flag when present (any value, read as a truth value), else k-hat and ESS
    (:func:`fvnce.diagnostics.weights_reliable`); None when nothing is known (older files)."""
    ok = diag.get("reliable")
    return weights_reliable(diag.get("khat"), diag.get("ess_fraction"), None if ok is None else bool(ok))


def weights_text(diag: dict) -> str:
    """``Pareto k-hat 1.32 (limit 0.7) and effective sample size 0.01% (minimum 5%)``."""
    parts = []
    k, e = finite(diag.get("khat")), finite(diag.get("ess_fraction"))
    if k is not None:
        parts.append(f"Pareto k-hat {k:.2f} (limit {KHAT_MAX:g})")
    if e is not None:
        parts.append(f"effective sample size {100 * e:.2g}% (minimum {100 * ESS_FRACTION_MIN:g}%)")
    return " and ".join(parts) or "no diagnostics"


def ll_reliability(entry: dict) -> tuple[bool, str | None]:
    """Whether ``entry``'s log-likelihood can be trusted, and a warning sentence if not.

    Unreliable when its log Z estimate is (``log_z.reliable`` false; for older files
    without the flag, k-hat > KHAT_MAX or ESS fraction < ESS_FRACTION_MIN), when log Z
    carries no diagnostics at all, or when evaluation flagged a split's log-likelihood
    (``log_likelihood_reliable`` false). Normalised models (no log Z) give a lower bound:
    reliable unless a split is flagged."""
    name = entry.get("name")
    tail = "; it is not used for ranking and the run cannot be recommended."
    lz = entry.get("log_z")
    if isinstance(lz, dict):
        if not weights_ok(lz):
            return False, (f"The log-likelihood of {name} is unreliable: its log Z estimate rests on "
                           f"importance weights with {weights_text(lz)}{tail}")
    flagged = [split for split, key in (("validation", "val_metrics"), ("test", "metrics"))
               if (entry.get(key) or {}).get("log_likelihood_reliable") is False]
    if flagged:
        return False, (f"The log-likelihood of {name} is unreliable: evaluation flagged its "
                       f"{' and '.join(flagged)} estimate{tail}")
    return True, None


def noise_term_warning(entry: dict) -> str | None:
    """A sentence when the noise-side weights of a noise-contrastive run are unreliable."""
    nt = entry.get("noise_term")
    if not isinstance(nt, dict) or entry.get("objective") in NO_NOISE_TERM:
        return None
    if weights_ok(nt) is not False:
        return None
    return (f"The noise term of {entry.get('name')} rests on heavy-tailed importance weights, with "
            f"{weights_text(nt)}: training optimised a high-variance estimate of the objective.")


def combined_se(*ses: float | None) -> float | None:
    """sqrt(se1^2 + se2^2): the standard error of a difference, ignoring the (positive)
    correlation of two figures measured on the same rows, so it errs towards larger."""
    if any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses))


def auroc_se(entry: dict, counts: dict | None) -> float | None:
    """Standard error of ``entry``'s validation AUROC, from the validation class ``counts``."""
    counts = counts or {}
    return auroc_standard_error(entry["val_metrics"].get("auroc"), counts.get("anomaly"), counts.get("normal"))


def _vae_phrase(run: dict, vae: dict) -> str:
    if run.get("started_from") == vae.get("name"):
        return f"{vae.get('name')}, the VAE it started from"
    return f"the VAE baseline {vae.get('name')}"


def _auroc_drop(run: dict, vae: dict, counts: dict | None) -> str | None:
    a, b = finite(run["val_metrics"].get("auroc")), finite(vae["val_metrics"].get("auroc"))
    if a is None or b is None:
        return None
    se = combined_se(auroc_se(run, counts), auroc_se(vae, counts))
    margin = max(AUROC_MARGIN_MIN, SE_FACTOR * se) if se is not None else AUROC_MARGIN_MIN
    if b - a <= margin:
        return None
    how = (f"the larger of {AUROC_MARGIN_MIN:g} and {SE_FACTOR:g} standard errors of the difference "
           "(Hanley & McNeil 1982)" if se is not None else
           "the minimum margin; the class counts needed for a standard error are unknown")
    return (f"its validation AUROC {a:.4f} is {b - a:.4f} below the VAE's {b:.4f}, "
            f"more than the margin {margin:.4f} ({how})")


def _ll_drop(run: dict, vae: dict) -> str | None:
    if not (is_reliable(run) and is_reliable(vae)):
        return None
    a, b = finite(run["val_metrics"].get("log_likelihood")), finite(vae["val_metrics"].get("log_likelihood"))
    se = combined_se(finite(run["val_metrics"].get("log_likelihood_se")),
                     finite(vae["val_metrics"].get("log_likelihood_se")))
    if a is None or b is None or se is None:
        return None
    margin = SE_FACTOR * se
    if b - a <= margin:
        return None
    return (f"its validation log-likelihood {a:.2f} nats is {b - a:.2f} below the VAE's {b:.2f}, "
            f"more than the margin {margin:.2f} ({SE_FACTOR:g} standard errors of the difference)")


def degradation(run: dict, vae: dict, counts: dict | None = None) -> str | None:
    """A sentence saying why ``run`` ended clearly worse on validation than ``vae``, else None.

    "Clearly" means beyond noise, on either of two tests:

    * AUROC (when both have a validation AUROC): the VAE's exceeds the run's by more than
      max(AUROC_MARGIN_MIN, SE_FACTOR * sqrt(se_run^2 + se_vae^2)) = max(0.02, 2 SE), each SE
      from Hanley & McNeil (1982) with the validation class ``counts``
      ({"normal": n0, "anomaly": n1}); without counts the margin is 0.02.
    * log-likelihood, for a run that started from the VAE (when both are reliable and carry
      ``log_likelihood_se``, the standard error of the mean over validation rows): the VAE's
      exceeds the run's by more than SE_FACTOR * sqrt(se_run^2 + se_vae^2) nats.  A run that
      lost density it started with was damaged by its training; a run of another model
      family (the diagonal mixtures) has a lower log-likelihood by design, which says
      nothing about its training.

    Both standard errors of a difference ignore that the two models were scored on the same
    rows (a positive correlation), so they err towards larger: a run is called degraded only
    when the evidence is clear.
    """
    warm = run.get("started_from") == vae.get("name")
    drops = [d for d in (_auroc_drop(run, vae, counts), _ll_drop(run, vae) if warm else None) if d]
    if not drops:
        return None
    return f"{run.get('name')} ended clearly worse than {_vae_phrase(run, vae)}: " + ", and ".join(drops) + "."


def is_reliable(entry: dict) -> bool:
    """``entry["reliable"]`` as set by :func:`assess_runs`, else :func:`ll_reliability`."""
    rel = entry.get("reliable")
    return ll_reliability(entry)[0] if rel is None else bool(rel)


def assess_runs(runs: list[dict], counts: dict | None = None) -> None:
    """Set ``reliable``, ``warnings`` and, for degraded runs, ``status = "degraded"`` with its
    sentence in ``status_reason``, on the poc's summary entries (in place).

    ``counts`` = {"normal": n0, "anomaly": n1} of the validation split (None without labels).
    Failed and diverged runs keep their status and get ``reliable = None``."""
    for r in runs:
        r.setdefault("val_metrics", {})
        r.setdefault("metrics", {})
        r["warnings"] = []
        if r.get("status") not in ("ok", "degraded"):
            r["reliable"] = None
            continue
        r["reliable"], warning = ll_reliability(r)
        r["warnings"] += [w for w in (warning, noise_term_warning(r)) if w]
    vae = find_vae(runs)
    if vae is not None and vae.get("status") == "ok":
        for r in runs:
            if r is vae or r.get("objective") != "fvnce" or r.get("status") != "ok":
                continue
            why = degradation(r, vae, counts)
            if why:
                r["status"], r["status_reason"] = "degraded", why
    for r in runs:  # a run whose log-likelihood cannot be trusted is not "ok" either
        if r.get("status") == "ok" and r.get("reliable") is False:
            # reliable is False only from ll_reliability, whose sentence is always warnings[0]
            r["status"], r["status_reason"] = "unreliable", r["warnings"][0]

