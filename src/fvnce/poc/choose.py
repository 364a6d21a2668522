"""The poc's recommendation, chosen on validation data only: among the eligible runs (status
``ok``, reliable log-likelihood) the one of highest validation AUROC with labels, of
highest validation log-likelihood without (:func:`recommend`); without labels, when the
poc trained both kinds, the union of the best joint model and the best one-component
diagonal mixture (:func:`union_members`, :func:`union_recommendation`)."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from ..criteria import SE_FACTOR, find_vae
from ..diagnostics import finite
from .assess import auroc_se, combined_se, is_reliable

__all__ = ["LABEL_FREE", "LABEL_FREE_UNION", "UNION_RUN", "UnionChoice", "exclusion", "format_value", "recommend",
           "union_members", "union_recommendation"]

#: the criterion without anomaly labels, and why (fvnce.poc.choose.recommend)
LABEL_FREE = ("highest validation log-likelihood, among runs whose estimate is reliable (the data has no "
              "anomaly labels, so the choice uses none)")


#: without labels, the recommendation is a union of two runs when the poc has both kinds
#: (fvnce.runs.union; measured on ADBench, docs/benchmarks.md, "ADBench")
UNION_RUN = "union"
LABEL_FREE_UNION = ("without anomaly labels: the union of the run that models the features jointly with the highest "
                    "reliable validation log-likelihood and the one-component diagonal mixture (independent "
                    "features) with the highest; an alarm when either finds a row extreme")


def _crit(has_labels: bool) -> tuple[str, str]:
    return ("auroc", "highest validation AUROC") if has_labels else ("log_likelihood", LABEL_FREE)


def format_value(key: str, v: Any) -> str:
    v = finite(v)
    if v is None:
        return "n/a"
    return f"{v:.4f}" if key == "auroc" else f"{v:.2f} nats"


def exclusion(r: dict, key: str) -> str | None:
    """Why ``r`` cannot be recommended (None if it can)."""
    status = r.get("status")
    if status == "unreliable" or (status == "ok" and not is_reliable(r)):
        return "unreliable log-likelihood"
    if status != "ok":
        return str(status or "unknown status")
    if finite((r.get("val_metrics") or {}).get(key)) is None:
        return f"no validation {'AUROC' if key == 'auroc' else 'log-likelihood'}"
    return None


def _rank(eligible: list[dict], has_labels: bool, counts: dict | None) -> tuple[list[dict], int]:
    """Eligible runs best first, and how many are within noise of the best.

    Without labels: by validation log-likelihood (``n_lead`` 1). With labels: by validation
    AUROC (log-likelihood breaks exact ties); ``n_lead`` counts the runs whose AUROC is within
    SE_FACTOR * sqrt(se_best^2 + se^2) (Hanley & McNeil) of the best, which the reason names.
    Runs within noise are not re-ranked by log-likelihood: on ADBench (docs/benchmarks.md,
    "ADBench") that tie-break picked the better density and the worse detector (wbc,
    pima, cardiotocography), while the point AUROC remains the best estimate there is."""
    ll = lambda r: finite(r["val_metrics"].get("log_likelihood"))  # noqa: E731
    auc = lambda r: finite(r["val_metrics"].get("auroc"))  # noqa: E731
    if not has_labels:
        return sorted(eligible, key=lambda r: -ll(r)), 1
    ranked = sorted(eligible, key=lambda r: (auc(r), ll(r) is not None, ll(r) or 0.0), reverse=True)
    best = ranked[0]
    se_best = auroc_se(best, counts)

    def tied(r: dict) -> bool:
        se = combined_se(se_best, auroc_se(r, counts))
        return auc(best) - auc(r) <= (SE_FACTOR * se if se is not None else 0.0)

    return ranked, sum(1 for r in ranked if tied(r))


def _reason(ranked: list[dict], n_lead: int, key: str, has_labels: bool) -> str:
    """One sentence: the run, the criterion, its value and the runner-up."""
    w, n = ranked[0], len(ranked)
    tail = "; the choice used validation data only."
    val = lambda r, k=key: format_value(k, r["val_metrics"].get(k))  # noqa: E731
    what = "validation AUROC" if key == "auroc" else "validation log-likelihood"
    if n == 1:
        return (f"{w['name']} is recommended because it is the only eligible run, with {what} "
                f"{val(w)}; no other run was eligible{tail}")
    r = ranked[1]
    if has_labels and val(w) == val(r):  # equal as shown: say what decided
        tie = (f", equal to four decimals; the validation log-likelihood decided: "
               f"{val(w, 'log_likelihood')} against {val(r, 'log_likelihood')}")
    else:
        tie = ""
    if has_labels and n_lead > 1:
        return (f"{w['name']} is recommended because it has the highest {what} ({val(w)}) of the "
                f"{n} eligible runs, ahead of {r['name']} ({val(r)}{tie}); {n_lead - 1} other run"
                f"{'s are' if n_lead > 2 else ' is'} within noise of it ({SE_FACTOR:g} standard errors), "
                f"which these validation rows cannot separate{tail}")
    return (f"{w['name']} is recommended because it has the highest {what} ({val(w)}) of the "
            f"{n} eligible runs, ahead of {r['name']} ({val(r)}){tail}")


def _vae_statement(runs: list[dict], vae: dict, excluded: dict, key: str) -> str | None:
    """Plain words for the case where the VAE is recommended over every FVNCE run."""
    fv = [r for r in runs if r.get("objective") == "fvnce"]
    if not fv:
        return None
    phrase = "the VAE it started from" if any(r.get("started_from") == vae.get("name") for r in fv) \
        else "the VAE baseline"
    v = finite(vae["val_metrics"].get(key))
    higher = [r["name"] for r in fv if r["name"] in excluded and v is not None
              and (finite((r.get("val_metrics") or {}).get(key)) or -math.inf) > v]
    if not higher:
        return f"No FVNCE configuration beat {phrase} on validation data; the VAE is recommended."
    names = ", ".join(f"{n} ({excluded[n]})" for n in higher[:3]) + (" and others" if len(higher) > 3 else "")
    return (f"No eligible FVNCE configuration beat {phrase} on validation data (those that scored higher "
            f"were left out: {names}); the VAE is recommended.")


def recommend(runs: list[dict], has_labels: bool, counts: dict | None = None) -> dict | None:
    """The recommendation among ``runs`` (VAE included), chosen on validation data only.

    Eligible: status ``ok`` (not degraded, diverged or failed) and a reliable log-likelihood
    (:func:`fvnce.poc.assess.ll_reliability`). Criterion: validation AUROC when labels exist (:func:`_rank`);
    else validation log-likelihood. Returns None without runs, a record with ``run = None`` and the reason
    when none is eligible."""
    if not runs:
        return None
    key, criterion = _crit(has_labels)
    excluded = {r.get("name"): why for r in runs if (why := exclusion(r, key))}
    eligible = [r for r in runs if r.get("name") not in excluded]
    rec: dict[str, Any] = {"run": None, "criterion": criterion, "n_eligible": len(eligible),
                           "excluded": excluded, "vae_recommended": False, "vae_statement": None,
                           "runner_up": None, "value": None}
    if not eligible:
        why = "; ".join(f"{n}: {w}" for n, w in excluded.items())
        rec["reason"] = f"No run could be recommended because none is eligible ({why})."
        return rec
    ranked, n_lead = _rank(eligible, has_labels, counts)
    best = ranked[0]
    rec.update(run=best["name"], value=best["val_metrics"].get(key), reason=_reason(ranked, n_lead, key, has_labels))
    if len(ranked) > 1:
        rec["runner_up"] = {"run": ranked[1]["name"], "value": ranked[1]["val_metrics"].get(key)}
    vae = find_vae(runs)
    if vae is not None and vae is best:
        rec["vae_recommended"] = True
        rec["vae_statement"] = _vae_statement(runs, vae, excluded, key)
    return rec


class UnionChoice(NamedTuple):
    """The two members of a label-free union and how many eligible runs of each kind there were."""

    joint: dict
    independent: dict
    n_joint: int
    n_independent: int


def union_members(rec: dict | None, runs: list[dict]) -> UnionChoice | None:
    """Without labels: the members of the union that replaces the recommendation ``rec`` (the
    joint model, not a mixture, and the one-component diagonal mixture with the highest
    reliable validation log-likelihood each); None when nothing was recommended or the poc
    lacks either kind.  Why not the single run of highest log-likelihood: without labels no
    criterion tells which kind of anomaly the data holds, and each kind has a model that
    explains it away (docs/benchmarks.md, "ADBench"); the record keeps that run as
    ``single_choice``."""
    if rec is None or rec.get("run") is None:
        return None
    eligible = [r for r in runs if exclusion(r, "log_likelihood") is None]
    ll = lambda r: finite(r["val_metrics"].get("log_likelihood"))  # noqa: E731
    joint = sorted((r for r in eligible if r.get("model") != "gaussian_mixture"), key=ll, reverse=True)
    indep = sorted((r for r in eligible if r.get("model") == "gaussian_mixture" and r["name"].endswith("-mix1")),
                   key=ll, reverse=True)
    if not joint or not indep:
        return None
    return UnionChoice(joint[0], indep[0], len(joint), len(indep))


def union_recommendation(rec: dict, choice: UnionChoice, union: dict, alarm: dict, operating: dict | None,
                         curve: Any) -> dict:
    """The recommendation record of the union of ``choice``, replacing ``rec``: ``union`` is
    the union's own record (members, combination), ``alarm``, ``operating`` and ``curve`` its
    alarm threshold, operating point and alarm curve on the test rows."""
    a, b = choice.joint, choice.independent
    ll = lambda r: finite(r["val_metrics"].get("log_likelihood"))  # noqa: E731
    reason = (f"The union of {a['name']} and {b['name']} is recommended: {a['name']} has the highest validation "
              f"log-likelihood ({format_value('log_likelihood', ll(a))}) of the {choice.n_joint} eligible runs that "
              f"model the features jointly, {b['name']} the highest ({format_value('log_likelihood', ll(b))}) of the "
              f"{choice.n_independent} eligible one-component mixtures. Without labels nothing tells which kind of "
              "anomaly the data holds: rows extreme in one feature, which the mixture flags and the joint model can "
              "explain away, or rows that break the relations between features, which only the joint model sees. "
              "The union raises an alarm when either finds a row extreme; the choice used validation data only.")
    return {**rec, "run": UNION_RUN, "criterion": LABEL_FREE_UNION, "reason": reason, "value": None,
            "members": [a["name"], b["name"]], "single_choice": rec["run"], "runner_up": None, "vae_recommended": False,
            "vae_statement": None, "union": {"run_dir": f"runs/{UNION_RUN}", "members": union["members"],
                                             "combination": union["combination"], "alarm": alarm,
                                             "operating_point": operating, "alarm_curve": curve}}
