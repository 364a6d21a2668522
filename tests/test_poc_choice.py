"""The poc's verdicts without training: degraded runs, unreliable log-likelihoods and the
recommendation (VAE included), on summary entries built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fvnce.poc import (AUROC_MARGIN_MIN, SE_FACTOR, assess_runs, auroc_standard_error, degradation, ll_reliability,
                       recommend)

BIG = {"normal": 10**6, "anomaly": 10**6}  # standard errors ~1e-4: the 0.02 floor decides
SMALL = {"normal": 20, "anomaly": 10}  # standard errors ~0.05: the standard errors decide
GOOD_LZ = {"log_z": 3.0, "ess_fraction": 0.4, "khat": 0.3, "reliable": True, "proposal": "encoder"}
BAD_LZ = {"log_z": -19.0, "ess_fraction": 7e-5, "khat": 1.4, "reliable": False, "proposal": "noise"}
VAE_STATEMENT = "No FVNCE configuration beat the VAE it started from on validation data; the VAE is recommended."


def run(name: str, auroc: float | None = None, ll: float | None = None, *, ll_se: float | None = 0.1,
        status: str = "ok", objective: str = "fvnce", log_z: dict | None = None, noise_term=None) -> dict:
    """A summary entry as ``fvnce poc`` writes it (validation and test metrics alike)."""
    m = {"auroc": auroc, "log_likelihood": ll, "log_likelihood_se": ll_se, "log_likelihood_reliable": None}
    if objective == "fvnce" and log_z is None:
        log_z = GOOD_LZ
    return {"name": name, "objective": objective, "status": status, "error": None if status == "ok" else "boom",
            "metrics": dict(m), "val_metrics": dict(m), "log_z": log_z, "noise_term": noise_term,
            "started_from": "elbo-vae" if objective == "fvnce" else None}


def vae(auroc=None, ll=None, **kw) -> dict:
    return run("elbo-vae", auroc, ll, objective="elbo", **kw)


# --------------------------------------------------------------------------- AUROC standard error


def test_auroc_se_is_exact_under_the_null():
    # at A = 0.5, Hanley & McNeil reduce to the exact null variance (n0 + n1 + 1) / (12 n0 n1)
    se = auroc_standard_error(0.5, 50, 200)
    assert se == pytest.approx(math.sqrt(251 / (12 * 50 * 200)), rel=1e-12)
    assert auroc_standard_error(1.0, 50, 200) == 0.0
    assert auroc_standard_error(0.9, None, 200) is None and auroc_standard_error(None, 5, 5) is None
    assert auroc_standard_error(0.9, 0, 200) is None


def test_auroc_se_matches_simulation_of_the_exponential_model():
    # Q1 = A/(2-A), Q2 = 2A^2/(1+A) are exact for exponential scores: normal ~ Exp(1),
    # anomaly ~ Exp(rate mu) has A = P(anomaly > normal) = 1 / (1 + mu)
    rng = np.random.default_rng(0)
    n1, n0, mu, reps = 20, 60, 0.25, 6000
    a = 1.0 / (1.0 + mu)
    normal = rng.exponential(1.0, size=(reps, n0))
    anomaly = rng.exponential(1.0 / mu, size=(reps, n1))
    auc = (anomaly[:, :, None] > normal[:, None, :]).mean(axis=(1, 2))
    assert auc.mean() == pytest.approx(a, abs=0.003)
    assert auc.std() == pytest.approx(auroc_standard_error(a, n1, n0), rel=0.05)


# --------------------------------------------------------------------------- degraded


def _threshold(b: float, counts: dict) -> float:
    """The run AUROC a below which ``b - a`` exceeds max(0.02, 2 sqrt(se_a^2 + se_b^2))."""
    se_b = auroc_standard_error(b, counts["anomaly"], counts["normal"])
    lo, hi = 0.0, b
    for _ in range(200):
        a = (lo + hi) / 2
        se_a = auroc_standard_error(a, counts["anomaly"], counts["normal"])
        margin = max(AUROC_MARGIN_MIN, SE_FACTOR * math.hypot(se_a, se_b))
        lo, hi = (a, hi) if b - a > margin else (lo, a)
    return lo


@pytest.mark.parametrize("counts", [BIG, SMALL], ids=["floor", "standard-errors"])
def test_degraded_auroc_on_both_sides_of_the_threshold(counts):
    base = vae(0.95, -30.0)
    t = _threshold(0.95, counts)
    if counts is BIG:
        assert t == pytest.approx(0.95 - AUROC_MARGIN_MIN, abs=1e-3)
    else:
        assert 0.95 - t > 0.1  # ten anomalies: only a large drop is clear
    below = degradation(run("r", t - 0.002, -30.0), base, counts)
    assert below is not None and below.endswith(".")
    assert f"{t - 0.002:.4f}" in below and "0.9500" in below and "Hanley & McNeil" in below
    assert "r ended clearly worse than elbo-vae, the VAE it started from" in below
    assert degradation(run("r", t + 0.002, -30.0), base, counts) is None


def test_degraded_without_counts_uses_the_floor():
    base = vae(0.95)
    assert degradation(run("r", 0.925), base, None) is not None
    assert degradation(run("r", 0.935), base, None) is None


def test_degraded_log_likelihood_without_labels():
    # se of the difference = sqrt(0.3^2 + 0.4^2) = 0.5, margin 2 x 0.5 = 1 nat
    base = vae(None, -30.0, ll_se=0.3)
    worse = degradation(run("r", None, -31.1, ll_se=0.4), base)
    assert worse is not None and "-31.10 nats is 1.10 below the VAE's -30.00" in worse and "margin 1.00" in worse
    assert degradation(run("r", None, -30.9, ll_se=0.4), base) is None
    # an unreliable log-likelihood is never compared, however low it is
    assert degradation(run("r", None, -60.0, ll_se=0.4, log_z=BAD_LZ), base) is None
    # and without standard errors (older evaluation files) there is no test
    assert degradation(run("r", None, -60.0, ll_se=None), base) is None


def test_assess_marks_degraded_power_runs_and_keeps_good_ones():
    runs = [vae(0.95, -30.0), run("fvnce-power1.5-kde", 0.68, -31.0), run("fvnce-kl-kde", 0.955, -29.5),
            run("fvnce-kl-gmm", None, status="failed")]
    assess_runs(runs, {"normal": 300, "anomaly": 60})
    status = {r["name"]: r["status"] for r in runs}
    assert status == {"elbo-vae": "ok", "fvnce-power1.5-kde": "degraded", "fvnce-kl-kde": "ok",
                      "fvnce-kl-gmm": "failed"}
    why = runs[1]["status_reason"]
    assert "validation AUROC 0.6800 is 0.2700 below the VAE's 0.9500" in why
    assert runs[0]["reliable"] is True and runs[2]["reliable"] is True and runs[3]["reliable"] is None
    assert all(r["warnings"] == [] for r in runs)


def test_no_reference_no_degraded():
    runs = [vae(0.95, status="failed"), run("fvnce-power1.5-kde", 0.3)]
    assess_runs(runs, BIG)
    assert runs[1]["status"] == "ok"


# --------------------------------------------------------------------------- reliability


def test_reliability_from_log_z_flag_diagnostics_and_split_flags():
    ok, warning = ll_reliability(run("a", log_z=GOOD_LZ))
    assert ok and warning is None
    ok, warning = ll_reliability(run("a", log_z=BAD_LZ))
    assert not ok and "Pareto k-hat 1.40 (limit 0.7) and effective sample size 0.007% (minimum 5%)" in warning
    assert "cannot be recommended" in warning
    # older evaluation files: no flag and no k-hat, only the ESS fraction
    assert ll_reliability(run("a", log_z={"log_z": 1.0, "ess_fraction": 1e-2}))[0] is False
    assert ll_reliability(run("a", log_z={"log_z": 1.0, "ess_fraction": 0.3}))[0] is True
    assert ll_reliability(run("a", log_z={"log_z": 1.0}))[0] is False  # no diagnostics at all
    # the VAE's IWAE bound is reliable unless evaluation flags a split
    assert ll_reliability(vae(0.9))[0] is True
    flagged = vae(0.9)
    flagged["val_metrics"]["log_likelihood_reliable"] = False
    ok, warning = ll_reliability(flagged)
    assert not ok and "validation estimate" in warning


def test_noise_term_warning_does_not_block_the_choice():
    tail = {"khat": 0.93, "ess_fraction": 0.012, "reliable": False}
    heavy = run("fvnce-kl-kde", 0.99, -29.0, noise_term=tail)
    runs = [vae(0.95, -30.0, noise_term=tail), heavy]
    assess_runs(runs, BIG)
    assert runs[0]["warnings"] == []  # the VAE has no noise term in its objective
    assert heavy["reliable"] is True and len(heavy["warnings"]) == 1
    assert "noise term of fvnce-kl-kde" in heavy["warnings"][0] and "k-hat 0.93" in heavy["warnings"][0]
    assert recommend(runs, True, BIG)["run"] == "fvnce-kl-kde"


# --------------------------------------------------------------------------- the choice


def test_vae_is_recommended_when_it_is_best():
    runs = [vae(0.97, -30.0), run("fvnce-kl-kde", 0.96, -29.0), run("fvnce-power1.5-kde", 0.60, -40.0)]
    assess_runs(runs, BIG)
    rec = recommend(runs, True, BIG)
    assert rec["run"] == "elbo-vae" and rec["vae_recommended"]
    assert rec["vae_statement"] == VAE_STATEMENT
    assert rec["excluded"] == {"fvnce-power1.5-kde": "degraded"} and rec["n_eligible"] == 2
    assert rec["runner_up"] == {"run": "fvnce-kl-kde", "value": 0.96}
    assert rec["reason"] == ("elbo-vae is recommended because it has the highest validation AUROC (0.9700) "
                             "of the 2 eligible runs, ahead of fvnce-kl-kde (0.9600); "
                             "the choice used validation data only.")


def test_vae_is_recommended_without_labels_too():
    runs = [vae(None, -30.0), run("fvnce-kl-kde", None, -30.1)]
    assess_runs(runs, None)
    rec = recommend(runs, False, None)
    assert rec["run"] == "elbo-vae" and rec["vae_statement"] == VAE_STATEMENT
    assert rec["criterion"] == ("highest validation log-likelihood, among runs whose estimate is reliable (the data "
                                "has no anomaly labels, so the choice uses none)")
    assert "highest validation log-likelihood (-30.00 nats) of the 2 eligible runs, ahead of fvnce-kl-kde " \
           "(-30.10 nats)" in rec["reason"]


def test_unreliable_runs_are_never_recommended():
    # the artefact seen in practice: a log-likelihood 19 nats above the VAE's on 7e-5 ESS
    runs = [vae(None, -30.0), run("fvnce-power1.5-gmm", None, -11.0, log_z=BAD_LZ)]
    assess_runs(runs, None)
    assert runs[1]["reliable"] is False and "unreliable" in runs[1]["warnings"][0]
    assert runs[1]["status"] == "unreliable" and runs[1]["status_reason"] == runs[1]["warnings"][0]
    rec = recommend(runs, False, None)
    assert rec["run"] == "elbo-vae"
    assert rec["excluded"] == {"fvnce-power1.5-gmm": "unreliable log-likelihood"}
    assert rec["vae_statement"].startswith("No eligible FVNCE configuration beat the VAE it started from")
    assert "fvnce-power1.5-gmm (unreliable log-likelihood)" in rec["vae_statement"]
    # with labels too: the best AUROC does not help an unreliable run
    runs = [vae(0.90, -30.0), run("fvnce-kl-kde", 0.999, -11.0, log_z=BAD_LZ), run("fvnce-kl-gmm", 0.93, -29.0)]
    assess_runs(runs, BIG)
    assert recommend(runs, True, BIG)["run"] == "fvnce-kl-gmm"


def test_reason_sentence_names_run_criterion_value_and_runner_up():
    runs = [vae(0.9981, -30.0), run("fvnce-kl-kde", 0.9993, -29.0), run("fvnce-kl-gmm", 0.985, -29.5)]
    assess_runs(runs, BIG)
    rec = recommend(runs, True, BIG)
    assert rec["reason"] == ("fvnce-kl-kde is recommended because it has the highest validation AUROC (0.9993) "
                             "of the 3 eligible runs, ahead of elbo-vae (0.9981); "
                             "the choice used validation data only.")
    assert rec["vae_statement"] is None and not rec["vae_recommended"]
    assert rec["criterion"].startswith("highest validation AUROC")


def test_with_labels_the_point_auroc_decides_and_the_reason_names_runs_within_noise():
    # ten anomalies: 0.93 and 0.95 are within noise; the higher AUROC is chosen even though the
    # other run has the higher log-likelihood (a better density is not a better detector)
    runs = [vae(0.95, -30.0), run("fvnce-kl-kde", 0.93, -28.0), run("fvnce-kl-gmm", 0.50, -20.0)]
    assess_runs(runs, SMALL)
    rec = recommend(runs, True, SMALL)
    assert runs[2]["status"] == "degraded"
    assert rec["run"] == "elbo-vae" and rec["runner_up"]["run"] == "fvnce-kl-kde"
    assert rec["reason"] == (
        "elbo-vae is recommended because it has the highest validation AUROC (0.9500) of the 2 eligible runs, "
        "ahead of fvnce-kl-kde (0.9300); 1 other run is within noise of it (2 standard errors), which these "
        "validation rows cannot separate; the choice used validation data only.")
    # with many anomalies the same gap is clear: the plain sentence
    rec = recommend(runs[:2], True, BIG)
    assert rec["run"] == "elbo-vae" and "within noise" not in rec["reason"]
    # equal AUROC: the log-likelihood breaks the tie, and the reason says so
    runs = [vae(0.93, -30.0), run("fvnce-kl-kde", 0.93, -28.0)]
    assess_runs(runs, BIG)
    rec = recommend(runs, True, BIG)
    assert rec["run"] == "fvnce-kl-kde"
    assert ("ahead of elbo-vae (0.9300, equal to four decimals; the validation log-likelihood decided: "
            "-28.00 nats against -30.00 nats);") in rec["reason"]
    assert "))" not in rec["reason"]


def test_log_likelihood_degrades_only_runs_that_started_from_the_vae():
    # a mixture trained from scratch with a much lower log-likelihood is another model family,
    # not a damaged run; the same figures on a warm-started run are degradation
    mix = run("fvnce-kl-full_gaussian-mix1", 0.96, -60.0)
    mix["started_from"] = None
    warm = run("fvnce-kl-kde", 0.96, -60.0)
    runs = [vae(0.95, -30.0), mix, warm]
    assess_runs(runs, None)
    assert mix["status"] == "ok" and warm["status"] == "degraded"
    assert recommend(runs, False, None)["run"] == "elbo-vae"  # without labels: the log-likelihood decides
    # its AUROC is still held against the VAE's
    low = run("fvnce-kl-full_gaussian-mix4", 0.50, -60.0)
    low["started_from"] = None
    runs = [vae(0.95, -30.0), low]
    assess_runs(runs, BIG)
    assert low["status"] == "degraded" and "AUROC" in low["status_reason"]


def test_single_and_no_eligible_run():
    runs = [vae(0.9, status="failed"), run("fvnce-kl-kde", 0.95, -29.0)]
    assess_runs(runs, BIG)
    rec = recommend(runs, True, BIG)
    assert rec["run"] == "fvnce-kl-kde" and "the only eligible run, with validation AUROC 0.9500" in rec["reason"]
    runs = [vae(0.9, status="failed"), run("fvnce-kl-kde", 0.95, -29.0, status="diverged")]
    assess_runs(runs, BIG)
    rec = recommend(runs, True, BIG)
    assert rec["run"] is None and "none is eligible" in rec["reason"]
    assert "elbo-vae: failed" in rec["reason"] and "fvnce-kl-kde: diverged" in rec["reason"]
    assert recommend([], True) is None


def test_choice_uses_validation_not_test_figures():
    a, b = vae(0.90, -30.0), run("fvnce-kl-kde", 0.95, -29.0)
    a["metrics"]["auroc"], b["metrics"]["auroc"] = 0.99, 0.50  # test figures must not matter
    assess_runs([a, b], BIG)
    assert recommend([a, b], True, BIG)["run"] == "fvnce-kl-kde"
