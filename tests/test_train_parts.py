"""The parts of fvnce.train on their own: each is usable without the Trainer, and
imports run one way (loop -> parts)."""

from __future__ import annotations

import ast
import math
import signal
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import fvnce.train as T
from fvnce.models import make_model
from fvnce.objectives import make_objective
from fvnce.train import batches, guard, interrupt, metrics, optim, parallel, precision, rng, state, step, validation

PKG = Path(T.__file__).parent


def test_no_part_imports_the_loop_and_parts_form_no_cycle():
    deps = {}
    for f in PKG.glob("*.py"):
        mods = set()
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                mods |= {node.module} if node.module else {a.name for a in node.names}
        deps[f.stem] = mods & {p.stem for p in PKG.glob("*.py")}
    assert "loop" not in set().union(*(d for name, d in deps.items() if name not in ("loop", "__init__")))

    def visit(name, path):
        assert name not in path, f"import cycle: {' -> '.join(path + [name])}"
        for d in deps.get(name, ()):
            visit(d, path + [name])
    visit("__init__", [])


def test_no_module_of_the_package_is_long():
    for f in PKG.glob("*.py"):
        assert len(f.read_text().splitlines()) <= 340, f.name


def test_the_names_of_the_single_module_are_still_importable():
    for name in ("Trainer", "TrainConfig", "TrainResult", "DivergenceError", "TrainingInterrupted", "train",
                 "CHECKPOINT_NAME", "BEST_NAME", "METRICS_NAME", "MIN_TAIL_WEIGHTS", "STABILISED_EXPLODE_FACTOR",
                 "DEFAULT_STEPS", "PRECISIONS", "steps_per_epoch", "_truncate_metrics", "save_checkpoint"):
        assert hasattr(T, name), name


# -- batches --------------------------------------------------------------------------
def test_batch_order_is_an_epoch_permutation_regenerated_from_the_seed():
    a, b = batches.BatchOrder(3, 7), batches.BatchOrder(3, 7)
    idx = torch.cat([a.index(s, 50) for s in range(8)])
    assert sorted(idx.tolist()) == list(range(50))
    assert torch.equal(b.index(9, 50), a.index(9, 50))
    assert not torch.equal(batches.BatchOrder(4, 7).index(0, 50), a.index(0, 50))


def test_prepare_data_checks_and_casts():
    x = batches.prepare_data(torch.ones(3, 2, dtype=torch.float64), "training", torch.float32, torch.device("cpu"))
    assert x.dtype == torch.float32
    with pytest.raises(Exception, match="validation data must have shape"):
        batches.prepare_data(torch.ones(3), "validation", torch.float32, torch.device("cpu"))


# -- step ------------------------------------------------------------------------------
def _tiny(rule="kl", **kw):
    torch.manual_seed(0)
    model, enc = make_model("tilted_vae", 3, z_dim=2, hidden=(8,), tilt_hidden=(4,), likelihood="gaussian")
    obj = make_objective("fvnce", rule=rule, **kw)
    x = torch.randn(16, 3)
    noise = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(3), torch.ones(3)), 1)
    params = step.trainable_parameters(model, enc)
    opt = optim.make_optimizer(params, T.TrainConfig(lr=1e-2))

    def forward(xb, lp, scale):
        out = obj(model, enc, xb, noise, x_log_pn=lp)
        return out.loss, out
    return model, enc, obj, x, noise, params, opt, forward


def test_step_updates_parameters_and_refuses_a_failed_check_before_any_change():
    model, enc, obj, x, noise, params, opt, forward = _tiny()
    before = [p.detach().clone() for p in params]
    with pytest.raises(step.StepFailure, match="no thanks"):
        step.take_step(forward, x, None, 1.0, opt, params, 10.0, lambda out: "no thanks")
    assert all(torch.equal(a, p) for a, p in zip(before, params))
    out, norm = step.take_step(forward, x, None, 1.0, opt, params, 10.0, lambda out: None)
    assert torch.isfinite(norm) and not all(torch.equal(a, p) for a, p in zip(before, params))


def test_step_names_the_parameter_of_a_non_finite_gradient():
    model, enc, obj, x, noise, params, opt, forward = _tiny()
    bad = next(model.parameters())
    bad.register_hook(lambda g: torch.full_like(g, math.nan))
    with pytest.raises(step.StepFailure, match=r"non-finite gradient .* in model\."):
        step.take_step(forward, x, None, 1.0, opt, params, 10.0, lambda out: None,
                       named_modules=(("model", model), ("encoder", enc)))



@pytest.mark.parametrize("grad_clip", [None, 10.0, 1e-3, "at"])
def test_step_is_bit_for_bit_the_step_with_clip_grad_norm(grad_clip):
    """take_step reads the norm once and skips the rescaling where its factor is 1: the
    parameters and the norm are those of torch's clip_grad_norm_ followed by Adam, clipped
    or not (``"at"``: the clipping norm equal to the gradient norm, the boundary case)."""
    def run(ours: bool, clip):
        model, enc, obj, x, noise, params, opt, forward = _tiny()
        norms = []
        for i in range(3):
            torch.manual_seed(10 + i)
            if ours:
                norms.append(step.take_step(forward, x, None, 1.0, opt, params, clip, lambda out: None)[1])
            else:
                opt.zero_grad(set_to_none=True)
                forward(x, None, 1.0)[0].backward()
                norms.append(torch.nn.utils.clip_grad_norm_(params, math.inf if clip is None else clip))
                opt.step()
        return [p.detach().clone() for p in params], norms

    clip = grad_clip
    if grad_clip == "at":
        model, enc, obj, x, noise, params, opt, forward = _tiny()
        torch.manual_seed(10)
        forward(x, None, 1.0)[0].backward()
        clip = torch.nn.utils.get_total_norm([p.grad for p in params]).item()
    (p_ours, n_ours), (p_ref, n_ref) = run(True, clip), run(False, clip)
    assert all(torch.equal(a, b) for a, b in zip(p_ours, p_ref))
    assert all(torch.equal(a, b) for a, b in zip(n_ours, n_ref))


def test_step_names_only_the_parameters_whose_gradient_is_not_finite():
    model, enc, obj, x, noise, params, opt, forward = _tiny()
    name, bad = next(iter(model.named_parameters()))
    bad.register_hook(lambda g: torch.full_like(g, math.inf))
    before = [p.detach().clone() for p in params]
    with pytest.raises(step.StepFailure) as err:
        step.take_step(forward, x, None, 1.0, opt, params, 10.0, lambda out: None,
                       named_modules=(("model", model), ("encoder", enc)))
    assert str(err.value).endswith(f" in model.{name}")  # the clipping did not spread the inf to the others
    assert all(torch.equal(a, p) for a, p in zip(before, params))


def test_explosion_reads_the_objectives_lazy_diagnostics_and_the_largest_finite_log_weight():
    model, enc, obj, x, noise, params, opt, forward = _tiny(rule="power", alpha=1.5, exp_mode="exact")
    out = obj(model, enc, x, noise)
    lw = out.parts["noise-side log-ratio"]
    assert guard.explosion(out, obj, 60.0) is None
    with torch.no_grad():
        lw[0, 0], lw[0, 1], lw[0, 2] = math.nan, math.inf, 70.0
    msg = guard.explosion(out, obj, 60.0)
    assert msg == "exploding importance weights: max noise-side log-ratio = 70 exceeds explode_log_ratio = 60"
    small = float(out.diagnostics["noise_log_ratio"]) - 1.0  # the mean comes first, as before
    assert "noise_log_ratio" in guard.explosion(out, obj, small).split("=")[0]
    assert guard.explosion(out, obj, 75.0) is None  # inf and NaN do not count

# -- optim -----------------------------------------------------------------------------
def _adam_run(adam_cls, steps=25, state=None):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 1)).double()
    opt = adam_cls(net.parameters(), lr=1e-2, weight_decay=1e-3, foreach=True)
    if state is not None:
        opt.load_state_dict(state)
    x = torch.randn(64, 5, dtype=torch.float64)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        net(x).pow(2).mean().backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()], opt.state_dict()


def test_eager_adam_is_torch_adam_bit_for_bit_and_shares_its_state_dict():
    ours, our_state = _adam_run(optim.EagerAdam)
    theirs, their_state = _adam_run(torch.optim.Adam)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))
    assert str(our_state) == str(their_state)
    # a checkpoint of one resumes in the other: same parameters after 10 more steps
    # (the network restarts from the seed, so only the optimiser state carries over)
    a, _ = _adam_run(optim.EagerAdam, steps=10, state=their_state)
    b, _ = _adam_run(torch.optim.Adam, steps=10, state=our_state)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not all(torch.equal(u, v) for u, v in zip(a, _adam_run(torch.optim.Adam, steps=10)[0]))


def test_make_optimizer_keeps_torch_adam_when_compiling():
    p = [torch.nn.Parameter(torch.zeros(2))]
    assert type(optim.make_optimizer(p, T.TrainConfig(lr=1e-2))) is optim.EagerAdam
    assert type(optim.make_optimizer(p, T.TrainConfig(lr=1e-2, compile=True))) is torch.optim.Adam


def test_eager_adam_does_not_import_torch_dynamo():
    import subprocess
    import sys
    code = ("import sys, torch\n"
            "from fvnce.train.optim import EagerAdam\n"
            "p = torch.nn.Parameter(torch.ones(3))\n"
            "o = EagerAdam([p], lr=0.1)\n"
            "p.sum().backward(); o.step(); o.zero_grad(); o.load_state_dict(o.state_dict())\n"
            "assert p.detach().lt(1).all()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- guard -----------------------------------------------------------------------------
def test_guard_rolls_back_halves_lr_and_tightens_the_rule():
    model, enc, obj, x, noise, params, opt, forward = _tiny(rule="power", alpha=1.5, exp_mode="exact")
    cfg = T.TrainConfig(lr=1e-2, max_retries=1)
    g = guard.Guard(cfg, model, enc, opt, obj, torch.device("cpu"))
    g.snapshot(5)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    step.take_step(forward, x, None, 1.0, opt, params, g.grad_clip, g.check)
    done = g.rollback("boom", 6, elapsed=0.0)
    assert done.step == 5 and g.lr == 5e-3 and g.grad_clip == 5.0 and g.retries == 1
    assert all(torch.equal(start[k], v) for k, v in model.state_dict().items())
    assert [e["event"] for e in done.events] == ["retry", "stabilise"] and obj.rule.exp_mode == "linear"
    assert g.state()["rule"] == {"exp_mode": "linear", "tau": 10.0}
    with pytest.raises(T.DivergenceError, match="after 1 retry: again"):
        g.rollback("again", 6, elapsed=0.0)


def test_explosion_names_the_exploding_term():
    obj = make_objective("fvnce", rule="kl", exp_mode="exact")
    out = SimpleNamespace(diagnostics={"noise_log_ratio": 99.0}, parts={})
    assert "noise_log_ratio = 99 exceeds explode_log_ratio = 60" in guard.explosion(out, obj, 60.0)
    assert guard.explosion(out, obj, math.inf) is None
    assert guard.explosion(SimpleNamespace(diagnostics={"noise_log_ratio": 1.0}, parts={}), obj, 60.0) is None


# -- state, rng, metrics -----------------------------------------------------------------
def test_checkpoint_round_trip_and_refusal_of_another_run(tmp_path):
    model, enc, obj, x, noise, params, opt, forward = _tiny()
    cfg = T.TrainConfig(seed=1, batch_size=8)
    content = state.payload(step=3, model=model, encoder=enc, optimizer=opt, rng=rng.rng_state(torch.device("cpu")),
                            guard={"lr": 1e-3, "grad_clip": 1.0, "retries": 0, "rule": None}, config=cfg.to_dict(),
                            best_val=None, best_step=None, n_train=16, elapsed=0.5)
    state.write(tmp_path / "c.pt", content)
    ckpt = state.load_for_resume(tmp_path / "c.pt", cfg, 16, model, enc, opt)
    assert ckpt["step"] == 3 and ckpt["lr"] == 1e-3
    with pytest.raises(Exception, match="trained with seed=1"):
        state.load_for_resume(tmp_path / "c.pt", T.TrainConfig(seed=2, batch_size=8), 16, model, enc, opt)
    with pytest.raises(Exception, match="trained on 16 rows"):
        state.load_for_resume(tmp_path / "c.pt", cfg, 17, model, enc, opt)


def test_rng_state_round_trip():
    s = rng.rng_state(torch.device("cpu"))
    a = torch.rand(3)
    rng.set_rng_state(s)
    assert torch.equal(torch.rand(3), a)


def test_metrics_log_truncates_file_and_memory(tmp_path):
    log = metrics.MetricsLog(tmp_path / "m.jsonl")
    log.open(None)
    for s in range(1, 6):
        log.record({"step": s, "loss": float("nan") if s == 2 else 1.0})
    log.truncate(3)
    log.record({"step": 4, "event": "retry"})
    log.close()
    kept, _ = __import__("fvnce.fileio", fromlist=["read_jsonl"]).read_jsonl(tmp_path / "m.jsonl")
    assert [r["step"] for r in kept] == [1, 2, 3, 4] and kept[1]["loss"] is None
    assert [r["step"] for r in log.history] == [1, 2, 3, 4]


# -- validation ------------------------------------------------------------------------
def test_validator_keeps_the_best_and_warns_once_about_a_heavy_tail():
    saved, said = [], []
    v = validation.Validator(lambda s, loss: saved.append(s), said.append)
    heavy = torch.cat([torch.zeros(200), torch.linspace(0, 40, 50)])
    recs = v.record(2.0, 10, 0.0, heavy)
    assert recs[0]["best_val"] == 2.0 and saved == [10]
    assert [r.get("event") for r in recs[1:]] == ["warning"] and len(said) == 1
    recs = v.record(3.0, 20, 0.0, heavy)
    assert recs[0]["best_val"] == 2.0 and saved == [10] and len(recs) == 1  # warned once
    assert v.record(1.0, 30, 0.0, None)[0]["best_val"] == 1.0 and saved == [10, 30]


def test_mean_loss_uses_fixed_random_numbers_and_keeps_the_training_stream():
    model, enc, obj, x, noise, params, opt, forward = _tiny()
    torch.manual_seed(5)
    a, lr = validation.mean_loss(obj, model, enc, noise, x, None, 8, 0, torch.device("cpu"))
    after = torch.rand(1)
    torch.manual_seed(5)
    b, _ = validation.mean_loss(obj, model, enc, noise, x, None, 8, 0, torch.device("cpu"))
    assert a == b and torch.equal(torch.rand(1), after) and lr is not None and lr.numel() == 16


# -- parallel, precision, interrupt --------------------------------------------------------
def test_parallel_is_the_identity_in_one_process():
    p = parallel.Parallel(torch.device("cpu"))
    assert not p.active and p.is_main and p.agree(True) and not p.agree(False)
    idx = torch.arange(10)
    local, scale, rows = p.shard(idx)
    assert torch.equal(local, idx) and scale == 1.0 and rows == 10
    assert p.reduce_record({"loss": 1.0}, 10) == {"loss": 1.0}
    assert p.shard_mean(lambda x, lp: float(x.mean()), torch.arange(4.0)[:, None], None) == 1.5


def test_bf16_hooks_autocast_leaf_layers_and_come_off():
    lin = torch.nn.Sequential(torch.nn.Linear(3, 3))
    pr = precision.Precision("bf16", torch.device("cpu"), False, lambda m: None)
    seen = []
    lin[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))  # runs before the cast back
    pr.install([lin], torch.float32)
    assert lin(torch.ones(1, 3)).dtype == torch.float32 and seen == [torch.bfloat16]
    pr.remove()
    assert lin(torch.ones(1, 3)).dtype == torch.float32 and seen[-1] == torch.float32


def test_stop_flag_catches_sigterm_and_restores_the_handler():
    flag = interrupt.StopFlag()
    before = signal.getsignal(signal.SIGTERM)
    old = flag.install()
    signal.raise_signal(signal.SIGTERM)
    assert flag.asked() and flag.signal == signal.SIGTERM
    flag.restore(old)
    assert signal.getsignal(signal.SIGTERM) is before
    assert interrupt.StopFlag().asked(lambda f: True)  # another rank asked
