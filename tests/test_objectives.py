"""Objectives against exact oracles (linear-Gaussian model, enumeration), bound order,
the VAE special case, and the registry contract (shapes, gradients, hyper-parameters)."""

import math

import pytest
import torch
from torch.distributions import Distribution, Independent, Normal

from fvnce.encoders import ExactPosterior, GaussianEncoder
from fvnce.errors import ConfigError, NonFiniteLossError
from fvnce.models import LinearGaussian, make_model
from fvnce.objectives import OBJECTIVES, LogWeights, make_objective
from fvnce.rules import scoring_rule


pytestmark = pytest.mark.usefixtures("float64")

ADMISSIBLE = [("kl", {}), ("power", {"alpha": 1.0}), ("power", {"alpha": 1.5}), ("power", {"alpha": 2.0}),
              ("shifted_log", {"c": 0.5}), ("shifted_log", {"c": 2.0})]


class Recording(Distribution):
    """Noise wrapper that remembers its last samples (to evaluate oracles on them)."""

    arg_constraints = {}

    def __init__(self, base):
        self.base, self.last = base, None
        super().__init__(validate_args=False)

    def sample(self, shape=torch.Size()):
        self.last = self.base.sample(shape)
        return self.last

    def log_prob(self, x):
        return self.base.log_prob(x)


class PerturbedPosterior(torch.nn.Module):
    """A wrong but overdispersed q: the exact posterior shifted and widened (bounded weights)."""

    def __init__(self, model, shift=0.4, widen=2.0):
        super().__init__()
        object.__setattr__(self, "model", model)
        self.shift, self.widen = shift, widen

    def forward(self, x):
        post = self.model.posterior(x)
        return torch.distributions.MultivariateNormal(post.mean + self.shift, scale_tril=post.scale_tril * self.widen ** 0.5)


def gaussian_noise(d, scale=1.5):
    return Recording(Independent(Normal(torch.zeros(d), torch.full((d,), scale)), 1))


@pytest.fixture
def lg():
    torch.manual_seed(0)
    model = LinearGaussian(4, 2, sigma=0.7, normalised=False)
    with torch.no_grad():
        model.log_normaliser.fill_(0.3)  # r = p(x) e^{-c} / p_n(x), so the KL noise term is not skipped
    x = model.sample(64)
    return model, x


def exact_log_ratio(model, noise, x):
    return model.log_marginal(x) - model.c - noise.log_prob(x)


@pytest.mark.parametrize("rule,params", ADMISSIBLE, ids=[f"{r}{p}" for r, p in ADMISSIBLE])
def test_fvnce_exact_with_exact_posterior(lg, rule, params):
    model, x = lg
    noise = gaussian_noise(4)
    obj = make_objective("fvnce", rule=rule, k=1, nu=3, **params)
    out = obj(model, ExactPosterior(model), x, noise)
    r = obj.rule
    torch.testing.assert_close(out.data_terms, r.data_loss(exact_log_ratio(model, noise, x)), rtol=0, atol=1e-8)
    torch.testing.assert_close(out.noise_terms, r.noise_loss(exact_log_ratio(model, noise, noise.last)),
                               rtol=0, atol=1e-8)
    assert out.noise_terms.shape == (3 * 64,)
    assert out.loss.item() == pytest.approx((out.data_terms.mean() + out.noise_terms.mean()).item(), abs=1e-12)


def test_elbo_iwae_vnce_exact_with_exact_posterior():
    torch.manual_seed(1)
    model = LinearGaussian(4, 2, sigma=0.7)
    x = model.sample(64)
    q = ExactPosterior(model)
    logp = model.log_marginal(x)
    torch.testing.assert_close(make_objective("elbo")(model, q, x).data_terms, -logp, rtol=0, atol=1e-8)
    torch.testing.assert_close(make_objective("iwae", k=1)(model, q, x).data_terms, -logp, rtol=0, atol=1e-8)
    torch.testing.assert_close(make_objective("iwae", k=5)(model, q, x).data_terms, -logp, rtol=0, atol=1e-8)
    noise = gaussian_noise(4)
    vnce = make_objective("vnce", k=1)
    out = vnce(model, q, x, noise)
    lr = logp - noise.log_prob(x)
    torch.testing.assert_close(out.data_terms, vnce.rule.data_loss(lr), rtol=0, atol=1e-8)
    torch.testing.assert_close(out.noise_terms, vnce.rule.noise_loss(model.log_marginal(noise.last) - noise.log_prob(noise.last)),
                               rtol=0, atol=1e-8)


@pytest.mark.parametrize("rule,params", [("kl", {}), ("power", {"alpha": 1.5}), ("shifted_log", {"c": 1.0})])
def test_wrong_q_bound_above_exact_and_falls_with_k(lg, rule, params):
    model, x = lg
    torch.manual_seed(2)
    enc = PerturbedPosterior(model)
    base = Independent(Normal(torch.zeros(4), torch.full((4,), 1.5)), 1)
    y = base.sample((256,))
    r = scoring_rule(rule, **params)
    exact = (r.data_loss(exact_log_ratio(model, base, x)).mean()
             + r.noise_loss(exact_log_ratio(model, base, y)).mean()).item()

    class Fixed(Recording):  # noise that always returns the same points, so only q varies
        def sample(self, shape=torch.Size()):
            return y

    obj = {k: make_objective("fvnce", rule=rule, k=k, nu=4, **params) for k in (1, 4, 16)}
    reps = 100
    vals = {k: torch.tensor([obj[k](model, enc, x, Fixed(base)).loss.item() for _ in range(reps)]) for k in obj}
    means = {k: v.mean().item() for k, v in vals.items()}
    se = {k: v.std().item() / math.sqrt(reps) for k, v in vals.items()}
    assert means[1] > means[4] + 3 * (se[1] + se[4])
    assert means[4] > means[16] + 3 * (se[4] + se[16])
    assert means[16] > exact + 3 * se[16]


def test_iwae_bound_order():
    torch.manual_seed(3)
    model = LinearGaussian(5, 2, sigma=0.5)
    x = model.sample(128)
    enc = GaussianEncoder(5, 2, hidden=(8,))
    vals = {}
    for name, k in (("elbo", 1), ("iwae", 2), ("iwae", 8), ("iwae", 32)):
        obj = make_objective(name, k=k)
        vals[(name, k)] = -torch.stack([obj(model, enc, x).loss for _ in range(40)]).mean().item()
    logp = model.log_marginal(x).mean().item()
    order = [vals[("elbo", 1)], vals[("iwae", 2)], vals[("iwae", 8)], vals[("iwae", 32)], logp]
    assert all(a < b for a, b in zip(order, order[1:])), order


def test_kl_on_normalised_model_is_the_vae():
    """fvnce-kl = -ELBO + 1 + E log p_n(x); the noise term has mean 1 and zero-mean gradients."""
    torch.manual_seed(4)
    model = LinearGaussian(3, 2, sigma=0.8)
    x = model.sample(32)
    enc = PerturbedPosterior(model)
    noise = gaussian_noise(3, scale=2.0)
    est = make_objective("fvnce", rule="kl", noise_term="estimate", nu=16)
    auto = make_objective("fvnce", rule="kl")
    elbo = make_objective("elbo")
    # identical latent samples: data side equals -ELBO + log p_n(x) to rounding
    torch.manual_seed(5)
    out_auto = auto(model, enc, x, noise)
    torch.manual_seed(5)
    out_elbo = elbo(model, enc, x)
    torch.testing.assert_close(out_auto.data_terms, out_elbo.data_terms + noise.log_prob(x))
    assert out_auto.loss.item() == pytest.approx(out_elbo.loss.item() + 1 + noise.log_prob(x).mean().item(), abs=1e-10)
    # the estimated noise term averages to 1, its parameter gradient to 0
    params = list(model.parameters())
    noise_means, grads = [], []
    for _ in range(200):
        out = est(model, enc, x, noise)
        noise_means.append(out.noise_terms.mean().item())
        g = torch.autograd.grad(out.noise_terms.mean(), params, allow_unused=True, materialize_grads=True)
        grads.append(torch.cat([t.reshape(-1) for t in g]))
    m = torch.tensor(noise_means)
    assert abs(m.mean().item() - 1) < 4 * m.std().item() / math.sqrt(len(m)) + 1e-3
    g = torch.stack(grads)
    z = g.mean(0) / (g.std(0) / math.sqrt(len(g)) + 1e-12)
    assert z.abs().max().item() < 5.0
    # and the total loss matches -ELBO + 1 + E log p_n in expectation
    torch.manual_seed(6)
    tot = torch.tensor([est(model, enc, x, noise).loss.item() for _ in range(200)])
    torch.manual_seed(6)
    ref = torch.tensor([elbo(model, enc, x).loss.item() for _ in range(200)]) + 1 + noise.log_prob(x).mean().item()
    assert abs(tot.mean() - ref.mean()).item() < 4 * math.sqrt(tot.var().item() / 200 + ref.var().item() / 200)


def test_discrete_enumeration_matches_exact_marginal():
    torch.manual_seed(7)
    model, enc = make_model("rbm", 6, h_dim=4)
    with torch.no_grad():
        model.W.normal_(0, 0.5)
    x = torch.bernoulli(torch.full((16, 6), 0.5))
    noise = Recording(Independent(torch.distributions.Bernoulli(probs=torch.full((6,), 0.5)), 1))
    # exact posterior: log w constant over h, so every rule is evaluated at the exact ratio
    for rule, params in ADMISSIBLE:
        obj = make_objective("fvnce", rule=rule, **params)
        out = obj(model, ExactPosterior(model), x, noise)
        lr_x = model.log_unnormalised_marginal(x) - noise.log_prob(x)
        torch.testing.assert_close(out.data_terms, obj.rule.data_loss(lr_x), rtol=0, atol=1e-8)
    # an arbitrary encoder: the enumerated log-ratio is the exact log E_q w = log r
    from fvnce.objectives import log_weights
    lwx = log_weights(model, enc, x, noise.log_prob(x), 1)
    assert lwx.enumerated and lwx.log_w.shape == (16, 16)
    torch.testing.assert_close(lwx.log_ratio(), model.log_unnormalised_marginal(x) - noise.log_prob(x))


def test_enumeration_survives_underflowing_q_and_huge_weights():
    log_q = torch.tensor([[0.0], [-math.inf]], requires_grad=True)
    log_w = torch.tensor([[1.0], [1e4]], requires_grad=True)
    lw = LogWeights(log_w, log_w, log_q, log_q_weight=log_q)
    v = lw.expect(scoring_rule("kl").noise_loss)
    v.sum().backward()
    assert torch.isfinite(v).all() and torch.isfinite(log_w.grad).all() and torch.isfinite(log_q.grad).all()
    assert v.item() == pytest.approx(math.e)


def test_fvnce_refuses_inadmissible_rules():
    with pytest.raises(ConfigError, match="noise side l0 is not convex.*logistic"):
        make_objective("fvnce", rule="logistic")
    with pytest.raises(ConfigError, match="data side l1 is not convex.*alpha=2.5"):
        make_objective("fvnce", rule="power", alpha=2.5)
    make_objective("nce", rule="power", alpha=2.5)  # inadmissible rules still serve NCE
    make_objective("vnce", rule="logistic")


@pytest.mark.parametrize("bad,fragment", [
    (("fvnce", {"k": 0}), "k must be a positive integer"), (("fvnce", {"nu": -1}), "nu must be"),
    (("iwae", {"k": 2.5}), "k must be"), (("fvnce", {"rule": "nope"}), "valid rules"),
    (("nope", {}), "valid objectives: fvnce, elbo, iwae, nce, vnce"), (("elbo", {"alpha": 1}), "alpha"),
    (("fvnce", {"noise_term": "skip"}), "noise_term"),
])
def test_bad_hyperparameters(bad, fragment):
    with pytest.raises(ConfigError, match=fragment):
        make_objective(bad[0], **bad[1])


def test_model_checks():
    vae, _ = make_model("vae", 4, likelihood="gaussian")
    tilted, _ = make_model("tilted_vae", 4, likelihood="gaussian")
    with pytest.raises(ConfigError, match="normalised"):
        make_objective("elbo").check_model(tilted)
    with pytest.raises(ConfigError, match="closed-form marginal"):
        make_objective("nce").check_model(vae)


# --- registry contract -------------------------------------------------------------------

SETUPS = {
    "fvnce": ("tilted_vae", {"rule": "power", "alpha": 1.5, "k": 2, "nu": 2}),
    "elbo": ("vae", {"k": 2}),
    "iwae": ("vae", {"k": 3}),
    "nce": ("gb_rbm", {"nu": 2}),
    "vnce": ("mlp_energy", {"k": 2, "nu": 2}),
}


def _setup(name):
    torch.manual_seed(8)
    mname, params = SETUPS[name]
    opts = {"likelihood": "gaussian"} if "vae" in mname else {}
    model, enc = make_model(mname, 5, **opts)
    if mname == "tilted_vae":  # its tilt starts at exactly zero; give it a generic value
        torch.nn.init.normal_(model.tilt[-1].weight, std=0.1)
    x = torch.randn(12, 5)
    noise = gaussian_noise(5, 1.2)
    return model, enc, x, noise, params


def test_registry_setups_cover_every_objective():
    assert set(SETUPS) == set(OBJECTIVES)


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_diagnostics_are_computed_when_read_and_equal_the_eager_values(name):
    """The diagnostics are computed when read (per-step overhead, issue 12); read after
    backward and an optimiser step they are the numbers of the batch that made them."""
    from fvnce.objectives.base import Diagnostics, effective_sample_size

    model, enc, x, noise, params = _setup(name)
    obj = make_objective(name, **params)
    enc = enc if obj.uses_encoder else None
    torch.manual_seed(5)
    out = obj(model, enc, x, noise)
    d = out.diagnostics
    assert isinstance(d, Diagnostics) and not d._read  # nothing read yet
    c_then = None if model.c is None else float(model.c.detach())
    data_lr = (model.log_unnormalised_marginal(x) - noise.log_prob(x)) if name == "nce" else None
    noise_lr = None if out.noise_log_ratio is None else out.noise_log_ratio.clone()
    out.loss.backward()
    mods = [m for m in (model, enc) if m is not None]
    opt = torch.optim.SGD([p for m in mods for p in m.parameters()], lr=0.5)
    opt.step()  # the log-normaliser moves; its diagnostic must not
    assert d["log_normaliser"] == (0.0 if c_then is None else c_then)
    assert d["data_loss"] == out.data_terms.detach().mean().item()
    if data_lr is not None:
        assert d["data_log_ratio"] == data_lr.detach().mean().item()
    if noise_lr is not None:
        assert d["noise_log_ratio"] == noise_lr.mean().item()
        assert d["ess_fraction"] == (effective_sample_size(noise_lr) / noise_lr.numel()).item()
        assert d["noise_loss"] == out.noise_terms.detach().mean().item()
    assert all(isinstance(v, float) for v in d.values())


def test_diagnostics_mapping_reads_once_and_read_floats_reads_exactly():
    from fvnce.objectives.base import Diagnostics, read_floats

    calls = []
    t = torch.tensor([0.1, 0.2, 0.7], dtype=torch.float32)

    def mean():
        calls.append(1)
        assert not torch.is_grad_enabled()
        return t.mean()

    d = Diagnostics({"m": mean, "n": 3.0, "s": "text"})
    assert calls == [] and len(d) == 3 and set(d) == {"m", "n", "s"}
    assert d["m"] == t.mean().item() and d["m"] == t.mean().item() and calls == [1]
    assert d.tensor("m") == d["m"] and d.tensor("missing", 7) == 7 and d["n"] == 3.0 and d["s"] == "text"
    d["m"] = torch.tensor(2.5)
    assert d["m"] == 2.5 and dict(d) == {"m": 2.5, "n": 3.0, "s": "text"}
    del d["s"]
    with pytest.raises(KeyError):
        d["s"]
    vals = [torch.tensor(1 / 3, dtype=torch.float32), None, 2.0, torch.tensor(1 / 7, dtype=torch.bfloat16)]
    assert read_floats(vals) == [vals[0].item(), None, 2.0, vals[3].item()]

@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_contract_shapes_finite_gradients(name):
    model, enc, x, noise, params = _setup(name)
    obj = make_objective(name, **params)
    obj.check_model(model)
    out = obj(model, enc if obj.uses_encoder else None, x, noise)
    assert out.loss.shape == () and torch.isfinite(out.loss)
    assert out.data_terms.shape == (12,)
    if obj.uses_noise:
        assert out.noise_terms.shape == (12 * params.get("nu", 1),)
        assert {"accuracy", "ess_fraction", "noise_log_ratio"} <= set(out.diagnostics)
    assert {"data_log_ratio", "log_normaliser", "data_loss"} <= set(out.diagnostics)
    assert all(isinstance(v, float) for v in out.diagnostics.values())
    out.loss.backward()
    mods = [model] + ([enc] if obj.uses_encoder else [])
    for m in mods:
        for pname, p in m.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no gradient for {pname}"
            assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


def _run(name, setup, kwargs, seed, merge=True):
    """Build objective ``name`` from ``kwargs`` and evaluate it on the inputs of
    ``_setup(setup)`` with a pinned seed.  With ``merge`` the kwargs go on top of the
    setup's parameters (a value of None drops a key).  Returns the objective, its output,
    the gradient of the loss w.r.t. every model and encoder parameter (flattened, in a
    fixed order) and the inputs."""
    model, enc, x, noise, params = _setup(setup)
    merged = {**params, **kwargs} if merge else dict(kwargs)
    obj = make_objective(name, **{k: v for k, v in merged.items() if v is not None})
    e = enc if obj.uses_encoder else None
    torch.manual_seed(seed)
    out = obj(model, e, x, noise)
    mods = [model] + ([enc] if e is not None else [])
    params_ = [p for m in mods for p in m.parameters()]
    g = torch.autograd.grad(out.loss, params_, allow_unused=True, materialize_grads=True)
    return obj, out, torch.cat([t.reshape(-1) for t in g]), (model, e, x, noise)


def _defaults(name, rule=None):
    """Constructor defaults of objective ``name`` and of its rule class."""
    import inspect

    from fvnce.rules import RULES

    out = {}
    classes = [RULES[rule]] if rule in RULES else []
    for cls in classes + [OBJECTIVES[name]]:  # objective defaults win (nu)
        out.update({p: v.default for p, v in inspect.signature(cls.__init__).parameters.items()
                    if v.default is not inspect.Parameter.empty})
    return out


def _hyperparameter_names(name):
    """Every constructor argument of objective ``name``; objectives that take rule
    parameters (``**rule_params``) also take those of every plain-data rule."""
    import inspect

    from fvnce.rules import RULES

    sig = inspect.signature(OBJECTIVES[name].__init__).parameters
    names = {p for p, v in sig.items() if p != "self" and v.kind is not inspect.Parameter.VAR_KEYWORD}
    if any(v.kind is inspect.Parameter.VAR_KEYWORD for v in sig.values()):
        for rname, cls in RULES.items():
            if rname == "generic":  # wraps a Python callable, not a plain-data hyper-parameter
                continue
            names |= {p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "exp_mode", "tau")}
    return names


def _flat_config(cfg):
    """Objective config with the nested rule config merged in (objective keys win)."""
    rule = dict(cfg.get("rule", {}))
    flat = {("rule" if k == "name" else k): v for k, v in rule.items()}
    flat.update({k: v for k, v in cfg.items() if k != "rule"})
    return flat


# Non-default values for every hyper-parameter of every objective, in combinations whose
# outputs depend on them on the setup's inputs: small positive tau so that the stabilised
# exponentials are active (fvnce's data-side log ratios reach ~3.9, nce's and vnce's ~10).
# The optional third item overrides the setup (fvnce's noise_term only matters for a
# normalised model with the KL rule: the VAE of the "elbo" setup).
ROUND_TRIP = [
    ("fvnce", {"rule": "power", "alpha": 1.3, "k": 3, "nu": 3, "exp_mode": "clip", "tau": 1.5,
               "noise_encoder": "detach", "base_fit": "rule"}),
    ("fvnce", {"rule": "shifted_log", "alpha": None, "c": 0.7, "k": 2, "nu": 2, "exp_mode": "linear", "tau": 0.8,
               "noise_encoder": "grad", "base_fit": "elbo"}),
    ("fvnce", {"rule": "kl", "alpha": None, "k": 2, "nu": 3, "noise_term": "estimate"}, "elbo"),
    ("elbo", {"k": 3}),
    ("iwae", {"k": 5}),
    ("nce", {"rule": "power", "alpha": 1.8, "nu": 3, "exp_mode": "linear", "tau": 6.0}),
    ("nce", {"rule": "shifted_log", "c": 0.4, "nu": 2, "exp_mode": "clip", "tau": 7.0}),
    ("nce", {"nu": 3}),  # logistic: the rule's nu follows the objective's
    ("vnce", {"rule": "power", "alpha": 1.25, "k": 3, "nu": 2, "exp_mode": "clip", "tau": 9.0}),
    ("vnce", {"rule": "shifted_log", "c": 3.0, "k": 2, "nu": 3, "exp_mode": "linear", "tau": 7.0}),
    ("vnce", {"k": 3, "nu": 2}),
]


def test_round_trip_cases_cover_every_hyperparameter():
    """Across the cases, every hyper-parameter of every objective takes a non-default value."""
    for name in OBJECTIVES:
        covered = set()
        for case in ROUND_TRIP:
            if case[0] != name:
                continue
            rule = case[1].get("rule", _defaults(name).get("rule"))
            defaults = _defaults(name, rule)
            covered |= {k for k, v in case[1].items() if v is not None and v != defaults.get(k)}
        assert _hyperparameter_names(name) <= covered, (name, _hyperparameter_names(name) - covered)


@pytest.mark.parametrize("case", ROUND_TRIP, ids=[f"{c[0]}-{i}" for i, c in enumerate(ROUND_TRIP)])
def test_contract_config_round_trip(case):
    """config() -> JSON -> make_objective rebuilds the same objective: the config records
    every hyper-parameter given, the rebuilt config is identical, and with the same seed
    the rebuilt objective gives bit-identical losses, per-example terms and gradients."""
    import json

    name, kwargs = case[0], case[1]
    setup = case[2] if len(case) > 2 else name
    obj, out, grad, _ = _run(name, setup, kwargs, seed=9, merge=False)
    cfg = obj.config()
    assert cfg["name"] == name
    # every hyper-parameter given is recorded with its value (a forgotten one fails here)
    flat = _flat_config(cfg)
    for key, value in kwargs.items():
        if value is not None:
            assert key in flat, f"{name}.config() forgets {key}: {cfg}"
            assert flat[key] == value, f"{name}.config() records {key}={flat[key]!r}, expected {value!r}"
    # plain data: identical after JSON; the rebuild comes from the saved config alone
    saved = json.loads(json.dumps(cfg))
    assert saved == cfg
    rebuilt, out2, grad2, _ = _run(saved.pop("name"), setup, saved, seed=9, merge=False)
    assert type(rebuilt) is type(obj)
    assert rebuilt.config() == cfg
    assert torch.equal(out.loss, out2.loss)
    assert torch.equal(out.data_terms, out2.data_terms)
    assert (out.noise_terms is None) == (out2.noise_terms is None)
    if out.noise_terms is not None:
        assert torch.equal(out.noise_terms, out2.noise_terms)
    assert torch.equal(grad, grad2)


# Pairs of configurations (on top of the setup's parameters; None drops a key) that differ
# in one hyper-parameter only.  Every hyper-parameter of every objective appears (checked
# below).  tau is always positive; the inputs are such that the stabilisation is active:
# the setups' log ratios reach above every tau used here (asserted in the test).
# "what" is the output that must change: the loss, or only the gradient (noise_encoder
# decides whether the encoder is differentiated through the noise points, not the value).
#: the rule-parameter and stabilisation cases that nce and vnce share
_RULE_MODES = [
    ("c", {"rule": "shifted_log", "c": 0.5}, {"rule": "shifted_log", "c": 2.0}),
    ("exp_mode", {"rule": "power", "exp_mode": "exact", "tau": 5.0}, {"rule": "power", "exp_mode": "clip", "tau": 5.0}),
    ("exp_mode", {"rule": "power", "exp_mode": "exact", "tau": 5.0}, {"rule": "power", "exp_mode": "linear", "tau": 5.0}),
    ("exp_mode", {"rule": "shifted_log", "exp_mode": "linear", "tau": 5.0},
     {"rule": "shifted_log", "exp_mode": "clip", "tau": 5.0}),
]
HYPER = {
    "fvnce": [
        ("rule", {}, {"rule": "shifted_log", "alpha": None, "c": 1.0}),
        ("k", {}, {"k": 4}),
        ("nu", {}, {"nu": 3}),
        ("alpha", {}, {"alpha": 1.2}),
        ("c", {"rule": "shifted_log", "alpha": None, "c": 0.5}, {"rule": "shifted_log", "alpha": None, "c": 2.0}),
        ("exp_mode", {"exp_mode": "exact", "tau": 1.0}, {"exp_mode": "clip", "tau": 1.0}),
        ("exp_mode", {"exp_mode": "exact", "tau": 1.0}, {"exp_mode": "linear", "tau": 1.0}),
        ("exp_mode", {"exp_mode": "linear", "tau": 1.0}, {"exp_mode": "clip", "tau": 1.0}),
        ("tau", {"exp_mode": "linear", "tau": 1.0}, {"exp_mode": "linear", "tau": 2.0}),
        ("tau", {"exp_mode": "clip", "tau": 1.0}, {"exp_mode": "clip", "tau": 2.0}),
        # enumerated latents (the RBM of the "nce" setup): identical values, so only the
        # gradient can tell the two apart
        ("noise_encoder", {"rule": "power", "alpha": 1.5, "noise_encoder": "grad"},
         {"rule": "power", "alpha": 1.5, "noise_encoder": "detach"}, "grad", "nce"),
        ("noise_term", {"rule": "kl", "alpha": None}, {"rule": "kl", "alpha": None, "noise_term": "estimate"},
         "loss", "elbo"),
        # the setup's energy-tilted VAE: its base fitted by the ELBO, or everything by the rule
        ("base_fit", {"base_fit": "rule"}, {"base_fit": "elbo"}),
        ("base_fit", {"base_fit": "rule"}, {"base_fit": "auto"}),
    ],
    "elbo": [("k", {}, {"k": 5})],
    "iwae": [("k", {}, {"k": 8})],
    "nce": [
        ("rule", {}, {"rule": "power", "alpha": 2.0}),
        ("nu", {}, {"nu": 5}),
        ("alpha", {"rule": "power", "alpha": 1.5}, {"rule": "power", "alpha": 2.0}),
        *_RULE_MODES,
        ("tau", {"rule": "power", "exp_mode": "linear", "tau": 5.0}, {"rule": "power", "exp_mode": "linear", "tau": 8.0}),
    ],
    "vnce": [
        ("rule", {}, {"rule": "power", "alpha": 1.5}),
        ("k", {}, {"k": 6}),
        ("nu", {}, {"nu": 3}),
        ("alpha", {"rule": "power", "alpha": 1.5}, {"rule": "power", "alpha": 1.2}),
        *_RULE_MODES,
        ("tau", {"rule": "power", "exp_mode": "clip", "tau": 5.0}, {"rule": "power", "exp_mode": "clip", "tau": 8.0}),
    ],
}


def _log_ratios(name, obj, out, inputs):
    """The log ratios (data and noise side, log r_k for sampled latents) the rule saw."""
    model, enc, x, noise = inputs
    if name == "nce":
        return torch.cat([out.parts["data-side model log-density log p~(x)"] - noise.log_prob(x),
                          out.parts["noise-side model log-density log p~(y)"] - noise.log_prob(noise.last)])
    if name == "vnce":
        lw_d = (out.parts["data-side model log-density log p~(x,z)"] - out.parts["data-side encoder log-density log q(z|x)"]
                - noise.log_prob(x))
        return torch.cat([lw_d.reshape(-1), torch.logsumexp(out.parts["noise-side log-ratio"], 0)
                          - math.log(out.parts["noise-side log-ratio"].shape[0])])
    lw = [out.parts[f"{side}-side log-ratio"] for side in ("data", "noise") if f"{side}-side log-ratio" in out.parts]
    return torch.cat([torch.logsumexp(t, 0) - math.log(t.shape[0]) for t in lw])


def test_hyperparameter_pairs_cover_every_hyperparameter():
    assert set(HYPER) == set(OBJECTIVES)
    for name in OBJECTIVES:
        assert _hyperparameter_names(name) <= {pair[0] for pair in HYPER[name]}, name


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_hyperparameter_changes_the_output(name):
    """Changing any one hyper-parameter (tau > 0 throughout) changes the loss, or for
    noise_encoder the gradient, on inputs where the option is active."""
    for pair in HYPER[name]:
        hyper, a, b = pair[:3]
        what = pair[3] if len(pair) > 3 else "loss"
        setup = pair[4] if len(pair) > 4 else name
        obj_a, out_a, grad_a, inputs = _run(name, setup, a, seed=10)
        obj_b, out_b, grad_b, _ = _run(name, setup, b, seed=10)
        # the two configurations differ in this hyper-parameter only
        fa, fb = _flat_config(obj_a.config()), _flat_config(obj_b.config())
        changed = {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}
        assert hyper in changed and changed <= {hyper} | ({"alpha", "c"} if hyper == "rule" else set()), pair
        for cfg in (fa, fb):
            assert cfg.get("tau", 1.0) > 0
        if hyper in ("exp_mode", "tau"):
            # stabilisation active: some log ratio lies beyond the larger band edge
            taus = [c["tau"] for c in (fa, fb)]
            lr = _log_ratios(name, obj_a, out_a, inputs)
            assert (lr > max(taus)).any(), (pair, lr.max())
        assert torch.isfinite(out_a.loss) and torch.isfinite(out_b.loss)
        if what == "loss":
            assert out_b.loss.item() != pytest.approx(out_a.loss.item(), rel=1e-6, abs=1e-9), pair
        else:
            assert out_b.loss.item() == pytest.approx(out_a.loss.item(), rel=1e-12), pair
            assert not torch.allclose(grad_a, grad_b, rtol=1e-6, atol=1e-12), pair


def test_noise_term_option_changes_normalised_kl():
    """Normalised model, KL rule: ``noise_term="auto"`` adds the exact expectation 1 of the
    noise term; ``"estimate"`` adds the sampled mean of w(y, z) = p(y, z) / (q(z|y) p_n(y)),
    checked against an independent computation with the same seed, whose expectation is
    1 for any encoder and noise."""
    model, enc, x, noise, _ = _setup("elbo")  # the registry's VAE with its (untrained) encoder
    b, nu = x.shape[0], 3

    def log_w(pts, q, z):
        return model.log_joint(pts, z) - q.log_prob(z) - noise.log_prob(pts)

    # auto: the one random draw is z ~ q(.|x); loss = mean(-log w(x, z)) + 1 exactly
    torch.manual_seed(11)
    auto = make_objective("fvnce")(model, enc, x, noise)
    torch.manual_seed(11)
    qx = enc(x)
    data_ref = -log_w(x, qx, qx.rsample((1,)))[0]
    assert auto.noise_terms is None
    torch.testing.assert_close(auto.data_terms, data_ref, rtol=0, atol=1e-10)
    assert auto.loss.item() == pytest.approx(data_ref.mean().item() + 1.0, abs=1e-10)
    assert auto.diagnostics["noise_loss"] == 1.0
    # estimate: y ~ p_n first, then z ~ q(.|x) and z' ~ q(.|y) (no encoder gradient: the
    # KL noise loss is linear in r); noise terms w(y, z'), loss = mean(-log w(x, z)) + mean w(y, z')
    torch.manual_seed(11)
    est = make_objective("fvnce", noise_term="estimate", nu=nu)(model, enc, x, noise)
    torch.manual_seed(11)
    y = noise.base.sample((nu * b,))
    qx, qy = enc(x), enc(y)
    zx = qx.rsample((1,))
    zy = qy.sample((1,))
    noise_ref = torch.exp(log_w(y, qy, zy)[0])
    assert torch.equal(noise.last, y)
    assert est.noise_terms is not None and est.noise_terms.shape == (nu * b,)
    torch.testing.assert_close(est.noise_terms, noise_ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(est.data_terms, -log_w(x, qx, zx)[0], rtol=0, atol=1e-10)
    assert est.loss.item() == pytest.approx(est.data_terms.mean().item() + noise_ref.mean().item(), abs=1e-10)
    assert est.diagnostics["noise_loss"] == pytest.approx(noise_ref.mean().item(), rel=1e-12)
    assert abs(noise_ref.mean().item() - 1.0) > 1e-3  # one draw is not the constant

    # the estimate is unbiased for 1 with a wrong encoder (weights with finite variance:
    # an overdispersed q and a noise wider than the model)
    torch.manual_seed(14)
    lg_model = LinearGaussian(3, 2, sigma=0.8)
    wrong_q = PerturbedPosterior(lg_model)
    wide = gaussian_noise(3, 2.0)
    x = lg_model.sample(32)
    obj = make_objective("fvnce", noise_term="estimate", nu=256)
    with torch.no_grad():
        draws = torch.tensor([obj(lg_model, wrong_q, x, wide).noise_terms.mean().item() for _ in range(20)])
    se = draws.std().item() / math.sqrt(len(draws))
    assert se < 0.01, se  # the check below is sharp
    assert abs(draws.mean().item() - 1.0) < 4 * se, (draws.mean().item(), se)
    auto = make_objective("fvnce")
    with torch.no_grad():
        out = auto(lg_model, wrong_q, x, wide)
    assert out.noise_terms is None and out.loss.item() == pytest.approx(out.data_terms.mean().item() + 1.0, abs=1e-12)


def test_nonfinite_loss_names_the_term():
    model, enc, x, noise, _ = _setup("fvnce")
    obj = make_objective("fvnce", rule="kl", exp_mode="exact")
    with torch.no_grad():
        model.log_normaliser.fill_(-1e5)  # every weight explodes
    out = obj(model, enc, x.float().double(), noise)
    with pytest.raises(NonFiniteLossError, match="noise-side"):
        out.check_finite()


# ------------------------------------------------------------------ noise-side encoder gradient
class FixedSample(Distribution):
    """A noise that always returns the same points (so two objectives see the same y)."""

    arg_constraints = {}

    def __init__(self, base, y):
        self.base, self.y = base, y
        super().__init__(validate_args=False)

    def sample(self, shape=torch.Size()):
        return self.y

    def log_prob(self, x):
        return self.base.log_prob(x)


def _grads(loss, params):
    g = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True, retain_graph=True)
    return torch.cat([t.reshape(-1) for t in g])


def test_noise_encoder_auto_choice_and_bad_value():
    assert make_objective("fvnce", rule="kl").detaches_noise_encoder()
    # the stabilised KL rule is the KL rule (its weight r f'' is constant): still linear in r
    assert make_objective("fvnce", rule="kl", exp_mode="linear").detaches_noise_encoder()
    assert make_objective("fvnce", rule="shifted_log", c=0.0, exp_mode="linear").detaches_noise_encoder()
    assert not make_objective("fvnce", rule="shifted_log", c=1.0).detaches_noise_encoder()
    assert not make_objective("fvnce", rule="power", alpha=1.5).detaches_noise_encoder()
    assert not make_objective("fvnce", rule="kl", noise_encoder="grad").detaches_noise_encoder()
    assert make_objective("fvnce", rule="power", noise_encoder="detach").detaches_noise_encoder()
    with pytest.raises(ConfigError, match="noise_encoder"):
        make_objective("fvnce", noise_encoder="never")


def test_kl_noise_encoder_detach_is_exact_with_enumerated_latents():
    """Summed exactly, E_q w = r for any q: the KL noise term has no encoder gradient at
    all, so detaching the encoder on the noise side changes no value and no gradient."""
    from fvnce.encoders import CategoricalEncoder
    from fvnce.models import TwoGaussianMixture
    torch.manual_seed(12)
    model = TwoGaussianMixture(2.5).double()
    enc = CategoricalEncoder(1, 2, hidden=(8,)).double()
    x = model.sample(40)
    base = Independent(Normal(torch.zeros(1, dtype=torch.float64), torch.full((1,), 3.0, dtype=torch.float64)), 1)
    noise = FixedSample(base, base.sample((40,)))
    params = list(model.parameters()) + list(enc.parameters())
    outs = {m: make_objective("fvnce", rule="kl", noise_encoder=m)(model, enc, x, noise) for m in ("grad", "detach")}
    assert outs["grad"].loss.item() == pytest.approx(outs["detach"].loss.item(), abs=1e-13)
    torch.testing.assert_close(_grads(outs["grad"].loss, params), _grads(outs["detach"].loss, params),
                               rtol=0, atol=1e-12)
    enc_params = list(enc.parameters())
    assert _grads(outs["grad"].noise_terms.mean(), enc_params).abs().max().item() < 1e-12


def test_kl_noise_encoder_detach_keeps_the_model_gradient_unbiased():
    """Continuous latents: with the encoder detached on the noise side the model gradient
    of the noise term averages to the exact gradient of mean_y r(y) (closed form), and the
    encoder gets no gradient from it; with the gradient kept, the encoder's averages 0."""
    torch.manual_seed(13)
    model = LinearGaussian(3, 2, sigma=0.8)
    enc = GaussianEncoder(3, 2, hidden=(8,)).double()
    base = gaussian_noise(3, scale=2.0)
    y = base.sample((16,))
    noise = FixedSample(base, y)
    x = model.sample(16)
    mparams, eparams = list(model.parameters()), list(enc.parameters())
    exact = _grads(torch.exp(model.log_marginal(y) - base.log_prob(y)).mean(), mparams)
    obj = {m: make_objective("fvnce", rule="kl", noise_term="estimate", noise_encoder=m) for m in ("grad", "detach")}
    for mode in ("detach", "grad"):
        gm, ge = [], []
        for _ in range(300):
            out = obj[mode](model, enc, x, noise)
            gm.append(_grads(out.noise_terms.mean(), mparams))
            ge.append(_grads(out.noise_terms.mean(), eparams))
        gm, ge = torch.stack(gm), torch.stack(ge)
        z = (gm.mean(0) - exact) / (gm.std(0) / math.sqrt(len(gm)) + 1e-12)
        assert z.abs().max().item() < 5.0, (mode, z)
        if mode == "detach":
            assert ge.abs().max().item() == 0.0
        else:
            assert ge.abs().max().item() > 0
            ze = ge.mean(0) / (ge.std(0) / math.sqrt(len(ge)) + 1e-12)
            assert ze.abs().max().item() < 5.0
