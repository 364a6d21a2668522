"""Energy-tilted models that stay honest: the bounded tilt, the frozen base, the ``base``
noise (exact ratio exp(g - c)), and the base fitted by the ELBO while the rule fits the tilt.

Oracle: a linear-Gaussian base (exact marginal and sampler) with a linear tilt
g(x) = a.x, for which E_base[exp g] is the Gaussian moment-generating function.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from fvnce.errors import ConfigError
from fvnce.models import EnergyTiltedVAE, LinearGaussian, make_model
from fvnce.noise import BaseModelNoise
from fvnce.objectives import make_objective

D = 3


def _tilted(bound=None, freeze=True, seed=0):
    torch.manual_seed(seed)
    base = LinearGaussian(D, 2, sigma=0.6, normalised=True).double()
    model = EnergyTiltedVAE(base, D, hidden=(), tilt_bound=bound, freeze_base=freeze).double()
    with torch.no_grad():  # a linear tilt g(x) = a.x + b0 (hidden=() makes the tilt one Linear layer)
        model.tilt[-1].weight.copy_(torch.tensor([[0.3, -0.2, 0.1]], dtype=torch.float64))
        model.tilt[-1].bias.fill_(0.05)
        model.log_normaliser.fill_(0.2)
    return model


@torch.no_grad()
def _exact_log_z(model) -> float:
    """log E_base[exp(g(x) - c)] for a linear g and a Gaussian base marginal."""
    m = model.base.marginal()
    a = model.tilt[-1].weight[0]
    b0 = float(model.tilt[-1].bias[0])
    return float(a @ m.mean + 0.5 * a @ m.covariance_matrix @ a) + b0 - float(model.log_normaliser)


def test_bounded_tilt_stays_within_bound_and_is_identity_near_zero():
    model = _tilted(bound=2.0)
    x = torch.tensor([[1e4, -1e4, 3.0], [0.0, 0.0, 0.0], [-1e6, 0.0, 1e6]], dtype=torch.float64)
    g = model.g(x)
    assert (g.abs() <= 2.0).all() and torch.isfinite(g).all()
    unbounded = _tilted(bound=None)
    with torch.no_grad():
        pts = torch.randn(50, D, dtype=torch.float64) * 5
        torch.testing.assert_close(model.g(pts), 2.0 * torch.tanh(unbounded.g(pts) / 2.0))
        small = torch.tensor([[-0.17, 0.0, 0.0]], dtype=torch.float64)  # h = 0.05 - 0.051: |h| << B
        assert float(model.g(small)) == pytest.approx(float(unbounded.g(small)), rel=1e-4)
    with pytest.raises(ValueError, match="tilt_bound"):
        _tilted(bound=0.0)


def test_freeze_base_leaves_only_tilt_and_normaliser_trainable():
    model, _ = make_model("tilted_vae", 4, likelihood="gaussian", z_dim=2, freeze_base=True, tilt_bound=3.0)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("tilt.") or n == "log_normaliser" for n in trainable)


def test_base_noise_ratio_is_exact_and_its_noise_term_estimates_z():
    model = _tilted()
    noise = BaseModelNoise(model.base, dim=D)
    x = torch.randn(5, D, dtype=torch.float64)
    torch.testing.assert_close(noise.exact_log_ratio(model, x), model.g(x) - model.log_normaliser)
    # the exact ratio is p~(x) / p_base(x), checked through the closed-form marginals
    log_p_tilde = model.base.log_marginal(x) + model.g(x) - model.log_normaliser
    torch.testing.assert_close(noise.exact_log_ratio(model, x), log_p_tilde - model.base.log_marginal(x))
    # KL noise term = mean of exp(g - c) over base samples -> Z (Gaussian MGF), within 4 SE
    torch.manual_seed(1)
    obj = make_objective("fvnce", rule="kl", nu=200)
    out = obj(model, None, x[:1].repeat(100, 1), noise)
    terms = out.noise_terms.detach()
    se = float(terms.std() / math.sqrt(terms.numel()))
    assert float(terms.mean()) == pytest.approx(math.exp(_exact_log_z(model)), abs=4 * se)
    # the data terms are the rule's exact data loss at the exact ratio
    torch.testing.assert_close(out.data_terms, -(model.g(x[:1]) - model.log_normaliser).repeat(100))


def test_base_noise_refuses_misuse():
    model = _tilted(freeze=False)
    with pytest.raises(ConfigError, match="frozen"):
        BaseModelNoise(model.base, dim=D)
    model = _tilted()
    noise = BaseModelNoise(model.base, dim=D)
    with pytest.raises(ConfigError, match="no tractable density"):
        noise.log_prob(torch.zeros(1, D))
    other = _tilted(seed=1)
    with pytest.raises(ConfigError, match="another model"):
        noise.exact_log_ratio(other, torch.zeros(1, D))
    assert noise.sample((7,)).shape == (7, D)


class _OwnRNGNoise:
    """A noise that draws from its own generator (so the global RNG that draws the
    encoder's latents is consumed identically with and without it)."""

    def __init__(self, dim):
        self.d = Independent(Normal(torch.zeros(dim, dtype=torch.float64), 2 * torch.ones(dim, dtype=torch.float64)), 1)
        self.g = torch.Generator().manual_seed(5)

    def sample(self, shape):
        return 2 * torch.randn(*shape, self.d.event_shape[0], generator=self.g, dtype=torch.float64)

    def log_prob(self, x):
        return self.d.log_prob(x)


@pytest.mark.parametrize("rule,params", [("kl", {}), ("power", {"alpha": 1.5})])
def test_base_fit_elbo_gives_the_base_exactly_the_elbo_gradient(rule, params):
    """base_fit='elbo': base and encoder get the gradient of -ELBO (identical to the elbo
    objective on the same latents), the tilt and c only the rule's."""
    torch.manual_seed(0)
    model, encoder = make_model("tilted_vae", D, likelihood="gaussian", z_dim=2, hidden=(8,), tilt_hidden=(8,))
    model.double(), encoder.double()
    with torch.no_grad():
        model.tilt[-1].weight.normal_(0, 0.3)
    x = torch.randn(16, D, dtype=torch.float64)
    obj = make_objective("fvnce", rule=rule, exp_mode="linear", tau=10.0, **params)
    assert obj.fits_base_by_elbo(model)
    torch.manual_seed(3)
    out = obj(model, encoder, x, _OwnRNGNoise(D))
    base_params = list(model.base.parameters()) + list(encoder.parameters())
    g_fv = torch.autograd.grad(out.loss, base_params, allow_unused=True, materialize_grads=True, retain_graph=True)
    torch.manual_seed(3)
    elbo = make_objective("elbo")(model.base, encoder, x)
    g_elbo = torch.autograd.grad(elbo.loss, base_params, allow_unused=True, materialize_grads=True)
    for a, b in zip(g_fv, g_elbo):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    # the tilt and c get a non-zero gradient, from the rule only
    g_tilt = torch.autograd.grad(out.loss, [model.log_normaliser, *model.tilt.parameters()])
    assert all(bool(torch.isfinite(t).all()) for t in g_tilt) and float(g_tilt[0].abs()) > 0
    # base_fit='rule' is the plain bound: the base's gradient then differs
    torch.manual_seed(3)
    plain = make_objective("fvnce", rule=rule, exp_mode="linear", tau=10.0, base_fit="rule", **params)
    out2 = plain(model, encoder, x, _OwnRNGNoise(D))
    g_rule = torch.autograd.grad(out2.loss, list(model.base.parameters()), allow_unused=True, materialize_grads=True)
    assert any(not torch.allclose(a, b) for a, b in zip(g_rule, g_elbo[:len(g_rule)]))


def test_base_fit_elbo_refused_without_a_base():
    model, encoder = make_model("linear_gaussian", D, normalised=False)
    with pytest.raises(ConfigError, match="base_fit='elbo'"):
        make_objective("fvnce", base_fit="elbo")(model, encoder, torch.zeros(2, D), _OwnRNGNoise(D))
    assert not make_objective("fvnce").fits_base_by_elbo(model)
    with pytest.raises(ConfigError, match="base_fit"):
        make_objective("fvnce", base_fit="sometimes")


def test_base_noise_run_trains_evaluates_and_reloads(tmp_path):
    """fvnce train --noise base --init-from VAE: tilt-only training against the VAE's own
    samples; log Z through the base is reliable and the reloaded run scores the same."""
    from fvnce.data import DataSpec
    from fvnce.runs import RunConfig, evaluate_run, load_run, train_run
    from fvnce.train import TrainConfig

    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 2, generator=g) * torch.tensor([1.0, 0.3]) + torch.tensor([0.5, -1.0])
    import numpy as np
    path = tmp_path / "d.npy"
    np.save(path, x.numpy())
    spec = DataSpec(source=str(path))
    tc = dict(steps=60, batch_size=64, progress=False, eval_every=20, checkpoint_every=30, device="cpu")
    train_run(RunConfig(data=spec, objective="elbo", train=TrainConfig(**tc), eval_k=8), tmp_path / "vae")
    rc = RunConfig(data=spec, objective="fvnce", noise="base", model_options={"tilt_bound": 2.0},
                   objective_options={"rule": "power", "alpha": 1.5, "exp_mode": "linear", "tau": 10.0},
                   train=TrainConfig(**tc), eval_k=8, init_from=str(tmp_path / "vae"))
    train_run(rc, tmp_path / "tilt")
    ev = evaluate_run(tmp_path / "tilt")
    assert ev["log_z"]["reliable"] and ev["noise_term"]["reliable"]
    run = load_run(tmp_path / "tilt")
    assert isinstance(run.noise, BaseModelNoise) and run.noise.vae is run.model.base
    assert not any(p.requires_grad for p in run.model.base.parameters())
    # the base did not move: it equals the VAE it started from
    vae = load_run(tmp_path / "vae")
    for a, b in zip(run.model.base.state_dict().values(), vae.model.state_dict().values()):
        assert torch.equal(a, b)


def test_bounded_mlp_energy_has_a_reliable_log_z_through_its_confinement():
    """With |E| <= B the Gaussian confinement is a proposal whose log-weights span at most
    2B: log Z through it is reliable and agrees with a brute-force estimate through a
    wide Gaussian proposal; without the bound there is no such proposal."""
    from fvnce.evaluate import estimate_log_partition
    from fvnce.models import MLPEnergy

    torch.manual_seed(0)
    model = MLPEnergy(2, z_dim=1, hidden=(16,), lam=0.5, energy_bound=2.0).double()
    with torch.no_grad():
        for p in model.energy.parameters():
            p.mul_(3.0)  # a strongly varying energy, clipped by the bound
    assert MLPEnergy(2, 1, (16,), 0.5).proposal() is None
    torch.manual_seed(1)
    est = estimate_log_partition(model, None, proposals=("model_proposal",), n=20000)
    assert est.proposal == "model_proposal" and est.reliable and est.khat < 0.5
    prop = model.proposal()
    x, z = prop.sample_joint(5000)
    lw = model.log_joint(x, z) - prop.log_joint(x, z)
    assert float((lw.max() - lw.min()).detach()) <= 4.0 + 1e-9
    # brute force: a wide Gaussian over (x, z), 400k draws
    g = torch.Generator().manual_seed(2)
    xz = torch.randn(400_000, 3, generator=g, dtype=torch.float64) * 3.0
    log_q = Normal(0.0, 3.0).log_prob(xz).sum(-1)
    lw_bf = model.log_joint(xz[:, :2], xz[:, 2:]).detach() - log_q
    brute = float(torch.logsumexp(lw_bf, 0) - math.log(lw_bf.numel()))
    assert est.log_z == pytest.approx(brute, abs=0.03)
