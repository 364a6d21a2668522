"""Epoch time and test ELBO of Pyro's SVI (Trace_ELBO) against fvnce ``elbo`` and
fvnce ``kl`` on the same VAE, data and batch.

The three variants train the *same* network classes (fvnce's ``VAE`` decoder and
``GaussianEncoder``, 784-512-256-32 MLP, Bernoulli likelihood) from the same initial
weights on binarised Fashion-MNIST, Adam lr 1e-3, batch 512.  Epochs are interleaved:
each round trains every variant for one epoch, in rotating order; the epoch time is
the median over rounds, the ratio the median of per-round ratios against Pyro.
fvnce variants run through ``Trainer.fit`` (one epoch per call, Adam state kept),
i.e. with the library's per-step checks and logging; ``fvnce_elbo_compile`` is the same
with ``TrainConfig(compile=True)`` (torch.compile of the networks; its first, compiling
epoch is run before the timed rounds and reported separately).  At the end every model is
scored on the same test rows with the same estimator: the ELBO (8 draws of z per
row, averaged) and the IWAE-64 log-likelihood bound.

Pyro is an optional dependency (``pip install pyro-ppl``, next to torch 2.13.0); the
script exits with a message (and writes a JSON saying so) when it is missing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main(argv=None) -> dict:
    p = C.parser("pyro_vae", __doc__)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--max-rows", type=int, default=None)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    try:
        import pyro
        import pyro.distributions as pdist
        from pyro.infer import SVI, Trace_ELBO
        from pyro.optim import Adam as PyroAdam
    except ImportError:
        msg = "pyro is not installed: pip install pyro-ppl (keeps torch 2.13.0); benchmark skipped"
        print(msg)
        payload = {"benchmark": "pyro_vae", "skipped": msg, "machine": C.machine(args.threads), "quick": args.quick}
        C.write_json(args.out, payload)
        return payload
    import copy

    import torch

    import fvnce
    from fvnce.data import DataSpec, load_dataset
    from fvnce.evaluate import log_likelihood
    from fvnce.objectives.base import log_weights

    epochs = args.epochs or (2 if args.quick else 5)
    max_rows = args.max_rows or (3000 if args.quick else 20000)
    z_dim, hidden, bs = 32, (256, 512), args.batch
    ds = load_dataset(DataSpec(source="fashion-mnist", max_rows=max_rows, seed=args.seed))
    train, test = ds.train, ds.test[:2000]
    D = train.shape[1]
    torch.manual_seed(args.seed)
    model0, enc0 = fvnce.make_model("vae", D, z_dim=z_dim, hidden=hidden)
    noise = fvnce.make_noise("marginals", train)

    # ------------------------------------------------------------------ pyro
    pyro.set_rng_seed(args.seed)
    pyro.clear_param_store()
    pm, pe = copy.deepcopy(model0), copy.deepcopy(enc0)

    def p_model(x):
        pyro.module("decoder", pm)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", pdist.Normal(x.new_zeros(x.shape[0], z_dim), 1.0).to_event(1))
            pyro.sample("obs", pdist.Bernoulli(logits=pm.decoder(z), validate_args=False).to_event(1), obs=x)

    def p_guide(x):
        pyro.module("encoder", pe)
        q = pe(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("latent", pdist.Normal(q.base_dist.loc, q.base_dist.scale).to_event(1))

    svi = SVI(p_model, p_guide, PyroAdam({"lr": 1e-3}), loss=Trace_ELBO())
    g = torch.Generator().manual_seed(args.seed)

    def pyro_epoch():
        for idx in torch.randperm(train.shape[0], generator=g).split(bs):
            if idx.numel() < bs:
                continue  # drop the last partial batch, as fvnce's Trainer does
            svi.step(train[idx])

    # ------------------------------------------------------------------ fvnce
    def fv_setup(objective, compile=False):
        m, e = copy.deepcopy(model0), copy.deepcopy(enc0)
        t = fvnce.Trainer(m, e, objective, noise, fvnce.TrainConfig(epochs=1, batch_size=bs, lr=1e-3,
                                                                    progress=False, grad_clip=None,
                                                                    compile=compile),
                          log=C.quiet)
        state = {"r": 0}

        def epoch():
            t.config.seed = 1000 + state["r"]
            state["r"] += 1
            t.fit(train)
        return t, epoch

    t_elbo, elbo_epoch = fv_setup(fvnce.make_objective("elbo"))
    t_kl, kl_epoch = fv_setup(fvnce.make_objective("fvnce", rule="kl"))
    variants = {"pyro_svi": pyro_epoch, "fvnce_elbo": elbo_epoch, "fvnce_kl": kl_epoch}
    trainers = {"fvnce_elbo": t_elbo, "fvnce_kl": t_kl}
    if not args.no_compile:  # torch.compile (inductor): compiled in a warm-up epoch, not timed
        t_comp, comp_epoch = fv_setup(fvnce.make_objective("elbo"), compile=True)
        start = {k: copy.deepcopy(v.state_dict()) for k, v in
                 (("m", t_comp.model), ("e", t_comp.encoder), ("o", t_comp.optimizer))}
        t0 = time.perf_counter()
        t_comp.fit(train)  # compiles; then back to the common starting point
        compile_s = time.perf_counter() - t0
        t_comp.model.load_state_dict(start["m"])
        t_comp.encoder.load_state_dict(start["e"])
        t_comp.optimizer.load_state_dict(start["o"])
        variants["fvnce_elbo_compile"], trainers["fvnce_elbo_compile"] = comp_epoch, t_comp
    res = C.interleaved(variants, rounds=epochs, warmup=0, threads=args.threads)
    s = C.summarise(res, baseline="pyro_svi", min_clean=2)

    @torch.no_grad()
    def test_elbo(m, e, draws=8):
        torch.manual_seed(123)
        vals = [log_weights(m, e, test, 0.0, k=draws).log_w.mean(0)]
        return float(torch.cat(vals).mean())

    scores = {}
    models = {"pyro_svi": (pm, pe), **{n: (t.model, t.encoder) for n, t in trainers.items()}}
    for name, (m, e) in models.items():
        torch.manual_seed(7)
        scores[name] = {"test_elbo": test_elbo(m, e),
                        "test_iwae64": float(log_likelihood(m, e, test, k=64).mean())}
    rows = []
    for n, v in s["variants"].items():
        rows.append({"variant": n, "epoch_s": v["median_s"], "ratio_vs_pyro": v["ratio_median"],
                     "speedup_vs_pyro": 1 / v["ratio_median"], **scores[n]})
    steps = train.shape[0] // bs
    print(f"train rows {train.shape[0]} ({steps} steps/epoch), batch {bs}, epochs {epochs}, threads {args.threads}, "
          f"rounds clean {s['clean_rounds']}/{s['rounds']}, load {s['load_min']:.2f}-{s['load_max']:.2f}")
    C.table(rows, ["variant", "epoch_s", "ratio_vs_pyro", "speedup_vs_pyro", "test_elbo", "test_iwae64"],
            "pyro vs fvnce")
    best = max(trainers, key=lambda n: 1 / s["variants"][n]["ratio_median"])
    sp = 1 / s["variants"][best]["ratio_median"]
    targets = {"ge_2x_faster_than_pyro_equal_elbo": {
        "variant": best, "speedup": sp,
        "elbo_diff": scores[best]["test_elbo"] - scores["pyro_svi"]["test_elbo"],
        "met": sp >= 2 and scores[best]["test_elbo"] >= scores["pyro_svi"]["test_elbo"] - 0.5}}
    print("target:", targets)
    payload = {"benchmark": "pyro_vae", "machine": C.machine(args.threads), "quick": args.quick,
               "config": {"max_rows": max_rows, "n_train": int(train.shape[0]), "n_test": int(test.shape[0]),
                          "batch": bs, "epochs": epochs, "z_dim": z_dim, "hidden": hidden,
                          "pyro": pyro.__version__,
                          "compile_warmup_epoch_s": None if args.no_compile else compile_s},
               "summary": s, "raw": res, "scores": scores, "rows": rows, "targets": targets}
    C.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
