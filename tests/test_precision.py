"""Mixed precision (bf16 autocast for the network layers, float32 log-weights) and the
optional torch.compile with its eager fallback."""

from __future__ import annotations

import functools

import pytest
import torch

from fvnce.errors import ConfigError
from fvnce.models import make_model
from fvnce.objectives import make_objective
from fvnce.objectives.base import log_weights
from fvnce.train import TrainConfig, Trainer


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    x = torch.randn(96, 6)
    model, encoder = make_model("tilted_vae", 6, z_dim=2, hidden=(16,), tilt_hidden=(8,), likelihood="gaussian")
    noise = torch.distributions.Independent(torch.distributions.Normal(x.mean(0), 1.5 * x.std(0)), 1)
    obj = make_objective("fvnce", rule="power", alpha=1.5, exp_mode="linear", tau=10.0)
    return model, encoder, obj, noise, x


def _cfg(**kw):
    return TrainConfig(**{"steps": 6, "batch_size": 32, "lr": 1e-3, "progress": False, "device": "cpu", **kw})


def _params(*mods):
    return [p.detach().clone() for m in mods for p in m.parameters()]


def test_bf16_on_cpu_runs_with_float32_loss_and_log_weights():
    model, encoder, obj, noise, x = _problem()
    tr = Trainer(model, encoder, obj, noise, _cfg(precision="bf16"))
    assert tr.precision == "bf16"
    seen = []
    lin = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    lin.register_forward_hook(lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), o.dtype)))
    result = tr.fit(x)
    assert result.step == 6 and all(h["loss"] is not None for h in result.history)
    # training steps ran the layers under bf16 autocast (the calibration before them in fp32);
    # this hook sees the raw bf16 output, the trainer's hook then casts it to float32
    assert sum(on for on, _ in seen) >= 6
    assert all(dt == torch.bfloat16 for on, dt in seen if on)
    assert not torch.is_autocast_enabled("cpu")
    # inside the hooks: the objective's loss and log-weights are float32
    tr._install_precision_hooks()
    try:
        out = obj(model, encoder, x[:16], noise)
    finally:
        tr._remove_precision_hooks()
    assert out.loss.dtype == torch.float32
    assert all(t.dtype == torch.float32 for t in out.parts.values())
    assert tr._hooks == [] and not torch.is_autocast_enabled("cpu")


def test_bf16_stays_close_to_fp32_and_fp32_is_unchanged():
    runs = {}
    for prec in ("fp32", "bf16", None):
        model, encoder, obj, noise, x = _problem()
        kw = {} if prec is None else {"precision": prec}
        Trainer(model, encoder, obj, noise, _cfg(**kw)).fit(x)
        runs[prec] = _params(model, encoder)
    assert all(torch.equal(a, b) for a, b in zip(runs["fp32"], runs[None]))  # the default is fp32, bit for bit
    assert any(not torch.equal(a, b) for a, b in zip(runs["fp32"], runs["bf16"]))
    assert all(torch.allclose(a, b, atol=5e-2) for a, b in zip(runs["fp32"], runs["bf16"]))


def test_log_weights_promote_half_precision_log_densities():
    class Half(torch.nn.Module):
        c = None

        def log_joint(self, x, z):
            return (-(x.unsqueeze(0) - z) ** 2).sum(-1).to(torch.bfloat16)

    enc = lambda x: torch.distributions.Independent(torch.distributions.Normal(x, torch.ones_like(x)), 1)
    lw = log_weights(Half(), enc, torch.randn(5, 2), torch.zeros(5), k=3)
    assert lw.log_w.dtype == torch.float32 and lw.log_joint.dtype == torch.float32


def test_precision_config():
    with pytest.raises(ConfigError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="compile"):
        TrainConfig(compile="yes")
    with pytest.raises(ConfigError, match="dist_noise"):
        TrainConfig(dist_noise="global")


def test_compile_unavailable_degrades_with_one_line(monkeypatch):
    def broken(fn, *a, **k):
        raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken)
    model, encoder, obj, noise, x = _problem()
    lines = []
    Trainer(model, encoder, obj, noise, _cfg(compile=True), log=lines.append).fit(x)
    msgs = [l for l in lines if "torch.compile" in l]
    assert len(msgs) == 1 and "no compiler here" in msgs[0] and "\n" not in msgs[0]


def test_compile_failing_at_first_call_falls_back_to_eager(monkeypatch):
    def lazy_broken(fn, *a, **k):
        def call(*args, **kwargs):
            raise RuntimeError("backend compiler failed")
        return call

    monkeypatch.setattr(torch, "compile", lazy_broken)
    ref_model, ref_enc, obj, noise, x = _problem()
    Trainer(ref_model, ref_enc, obj, noise, _cfg()).fit(x)
    model, encoder, obj, noise, x = _problem()
    lines = []
    Trainer(model, encoder, obj, noise, _cfg(compile=True), log=lines.append).fit(x)
    assert sum("torch.compile failed" in l for l in lines) == 1
    assert all(torch.equal(a, b) for a, b in zip(_params(ref_model, ref_enc), _params(model, encoder)))


def test_compile_works(monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    model, encoder, obj, noise, x = _problem()
    lines = []
    result = Trainer(model, encoder, obj, noise, _cfg(compile=True, steps=3), log=lines.append).fit(x)
    assert result.step == 3
    assert not any("torch.compile" in l for l in lines), lines
    assert set(model.state_dict()) == set(make_model("tilted_vae", 6, z_dim=2, hidden=(16,), tilt_hidden=(8,),
                                                     likelihood="gaussian")[0].state_dict())


@pytest.mark.parametrize("amx,avx512bf16,auto", [(False, False, "fp32"), (False, True, "fp32"), (True, True, "bf16")])
def test_auto_precision_follows_native_bf16_on_cpu(monkeypatch, amx, avx512bf16, auto):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512bf16)
    assert Trainer._resolve_precision("auto", torch.device("cpu")) == auto
    assert Trainer._resolve_precision("fp32", torch.device("cpu")) == "fp32"
    model, encoder = make_model("vae", 4, likelihood="gaussian")
    lines = []
    tr = Trainer(model, encoder, make_objective("elbo"), None, _cfg(precision="bf16"), log=lines.append)
    assert tr.precision == "bf16"
    warned = [ln for ln in lines if "no native bfloat16" in ln]
    assert len(warned) == (0 if (amx or avx512bf16) else 1)
