"""Training-step time of the same models on the CPU and on CUDA (fp32 and bf16).

Models: the MLP VAE 784-512-256-32 trained by ``elbo`` and its energy-tilted version
trained by ``fvnce`` with the KL and the power-1.5 rules (nu = 1, linear exponential),
batch 512 of synthetic binary 784-d data (no download), product-of-Bernoulli noise.
Each configuration runs ``warmup`` steps, then ``steps`` timed steps through
:class:`fvnce.train.Trainer` (CUDA synchronised at every step); the median and the
interquartile range of the step time are reported, as a table and as JSON.

    python benchmarks/gpu_step.py --quick          # < 1 min on a GPU machine
    python benchmarks/gpu_step.py                  # < 5 min on a GPU machine
    python benchmarks/gpu_step.py --json-out step_times.json

Without CUDA only the CPU rows are measured, and the output says that CUDA is absent.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import torch

from fvnce.models import make_model
from fvnce.objectives import make_objective
from fvnce.train import TrainConfig, Trainer

CASES = [
    ("vae/elbo", "vae", "elbo", {}),
    ("tilted_vae/fvnce-kl", "tilted_vae", "fvnce", {"rule": "kl", "exp_mode": "linear", "tau": 10.0}),
    ("tilted_vae/fvnce-power1.5", "tilted_vae", "fvnce",
     {"rule": "power", "alpha": 1.5, "exp_mode": "linear", "tau": 10.0}),
]


def _data(n: int, device: torch.device):
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(784, generator=g) * 0.8 + 0.1
    x = (torch.rand(n, 784, generator=g) < probs).float()
    noise = torch.distributions.Independent(torch.distributions.Bernoulli(probs=x.mean(0).clamp(0.05, 0.95)
                                                                           .to(device)), 1)
    return x, noise


def time_case(model_name: str, objective: str, options: dict, device: torch.device, precision: str,
              batch: int, warmup: int, steps: int) -> dict:
    torch.manual_seed(0)
    model, encoder = make_model(model_name, 784, z_dim=32, hidden=(256, 512), likelihood="bernoulli")
    obj = make_objective(objective, **options)
    x, noise = _data(8 * batch, device)
    marks: list[float] = []

    def tick(trainer, rec):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        marks.append(time.perf_counter())

    cfg = TrainConfig(steps=warmup + steps, batch_size=batch, lr=1e-4, progress=False, device=str(device),
                      precision=precision, log_every=10 ** 9, eval_every=10 ** 9, checkpoint_every=10 ** 9,
                      explode_log_ratio=float("inf"))
    trainer = Trainer(model, encoder if obj.uses_encoder else None, obj, noise, cfg, log=lambda m: None)
    trainer.fit(x, callback=tick)
    dt = [b - a for a, b in zip(marks[warmup - 1:], marks[warmup:])] if warmup else \
        [b - a for a, b in zip(marks, marks[1:])]
    q = statistics.quantiles(dt, n=4) if len(dt) >= 4 else [min(dt), statistics.median(dt), max(dt)]
    return {"median_ms": 1e3 * statistics.median(dt), "q1_ms": 1e3 * q[0], "q3_ms": 1e3 * q[2], "steps": len(dt)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (about a minute on a GPU machine)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--cpu-threads", type=int, default=None, help="torch threads on the CPU (default: torch's)")
    p.add_argument("--json-out", metavar="FILE")
    args = p.parse_args(argv)
    if args.cpu_threads:
        torch.set_num_threads(args.cpu_threads)
    cuda = torch.cuda.is_available()
    cpu_warm, cpu_steps = (2, 5) if args.quick else (3, 15)
    gpu_warm, gpu_steps = (10, 30) if args.quick else (20, 100)
    targets = [(torch.device("cpu"), "fp32", cpu_warm, cpu_steps)]
    if cuda:
        targets += [(torch.device("cuda"), "fp32", gpu_warm, gpu_steps)]
        if torch.cuda.is_bf16_supported():
            targets += [(torch.device("cuda"), "bf16", gpu_warm, gpu_steps)]
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads(),
           "cuda": torch.cuda.get_device_name(0) if cuda else None, "batch_size": args.batch_size}
    if not cuda:
        print("gpu_step: CUDA is absent on this machine: CPU rows only", file=sys.stderr)
    rows = []
    for name, model_name, objective, options in CASES:
        for device, precision, warm, steps in targets:
            r = time_case(model_name, objective, options, device, precision, args.batch_size, warm, steps)
            r.update(case=name, device=device.type, precision=precision)
            rows.append(r)
            print(f"  {name:28s} {device.type:5s} {precision:5s} {r['median_ms']:9.2f} ms/step", file=sys.stderr,
                  flush=True)
    cpu_ms = {r["case"]: r["median_ms"] for r in rows if r["device"] == "cpu"}
    for r in rows:
        r["speedup_vs_cpu"] = cpu_ms[r["case"]] / r["median_ms"]
    print(f"\n{'case':28s} {'device':6s} {'prec':5s} {'median ms':>10s} {'IQR ms':>16s} {'x CPU':>7s}")
    for r in rows:
        iqr = f"{r['q1_ms']:.2f}-{r['q3_ms']:.2f}"
        print(f"{r['case']:28s} {r['device']:6s} {r['precision']:5s} {r['median_ms']:10.2f} {iqr:>16s} "
              f"{r['speedup_vs_cpu']:7.1f}")
    if not cuda:
        print("(CUDA absent: no GPU rows)")
    result = {"env": env, "rows": rows}
    print(json.dumps(result))
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
