"""Evaluation against exact oracles: the linear-Gaussian model (closed-form marginal,
posterior and log Z), RBMs (log Z by enumerating the hidden states, or the visible ones
when there are too many hidden units), an energy-tilted model over a linear-Gaussian base
with a linear tilt (closed-form log Z), hand-computed detection metrics.

The log-likelihood estimates of models whose true density is known are checked against
that density (linear-Gaussian, normalised and unnormalised; RBM)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal

from fvnce.encoders import BernoulliEncoder, CategoricalEncoder, ExactPosterior, GaussianEncoder
from fvnce.errors import ConfigError, DataError
from fvnce.evaluate import (LogZEstimate, choose_proposal, anomaly_metrics, anomaly_scores, estimate_log_partition,
                            isolation_forest_scores, log_likelihood, noise_accuracy, noise_weight_report, sample)
from fvnce.models import RBM, VAE, EnergyTiltedVAE, FromVAE, LinearGaussian, TwoGaussianMixture


@pytest.fixture(autouse=True)
def _float64_seeded(float64):
    torch.manual_seed(0)


def gaussian(mean, cov):
    return MultivariateNormal(torch.as_tensor(mean), covariance_matrix=torch.as_tensor(cov))


def lg_model(normalised=True, c=None):
    model = LinearGaussian(4, 2, sigma=0.6, normalised=normalised, generator=torch.Generator().manual_seed(1))
    if c is not None:
        with torch.no_grad():
            model.log_normaliser.fill_(c)
    return model


def near_posterior_encoder(model, inflate=1.3):
    """A diagonal GaussianEncoder (single linear layer) set to the exact posterior mean
    and inflated marginal posterior standard deviations."""
    enc = GaussianEncoder(4, 2, hidden=())
    with torch.no_grad():
        s2 = model.log_sigma.exp() ** 2
        cov = torch.linalg.inv(torch.eye(2) + model.W.T @ model.W / s2)
        a = model.W @ cov.T / s2  # (D, k): mean = (x - b) @ a
        lin = enc.net[0]
        lin.weight[:2] = a.T
        lin.bias[:2] = -model.b @ a
        scale = inflate * cov.diagonal().sqrt() - 1e-4
        lin.weight[2:] = 0.0
        lin.bias[2:] = torch.log(torch.expm1(scale))
    return enc


def small_rbm():
    rbm = RBM(6, 4, init_scale=0.8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        rbm.a.normal_(0.0, 0.5)
        rbm.b.normal_(0.0, 0.5)
        rbm.log_normaliser.fill_(1.3)
    return rbm


def half_bernoulli(d):
    return Independent(Bernoulli(probs=torch.full((d,), 0.5)), 1)


def tilted_vae(x_dim=3, tilt=0.01):
    base = VAE(x_dim, z_dim=2, hidden=(16,), likelihood="gaussian")
    model = EnergyTiltedVAE(base, x_dim, hidden=(8,))
    with torch.no_grad():
        model.tilt[-1].weight.normal_(0.0, tilt)
        model.log_normaliser.fill_(0.2)
    return model


class LinearDecoder(nn.Module):
    """``x | z ~ N(A z + m, s^2 I)``."""

    def __init__(self, a, m, s):
        super().__init__()
        self.lin = nn.Linear(a.shape[1], a.shape[0])
        with torch.no_grad():
            self.lin.weight.copy_(a)
            self.lin.bias.copy_(m)
        self.s = s

    def forward(self, z):
        return Independent(Normal(self.lin(z), self.s), 1)


def linear_tilted(w=(0.5, -0.4, 0.3), bias=0.1, c=0.2):
    """An EnergyTiltedVAE with a linear-Gaussian base and a linear tilt ``g(x) = w.x + bias``,
    and its exact ``log Z``.  Under the base ``x ~ N(m, A A^T + s^2 I)``, so
    ``Z = E_base[exp g(x)] exp(-c)`` is a Gaussian moment generating function:
    ``log Z = w.m + w^T Sigma w / 2 + bias - c``."""
    a = torch.tensor([[0.8, -0.3], [0.2, 0.6], [-0.5, 0.4]])
    m, s = torch.tensor([0.3, -0.2, 0.5]), 0.5
    model = EnergyTiltedVAE(FromVAE(LinearDecoder(a, m, s), z_dim=2), 3, hidden=())
    w = torch.tensor(w)
    with torch.no_grad():
        model.tilt[-1].weight.copy_(w[None])
        model.tilt[-1].bias.fill_(bias)
        model.log_normaliser.fill_(c)
    sigma = a @ a.T + s ** 2 * torch.eye(3)
    return model, float(w @ m + 0.5 * w @ sigma @ w + bias - c)


def rbm_log_z_by_visibles(rbm):
    """``log Z - c`` of a Bernoulli RBM by summing its closed-form marginal over all ``2^D``
    visible states: exact for any number of hidden units."""
    d = rbm.W.shape[0]
    v = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)))
    return float(torch.logsumexp(rbm.log_unnormalised_marginal(v).detach(), 0))


def seeded_rbm(d, h, scale, seed):
    rbm = RBM(d, h, init_scale=scale, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        rbm.a.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed + 1))
        rbm.b.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(seed + 2))
        rbm.log_normaliser.fill_(1.3)
    return rbm


def log_z_se(cand):
    """Delta-method standard error of ``log Z_hat = log mean w``: ``sqrt((n / ESS - 1) / n)``."""
    return math.sqrt(max(1.0 / cand["ess_fraction"] - 1.0, 0.0) / cand["n"])


# --------------------------------------------------------------------------- metrics
def test_metrics_perfect_and_reversed():
    labels = np.array([0] * 50 + [1] * 10)
    scores = np.arange(60.0)
    m = anomaly_metrics(scores, labels)
    assert m["auroc"] == pytest.approx(1.0) and m["auprc"] == pytest.approx(1.0)
    assert m["fpr_at_95_tpr"] == 0.0
    assert anomaly_metrics(-scores, labels)["auroc"] == pytest.approx(0.0)
    assert anomaly_metrics(torch.tensor(-scores), torch.tensor(labels))["fpr_at_95_tpr"] == 1.0


def test_metrics_random_scorer():
    rng = np.random.default_rng(0)
    m = anomaly_metrics(rng.normal(size=20000), rng.integers(0, 2, size=20000))
    assert abs(m["auroc"] - 0.5) < 0.03


def test_fpr_at_95_tpr_by_hand():
    # 20 anomalies: one hidden at 0.5, 19 at 11..29; 10 normals, one of them at 15.
    # Detecting 19/20 = 95 % needs threshold <= 11, which also flags the normal at 15.
    pos = [0.5] + list(range(11, 30))
    neg = list(range(1, 10)) + [15]
    scores = np.array(pos + neg, dtype=float)
    labels = np.array([1] * 20 + [0] * 10)
    m = anomaly_metrics(scores, labels)
    assert m["fpr_at_95_tpr"] == pytest.approx(0.1)
    # AUROC by counting pairs: the hidden anomaly loses to all 10 normals, the normal at
    # 15 beats 4 of the 19 others (11..14) and ties with one (half a pair)
    assert m["auroc"] == pytest.approx((200 - 10 - 4 - 0.5) / 200)


def test_metrics_single_class_none_and_bad_inputs():
    for labels in (np.zeros(5), np.ones(5), None):
        m = anomaly_metrics(np.arange(5.0), labels)
        assert m == {"auroc": None, "auprc": None, "fpr_at_95_tpr": None, "roc": None}
    with pytest.raises(DataError, match="2 of 4 anomaly scores are NaN"):
        anomaly_metrics([1.0, math.nan, math.nan, 0.0], [0, 1, 0, 1])
    with pytest.raises(ValueError, match="0 .normal. or 1"):
        anomaly_metrics([1.0, 2.0], [0, 2])
    with pytest.raises(ValueError, match="differ in length"):
        anomaly_metrics([1.0, 2.0], [0, 1, 1])


def test_metrics_infinite_scores_and_roc_storage():
    # +inf is the most anomalous, -inf the least
    m = anomaly_metrics([math.inf, 1e308, -math.inf, 0.0], [1, 1, 0, 0])
    assert m["auroc"] == 1.0
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 5000)
    m = anomaly_metrics(rng.normal(size=5000) + labels, labels)
    fpr, tpr = m["roc"]["fpr"], m["roc"]["tpr"]
    assert 2 <= len(fpr) == len(tpr) <= 200
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and 0.6 < m["auroc"] < 0.8


# --------------------------------------------------------------------------- log-likelihood
def test_log_likelihood_exact_posterior_is_exact():
    model = lg_model()
    x = model.sample(300)
    ll = log_likelihood(model, ExactPosterior(model), x, k=1, batch_size=64)
    assert ll.shape == (300,) and ll.dtype == torch.float64
    torch.testing.assert_close(ll, model.log_marginal(x), atol=1e-8, rtol=0)


def test_log_likelihood_gaussian_encoder_bound_and_tight():
    model = lg_model()
    enc = near_posterior_encoder(model)
    x = model.sample(200)
    truth = model.log_marginal(x)
    elbo = log_likelihood(model, enc, x, k=1)
    iwae = log_likelihood(model, enc, x, k=2000, batch_size=50)  # blocks of samples
    assert elbo.mean() < iwae.mean() <= truth.mean() + 1e-3
    err = (iwae - truth).abs()
    assert err.max() < 0.06 and err.mean() < 0.015


def test_log_likelihood_unnormalised_linear_gaussian():
    model = lg_model(normalised=False, c=0.7)
    post = ExactPosterior(model)
    est = estimate_log_partition(model, post, noise=None)
    assert est.proposal == "exact" and est.log_z == pytest.approx(-0.7, abs=1e-12)
    x = lg_model().sample(100)
    torch.testing.assert_close(log_likelihood(model, post, x, k=1), model.log_marginal(x), atol=1e-8, rtol=0)
    # the noise candidate: a Gaussian close to the model's marginal
    marg = model.marginal()
    noise = gaussian(marg.mean.detach() + 0.05, 1.2 * marg.covariance_matrix.detach())
    est = estimate_log_partition(model, post, noise=noise, n=20000)
    assert est.proposal == "exact"
    cand = est.candidates["noise"]
    assert abs(cand["log_z"] - (-0.7)) < 0.05 and 0.5 < cand["ess_fraction"] <= 1.0
    # weight diagnostics: the exact value has no tail; a wider noise gives bounded weights
    assert est.candidates["exact"]["khat"] == -math.inf and est.candidates["exact"]["reliable"] is True
    assert est.khat == -math.inf and est.reliable is True
    assert cand["khat"] < 0.5 and cand["reliable"] is True
    d = est.to_dict()
    assert d["khat"] is None and d["reliable"] is True and d["candidates"]["noise"]["khat"] == cand["khat"]
    json.dumps(d, allow_nan=False)
    ll = log_likelihood(model, post, x, log_z=cand["log_z"])
    assert (ll - model.log_marginal(x)).abs().max() < 0.05
    # restricting the proposals makes the noise the answer; float(estimate) works
    only = estimate_log_partition(model, post, noise=noise, n=5000, proposals=["noise"])
    assert only.proposal == "noise" and "exact" not in only.candidates
    assert only.khat == only.candidates["noise"]["khat"] and only.reliable
    ll2 = log_likelihood(model, post, x, log_z=only)
    assert (ll2 - model.log_marginal(x)).abs().max() < 0.1


def test_log_likelihood_unnormalised_imperfect_encoder_is_consistent():
    # q = the posterior with inflated marginal sds: log w varies with z.  log p~(x) - log Z
    # lies below log p(x) in expectation for small k (Jensen: the gap is KL(q || p(z|x))
    # for k = 1) and approaches it as k grows (the IWAE argument, unnormalised: the
    # estimate is log p~_k(x) - log Z, log Z exact here)
    torch.manual_seed(0)
    model = lg_model(normalised=False, c=0.7)
    enc = near_posterior_encoder(model, inflate=1.3)
    x = lg_model().sample(1000)
    truth = model.log_marginal(x).detach()
    err = {k: log_likelihood(model, enc, x, k=k, batch_size=50) - truth for k in (1, 8, 2000)}
    gap = {k: float(e.mean()) for k, e in err.items()}
    assert gap[1] < gap[8] < gap[2000]
    # k = 1: the expected gap is exactly -KL(q || p(z|x)), the same for every x here (q has
    # the posterior's mean and inflated marginal sds); checked within 4 standard errors
    with torch.no_grad():
        q, post = enc(x[:1]), model.posterior(x[:1])
        kl = float(torch.distributions.kl_divergence(
            torch.distributions.MultivariateNormal(q.mean, torch.diag_embed(q.base_dist.scale ** 2)), post))
    assert kl > 0.15
    assert abs(gap[1] + kl) < 4 * float(err[1].std()) / len(x) ** 0.5
    assert gap[8] < -0.005  # still clearly below the truth: biased low, not noise
    assert abs(gap[2000]) < 0.005 and err[2000].abs().mean() < 0.01 and err[2000].abs().max() < 0.06


def test_log_z_rbm_noise_candidate_matches_enumeration():
    rbm = small_rbm()
    enc = BernoulliEncoder(6, 4)  # random q: enumeration makes the x-weights exact anyway
    est = estimate_log_partition(rbm, enc, noise=half_bernoulli(6), n=20000)
    truth = float(rbm.log_partition().detach()) - 1.3
    assert est.proposal == "exact" and est.log_z == pytest.approx(truth, abs=1e-12)
    cand = est.candidates["noise"]
    assert cand["n"] == 20000 and 0.0 < cand["ess_fraction"] <= 1.0
    assert abs(cand["log_z"] - truth) < 0.05
    # fully observed evaluation (encoder None) and with the encoder: both the exact marginal
    x = rbm.sample(50, steps=50)
    torch.testing.assert_close(log_likelihood(rbm, None, x), rbm.log_marginal(x), atol=1e-8, rtol=0)
    torch.testing.assert_close(log_likelihood(rbm, enc, x, k=8), rbm.log_marginal(x), atol=1e-8, rtol=0)
    noise_only = estimate_log_partition(rbm, None, noise=half_bernoulli(6), n=20000, proposals=("noise",))
    assert abs(noise_only.log_z - truth) < 0.05


def test_log_z_rbm_noise_proposal_matches_enumeration_12_hidden():
    rbm = seeded_rbm(10, 12, 0.5, seed=12)
    truth = float(rbm.log_partition().detach()) - 1.3
    assert truth == pytest.approx(rbm_log_z_by_visibles(rbm), abs=1e-9)  # 2^12 hidden = 2^10 visible sums
    est = estimate_log_partition(rbm, None, noise=half_bernoulli(10), n=20000)
    assert est.proposal == "exact" and est.log_z == pytest.approx(truth, abs=1e-12)
    cand = est.candidates["noise"]
    assert math.isfinite(cand["khat"]) and cand["reliable"] is True
    assert abs(cand["log_z"] - truth) < 4 * log_z_se(cand)


def test_log_z_rbm_too_many_hidden_units_falls_back_to_noise():
    # an nce-trained RBM (no encoder, closed-form marginal) with 24 hidden units: the exact
    # log Z would enumerate 2^24 states; the noise proposal answers instead.  Truth: the
    # sum of the closed-form marginal over the 2^10 visible states
    rbm = seeded_rbm(10, 24, 0.3, seed=12)
    assert not rbm.log_partition_tractable and seeded_rbm(10, 20, 0.3, seed=12).log_partition_tractable
    with pytest.raises(ValueError, match="2\\^24 hidden states"):
        rbm.log_partition()
    noise = half_bernoulli(10)
    est = estimate_log_partition(rbm, None, noise=noise, n=20000)
    assert est.proposal == "noise" and set(est.candidates) == {"noise"}
    assert math.isfinite(est.log_z) and math.isfinite(est.khat) and est.reliable
    assert abs(est.log_z - rbm_log_z_by_visibles(rbm)) < 4 * log_z_se(est.candidates["noise"])
    x = torch.bernoulli(torch.full((30, 10), 0.5))
    ll = log_likelihood(rbm, None, x, noise=noise)
    assert ll.shape == (30,) and torch.isfinite(ll).all()
    with pytest.raises(ConfigError, match="cannot estimate log Z of RBM .its exact log_partition.. is intractable"):
        estimate_log_partition(rbm, None)


def test_noise_weight_report():
    # normalised model, exact posterior: the noise weights are exactly p(x) / p_n(x)
    model = lg_model()
    post = ExactPosterior(model)
    marg = model.marginal()
    mean, cov = marg.mean.detach(), marg.covariance_matrix.detach()
    wide = noise_weight_report(model, post, gaussian(mean, 1.5 * cov))
    assert wide["reliable"] is True and wide["khat"] < 0.0  # bounded weights
    assert abs(wide["log_z"]) < 4 * log_z_se(wide)  # E_pn r = 1 for a normalised model
    # a noise narrower than the model: P(w > t) ~ t^(-1/(1 - 0.2)), k ~ 0.8: unreliable
    narrow = noise_weight_report(model, post, gaussian(mean, 0.2 * cov))
    assert narrow["khat"] > 0.7 and narrow["reliable"] is False
    assert noise_weight_report(model, post, None) is None
    assert noise_weight_report(VAE(3, 2, hidden=(8,)), None, gaussian(torch.zeros(3), torch.eye(3))) is None


def test_evaluate_run_reports_weight_diagnostics(tmp_path):
    from fvnce.data import DataSpec
    from fvnce.runs import RunConfig, evaluate_run, train_run
    from fvnce.train import TrainConfig

    rng = np.random.default_rng(0)
    np.save(tmp_path / "bin.npy", (rng.random((300, 10)) < np.linspace(0.1, 0.9, 10)).astype(np.float64))
    spec = DataSpec(source=str(tmp_path / "bin.npy"))
    short = TrainConfig(steps=3, progress=False)
    # the bug: an nce-trained RBM with 24 hidden units could not be evaluated
    train_run(RunConfig(data=spec, objective="nce", model="rbm", model_options={"h_dim": 24}, train=short,
                        eval_k=4), tmp_path / "rbm")
    r = evaluate_run(tmp_path / "rbm", n_samples=0)
    json.dumps(r, allow_nan=False)
    lz = r["log_z"]
    assert set(lz) == {"log_z", "ess_fraction", "khat", "reliable", "proposal", "candidates"}
    assert lz["proposal"] == "noise" and set(lz["candidates"]) == {"noise"}
    assert set(lz["candidates"]["noise"]) == {"log_z", "ess_fraction", "khat", "reliable"}
    assert r["noise_term"] == {key: lz["candidates"]["noise"][key] for key in ("khat", "ess_fraction", "reliable")}
    for split in (r, r["val"]):
        assert split["log_likelihood_se"] > 0 and split["log_likelihood_reliable"] is lz["reliable"]
    # a normalised model: no log Z, the noise term computed on its own, likelihood reliable
    train_run(RunConfig(data=spec, objective="elbo", model="vae", model_options={"z_dim": 2, "hidden": [8]},
                        train=short, eval_k=4), tmp_path / "vae")
    r = evaluate_run(tmp_path / "vae", n_samples=0)
    assert r["log_z"] is None and set(r["noise_term"]) == {"khat", "ess_fraction", "reliable"}
    assert r["log_likelihood_reliable"] is True and r["log_likelihood_se"] > 0


def test_log_z_tilted_vae_picks_model_proposal():
    model, truth = linear_tilted()
    assert abs(truth - (-0.2)) > 0.3  # the tilt matters: dropping it from the weights gives -c
    enc = GaussianEncoder(3, 2, hidden=(8,))
    noise = Independent(Normal(torch.zeros(3), 3.0 * torch.ones(3)), 1)
    est = estimate_log_partition(model, enc, noise=noise, n=20000)
    assert set(est.candidates) == {"noise", "model_proposal"}
    prop = est.candidates["model_proposal"]
    # weights exp(g(x) - c), x ~ base: log-normal with sd sqrt(w^T Sigma w) ~ 0.5
    assert prop["ess_fraction"] > 0.4 and prop["ess_fraction"] > est.candidates["noise"]["ess_fraction"]
    assert prop["khat"] < 0.5 and prop["reliable"] is True
    assert est.proposal == "model_proposal" and est.ess_fraction == prop["ess_fraction"]
    assert est.khat == prop["khat"] and est.reliable is True
    assert abs(est.log_z - truth) < 4 * log_z_se(prop) + 1e-3
    d = est.to_dict()
    assert d["proposal"] == "model_proposal" and isinstance(d["candidates"]["noise"]["log_z"], float)
    assert set(d["candidates"]["noise"]) >= {"log_z", "ess", "ess_fraction", "khat", "reliable", "n"}
    # the unnormalised log-likelihood with the estimated log Z: log p_base(x) + g(x) - c - log Z
    x = model.base.sample(20)
    torch.manual_seed(5)
    ll = log_likelihood(model, enc, x, k=16, log_z=est)
    torch.manual_seed(5)
    exact = log_likelihood(model.base, enc, x, k=16) + model.g(x) - 0.2 - truth
    assert (ll - exact).abs().max() < 4 * log_z_se(prop) + 1e-3
    # with the tilt exactly zero the weights are constant: exact log Z = -c, no tail
    with torch.no_grad():
        model.tilt[-1].weight.zero_()
        model.tilt[-1].bias.zero_()
    flat = estimate_log_partition(model, enc, n=500)
    assert flat.log_z == pytest.approx(-0.2, abs=1e-10) and flat.ess_fraction == pytest.approx(1.0)
    assert flat.khat == -math.inf and flat.reliable is True
    # unnormalised log-likelihood uses the estimate when log_z is None
    # (same seed: the same encoder samples; log p~ = log p_base - c and log Z = -c)
    torch.manual_seed(5)
    ll = log_likelihood(model, enc, x, k=16)
    torch.manual_seed(5)
    torch.testing.assert_close(ll, log_likelihood(model.base, enc, x, k=16), atol=1e-8, rtol=0)


def test_log_z_choice_rule():
    def cand(frac, khat):
        return {"ess_fraction": frac, "khat": khat, "reliable": khat <= 0.7 and frac >= 0.05}

    # exact wins; among reliable candidates the largest ESS fraction
    assert choose_proposal({"noise": cand(0.9, 0.1), "exact": cand(1.0, -math.inf)}) == "exact"
    assert choose_proposal({"noise": cand(0.3, 0.1), "model_proposal": cand(0.6, 0.6)}) == "model_proposal"
    # a larger ESS fraction with a heavy tail loses to a reliable candidate
    assert choose_proposal({"noise": cand(0.5, 0.9), "model_proposal": cand(0.1, 0.3)}) == "model_proposal"
    # none reliable: the smallest k-hat, whatever the ESS says; NaN weights (k = inf) last
    assert choose_proposal({"noise": cand(0.04, 0.8), "model_proposal": cand(0.5, 1.4)}) == "noise"
    assert choose_proposal({"noise": cand(0.0, math.inf), "model_proposal": cand(0.001, 2.0)}) == "model_proposal"


def test_log_z_errors_and_normalised():
    model = lg_model(normalised=False)
    with pytest.raises(ConfigError, match="cannot estimate log Z"):
        estimate_log_partition(model, None, proposals=["noise"])
    with pytest.raises(ConfigError, match="unknown log Z proposal 'flow'"):
        estimate_log_partition(model, None, proposals=["flow"])
    vae = VAE(3, 2, hidden=(8,))
    est = estimate_log_partition(vae, None)
    assert isinstance(est, LogZEstimate) and est.proposal == "exact" and est.log_z == 0.0
    assert est.to_dict()["ess"] is None  # inf is not strict JSON


# --------------------------------------------------------------------------- accuracy, scores
def test_noise_accuracy_extremes():
    model = lg_model()
    post = ExactPosterior(model)
    x = model.sample(2000)
    far = gaussian(torch.full((4,), 12.0), torch.eye(4))
    assert noise_accuracy(model, post, x, far) > 0.99
    marg = model.marginal()
    same = gaussian(marg.mean.detach(), marg.covariance_matrix.detach())
    assert abs(noise_accuracy(model, post, x, same) - 0.5) < 0.05


def test_anomaly_scores():
    model = lg_model()
    enc = near_posterior_encoder(model)
    x = torch.cat([model.sample(40), model.sample(10) + 8.0])
    s = anomaly_scores(model, enc, x, k=32, batch_size=16)
    assert s.shape == (50,) and torch.isfinite(s).all()
    assert s[40:].min() > s[:40].max()
    labels = torch.cat([torch.zeros(40), torch.ones(10)])
    assert anomaly_metrics(s, labels)["auroc"] == 1.0
    with pytest.raises(ValueError, match="needs a noise"):
        anomaly_scores(model, enc, x, kind="log_ratio")
    with pytest.raises(ValueError, match="unknown anomaly score kind 'foo'"):
        anomaly_scores(model, enc, x, kind="foo")
    noise = gaussian(torch.zeros(4), 4.0 * torch.eye(4))
    r = anomaly_scores(model, ExactPosterior(model), x, kind="log_ratio", noise=noise)
    torch.testing.assert_close(r, noise.log_prob(x) - model.log_marginal(x), atol=1e-8, rtol=0)
    # nll of an unnormalised model leaves log Z out: shifted by c only
    un = lg_model(normalised=False, c=0.7)
    nll = anomaly_scores(un, ExactPosterior(un), x[:5], kind="nll")
    torch.testing.assert_close(nll, -model.log_marginal(x[:5]) + 0.7, atol=1e-8, rtol=0)


def test_isolation_forest_baseline():
    rng = np.random.default_rng(0)
    train = rng.normal(size=(300, 3))
    test = np.concatenate([rng.normal(size=(20, 3)), rng.normal(size=(5, 3)) + 10.0])
    s = isolation_forest_scores(train, test, seed=0)
    assert s.shape == (25,) and s[20:].min() > s[:20].max()
    np.testing.assert_array_equal(s, isolation_forest_scores(torch.tensor(train), torch.tensor(test), seed=0))


# --------------------------------------------------------------------------- sampling
def test_sample_methods():
    vae = VAE(5, 2, hidden=(8,))
    x, method = sample(vae, n=7)
    assert x.shape == (7, 5) and method == "ancestral"
    xj, zj = vae.sample_joint(4)
    assert xj.shape == (4, 5) and zj.shape == (4, 2)

    tilted = tilted_vae(x_dim=3)
    x, method = sample(tilted, n=9, n_proposal=500)
    assert x.shape == (9, 3) and method == "sir-proposal" and torch.isfinite(x).all()

    rbm = small_rbm()
    x, method = sample(rbm, BernoulliEncoder(6, 4), n=8)
    assert x.shape == (8, 6) and method == "gibbs" and set(x.unique().tolist()) <= {0.0, 1.0}

    with pytest.raises(ConfigError, match="unknown sampling method"):
        sample(vae, method="mcmc")


def test_sample_sir_noise_matches_marginal():
    model = lg_model(normalised=False, c=0.3)
    marg = model.marginal()
    noise = gaussian(marg.mean.detach(), 1.5 * marg.covariance_matrix.detach())
    x, method = sample(model, ExactPosterior(model), n=4000, noise=noise, method="sir-noise", n_proposal=40000)
    assert method == "sir-noise" and x.shape == (4000, 4)
    assert (x.mean(0) - marg.mean).abs().max() < 0.15
    # the spread too: uniform weights would leave the noise's 1.5x covariance, inverted
    # weights a wider one still; standardised entries of a 4000-sample covariance
    # scatter by about sqrt(2/4000) ~ 0.02
    cov, cov_hat = marg.covariance_matrix.detach(), torch.cov(x.T)
    sd = cov.diagonal().sqrt()
    assert ((cov_hat - cov) / torch.outer(sd, sd)).abs().max() < 0.1
    two = TwoGaussianMixture(theta=1.0, sigma1=4.0)
    with pytest.raises(ConfigError, match="needs a noise"):
        sample(two, CategoricalEncoder(1, 2), n=5, method="sir-noise")
    y, method = sample(two, CategoricalEncoder(1, 2), n=5, noise=Independent(Normal(torch.zeros(1), torch.ones(1) * 3), 1),
                       method="sir-noise")
    assert y.shape == (5, 1)


def test_from_vae_sample_joint():
    class Dec(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(2, 3)

        def forward(self, z):
            return Independent(Normal(self.lin(z), 1.0), 1)

    base = FromVAE(Dec(), z_dim=2)
    x, z = base.sample_joint(6)
    assert x.shape == (6, 3) and z.shape == (6, 2)
    model = EnergyTiltedVAE(base, 3, hidden=(4,))
    est = estimate_log_partition(model, None, n=200)
    assert est.proposal == "model_proposal" and est.log_z == pytest.approx(0.0, abs=1e-10)
