"""Data efficiency: does FVNCE gain more over its VAE with few training rows than with many?

Per data set, the poc's choice is made once: ``fvnce.poc.run_poc`` (the given budget, no
learning curve) on all training rows of the split of seed 0.  From it the benchmark takes

* the **FVNCE configuration**: the poc's recommendation when it is an FVNCE run of the VAE
  family (an energy-tilted VAE that starts from the VAE); otherwise the poc's criterion
  (highest validation AUROC among the ``ok`` runs with a reliable log-likelihood)
  restricted to those runs;
* the **one-component mixture** (``gaussian_mixture``, components 1, trained by an FVNCE
  rule): the best of the poc's ``-mix1`` runs by the same criterion;
* the **VAE** (``elbo-vae``, the run every tilted FVNCE run starts from).

Their saved configurations are then retrained, for every seed, on nested subsets of the
training rows (n = 50, 100, 200, 500, 1,000 and all, those below the training-set size):
the first n rows of one random order of the training rows of that seed's split; the
validation and test rows and the preprocessing (fitted on all training rows of the split)
are the same for every n.  At each n the FVNCE run starts from the VAE retrained on the
same n rows; every run trains the same number of steps (``--steps``, default: the poc's).
IsolationForest (scikit-learn defaults) is fitted on the same rows without dequantisation.
Seeds change the split, the subset order and the training seed.

Reported against n, mean and standard deviation over seeds: test AUROC, and the mean
test log-likelihood of the normal test rows where it is reliable (``fvnce.poc.ll_reliability``:
k-hat and ESS of the importance weights behind log Z; unreliable estimates are counted
and shown, never averaged in); the per-seed gain of FVNCE over the VAE (AUROC; and
log-likelihood where both are reliable).

    python benchmarks/data_efficiency.py                 # 5 sets, 3 seeds (see below)
    python benchmarks/data_efficiency.py --sets wilt --seeds 1
    python benchmarks/data_efficiency.py --quick         # breast-cancer, n=50 and all, 1 seed, short runs
    python benchmarks/data_efficiency.py --render a.json,b.json   # merge sets run in parallel

The full run took 49 minutes wall as two processes side by side (``--sets
digits,breast-cancer,shuttle`` and ``--sets cardiotocography,wilt``, merged with
``--render``) on a 2-core machine busy with other jobs; the quick run about a minute.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ADBENCH = Path(__file__).resolve().parents[2] / "shared" / "data" / "adbench"
SIZES = (50, 100, 200, 500, 1000)
METHODS = ("vae", "fvnce", "mixture1", "iforest")
#: data sets: DataSpec keywords (a path relative to --adbench-dir for the ADBench files)
SETS = {
    "digits": {"source": "digits", "normal": "0"},
    "breast-cancer": {"source": "breast-cancer"},
    "cardiotocography": {"source": "adbench:cardiotocography.csv", "label": "label", "normal": "normal"},
    "wilt": {"source": "adbench:wilt.csv", "label": "label", "normal": "normal"},
    # 49,097 rows: a random 10,000 of them (the anomaly share kept in expectation) keep the
    # evaluation of every run affordable; still ~6,500 normal training rows
    "shuttle": {"source": "adbench:shuttle.csv", "label": "label", "normal": "normal", "max_rows": 10000},
}


def data_spec(name: str, seed: int, adbench_dir: Path, **extra):
    from fvnce.data import DataSpec

    kw = dict(SETS[name])
    if kw["source"].startswith("adbench:"):
        kw["source"] = str(adbench_dir / kw["source"].split(":", 1)[1])
    return DataSpec(**kw, seed=seed, **extra)


# --------------------------------------------------------------------------- the choice


def _val_auroc(r: dict) -> float:
    v = (r.get("val_metrics") or {}).get("auroc")
    return -math.inf if v is None else float(v)


def _eligible(r: dict) -> bool:
    return r.get("status") == "ok" and bool(r.get("reliable"))


def choose(summary: dict) -> dict:
    """``{"fvnce": name, "mixture1": name, "vae": "elbo-vae", "poc_recommended": name}`` from
    a poc summary (see the module docstring); a name is None when no run qualifies."""
    runs = summary["runs"]
    rec = (summary.get("recommended") or {}).get("run")
    tilted = [r for r in runs if r.get("objective") == "fvnce" and "-mix" not in r["name"]]
    by_name = {r["name"]: r for r in runs}
    if rec in {r["name"] for r in tilted}:
        fv = rec
    else:
        ok = [r for r in tilted if _eligible(r)]
        fv = max(ok, key=_val_auroc)["name"] if ok else None
    mix = [r for r in runs if r["name"].endswith("-mix1")]
    ok = [r for r in mix if _eligible(r)] or [r for r in mix if r.get("status") in ("ok", "degraded", "unreliable")]
    return {"fvnce": fv, "mixture1": max(ok, key=_val_auroc)["name"] if ok else None,
            "vae": "elbo-vae" if "elbo-vae" in by_name else None, "poc_recommended": rec}


# --------------------------------------------------------------------------- one point


def nested(n_all: int, n: int, seed: int):
    """The first ``n`` of one random order of ``range(n_all)`` (seeded): nested in ``n``."""
    import numpy as np

    return np.sort(np.random.default_rng([seed, 7]).permutation(n_all)[:n])


def _subset(dataset, idx):
    return dataclasses.replace(dataset, train=dataset.train[idx], train_labels=None, notes=list(dataset.notes))


def train_eval(rc, sub, run_dir: Path) -> dict:
    """Train ``rc`` on ``sub`` into ``run_dir`` and evaluate it: test AUROC, the normal test
    rows' mean log-likelihood, its reliability, and the train time."""
    from fvnce.poc import ll_reliability
    from fvnce.runs import evaluate_run, train_run
    from fvnce.train import DivergenceError

    t0 = time.perf_counter()
    try:
        train_run(rc, run_dir, dataset=sub, progress=False)
        ev = evaluate_run(run_dir, dataset=sub, k=rc.eval_k)
    except DivergenceError as exc:
        return {"status": "diverged", "error": str(exc), "wall_s": time.perf_counter() - t0}
    keys = ("auroc", "log_likelihood", "log_likelihood_se", "log_likelihood_reliable")
    test = {k: ev.get(k) for k in keys}
    val = {k: (ev.get("val") or {}).get(k) for k in keys}
    reliable, _ = ll_reliability({"name": run_dir.name, "log_z": ev.get("log_z"), "metrics": test,
                                  "val_metrics": val})
    lz = ev.get("log_z") or {}
    return {"status": "ok", "auroc": test["auroc"], "val_auroc": val["auroc"],
            "log_likelihood": test["log_likelihood"], "log_likelihood_se": test["log_likelihood_se"],
            "reliable": bool(reliable), "khat": lz.get("khat"), "ess_fraction": lz.get("ess_fraction"),
            "wall_s": time.perf_counter() - t0}


def point(configs: dict, dataset, raw, idx, seed: int, steps: int, work: Path) -> dict:
    """Every method trained on the training rows ``idx`` of ``dataset`` (``raw``: the same
    split without dequantisation, for IsolationForest)."""
    from fvnce.evaluate import anomaly_metrics, isolation_forest_scores

    sub = _subset(dataset, idx)
    out: dict = {}
    vae_dir = work / "elbo-vae"
    for method in ("vae", "fvnce", "mixture1"):
        rc = configs.get(method)
        if rc is None:
            continue
        rc = copy.deepcopy(rc)
        rc.data = dataset.spec
        rc.train.seed = seed
        rc.train.steps, rc.train.epochs = steps, None
        rc.train.eval_every = max(1, min(rc.train.eval_every, steps // 8 or 1))
        rc.train.checkpoint_every = max(rc.train.checkpoint_every, steps // 4 or 1)
        rc.train.progress = False
        if rc.init_from:  # a tilted FVNCE run starts from the VAE trained on the same rows
            if out.get("vae", {}).get("status") != "ok":
                out[method] = {"status": "skipped", "error": "its VAE did not train"}
                continue
            rc.init_from = str(vae_dir)
        out[method] = train_eval(rc, sub, vae_dir if method == "vae" else work / method)
    t0 = time.perf_counter()
    scores = isolation_forest_scores(raw.train[idx].numpy(), raw.test.numpy(), seed=seed)
    out["iforest"] = {"status": "ok", "auroc": anomaly_metrics(scores, raw.test_labels.numpy())["auroc"],
                      "log_likelihood": None, "reliable": None, "wall_s": time.perf_counter() - t0}
    return out


# --------------------------------------------------------------------------- aggregation


def _mean_sd(vals: list[float]) -> tuple[float | None, float | None]:
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def aggregate(raw: dict) -> list[dict]:
    """One row per (set, n, method) from ``raw[set]["points"][seed][n][method]``: AUROC and
    reliable log-likelihood mean and sd over seeds; ``ll_unreliable`` counts the seeds whose
    estimate was unreliable (left out of the mean); ``gain_*`` (fvnce rows): the per-seed
    difference FVNCE - VAE (log-likelihood only where both are reliable)."""
    rows = []
    for name, rec in raw.items():
        per_seed = rec["points"]
        keys = sorted({k for pts in per_seed.values() for k in pts if k != "all"}, key=int)
        keys += ["all"] if any("all" in pts for pts in per_seed.values()) else []
        for key in keys:
            cells = [pts[key] for pts in per_seed.values() if key in pts]
            n_all = sorted({v["n_train"] for v in rec.get("split", {}).values()})
            n = int(key) if key != "all" else (n_all[0] if len(n_all) == 1 else round(statistics.mean(n_all)))
            for m in METHODS:
                res = [c[m] for c in cells if m in c]
                ok = [r for r in res if r.get("status") == "ok"]
                au = [r["auroc"] for r in ok if r.get("auroc") is not None]
                ll = [r["log_likelihood"] for r in ok if r.get("reliable") and r.get("log_likelihood") is not None]
                row = {"set": name, "n": n, "all": key == "all", "method": m, "seeds": len(res),
                       "failed": len(res) - len(ok)}
                row["auroc_mean"], row["auroc_sd"] = _mean_sd(au)
                if m != "iforest":
                    row["ll_mean"], row["ll_sd"] = _mean_sd(ll)
                    row["ll_reliable"] = len(ll)
                    row["ll_unreliable"] = sum(1 for r in ok if r.get("reliable") is False)
                if m == "fvnce":
                    ga = [c["fvnce"]["auroc"] - c["vae"]["auroc"] for c in cells
                          if all(c.get(k, {}).get("status") == "ok" for k in ("fvnce", "vae"))]
                    gl = [c["fvnce"]["log_likelihood"] - c["vae"]["log_likelihood"] for c in cells
                          if all(c.get(k, {}).get("status") == "ok" and c[k].get("reliable") for k in ("fvnce", "vae"))]
                    row["gain_auroc_mean"], row["gain_auroc_sd"] = _mean_sd(ga)
                    row["gain_ll_mean"], row["gain_ll_sd"] = _mean_sd(gl)
                    row["gain_ll_seeds"] = len(gl)
                rows.append(row)
    return rows


def _gains(cell: dict) -> dict:
    """FVNCE - VAE at one point of one seed: AUROC, and log-likelihood when both are reliable."""
    fv, vae = cell.get("fvnce", {}), cell.get("vae", {})
    if fv.get("status") != "ok" or vae.get("status") != "ok":
        return {}
    out = {"auroc": fv["auroc"] - vae["auroc"]}
    if fv.get("reliable") and vae.get("reliable"):
        out["ll"] = fv["log_likelihood"] - vae["log_likelihood"]
    return out


def claim(raw: dict) -> dict:
    """Per set: FVNCE's gain over its VAE at the smallest n and with all rows (means over
    seeds), and per seed the gain at the smallest n minus the gain with all rows (same split,
    same seed): mean and sd.  Positive: the gain was larger with few rows."""
    out = {}
    for name, rec in raw.items():
        d: dict = {}
        for key in ("auroc", "ll"):
            small, full, diff = [], [], []
            n_small = None
            for pts in rec["points"].values():
                sizes = sorted((int(k) for k in pts if k != "all"))
                if not sizes or "all" not in pts:
                    continue
                n_small = sizes[0]
                g0, g1 = _gains(pts[str(sizes[0])]).get(key), _gains(pts["all"]).get(key)
                small += [g0] if g0 is not None else []
                full += [g1] if g1 is not None else []
                if g0 is not None and g1 is not None:
                    diff.append(g0 - g1)
            d["n_small"] = n_small
            d[f"gain_{key}_small"], d[f"gain_{key}_small_sd"] = _mean_sd(small)
            d[f"gain_{key}_all"], d[f"gain_{key}_all_sd"] = _mean_sd(full)
            d[f"{key}_small_minus_all"], d[f"{key}_small_minus_all_sd"] = _mean_sd(diff)
            d[f"{key}_seeds"] = len(diff)
        out[name] = d
    return out


def _f(v, digits=3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _pm(m, s, digits=3) -> str:
    if m is None:
        return "-"
    return _f(m, digits) + ("" if s is None else f" ± {_f(s, digits)}")


def markdown(rows: list[dict]) -> str:
    """One markdown table: per set and n, each method's test AUROC and log-likelihood."""
    head = ("| set | n | VAE AUROC | FVNCE AUROC | mixture-1 AUROC | IForest AUROC | FVNCE - VAE AUROC "
            "| VAE log-lik | FVNCE log-lik | mixture-1 log-lik | FVNCE - VAE log-lik |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    keyed = {(r["set"], r["n"], r["method"]): r for r in rows}
    for name, n in dict.fromkeys((r["set"], r["n"]) for r in rows):
        g = {m: keyed.get((name, n, m), {}) for m in METHODS}

        def ll(r):
            if not r:
                return "-"
            s = _pm(r.get("ll_mean"), r.get("ll_sd"), 2)
            bad = r.get("ll_unreliable") or 0
            return s + (f" ({bad} unreliable)" if bad else "")

        fv = g["fvnce"]
        nn = f"{n} (all)" if fv.get("all") else str(n)
        lines.append(" | ".join(["", name, nn, *(_pm(g[m].get("auroc_mean"), g[m].get("auroc_sd")) for m in METHODS),
                                 _pm(fv.get("gain_auroc_mean"), fv.get("gain_auroc_sd")), ll(g["vae"]), ll(fv),
                                 ll(g["mixture1"]), _pm(fv.get("gain_ll_mean"), fv.get("gain_ll_sd"), 2), ""]).strip())
    text = "\n".join(lines)
    print(text, flush=True)
    return text


# --------------------------------------------------------------------------- main


def run_set(name: str, seeds: int, sizes: tuple[int, ...], budget, steps: int | None, rules, adbench_dir: Path,
            saved: Callable[[dict], None] = lambda rec: None) -> dict:
    """Choose the configurations on one poc, then train every method at every n and seed
    (``saved(rec)`` after each point: the caller writes what there is so far)."""
    from fvnce.data import DataSpec, load_dataset
    from fvnce.poc import PocConfig, run_poc
    from fvnce.runs import RunConfig
    from fvnce.train import TrainConfig

    work = Path(tempfile.mkdtemp(prefix=f"data-eff-{name}-"))
    try:
        t0 = time.perf_counter()
        cfg = PocConfig(data=data_spec(name, 0, adbench_dir), budget=budget, baselines=False, learning_curve=(),
                        train=TrainConfig(progress=False, seed=0))
        if rules:
            cfg.rules = list(rules)
        summary = run_poc(cfg, work / "poc", progress=False)
        picked = choose(summary)
        configs = {}
        for m in ("vae", "fvnce", "mixture1"):
            if picked[m] is not None:
                record = json.loads((work / "poc" / "runs" / picked[m] / "config.json").read_text())
                configs[m] = RunConfig.from_dict(record["run"])
        by_name = {r["name"]: r for r in summary["runs"]}
        steps = steps or summary["steps_per_run"]
        rec = {"poc": {"picked": picked, "steps_per_run": summary["steps_per_run"], "wall_s": time.perf_counter() - t0,
                       "n_train": summary["data"]["n_train"],
                       "runs": {n: {k: by_name[n].get(k) for k in ("status", "reliable")}
                                | {"val_auroc": by_name[n]["val_metrics"].get("auroc"),
                                   "test_auroc": by_name[n]["metrics"].get("auroc")} for n in by_name}},
               "configs": {m: {"objective": rc.objective, "model": rc.model, "noise": rc.noise,
                               "objective_options": rc.objective_options, "model_options": rc.model_options,
                               "init_from_vae": bool(rc.init_from)} for m, rc in configs.items()},
               "steps": steps, "points": {}}
        print(f"{name}: poc {rec['poc']['wall_s']:.0f} s, picked {picked}", flush=True)
        for seed in range(seeds):
            spec = data_spec(name, seed, adbench_dir)
            ds = load_dataset(spec)
            raw = load_dataset(DataSpec.from_dict({**spec.to_dict(), "dequantize": "none"}))
            assert len(raw.train) == len(ds.train) and len(raw.test) == len(ds.test)
            n_all = len(ds.train)
            rec["n_train"] = n_all
            rec.setdefault("split", {})[str(seed)] = {
                "n_train": n_all, "n_test": len(ds.test), "n_test_anomalies": int(ds.test_labels.sum())}
            pts = rec["points"].setdefault(str(seed), {})
            for n in [s for s in sizes if s < n_all] + [n_all]:
                t1 = time.perf_counter()
                res = point(configs, ds, raw, nested(n_all, n, seed), seed, steps, work / f"s{seed}" / f"n{n}")
                pts["all" if n == n_all else str(n)] = res
                print(f"{name} seed {seed} n {n}: " + ", ".join(
                    f"{m} auroc {_f(r.get('auroc'))} ll {_f(r.get('log_likelihood'), 2)}"
                    f"{'' if r.get('reliable') is not False else ' (unreliable)'}"
                    for m, r in res.items()) + f" [{time.perf_counter() - t1:.0f} s]", flush=True)
                shutil.rmtree(work / f"s{seed}" / f"n{n}", ignore_errors=True)
                saved(rec)
        rec["wall_s"] = time.perf_counter() - t0
        return rec
    finally:
        shutil.rmtree(work, ignore_errors=True)


def render(files: list[Path], out_path: Path) -> dict:
    """Merge the results of several JSON files of this script (e.g. sets run in parallel
    processes), print the table and write ``out_path``."""
    raw: dict = {}
    parts = []
    for f in files:
        try:
            d = json.loads(Path(f).read_text())
        except (OSError, ValueError) as exc:
            raise SystemExit(f"data_efficiency: error: cannot read {f}: {exc}") from None
        if d.get("benchmark") != "data_efficiency":
            raise SystemExit(f"data_efficiency: error: {f} is not a data_efficiency result")
        raw.update(d["raw"])
        parts.append({k: d.get(k) for k in ("machine", "budget", "seeds", "sizes", "skipped", "complete")}
                     | {"file": str(f)})
    rows = aggregate(raw)
    table = markdown(rows)
    out = {"benchmark": "data_efficiency", "machine": parts[0]["machine"], "parts": parts,
           "complete": all(q["complete"] for q in parts), "rows": rows, "claim": claim(raw), "table": table,
           "raw": raw}
    print(json.dumps(out["claim"], indent=1), flush=True)
    C.write_json(out_path, out)
    return out


def main(argv=None) -> dict:
    p = C.parser("data_efficiency", __doc__)
    p.add_argument("--sets", default=None, help="comma list of " + ",".join(SETS))
    p.add_argument("--seeds", type=int, default=None, help="repeats (default 3, quick 1)")
    p.add_argument("--sizes", default=None, help="training-set sizes below 'all' (default 50,100,200,500,1000; "
                                                  "quick 50)")
    p.add_argument("--budget", default=None, help="poc budget: quick, default, long or steps (default: the poc "
                                                   "default; quick: 60 steps)")
    p.add_argument("--steps", type=int, default=None, help="steps of every retrained run (default: the poc's)")
    p.add_argument("--rules", default=None, help="poc rules, e.g. kl,power:1.5 (default: the poc's)")
    p.add_argument("--adbench-dir", type=Path, default=ADBENCH)
    p.add_argument("--render", default=None,
                   help="comma list of JSON files this script wrote: merge their results, print the table and "
                        "write --out (no training)")
    args = p.parse_args(argv)
    if args.render:
        return render([Path(f) for f in args.render.split(",")], args.out)
    C.set_threads(args.threads)
    sets = args.sets.split(",") if args.sets else (["breast-cancer"] if args.quick else list(SETS))
    bad = [s for s in sets if s not in SETS]
    if bad:
        p.error(f"unknown set {bad[0]!r}; choose from {', '.join(SETS)}")
    seeds = args.seeds or (1 if args.quick else 3)
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else ((50,) if args.quick else SIZES)
    budget = args.budget or (60 if args.quick else "default")
    budget = int(budget) if str(budget).isdigit() else budget
    raw: dict = {}
    skipped: list[str] = []

    def write_partial() -> None:
        rows = aggregate(raw)
        C.write_json(args.out, {"benchmark": "data_efficiency", "machine": C.machine(args.threads),
                                "budget": budget, "seeds": seeds, "sizes": list(sizes), "skipped": skipped,
                                "rows": rows, "claim": claim(raw), "raw": raw, "complete": False})

    for name in sets:
        src = SETS[name]["source"]
        if src.startswith("adbench:") and not (args.adbench_dir / src.split(":", 1)[1]).exists():
            print(f"skip {name}: {args.adbench_dir / src.split(':', 1)[1]} not found", flush=True)
            skipped.append(name)
            continue

        def saved(rec: dict, name: str = name) -> None:
            if rec.get("n_train") is not None:  # a point exists
                raw[name] = rec
                write_partial()

        raw[name] = run_set(name, seeds, sizes, budget, args.steps, args.rules.split(",") if args.rules else None,
                            args.adbench_dir, saved)
        write_partial()
    rows = aggregate(raw)
    table = markdown(rows)
    out = {"benchmark": "data_efficiency", "machine": C.machine(args.threads), "budget": budget, "seeds": seeds,
           "sizes": list(sizes), "skipped": skipped, "rows": rows, "claim": claim(raw), "table": table,
           "raw": raw, "complete": True}
    print(json.dumps(out["claim"], indent=1), flush=True)
    C.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
