"""The proof of concept: every noise candidate x every FVNCE rule, plus baselines, on one
data split; evaluated, compared, and one configuration recommended on validation data.

Output directory::

    DIR/runs/<name>/     one run directory per trained configuration
    DIR/summary.json     runs, baselines, metrics, the recommendation and its criterion
    DIR/report.html      the self-contained report (fvnce.report)

Each run's entry in ``summary.json`` has a ``status``: ``ok``; ``degraded`` (an FVNCE run
that ended clearly worse on validation data than the poc's VAE ``elbo-vae``, beyond
statistical noise: :func:`degradation`; the sentence with the numbers is in
``status_reason``); ``unreliable`` (its log-likelihood rests on importance weights with
Pareto k-hat > 0.7 or ESS < 5 %; the sentence is in ``status_reason``); ``diverged`` or
``failed`` (with ``error``). ``reliable`` says whether
its log-likelihood can be trusted (:func:`ll_reliability`: k-hat and ESS of the
importance weights behind log Z), ``warnings`` holds sentences for the report. The
recommendation (:func:`_choose`) is taken among the ``ok`` and reliable runs, the VAE
included, on validation data only; without anomaly labels it is the union
(``runs/union``, :func:`_union_choice`) of the best joint model and the best one-component
mixture when the poc trained both.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


from . import __version__
from .checkpoint import atomic_write_json
from .data import DataSpec, load_dataset
from .diagnostics import ESS_FRACTION_MIN, KHAT_MAX, finite, weights_reliable
from .errors import ConfigError, FvnceError
from .evaluate import check_alarm_rate
from .image_plan import poc_plan
from .noise import make_noise
from .rules import scoring_rule
from .runs import BASE_NOISE, RunConfig, _default_noise, check_model_sizes, evaluate_run, train_run
from .runs.config import check_noise_name
from .runs.output import check_output, replacing
from .train import DivergenceError, TrainConfig, TrainingInterrupted

__all__ = ["BUDGETS", "PocConfig", "assess_runs", "auroc_standard_error", "degradation", "ll_reliability",
           "parse_rule", "run_poc"]

#: training steps per run for each budget preset
BUDGETS = {"quick": 150, "default": 800, "long": 4000}
METRIC_KEYS = ("log_likelihood", "log_likelihood_se", "log_likelihood_reliable", "noise_accuracy", "auroc",
               "auprc", "fpr_at_95_tpr")
#: the VAE every FVNCE run of a poc starts from (and is compared with)
VAE_RUN = "elbo-vae"
#: a run is "degraded" when its validation AUROC is below the VAE's by more than
#: max(AUROC_MARGIN_MIN, SE_FACTOR x standard error of the difference); SE_FACTOR also sets
#: the log-likelihood margin and what counts as a tie in the choice
AUROC_MARGIN_MIN = 0.02
SE_FACTOR = 2.0


def parse_rule(text: str) -> tuple[str, dict]:
    """``kl`` | ``power:1.5`` | ``shifted_log:2`` -> (name, params), validated."""
    name, _, value = text.strip().partition(":")
    params: dict[str, float] = {}
    if value:
        key = {"power": "alpha", "shifted_log": "c", "logistic": "nu"}.get(name)
        if key is None:
            raise ConfigError(f"rule {name!r} takes no parameter (got {text!r})")
        try:
            params[key] = float(value)
        except ValueError:
            raise ConfigError(f"rule parameter in {text!r} is not a number") from None
    try:
        rule = scoring_rule(name, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bad = rule.convexity_violations()
    if bad:
        raise ConfigError(f"rule {text!r} cannot be used by fvnce: {bad[0]}")
    return name, params


def _rule_label(name: str, params: dict) -> str:
    return name + "".join(f"{v:g}" for v in params.values())


#: model options of the energy-tilted model that the VAE baseline does not take
TILT_OPTIONS = ("tilt_bound", "freeze_base", "tilt_hidden", "tilt_channels")


def default_noises(binary: bool, tilted: bool = True) -> list[str]:
    """The poc's noise candidates: the VAE's own samples (``base``: the closest noise, an
    exact ratio, reliable log Z), a simple fitted noise, and near-miss perturbations (kde).
    docs/benchmarks.md has the measurements behind the choice."""
    simple = ["marginals", "kde"] if binary else ["full_gaussian", "kde"]
    return ([BASE_NOISE] if tilted else []) + simple + ([] if tilted else ["gmm"])


#: default component counts of the poc's diagonal mixtures: 1 (independent features) and 4
MIXTURES = (1, 4)


def mixture_plan(config: "PocConfig", dataset) -> list[int]:
    """Component counts of the diagonal Gaussian mixtures (``gaussian_mixture``) that the
    poc trains beside the VAE family: on continuous tabular data with ``model="auto"``.

    Why: a VAE (like a full-covariance Gaussian) learns the correlations of the features
    and then explains away a row that is extreme along them; a mixture of diagonal
    Gaussians does not.  On ADBench wbc and cardiotocography that decides detection
    (validation-chosen FVNCE 0.85 / 0.66 test AUROC without the mixtures, IsolationForest
    0.98 / 0.81; docs/benchmarks.md, "ADBench").  They are small (seconds per run)."""
    if config.model != "auto" or dataset.binary or dataset.image_shape is not None:
        return []
    return list(dict.fromkeys(config.mixtures))


@dataclass
class PocConfig:
    data: DataSpec = field(default_factory=lambda: DataSpec(source="digits", normal="0"))
    noises: list[str] | None = None
    rules: list[str] = field(default_factory=lambda: ["kl", "power:1.5"])
    budget: str | int = "default"
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    objective_options: dict[str, Any] = field(default_factory=lambda: {"exp_mode": "linear", "tau": 10.0})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    baselines: bool = True
    eval_k: int = 32
    #: target false-alarm rate of every run's alarm threshold (fvnce.runs.alarm)
    alarm_rate: float = 0.01
    #: component counts of the diagonal Gaussian mixtures trained beside the VAE family on
    #: continuous tabular data (``model="auto"`` only; empty: none). See :func:`mixture_plan`.
    mixtures: tuple[int, ...] = MIXTURES
    #: your own VAE (fvnce.user_vae.vae_spec): the VAE baseline as it is, the base of every
    #: tilted run and of the ``base`` noise; ``vae_finetune`` > 0 adds it fine-tuned by the ELBO
    vae: dict[str, Any] | None = None
    vae_finetune: int = 0
    #: fractions of the training rows the recommendation is retrained on (fvnce.learning_curve);
    #: None: by the data (fvnce.image_plan.poc_plan)
    learning_curve: tuple[float, ...] | None = None
    #: {cost_false_alarm, cost_miss, anomaly_share}: the recommendation's cost (fvnce.costs)
    costs: dict[str, Any] | None = None

    def steps(self) -> int:
        if isinstance(self.budget, int) and not isinstance(self.budget, bool):
            if self.budget < 1:
                raise ConfigError(f"--budget must be a positive number of steps, got {self.budget}")
            return self.budget
        if self.budget not in BUDGETS:
            raise ConfigError(f"unknown budget {self.budget!r}; use {', '.join(BUDGETS)} or a number of steps")
        return BUDGETS[self.budget]

    def validate(self) -> list[tuple[str, dict]]:
        self.steps()
        if not self.rules:
            raise ConfigError("--rules is empty")
        rules = [parse_rule(r) for r in self.rules]
        for n in self.noises or []:
            check_noise_name(n, allow_auto=False)
        check_model_sizes(self.model_options)
        check_alarm_rate(self.alarm_rate, "--alarm-rate")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.mixtures):
            raise ConfigError(f"--mixtures must be positive component counts, got {list(self.mixtures)}")
        self._validate_extras()
        return rules

    def _validate_extras(self) -> None:
        """Your own VAE, the learning curve, the costs."""
        from .costs import check_costs

        if self.vae is not None and self.model != "auto":
            raise ConfigError(f"--vae sets the poc's models (your VAE and tilted models over it); --model "
                              f"{self.model} cannot be combined with it")
        ft = self.vae_finetune
        if isinstance(ft, bool) or not isinstance(ft, int) or ft < 0:
            raise ConfigError(f"--vae-finetune must be a number of steps >= 0, got {ft!r}")
        if ft and self.vae is None:
            raise ConfigError("--vae-finetune needs --vae")
        if any(not 0 < f < 1 for f in self.learning_curve or ()):
            raise ConfigError(f"--learning-curve fractions must lie strictly between 0 and 1, got "
                              f"{list(self.learning_curve)}")
        if self.costs is not None:
            check_costs(self.costs.get("cost_false_alarm"), self.costs.get("cost_miss"),
                        self.costs.get("anomaly_share"))


def _metrics(ev: dict) -> tuple[dict, dict]:
    test = {k: ev.get(k) for k in METRIC_KEYS}
    val = {k: (ev.get("val") or {}).get(k) for k in METRIC_KEYS}
    return test, val


# --------------------------------------------------------------------------- assessment
#
# After the grid has run, every entry gets a verdict that the choice and the report rest on:
#
# * ``reliable`` (bool): is its log-likelihood trustworthy? A normalised model's is an IWAE
#   lower bound (reliable); an unnormalised model's rests on an importance-sampled log Z,
#   reliable only if the Pareto k-hat of its weights is at most KHAT_MAX and their effective
#   sample size fraction at least ESS_FRACTION_MIN (fvnce.diagnostics). Unreliable runs
#   never rank by log-likelihood and are never recommended.
# * status ``degraded``: an FVNCE run that ended clearly worse on validation data than the
#   VAE of the same poc (see :func:`degradation`).


def _weights_ok(diag: dict) -> bool | None:
    """Are the importance weights of ``diag`` (``log_z`` or ``noise_term``) usable? Its
    ``reliable`` flag when present (any value, read as a truth value), else k-hat and ESS
    (:func:`fvnce.diagnostics.weights_reliable`); None when nothing is known (older files)."""
    ok = diag.get("reliable")
    return weights_reliable(diag.get("khat"), diag.get("ess_fraction"), None if ok is None else bool(ok))


def _weights_text(diag: dict) -> str:
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
        if not _weights_ok(lz):
            return False, (f"The log-likelihood of {name} is unreliable: its log Z estimate rests on "
                           f"importance weights with {_weights_text(lz)}{tail}")
    flagged = [split for split, key in (("validation", "val_metrics"), ("test", "metrics"))
               if (entry.get(key) or {}).get("log_likelihood_reliable") is False]
    if flagged:
        return False, (f"The log-likelihood of {name} is unreliable: evaluation flagged its "
                       f"{' and '.join(flagged)} estimate{tail}")
    return True, None


#: objectives without a noise side: their runs' noise-term diagnostics describe no training term
NO_NOISE_TERM = ("elbo", "iwae")


def _noise_term_warning(entry: dict) -> str | None:
    """A sentence when the noise-side weights of a noise-contrastive run are unreliable."""
    nt = entry.get("noise_term")
    if not isinstance(nt, dict) or entry.get("objective") in NO_NOISE_TERM:
        return None
    if _weights_ok(nt) is not False:
        return None
    return (f"The noise term of {entry.get('name')} rests on heavy-tailed importance weights, with "
            f"{_weights_text(nt)}: training optimised a high-variance estimate of the objective.")


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


def _combined_se(*ses: float | None) -> float | None:
    """sqrt(se1^2 + se2^2): the standard error of a difference, ignoring the (positive)
    correlation of two figures measured on the same rows, so it errs towards larger."""
    if any(s is None for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses))


def _auroc_se(entry: dict, counts: dict | None) -> float | None:
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
    se = _combined_se(_auroc_se(run, counts), _auroc_se(vae, counts))
    margin = max(AUROC_MARGIN_MIN, SE_FACTOR * se) if se is not None else AUROC_MARGIN_MIN
    if b - a <= margin:
        return None
    how = (f"the larger of {AUROC_MARGIN_MIN:g} and {SE_FACTOR:g} standard errors of the difference "
           "(Hanley & McNeil 1982)" if se is not None else
           "the minimum margin; the class counts needed for a standard error are unknown")
    return (f"its validation AUROC {a:.4f} is {b - a:.4f} below the VAE's {b:.4f}, "
            f"more than the margin {margin:.4f} ({how})")


def _ll_drop(run: dict, vae: dict) -> str | None:
    if not (_is_reliable(run) and _is_reliable(vae)):
        return None
    a, b = finite(run["val_metrics"].get("log_likelihood")), finite(vae["val_metrics"].get("log_likelihood"))
    se = _combined_se(finite(run["val_metrics"].get("log_likelihood_se")),
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


def _is_reliable(entry: dict) -> bool:
    rel = entry.get("reliable")
    return ll_reliability(entry)[0] if rel is None else bool(rel)


def find_vae(runs: list[dict]) -> dict | None:
    """The poc's VAE run (named ``elbo-vae``; else the first ``elbo`` run)."""
    return (next((r for r in runs if r.get("name") == VAE_RUN), None)
            or next((r for r in runs if r.get("objective") == "elbo"), None))


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
        r["warnings"] += [w for w in (warning, _noise_term_warning(r)) if w]
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


# --------------------------------------------------------------------------- the choice


#: the criterion without anomaly labels, and why (fvnce.poc._choose)
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


def _fmt(key: str, v: Any) -> str:
    v = finite(v)
    if v is None:
        return "n/a"
    return f"{v:.4f}" if key == "auroc" else f"{v:.2f} nats"


def _exclusion(r: dict, key: str) -> str | None:
    """Why ``r`` cannot be recommended (None if it can)."""
    status = r.get("status")
    if status == "unreliable" or (status == "ok" and not _is_reliable(r)):
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
    se_best = _auroc_se(best, counts)

    def tied(r: dict) -> bool:
        se = _combined_se(se_best, _auroc_se(r, counts))
        return auc(best) - auc(r) <= (SE_FACTOR * se if se is not None else 0.0)

    return ranked, sum(1 for r in ranked if tied(r))


def _reason(ranked: list[dict], n_lead: int, key: str, has_labels: bool) -> str:
    """One sentence: the run, the criterion, its value and the runner-up."""
    w, n = ranked[0], len(ranked)
    tail = "; the choice used validation data only."
    val = lambda r, k=key: _fmt(k, r["val_metrics"].get(k))  # noqa: E731
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


def _choose(runs: list[dict], has_labels: bool, counts: dict | None = None) -> dict | None:
    """The recommendation among ``runs`` (VAE included), chosen on validation data only.

    Eligible: status ``ok`` (not degraded, diverged or failed) and a reliable log-likelihood
    (:func:`ll_reliability`). Criterion: validation AUROC when labels exist (:func:`_rank`);
    else validation log-likelihood. Returns None without runs, a record with ``run = None`` and the reason
    when none is eligible."""
    if not runs:
        return None
    key, criterion = _crit(has_labels)
    excluded = {r.get("name"): why for r in runs if (why := _exclusion(r, key))}
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


def _union_choice(rec: dict | None, runs: list[dict], dataset, out_dir: Path, config: "PocConfig", log) -> dict | None:
    """Without labels: the recommendation becomes the union (:mod:`fvnce.runs.union`) of the
    joint model (not a mixture) and the one-component diagonal mixture with the highest
    reliable validation log-likelihood each, written to ``runs/union``; ``rec`` unchanged
    when the poc lacks either kind or the union cannot be built.  Why not the single run
    of highest log-likelihood: without labels no criterion tells which kind of anomaly the
    data holds, and each kind has a model that explains it away (docs/benchmarks.md,
    "ADBench"); ``single_choice`` keeps that run."""
    import shutil

    shutil.rmtree(out_dir / "runs" / UNION_RUN, ignore_errors=True)  # an earlier poc's union in this folder
    if rec is None or rec.get("run") is None:
        return rec
    eligible = [r for r in runs if _exclusion(r, "log_likelihood") is None]
    ll = lambda r: finite(r["val_metrics"].get("log_likelihood"))  # noqa: E731
    joint = sorted((r for r in eligible if r.get("model") != "gaussian_mixture"), key=ll, reverse=True)
    indep = sorted((r for r in eligible if r.get("model") == "gaussian_mixture" and r["name"].endswith("-mix1")),
                   key=ll, reverse=True)
    if not joint or not indep:
        return rec
    from .runs import create_union

    a, b = joint[0], indep[0]
    try:
        made = create_union(out_dir / "runs" / UNION_RUN, [out_dir / a["run_dir"], out_dir / b["run_dir"]], dataset,
                            config.alarm_rate, rows=dataset.test)
    except FvnceError as exc:
        log(f"fvnce: warning: the union of {a['name']} and {b['name']} could not be built ({exc}); "
            f"recommending the single run {rec['run']}")
        return rec
    from . import evaluate as ev
    from .runs.evaluation import ALARM_KEYS

    alarm = {k: made["alarm"].get(k) for k in ALARM_KEYS}  # as a run's evaluation.json repeats it
    labels = None if dataset.test_labels is None else dataset.test_labels.numpy()
    operating = ev.operating_point(made["scores"], labels, alarm["threshold"], calibration=made["alarm"]) \
        if alarm.get("threshold") is not None and len(made["scores"]) else None
    reason = (f"The union of {a['name']} and {b['name']} is recommended: {a['name']} has the highest validation "
              f"log-likelihood ({_fmt('log_likelihood', ll(a))}) of the {len(joint)} eligible runs that model the "
              f"features jointly, {b['name']} the highest ({_fmt('log_likelihood', ll(b))}) of the {len(indep)} "
              "eligible one-component mixtures. Without labels nothing tells which kind of anomaly the data holds: "
              "rows extreme in one feature, which the mixture flags and the joint model can explain away, or rows "
              "that break the relations between features, which only the joint model sees. The union raises an "
              "alarm when either finds a row extreme; the choice used validation data only.")
    return {**rec, "run": UNION_RUN, "criterion": LABEL_FREE_UNION, "reason": reason, "value": None,
            "members": [a["name"], b["name"]], "single_choice": rec["run"], "runner_up": None, "vae_recommended": False,
            "vae_statement": None, "union": {"run_dir": f"runs/{UNION_RUN}", "members": made["union"]["members"],
                                             "combination": made["union"]["combination"], "alarm": alarm,
                                             "operating_point": operating,
                                             "alarm_curve": ev.alarm_curve(made["scores"], labels)}}


def run_poc(config: PocConfig, out_dir: str | Path, *, log: Callable[[str], None] = lambda m: None,
            progress: bool = True, workers: int = 1, overwrite: bool = False) -> dict:
    """Train, evaluate and compare; write ``summary.json`` and ``report.html``.

    ``workers > 1`` trains the FVNCE runs in that many processes (spawned; each with
    ``cores // workers`` torch threads) once the VAE they start from has finished; the
    runs and their seeds are the same as with one worker.  An ``out_dir`` that holds a poc
    or a run is refused unless ``overwrite``; then the new poc is built beside it and
    swapped in at the end (:mod:`fvnce.runs.output`: an error or Ctrl-C leaves the old one
    as it was)."""
    t0 = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers!r}")
    rules = config.validate()
    out_dir = Path(out_dir)
    replace = check_output(out_dir, overwrite)
    try:
        with replacing(out_dir, replace) as work:
            return _run_poc_into(config, rules, work, out_dir, t0, log, progress, workers)
    except TrainingInterrupted as exc:
        if not replace:
            raise
        raise TrainingInterrupted(f"{str(exc).split(';')[0]}; the new poc was discarded and {out_dir} was left as it "
                                  "was", exc.step, None) from None


def _run_poc_into(config: PocConfig, rules: list, out_dir: Path, final: Path, t0: float, log, progress: bool,
                  workers: int) -> dict:
    """:func:`run_poc` into the folder ``out_dir``, which becomes ``final`` when it is done."""
    dataset = load_dataset(config.data)
    for note in dataset.notes:
        log(f"fvnce: note: {note}")
    config = poc_plan(config, dataset, log)  # noises, steps, learning curve left to the data
    has_labels = dataset.val_labels is not None and bool(dataset.val_labels.any())
    noises = config.noises or default_noises(dataset.binary, tilted=config.model in ("auto", "tilted_vae"))
    steps = config.steps()
    if config.vae is not None:  # your own VAE: every mismatch with the data is an input error, before anything is written
        from .user_vae import check_user_vae
        check_user_vae(config.vae, dataset)
    fitted: dict[str, Any] = {}
    for n in noises:  # user plug-ins are checked before anything is written: a bad one is an input error
        if ":" in n:
            fitted[n] = make_noise(n, dataset.train, seed=config.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    # The VAE of the same architecture is trained first: it is a baseline, and every
    # FVNCE run starts from its weights (an energy-tilted VAE whose tilt starts at zero),
    # so the noise-contrastive rules spend their budget on what the VAE got wrong.
    base_dir = out_dir / "runs" / VAE_RUN
    vae_options = {k: v for k, v in config.model_options.items() if k not in TILT_OPTIONS}
    fitted_noises = [n for n in noises if n != BASE_NOISE] or [_default_noise(dataset.binary)]
    plan: list[tuple[str, RunConfig]] = [(VAE_RUN, RunConfig(
        data=config.data, objective="elbo", model="vae" if config.model == "auto" else config.model,
        model_options=vae_options, noise=fitted_noises[0], train=_train_cfg(config.train, steps),
        eval_k=config.eval_k, alarm_rate=config.alarm_rate, vae=config.vae))]
    if config.vae is not None and config.vae_finetune:  # your VAE fine-tuned by the ELBO: an extra run
        plan.append((VAE_FINETUNED_RUN, copy.deepcopy(plan[0][1])))
        plan[-1][1].train = _train_cfg(config.train, config.vae_finetune)

    def add_fvnce(noise_name: str, model: str, model_options: dict, init_from: str | None, suffix: str = "") -> None:
        """One FVNCE run per rule against ``noise_name``, appended to the plan."""
        for rule_name, params in rules:
            name = f"fvnce-{_rule_label(rule_name, params)}-{noise_name.replace(':', '.')}{suffix}"
            plan.append((name, RunConfig(
                data=config.data, objective="fvnce",
                objective_options={"rule": rule_name, **params, **config.objective_options},
                model=model, model_options=dict(model_options), noise=noise_name,
                train=_train_cfg(config.train, steps), eval_k=config.eval_k, init_from=init_from,
                alarm_rate=config.alarm_rate, vae=None if model == "gaussian_mixture" else config.vae)))

    warm = config.model == "auto"
    for noise_name in noises:
        add_fvnce(noise_name, config.model, config.model_options, str(base_dir) if warm else None)
    mixtures = mixture_plan(config, dataset)
    for k in mixtures:  # trained from scratch against the first fitted noise
        add_fvnce(fitted_noises[0], "gaussian_mixture", {"components": k}, None, f"-mix{k}")

    runs: list[dict] = []
    bar = _bar(len(plan), progress)
    pool = None
    if workers > 1 and len(plan) > 2:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(threads,))
    try:
        def finish(entry: dict) -> None:
            log(f"fvnce: {entry['name']}: {entry['status']}" + _brief(entry))
            runs.append(entry)
            if bar is not None:
                bar.update(1)

        # the VAE first (the FVNCE runs start from it), then the rest: here or in the pool
        first = _run_one(plan[0][0], plan[0][1], dataset, fitted, out_dir, log)
        if first["status"] == "failed":
            for _, other in plan:
                other.init_from = None  # no base to start from: FVNCE runs start fresh
        finish(first)
        if pool is not None:
            futures = [pool.submit(_pool_run, name, rc, config.data, str(out_dir)) for name, rc in plan[1:]]
            for fut in futures:
                finish(fut.result())
        else:
            for name, rc in plan[1:]:
                finish(_run_one(name, rc, dataset, fitted, out_dir, log))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if bar is not None:
        bar.close()

    counts = _val_counts(dataset) if has_labels else None
    assess_runs(runs, counts)
    for r in runs:
        for line in ([r["status_reason"]] if r.get("status") == "degraded" else []) + r["warnings"]:
            log(f"fvnce: {r['name']}: {line}")
    recommended = _choose(runs, has_labels, counts)
    if not has_labels:
        recommended = _union_choice(recommended, runs, dataset, out_dir, config, log)
    if recommended is not None and recommended.get("run"):
        recommended.update(production_commands(recommended, dict(plan), final, config.data.source))
    baselines = []
    if config.baselines:
        baselines.append(_isolation_forest(dataset, config.train.seed))
    extras = _extras(config, dict(plan), recommended, runs, dataset, out_dir, log)
    summary = {
        "fvnce_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"source": config.data.source, "spec": config.data.to_dict(), "n_train": len(dataset.train),
                 "n_val": len(dataset.val), "n_test": len(dataset.test), "dim": dataset.dim,
                 "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
                 "binary": bool(dataset.binary), "notes": list(dataset.notes), "has_labels": has_labels,
                 "val_counts": counts, "contaminated": bool(config.data.contaminated),
                 "n_train_anomalies": None if dataset.train_labels is None else int(dataset.train_labels.sum())},
        "alarm_rate": config.alarm_rate,
        "criteria": {"auroc_margin_min": AUROC_MARGIN_MIN, "se_factor": SE_FACTOR, "khat_max": KHAT_MAX,
                     "ess_fraction_min": ESS_FRACTION_MIN, "reference": VAE_RUN},
        "steps_per_run": steps,
        "noises": noises,
        "rules": config.rules,
        "mixtures": mixtures,
        "runs": runs,
        "baselines": baselines,
        "recommended": recommended,
        "toy_2d": dataset.dim == 2,
        **extras,
    }
    summary["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "summary.json", _finite(summary))
    from .report import build_report
    build_report(out_dir)
    summary["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "summary.json", _finite(summary))
    return summary


def production_commands(rec: dict, plan: dict[str, RunConfig], final: str | Path, source: str) -> dict:
    """The command lines that train the recommendation for production, on the same data and
    split (:func:`fvnce.runs.command.train_command`): ``train_command`` for one run (into
    ``recommended-run``); for a union, ``member_commands`` (one ``{"run", "command"}`` per
    member, into a folder of the member's name) and ``score_command`` (``fvnce score`` of
    the poc's union).  A run that started from the poc's VAE gets ``--init-from`` with the
    absolute path of that VAE run in ``final`` (the poc's folder), so it starts from the
    same weights.  A command that cannot be written is None, with ``*_note`` saying why."""
    import os
    import shlex

    from .runs.command import _source, train_command

    vae = str(Path(os.path.abspath(final)) / "runs" / VAE_RUN)

    def command(name: str, out: str) -> tuple[str | None, str | None]:
        rc = copy.deepcopy(plan[name])
        if rc.init_from:
            rc.init_from = vae
        return train_command(rc, out)

    if rec.get("members"):
        members = []
        for name in rec["members"]:
            cmd, note = command(name, name)
            members.append({"run": name, "command": cmd, **({"note": note} if note else {})})
        union = str(Path(os.path.abspath(final)) / "runs" / UNION_RUN)
        score = "fvnce " + shlex.join(["score", union, "--data", _source(source), "--out", "union-scores.csv"])
        return {"train_command": None, "member_commands": members, "score_command": score}
    cmd, note = command(rec["run"], "recommended-run")
    return {"train_command": cmd, **({"train_command_note": note} if note else {})}


#: your own VAE fine-tuned by the ELBO (``--vae-finetune``)
VAE_FINETUNED_RUN = "elbo-vae-finetuned"


def _extras(config: PocConfig, plan: dict, recommended: dict | None, runs: list[dict], dataset, out_dir: Path,
            log) -> dict:
    """Where the VAE came from (``vae_source``), the learning curve (fvnce.learning_curve) and,
    with costs, the recommendation's cost (``recommended["cost"]``, fvnce.costs)."""
    from .learning_curve import learning_curve
    from .user_vae import source_record

    out: dict[str, Any] = {"vae_source": source_record(config.vae), "vae_finetune": config.vae_finetune or None}
    if recommended is not None and recommended.get("run") is not None and config.costs is not None:
        from .runs.costing import run_cost

        try:
            recommended["cost"] = run_cost(out_dir / "runs" / recommended["run"], config.costs, dataset=dataset)
            log(f"fvnce: cost: {recommended['cost']['sentence']}")
        except FvnceError as exc:
            recommended["cost"] = {"available": False, "reason": str(exc)}
    out.update(learning_curve(config.learning_curve, plan, recommended, runs, dataset, out_dir, config, _run_one, log))
    log(f"fvnce: learning curve: {out['learning_curve_verdict']}")
    return out


def _val_counts(dataset) -> dict:
    """Normal and anomalous rows of the validation split (for AUROC standard errors)."""
    n1 = int((dataset.val_labels != 0).sum())
    return {"normal": int(len(dataset.val_labels)) - n1, "anomaly": n1}


def _run_one(name: str, rc: RunConfig, dataset, fitted: dict, out_dir: Path, log) -> dict:
    """Train and evaluate one run of the grid; its summary entry (errors recorded, not raised)."""
    entry: dict[str, Any] = {"name": name, "objective": rc.objective, "model": None, "noise": rc.noise,
                             "rule": rc.objective_options.get("rule"), "run_dir": f"runs/{name}",
                             "rule_params": {k: v for k, v in rc.objective_options.items() if k in ("alpha", "c")},
                             "status": "ok", "error": None, "metrics": {}, "val_metrics": {},
                             "started_from": Path(rc.init_from).name if rc.init_from else None}
    t_run = time.perf_counter()
    try:
        if rc.noise != BASE_NOISE and rc.noise not in fitted:
            fitted[rc.noise] = make_noise(rc.noise, dataset.train, seed=rc.train.seed)
        run_dir = out_dir / "runs" / name
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        if rc.vae is not None and name == VAE_RUN:  # your own VAE, as it is: not trained
            from .user_vae import adopt_run
            adopt_run(rc, run_dir, dataset, log=log)
        else:
            train_run(rc, run_dir, dataset=dataset, noise=fitted.get(rc.noise), log=log, progress=False)
        entry["train_time_s"] = time.perf_counter() - t_run
        ev = evaluate_run(run_dir, dataset=dataset, k=rc.eval_k)
        entry["metrics"], entry["val_metrics"] = _metrics(ev)
        entry["log_z"] = ev.get("log_z")  # estimate, k-hat, effective sample size, proposal (unnormalised)
        entry["noise_term"] = ev.get("noise_term")  # k-hat and ESS of the noise-side weights
        entry["alarm"] = ev.get("alarm")  # the alarm threshold, and what it does on the test rows
        entry["operating_point"] = ev.get("operating_point")
        entry["model"] = rc.resolved_model(dataset.binary)[0]
    except DivergenceError as exc:
        entry.update(status="diverged", error=str(exc))
    except TrainingInterrupted as exc:  # Ctrl-C / SIGTERM stops the poc, not just this run
        raise TrainingInterrupted(f"poc interrupted at step {exc.step} of run {name}; it did not finish and wrote "
                                  f"no summary: run it again with --overwrite (or choose a new --out)",
                                  exc.step, None) from None
    except FvnceError as exc:
        entry.update(status="failed", error=str(exc))
    entry.setdefault("train_time_s", time.perf_counter() - t_run)
    return entry


#: per worker process: the data set and the fitted noises, loaded once
_WORKER: dict[str, Any] = {}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _pool_run(name: str, rc: RunConfig, data: DataSpec, out_dir: str) -> dict:
    """:func:`_run_one` in a worker process (same data split and noise seeds)."""
    if _WORKER.get("spec") != data.to_dict():
        _WORKER.clear()
        _WORKER.update(spec=data.to_dict(), dataset=load_dataset(data), fitted={})
    return _run_one(name, rc, _WORKER["dataset"], _WORKER["fitted"], Path(out_dir), lambda m: None)


def _train_cfg(base: TrainConfig, steps: int) -> TrainConfig:
    cfg = copy.deepcopy(base)
    cfg.steps, cfg.epochs = steps, None
    cfg.eval_every = max(1, min(cfg.eval_every, steps // 8 or 1))
    cfg.checkpoint_every = max(cfg.checkpoint_every, steps // 4 or 1)
    cfg.progress = False
    return cfg


def _isolation_forest(dataset, seed: int) -> dict:
    from . import evaluate as ev

    entry: dict[str, Any] = {"name": "isolation_forest", "metrics": {}, "val_metrics": {}, "roc": None, "scores": None}
    if dataset.test_labels is None:
        return entry
    t = time.perf_counter()
    s_val = ev.isolation_forest_scores(dataset.train.numpy(), dataset.val.numpy(), seed=seed)
    s_test = ev.isolation_forest_scores(dataset.train.numpy(), dataset.test.numpy(), seed=seed)
    mv = ev.anomaly_metrics(s_val, dataset.val_labels.numpy())
    mt = ev.anomaly_metrics(s_test, dataset.test_labels.numpy())
    keep = ("auroc", "auprc", "fpr_at_95_tpr")
    entry["metrics"] = {k: mt[k] for k in keep}
    entry["val_metrics"] = {k: mv[k] for k in keep}
    entry["roc"] = mt.get("roc")
    lab = dataset.test_labels.numpy().astype(bool)
    entry["scores"] = {"normal": s_test[~lab].tolist(), "anomaly": s_test[lab].tolist()}
    entry["train_time_s"] = time.perf_counter() - t
    return entry


def _brief(entry: dict) -> str:
    m = entry["metrics"]
    parts = [f"{k}={m[k]:.4g}" for k in ("auroc", "log_likelihood") if m.get(k) is not None]
    return (" (" + ", ".join(parts) + ")") if parts else (f" ({entry['error']})" if entry["error"] else "")


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="fvnce poc", unit="run", dynamic_ncols=True)


def _finite(obj):
    from .runs import _finite_json
    return _finite_json(obj)
