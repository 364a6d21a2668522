"""Step cost of fvnce against a minimal hand-written PyTorch VAE step.

Variants, all on the same binarised Fashion-MNIST batch, the same MLP architecture
(784-512-256-z encoder, z-256-512-784 Bernoulli decoder), Adam, the same thread
setting, interleaved in rounds in one process:

* ``vae``           hand-written VAE step (analytic KL, BCE with logits), the baseline;
* ``kl_norm``       fvnce ``kl`` on the normalised VAE (noise term skipped: expectation 1);
* ``kl_nu1``        fvnce ``kl`` on the energy-tilted (unnormalised) VAE, nu = 1, k = 1
  (the noise points go through the encoder without gradient: ``noise_encoder="auto"``);
* ``kl_nu1_grad``   the same with ``noise_encoder="grad"`` (encoder backward over the
  noise points too);
* ``kl_nu1_k8``     ``kl_nu1`` with k = 8 importance samples per point;
* ``power_nu1``     fvnce ``power`` alpha 1.5, nu = 1, k = 1, unnormalised;
* ``power_nu1_k8``  the same with k = 8;
* ``vae_bf16`` / ``kl_norm_bf16``: the same steps under ``torch.autocast(bfloat16)``
  (what ``--precision bf16`` will do), to show whether bfloat16 pays on this CPU.

fvnce steps are ``Trainer._step`` (objective, finiteness check, backward, gradient
clipping, Adam): what ``fvnce train`` runs per step.  Peak memory is the bytes of the
tensors saved for backward during the step (the activation memory, which is what
grows with the batch); FLOPs come from ``torch.utils.flop_counter``.  Also reported:
the torch matmul throughput (float32 and bfloat16) on the same machine, and the
achieved GFLOP/s of each step.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None) -> dict:
    p = C.parser("step_cost", __doc__)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--cpu-time", action="store_true",
                   help="time steps in thread CPU time instead of wall time (for a shared, busy machine)")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    import torch
    from torch import nn
    from torch.nn import functional as F

    import fvnce
    from fvnce.data import DataSpec, load_dataset

    batch = args.batch or (128 if args.quick else 512)
    rounds = args.rounds or (5 if args.quick else 15)
    z_dim, hidden = 32, (256, 512)
    torch.manual_seed(args.seed)
    ds = load_dataset(DataSpec(source="fashion-mnist", max_rows=4 * batch + 200, seed=args.seed))
    x = ds.train[:batch].contiguous()
    D = x.shape[1]
    noise = fvnce.make_noise("marginals", ds.train)

    # ---------------------------------------------------------------- baseline VAE
    class HandVAE(nn.Module):
        def __init__(self):
            super().__init__()
            s = [D, *reversed(hidden), 2 * z_dim]
            self.enc = nn.Sequential(nn.Linear(s[0], s[1]), nn.SiLU(), nn.Linear(s[1], s[2]), nn.SiLU(),
                                     nn.Linear(s[2], s[3]))
            t = [z_dim, *hidden, D]
            self.dec = nn.Sequential(nn.Linear(t[0], t[1]), nn.SiLU(), nn.Linear(t[1], t[2]), nn.SiLU(),
                                     nn.Linear(t[2], t[3]))

        def loss(self, x):
            mu, raw = self.enc(x).chunk(2, -1)
            sd = F.softplus(raw) + 1e-4
            z = mu + sd * torch.randn_like(sd)
            logits = self.dec(z)
            rec = F.binary_cross_entropy_with_logits(logits.float(), x, reduction="none").sum(-1)
            kl = 0.5 * (mu.float() ** 2 + sd.float() ** 2 - 1).sum(-1) - torch.log(sd.float()).sum(-1)
            return (rec + kl).mean()

    hand = HandVAE()
    hopt = torch.optim.Adam(hand.parameters(), lr=1e-3, foreach=True)

    def vae_step():
        hopt.zero_grad(set_to_none=True)
        hand.loss(x).backward()
        hopt.step()

    def vae_step_bf16():
        hopt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = hand.loss(x)
        loss.backward()
        hopt.step()

    # ---------------------------------------------------------------- fvnce variants
    def trainer(model_name, **obj):
        model, enc = fvnce.make_model(model_name, D, z_dim=z_dim, hidden=hidden)
        t = fvnce.Trainer(model, enc, fvnce.make_objective("fvnce", **obj), noise,
                          fvnce.TrainConfig(steps=1, batch_size=batch, progress=False), log=C.quiet)
        t._move()
        lpn = noise.log_prob(x).detach()
        return t, lpn

    setups = {
        "kl_norm": trainer("vae", rule="kl"),
        "kl_nu1": trainer("tilted_vae", rule="kl", nu=1, k=1),
        # the same with the encoder gradient kept on the noise points (before noise_encoder="auto")
        "kl_nu1_grad": trainer("tilted_vae", rule="kl", nu=1, k=1, noise_encoder="grad"),
        "kl_nu1_k8": trainer("tilted_vae", rule="kl", nu=1, k=8),
        "power_nu1": trainer("tilted_vae", rule="power", alpha=1.5, nu=1, k=1, exp_mode="linear", tau=10.0),
        "power_nu1_k8": trainer("tilted_vae", rule="power", alpha=1.5, nu=1, k=8, exp_mode="linear", tau=10.0),
    }
    assert setups["kl_norm"][0].objective.skips_noise(setups["kl_norm"][0].model)

    def fv(name, bf16=False):
        t, lpn = setups[name]

        def step():
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    t._step(x, lpn)
            else:
                t._step(x, lpn)
        return step

    variants = {"vae": vae_step}
    variants.update({n: fv(n) for n in setups})
    if not args.no_bf16:
        variants["vae_bf16"] = vae_step_bf16
        variants["kl_norm_bf16"] = fv("kl_norm", bf16=True)

    # ---------------------------------------------------------------- flops and memory
    from torch.utils.flop_counter import FlopCounterMode
    flops, mem = {}, {}
    for n, f in variants.items():
        fc = FlopCounterMode(display=False)
        with fc:
            f()
        flops[n] = fc.get_total_flops()
        seen: dict[int, int] = {}

        def pack(t):
            try:
                seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            except Exception:
                pass
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            f()
        mem[n] = sum(seen.values())

    # ---------------------------------------------------------------- matmul throughput
    def mm_gflops(dtype, n=1024, reps=None):
        a = torch.randn(n, n).to(dtype)
        b = torch.randn(n, n).to(dtype)
        torch.mm(a, b)
        reps = reps or (3 if args.quick else 10)
        ts = []
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.mm(a, b)
            ts.append(time.perf_counter() - t0)
        ts.sort()
        return 2 * n ** 3 / ts[len(ts) // 2] / 1e9

    load_before = C.load()
    mm = {"float32": mm_gflops(torch.float32), "bfloat16": mm_gflops(torch.bfloat16)}
    res = C.interleaved(variants, rounds=rounds, reps=1 if not args.quick else 1, warmup=2, threads=args.threads,
                        clock=time.thread_time if args.cpu_time else None)
    mm_after = {"float32": mm_gflops(torch.float32), "bfloat16": mm_gflops(torch.bfloat16)}
    s = C.summarise(res, baseline="vae")

    rows = []
    for n, v in s["variants"].items():
        rows.append({"variant": n, "median_ms": 1e3 * v["median_s"], "ratio_vs_vae": v["ratio_median"],
                     "ratio_lo": v["ratio_range"][0], "ratio_hi": v["ratio_range"][1],
                     "gflop_step": flops[n] / 1e9, "gflops_per_s": flops[n] / 1e9 / v["median_s"],
                     "saved_MiB": mem[n] / 2 ** 20})
    print(f"batch {batch}, threads {args.threads}, rounds {s['rounds']} ({s['clean_rounds']} clean), "
          f"{'thread CPU' if args.cpu_time else 'wall'} time, "
          f"load {s['load_min']:.2f}-{s['load_max']:.2f}")
    C.table(rows, ["variant", "median_ms", "ratio_vs_vae", "ratio_lo", "ratio_hi", "gflop_step", "gflops_per_s",
                   "saved_MiB"], "step cost")
    print(f"matmul 1024^2 GFLOP/s: float32 {mm['float32']:.1f}/{mm_after['float32']:.1f}, "
          f"bfloat16 {mm['bfloat16']:.1f}/{mm_after['bfloat16']:.1f} (before/after)")
    v = s["variants"]
    targets = {
        "kl_norm_le_1.05x_vae": {"ratio": v["kl_norm"]["ratio_median"], "met": v["kl_norm"]["ratio_median"] <= 1.05},
        "kl_nu1_le_2.1x_vae": {"ratio": v["kl_nu1"]["ratio_median"], "met": v["kl_nu1"]["ratio_median"] <= 2.1},
        "power_nu1_le_2.1x_vae": {"ratio": v["power_nu1"]["ratio_median"],
                                  "met": v["power_nu1"]["ratio_median"] <= 2.1},
    }
    print("targets:", {k: (round(t["ratio"], 3), t["met"]) for k, t in targets.items()})
    payload = {"benchmark": "step_cost", "machine": C.machine(args.threads), "quick": args.quick,
               "config": {"batch": batch, "z_dim": z_dim, "hidden": hidden, "data": "fashion-mnist binarised",
                          "rounds": rounds, "clock": "thread_time" if args.cpu_time else "perf_counter", "load_before": load_before, "load_after": C.load()},
               "summary": s, "raw": res, "rows": rows, "flops": flops, "saved_bytes": mem,
               "matmul_gflops": {"before": mm, "after": mm_after}, "targets": targets}
    C.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
