"""Tests of the noise registry fvnce.noise (parametrised over NOISES)."""

from __future__ import annotations

import io
import itertools
import math
import textwrap

import numpy as np
import pytest
import torch

from fvnce.errors import ConfigError
from fvnce.noise import NOISES, NoiseDistribution, PluginNoise, load_noise, make_noise
from fvnce.noise import noise_options

NAMES = sorted(NOISES)
# small, fast settings for slow-to-fit noises (defaults are exercised in test_default_options)
FAST = {"flow": {"steps": 20, "hidden": (16,), "transforms": 1}}
FITTED = [n for n in NAMES if n not in ("standard_normal", "uniform")]


def fast(name: str, **extra):
    return {**FAST.get(name, {}), **extra}


def cont_data(n=200, d=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64) * 0.5 + torch.eye(d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ a
    x = x * torch.linspace(0.5, 2.0, d, dtype=torch.float64) + torch.arange(d, dtype=torch.float64)
    return x.to(dtype)


def binary_data(n=200, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.linspace(0.2, 0.8, d, dtype=torch.float64)
    return torch.bernoulli(p.expand(n, d), generator=g)


def mixed_data(n=200, seed=0):
    x = cont_data(n, 3, seed=seed)
    b = binary_data(n, 2, seed=seed)
    return torch.cat([x, b], 1)


def roundtrip(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


# ------------------------------------------------------------------ registry-wide


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sample_and_log_prob_shapes(name, dtype):
    x = cont_data(150, 3, dtype)
    noise = make_noise(name, x, seed=0, **fast(name))
    assert isinstance(noise, NoiseDistribution)
    assert noise.name == name and noise.event_shape == (3,) and noise.batch_shape == ()
    torch.manual_seed(0)
    s = noise.sample((7, 5))
    assert s.shape == (7, 5, 3) and s.dtype == dtype
    assert noise.sample().shape == (3,)
    assert torch.isfinite(s).all()
    lp = noise.log_prob(x)
    assert lp.shape == (150,) and torch.isfinite(lp).all()
    lps = noise.log_prob(s)
    assert lps.shape == (7, 5) and torch.isfinite(lps).all()
    assert not noise.discrete


@pytest.mark.parametrize("name", NAMES)
def test_state_roundtrip(name):
    x = mixed_data(120)
    noise = make_noise(name, x, seed=3, **fast(name))
    state = roundtrip(noise.state())
    assert state["name"] == name
    again = load_noise(state)
    assert type(again) is type(noise) and again.discrete == noise.discrete
    torch.manual_seed(1)
    s = noise.sample((50,))
    assert torch.equal(noise.log_prob(s), again.log_prob(s))
    assert torch.equal(noise.log_prob(x), again.log_prob(x))
    torch.manual_seed(2)
    s1 = noise.sample((20,))
    torch.manual_seed(2)
    s2 = again.sample((20,))
    assert torch.equal(s1, s2)  # sampling uses (only) the global RNG
    assert again.warnings == noise.warnings


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_reproducible_given_seed(name):
    x = cont_data(300, 2)
    a = make_noise(name, x, seed=5, **fast(name, max_points=100) if name in ("kde", "marginals") else fast(name))
    b = make_noise(name, x, seed=5, **fast(name, max_points=100) if name in ("kde", "marginals") else fast(name))
    assert torch.equal(a.log_prob(x), b.log_prob(x))


@pytest.mark.parametrize("name", NAMES)
def test_to_cpu(name):
    x = cont_data(100, 2)
    noise = make_noise(name, x, **fast(name))
    moved = noise.to("cpu")
    assert isinstance(moved, NoiseDistribution) and moved is not noise
    torch.testing.assert_close(moved.log_prob(x), noise.log_prob(x), rtol=0, atol=0)
    assert moved.sample((4,)).shape == (4, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA")
@pytest.mark.parametrize("name", NAMES)
def test_to_cuda(name):  # pragma: no cover - needs a GPU
    x = cont_data(100, 2)
    noise = make_noise(name, x, **fast(name)).to("cuda")
    s = noise.sample((8,))
    assert s.device.type == "cuda"
    lp = noise.log_prob(x.cuda())
    torch.testing.assert_close(lp.cpu(), make_noise(name, x, **fast(name)).log_prob(x))


def _grid_integral_1d(noise, lo, hi, n=20001):
    t = torch.linspace(lo, hi, n, dtype=torch.float64)
    p = noise.log_prob(t[:, None]).exp()
    return float(torch.trapezoid(p, t))


@pytest.mark.parametrize("name", NAMES)
def test_normalised_1d(name):
    x = cont_data(60, 1)
    opts = fast(name, n_components=3) if name == "gmm" else fast(name)
    noise = make_noise(name, x, **opts)
    lo, hi = float(x.min()) - 12 * float(x.std()), float(x.max()) + 12 * float(x.std())
    if name == "standard_normal":
        lo, hi = -12.0, 12.0
    tol = 2e-3 if name == "uniform" else 1e-4  # box edges are discontinuities
    assert _grid_integral_1d(noise, lo, hi) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("name", NAMES)
def test_normalised_2d(name):
    x = cont_data(60, 2)
    opts = fast(name, n_components=3) if name == "gmm" else fast(name)
    noise = make_noise(name, x, **opts)
    m = 401
    if name == "standard_normal":
        axes = [torch.linspace(-9, 9, m, dtype=torch.float64)] * 2
    else:
        sd = x.std(0)
        axes = [torch.linspace(float(x[:, j].min() - 8 * sd[j]), float(x[:, j].max() + 8 * sd[j]), m,
                               dtype=torch.float64) for j in range(2)]
    gx, gy = torch.meshgrid(*axes, indexing="ij")
    p = noise.log_prob(torch.stack([gx, gy], -1)).exp()
    total = torch.trapezoid(torch.trapezoid(p, axes[1], dim=1), axes[0])
    tol = 2e-2 if name == "uniform" else 5e-3
    assert float(total) == pytest.approx(1.0, abs=tol)


@pytest.mark.parametrize("name", NAMES)
def test_binary_pmf_sums_to_one(name):
    x = binary_data(80, 6)
    noise = make_noise(name, x, **fast(name))
    states = torch.tensor(list(itertools.product([0.0, 1.0], repeat=6)), dtype=torch.float64)
    lp = noise.log_prob(states)
    assert torch.isfinite(lp).all()
    if not noise.discrete:
        return  # a density on binary data (Gaussians, flow, uniform): nothing to sum
    assert float(torch.logsumexp(lp, 0)) == pytest.approx(0.0, abs=1e-10)
    torch.manual_seed(0)
    s = noise.sample((100,))
    assert ((s == 0) | (s == 1)).all() and s.dtype == x.dtype


def test_discrete_flags():
    xb = binary_data(50, 4)
    flags = {name: make_noise(name, xb, **fast(name)).discrete for name in NAMES}
    assert flags["marginals"] and flags["gmm"] and flags["kde"]
    for name in ("standard_normal", "diag_gaussian", "student_t", "full_gaussian", "uniform", "flow"):
        assert not flags[name]
    assert not make_noise("marginals", mixed_data(50)).discrete


@pytest.mark.parametrize("name", FITTED)
def test_sample_moments_match_data(name):
    x = cont_data(800, 2, seed=1)
    noise = make_noise(name, x, **fast(name, steps=150, lr=5e-3, transforms=2) if name == "flow" else fast(name))
    torch.manual_seed(0)
    s = noise.sample((4000,))
    sd = x.std(0)
    assert ((s.mean(0) - x.mean(0)).abs() < 0.15 * sd).all(), (s.mean(0), x.mean(0))
    assert ((s.std(0) / sd - 1).abs() < 0.25).all(), (s.std(0), sd)


def test_student_t_density_and_scale():
    from scipy import stats

    x = cont_data(200, 3, seed=2)
    noise = make_noise("student_t", x, df=5.0)
    sd = x.std(0, correction=0)
    scale = sd * math.sqrt(3 / 5)
    expected = sum(stats.t.logpdf(x[:, j].numpy(), 5.0, loc=float(x[:, j].mean()), scale=float(scale[j]))
                   for j in range(3))
    torch.testing.assert_close(noise.log_prob(x), torch.as_tensor(expected))
    # heavier tails than the diagonal Gaussian with the same variance
    far = x.mean(0) + 8 * sd
    assert float(noise.log_prob(far[None])) > float(make_noise("diag_gaussian", x).log_prob(far[None])) + 10
    # df <= 2: infinite variance, scale = std
    wide = make_noise("student_t", x, df=1.0)
    torch.testing.assert_close(wide.state()["scale"], sd)


def test_uniform_box():
    x = cont_data(100, 2)
    noise = make_noise("uniform", x, margin=0.1)
    s = noise.sample((2000,))
    lo, hi = x.min(0).values, x.max(0).values
    r = hi - lo
    assert (s >= lo - 0.1 * r).all() and (s <= hi + 0.1 * r).all()
    assert (s.min(0).values < lo).all() and (s.max(0).values > hi).all()
    assert noise.log_prob(torch.tensor([[1e6, 0.0]], dtype=torch.float64)).item() == -math.inf
    expected = -torch.log(1.2 * r).sum()
    torch.testing.assert_close(noise.log_prob(x), expected.expand(100))


# ------------------------------------------------------------------ options

# every option of every registered noise: (option, changed value, data kind)
VARIANTS = {
    "standard_normal": [],
    "diag_gaussian": [],
    "student_t": [("df", 10.0, "cont")],
    "full_gaussian": [("shrinkage", 0.5, "cont"), ("jitter", 0.1, "cont")],
    "uniform": [("margin", 0.5, "cont")],
    "marginals": [("max_points", 50, "cont"), ("bandwidth_factor", 0.5, "cont"), ("alpha", 5.0, "mixed")],
    "gmm": [("n_components", 2, "cont"), ("covariance_type", "diag", "cont"), ("reg_covar", 0.5, "cont"),
            ("max_iter", 1, "cont"), ("n_components", 2, "binary"), ("max_iter", 1, "binary")],
    "flow": [("flow", "nsf", "cont"), ("transforms", 2, "cont"), ("hidden", (8, 8), "cont"), ("steps", 10, "cont"),
             ("batch", 16, "cont"), ("lr", 1e-2, "cont"), ("weight_decay", 0.1, "cont")],
    "kde": [("max_points", 50, "cont"), ("bandwidth_factor", 0.5, "cont"), ("flip", 0.2, "binary"),
            ("max_points", 50, "binary")],
}
_DATA = {"cont": lambda: cont_data(150, 2), "mixed": lambda: mixed_data(150), "binary": lambda: binary_data(150, 5)}


@pytest.mark.parametrize("name", NAMES)
def test_every_option_is_covered(name):
    assert name in VARIANTS, f"add the options of the new noise {name!r} to VARIANTS"
    assert set(noise_options(name)) == {opt for opt, _, _ in VARIANTS[name]}


@pytest.mark.parametrize(
    "name,option,value,kind", [(n, *v) for n in NAMES for v in VARIANTS.get(n, [])],
)
def test_option_changes_output(name, option, value, kind):
    x = _DATA[kind]()
    base = fast(name)
    a = make_noise(name, x, seed=0, **base)
    b = make_noise(name, x, seed=0, **{**base, option: value})
    assert not torch.allclose(a.log_prob(x), b.log_prob(x)), f"{name}: option {option} had no effect"


@pytest.mark.parametrize(
    "name,options,match",
    [
        ("uniform", {"margin": -1}, "margin"),
        ("gmm", {"n_components": 0}, "n_components"),
        ("gmm", {"covariance_type": "tied"}, "covariance_type"),
        ("kde", {"flip": 0.7}, "flip"),
        ("kde", {"bandwidth_factor": "wide"}, "bandwidth_factor"),
        ("marginals", {"max_points": 2.5}, "max_points"),
        ("full_gaussian", {"shrinkage": 2.0}, "shrinkage"),
        ("student_t", {"df": 0}, "df"),
        ("flow", {"flow": "realnvp"}, "flow"),
        ("flow", {"hidden": (0,)}, "hidden"),
        ("diag_gaussian", {"bandwidth": 1.0}, "unknown option"),
    ],
)
def test_bad_options(name, options, match):
    with pytest.raises(ConfigError, match=match):
        make_noise(name, cont_data(30, 2), **options)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        make_noise("gausian", cont_data(10, 2))
    msg = str(err.value)
    assert "gausian" in msg and all(n in msg for n in NAMES) and "\n" not in msg
    with pytest.raises(ConfigError, match="valid names"):
        load_noise({"name": "nope"})


def test_flow_default_options():
    x = cont_data(400, 4)
    noise = make_noise("flow", x, seed=0)
    assert all(not p.requires_grad for p in noise.module.parameters())
    lp = noise.log_prob(x)
    assert not lp.requires_grad and torch.isfinite(lp).all()
    # a fitted flow beats the fitted Gaussian on its own training data only modestly here,
    # but must not be much worse
    assert lp.mean() > make_noise("full_gaussian", x).log_prob(x).mean() - 1.0


# ------------------------------------------------------------------ robustness


@pytest.mark.parametrize("name", NAMES)
def test_constant_column(name):
    x = cont_data(100, 3)
    x[:, 1] = 3.0
    noise = make_noise(name, x, **fast(name))
    if name != "standard_normal":
        assert any("1" in w and "constant" in w for w in noise.warnings), noise.warnings
    assert torch.isfinite(noise.log_prob(x)).all()
    s = noise.sample((50,))
    assert torch.isfinite(s).all() and torch.isfinite(noise.log_prob(s)).all()


@pytest.mark.parametrize("name", NAMES)
def test_all_constant_columns(name):
    x = torch.full((20, 2), 7.0, dtype=torch.float64)
    noise = make_noise(name, x, **fast(name))
    assert torch.isfinite(noise.log_prob(x)).all()
    assert torch.isfinite(noise.log_prob(noise.sample((10,)))).all()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_tiny_data(name, n):
    x = cont_data(n, 3)
    noise = make_noise(name, x, **fast(name))
    s = noise.sample((5,))
    assert s.shape == (5, 3) and torch.isfinite(s).all()
    assert torch.isfinite(noise.log_prob(x)).all() and torch.isfinite(noise.log_prob(s)).all()


@pytest.mark.parametrize("name", NAMES)
def test_bad_data(name):
    x = cont_data(20, 2)
    x[3, 1] = float("nan")
    with pytest.raises(ConfigError, match="non-finite"):
        make_noise(name, x)
    with pytest.raises(ConfigError, match="empty"):
        make_noise(name, torch.zeros(0, 2))
    with pytest.raises(ConfigError, match=r"\(N, D\)"):
        make_noise(name, torch.zeros(5))


def test_float32_data_keeps_dtype_everywhere():
    x = mixed_data(60).float()
    for name in NAMES:
        noise = make_noise(name, x, **fast(name))
        assert noise.sample((3,)).dtype == torch.float32, name
        assert noise.log_prob(x).dtype == torch.float32, name


# ------------------------------------------------------------------ exactness


def test_diag_gaussian_closed_form():
    from scipy import stats

    x = cont_data(100, 3)
    noise = make_noise("diag_gaussian", x)
    mu, sd = x.mean(0).numpy(), x.std(0, correction=0).numpy()
    pts = cont_data(10, 3, seed=9)
    expected = stats.norm(mu, sd).logpdf(pts.numpy()).sum(-1)
    np.testing.assert_allclose(noise.log_prob(pts).numpy(), expected, rtol=1e-12)


def test_full_gaussian_closed_form():
    from scipy import stats

    x = cont_data(100, 3)
    noise = make_noise("full_gaussian", x, shrinkage=0.0, jitter=0.0)
    cov = np.cov(x.numpy().T, ddof=0)
    pts = cont_data(10, 3, seed=9)
    expected = stats.multivariate_normal(x.mean(0).numpy(), cov).logpdf(pts.numpy())
    np.testing.assert_allclose(noise.log_prob(pts).numpy(), expected, rtol=1e-9)


def test_standard_normal_closed_form():
    noise = make_noise("standard_normal", cont_data(5, 4))
    pts = cont_data(10, 4, seed=2)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(pts).sum(-1)
    torch.testing.assert_close(noise.log_prob(pts), expected.double())


def test_kde_closed_form():
    from scipy import stats

    x = cont_data(40, 2)
    noise = make_noise("kde", x, bandwidth_factor=0.7)
    h = 0.7 * x.std(0, correction=0) * 40 ** (-1 / 6)
    pts = cont_data(7, 2, seed=4)
    dens = np.mean([stats.norm(xi.numpy(), h.numpy()).pdf(pts.numpy()).prod(-1) for xi in x], 0)
    np.testing.assert_allclose(noise.log_prob(pts).numpy(), np.log(dens), rtol=1e-10)


def test_kde_binary_closed_form():
    x = binary_data(30, 4)
    noise = make_noise("kde", x, flip=0.1)
    pts = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    ham = (pts[:, None, :] != x[None]).sum(-1).double()
    expected = torch.log((0.1**ham * 0.9 ** (4 - ham)).mean(1))
    torch.testing.assert_close(noise.log_prob(pts), expected)


def test_marginals_closed_form():
    from scipy import stats

    x = mixed_data(50)
    noise = make_noise("marginals", x, alpha=1.0)
    pts = mixed_data(5, seed=3)
    expected = np.zeros(5)
    for j in range(3):  # continuous: Silverman KDE
        col = x[:, j].numpy()
        iqr = np.subtract(*np.percentile(col, [75, 25])) / 1.34
        h = 0.9 * min(col.std(), iqr) * 50 ** (-0.2)
        expected += np.log(stats.norm(col[:, None], h).pdf(pts[:, j].numpy()[None]).mean(0))
    for j in (3, 4):  # binary: Laplace-smoothed Bernoulli
        p = (x[:, j].sum().item() + 1) / 52
        expected += np.where(pts[:, j].numpy() == 1, np.log(p), np.log1p(-p))
    np.testing.assert_allclose(noise.log_prob(pts).numpy(), expected, rtol=1e-10)


def test_kde_subsamples_max_points():
    x = cont_data(500, 2)
    noise = make_noise("kde", x, max_points=64)
    assert noise.state()["points"].shape == (64, 2)


def test_gmm_recovers_two_clusters():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 2, generator=g, dtype=torch.float64) * 0.3 - 3,
                   torch.randn(200, 2, generator=g, dtype=torch.float64) * 0.3 + 3])
    noise = make_noise("gmm", x, n_components=2)
    probe = torch.tensor([[-3.0, -3.0], [0.0, 0.0], [3.0, 3.0]], dtype=torch.float64)
    lp = noise.log_prob(probe)
    assert lp[0] > lp[1] + 10 and lp[2] > lp[1] + 10


# ------------------------------------------------------------------ plug-ins

PLUGIN_SRC = textwrap.dedent(
    """
    import torch
    from torch.distributions import Independent, Normal

    CALLS = []

    def near_miss(data, seed=0, widen=2.0):
        CALLS.append(seed)
        return Independent(Normal(data.mean(0), widen * data.std(0)), 1)

    def no_seed(data):
        return Independent(Normal(data.mean(0), data.std(0)), 1)

    def not_a_distribution(data):
        return 42

    def wrong_shape(data):
        return Normal(data.mean(0), data.std(0))  # batch_shape (D,): log_prob is (N, D)

    def broken(data):
        raise RuntimeError("boom")

    not_callable = 3
    """
)


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    (tmp_path / "my_noises.py").write_text(PLUGIN_SRC)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("my_noises", None)
    yield importlib.import_module("my_noises")
    sys.modules.pop("my_noises", None)


def test_plugin_loads_samples_and_roundtrips(plugin_module):
    x = cont_data(100, 3)
    noise = make_noise("my_noises:near_miss", x, seed=7, widen=3.0)
    assert isinstance(noise, PluginNoise) and noise.spec == "my_noises:near_miss"
    assert plugin_module.CALLS == [7]
    s = noise.sample((11,))
    assert s.shape == (11, 3)
    lp = noise.log_prob(x)
    expected = torch.distributions.Normal(x.mean(0), 3.0 * x.std(0)).log_prob(x).sum(-1)
    torch.testing.assert_close(lp, expected)
    state = roundtrip(noise.state())
    assert state["name"] == "plugin" and state["spec"] == "my_noises:near_miss"
    with pytest.raises(ConfigError, match="needs the training data"):
        load_noise(state)
    again = load_noise(state, x)
    torch.testing.assert_close(again.log_prob(x), lp)
    assert plugin_module.CALLS == [7, 7]
    assert noise.to("cpu").log_prob(x).shape == (100,)
    assert not noise.discrete
    assert make_noise("my_noises:no_seed", x).sample((2,)).shape == (2, 3)


@pytest.mark.parametrize(
    "spec,match",
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("my_noises:missing", "has no attribute 'missing'"),
        ("my_noises:not_callable", "is not callable"),
        ("my_noises:not_a_distribution", "must return a torch.distributions.Distribution"),
        ("my_noises:wrong_shape", r"log_prob of 2 rows must have shape \(2,\)"),
        ("my_noises:broken", "raised RuntimeError: boom"),
        ("my_noises:", "expected 'module:callable'"),
    ],
)
def test_plugin_errors(plugin_module, spec, match):
    with pytest.raises(ConfigError, match=match) as err:
        make_noise(spec, cont_data(20, 3))
    assert "\n" not in str(err.value)


def test_full_gaussian_sample_is_multivariate_normal_in_float64():
    """The sampler is loc + eps L^T with the draws MultivariateNormal makes: the same points
    (float64, same seed) and the same density; and as a distribution its moments match the
    fitted mean and covariance."""
    x = cont_data(200, 6)
    noise = make_noise("full_gaussian", x)
    mvn = torch.distributions.MultivariateNormal(noise._fields["loc"], scale_tril=noise._fields["scale_tril"])
    assert noise._fields["loc"].dtype == torch.float64
    for shape in ((), (7,), (3, 5)):
        torch.manual_seed(11)
        got = noise.sample(shape)
        torch.manual_seed(11)
        want = mvn.sample(shape)
        assert got.shape == want.shape == (*shape, 6)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(noise.log_prob(got), mvn.log_prob(got), rtol=1e-12, atol=1e-12)
    torch.manual_seed(0)
    y = noise.sample((200_000,))
    cov = mvn.covariance_matrix
    torch.testing.assert_close(y.mean(0), mvn.loc, rtol=0, atol=float(6 * cov.diagonal().max().sqrt() / 447))
    torch.testing.assert_close(torch.cov(y.T), cov, rtol=0, atol=float(0.02 * cov.abs().max()))


def test_full_gaussian_sample_is_one_matrix_product(monkeypatch):
    """MultivariateNormal's sampler multiplies L by each draw on its own (minutes for a few
    hundred draws at D = 4096); the noise draws with one matrix product and never calls it."""
    def refuse(*args, **kwargs):
        raise AssertionError("MultivariateNormal.rsample called")

    noise = make_noise("full_gaussian", cont_data(50, 4))
    monkeypatch.setattr(torch.distributions.MultivariateNormal, "rsample", refuse)
    assert noise.sample((5,)).shape == (5, 4)
