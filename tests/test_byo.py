"""Bring your own model: a user's plain PyTorch modules train under every objective that
applies to them, without being rewritten, and a pre-trained VAE starts FVNCE training.

* A user VAE (encoder -> ``Independent(Normal)`` over z, decoder ->
  ``Independent(Bernoulli(logits))`` over x) wrapped as ``FromVAE(decoder, z_dim)``:
  ``elbo``, ``iwae``, ``fvnce`` (kl, power, shifted_log) and ``vnce``.
* A user module with ``log_joint(x, z)`` wrapped as ``FromLogJoint(module,
  normalised=False)``: ``fvnce`` (kl, power, shifted_log) and ``vnce``.  ``nce`` needs a
  closed-form marginal over the latents, which a bare log joint does not offer: it is
  refused with a message naming the alternatives.
* ``EnergyTiltedVAE.from_vae`` starts from the pre-trained weights: its log joint is the
  base VAE's minus ``c``.
* ``examples/byo_vae.py --quick`` runs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.distributions import Bernoulli, Independent, Normal
from torch.nn import functional as F

from fvnce.errors import ConfigError
from fvnce.models import EnergyTiltedVAE, FromLogJoint, FromVAE
from fvnce.noise import make_noise
from fvnce.objectives import calibrate_log_normaliser, make_objective
from fvnce.train import TrainConfig, Trainer

from conftest import quiet

ROOT = Path(__file__).resolve().parents[1]
X_DIM, Z_DIM = 10, 3


# -- the user's modules: plain PyTorch, nothing from fvnce ------------------------------
class UserEncoder(nn.Module):
    def __init__(self, x_dim: int = X_DIM, z_dim: int = Z_DIM) -> None:
        super().__init__()
        self.hidden = nn.Linear(x_dim, 16)
        self.loc = nn.Linear(16, z_dim)
        self.scale = nn.Linear(16, z_dim)

    def forward(self, x):
        h = torch.tanh(self.hidden(x))
        return Independent(Normal(self.loc(h), F.softplus(self.scale(h)) + 1e-3), 1)


class UserDecoder(nn.Module):
    def __init__(self, z_dim: int = Z_DIM, x_dim: int = X_DIM) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(z_dim, 16), nn.Tanh(), nn.Linear(16, x_dim))

    def forward(self, z):
        return Independent(Bernoulli(logits=self.net(z)), 1)


class UserEnergy(nn.Module):
    """An unnormalised continuous latent-variable model the user wrote as a log joint:
    ``log phi(x, z) = -|z|^2 / 2 - |x - W z - b|^2 / (2 s^2)`` (no normalising constant)."""

    def __init__(self, x_dim: int = X_DIM, z_dim: int = Z_DIM) -> None:
        super().__init__()
        self.W = nn.Parameter(0.3 * torch.randn(x_dim, z_dim))
        self.b = nn.Parameter(torch.zeros(x_dim))
        self.log_s = nn.Parameter(torch.zeros(()))

    def log_joint(self, x, z):
        resid = x - z @ self.W.T - self.b
        return -0.5 * (z ** 2).sum(-1) - 0.5 * (resid ** 2).sum(-1) / self.log_s.exp() ** 2


def binary_data(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    logits = z @ torch.randn(2, X_DIM, generator=g) * 2.0
    return torch.bernoulli(torch.sigmoid(logits), generator=g)


def continuous_data(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=g)
    return z @ torch.randn(2, X_DIM, generator=g) + 0.3 * torch.randn(n, X_DIM, generator=g)





def assert_all_grads(module: nn.Module, what: str) -> None:
    for name, p in module.named_parameters():
        assert p.grad is not None, f"no gradient reached {what}.{name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient in {what}.{name}"
        assert p.grad.abs().sum() > 0, f"zero gradient in {what}.{name}"


def snapshot(*modules: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for m in modules for p in m.parameters()]


def assert_changed(before: list[torch.Tensor], *modules: nn.Module) -> None:
    after = [p.detach() for m in modules for p in m.parameters()]
    changed = [not torch.equal(a, b) for a, b in zip(before, after)]
    assert all(changed), f"{changed.count(False)} of {len(changed)} parameters did not move"


VAE_OBJECTIVES = {
    "elbo": ("elbo", {}),
    "iwae": ("iwae", {"k": 4}),
    "fvnce-kl": ("fvnce", {"rule": "kl", "k": 2}),
    "fvnce-power": ("fvnce", {"rule": "power", "alpha": 1.5, "exp_mode": "linear"}),
    "fvnce-shifted_log": ("fvnce", {"rule": "shifted_log", "c": 1.0}),
    "fvnce-kl-estimated-noise-term": ("fvnce", {"rule": "kl", "noise_term": "estimate"}),
    "vnce": ("vnce", {"k": 2}),
}


@pytest.mark.parametrize("case", sorted(VAE_OBJECTIVES))
def test_user_vae_trains_under_every_objective(case):
    name, params = VAE_OBJECTIVES[case]
    torch.manual_seed(0)
    x = binary_data()
    encoder, decoder = UserEncoder(), UserDecoder()
    model = FromVAE(decoder, z_dim=Z_DIM)
    objective = make_objective(name, **params)
    noise = make_noise("marginals", x) if objective.uses_noise else None
    objective.check_model(model)

    out = objective(model, encoder, x[:32], noise)
    assert torch.isfinite(out.loss) and out.data_terms.shape == (32,)
    out.loss.backward()
    assert_all_grads(decoder, "decoder")
    assert_all_grads(encoder, "encoder")

    before = snapshot(decoder, encoder)
    cfg = TrainConfig(steps=15, batch_size=64, lr=1e-2, progress=False, log_every=5)
    result = Trainer(model, encoder, objective, noise, cfg, log=quiet).fit(x)
    assert result.step == 15 and result.retries == 0
    assert all(r["loss"] is not None for r in result.history if "loss" in r)
    assert_changed(before, decoder, encoder)


def test_user_vae_elbo_training_improves_the_elbo():
    torch.manual_seed(0)
    x = binary_data(400)
    encoder, decoder = UserEncoder(), UserDecoder()
    model = FromVAE(decoder, z_dim=Z_DIM)
    elbo = make_objective("elbo", k=8)
    with torch.no_grad():
        torch.manual_seed(1)
        start = elbo(model, encoder, x).loss.item()
    cfg = TrainConfig(steps=150, batch_size=100, lr=1e-2, progress=False)
    Trainer(model, encoder, elbo, None, cfg, log=quiet).fit(x)
    with torch.no_grad():
        torch.manual_seed(1)
        end = elbo(model, encoder, x).loss.item()
    assert end < start - 1.0, (start, end)


LOG_JOINT_OBJECTIVES = {
    "fvnce-kl": ("fvnce", {"rule": "kl", "k": 2}),
    "fvnce-power": ("fvnce", {"rule": "power", "alpha": 1.5, "exp_mode": "linear"}),
    "fvnce-shifted_log": ("fvnce", {"rule": "shifted_log", "c": 1.0}),
    "vnce": ("vnce", {"k": 2}),
}


@pytest.mark.parametrize("case", sorted(LOG_JOINT_OBJECTIVES))
def test_user_log_joint_trains_as_unnormalised_model(case):
    name, params = LOG_JOINT_OBJECTIVES[case]
    torch.manual_seed(0)
    x = continuous_data()
    energy, encoder = UserEnergy(), UserEncoder()
    model = FromLogJoint(energy, normalised=False)
    assert not model.normalised and model.c is not None
    objective = make_objective(name, **params)
    objective.check_model(model)
    noise = make_noise("diag_gaussian", x)

    out = objective(model, encoder, x[:32], noise)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert_all_grads(energy, "user module")
    assert model.log_normaliser.grad is not None and model.log_normaliser.grad != 0
    if name == "fvnce":  # vnce trains the encoder through the data side only; it still gets gradients
        assert_all_grads(encoder, "encoder")

    before = snapshot(energy, encoder)
    c_before = model.c.item()
    cfg = TrainConfig(steps=15, batch_size=64, lr=1e-2, progress=False, log_every=5)
    result = Trainer(model, encoder, objective, noise, cfg, log=quiet).fit(x)
    assert result.step == 15 and result.retries == 0
    assert_changed(before, energy, encoder)
    assert model.c.item() != c_before


def test_log_joint_without_closed_form_marginal_is_refused_by_nce():
    model = FromLogJoint(UserEnergy(), normalised=False)
    with pytest.raises(ConfigError, match="closed-form marginal.*fvnce or vnce"):
        make_objective("nce").check_model(model)


def test_normalised_only_objectives_refuse_an_unnormalised_user_model():
    model = FromLogJoint(UserEnergy(), normalised=False)
    for name in ("elbo", "iwae"):
        with pytest.raises(ConfigError, match="normalised model"):
            make_objective(name).check_model(model)


def test_callable_module_as_log_joint():
    """``FromLogJoint`` also accepts a module whose ``forward(x, z)`` is the log joint."""

    class Forward(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = UserEnergy()

        def forward(self, x, z):
            return self.inner.log_joint(x, z)

    torch.manual_seed(0)
    module = Forward()
    x, z = continuous_data(5), torch.randn(4, 5, Z_DIM)
    model = FromLogJoint(module, normalised=False)
    with torch.no_grad():
        model.log_normaliser.fill_(0.7)
    torch.testing.assert_close(model.log_joint(x, z), module(x, z) - 0.7)
    assert FromLogJoint(module).log_joint(x, z).shape == (4, 5)


# -- a pre-trained VAE as the starting point --------------------------------------------
@pytest.fixture(scope="module")
def pretrained():
    torch.manual_seed(0)
    x = binary_data(300)
    encoder, decoder = UserEncoder(), UserDecoder()
    vae = FromVAE(decoder, z_dim=Z_DIM)
    cfg = TrainConfig(steps=100, batch_size=100, lr=1e-2, progress=False)
    Trainer(vae, encoder, make_objective("elbo"), None, cfg, log=quiet).fit(x)
    return x, vae, encoder


def test_from_vae_starts_at_the_pretrained_vae(pretrained):
    x, vae, encoder = pretrained
    tilted = EnergyTiltedVAE.from_vae(vae, X_DIM, hidden=(8,))
    # the pre-trained weights are copied, not shared
    for (name, p), (_, q) in zip(vae.named_parameters(), tilted.base.named_parameters()):
        assert torch.equal(p, q), name
        assert p.data_ptr() != q.data_ptr(), name
    torch.manual_seed(1)
    z = encoder(x).sample((3,))
    with torch.no_grad():
        torch.testing.assert_close(tilted.log_joint(x, z), vae.log_joint(x, z), rtol=0, atol=0)
        tilted.log_normaliser.fill_(2.5)
        torch.testing.assert_close(tilted.log_joint(x, z), vae.log_joint(x, z) - 2.5, rtol=0, atol=1e-6)
    shared = EnergyTiltedVAE.from_vae(vae, X_DIM, copy_base=False)
    assert shared.base is vae


def test_fvnce_continues_from_pretrained_weights(pretrained):
    """Continue with fvnce from the pre-trained weights (c calibrated in closed form
    first): the loss falls, the copied base moves, the original pre-trained VAE does not."""
    x, vae, encoder = pretrained
    original = snapshot(vae)
    tilted = EnergyTiltedVAE.from_vae(vae, X_DIM, hidden=(8,))
    fv_encoder = UserEncoder()
    fv_encoder.load_state_dict(encoder.state_dict())
    noise = make_noise("marginals", x)
    objective = make_objective("fvnce", rule="kl")

    def loss() -> float:  # common random numbers, averaged: the noise side is noisy
        torch.manual_seed(3)
        with torch.no_grad():
            return sum(objective(tilted, fv_encoder, x, noise).loss.item() for _ in range(30)) / 30

    torch.manual_seed(2)
    shift = calibrate_log_normaliser(tilted, fv_encoder, noise)  # what the Trainer does first
    assert shift != 0.0
    start = loss()
    cfg = TrainConfig(steps=150, batch_size=100, lr=3e-3, progress=False, log_every=10, calibrate=False)
    result = Trainer(tilted, fv_encoder, objective, noise, cfg, log=quiet).fit(x)
    assert result.retries == 0
    end = loss()
    assert end < start, (start, end)
    assert tilted.c.item() != 0.0  # calibrated and learned
    assert any(not torch.equal(p, q) for p, q in zip(original, tilted.base.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(original, vae.parameters()))


def test_example_script_runs_quick():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "byo_vae.py"), "--quick"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "pre-trained VAE" in proc.stdout and "noise accuracy" in proc.stdout
