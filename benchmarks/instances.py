"""Instances study: how the scoring rules of fvnce differ in behaviour.

For each data set, seed and noise: a base VAE is trained with the ELBO; every fvnce
run starts from it as an energy-tilted VAE (tilt 0, the VAE's weights: the set-up
``fvnce poc`` uses) and trains for the same number of steps, once with exact
exponentials ("unstabilised") and once with the linearised exponential
(``exp_mode="linear", tau=10``, "stabilised").  Rules: kl; power alpha 1.25, 1.5, 2;
shifted_log c 0.5, 2.  Comparators where they apply: ``iwae`` (k=8, continuing the
normalised VAE), ``vnce`` (tilted VAE, same noise), the base VAE itself (``elbo``);
``nce`` does not apply (the tilted VAE has no closed-form marginal; nce would need a
different model, so it is left out rather than compared on a different model).

Per run: test log-likelihood of the normal test rows (IWAE-32 estimate of log p~ minus
an importance-sampled log Z), one-class anomaly AUROC on the test rows (score -log p~),
whether training diverged (DivergenceError, or rollbacks were needed), wall time, and
the log Z estimate with the effective sample size of *each* proposal tried
(the noise, and the model's own base VAE) -- evaluation uses the one with the larger
ESS fraction and records which.

Data: digits (8x8, binarised at 8/16; normal = digits 0-4, anomalies = 5-9, so the
training set has about 630 rows rather than the 125 of a one-digit class) and binarised
Fashion-MNIST one-class (normal = class 0 "T-shirt/top"), subsampled (``--fashion-rows``).
Default: digits with the full grid (6 rules x 4 noises x 3 seeds x 2 stabilisations);
Fashion-MNIST with a reduced grid (see ``--fashion-rules``/``--fashion-noises``/
``--fashion-seeds``).  ``--quick``: digits only, 2 rules x 2 noises x 1 seed, short runs.
"""

from __future__ import annotations

import copy
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

RULES = {"kl": {"rule": "kl"}, "power1.25": {"rule": "power", "alpha": 1.25},
         "power1.5": {"rule": "power", "alpha": 1.5}, "power2": {"rule": "power", "alpha": 2.0},
         "shifted_log0.5": {"rule": "shifted_log", "c": 0.5}, "shifted_log2": {"rule": "shifted_log", "c": 2.0}}
NOISES = ["marginals", "diag_gaussian", "gmm", "kde"]
RELIABLE_ESS = 0.01  # the report's threshold for a trustworthy log Z estimate


def digits_spec(tmp: Path):
    import numpy as np
    from sklearn.datasets import load_digits

    from fvnce.data import DataSpec
    d = load_digits()
    x = (d.data > 7).astype(np.int64)
    lines = [",".join([f"p{i}" for i in range(64)] + ["group"])]
    for row, t in zip(x, d.target):
        lines.append(",".join(map(str, row)) + ("," + ("low" if t < 5 else "high")))
    path = tmp / "digits_binary.csv"
    path.write_text("\n".join(lines) + "\n")
    return DataSpec(source=str(path), label="group", normal="low", binarize=True, transform="none")


def main(argv=None) -> dict:
    p = C.parser("instances", __doc__)
    p.add_argument("--datasets", default=None, help="comma list: digits,fashion-mnist")
    p.add_argument("--seeds", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="fvnce steps per run")
    p.add_argument("--base-steps", type=int, default=None)
    p.add_argument("--rules", default=None, help="digits: comma list of rules (default: all of RULES)")
    p.add_argument("--noises", default=None, help="digits: comma list of noises (default: all of NOISES)")
    p.add_argument("--rbm-hidden", type=int, default=10,
                   help="digits: hidden units of the RBM block where nce applies (0: no RBM block)")
    p.add_argument("--rbm-steps", type=int, default=None)
    p.add_argument("--rbm-only", action="store_true", help="digits: run the RBM block only")
    p.add_argument("--aggregate", nargs="+", type=Path, default=None, metavar="JSON",
                   help="train nothing: pool the runs of earlier result files and tabulate them")
    p.add_argument("--fashion-rows", type=int, default=8000)
    p.add_argument("--fashion-rules", default="kl,power1.5,power2,shifted_log0.5")
    p.add_argument("--fashion-noises", default=",".join(NOISES))
    p.add_argument("--fashion-seeds", type=int, default=1)
    p.add_argument("--logz-n", type=int, default=None)
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    import numpy as np
    import torch

    import fvnce
    from fvnce.data import DataSpec, load_dataset
    from fvnce.errors import FvnceError
    from fvnce.evaluate import anomaly_metrics, anomaly_scores, estimate_log_partition, log_likelihood
    from fvnce.models import EnergyTiltedVAE

    quick = args.quick
    datasets = (args.datasets or ("digits" if quick else "digits,fashion-mnist")).split(",")
    steps = args.steps or (100 if quick else 400)
    base_steps = args.base_steps or (300 if quick else 2000)
    logz_n = args.logz_n or (2000 if quick else 10000)
    tmp = Path(tempfile.mkdtemp(prefix="fvnce_bench_"))
    runs, t_start = [], time.perf_counter()

    rbm_steps = args.rbm_steps or (200 if quick else 1000)

    def rule_options(rule, stab):
        """Objective options of an fvnce rule, exact ("unstabilised") or linearised at tau = 10."""
        return dict(RULES[rule], exp_mode="linear" if stab else "exact", tau=10.0)

    def fit_and_record(rec, model, enc, objective, noise, train, n_steps, lr, evaluate, runs):
        """Train, record status / rollbacks / wall time, evaluate a run that finished,
        append it to ``runs``, print one line and rewrite the partial JSON."""
        t0 = time.perf_counter()
        try:
            res = fvnce.Trainer(model, enc, objective, noise,
                                fvnce.TrainConfig(steps=n_steps, batch_size=128, lr=lr, seed=rec["seed"],
                                                  progress=False), log=C.quiet).fit(train)
            rec.update(status="ok", retries=res.retries, diverged=res.retries > 0)
        except FvnceError as exc:
            rec.update(status="diverged", diverged=True, error=str(exc)[:200])
        rec["wall_s"] = time.perf_counter() - t0
        if rec["status"] == "ok":
            rec.update(evaluate(model, enc, noise))
        runs.append(rec)
        print(f"  {rec['dataset']} s{rec['seed']} {rec['noise']:13s} {rec['objective']} {rec['rule']:14s} "
              f"stab={rec['stabilised']!s:5s} {rec['status']:8s} ll={rec.get('test_ll', float('nan')):9.3f} "
              f"auroc={rec.get('auroc', float('nan')):.3f} ess={rec.get('ess_fraction', float('nan')):.2g} "
              f"via {rec.get('logz_proposal')} {rec['wall_s']:.1f}s", flush=True)
        C.write_json(args.out.with_suffix(".partial.json"), {"runs": runs})

    def rbm_block(ds_name, seed, train, noises, rules, evaluate, runs):
        """Where nce applies: a Bernoulli RBM (closed-form p~(x), exact log Z by summing
        over 2^h hidden states), trained from the same random start with the logistic
        rule (classic NCE; VNCE with the exact posterior is the same) and with every
        admissible rule.  With q = the RBM's exact (factorised) posterior the fully
        variational bound is tight, so fvnce with a rule *is* the marginal loss of that
        rule: it is computed through the closed form (``nce`` with that rule), which
        gives the same values as summing over the 2^h states, 10-40x faster."""
        D = train.shape[1]
        for noise_name in noises:
            noise = fvnce.make_noise(noise_name, train, seed=seed)
            plan = [("logistic", False)] + [(r, s) for r in rules for s in (False, True)]
            for rule, stab in plan:
                torch.manual_seed(seed)
                model, _ = fvnce.make_model("rbm", D, h_dim=args.rbm_hidden)
                opts = {} if rule == "logistic" else rule_options(rule, stab)
                rec = {"dataset": ds_name + "-rbm", "seed": seed, "objective": "nce" if rule == "logistic" else "fvnce",
                       "rule": rule, "noise": noise_name, "stabilised": None if rule == "logistic" else stab}
                fit_and_record(rec, model, None, fvnce.make_objective("nce", **opts), noise, train, rbm_steps, 3e-3,
                               evaluate, runs)

    if args.aggregate:
        import json
        for path in args.aggregate:
            runs += json.loads(Path(path).read_text())["runs"]
        datasets = sorted({r["dataset"] for r in runs if not r["dataset"].endswith("-rbm")})

    for ds_name in ([] if args.aggregate else datasets):
        if ds_name == "digits":
            spec = digits_spec(tmp)
            rules = args.rules.split(",") if args.rules else (["kl", "power2"] if quick else list(RULES))
            noises = args.noises.split(",") if args.noises else (["marginals", "gmm"] if quick else NOISES)
            seeds = args.seeds or (1 if quick else 3)
            z_dim, hidden = 8, (64, 128)
        else:
            spec = DataSpec(source="fashion-mnist", normal="0", max_rows=args.fashion_rows, seed=0)
            rules = args.fashion_rules.split(",")
            noises = args.fashion_noises.split(",")
            seeds = args.fashion_seeds
            z_dim, hidden = 16, (128, 256)
        ds = load_dataset(spec)
        train, test, lab = ds.train, ds.test, ds.test_labels
        test_normal = test[lab == 0]
        D = train.shape[1]
        print(f"{ds_name}: train {tuple(train.shape)}, test {tuple(test.shape)} ({int(lab.sum())} anomalies)", flush=True)

        def evaluate(model, enc, noise):
            torch.manual_seed(99)
            rec = {}
            try:
                if model.normalised:
                    lz = None
                    rec.update(logz_proposal="exact (normalised)", logz=0.0, ess_fraction=1.0)
                else:
                    lz = estimate_log_partition(model, enc, noise=noise, n=logz_n)
                    rec.update(logz_proposal=lz.proposal, logz=lz.log_z, ess_fraction=lz.ess_fraction,
                               ess=lz.ess, ess_by_proposal={k: v["ess_fraction"] for k, v in lz.candidates.items()},
                               logz_by_proposal={k: v["log_z"] for k, v in lz.candidates.items()})
                ll = log_likelihood(model, enc, test_normal, k=32, log_z=lz)
                rec["test_ll"] = float(ll.mean())
                sc = anomaly_scores(model, enc, test, k=32)
                rec["auroc"] = float(anomaly_metrics(sc, lab)["auroc"])
            except (FvnceError, RuntimeError, ValueError) as exc:
                rec["eval_error"] = str(exc)[:200]
            return rec

        for seed in range(seeds):
            torch.manual_seed(seed)
            vae, venc = fvnce.make_model("vae", D, z_dim=z_dim, hidden=hidden)
            if args.rbm_only and ds_name == "digits":
                rbm_block(ds_name, seed, train, noises, rules, evaluate, runs)
                continue
            t0 = time.perf_counter()
            fvnce.Trainer(vae, venc, fvnce.make_objective("elbo"), None,
                          fvnce.TrainConfig(steps=base_steps, batch_size=128, lr=1e-3, seed=seed, progress=False),
                          log=C.quiet).fit(train)
            base_time = time.perf_counter() - t0
            rec = {"dataset": ds_name, "seed": seed, "objective": "elbo", "rule": "-", "noise": "-",
                   "stabilised": None, "status": "ok", "diverged": False, "wall_s": base_time}
            rec.update(evaluate(vae, venc, None))
            runs.append(rec)
            # iwae continuing the VAE
            m, e = copy.deepcopy(vae), copy.deepcopy(venc)
            t0 = time.perf_counter()
            fvnce.Trainer(m, e, fvnce.make_objective("iwae", k=8), None,
                          fvnce.TrainConfig(steps=steps, batch_size=128, lr=1e-3, seed=seed, progress=False),
                          log=C.quiet).fit(train)
            rec = {"dataset": ds_name, "seed": seed, "objective": "iwae", "rule": "k=8", "noise": "-",
                   "stabilised": None, "status": "ok", "diverged": False, "wall_s": time.perf_counter() - t0}
            rec.update(evaluate(m, e, None))
            runs.append(rec)
            for noise_name in noises:
                noise = fvnce.make_noise(noise_name, train, seed=seed)
                plan = [("fvnce", r, stab) for r in rules for stab in (False, True)]
                plan += [("vnce", "logistic", True)]
                for obj_name, rule, stab in plan:
                    opts = rule_options(rule, stab) if obj_name == "fvnce" else {}
                    model = EnergyTiltedVAE.from_vae(vae, D)
                    enc = copy.deepcopy(venc)
                    rec = {"dataset": ds_name, "seed": seed, "objective": obj_name, "rule": rule, "noise": noise_name,
                           "stabilised": stab}
                    fit_and_record(rec, model, enc, fvnce.make_objective(obj_name, **opts), noise, train, steps, 1e-3,
                                   evaluate, runs)
            if ds_name == "digits" and args.rbm_hidden > 0:
                rbm_block(ds_name, seed, train, noises, rules, evaluate, runs)

    # ------------------------------------------------------------------ aggregate
    def med(v):
        v = [x for x in v if x is not None and np.isfinite(x)]
        return float(np.median(v)) if v else None

    # a log Z estimate resting on under 1% effective samples is not a number to compare
    for r in runs:
        ok = r.get("test_ll") is not None and (r.get("ess_fraction") or 0) >= RELIABLE_ESS
        r["test_ll_reliable"] = r.get("test_ll") if ok else None

    groups: dict[tuple, list] = {}
    for r in runs:
        key = (r["dataset"], r["objective"], r["rule"], r["noise"], r["stabilised"])
        groups.setdefault(key, []).append(r)
    agg = []
    for (dsn, obj, rule, noise, stab), rs in groups.items():
        agg.append({"dataset": dsn, "objective": obj, "rule": rule, "noise": noise,
                    "stab": {None: "-", True: "yes", False: "no"}[stab], "runs": len(rs),
                    "diverged": sum(bool(r.get("diverged")) for r in rs) / len(rs),
                    "test_ll": med([r.get("test_ll_reliable") for r in rs]),
                    "ll_unreliable": sum(r.get("test_ll") is not None and r["test_ll_reliable"] is None for r in rs),
                    "auroc": med([r.get("auroc") for r in rs]),
                    "auroc_min": min((r["auroc"] for r in rs if r.get("auroc") is not None), default=None),
                    "auroc_max": max((r["auroc"] for r in rs if r.get("auroc") is not None), default=None),
                    "ess_frac": med([r.get("ess_fraction") for r in rs]),
                    "ess_noise": med([(r.get("ess_by_proposal") or {}).get("noise") for r in rs]),
                    "ess_base": med([(r.get("ess_by_proposal") or {}).get("model_proposal") for r in rs]),
                    "proposal": ",".join(sorted({str(r.get("logz_proposal")) for r in rs})),
                    "wall_s": med([r.get("wall_s") for r in rs])})
    cols = ["dataset", "objective", "rule", "noise", "stab", "runs", "diverged", "test_ll", "ll_unreliable", "auroc",
            "auroc_min", "auroc_max", "ess_frac",
            "ess_noise", "ess_base", "proposal", "wall_s"]
    C.table(agg, cols, "instances (medians over seeds)")
    # per rule, pooled over noises: divergence share without / with stabilisation
    by_rule = []
    for dsn in sorted({r["dataset"] for r in runs}):
        for rule in RULES:
            for stab in (False, True):
                rs = [r for r in runs if r["dataset"] == dsn and r["objective"] == "fvnce" and r["rule"] == rule
                      and r["stabilised"] == stab]
                if rs:
                    by_rule.append({"dataset": dsn, "rule": rule, "stab": "yes" if stab else "no", "runs": len(rs),
                                    "diverged": sum(bool(r.get("diverged")) for r in rs) / len(rs),
                                    "test_ll": med([r.get("test_ll_reliable") for r in rs]),
                                    "ll_unreliable": sum(r.get("test_ll") is not None and r["test_ll_reliable"] is None
                                                         for r in rs),
                                    "auroc": med([r.get("auroc") for r in rs])})
    C.table(by_rule, ["dataset", "rule", "stab", "runs", "diverged", "test_ll", "ll_unreliable", "auroc"],
            "per rule, pooled over noises (test_ll: median over runs whose log Z had ESS fraction >= 0.01)")
    plot = None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
        for ax, dsn in zip(axes[0], datasets):
            for i, rule in enumerate(RULES):
                rs = [r for r in runs if r["dataset"] == dsn and r["objective"] == "fvnce" and r["rule"] == rule
                      and r["stabilised"] and r.get("test_ll_reliable") is not None]
                ax.scatter([r["test_ll_reliable"] for r in rs], [r["auroc"] for r in rs], label=rule, s=18, alpha=0.8)
            for obj in ("elbo", "iwae", "vnce"):
                rs = [r for r in runs if r["dataset"] == dsn and r["objective"] == obj
                      and r.get("test_ll_reliable") is not None]
                ax.scatter([r["test_ll_reliable"] for r in rs], [r["auroc"] for r in rs], marker="x", label=obj)
            ax.set_xlabel("test log-likelihood (nats; runs with log Z ESS fraction >= 0.01)")
            ax.set_ylabel("one-class AUROC")
            ax.set_title(dsn)
            ax.legend(fontsize=7)
        plot = args.out.with_suffix(".png")
        plot.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(plot, dpi=90)
    except Exception as exc:  # plotting is a convenience
        print(f"no plot: {exc}")
    payload = {"benchmark": "instances", "machine": C.machine(args.threads), "quick": quick,
               "config": {"datasets": datasets, "steps": steps, "base_steps": base_steps, "logz_n": logz_n,
                          "fashion_rows": args.fashion_rows, "fashion_rules": args.fashion_rules,
                          "fashion_noises": args.fashion_noises, "fashion_seeds": args.fashion_seeds,
                          "digits_seeds": args.seeds or (1 if quick else 3),
                          "aggregated_from": [str(p) for p in args.aggregate or []]},
               "load_end": C.load(), "wall_s": time.perf_counter() - t_start,
               "aggregate": agg, "by_rule": by_rule, "runs": runs, "plot": str(plot) if plot else None}
    C.write_json(args.out, payload)
    return payload


if __name__ == "__main__":
    main()
