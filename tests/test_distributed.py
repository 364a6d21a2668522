"""Multi-process training on torch.distributed (gloo, 2 CPU processes via torchrun):
a 2-process run in ``dist_noise="shard"`` mode ends at the single-process parameters,
resume is exact, rank 1 writes no file, ``fvnce train`` runs under torchrun, and
``fvnce poc --workers 2`` equals ``--workers 1``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fvnce import distributed as D

SCRIPT = r'''
import builtins, json, os, sys
import torch
torch.set_num_threads(1)
from fvnce import distributed as D

D.init_from_env("cpu")
rank = D.rank()
out = sys.argv[1]
from fvnce.models import make_model
from fvnce.objectives import make_objective
from fvnce.train import TrainConfig, Trainer, TrainingInterrupted
from torch.distributions import Independent, Normal

def data(n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64) + 0.3

def problem():
    torch.manual_seed(0)
    model, enc = make_model("gb_rbm", 3, h_dim=3)
    model.double(); enc.double()
    obj = make_objective("fvnce", rule="power", alpha=1.5, nu=2, exp_mode="linear", tau=10.0)
    x = data(200, 1)
    noise = Independent(Normal(x.mean(0), 1.5 * x.std(0)), 1)
    return model, enc, obj, noise, x, data(50, 2)

def cfg(**kw):
    base = dict(steps=30, batch_size=32, lr=1e-2, checkpoint_every=10, eval_every=10, log_every=5,
                progress=False, device="cpu", dist_noise="shard")
    base.update(kw)
    return TrainConfig(**base)

writes = []
if rank != 0:
    real_open = builtins.open
    def spy(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+") and str(file).startswith(out):
            writes.append(str(file))
        return real_open(file, mode, *a, **k)
    builtins.open = spy
    import fvnce.train as T
    real_save = T.save_checkpoint
    T.save_checkpoint = lambda path, payload: writes.append(str(path))

def params(m, e):
    d = {"model." + k: v for k, v in m.state_dict().items()}
    d.update({"encoder." + k: v for k, v in e.state_dict().items()})
    return d

# A: shard mode, uninterrupted
m, e, o, nz, x, v = problem()
Trainer(m, e, o, nz, cfg(), run_dir=f"{out}/A").fit(x, v)
pa = params(m, e)
# B: interrupted on rank 1 only at step 13, then resumed
m, e, o, nz, x, v = problem()
def cb(tr, rec):
    if tr.step == 13 and tr.rank == 1:
        tr.request_stop()
try:
    Trainer(m, e, o, nz, cfg(), run_dir=f"{out}/B").fit(x, v, callback=cb)
    stopped = None
except TrainingInterrupted as exc:
    stopped = exc.step
m, e, o, nz, x, v = problem()
Trainer(m, e, o, nz, cfg(), run_dir=f"{out}/B").fit(x, v, resume=True)
pb = params(m, e)
# C: rank mode
m, e, o, nz, x, v = problem()
Trainer(m, e, o, nz, cfg(dist_noise="rank", steps=20), run_dir=f"{out}/C").fit(x, v)
pc = params(m, e)

if rank != 0:
    builtins.open = real_open
torch.save({"A": pa, "B": pb, "C": pc, "stopped": stopped, "writes": writes}, f"{out}/rank{rank}.pt")
D.exit_process(0)
'''

TIMEOUT = 240


def _torchrun(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - a hung collective
        pytest.fail(f"torchrun timed out after {TIMEOUT} s: {exc.stderr}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _namespace():
    ns: dict = {}
    exec(SCRIPT.split("writes = []")[0].split("D.init_from_env")[0], ns)  # imports only
    body = SCRIPT.split("writes = []")[0].split("out = sys.argv[1]")[1]
    exec(body, ns)
    return ns


def test_shard_bounds_cover_the_batch_disjointly():
    for n in (1, 7, 8, 32, 33):
        for world in (1, 2, 3, 4):
            spans = [D.shard_bounds(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
            sizes = [b - a for a, b in spans]
            assert max(sizes) - min(sizes) <= 1


def test_rank_seeds_differ_and_rank0_keeps_the_seed():
    assert D.rank_seed(5, 0) == 5
    seeds = {D.rank_seed(5, r) for r in range(8)}
    assert len(seeds) == 8
    assert D.rank_seed(5, 1, step=10) != D.rank_seed(5, 1)


def test_sharded_noise_union_is_the_global_draw():
    base = torch.distributions.Normal(torch.zeros(2), torch.ones(2))
    torch.manual_seed(3)
    full = base.sample((12,))
    parts = []
    for r in range(3):
        noise = D.ShardedNoise(base)
        a, b = D.shard_bounds(6, r, 3)
        noise.set_shard(a, b - a, 6)
        torch.manual_seed(3)
        parts.append(noise.sample((2 * (b - a),)))
    assert torch.equal(torch.cat(parts), full)


def test_single_process_helpers_are_no_ops():
    assert not D.is_active() and D.rank() == 0 and D.world_size() == 1 and D.is_main()
    assert D.broadcast_object({"a": 1}) == {"a": 1}
    assert D.fit_on_main(lambda: 3, str, int) == 3


def test_two_processes_equal_one_process_and_resume_exactly(tmp_path):
    script = tmp_path / "dist_script.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    proc = _torchrun([str(script), str(out)], tmp_path)
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]

    ns = _namespace()
    from fvnce.train import Trainer

    m, e, o, nz, x, v = ns["problem"]()
    Trainer(m, e, o, nz, ns["cfg"](), run_dir=None).fit(x, v)
    ref = {"model." + k: t for k, t in m.state_dict().items()}
    ref.update({"encoder." + k: t for k, t in e.state_dict().items()})

    for res in ranks:
        assert set(res["A"]) == set(ref)
        for k in ref:  # 2-process (shard mode) run == single-process run, float64
            assert torch.allclose(res["A"][k], ref[k], rtol=0, atol=1e-9), k
            assert torch.equal(res["B"][k], res["A"][k]), k  # interrupted + resumed == uninterrupted
        assert res["stopped"] == 13  # rank 1's stop request stopped both ranks at the same step
    for k in ref:  # rank mode: DDP keeps the replicas identical
        assert torch.equal(ranks[0]["C"][k], ranks[1]["C"][k])
    assert ranks[1]["writes"] == []  # rank 1 wrote no file
    for run in ("A", "B", "C"):
        assert (out / run / "checkpoint.pt").exists() and (out / run / "metrics.jsonl").exists()
    ckpt = torch.load(out / "B" / "checkpoint.pt", weights_only=False)
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    steps = [json.loads(l)["step"] for l in (out / "B" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 30
    assert proc.stderr.count("calibrated the log-normaliser") == 3  # rank 0 only


def test_cli_train_under_torchrun(tmp_path):
    run = tmp_path / "run"
    proc = _torchrun(["-m", "fvnce", "train", "--data", "gaussians", "--max-rows", "300", "--steps", "12",
                      "--batch-size", "64", "--no-eval", "--out", str(run)], tmp_path)
    for name in ("config.json", "noise.pt", "preprocess.json", "checkpoint.pt", "metrics.jsonl"):
        assert (run / name).exists(), name
    assert proc.stderr.count("fvnce: trained 12 steps") == 1  # rank 0 talks, rank 1 is quiet
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 12 and ckpt["world_size"] == 2


@pytest.mark.slow
def test_poc_workers_equal_one_worker(tmp_path):
    out = {}
    for w in (1, 2):
        d = tmp_path / f"poc{w}"
        subprocess.run([sys.executable, "-m", "fvnce", "poc", "--data", "gaussians", "--max-rows", "300",
                        "--budget", "15", "--noises", "full_gaussian,gmm", "--rules", "kl", "--no-baselines",
                        "--quiet", "--workers", str(w), "--out", str(d)], check=True, timeout=400)
        out[w] = json.loads((d / "summary.json").read_text())
    assert [r["name"] for r in out[1]["runs"]] == [r["name"] for r in out[2]["runs"]]
    for a, b in zip(out[1]["runs"], out[2]["runs"]):
        assert a["status"] == b["status"] == "ok"
        assert a["metrics"] == b["metrics"] and a["val_metrics"] == b["val_metrics"]
