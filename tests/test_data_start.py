"""Models that start from the training data: probabilistic PCA (``linear_gaussian``,
``init="pca"``) and the diagonal mixture (``gaussian_mixture``, ``init="data"``).

Oracles: the maximum-likelihood PPCA is a stationary point of the exact log-likelihood
(zero gradient) whose covariance has the sample covariance's leading eigenpairs and the
mean of the others (Tipping & Bishop 1999); with the encoder at the exact posterior, every
importance weight equals ``p(x)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fvnce.encoders import CategoricalEncoder, GaussianEncoder
from fvnce.evaluate import log_likelihood
from fvnce.models import make_model
from fvnce.models.gaussian_mixture import DiagonalGaussianMixture
from fvnce.models.linear_gaussian import LinearGaussian


def _rows(n=60, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, 4, generator=g, dtype=torch.float64)
    return torch.randn(n, 4, generator=g, dtype=torch.float64) @ a.T + 0.3 * torch.randn(
        n, d, generator=g, dtype=torch.float64) + 2.0


def _ppca(x, k, quantum=None):
    model = LinearGaussian(x.shape[1], k, init="pca").double()
    encoder = GaussianEncoder(x.shape[1], k, ()).double()
    model.start_from_data(x, encoder, quantum=quantum)
    return model, encoder


@pytest.mark.parametrize("k", [1, 3, 6])
def test_ppca_start_is_the_maximum_likelihood_solution(k):
    x = _rows()
    model, _ = _ppca(x, k)
    cov = model.marginal().covariance_matrix
    sample = torch.cov(x.T, correction=0)
    want = torch.linalg.eigvalsh(sample).flip(0)
    got = torch.linalg.eigvalsh(cov).flip(0)
    assert torch.allclose(got[:k], want[:k], rtol=1e-10)
    assert torch.allclose(got[k:], want[k:].mean().expand(x.shape[1] - k), rtol=1e-10)
    assert torch.allclose(model.b, x.mean(0))
    # a stationary point of the exact mean log-likelihood
    model.zero_grad()
    model.log_marginal(x).mean().backward()
    for p in (model.W, model.b, model.log_sigma):
        assert p.grad.abs().max() < 1e-8


def test_ppca_start_sets_the_encoder_to_the_exact_posterior():
    x = _rows()
    model, encoder = _ppca(x, 3)
    post, q = model.posterior(x), encoder(x)
    assert torch.allclose(q.mean, post.mean, atol=1e-10)
    assert torch.allclose(q.base_dist.scale ** 2, torch.diagonal(post.covariance_matrix, dim1=-2, dim2=-1),
                          rtol=1e-8)
    # every importance weight is p(x): one sample gives the exact log-likelihood
    torch.manual_seed(0)
    ll = log_likelihood(model, encoder, x, k=1)
    assert torch.allclose(ll, model.log_marginal(x), atol=1e-8)


def test_ppca_quantum_adds_the_dequantisation_variance():
    x = _rows()
    plain, _ = _ppca(x, 3)
    q = 0.5
    model, _ = _ppca(x, 3, quantum=q)
    assert math.isclose(float(model.log_sigma.detach().exp() ** 2), float(plain.log_sigma.detach().exp() ** 2) + q * q / 12,
                        rel_tol=1e-12)
    got = torch.linalg.eigvalsh(model.marginal().covariance_matrix)
    want = torch.linalg.eigvalsh(plain.marginal().covariance_matrix) + q * q / 12
    assert torch.allclose(got, want, rtol=1e-10)


@pytest.mark.parametrize("k", [59, 80])
def test_ppca_start_refuses_latents_that_leave_no_variance(k):
    x = _rows(n=60, d=100)
    with pytest.raises(ValueError, match="leaves no variance"):
        _ppca(x, k)


def test_ppca_options_are_checked():
    with pytest.raises(ValueError, match="init must be one of"):
        LinearGaussian(4, 2, init="kmeans")
    with pytest.raises(ValueError, match="z_dim must lie between"):
        LinearGaussian(4, 5)
    model, _ = make_model("linear_gaussian", 6, z_dim=2)
    assert not model.starts_from_data


def test_mixture_start_from_moments():
    x = _rows()
    m = DiagonalGaussianMixture(x.shape[1], 1, init="data").double()
    m.start_from_data(x, quantum=0.3)
    assert torch.allclose(m.means[0], x.mean(0))
    assert torch.allclose(m.log_scales.exp()[0] ** 2, x.var(0) + 0.09 / 12)
    # one component is the product of the independent Gaussians
    want = torch.distributions.Normal(x.mean(0), (x.var(0) + 0.09 / 12).sqrt()).log_prob(x).sum(-1)
    assert torch.allclose(m.log_marginal(x), want)
    torch.manual_seed(0)
    m3 = DiagonalGaussianMixture(x.shape[1], 3, init="data").double()
    m3.start_from_data(x)
    rows = {tuple(np.round(r.numpy(), 12)) for r in x}
    assert all(tuple(np.round(mu.detach().numpy(), 12)) in rows for mu in m3.means)
    assert len({tuple(mu.detach().numpy()) for mu in m3.means}) == 3
    assert torch.allclose(m3.logits, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="need at least 5 training rows"):
        DiagonalGaussianMixture(3, 5, init="data").start_from_data(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="init must be one of"):
        DiagonalGaussianMixture(3, 2, init="pca")


def test_per_pixel_terms_sum_to_the_decoders_log_likelihood():
    """The per-pixel maps of the simple families (fvnce.maps) split log p(x | z) exactly."""
    from fvnce.maps import pixel_anomaly_maps

    x = _rows(n=20, d=12)
    model, encoder = _ppca(x, 3)
    z = encoder(x).sample((5,))
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(model.pixel_log_probs(x, z).sum(-1), model.log_joint(x, z) - prior)
    mix = DiagonalGaussianMixture(12, 3, init="data").double()
    torch.manual_seed(1)
    mix.start_from_data(x)
    zc = torch.randint(0, 3, (5, 20))
    log_pi = torch.log_softmax(mix.logits, -1)[zc]
    assert torch.allclose(mix.pixel_log_probs(x, zc).sum(-1), mix.log_joint(x, zc) - log_pi)
    for m, enc in ((model, encoder), (mix, CategoricalEncoder(12, 3).double())):
        maps = pixel_anomaly_maps(m, enc, x, (1, 3, 4), k=4)
        assert maps.shape == (20, 3, 4) and torch.isfinite(maps).all()


def test_ppca_density_and_samples_in_low_rank_form_match_the_full_covariance():
    """The marginal never builds the D x D covariance (Woodbury); it must equal the full one."""
    x = _rows()
    model, _ = _ppca(x, 3)
    w, s2 = model.W.detach(), float(model.log_sigma.detach().exp() ** 2)
    full = torch.distributions.MultivariateNormal(model.b.detach(), w @ w.T + s2 * torch.eye(12, dtype=torch.float64))
    assert torch.allclose(model.log_marginal(x), full.log_prob(x), rtol=1e-10)
    torch.manual_seed(0)
    y = model.sample(200_000)
    assert y.shape == (200_000, 12)
    assert torch.allclose(y.mean(0), model.b.detach(), atol=0.02)
    assert torch.allclose(torch.cov(y.T), full.covariance_matrix, atol=0.05 * float(full.covariance_matrix.abs().max()))


def test_ppca_runs_keep_the_exact_posterior_as_encoder_through_training():
    """A learned encoder drifts off the posterior at thousands of pixels; PPCA's run keeps
    the exact one, so every importance weight stays p(x) after any step."""
    from fvnce.encoders import ExactPosterior

    x = _rows().float()
    model, encoder = make_model("linear_gaussian", 12, z_dim=3, init="pca")
    assert isinstance(encoder, ExactPosterior) and not list(encoder.parameters())
    model.start_from_data(x, encoder)
    with torch.no_grad():
        model.W.add_(0.05 * torch.randn_like(model.W))  # any training step
    torch.manual_seed(0)
    assert torch.allclose(log_likelihood(model, encoder, x, k=1), model.log_marginal(x), atol=1e-3)
    _, plain = make_model("linear_gaussian", 12, z_dim=3)
    assert isinstance(plain, GaussianEncoder)
