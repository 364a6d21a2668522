"""Golden runs: fixed-seed training runs whose final parameters, metrics and evaluation
are recorded in ``tests/golden/runs.json`` and must be reproduced bit for bit.

Recorded before the training loop was split into ``fvnce/train/`` (issue 12): the split,
and any later refactoring that claims "no behaviour change", must leave every value
identical.  Re-record only for a deliberate behaviour change, and say so in the commit:

    python tests/golden_runs.py --record

Floating-point results depend on the torch build and the CPU's vector instructions
(BLAS kernels), so the file stores that fingerprint; on another machine the test is
skipped with that reason rather than compared loosely.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "runs.json"
VOLATILE = {"elapsed", "wall_time_s", "fvnce_version"}

#: name -> (run settings, steps of a first part when the run is resumed)
RUNS = {
    "elbo": ({"objective": "elbo", "model": "vae", "model_options": {"z_dim": 4, "hidden": [32]},
              "data": {"source": "digits", "max_rows": 400, "normal": "0", "binarize": True}}, None),
    "fvnce_kl_noise": ({"objective": "fvnce", "objective_options": {"rule": "kl", "nu": 1, "k": 2,
                                                                    "exp_mode": "linear", "tau": 10.0},
                        "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16]},
                        "noise": "full_gaussian",
                        "data": {"source": "breast-cancer", "normal": "benign"}}, None),
    "fvnce_power_noise": ({"objective": "fvnce", "objective_options": {"rule": "power", "alpha": 1.5, "nu": 2,
                                                                       "exp_mode": "linear", "tau": 10.0},
                           "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16]},
                           "noise": "diag_gaussian", "data": {"source": "breast-cancer", "normal": "benign"}},
                          None),
    "rbm_nce": ({"objective": "nce", "objective_options": {"nu": 2}, "model": "rbm", "model_options": {"h_dim": 6},
                 "noise": "marginals",
                 "data": {"source": "digits", "max_rows": 400, "normal": "0", "binarize": True}}, None),
    "fvnce_kl_resumed": ({"objective": "fvnce", "objective_options": {"rule": "kl", "nu": 1,
                                                                      "exp_mode": "linear", "tau": 10.0},
                          "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16]},
                          "noise": "full_gaussian", "data": {"source": "breast-cancer", "normal": "benign"}}, 25),
    # exact exponentials, an unbounded tilt and a tight explosion limit: a rollback after a checkpoint, the
    # stabilisation tightened (retry and stabilise events, metrics truncated)
    "power_rollback": ({"objective": "fvnce", "objective_options": {"rule": "power", "alpha": 1.5, "nu": 2,
                                                                    "exp_mode": "exact"},
                        "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16], "tilt_bound": None},
                        "noise": "diag_gaussian", "data": {"source": "breast-cancer", "normal": "benign"},
                        "train": {"lr": 2e-2, "explode_log_ratio": 14.0, "max_retries": 5}}, None),
}
TRAIN = {"steps": 60, "batch_size": 32, "lr": 2e-3, "log_every": 10, "eval_every": 20, "checkpoint_every": 20,
         "progress": False, "device": "cpu", "seed": 3}


def fingerprint() -> dict:
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": np.__version__}


def _digest(obj) -> str:
    """sha256 of a tensor's bytes, or of a nested list's exact JSON."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h = hashlib.sha256(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.numpy().tobytes())
        return h.hexdigest()
    return hashlib.sha256(json.dumps(obj).encode()).hexdigest()


def _clean(obj):
    """Drop timings; long lists by digest."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list) and len(obj) > 16:
        return {"len": len(obj), "sha256": _digest(obj)}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def run_one(name: str) -> dict:
    from fvnce.checkpoint import load_checkpoint
    from fvnce.runs import RunConfig, evaluate_run, train_run
    from fvnce.train import TrainConfig

    settings, first = RUNS[name]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        d = {**settings, "eval_k": 8,
             "train": {**TRAIN, **settings.get("train", {}), "steps": first or TRAIN["steps"]}}
        train_run(RunConfig.from_dict(json.loads(json.dumps(d))), out)
        if first:
            more = RunConfig(train=TrainConfig(steps=TRAIN["steps"]))
            train_run(more, out, resume=True)
        ev = evaluate_run(out)
        ckpt = load_checkpoint(out / "checkpoint.pt")
        params = {f"{part}.{k}": _digest(v) for part in ("model", "encoder") for k, v in (ckpt[part] or {}).items()}
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        samples = np.load(out / "samples.npy") if (out / "samples.npy").exists() else None
        return {"params": params, "optimizer_step": int(ckpt["step"]), "lr": ckpt["lr"], "rule": ckpt["rule"],
                "metrics": _clean(metrics), "evaluation": _clean(ev),
                "samples": None if samples is None else _digest(torch.from_numpy(samples))}


def record() -> None:
    torch.set_num_threads(1)
    data = {"fingerprint": fingerprint(), "runs": {name: run_one(name) for name in RUNS}}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python tests/golden_runs.py --record")
    record()
