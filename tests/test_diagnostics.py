"""Importance-weight diagnostics against weights whose tail is known.

* Pareto weights ``w = 1 + Lomax(a)`` have ``P(w > t) = t^(-a)``: Pareto k = 1/a.
* A Gaussian proposal narrower than its Gaussian target, ``x ~ N(0, s^2)``,
  ``w = N(x; 0, 1) / N(x; 0, s^2)``, has ``P(w > t) ~ t^(-1/(1 - s^2))``: k = 1 - s^2
  (up to a log factor, which biases a finite-sample k-hat low).
* Log-normal weights have all moments, but their k-hat grows with the log-scale.

k-hat estimates of one sample of 20,000 scatter by about (1 + k)/sqrt(3 sqrt(n)) ~ 0.1,
so the known-tail checks average four independent samples.
"""

import json
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import norm

from fvnce.diagnostics import (ESS_FRACTION_MIN, KHAT_MAX, MIN_WEIGHTS, heavy_tail_message, pareto_khat, reliable,
                               weight_report)


def mean_khat(draw, reps=4):
    return float(np.mean([pareto_khat(draw()) for _ in range(reps)]))


# --------------------------------------------------------------------------- known tails
@pytest.mark.parametrize("a", [0.8, 1.25, 2.0, 4.0])
def test_pareto_weights_give_k_one_over_a(a):
    rng = np.random.default_rng(0)
    k = mean_khat(lambda: np.log1p(rng.pareto(a, 20000)))
    assert abs(k - 1 / a) < 0.15, (a, k)


def test_sign_convention_right_tail_of_the_weights():
    # Pareto weights: a heavy right tail, and the reciprocal weights are bounded by 1.
    # (a sign slip, e.g. handing -log w to arviz's psislw, which negates its input, swaps the two)
    lw = np.log1p(np.random.default_rng(1).pareto(1.0, 20000))
    assert pareto_khat(lw) > 0.8
    assert pareto_khat(-lw) < 0.0


@pytest.mark.parametrize("s2", [0.2, 0.5])
def test_narrow_gaussian_proposal_gives_k_one_minus_variance_ratio(s2):
    rng = np.random.default_rng(2)

    def draw():
        x = rng.normal(0.0, math.sqrt(s2), 20000)
        return norm.logpdf(x) - norm.logpdf(x, 0.0, math.sqrt(s2))

    assert abs(mean_khat(draw) - (1 - s2)) < 0.2


def test_wide_proposal_and_log_normal_weights():
    rng = np.random.default_rng(3)
    # a proposal wider than the target: bounded weights, negative k
    x = rng.normal(0.0, 2.0, 20000)
    assert pareto_khat(norm.logpdf(x) - norm.logpdf(x, 0.0, 2.0)) < 0.0
    # log-normal weights: k-hat grows with the log-scale
    ks = [mean_khat(lambda: rng.normal(0.0, sd, 20000)) for sd in (0.5, 2.0, 5.0)]
    assert ks[0] < 0.35 and 0.3 < ks[1] < 0.9 and ks[2] > 1.2


def test_invariances_and_input_types():
    lw = np.random.default_rng(4).normal(0.0, 1.5, 5000)
    k = pareto_khat(lw)
    assert math.isfinite(k)
    assert pareto_khat(lw + 1e4) == pytest.approx(k, abs=1e-8)  # the scale of the weights is irrelevant
    assert pareto_khat(lw.reshape(50, 100)) == k  # any shape is flattened
    assert pareto_khat(torch.tensor(lw, requires_grad=True)) == k
    assert pareto_khat(lw.tolist()) == k
    assert pareto_khat(torch.tensor(lw, dtype=torch.float32)) == pytest.approx(k, abs=1e-3)


def test_agrees_with_arviz_psislw_on_weights_without_ties():
    # an independent implementation of the same PSIS fit (arviz-stats; it takes -log w)
    from arviz_stats.base import array_stats

    rng = np.random.default_rng(11)
    for lw in (np.log1p(rng.pareto(1.25, 4000)), rng.normal(0.0, 2.0, 3000), rng.normal(0.0, 0.3, 100),
               norm.logpdf(x := rng.normal(0.0, 2.0, 5000)) - norm.logpdf(x, 0.0, 2.0)):
        assert len(np.unique(lw)) == lw.size
        _, want = array_stats.psislw(-lw)
        assert pareto_khat(lw) == pytest.approx(float(want), abs=1e-10)


def test_bounded_weights_with_tied_tails_have_no_heavy_tail():
    # Bounded weights have k < 0 (a finite upper end point).  Ties at the threshold are not
    # exceedances: counted as exceedances of size zero they made these k-hats positive.
    rng = np.random.default_rng(12)
    n = 2000
    u = rng.random(n)
    cases = {
        # log-weights clipped to [-1, 1]: 30 % tied at each end, the largest M all at the max
        "clipped": np.clip(rng.normal(0.0, 2.0, n), -1.0, 1.0),
        # 95 % tied at the floor (a saturated tilt), 5 % uniform on [-1, 1]: the floor
        # reaches into the 134-draw tail
        "floor": np.where(u < 0.95, -1.0, rng.uniform(-1.0, 1.0, n)),
        # 93 % at the floor, 2 % at the maximum, uniform in between
        "floor and max": np.where(u < 0.93, -1.0, np.where(u > 0.98, 1.0, rng.uniform(-1.0, 1.0, n))),
        # a discrete uniform distribution on 21 values
        "grid": np.round(rng.uniform(-1.0, 1.0, n), 1),
    }
    for name, lw in cases.items():
        assert pareto_khat(lw) <= 0.0, name
    assert pareto_khat(cases["clipped"]) == -math.inf  # the largest weights all tied
    # ties elsewhere do not touch the fit: the uniform part's k-hat is that of its own
    # exceedances over the floor, about -1 (uniform: k = -1), shrunk towards 0.5 by the prior
    assert -1.2 < pareto_khat(cases["floor"]) < -0.1


def test_too_few_weights_above_a_tied_threshold():
    # 1,996 weights tied, 4 above them: too few exceedances to fit (cannot tell)
    lw = np.r_[np.zeros(1996), [0.5, 1.0, 1.5, 2.0]]
    assert pareto_khat(lw) == math.inf
    assert pareto_khat(np.r_[np.zeros(1995), [0.5, 1.0, 1.5, 2.0, 2.5]]) < math.inf


# --------------------------------------------------------------------------- edge cases
def test_edge_cases():
    rng = np.random.default_rng(5)
    lw = rng.normal(size=1000)
    # zero weights are dropped before the fit
    assert pareto_khat(np.concatenate([lw, np.full(300, -np.inf)])) == pareto_khat(lw)
    # any NaN or +inf: nothing can be trusted
    for bad in (np.nan, np.inf):
        assert pareto_khat(np.append(lw, bad)) == math.inf
    # too few non-zero weights to fit a tail
    assert pareto_khat(lw[:MIN_WEIGHTS - 1]) == math.inf
    assert pareto_khat(np.concatenate([lw[:MIN_WEIGHTS - 1], np.full(500, -np.inf)])) == math.inf
    assert math.isfinite(pareto_khat(lw[:MIN_WEIGHTS]))
    assert pareto_khat([]) == math.inf and pareto_khat(np.full(100, -np.inf)) == math.inf
    # constant weights (also up to round-off), and tied largest weights: no tail at all
    assert pareto_khat(np.zeros(100)) == -math.inf
    assert pareto_khat(np.full(100, 3.0) + 1e-14 * rng.normal(size=100)) == -math.inf
    assert pareto_khat(np.concatenate([np.zeros(900), np.ones(100)])) == -math.inf


def test_no_warnings_reach_the_user():
    rng = np.random.default_rng(6)
    inputs = [rng.normal(0, 30, 2000), np.zeros(50), np.r_[np.zeros(900), np.ones(100)], np.full(30, -np.inf),
              np.r_[rng.normal(size=100), np.nan], np.r_[1e300, rng.normal(size=100)]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for lw in inputs:
            k = pareto_khat(lw)
            assert not math.isnan(k)
            weight_report(lw)


# --------------------------------------------------------------------------- reliable, report
def test_reliable_thresholds():
    assert (KHAT_MAX, ESS_FRACTION_MIN) == (0.7, 0.05)
    assert reliable(0.7, 0.05) and reliable(0.2, 1.0) and reliable(-math.inf, 1.0)
    assert not reliable(0.71, 0.9)
    assert not reliable(0.3, 0.049)
    for khat, frac in ((math.inf, 1.0), (math.nan, 1.0), (0.1, math.nan), (0.1, math.inf)):
        assert not reliable(khat, frac), (khat, frac)
    assert reliable(np.float64(0.5), torch.tensor(0.5)) is True


def test_weight_report_by_hand():
    # 50 weights 1, 50 weights 3: ESS = (50 + 150)^2 / (50 + 450) = 80; the largest are tied
    lw = np.log(np.r_[np.ones(50), np.full(50, 3.0)])
    rep = weight_report(lw)
    assert rep["n"] == 100 and rep["ess"] == pytest.approx(80.0, rel=1e-12)
    assert rep["ess_fraction"] == pytest.approx(0.8) and rep["khat"] == -math.inf and rep["reliable"] is True
    # zero weights count in n but not in the ESS
    rep = weight_report(torch.tensor(np.r_[lw, np.full(100, -np.inf)]))
    assert rep["n"] == 200 and rep["ess"] == pytest.approx(80.0) and rep["ess_fraction"] == pytest.approx(0.4)
    for bad in (np.r_[lw, np.nan], np.r_[lw, np.inf], np.full(30, -np.inf)):
        rep = weight_report(bad)
        assert rep["ess"] == 0.0 and rep["ess_fraction"] == 0.0 and rep["khat"] == math.inf
        assert rep["reliable"] is False
    # heavy tail: a fair ESS fraction may still hide an unreliable estimate
    rep = weight_report(np.log1p(np.random.default_rng(7).pareto(1.0, 20000)))
    assert rep["khat"] > KHAT_MAX and rep["reliable"] is False
    json.dumps({k: v for k, v in rep.items()}, allow_nan=False)


def test_heavy_tail_message():
    assert heavy_tail_message(0.4, 0.5, "noise-side") is None
    msg = heavy_tail_message(1.3, 0.002, "noise-side")
    assert msg.startswith("noise-side importance weights are heavy-tailed (Pareto k-hat 1.3 > 0.7, ESS 0.2 %)")
    assert "noise closer to the data" in msg and "bounded tilt" in msg and "learning rate" in msg
    msg = heavy_tail_message(0.45, 0.021, "log Z (noise proposal)")
    assert msg.startswith("log Z (noise proposal) importance weights have a small effective sample size")
    assert "ESS 2.1 % < 5 %" in msg and "k-hat 0.45" in msg
    msg = heavy_tail_message(math.inf, 0.0, "noise-side")
    assert "degenerate" in msg and "ESS 0 %" in msg
    for m in (heavy_tail_message(1.3, 0.002, "x"), heavy_tail_message(math.nan, math.nan, "x")):
        assert "\n" not in m and m.count(": ") == 1
