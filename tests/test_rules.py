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
    """README's rules table and ``rules.RULES`` agree both ways (internal rules listed
    here), and each rule's ``l1``/``l0`` equal the table's formulas, written below as
    independent float64 oracles, at ratios across (0, inf) and for several parameters."""
    import re
    from pathlib import Path

    # rules in RULES that the README table does not list, and why
    internal = {"generic": "wraps a Python callable f (GenericRule(f)): not selectable by name from a config or the CLI"}
    # the table's l1 and l0 cells verbatim, the parameters to try, and the formulas
    log = math.log
    oracles = {
        "kl": ("-log r", "r", [{}],
               lambda r: -log(r), lambda r: r),
        "power": ("-(r^(a-1)-1)/(a-1)", "(r^a-1)/a", [{"alpha": 1.25}, {"alpha": 1.5}, {"alpha": 2.0}],
                  lambda r, alpha: -(r ** (alpha - 1) - 1) / (alpha - 1), lambda r, alpha: (r ** alpha - 1) / alpha),
        "shifted_log": ("-log(r+c)", "r - c log(r+c)", [{"c": 0.0}, {"c": 0.5}, {"c": 2.0}],
                        lambda r, c: -log(r + c), lambda r, c: r - c * log(r + c)),
        "logistic": ("log(1+nu/r)", "nu log(1+r/nu)", [{"nu": 1.0}, {"nu": 3.0}],
                     lambda r, nu: log(1 + nu / r), lambda r, nu: nu * log(1 + r / nu)),
    }

    lines = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8").splitlines()
    header = [i for i, line in enumerate(lines) if re.match(r"\|\s*rule\s*\|\s*`l1\(r\)`\s*\|\s*`l0\(r\)`\s*\|", line)]
    assert len(header) == 1, "README.md needs exactly one rules table (| rule | `l1(r)` | `l0(r)` | ...)"
    table = {}
    for line in lines[header[0] + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        name = re.match(r"`(\w+)`", cells[0])
        assert name, f"rules table row without a `name` first: {line}"
        table[name.group(1)] = (cells[1].strip("`"), cells[2].strip("`"))
    assert table, "empty rules table"

    assert set(internal) <= set(rules.RULES) and not set(internal) & set(table)
    assert set(table) == set(rules.RULES) - set(internal), (set(table), set(rules.RULES))
    assert set(oracles) == set(table)  # an oracle for every documented rule

    ratios = [1e-3, 0.2, 1.0, 2.5, 40.0]
    t = torch.tensor([log(r) for r in ratios], dtype=torch.float64)
    for name, (l1_doc, l0_doc, param_sets, l1, l0) in oracles.items():
        assert " ".join(table[name][0].split()) == l1_doc, (name, table[name][0])
        assert " ".join(table[name][1].split()) == l0_doc, (name, table[name][1])
        for params in param_sets:
            # exact mode everywhere; the stabilised modes inside their band |log r| <= tau
            for mode, tau in (("exact", 20.0), ("linear", 7.5), ("clip", 7.5)):  # |log r| <= 6.91
                rule = scoring_rule(name, exp_mode=mode, tau=tau, **params)
                assert rule.name == name and isinstance(rule, rules.RULES[name])
                assert scoring_rule(**rule.config()).config() == rule.config()
                want1 = torch.tensor([l1(r, **params) for r in ratios], dtype=torch.float64)
                want0 = torch.tensor([l0(r, **params) for r in ratios], dtype=torch.float64)
                torch.testing.assert_close(rule.data_loss(t), want1, rtol=1e-12, atol=1e-12,
                                           msg=lambda m: f"{name} {params} {mode}: l1 {m}")
                torch.testing.assert_close(rule.noise_loss(t), want0, rtol=1e-12, atol=1e-12,
                                           msg=lambda m: f"{name} {params} {mode}: l0 {m}")

    # (stabilisation semantics) the KL rule's weight r f''(r) = 1 is constant, so "linear"
    # is the KL rule itself far outside the band, and its noise side l0 = r is linear in r,
    # so the tangent extension of "clip" leaves it unchanged too
    far = torch.tensor([-30.0, -3.0, 0.5, 3.0, 30.0], dtype=torch.float64)
    lin, clip = scoring_rule("kl", exp_mode="linear", tau=1.0), scoring_rule("kl", exp_mode="clip", tau=1.0)
    torch.testing.assert_close(lin.data_loss(far), -far, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lin.noise_loss(far), torch.exp(far), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(clip.noise_loss(far), torch.exp(far), rtol=1e-12, atol=1e-12)
