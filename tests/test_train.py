"""The training loop: reproducibility, exact resume (in-process, after SIGKILL, after
SIGTERM/SIGINT), metrics, best-validation checkpoint, divergence handling, config."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch.distributions import Independent, Normal

from fvnce.checkpoint import load_checkpoint
from fvnce.errors import CheckpointError, ConfigError, FvnceError, NonFiniteLossError
from fvnce.models import make_model
from fvnce.objectives import ObjectiveOutput, make_objective
from fvnce.train import DivergenceError, TrainConfig, Trainer, TrainingInterrupted

from _subprocs import signal_after_first_checkpoint
from conftest import quiet

TESTS_DIR = Path(__file__).resolve().parent
REQUIRED_TRAIN_KEYS = {"step", "loss", "data_loss", "noise_loss", "lr", "elapsed"}


# -- a tiny problem (also imported by the subprocess scripts) ---------------------------
def make_data(n: int = 200, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.0, 0.3, 0.4]], dtype=torch.float64)
    return torch.randn(n, 3, generator=g, dtype=torch.float64) @ a + torch.tensor([1.0, -1.0, 0.5],
                                                                                   dtype=torch.float64)


def make_noise_for(x: torch.Tensor, scale: float = 1.5):
    return Independent(Normal(x.mean(0), scale * x.std(0)), 1)


def make_problem(init_seed: int = 0, objective: str = "fvnce", **obj_params):
    torch.manual_seed(init_seed)
    model, encoder = make_model("linear_gaussian", 3, z_dim=2, normalised=False)
    model.double()
    if encoder is not None:
        encoder.double()
    obj = make_objective(objective, **(obj_params or {"rule": "kl"}))
    return model, encoder, obj


def cfg(**kw) -> TrainConfig:
    base = dict(steps=40, batch_size=32, lr=1e-2, checkpoint_every=10, eval_every=10, log_every=5,
                progress=False, device="cpu")
    base.update(kw)
    return TrainConfig(**base)


def params_of(model, encoder):
    out = dict(("model." + k, v) for k, v in model.state_dict().items())
    if encoder is not None:
        out.update(("encoder." + k, v) for k, v in encoder.state_dict().items())
    return out


def assert_same_params(a, b):
    pa, pb = params_of(*a), params_of(*b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert torch.equal(pa[k], pb[k]), k


def read_metrics(run_dir) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def strip_time(recs):
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in recs]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add contention on a loaded 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)





def run_reference(tmp_path, name="ref", steps=40, **kw):
    model, encoder, obj = make_problem()
    x = make_data()
    tr = Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=steps, **kw), tmp_path / name, log=quiet)
    res = tr.fit(x[:160], x[160:])
    return (model, encoder), res


# -- configuration ----------------------------------------------------------------------
def test_config_defaults_round_trip():
    c = TrainConfig()
    assert c.total_steps(1000) == 4000 and c.batch_size == 128 and c.lr == 1e-3 and c.grad_clip == 10.0
    assert TrainConfig.from_dict(c.to_dict()) == c
    assert TrainConfig(epochs=3, batch_size=10).total_steps(95) == 30
    json.dumps(c.to_dict())


@pytest.mark.parametrize("kw, match", [
    ({"steps": 0}, r"steps must be a positive integer, got steps=0"),
    ({"steps": 1.5}, r"steps=1.5"),
    ({"epochs": -1}, r"epochs must be a positive integer, got epochs=-1"),
    ({"steps": 10, "epochs": 2}, r"either steps or epochs, not both"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got batch_size=0"),
    ({"lr": 0.0}, r"lr must be a positive number, got lr=0.0"),
    ({"lr": float("nan")}, r"lr=nan"),
    ({"weight_decay": -1e-3}, r"weight_decay must be a non-negative number"),
    ({"grad_clip": 0}, r"grad_clip must be a positive number, got"),
    ({"seed": -3}, r"seed must be a non-negative integer, got seed=-3"),
    ({"log_every": 0}, r"log_every=0"),
    ({"eval_every": True}, r"eval_every=True"),
    ({"checkpoint_every": -5}, r"checkpoint_every=-5"),
    ({"max_retries": -1}, r"max_retries=-1"),
    ({"explode_log_ratio": 0}, r"explode_log_ratio=0"),
    ({"device": "gpu9"}, r"device='gpu9'"),
    ({"progress": "yes"}, r"progress='yes'"),
])
def test_config_validation(kw, match):
    with pytest.raises(ConfigError, match=match):
        TrainConfig(**kw)


def test_config_from_dict_unknown_key():
    with pytest.raises(ConfigError, match=r"unknown training option\(s\) 'learning_rate'"):
        TrainConfig.from_dict({"learning_rate": 0.1})


def test_epoch_order_is_a_permutation_and_regenerable():
    model, encoder, obj = make_problem()
    tr = Trainer(model, encoder, obj, None, TrainConfig(epochs=2, batch_size=7, progress=False), log=quiet)
    idx = torch.cat([tr._batch_index(s, 50) for s in range(8)])  # ceil(50/7) = 8 steps per epoch
    assert torch.equal(torch.sort(idx).values, torch.arange(50))
    idx2 = torch.cat([tr._batch_index(s, 50) for s in range(8, 16)])
    assert torch.equal(torch.sort(idx2).values, torch.arange(50)) and not torch.equal(idx, idx2)
    tr2 = Trainer(*make_problem(), None, TrainConfig(epochs=2, batch_size=7, progress=False), log=quiet)
    assert torch.equal(tr2._batch_index(9, 50), tr._batch_index(9, 50))


# -- learning ---------------------------------------------------------------------------
def test_loss_decreases_and_files(tmp_path):
    model, encoder, obj = make_problem()
    x = make_data(400)
    c0 = float(model.c.detach())
    # 600 steps: at 300 the covariance error still ranged 0.07-0.5 over seeds
    tr = Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=600, lr=2e-2, eval_every=50,
                                                             checkpoint_every=100), tmp_path, log=quiet)
    res = tr.fit(x[:320], x[320:])
    assert res.step == 600 and res.retries == 0
    losses = [h["loss"] for h in res.history if "loss" in h]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.5
    assert float(model.c.detach()) != c0  # calibrated then learned
    # the learned marginal is close to the data covariance
    emp = torch.cov(x.T)
    assert torch.allclose(model.marginal().covariance_matrix.detach(), emp, atol=0.3)

    recs = read_metrics(tmp_path)
    train_recs = [r for r in recs if "loss" in r]
    val_recs = [r for r in recs if "val_loss" in r]
    assert [r["step"] for r in train_recs] == [1] + list(range(5, 601, 5))
    assert [r["step"] for r in val_recs] == list(range(50, 601, 50))
    for r in train_recs:
        assert REQUIRED_TRAIN_KEYS <= r.keys()
        assert {"accuracy", "data_log_ratio", "noise_log_ratio", "ess_fraction", "log_normaliser"} <= r.keys()
        assert all(isinstance(r[k], (int, float)) for k in REQUIRED_TRAIN_KEYS)
    # best validation checkpoint
    best = min(val_recs, key=lambda r: r["val_loss"])
    assert res.best_val == pytest.approx(best["val_loss"]) and res.best_step == best["step"]
    b = load_checkpoint(tmp_path / "best.pt")
    assert b["step"] == res.best_step and b["val_loss"] == res.best_val
    assert set(b["model"]) == set(model.state_dict())
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["step"] == 600 and ck["retries"] == 0 and ck["lr"] == 2e-2
    assert ck["config"]["steps"] == 600 and ck["best_val"] == res.best_val
    assert ck["rule"] == {"exp_mode": "exact", "tau": 20.0}
    for k, v in model.state_dict().items():
        assert torch.equal(ck["model"][k], v)


def test_nce_without_encoder_and_registry_noise(tmp_path):
    """Classic NCE (logistic, nu = 2) with no encoder and a registry noise recovers a known
    Gaussian-Bernoulli RBM.  With unit visible variance the GB-RBM is a mixture of the
    2^H Gaussians N(a + W h, I) with weights pi(h) ∝ exp(b.h + a.Wh + |Wh|^2/2), and
    log Z = logsumexp_h(b.h + a.Wh + |Wh|^2/2) + (D/2) log 2 pi: an independent oracle for
    sampling the data, the learned density and its exact log partition.  The truth has four
    well-separated components, so the fitted diagonal-Gaussian noise is ~0.39 nats/point
    worse than the truth; after training the model is within 0.04 nats of it, its four
    components are where the truth's are, and the learned log-normaliser c equals the exact
    log Z of the learned parameters to 0.1 (over seeds 0-4: <= 0.017 nats, <= 0.28 in the
    means, <= 0.04 in the weights, |c - log Z| <= 0.05).  About 3 s on one core."""
    import itertools
    import math

    from fvnce.noise import make_noise

    def mixture(W, a, b):  # (log weights, means, log Z) of a unit-variance GB-RBM
        h = torch.tensor(list(itertools.product((0.0, 1.0), repeat=W.shape[1])), dtype=W.dtype)
        wh = h @ W.T
        logits = h @ b + wh @ a + 0.5 * (wh ** 2).sum(-1)
        log_z = torch.logsumexp(logits, 0) + 0.5 * W.shape[0] * math.log(2 * math.pi)
        return logits - torch.logsumexp(logits, 0), a + wh, log_z

    def loglik(mix, x):
        log_pi, mu, _ = mix
        lp = -0.5 * ((x[:, None, :] - mu) ** 2).sum(-1) - 0.5 * x.shape[1] * math.log(2 * math.pi)
        return torch.logsumexp(lp + log_pi, 1)

    def sample(mix, n, g):
        log_pi, mu, _ = mix
        idx = torch.multinomial(log_pi.exp(), n, replacement=True, generator=g)
        return mu[idx] + torch.randn(n, mu.shape[1], generator=g, dtype=mu.dtype)

    f64 = dict(dtype=torch.float64)
    W = torch.tensor([[4.0, 0.8], [-0.6, 4.0]], **f64)
    a = torch.tensor([0.3, -0.2], **f64)
    b = -0.5 * (W ** 2).sum(0) - a @ W + torch.tensor([0.0, 0.5], **f64)  # weights ∝ 1, 1, e^0.5, e^1.3
    truth = mixture(W, a, b)
    g = torch.Generator().manual_seed(0)
    x, x_test = sample(truth, 4000, g), sample(truth, 20000, g)

    torch.manual_seed(0)
    model, _ = make_model("gb_rbm", 2, h_dim=2)
    model.double()
    noise = make_noise("diag_gaussian", x)
    steps = 500
    tr = Trainer(model, None, make_objective("nce", nu=2), noise,
                 cfg(steps=steps, batch_size=1024, lr=8e-2, checkpoint_every=250, eval_every=250, log_every=50),
                 tmp_path, log=quiet)
    res = tr.fit(x)
    assert res.step == steps
    assert load_checkpoint(tmp_path / "checkpoint.pt")["encoder"] is None

    with torch.no_grad():
        learned = mixture(model.W, model.a, model.b)
        # 1. the learned log-normaliser is the exact log partition of the learned parameters
        # (the oracle's, which the model's own log_partition() must agree with)
        assert abs(model.c.item() - learned[2].item()) < 0.1, (model.c.item(), learned[2].item())
        assert model.log_partition().item() == pytest.approx(learned[2].item(), abs=1e-9)
        # 2. held-out log-likelihood close to the truth's (the noise alone is far from it)
        ll_truth = loglik(truth, x_test).mean().item()
        assert ll_truth - noise.log_prob(x_test).mean().item() > 0.3
        assert ll_truth - loglik(learned, x_test).mean().item() < 0.04
        # ... and the model's normalised density is that mixture
        torch.testing.assert_close(model.log_marginal(x_test[:100]), loglik(learned, x_test[:100]))
        # 3. the identifiable parameters (component means and weights, up to relabelling) recovered
        dist = torch.cdist(truth[1], learned[1])
        match = dist.argmin(1)
        assert sorted(match.tolist()) == [0, 1, 2, 3], dist
        assert dist.min(1).values.max().item() < 0.4, dist
        assert (truth[0].exp() - learned[0].exp()[match]).abs().max().item() < 0.06


def test_progress_bar_on_stderr(capsys):
    model, encoder, obj = make_problem()
    x = make_data(64)
    Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=12, progress=True), log=quiet).fit(x)
    err = capsys.readouterr().err
    assert "12/12" in err and "loss=" in err and "acc=" in err
    model, encoder, obj = make_problem()
    Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=12, progress=False), log=quiet).fit(x)
    assert "12/12" not in capsys.readouterr().err


# -- reproducibility and resume -----------------------------------------------------------
def test_same_seed_bitwise_identical(tmp_path):
    a, ra = run_reference(tmp_path, "a")
    b, rb = run_reference(tmp_path, "b")
    assert_same_params(a, b)
    assert strip_time(ra.history) == strip_time(rb.history)
    c, _ = run_reference(tmp_path, "c", seed=1)
    assert not torch.equal(a[0].W, c[0].W)


@pytest.mark.parametrize("stop_at", [20, 23])
def test_resume_in_process_is_exact(tmp_path, stop_at):
    ref, ref_res = run_reference(tmp_path)

    x = make_data()
    model, encoder, obj = make_problem()

    def stop(trainer, rec):
        if trainer.step == stop_at:
            trainer.request_stop()

    tr = Trainer(model, encoder, obj, make_noise_for(x), cfg(), tmp_path / "run", log=quiet)
    with pytest.raises(TrainingInterrupted, match=rf"^training interrupted at step {stop_at}; "
                                                  rf"checkpoint saved in .*run; resume with --resume$") as info:
        tr.fit(x[:160], x[160:], callback=stop)
    assert isinstance(info.value, FvnceError) and info.value.step == stop_at
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == stop_at

    # fresh objects with a different initialisation: everything must come from the checkpoint
    model2, encoder2, obj2 = make_problem(init_seed=123)
    tr2 = Trainer(model2, encoder2, obj2, make_noise_for(x), cfg(), tmp_path / "run", log=quiet)
    res = tr2.fit(x[:160], x[160:], resume=True)
    assert res.step == 40
    assert_same_params(ref, (model2, encoder2))
    assert res.best_val == ref_res.best_val and res.best_step == ref_res.best_step
    assert strip_time(read_metrics(tmp_path / "run")) == strip_time(read_metrics(tmp_path / "ref"))
    assert strip_time(res.history) == strip_time(ref_res.history)


def test_resume_can_extend_training(tmp_path):
    ref, _ = run_reference(tmp_path, "ref", steps=40)
    x = make_data()
    model, encoder, obj = make_problem()
    Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=30), tmp_path / "run", log=quiet).fit(
        x[:160], x[160:])
    model2, encoder2, obj2 = make_problem(init_seed=5)
    res = Trainer(model2, encoder2, obj2, make_noise_for(x), cfg(steps=40), tmp_path / "run",
                  log=quiet).fit(x[:160], x[160:], resume=True)
    assert res.step == 40
    assert_same_params(ref, (model2, encoder2))


def test_resume_errors(tmp_path):
    x = make_data()
    model, encoder, obj = make_problem()
    with pytest.raises(CheckpointError, match="nothing to resume: no checkpoint.pt in"):
        Trainer(model, encoder, obj, make_noise_for(x), cfg(), tmp_path / "empty", log=quiet).fit(x, resume=True)
    with pytest.raises(ConfigError, match="resume=True needs a run directory"):
        Trainer(model, encoder, obj, make_noise_for(x), cfg(), None, log=quiet).fit(x, resume=True)
    Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=10), tmp_path / "r", log=quiet).fit(x)
    with pytest.raises(CheckpointError, match="trained with seed=0, this run has seed=4"):
        Trainer(*make_problem(), make_noise_for(x), cfg(seed=4), tmp_path / "r", log=quiet).fit(x, resume=True)
    with pytest.raises(CheckpointError, match="trained on 200 rows, this training set has 100"):
        Trainer(*make_problem(), make_noise_for(x), cfg(), tmp_path / "r", log=quiet).fit(x[:100], resume=True)
    torch.manual_seed(0)
    other, other_enc = make_model("linear_gaussian", 3, z_dim=1, normalised=False)
    with pytest.raises(CheckpointError, match="does not match this model"):
        Trainer(other.double(), other_enc.double(), make_objective("fvnce"), make_noise_for(x), cfg(),
                tmp_path / "r", log=quiet).fit(x, resume=True)


def test_signal_handlers_restored(tmp_path):
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    run_reference(tmp_path, steps=5)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# -- subprocesses: SIGKILL, SIGTERM, SIGINT -------------------------------------------------
# The runs start together (their interpreter start-up dominates) and each is
# stopped once its first checkpoint exists; each test then resumes in-process and must
# end bit-for-bit where one uninterrupted run ends.
SUB_STEPS = 60
SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import torch
    torch.set_num_threads(1)
    import test_train as T
    from fvnce.train import Trainer, TrainingInterrupted
    x = T.make_data()
    model, encoder, obj = T.make_problem()
    tr = Trainer(model, encoder, obj, T.make_noise_for(x), T.cfg(steps={steps}, checkpoint_every=5),
                 {run_dir!r}, log=T.quiet)
    try:
        tr.fit(x[:160], x[160:], callback=lambda trainer, rec: time.sleep(0.02))
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr, flush=True)
        sys.exit(2)
    print("FINISHED", flush=True)
""")
SIGNALS = {"SIGKILL": signal.SIGKILL, "SIGTERM": signal.SIGTERM}


@pytest.fixture(scope="module")
def interrupted_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("signals")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {}
    for name in SIGNALS:
        run_dir = root / name
        script = root / f"{name}.py"
        script.write_text(SCRIPT.format(tests=str(TESTS_DIR), run_dir=str(run_dir), steps=SUB_STEPS))
        procs[name] = (run_dir, subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                                                 stderr=subprocess.PIPE, text=True, env=env), SIGNALS[name])
    return signal_after_first_checkpoint(procs)


@pytest.fixture(scope="module")
def sub_reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("subref")
    with torch.random.fork_rng():
        ref, _ = run_reference(root, "ref", steps=SUB_STEPS, checkpoint_every=5)
    return ref, root / "ref"


def _resume_and_compare(run_dir, sub_reference):
    ref, ref_dir = sub_reference
    x = make_data()
    model, encoder, obj = make_problem(init_seed=99)
    res = Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=SUB_STEPS, checkpoint_every=5), run_dir,
                  log=quiet).fit(x[:160], x[160:], resume=True)
    assert res.step == SUB_STEPS
    assert_same_params(ref, (model, encoder))
    assert strip_time(read_metrics(run_dir)) == strip_time(read_metrics(ref_dir))


def test_sigkill_then_resume_is_exact(interrupted_runs, sub_reference):
    run_dir, rc, out, err = interrupted_runs["SIGKILL"]
    assert rc == -signal.SIGKILL, (out, err)
    saved = load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert 5 <= saved < SUB_STEPS and saved % 5 == 0
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
    _resume_and_compare(run_dir, sub_reference)


def test_sigterm_subprocess_saves_checkpoint_then_resume(interrupted_runs, sub_reference):
    run_dir, rc, out, err = interrupted_runs["SIGTERM"]
    assert rc == 2, (out, err)
    assert "FINISHED" not in out
    last = err.strip().splitlines()[-1]
    m = re.fullmatch(rf"training interrupted at step (\d+); checkpoint saved in {re.escape(str(run_dir))}; "
                     r"resume with --resume", last)
    assert m, err
    step = int(m.group(1))
    assert 5 <= step < SUB_STEPS
    assert load_checkpoint(run_dir / "checkpoint.pt")["step"] == step
    assert max(r["step"] for r in read_metrics(run_dir)) <= step
    _resume_and_compare(run_dir, sub_reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_real_signal_in_process_then_resume(tmp_path, sig):
    """The handler turns a signal delivered mid-step into a checkpoint after that step."""
    ref, _ = run_reference(tmp_path)
    x = make_data()
    model, encoder, obj = make_problem()

    def send(trainer, rec):
        if trainer.step == 13:
            os.kill(os.getpid(), sig)

    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    tr = Trainer(model, encoder, obj, make_noise_for(x), cfg(), tmp_path / "run", log=quiet)
    with pytest.raises(TrainingInterrupted, match=r"^training interrupted at step 13; checkpoint saved in"):
        tr.fit(x[:160], x[160:], callback=send)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 13
    model2, encoder2, obj2 = make_problem(init_seed=7)
    Trainer(model2, encoder2, obj2, make_noise_for(x), cfg(), tmp_path / "run", log=quiet).fit(
        x[:160], x[160:], resume=True)
    assert_same_params(ref, (model2, encoder2))


# -- stabilisation -----------------------------------------------------------------------
def test_bad_noise_exact_overflow_switches_to_proper_stabilisation_and_records_it(tmp_path):
    """A noise concentrated at the data mean makes the exact power-2 data side overflow at
    the first step.  The trainer rolls back once and switches to exp_mode linear: an
    automatic change that is logged, recorded as a ``stabilise`` event, and harmless (the
    linear mode is strictly proper with the same minimiser), after which training ends."""
    torch.manual_seed(0)
    model, encoder = make_model("linear_gaussian", 3, z_dim=2, normalised=False)
    model.double(), encoder.double()
    obj = make_objective("fvnce", rule="power", alpha=2.0, exp_mode="exact")
    x = make_data()
    bad_noise = Independent(Normal(x.mean(0), torch.full((3,), 1e-3, dtype=torch.float64)), 1)
    logs = []
    tr = Trainer(model, encoder, obj, bad_noise, cfg(steps=30, max_retries=3), tmp_path, log=logs.append)
    tr.fit(x)
    metrics = read_metrics(tmp_path)
    retries = [r for r in metrics if r.get("event") == "retry"]
    assert len(retries) == 1 and retries[0]["failed_step"] == 1
    assert "non-finite loss" in retries[0]["reason"] and "data-side" in retries[0]["reason"]
    changes = [r for r in metrics if r.get("event") == "stabilise"]
    assert changes == [{"step": 0, "event": "stabilise", "reason": "divergence at step 1",
                        "from": {"exp_mode": "exact", "tau": 20.0}, "to": {"exp_mode": "linear", "tau": 10.0},
                        "elapsed": changes[0]["elapsed"]}]
    assert obj.rule.exp_mode == "linear" and obj.rule.tau == 10.0
    assert any("stabilisation changed from exp_mode=exact tau=20 to exp_mode=linear tau=10" in m for m in logs)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert metrics[-1]["step"] == 30 or any(r.get("step") == 30 for r in metrics)


def test_divergence_retries_then_raises_with_the_schedule(tmp_path):
    """A loss that stays non-finite: three rollbacks (lr and clipping halved, tau halved
    while staying proper), then DivergenceError with a one-line message."""
    torch.manual_seed(0)
    model, encoder = make_model("linear_gaussian", 3, z_dim=2, normalised=False)
    model.double(), encoder.double()
    inner = make_objective("fvnce", rule="power", alpha=2.0, exp_mode="exact")
    obj = FaultyObjective(inner, {i: "nan" for i in range(1, 100)})
    logs = []
    tr = Trainer(model, encoder, obj, make_noise_for(make_data()), cfg(steps=30, max_retries=3), tmp_path,
                 log=logs.append)
    with pytest.raises(DivergenceError) as info:
        tr.fit(make_data())
    msg = str(info.value)
    assert isinstance(info.value, NonFiniteLossError) and "\n" not in msg
    assert msg.startswith("training diverged at step 1 after 3 retries: ")
    assert msg.endswith("the noise is probably too far from the data: try a noise closer to it "
                        "(e.g. --noise flow or kde) or exp_mode linear")
    metrics = read_metrics(tmp_path)
    events = [r for r in metrics if r.get("event") == "retry"]
    assert [e["retry"] for e in events] == [1, 2, 3]
    assert [e["lr"] for e in events] == [5e-3, 2.5e-3, 1.25e-3]
    assert [e["grad_clip"] for e in events] == [5.0, 2.5, 1.25]
    assert [(e["exp_mode"], e["tau"]) for e in events] == [("linear", 10.0), ("linear", 5.0), ("linear", 2.5)]
    changes = [(e["from"]["tau"], e["to"]["tau"]) for e in metrics if e.get("event") == "stabilise"]
    assert changes == [(20.0, 10.0), (10.0, 5.0), (5.0, 2.5)]
    assert sum("rolled back to step 0 (retry" in line for line in logs) == 3


class FaultyObjective:
    """Wraps an objective; on the listed calls returns a NaN loss ("nan") or a finite
    loss whose gradient is NaN ("grad")."""

    def __init__(self, inner, faults):
        self.inner, self.faults, self.calls = inner, dict(faults), 0
        self.uses_noise, self.uses_encoder = inner.uses_noise, inner.uses_encoder
        self.rule = inner.rule

    def __call__(self, model, encoder, x, noise=None, x_log_pn=None):
        if not torch.is_grad_enabled():  # validation passes are not training steps
            return self.inner(model, encoder, x, noise, x_log_pn=x_log_pn)
        self.calls += 1
        out = self.inner(model, encoder, x, noise, x_log_pn=x_log_pn)
        kind = self.faults.pop(self.calls, None)
        if kind == "nan":
            bad = out.data_terms.clone()
            bad[0] = float("nan")
            return ObjectiveOutput(bad.mean() + out.loss * 0, bad, out.noise_terms, out.diagnostics,
                                   {"injected data term": bad})
        if kind == "grad":
            return ObjectiveOutput(_NaNGrad.apply(out.loss), out.data_terms, out.noise_terms, out.diagnostics,
                                   out.parts)
        return out


class _NaNGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, t):
        return t.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


@pytest.mark.parametrize("kind, reason", [("nan", "non-finite loss"), ("grad", "non-finite gradient")])
def test_single_fault_rolls_back_and_recovers(tmp_path, kind, reason):
    model, encoder, inner = make_problem()
    obj = FaultyObjective(inner, {17: kind})  # call 17 = step 17 (checkpoints every 10)
    x = make_data()
    logs = []
    tr = Trainer(model, encoder, obj, make_noise_for(x), cfg(steps=40), tmp_path, log=logs.append)
    res = tr.fit(x[:160], x[160:])
    assert res.step == 40 and res.retries == 1
    assert all(torch.isfinite(p).all() for p in model.parameters())
    recs = read_metrics(tmp_path)
    (ev,) = [r for r in recs if r.get("event") == "retry"]
    assert ev["step"] == 10 and ev["failed_step"] == 17 and reason in ev["reason"]
    assert ev["lr"] == 5e-3 and ev["exp_mode"] == "linear" and ev["tau"] == 10.0
    # the metrics stay consistent: the rolled-back steps 11..16 appear once
    train_steps = [r["step"] for r in recs if "loss" in r]
    assert train_steps == sorted(set(train_steps))
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ck["retries"] == 1 and ck["lr"] == 5e-3 and ck["grad_clip"] == 5.0
    assert ck["rule"] == {"exp_mode": "linear", "tau": 10.0}
    assert any("rolled back to step 10" in line for line in logs)


def test_retry_state_survives_resume(tmp_path):
    """A run that retried and was then interrupted resumes with the tightened settings
    and ends exactly where the uninterrupted run ends."""
    x = make_data()

    def build():
        model, encoder, inner = make_problem()
        return model, encoder, FaultyObjective(inner, {7: "nan"})

    m1, e1, o1 = build()
    Trainer(m1, e1, o1, make_noise_for(x), cfg(), tmp_path / "ref", log=quiet).fit(x[:160], x[160:])

    m2, e2, o2 = build()

    def stop(trainer, rec):
        if trainer.step == 25:
            trainer.request_stop()

    with pytest.raises(TrainingInterrupted):
        Trainer(m2, e2, o2, make_noise_for(x), cfg(), tmp_path / "run", log=quiet).fit(x[:160], x[160:],
                                                                                          callback=stop)
    m3, e3, inner3 = make_problem(init_seed=3)  # no faults left to inject after the resume point
    res = Trainer(m3, e3, inner3, make_noise_for(x), cfg(), tmp_path / "run", log=quiet).fit(
        x[:160], x[160:], resume=True)
    assert res.retries == 1 and inner3.rule.exp_mode == "linear" and inner3.rule.tau == 10.0
    assert_same_params((m1, e1), (m3, e3))


def test_max_retries_zero_raises_at_first_failure(tmp_path):
    model, encoder, inner = make_problem()
    obj = FaultyObjective(inner, {3: "nan"})
    x = make_data()
    with pytest.raises(DivergenceError, match=r"^training diverged at step 3 after 0 retries: non-finite loss"
                                              r".*injected data term"):
        Trainer(model, encoder, obj, make_noise_for(x), cfg(max_retries=0), None, log=quiet).fit(x)


# -- small pieces ---------------------------------------------------------------------
def test_epochs_and_float32_data_without_run_dir():
    model, encoder, obj = make_problem()
    x = make_data(160).float()  # converted to the model's float64
    res = Trainer(model, encoder, obj, make_noise_for(x.double()), cfg(steps=None, epochs=2, batch_size=50),
                  None, log=quiet).fit(x)
    assert res.step == 8 and res.best_val is None and res.run_dir is None
    assert [h["step"] for h in res.history] == [1, 5, 8]


def test_truncate_metrics_drops_later_and_cut_lines(tmp_path):
    from fvnce.train import _truncate_metrics

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 2.0}\n{"step": 5, "val_loss": 1.0}\n{"step": 6, "loss": 1.5}\n{"step": 7, "lo')
    kept = _truncate_metrics(p, 5)
    assert kept == [{"step": 1, "loss": 2.0}, {"step": 5, "val_loss": 1.0}]
    assert [json.loads(line) for line in p.read_text().splitlines()] == kept
