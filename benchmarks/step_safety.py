"""Per-step safety work of a training step, piece by piece.

On the batches and models of ``step_cost.py`` (batch 512, 784-D binarised Fashion-MNIST,
normalised ``kl`` and the energy-tilted VAE with ``kl`` and ``power`` at nu = 1), after
one real forward and backward pass, times in microseconds:

* ``now``: what ``fvnce.train.step.take_step`` does on a healthy step besides the
  forward pass, the backward pass and Adam -- the loss finiteness read, the explosion
  check (``Guard.check``, one read), the gradient norm (``get_total_norm``) and its one
  read, and the clipping decision (the rescaling pass runs only when the factor can be
  below 1) -- and the objective's diagnostics, which are built but not read;
* ``as_before``: the same protections as the step ran them before the diagnostics were
  computed on read -- every diagnostic computed and read by the objective (here: read all of them),
  ``bool(isfinite(loss))``, the explosion check with boolean indexing,
  ``clip_grad_norm_`` (which rescales every gradient, by exactly 1 when nothing is
  clipped) and ``bool(isfinite(norm))``;
* the whole ``Trainer._step``, for scale, and ``read_all``: what a logging step adds
  now by reading every diagnostic.

Timings are thread CPU time (``time.thread_time``), interleaved in rounds, medians:
on a shared machine wall time mostly measures the other processes.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None) -> dict:
    p = C.parser("step_safety", __doc__)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--reps", type=int, default=None, help="calls per piece per round")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    import dataclasses

    import torch

    import fvnce
    from fvnce.data import DataSpec, load_dataset
    from fvnce.objectives.base import Diagnostics

    batch = 128 if args.quick else 512
    rounds = args.rounds or (5 if args.quick else 15)
    reps = args.reps or (20 if args.quick else 100)
    torch.manual_seed(args.seed)
    ds = load_dataset(DataSpec(source="fashion-mnist", max_rows=4 * batch + 200, seed=args.seed))
    x = ds.train[:batch].contiguous()
    noise = fvnce.make_noise("marginals", ds.train)
    lpn = noise.log_prob(x).detach()
    setups = {"kl_norm": ("vae", {"rule": "kl"}),
              "kl_nu1": ("tilted_vae", {"rule": "kl", "nu": 1, "k": 1}),
              "power_nu1": ("tilted_vae", {"rule": "power", "alpha": 1.5, "nu": 1, "k": 1, "exp_mode": "linear",
                                           "tau": 10.0})}

    def old_explosion(out, limit):  # the check as it read its values before: one .item() each, boolean indexing
        vals = [out.diagnostics.get("noise_log_ratio")]
        for key, t in out.parts.items():
            if "noise" in key and "log-ratio" in key and t.numel():
                finite = t.detach()[torch.isfinite(t.detach())]
                if finite.numel():
                    vals.append(finite.max().item())
        return any(v is not None and math.isfinite(v) and v > limit for v in vals)

    pieces: dict[str, dict] = {}
    for name, (mname, kw) in setups.items():
        model, enc = fvnce.make_model(mname, x.shape[1], z_dim=32, hidden=(256, 512))
        obj = fvnce.make_objective("fvnce", **kw)
        t = fvnce.Trainer(model, enc, obj, noise, fvnce.TrainConfig(steps=1, batch_size=batch, progress=False),
                          log=C.quiet)
        t._move()
        params, clip, limit = t._params, t.guard.grad_clip, t.config.explode_log_ratio
        t.optimizer.zero_grad(set_to_none=True)
        out = obj(model, enc, x, noise, lpn)
        out.loss.backward()
        grads = [q.grad for q in params if q.grad is not None]
        raw = dict(out.diagnostics._raw)  # as built by the objective, nothing computed yet

        def fresh(out=out, raw=raw):  # the step's output with its diagnostics not yet computed
            return dataclasses.replace(out, diagnostics=Diagnostics(raw))

        def now(fresh=fresh, grads=grads, clip=clip, t=t, params=params):
            o = fresh()
            math.isfinite(o.loss.detach().item())
            t.guard.check(o)
            norm = torch.nn.utils.get_total_norm(grads)
            v = norm.item()
            if clip is not None and not v + 1e-6 < 0.98 * clip:
                torch.nn.utils.clip_grads_with_norm_(params, clip, norm)

        def as_before(fresh=fresh, clip=clip, params=params, limit=limit):
            o = fresh()
            with torch.no_grad():
                o.diagnostics = dict(o.diagnostics)  # every diagnostic computed and read, as each call did
            bool(torch.isfinite(o.loss))
            old_explosion(o, limit)
            norm = torch.nn.utils.clip_grad_norm_(params, math.inf if clip is None else clip)
            bool(torch.isfinite(norm))

        def read_all(fresh=fresh):
            dict(fresh().diagnostics)

        def whole(t=t):
            t._step(x, lpn)

        pieces[name] = {"now": now, "as_before": as_before, "read_all": read_all, "step": whole}

    times = {f"{n}.{k}": [] for n in pieces for k in pieces[n]}
    keys = list(times)
    for f in times:  # warm-up
        n, k = f.split(".")
        pieces[n][k]()
    loads = []
    for r in range(rounds):
        loads.append(C.load())
        for f in keys[r % len(keys):] + keys[:r % len(keys)]:
            n, k = f.split(".")
            fn, m = pieces[n][k], (1 if k == "step" else reps)
            t0 = time.thread_time()
            for _ in range(m):
                fn()
            times[f].append((time.thread_time() - t0) / m)
    med = {f: statistics.median(v) for f, v in times.items()}
    rows = []
    for n in pieces:
        step_us = 1e6 * med[f"{n}.step"]
        rows.append({"setup": n, "step_ms": step_us / 1e3, "safety_before_us": 1e6 * med[f"{n}.as_before"],
                     "safety_now_us": 1e6 * med[f"{n}.now"],
                     "before_pct_of_step": 100 * 1e6 * med[f"{n}.as_before"] / step_us,
                     "now_pct_of_step": 100 * 1e6 * med[f"{n}.now"] / step_us,
                     "logging_read_all_us": 1e6 * med[f"{n}.read_all"]})
    print(f"batch {batch}, threads {args.threads}, rounds {rounds} x {reps} calls, thread CPU time, "
          f"load {min(loads):.2f}-{max(loads):.2f}")
    C.table(rows, ["setup", "step_ms", "safety_before_us", "safety_now_us", "before_pct_of_step", "now_pct_of_step",
                   "logging_read_all_us"], "per-step safety work")
    payload = {"benchmark": "step_safety", "machine": C.machine(args.threads), "quick": args.quick,
               "config": {"batch": batch, "rounds": rounds, "reps": reps, "loads": loads},
               "rows": rows, "raw": times}
    C.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
