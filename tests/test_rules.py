"""Scoring rules: properness, admissibility, stabilised exponentials at extremes."""

import math

import pytest
import torch
from scipy.optimize import minimize_scalar

from fvnce import rules
from fvnce.rules import GenericRule, scoring_rule


pytestmark = pytest.mark.usefixtures("float64")

PROPER_RULES = [
    ("kl", {}),
    ("power", {"alpha": 1.0}),
    ("power", {"alpha": 1.25}),
    ("power", {"alpha": 1.5}),
    ("power", {"alpha": 2.0}),
    ("power", {"alpha": 2.5}),  # proper, not admissible
    ("power", {"alpha": 0.5}),
    ("shifted_log", {"c": 0.0}),
    ("shifted_log", {"c": 0.5}),
    ("shifted_log", {"c": 2.0}),
    ("logistic", {"nu": 1.0}),
    ("logistic", {"nu": 3.0}),
    ("generic", {"f": lambda r: r * torch.log(r) + 0.5 * r ** 2}),
]
ADMISSIBLE = {"kl", "power-1.0", "power-1.25", "power-1.5", "power-2.0", "shifted_log-0.0", "shifted_log-0.5",
              "shifted_log-2.0", "generic"}


def _rid(name, params):
    vals = [v for k, v in params.items() if k != "f"]
    return "-".join([name, *map(str, vals)])


def _objective(rule, p, q):
    def fn(t):
        t = torch.tensor(t)
        return (p * rule.data_loss(t) + q * rule.noise_loss(t)).item()
    return fn


@pytest.mark.parametrize("name,params", PROPER_RULES, ids=[_rid(*r) for r in PROPER_RULES])
@pytest.mark.parametrize("p,q", [(0.3, 0.7), (2.0, 0.5), (1.0, 1.0), (0.01, 5.0)])
def test_properness_minimiser_is_p_over_q(name, params, p, q):
    rule = scoring_rule(name, **params)
    res = minimize_scalar(_objective(rule, p, q), bounds=(-15, 15), method="bounded",
                          options={"xatol": 1e-10, "maxiter": 500})
    assert res.x == pytest.approx(math.log(p / q), abs=1e-4)
    # exact first-order condition at r = p/q, and a strict minimum around it
    t = torch.tensor(math.log(p / q), requires_grad=True)
    value = p * rule.data_loss(t) + q * rule.noise_loss(t)
    (g,) = torch.autograd.grad(value, t)
    assert abs(g.item()) <= 1e-10 * (p + q)
    f = _objective(rule, p, q)
    assert f(t.item() - 0.05) > value.item() < f(t.item() + 0.05)


@pytest.mark.parametrize("name,params", PROPER_RULES, ids=[_rid(*r) for r in PROPER_RULES])
def test_admissibility(name, params):
    rule = scoring_rule(name, **params)
    assert rule.admissible == (_rid(name, params) in ADMISSIBLE)


def test_inadmissible_messages_name_side_and_parameter():
    (msg,) = scoring_rule("power", alpha=2.5).convexity_violations()
    assert msg.startswith("data side") and "alpha=2.5" in msg
    (msg,) = scoring_rule("logistic", nu=2).convexity_violations()
    assert msg.startswith("noise side") and "nu=2" in msg


def test_known_closed_forms():
    t = torch.linspace(-3, 3, 13)
    r = t.exp()
    torch.testing.assert_close(scoring_rule("kl").data_loss(t), -t)
    torch.testing.assert_close(scoring_rule("kl").noise_loss(t), r)
    a = 1.5
    torch.testing.assert_close(scoring_rule("power", alpha=a).data_loss(t), -(r ** (a - 1) - 1) / (a - 1))
    torch.testing.assert_close(scoring_rule("power", alpha=a).noise_loss(t), (r ** a - 1) / a)
    c = 0.5
    torch.testing.assert_close(scoring_rule("shifted_log", c=c).data_loss(t), -torch.log(r + c))
    torch.testing.assert_close(scoring_rule("shifted_log", c=c).noise_loss(t), r - c * torch.log(r + c))
    nu = 3.0
    torch.testing.assert_close(scoring_rule("logistic", nu=nu).data_loss(t), torch.log1p(nu / r))
    torch.testing.assert_close(scoring_rule("logistic", nu=nu).noise_loss(t), nu * torch.log1p(r / nu))


def test_generic_rule_matches_builtin_kl():
    gen = GenericRule(lambda r: r * torch.log(r))  # f' = log r + 1: l1 = -log r - 1, l0 = r
    t = torch.linspace(-4, 4, 9, requires_grad=True)
    kl = scoring_rule("kl")
    torch.testing.assert_close(gen.data_loss(t), kl.data_loss(t) - 1)
    torch.testing.assert_close(gen.noise_loss(t), kl.noise_loss(t))
    (g,) = torch.autograd.grad(gen.noise_loss(t).sum(), t)
    torch.testing.assert_close(g, t.exp())


def test_generic_rule_refuses_non_convex_generator():
    with pytest.raises(ValueError, match="not strictly convex"):
        GenericRule(lambda r: -torch.log1p(r) * 0 + torch.sqrt(r))


# power alpha > 2 is excluded: exp((alpha - 1) 80) leaves float32's range by construction
FINITE_RULES = [r for r in PROPER_RULES if r[0] != "generic" and r[1].get("alpha", 1.0) <= 2]


@pytest.mark.parametrize("name,params", FINITE_RULES, ids=[_rid(*r) for r in FINITE_RULES])
def test_data_side_finite_over_minus80_to_80_float32(name, params):
    rule = scoring_rule(name, **params)
    t = torch.linspace(-80, 80, 321, dtype=torch.float32, requires_grad=True)
    v = rule.data_loss(t)
    (g,) = torch.autograd.grad(v.sum(), t)
    assert torch.isfinite(v).all() and torch.isfinite(g).all()


def test_exp_mode_changes_output_beyond_tau_only():
    t = torch.tensor([0.0, 1.0, 15.0])
    exact = scoring_rule("power", alpha=1.5).noise_loss(t)
    for mode in ("clip", "linear"):
        stab = scoring_rule("power", alpha=1.5, exp_mode=mode, tau=5.0).noise_loss(t)
        torch.testing.assert_close(stab[:2], exact[:2])
        assert stab[2] < exact[2]  # the tangent in r lies below the convex l0


@pytest.mark.parametrize("bad", [
    ("power", {"alpha": 0.0}, "alpha"), ("power", {"alpha": float("nan")}, "alpha"),
    ("shifted_log", {"c": -1.0}, "c >= 0"), ("logistic", {"nu": 0}, "nu > 0"),
    ("kl", {"exp_mode": "huge"}, "exp_mode"), ("kl", {"tau": float("inf")}, "tau"), ("power", {"tau": 0.0}, "tau must be a positive"),
    ("nope", {}, "valid rules"), ("kl", {"alpha": 2.0}, "alpha"),
])
def test_bad_parameters_named(bad):
    name, params, fragment = bad
    with pytest.raises(ValueError, match=fragment):
        scoring_rule(name, **params)


def test_registry_covers_documented_rules():
    assert {"kl", "power", "shifted_log", "logistic", "generic"} <= set(rules.RULES)
    for name in ("kl", "power", "shifted_log", "logistic"):
        rule = scoring_rule(name)
        assert rule.name == name
        rebuilt = scoring_rule(**{**rule.config()})
        assert rebuilt.config() == rule.config()
