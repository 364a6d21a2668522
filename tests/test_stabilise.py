"""The stabilised rules stay rules: proper (stated minimiser), convex in r on both sides,
bounded below in the log-normaliser, and a fit at a small tau does not collapse.

Oracles: grid minimisation in float64 of the pointwise expected loss p l1(r) + q l0(r);
the Bregman identity l0'(r) = -r l1'(r) of a generator; the closed-form partition
function of the linear-Gaussian model.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fvnce.models import LinearGaussian
from fvnce.objectives import make_objective
from fvnce.rules import scoring_rule

ADMISSIBLE = [("kl", {}), ("power", {"alpha": 1.25}), ("power", {"alpha": 1.5}), ("power", {"alpha": 2.0}),
              ("shifted_log", {"c": 0.5}), ("shifted_log", {"c": 2.0})]
IDS = [n + "".join(f"{v:g}" for v in p.values()) for n, p in ADMISSIBLE]
MODES = ("linear", "clip")


def _rule(name, params, mode, tau):
    return scoring_rule(name, exp_mode=mode, tau=tau, **params)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("tau", [1.0, 3.0])
@pytest.mark.parametrize("name,params", ADMISSIBLE, ids=IDS)
def test_stabilised_rule_is_proper_with_stated_minimiser(name, params, mode, tau):
    """argmin_t p l1(e^t) + q l0(e^t) is log(p/q) for linear, min(log(p/q), tau) for clip."""
    rule = _rule(name, params, mode, tau)
    t = torch.linspace(-12.0, 12.0, 240001, dtype=torch.float64)
    for log_ratio in (-8.0, -2.5, -0.3, 0.0, 0.7, 2.5, 8.0):
        p, q = math.exp(log_ratio), 1.0
        loss = p * rule.data_loss(t) + q * rule.noise_loss(t)
        best = t[loss.argmin()].item()
        expect = log_ratio if mode == "linear" else min(log_ratio, tau)
        assert best == pytest.approx(expect, abs=2e-3), (log_ratio, best)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,params", ADMISSIBLE, ids=IDS)
def test_stabilised_sides_convex_in_r(name, params, mode):
    """Second differences in r (on a fine grid across both band edges) are >= 0: Jensen,
    and with it the fully variational bound, still holds for the stabilised loss."""
    tau = 1.5
    rule = _rule(name, params, mode, tau)
    for lo, hi in ((math.exp(-tau) / 3, math.exp(-tau) * 3), (math.exp(tau) / 3, math.exp(tau) * 3), (0.05, 40.0)):
        r = torch.linspace(lo, hi, 4001, dtype=torch.float64)
        for side in (rule.data_loss, rule.noise_loss):
            v = side(torch.log(r))
            d2 = v[2:] - 2 * v[1:-1] + v[:-2]
            assert (d2 >= -1e-12 * v.abs().max()).all()


@pytest.mark.parametrize("name,params", ADMISSIBLE, ids=IDS)
def test_linear_mode_is_the_rule_of_a_generator(name, params):
    """l0'(r) = -r l1'(r) everywhere (the identity of l1 = -f', l0 = r f' - f): the
    linear mode is itself a Bregman rule, hence strictly proper."""
    rule = _rule(name, params, "linear", 2.0)
    t = torch.linspace(-6.0, 6.0, 121, dtype=torch.float64, requires_grad=True)
    (g1,) = torch.autograd.grad(rule.data_loss(t).sum(), t)
    (g0,) = torch.autograd.grad(rule.noise_loss(t).sum(), t)
    # in t: dl0/dt = e^t dl0/dr and dl1/dt = e^t dl1/dr, so dl0/dt = -e^t dl1/dt
    torch.testing.assert_close(g0, -torch.exp(t.detach()) * g1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name,params", ADMISSIBLE, ids=IDS)
def test_linear_mode_equals_exact_inside_band_and_continues_linearly(name, params):
    tau = 2.0
    exact, lin = _rule(name, params, "exact", tau), _rule(name, params, "linear", tau)
    inside = torch.linspace(-tau, tau, 101, dtype=torch.float64)
    torch.testing.assert_close(lin.data_loss(inside), exact.data_loss(inside), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.noise_loss(inside), exact.noise_loss(inside), rtol=1e-12, atol=1e-12)
    # beyond the band: data side linear in t with slope -h(edge), noise side linear in r
    h_hi = float(exact.weight(torch.tensor(tau, dtype=torch.float64)))
    h_lo = float(exact.weight(torch.tensor(-tau, dtype=torch.float64)))
    t = torch.tensor([tau + 1.0, tau + 5.0], dtype=torch.float64)
    edge = torch.tensor([tau], dtype=torch.float64)
    torch.testing.assert_close(lin.data_loss(t), exact.data_loss(edge) - h_hi * (t - tau))
    torch.testing.assert_close(lin.noise_loss(t), exact.noise_loss(edge) + h_hi * (torch.exp(t) - math.exp(tau)))
    t = torch.tensor([-tau - 1.0, -tau - 30.0], dtype=torch.float64)
    edge = torch.tensor([-tau], dtype=torch.float64)
    torch.testing.assert_close(lin.data_loss(t), exact.data_loss(edge) + h_lo * (-tau - t))
    torch.testing.assert_close(lin.noise_loss(t), exact.noise_loss(edge) + h_lo * (torch.exp(t) - math.exp(-tau)))


def test_kl_linear_is_exactly_kl():
    t = torch.linspace(-50, 50, 1001, dtype=torch.float64)
    exact, lin = scoring_rule("kl"), scoring_rule("kl", exp_mode="linear", tau=1.0)
    assert torch.equal(exact.data_loss(t), lin.data_loss(t))
    assert torch.equal(exact.noise_loss(t), lin.noise_loss(t))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name,params", ADMISSIBLE, ids=IDS)
def test_bounded_below_in_the_log_normaliser(name, params, mode):
    """Shifting every log ratio by -c (the log-normaliser) cannot drive the empirical loss
    to -inf; with the linear mode it grows without bound at both ends (no dead zone)."""
    g = torch.Generator().manual_seed(0)
    data = 1.0 + 0.5 * torch.randn(256, generator=g, dtype=torch.float64)
    noise = -1.0 + 0.5 * torch.randn(256, generator=g, dtype=torch.float64)
    rule = _rule(name, params, mode, 1.0)
    cs = [-300.0, -100.0, -30.0, -3.0, 0.0, 3.0, 30.0, 100.0, 1000.0]
    losses = [float(rule.data_loss(data - c).mean() + rule.noise_loss(noise - c).mean()) for c in cs]
    finite = [v for v in losses if math.isfinite(v)]
    assert min(finite) > -10.0, losses
    assert losses[0] > losses[4] + 10  # model mass far above the noise: the noise term wins
    if mode == "linear":
        assert losses[-1] > losses[-2] > losses[4]  # no mass anywhere: the data term grows
        assert losses[-1] > losses[4] + 50


def test_stabilised_values_and_gradients_finite_at_extremes():
    """Finite values and gradients from -1e4 up to log ratios whose true loss still fits
    the dtype (the noise loss grows like r: e^(2 tau) e^(t - tau) for power 2 leaves
    float32 near t = 78, float64 near t = 700; the trainer rolls back before that)."""
    t32 = torch.tensor([-1e4, -80.0, 0.0, 9.99, 10.0, 10.01, 60.0], dtype=torch.float32, requires_grad=True)
    t64 = torch.tensor([-1e4, 0.0, 10.0, 300.0, 600.0], dtype=torch.float64, requires_grad=True)
    for name, params in ADMISSIBLE:
        for mode in MODES:
            rule = _rule(name, params, mode, 10.0)
            for t in (t32, t64):
                for side in (rule.data_loss, rule.noise_loss):
                    v = side(t)
                    (g,) = torch.autograd.grad(v.sum(), t)
                    assert torch.isfinite(v).all() and torch.isfinite(g).all(), (name, mode, side)
            # the data side never exponentiates beyond the band: finite for any log ratio
            big = torch.tensor([-1e30, 1e4, 1e30], dtype=torch.float32)
            assert torch.isfinite(rule.data_loss(big)).all() or mode == "clip"


@pytest.mark.parametrize("tau", [0.0, -1.0, float("nan"), float("inf")])
def test_tau_must_be_positive(tau):
    with pytest.raises(ValueError, match="tau must be a positive"):
        scoring_rule("power", alpha=1.5, exp_mode="linear", tau=tau)


class _ExactPosterior(nn.Module):
    """q(z|x) = the model's exact posterior (the bound is then tight)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.posterior(x)


@pytest.mark.parametrize("name,params", [("kl", {}), ("power", {"alpha": 1.5}), ("power", {"alpha": 2.0}),
                                         ("shifted_log", {"c": 1.0})],
                         ids=["kl", "power1.5", "power2", "shifted_log1"])
def test_one_d_linear_gaussian_fit_at_tau_one_does_not_collapse(name, params):
    """Data N(0.5, 0.3^2), noise N(0, 1), an unnormalised 1-D linear-Gaussian model and
    the exact posterior as encoder, exp_mode linear with tau = 1 (most data ratios lie
    outside the band): the fit recovers sd 0.3 and c -> log Z (an improper stabilisation
    collapsed to sd 0.09, c = -24)."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = 0.5 + 0.3 * torch.randn(4000, 1, generator=g, dtype=torch.float64)
    model = LinearGaussian(1, 1, sigma=0.5, normalised=False).double()
    encoder = _ExactPosterior(model)
    noise = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)), 1)
    obj = make_objective("fvnce", rule=name, exp_mode="linear", tau=1.0, nu=2, **params)
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(500):
        opt.zero_grad()
        out = obj(model, encoder, x, noise)
        out.loss.backward()
        opt.step()
    with torch.no_grad():
        sd = model.marginal().covariance_matrix.sqrt().item()
        mean = model.marginal().mean.item()
        log_z_err = float(model.log_partition() - model.c)
    assert sd == pytest.approx(0.3, abs=0.03)
    assert mean == pytest.approx(0.5, abs=0.05)
    assert abs(log_z_err) < 0.15
