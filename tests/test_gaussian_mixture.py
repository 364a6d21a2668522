"""The diagonal Gaussian mixture against closed forms, its FVNCE fit, and where the poc
trains it."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import norm

from fvnce.errors import ConfigError
from fvnce.models import DiagonalGaussianMixture, make_model
from fvnce.objectives import make_objective
from fvnce.poc import MIXTURES, PocConfig, mixture_plan
from fvnce.train import TrainConfig, Trainer

MEANS = [[-2.0, 0.5, 1.0], [1.5, -1.0, 0.0]]
SCALES = [[0.5, 1.0, 2.0], [1.2, 0.3, 0.8]]
WEIGHTS = [0.3, 0.7]


def _model(normalised=True) -> DiagonalGaussianMixture:
    m = DiagonalGaussianMixture(3, 2, normalised=normalised).double()
    with torch.no_grad():
        m.means.copy_(torch.tensor(MEANS, dtype=torch.float64))
        m.log_scales.copy_(torch.tensor(SCALES, dtype=torch.float64).log())
        m.logits.copy_(torch.tensor(WEIGHTS, dtype=torch.float64).log() + 0.37)  # softmax ignores the shift
        if not normalised:
            m.log_normaliser.fill_(0.8)
    return m


def _reference(x: np.ndarray) -> np.ndarray:
    comps = [np.log(w) + norm.logpdf(x, np.array(mu), np.array(sd)).sum(-1)
             for w, mu, sd in zip(WEIGHTS, MEANS, SCALES)]
    return logsumexp(np.stack(comps, -1), -1)


def test_marginal_joint_and_posterior_match_the_closed_form():
    m = _model()
    x = torch.randn(50, 3, dtype=torch.float64) * 2
    ref = _reference(x.numpy())
    np.testing.assert_allclose(m.log_marginal(x).detach().numpy(), ref, rtol=0, atol=1e-12)
    z = torch.arange(2).view(2, 1).expand(2, 50)
    joint = m.log_joint(x, z)
    assert joint.shape == (2, 50)
    np.testing.assert_allclose(torch.logsumexp(joint, 0).detach().numpy(), ref, rtol=0, atol=1e-12)
    post = m.posterior(x).probs.detach()
    np.testing.assert_allclose(post.numpy(), (joint - torch.logsumexp(joint, 0)).exp().T.detach().numpy(),
                               rtol=0, atol=1e-12)
    assert float(m.log_partition()) == 0.0


def test_unnormalised_variant_subtracts_its_log_normaliser():
    m = _model(normalised=False)
    x = torch.randn(20, 3, dtype=torch.float64)
    assert not m.normalised and m.c is not None
    np.testing.assert_allclose(m.log_unnormalised_marginal(x).detach().numpy(), _reference(x.numpy()) - 0.8,
                               rtol=0, atol=1e-12)
    z = torch.zeros(20, dtype=torch.long)
    comp0 = math.log(WEIGHTS[0]) + norm.logpdf(x.numpy(), np.array(MEANS[0]), np.array(SCALES[0])).sum(-1)
    np.testing.assert_allclose(m.log_joint(x, z).detach().numpy(), comp0 - 0.8, rtol=0, atol=1e-12)


def test_samples_have_the_mixture_moments():
    torch.manual_seed(0)
    x = _model().sample(200_000)
    w, mu, sd = (torch.tensor(v, dtype=torch.float64) for v in (WEIGHTS, MEANS, SCALES))
    mean = (w[:, None] * mu).sum(0)
    var = (w[:, None] * (sd ** 2 + mu ** 2)).sum(0) - mean ** 2
    # 5 standard errors of the sample mean and variance
    torch.testing.assert_close(x.mean(0), mean, atol=float(5 * (var / 2e5).sqrt().max()), rtol=0)
    torch.testing.assert_close(x.var(0), var, rtol=0.02, atol=0)


def test_registry_builds_it_with_a_categorical_encoder_and_checks_components():
    from fvnce.runs import check_model_sizes

    model, enc = make_model("gaussian_mixture", 5, components=3)
    assert model.latent_type == "discrete" and model.normalised
    assert enc(torch.randn(4, 5)).logits.shape == (4, 3)
    with pytest.raises(ValueError, match="components"):
        DiagonalGaussianMixture(2, 0)
    with pytest.raises(ConfigError, match="components"):
        check_model_sizes({"components": 0})


def test_fvnce_kl_recovers_a_two_component_mixture():
    """FVNCE (kl, a full Gaussian noise, the encoder summed over exactly) fitted to 4,000
    draws of the model above reaches its held-out log-likelihood within 0.03 nats; a
    one-component fit cannot (it misses by far more)."""
    torch.manual_seed(1)
    truth = _model()
    data, test = truth.sample(4000).float(), truth.sample(4000)
    noise = torch.distributions.MultivariateNormal(data.mean(0), torch.cov(data.T) * 1.5)
    best = float(truth.log_marginal(test).mean().detach())
    fits = {}
    for k in (2, 1):
        torch.manual_seed(0)
        model, enc = make_model("gaussian_mixture", 3, components=k)
        Trainer(model, enc, make_objective("fvnce", rule="kl"), noise,
                TrainConfig(steps=1500, batch_size=256, lr=1e-2, progress=False, seed=0)).fit(data)
        fits[k] = float(model.double().log_marginal(test).mean().detach())
    assert best - 0.03 < fits[2] <= best + 0.03
    assert fits[1] < best - 0.2


def test_the_poc_trains_mixtures_on_continuous_tables_and_images_only():
    table = SimpleNamespace(binary=False, image_shape=None)
    assert mixture_plan(PocConfig(), table) == list(MIXTURES) == [1, 4]
    assert mixture_plan(PocConfig(mixtures=(4, 4, 2)), table) == [4, 2]
    assert mixture_plan(PocConfig(mixtures=()), table) == []
    assert mixture_plan(PocConfig(), SimpleNamespace(binary=True, image_shape=None)) == []
    assert mixture_plan(PocConfig(), SimpleNamespace(binary=False, image_shape=(8, 8))) == []
    # continuous images given as (C, H, W) take them, started from the data (fvnce.image_plan)
    assert mixture_plan(PocConfig(), SimpleNamespace(binary=False, image_shape=(1, 8, 8))) == [1, 4]
    assert mixture_plan(PocConfig(), SimpleNamespace(binary=True, image_shape=(1, 8, 8))) == []
    assert mixture_plan(PocConfig(model="tilted_vae"), table) == []
    with pytest.raises(ConfigError, match="--mixtures"):
        PocConfig(mixtures=(0,)).validate()


def test_split_metrics_take_log_likelihood_from_dequantized_rows_and_scores_from_the_rows():
    from fvnce.runs.evaluation import _split_metrics

    m = _model()
    noise = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)), 1)
    run = SimpleNamespace(model=m, encoder=None, noise=noise)
    x = torch.tensor([[0.0, 1.0, 2.0], [1.0, -1.0, 0.0], [3.0, 0.0, 1.0]], dtype=torch.float64)
    jittered = x + 0.25
    labels = torch.tensor([0.0, 0.0, 1.0])
    out = _split_metrics(run, x, labels, None, k=1, x_ll=jittered)
    exact = m.log_marginal(jittered[:2]).detach().double()
    assert out["log_likelihood"] == pytest.approx(float(exact.mean()), abs=1e-9)
    np.testing.assert_allclose(out["_scores"].numpy(), -m.log_marginal(x).detach().numpy(), rtol=0, atol=1e-9)
    plain = _split_metrics(run, x, labels, None, k=1)
    assert plain["log_likelihood"] == pytest.approx(float(m.log_marginal(x[:2]).detach().mean()), abs=1e-9)
