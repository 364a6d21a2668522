"""Models for continuous 8-bit images: the discretised-logistic decoder, the convolutional
VAE and tilted VAE, the conv+logistic defaults on ``(C, H, W)`` images, training under
every objective and rule, and the per-pixel anomaly maps.

Fake data only: random 8-bit intensities scaled to [0, 1] (``v / 255``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fvnce.data import DataSpec
from fvnce.data.preprocess import Preprocessor
from fvnce.data.spec import Dataset
from fvnce.encoders import ConvGaussianEncoder, conv_stages, conv_widths
from fvnce.errors import ConfigError
from fvnce.maps import pixel_anomaly_maps
from fvnce.models import ConvTilt, DiscretizedLogistic, EnergyTiltedVAE, VAE, make_model
from fvnce.models.discretized import log1mexp
from fvnce.noise import BaseModelNoise, make_noise
from fvnce.objectives import make_objective
from fvnce.runs.build import build_parts
from fvnce.runs.config import RunConfig
from fvnce.train import TrainConfig

LEVELS = torch.arange(256, dtype=torch.float64) / 255


def _images(n: int, shape, seed: int = 0, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, math.prod(shape)), generator=g) / 255).to(dtype)


# -- discretised logistic ------------------------------------------------------------------
def _params(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(n, generator=g, dtype=torch.float64) * 3
    scale = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(math.log(1e-4), math.log(10.0), generator=g))
    return loc, scale


def test_discretized_logistic_pmf_sums_to_one_float64():
    """The 256 bin probabilities sum to one for random locations (far outside [0, 1] too)
    and scales from 1e-4 (far below a bin width) to 10."""
    loc, scale = _params(200, seed=1)
    d = DiscretizedLogistic(loc[:, None].expand(-1, 256), scale[:, None].expand(-1, 256))
    log_p = d.log_pmf(LEVELS)
    assert torch.isfinite(log_p).all()
    assert torch.allclose(torch.logsumexp(log_p, dim=1), torch.zeros(200, dtype=torch.float64), atol=1e-12, rtol=0)


def test_discretized_logistic_matches_cdf_differences():
    """Oracle in 50-digit arithmetic (mpmath): interior bins are F(x + h) - F(x - h) of
    the logistic CDF, edge bins F(h) and 1 - F(1 - h); relative error below 1e-12 on
    every bin, tails included (1e-100 and smaller)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    locs, scales = [0.3, 0.5, 0.9, -2.0], [0.05, 0.2, 1.0, 0.01]
    got = DiscretizedLogistic(torch.tensor(locs, dtype=torch.float64)[:, None].expand(-1, 256),
                              torch.tensor(scales, dtype=torch.float64)[:, None].expand(-1, 256)).log_pmf(LEVELS)
    h = mpmath.mpf(1) / 510
    for i, (loc, scale) in enumerate(zip(locs, scales)):
        def cdf(v):
            return 1 / (1 + mpmath.exp(-(v - mpmath.mpf(loc)) / mpmath.mpf(scale)))

        for k in range(256):
            x = mpmath.mpf(k) / 255
            p = cdf(x + h) if k == 0 else (1 - cdf(x - h) if k == 255 else cdf(x + h) - cdf(x - h))
            assert abs(got[i, k].item() - float(mpmath.log(p))) <= 1e-12 * max(1.0, abs(float(mpmath.log(p)))), (i, k)


def test_discretized_logistic_is_stable_in_the_tails():
    """A bin 200 scales from the location: the direct difference of CDFs underflows to 0
    (log -inf) in float64, the log-space form gives the asymptote ``-d + log(1 - e^-w)``."""
    loc = torch.tensor([0.0], dtype=torch.float64)
    scale = torch.tensor([1e-3], dtype=torch.float64)
    x = torch.tensor([200 / 255], dtype=torch.float64)
    lp = DiscretizedLogistic(loc, scale).log_pmf(x)
    a, b = (x + 0.5 / 255 - loc) / scale, (x - 0.5 / 255 - loc) / scale
    assert (torch.sigmoid(a) - torch.sigmoid(b)).item() == 0.0  # the naive form fails here
    # log sigmoid(a) ~ 0, log sigmoid(-b) ~ -b, log(1 - e^-(a - b)) exact
    expect = -b + math.log(-math.expm1(-(a - b).item()))
    assert torch.isfinite(lp).all()
    assert abs(lp.item() - expect.item()) < 1e-9


def test_log1mexp_both_branches():
    """Against 50-digit arithmetic; the naive log(-expm1(-d)) is off by 2e-4 relative at d = 30."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    d = torch.tensor([1e-12, 1e-3, 0.5, math.log(2.0), 1.0, 30.0, 700.0], dtype=torch.float64)
    expect = [float(mpmath.log(1 - mpmath.exp(-mpmath.mpf(v)))) for v in d.tolist()]
    assert torch.allclose(log1mexp(d), torch.tensor(expect, dtype=torch.float64), rtol=1e-14, atol=1e-300)


def test_discretized_logistic_density_and_samples():
    """``log_prob`` is the dequantised density ``log pmf + log 255``; samples are bin
    centres whose frequencies follow the pmf (chi-square at a pinned seed)."""
    loc = torch.tensor([0.45], dtype=torch.float64)
    scale = torch.tensor([0.02], dtype=torch.float64)
    d = DiscretizedLogistic(loc, scale)
    x = torch.tensor([0.4], dtype=torch.float64)
    assert torch.allclose(d.log_prob(x), d.log_pmf(x) + math.log(255), rtol=0, atol=1e-15)
    torch.manual_seed(0)
    s = d.sample((100000,)).squeeze(-1)
    k = torch.round(s * 255)
    assert torch.equal(k / 255, s) and s.min() >= 0 and s.max() <= 1
    counts = torch.bincount(k.long(), minlength=256).double()
    p = DiscretizedLogistic(loc.expand(256), scale.expand(256)).log_pmf(LEVELS).exp()
    keep = p * 100000 > 5
    chi2 = (((counts - 100000 * p) ** 2) / (100000 * p))[keep].sum().item()
    dof = int(keep.sum()) - 1
    assert chi2 < dof + 4 * math.sqrt(2 * dof)  # far inside the chi-square's spread
    assert abs(d.mean.item() - (p * LEVELS).sum().item()) < 1e-15


# -- architectures -----------------------------------------------------------------------
def test_stage_counts_and_widths():
    assert [conv_stages((1, s, s)) for s in (8, 28, 32, 64, 128)] == [2, 2, 2, 3, 4]
    assert conv_widths(32, 2) == [32, 64] and conv_widths(32, 4) == [8, 16, 32, 64]
    with pytest.raises(ValueError):
        conv_stages((1, 8, 8), 0)


def test_small_images_keep_the_two_stage_layout():
    """28x28 conv models keep the parameter names and shapes of the two-stage network
    (checkpoints of earlier conv runs still load)."""
    model, encoder = make_model("conv_vae", 784, image_shape=(28, 28))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == {"decoder.fc.0.weight": (256, 8), "decoder.fc.0.bias": (256,),
                      "decoder.fc.2.weight": (64 * 49, 256), "decoder.fc.2.bias": (64 * 49,),
                      "decoder.deconv.0.weight": (64, 32, 4, 4), "decoder.deconv.0.bias": (32,),
                      "decoder.deconv.2.weight": (32, 1, 4, 4), "decoder.deconv.2.bias": (1,)}
    enc = {k: tuple(v.shape) for k, v in encoder.state_dict().items()}
    assert enc == {"conv.0.weight": (32, 1, 3, 3), "conv.0.bias": (32,), "conv.2.weight": (64, 32, 3, 3),
                   "conv.2.bias": (64,), "head.0.weight": (256, 64 * 49), "head.0.bias": (256,),
                   "head.2.weight": (16, 256), "head.2.bias": (16,)}


@pytest.mark.parametrize("shape", [(1, 64, 64), (3, 32, 32), (1, 20, 36)])
def test_conv_vae_shapes(shape):
    d = math.prod(shape)
    model, encoder = make_model("conv_vae", d, image_shape=shape, likelihood="logistic", channels=8)
    x = _images(3, shape)
    z = encoder(x).rsample((2,))
    assert z.shape == (2, 3, 8)
    assert model.log_joint(x, z).shape == (2, 3)
    assert model.pixel_log_probs(x, z).shape == (2, 3, d)
    s = model.sample(4)
    assert s.shape == (4, d) and torch.equal(torch.round(s * 255) / 255, s)


def test_tilted_conv_vae_starts_as_its_base():
    shape = (1, 16, 16)
    model, encoder = make_model("tilted_vae", 256, image_shape=shape, likelihood="logistic", arch="conv")
    assert isinstance(model.tilt, ConvTilt) and model.tilt.grid
    x = _images(5, shape)
    z = encoder(x).rsample((3,))
    assert torch.equal(model.log_joint(x, z), model.base.log_joint(x, z))  # g = 0, c = 0 at the start


def test_conv_tilt_is_constant_within_bins():
    """With ``grid=True`` the tilt sees bin centres: a value moved inside its bin gives the
    same g, so the tilted model stays a pmf on the 8-bit grid like its base."""
    torch.manual_seed(0)
    tilt = ConvTilt((1, 8, 8), channels=4, hidden=8, grid=True)
    torch.nn.init.normal_(tilt.head[-1].weight)
    x = _images(4, (1, 8, 8))
    jitter = (torch.rand_like(x) - 0.5) * (0.98 / 255)
    assert torch.equal(tilt(x), tilt(x + jitter))
    assert not torch.equal(tilt(x), tilt(x + 1 / 255))


def test_model_option_checks():
    with pytest.raises(ConfigError, match="arch"):
        make_model("vae", 64, arch="cnn", image_shape=(8, 8))
    with pytest.raises(ConfigError, match="image"):
        make_model("tilted_vae", 64, arch="conv")
    with pytest.raises(ConfigError, match="channels"):
        make_model("conv_vae", 64, image_shape=(8, 8), channels=0)
    with pytest.raises(ConfigError, match="stages"):
        make_model("conv_vae", 64, image_shape=(8, 8), stages=-1)


# -- the defaults on images (runs/build.py) -------------------------------------------------
@pytest.mark.parametrize("objective,noise,name", [("elbo", "auto", "vae"), ("iwae", "auto", "vae"),
                                                  ("fvnce", "auto", "tilted_vae"), ("fvnce", "base", "tilted_vae")])
def test_auto_model_on_continuous_images_is_conv_logistic(objective, noise, name):
    cfg = RunConfig(objective=objective, noise=noise)
    got, opts, model, encoder, _ = build_parts(cfg, 3 * 16 * 16, [3, 16, 16], binary=False)
    assert got == name and opts["arch"] == "conv" and opts["likelihood"] == "logistic"
    vae = model.base if name == "tilted_vae" else model
    assert isinstance(vae, VAE) and vae.likelihood == "logistic"
    assert isinstance(encoder, ConvGaussianEncoder)
    if name == "tilted_vae":
        assert isinstance(model.tilt, ConvTilt)


def test_auto_model_elsewhere_is_unchanged():
    """Binary images, images given as (H, W) (built-in sets, .npy arrays) and tables keep
    the MLP defaults; model options the user gives are kept."""
    for shape, binary, like in [([1, 8, 8], True, "bernoulli"), ([8, 8], False, "gaussian"), (None, False, "gaussian")]:
        _, opts, model, _, _ = build_parts(RunConfig(objective="elbo"), 64, shape, binary)
        assert opts.get("arch", "mlp") == "mlp" and opts["likelihood"] == like
    cfg = RunConfig(objective="elbo", model_options={"likelihood": "gaussian"})
    _, opts, model, _, _ = build_parts(cfg, 64, [1, 8, 8], False)
    assert opts["likelihood"] == "gaussian" and opts["arch"] == "conv"
    cfg = RunConfig(objective="elbo", model_options={"arch": "mlp"})
    _, opts, model, _, _ = build_parts(cfg, 64, [1, 8, 8], False)
    assert opts["arch"] == "mlp" and model.likelihood == "logistic"


# -- training under every objective and rule ------------------------------------------------
RULES = [{"rule": "kl"}, {"rule": "power", "alpha": 1.5}, {"rule": "shifted_log"}]


def _train(model, encoder, objective, noise, x, steps: int = 3):
    params = [p for p in [*model.parameters(), *encoder.parameters()] if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(steps):
        opt.zero_grad()
        out = objective(model, encoder, x, noise)
        assert torch.isfinite(out.loss)
        out.loss.backward()
        opt.step()
    return params


def _all_reached(params):
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and bool((p.grad != 0).any()), p.shape


@pytest.mark.parametrize("shape", [(1, 8, 8), (2, 16, 16)])
@pytest.mark.parametrize("objective", ["elbo", "iwae"])
def test_conv_vae_trains_by_elbo_and_iwae(shape, objective):
    torch.manual_seed(0)
    model, encoder = make_model("conv_vae", math.prod(shape), image_shape=shape, likelihood="logistic", channels=8)
    obj = make_objective(objective, **({"k": 4} if objective == "iwae" else {}))
    _all_reached(_train(model, encoder, obj, None, _images(16, shape)))


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 16, 16)])
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["rule"])
def test_tilted_conv_vae_every_rule_with_base_noise(shape, rule):
    """Frozen conv base as the noise (exact ratio, no encoder): the tilt and c train, the
    base does not."""
    torch.manual_seed(0)
    d = math.prod(shape)
    model, encoder = make_model("tilted_vae", d, image_shape=shape, likelihood="logistic", arch="conv",
                                channels=8, tilt_channels=4, freeze_base=True)
    noise = BaseModelNoise.from_model(model)
    assert not noise.discrete
    y = noise.sample((5,))
    assert y.shape == (5, d) and torch.equal(torch.round(y * 255) / 255, y)
    obj = make_objective("fvnce", **rule, exp_mode="linear", tau=10.0)
    params = _train(model, encoder, obj, noise, _images(16, shape), steps=3)
    trained = [p for p in params if any(p is q for q in model.parameters())]
    assert {id(p) for p in trained} == {id(p) for p in [*model.tilt.parameters(), model.log_normaliser]}
    _all_reached(trained)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["rule"])
@pytest.mark.parametrize("base_fit", ["auto", "rule"])
def test_tilted_conv_vae_every_rule_with_fitted_noise(rule, base_fit):
    """Against a fitted continuous noise every parameter (base, encoder, tilt, c) trains."""
    torch.manual_seed(0)
    shape = (1, 8, 8)
    x = _images(32, shape)
    model, encoder = make_model("tilted_vae", 64, image_shape=shape, likelihood="logistic", arch="conv",
                                channels=8, tilt_channels=4)
    noise = make_noise("diag_gaussian", x)
    obj = make_objective("fvnce", **rule, base_fit=base_fit, exp_mode="linear", tau=10.0)
    params = _train(model, encoder, obj, noise, x, steps=3)
    assert len(params) == len(list(model.parameters())) + len(list(encoder.parameters()))
    _all_reached(params)


@pytest.mark.parametrize("rule", RULES[1:], ids=lambda r: r["rule"])
def test_normalised_conv_vae_under_fvnce_rules(rule):
    torch.manual_seed(0)
    shape = (1, 8, 8)
    x = _images(32, shape)
    model, encoder = make_model("conv_vae", 64, image_shape=shape, likelihood="logistic", channels=8)
    obj = make_objective("fvnce", **rule, exp_mode="linear", tau=10.0)
    _all_reached(_train(model, encoder, obj, make_noise("diag_gaussian", x), x))


def _image_dataset(shape, n: int = 48) -> Dataset:
    x = _images(n, shape)
    names = [f"pixel{i}" for i in range(math.prod(shape))]
    pre = Preprocessor.fit(x.double().numpy(), names, transform="none", image_shape=tuple(shape))
    return Dataset(train=x[:32], val=x[32:40], test=x[40:], val_labels=None, test_labels=None,
                   feature_names=names, image_shape=tuple(shape), binary=False, preprocessor=pre,
                   spec=DataSpec(source="fake-images"))


def test_run_chain_on_images_vae_then_tilt_with_base_noise(tmp_path):
    """What the poc does on images, through the run API: a VAE run (model auto -> conv
    VAE with logistic decoder), then a tilted run started from it against its frozen base,
    evaluated (log Z through the base) and reloaded."""
    from fvnce.runs.loading import load_run
    from fvnce.runs.training import train_run

    ds = _image_dataset((1, 8, 8))
    train = TrainConfig(steps=4, batch_size=16, eval_every=2, checkpoint_every=2, progress=False)
    vae_cfg = RunConfig(objective="elbo", model_options={"channels": 8}, train=train, eval_k=4)
    train_run(vae_cfg, tmp_path / "vae", dataset=ds)
    tilt_cfg = RunConfig(objective="fvnce", objective_options={"rule": "power", "alpha": 1.5}, noise="base",
                         model_options={"channels": 8}, train=train, eval_k=4, init_from=str(tmp_path / "vae"))
    result, _ = train_run(tilt_cfg, tmp_path / "tilt", dataset=ds)
    run = load_run(tmp_path / "tilt")
    assert isinstance(run.model, EnergyTiltedVAE) and isinstance(run.model.tilt, ConvTilt)
    assert run.model.base.likelihood == "logistic"
    vae = load_run(tmp_path / "vae").model
    for k, v in vae.state_dict().items():  # the frozen base is the VAE the run started from
        assert torch.equal(run.model.base.state_dict()[k], v)


# -- per-pixel anomaly maps -----------------------------------------------------------------
def _map_models(shape):
    d = math.prod(shape)
    yield make_model("conv_vae", d, image_shape=shape, likelihood="logistic", channels=8)
    yield make_model("tilted_vae", d, image_shape=shape, likelihood="logistic", arch="conv", channels=8)
    yield make_model("vae", d, likelihood="bernoulli", hidden=(16,))
    yield make_model("vae", d, likelihood="gaussian", hidden=(16,))


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 8, 12)])
def test_maps_sum_to_the_reconstruction_term(float64, shape):
    """For a factorised decoder the map summed over pixels is ``-(1/k) sum_j log p(x|z_j)``
    with the same draws; per pixel it is the channel sum of the per-feature terms."""
    x = _images(7, shape, dtype=torch.float64)
    for i, (model, encoder) in enumerate(_map_models(shape)):
        xi = torch.round(x) if getattr(model, "likelihood", "") == "bernoulli" else x
        torch.manual_seed(i)
        maps = pixel_anomaly_maps(model, encoder, xi, shape, k=5, batch_size=3)
        assert maps.shape == (7, *shape[1:]) and maps.dtype == torch.float64
        torch.manual_seed(i)
        recon, per_pixel = [], []
        with torch.no_grad():
            for start in range(0, 7, 3):
                xb = xi[start:start + 3]
                z = encoder(xb).sample((5,))
                px = model.base.decode(z) if isinstance(model, EnergyTiltedVAE) else model.decode(z)
                recon.append(-px.log_prob(xb).mean(0))
                per_pixel.append(-px.base_dist.log_prob(xb).mean(0).reshape(-1, *shape).sum(1))
        assert torch.allclose(maps.sum((1, 2)), torch.cat(recon), rtol=1e-12, atol=1e-9)
        assert torch.allclose(maps, torch.cat(per_pixel), rtol=1e-12, atol=1e-12)


def test_maps_point_at_the_pixels_the_decoder_misses(float64):
    """A decoder that puts every pixel near 0.2: a bright patch lights up the map there
    and nowhere else."""
    model, encoder = make_model("conv_vae", 64, image_shape=(8, 8), likelihood="logistic", channels=4)
    with torch.no_grad():
        last = model.decoder.deconv[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.2, -3.0]))  # loc 0.2, scale softplus(-3) ~ 0.05
    x = torch.full((1, 64), 0.2, dtype=torch.float64)
    x.view(1, 8, 8)[0, 2:4, 5:7] = 1.0
    m = pixel_anomaly_maps(model, encoder, x, (1, 8, 8), k=3)[0]
    patch = torch.zeros(8, 8, dtype=torch.bool)
    patch[2:4, 5:7] = True
    assert m[patch].min() > m[~patch].max() + 10


def test_maps_refuse_what_they_cannot_do():
    model, encoder = make_model("conv_vae", 64, image_shape=(8, 8), likelihood="logistic", channels=4)
    x = _images(2, (1, 8, 8))
    with pytest.raises(ConfigError, match="expected rows of 64"):
        pixel_anomaly_maps(model, encoder, x[:, :60], (8, 8))
    with pytest.raises(ConfigError, match="k"):
        pixel_anomaly_maps(model, encoder, x, (8, 8), k=0)
    rbm, enc = make_model("rbm", 64)
    with pytest.raises(ConfigError, match="per-pixel"):
        pixel_anomaly_maps(rbm, enc, x, (8, 8))
    assert pixel_anomaly_maps(model, encoder, x[:0], (8, 8)).shape == (0, 8, 8)
    np.testing.assert_array_equal(pixel_anomaly_maps(model, encoder, x, (1, 8, 8)).shape, (2, 8, 8))
