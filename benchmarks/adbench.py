"""Anomaly detection on the ADBench sets of ``shared/data/adbench``.

Two protocols, each over ``--seeds`` seeds (default 3):

* **(a) semi-supervised**, the ``fvnce poc`` setting: the poc's own split of the labelled
  file (training rows are normal only), the recommendation chosen on validation data;
  reported: its test AUROC and the VAE's.  Baselines are fitted on the same training
  rows and scored on the same test rows (the poc's preprocessed features).
* **(b) unsupervised, ADBench's protocol**: a stratified 70/30 split; every training row
  is used *without its label* (the anomalies stay in); ``fvnce poc`` runs on the
  unlabelled training part (its own train/validation split of it; its label-free
  recommendation: the union of the best joint model and the best one-component mixture by
  reliable validation log-likelihood, ``fvnce.runs.union``) and each of its runs, and the
  union, scores the 30 % test part; baselines are fitted on the same training rows after min-max scaling
  fitted on them.  Reported: test AUROC of the recommended run, of the VAE, and of the
  best run of each rule (the rule-under-contamination question), beside ADBench's
  published figures (Table D4, mean of 3 repeats; ``SOURCES.md`` there).

With ``--detector``, protocol (b) also fits ``fvnce.Detector(rule="kl")`` and
``fvnce.Detector(rule="kl", model="gaussian_mixture", components=1)`` (the budget's steps:
quick 150, default 800) on the same min-max-scaled training rows as the baselines and
scores the test rows with them ("fvnce Detector (kl)", "fvnce Detector (kl, mixture 1)");
without it the rows are as before.

Baselines: scikit-learn IsolationForest, and PyOD OCSVM, ECOD and KNN with default
hyper-parameters (``pip install -e '.[bench]'``; skipped with a note without PyOD).

    python benchmarks/adbench.py                          # all 5 sets, 3 seeds, both protocols
    python benchmarks/adbench.py --sets wbc,pima --seeds 1 --protocols b
    python benchmarks/adbench.py --quick                  # wbc, 1 seed, budget quick
    python benchmarks/adbench.py --quick --protocols b --detector   # with fvnce.Detector in (b)
    python benchmarks/adbench.py --gaussians              # full vs diagonal Gaussian on (a)'s split
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

SETS = ("wbc", "pima", "cardiotocography", "wilt", "shuttle")
#: ADBench Table D4, AUCROC x 100 (unsupervised protocol (b))
PUBLISHED = {
    "wbc": {"iforest": 99.01, "ocsvm": 99.03, "knn": 90.56, "ecod": 99.11},
    "pima": {"iforest": 72.87, "ocsvm": 66.92, "knn": 73.43, "ecod": 51.54},
    "cardiotocography": {"iforest": 67.57, "ocsvm": 77.86, "knn": 56.23, "ecod": 68.92},
    "wilt": {"iforest": 41.94, "ocsvm": 31.28, "knn": 48.42, "ecod": 39.43},
    "shuttle": {"iforest": 99.56, "ocsvm": 97.40, "knn": 69.64, "ecod": 99.40},
}


def read_set(path: Path):
    import pandas as pd

    df = pd.read_csv(path)
    y = (df.pop("label").astype(str) == "anomaly").to_numpy().astype(int)
    return df, y


def baselines(x_train, x_test, seed: int) -> dict:
    """Test scores (higher = more anomalous) of the baselines fitted on ``x_train``."""
    from sklearn.ensemble import IsolationForest

    out = {"iforest": -IsolationForest(random_state=seed).fit(x_train).score_samples(x_test)}
    try:
        from pyod.models.ecod import ECOD
        from pyod.models.knn import KNN
        from pyod.models.ocsvm import OCSVM
    except ImportError:
        return out
    for name, cls in (("ocsvm", OCSVM), ("ecod", ECOD), ("knn", KNN)):
        out[name] = cls().fit(x_train).decision_function(x_test)
    return out


def auroc(scores, labels) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


def fvnce_scores(poc_dir: Path, summary: dict, test_csv: Path) -> dict:
    """Test scores of every trained run of a poc on an external file."""
    import numpy as np

    from fvnce.runs import score_file

    import pandas as pd

    todo = {r["name"]: r["run_dir"] for r in summary["runs"] if r["status"] not in ("failed", "diverged")}
    union = (summary.get("recommended") or {}).get("union")
    if union:  # the label-free recommendation: a union of two runs (fvnce.runs.union)
        todo[summary["recommended"]["run"]] = union["run_dir"]
    out = {}
    for name, run_dir in todo.items():
        dest = poc_dir / f"{name}-scores.csv"
        score_file(poc_dir / run_dir, str(test_csv), dest)
        out[name] = np.asarray(pd.read_csv(dest)["score"], dtype=float)
    return out


def detector_scores(x_train, x_test, seed: int, budget) -> dict:
    """Test scores (higher = more anomalous) of ``fvnce.Detector`` (rule kl, the poc's
    budget in steps; its default model, and the one-component diagonal mixture) fitted on
    ``x_train``: minus their score_samples."""
    from fvnce import Detector
    from fvnce.poc import BUDGETS

    steps = budget if isinstance(budget, int) else BUDGETS[budget]
    det = Detector(rule="kl", steps=steps, seed=seed).fit(x_train)
    mix = Detector(rule="kl", model="gaussian_mixture", components=1, noise="full_gaussian", steps=steps,
                   seed=seed).fit(x_train)
    return {"fvnce Detector (kl)": -det.score_samples(x_test),
            "fvnce Detector (kl, mixture 1)": -mix.score_samples(x_test)}


def _rule_labels(rules: list[str] | None) -> list[str]:
    """Run-name labels of the poc rules (``power:1.5`` -> ``power1.5``)."""
    from fvnce.poc import PocConfig, parse_rule, rule_label

    return [rule_label(*parse_rule(r)) for r in (rules or PocConfig().rules)]


def protocol_b(name: str, df, y, seed: int, work: Path, budget, detector: bool = False,
               rules: list[str] | None = None, dump: Path | None = None) -> dict:
    import numpy as np
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import MinMaxScaler

    from fvnce.data import DataSpec
    from fvnce.poc import PocConfig, run_poc
    from fvnce.train import TrainConfig

    idx_tr, idx_te = train_test_split(np.arange(len(y)), test_size=0.3, stratify=y, random_state=seed)
    train_csv, test_csv = work / "train.csv", work / "test.csv"
    df.iloc[idx_tr].to_csv(train_csv, index=False)
    df.iloc[idx_te].to_csv(test_csv, index=False)
    y_te = y[idx_te]
    scaler = MinMaxScaler().fit(df.iloc[idx_tr].to_numpy(float))
    x_tr, x_te = scaler.transform(df.iloc[idx_tr].to_numpy(float)), scaler.transform(df.iloc[idx_te].to_numpy(float))
    res = {k: auroc(s, y_te) for k, s in baselines(x_tr, x_te, seed).items()}
    if detector:  # beside the PyOD detectors: the same min-max-scaled training rows
        res.update({k: auroc(s, y_te) for k, s in detector_scores(x_tr, x_te, seed, budget).items()})
    poc_dir = work / "poc"
    cfg = PocConfig(data=DataSpec(source=str(train_csv), seed=seed), budget=budget,
                    train=TrainConfig(progress=False, seed=seed), baselines=False)
    if rules:
        cfg.rules = list(rules)
    summary = run_poc(cfg, poc_dir, progress=False)
    runs = {r["name"]: r for r in summary["runs"]}
    scores = fvnce_scores(poc_dir, summary, test_csv)
    per_run = {n: auroc(s, y_te) for n, s in scores.items()}
    rec = (summary.get("recommended") or {}).get("run")
    res["fvnce (recommended)"] = per_run.get(rec)
    # the single run of highest validation log-likelihood (the recommendation before the union)
    res["fvnce (single run, val log-likelihood)"] = per_run.get((summary.get("recommended") or {}).get(
        "single_choice", rec))
    res["vae"] = per_run.get("elbo-vae")
    for rule in _rule_labels(rules):
        mine = {n: v for n, v in per_run.items() if n.startswith(f"fvnce-{rule}-") and "-mix" not in n}
        # the run of this rule that the poc's criterion (validation log-likelihood, reliable) prefers
        ok = [n for n in mine if runs[n]["status"] == "ok" and runs[n].get("reliable")]
        pick = max(ok, key=lambda n: runs[n]["val_metrics"].get("log_likelihood") or -1e300) if ok else None
        res[f"fvnce {rule} (val choice)"] = per_run.get(pick) if pick else None
    mix = [n for n in per_run if "-mix" in n and runs[n]["status"] == "ok" and runs[n].get("reliable")]
    if mix:  # the diagonal mixture the label-free criterion prefers among the mixtures
        pick = max(mix, key=lambda n: runs[n]["val_metrics"].get("log_likelihood") or -1e300)
        res["fvnce mixture (val choice)"] = per_run[pick]
    for rule in _rule_labels(rules):  # the mixtures train every parameter by the rule (no ELBO base)
        for n, v in per_run.items():
            if n.startswith(f"fvnce-{rule}-") and "-mix" in n:
                res[f"fvnce {rule} {n.rsplit('-', 1)[1]}"] = v
    res["_per_run"] = per_run
    if dump is not None:  # every run's test and stored validation scores, to study combinations offline
        import json

        from fvnce.runs.alarm import read_alarm

        rec_runs = {}
        for n, sc in scores.items():
            r = runs.get(n, {"run_dir": f"runs/{n}", "status": "ok", "val_metrics": {}})  # the union is no run
            alarm = read_alarm(poc_dir / r["run_dir"]) or {}
            rec_runs[n] = {"test": [float(v) for v in sc], "val": alarm.get("validation_scores"),
                           "status": r["status"], "reliable": r.get("reliable"),
                           "log_likelihood": r["val_metrics"].get("log_likelihood")}
        dump.mkdir(parents=True, exist_ok=True)
        (dump / f"{name}-b{seed}.json").write_text(json.dumps(
            {"y_test": [int(v) for v in y_te], "recommended": rec, "runs": rec_runs}))
    res["_status"] = {n: r["status"] for n, r in runs.items()}
    res["_recommended"] = rec
    res["_criterion"] = (summary.get("recommended") or {}).get("criterion")
    return res


def protocol_a(name: str, path: Path, seed: int, work: Path, budget) -> dict:
    from fvnce.data import DataSpec, load_dataset
    from fvnce.poc import PocConfig, run_poc
    from fvnce.train import TrainConfig

    spec = DataSpec(source=str(path), label="label", normal="normal", seed=seed)
    # the baselines get the poc's split and preprocessing without the dequantisation of the
    # training rows (their usual input; the split is the same)
    ds = load_dataset(DataSpec.from_dict({**spec.to_dict(), "dequantize": "none"}))
    y_te = ds.test_labels.numpy()
    res = {k: auroc(s, y_te) for k, s in baselines(ds.train.numpy(), ds.test.numpy(), seed).items()}
    cfg = PocConfig(data=spec, budget=budget, train=TrainConfig(progress=False, seed=seed), baselines=False)
    summary = run_poc(cfg, work / "poc_a", progress=False)
    runs = {r["name"]: r for r in summary["runs"]}
    rec = (summary.get("recommended") or {}).get("run")
    res["fvnce (recommended)"] = runs[rec]["metrics"].get("auroc") if rec else None
    res["vae"] = runs.get("elbo-vae", {}).get("metrics", {}).get("auroc")
    # the choice among the VAE family alone (what the poc recommended before the mixtures)
    family = [r for r in summary["runs"] if "-mix" not in r["name"] and r["status"] == "ok" and r.get("reliable")
              and r["val_metrics"].get("auroc") is not None]
    if family:
        best = max(family, key=lambda r: (r["val_metrics"]["auroc"], r["val_metrics"].get("log_likelihood") or -1e300))
        res["fvnce without mixtures (val choice)"] = best["metrics"].get("auroc")
    res["_recommended"] = rec
    # the recommended run's alarm threshold (--alarm-rate 0.01) on the held-out normal rows
    op = (runs[rec].get("operating_point") or {}) if rec else {}
    res["_alarm"] = {k: op.get(k) for k in ("n_normal", "false_alarms", "false_alarms_per_1000",
                                            "expected_per_1000", "within_expected", "detection_rate")}
    return res


def gaussians(name: str, path: Path, seed: int) -> dict:
    """Protocol (a)'s split without any fvnce training: IsolationForest against one Gaussian
    with a full and with a diagonal covariance (scikit-learn, fitted to the normal training
    rows): does a detector gain from treating the features as independent?"""
    from sklearn.mixture import GaussianMixture

    from fvnce.data import DataSpec, load_dataset

    ds = load_dataset(DataSpec(source=str(path), label="label", normal="normal", seed=seed, dequantize="none"))
    x_tr, x_te, y_te = ds.train.numpy().astype(float), ds.test.numpy().astype(float), ds.test_labels.numpy()
    res = {"iforest": auroc(baselines(x_tr, x_te, seed)["iforest"], y_te)}
    for cov in ("full", "diag"):
        g = GaussianMixture(1, covariance_type=cov, reg_covar=1e-3, random_state=seed).fit(x_tr)
        res[f"gaussian ({cov} covariance)"] = auroc(-g.score_samples(x_te), y_te)
    return res


def main(argv=None) -> dict:
    p = C.parser("adbench", __doc__)
    p.add_argument("--sets", default=None, help="comma list of " + ",".join(SETS))
    p.add_argument("--seeds", type=int, default=None, help="repeats (default 3, quick 1)")
    p.add_argument("--protocols", default="a,b", help="a (semi-supervised), b (unsupervised), or a,b")
    p.add_argument("--budget", default=None, help="poc budget (default: the poc default; quick: 'quick')")
    p.add_argument("--rules", default=None,
                   help="protocol b: poc rules, e.g. kl,shifted_log:1,power:1.5 (default: the poc's)")
    p.add_argument("--detector", action="store_true",
                   help="protocol b: add fvnce.Detector (rule kl, the budget's steps) beside the baselines")
    p.add_argument("--gaussians", action="store_true",
                   help="only protocol (a)'s split: IsolationForest against a full- and a diagonal-covariance "
                        "Gaussian (seconds; no fvnce training)")
    p.add_argument("--dump", type=Path, default=None,
                   help="protocol b: write each run's test and validation scores to DIR/<set>-b<seed>.json")
    p.add_argument("--adbench-dir", type=Path,
                   default=Path(__file__).resolve().parents[2] / "shared" / "data" / "adbench")
    args = p.parse_args(argv)
    C.set_threads(args.threads)
    sets = args.sets.split(",") if args.sets else (["wbc"] if args.quick else list(SETS))
    seeds = args.seeds or (1 if args.quick else 3)
    budget = args.budget or ("quick" if args.quick else "default")
    budget = int(budget) if str(budget).isdigit() else budget
    protocols = ["g"] if args.gaussians else [q for q in args.protocols.split(",") if q]
    try:
        import pyod  # noqa: F401
        note = None
    except ImportError:
        note = "PyOD is not installed: OCSVM, ECOD and KNN skipped (pip install -e '.[bench]')"
        print(note, flush=True)
    raw: dict = {}
    for name in sets:
        path = args.adbench_dir / f"{name}.csv"
        if not path.exists():
            print(f"skip {name}: {path} not found", flush=True)
            continue
        df, y = read_set(path)
        for proto in protocols:
            for seed in range(seeds):
                work = Path(tempfile.mkdtemp(prefix=f"adbench-{name}-{proto}{seed}-"))
                t0 = time.perf_counter()
                try:
                    if proto == "g":
                        res = gaussians(name, path, seed)
                    elif proto == "b":
                        res = protocol_b(name, df, y, seed, work, budget, args.detector,
                                         args.rules.split(",") if args.rules else None, args.dump)
                    else:
                        res = protocol_a(name, path, seed, work, budget)
                finally:
                    shutil.rmtree(work, ignore_errors=True)
                res["_wall_s"] = time.perf_counter() - t0
                raw.setdefault(name, {}).setdefault(proto, []).append(res)
                print(name, proto, seed, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()},
                      flush=True)
    rows = []
    for name, by_proto in raw.items():
        for proto, reps in by_proto.items():
            methods = [k for k in reps[0] if not k.startswith("_")]
            for m in methods:
                vals = [r[m] for r in reps if r.get(m) is not None]
                if not vals:
                    continue
                pub = PUBLISHED.get(name, {}).get(m) if proto == "b" else None
                rows.append({"set": name, "protocol": proto, "method": m, "auroc_mean": statistics.mean(vals),
                             "auroc_sd": statistics.stdev(vals) if len(vals) > 1 else None, "seeds": len(vals),
                             "published": None if pub is None else pub / 100})
    C.table(rows, ["set", "protocol", "method", "auroc_mean", "auroc_sd", "seeds", "published"])
    out = {"benchmark": "adbench", "machine": C.machine(args.threads), "budget": budget, "seeds": seeds,
           "note": note, "rows": rows, "raw": raw}
    C.write_json(args.out, out)
    return out


if __name__ == "__main__":
    main()
