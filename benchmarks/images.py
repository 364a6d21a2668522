"""Anomaly detection on images: ELPV solar cells and Fashion-MNIST one-class.

Every method of a comparison is fitted on the same training images and scored on the
same validation and test images (the same split for every method, per seed).

**ELPV** (``--data elpv`` of fvnce: the installed ``elpv-dataset``), cell types all, mono
and poly, ``--sizes`` (default 32) pixels square, ``--seeds`` seeds (default 3; the seed
sets the split and every model's seed).  Normal = defect probability 0, anomaly = 1; the
uncertain cells (1/3, 2/3) are in no split and in no metric (the data module's split:
train = normal cells only; validation and test mix normal and defective cells).

Methods:

* ``vae``: the convolutional VAE with the discretised-logistic decoder that fvnce picks
  for (C, H, W) images, trained by the ELBO (``--vae-steps``); score ``-log p(x)``
  (importance-sampled, ``--score-k`` samples);
* ``fvnce <rule>``: the energy-tilted VAE over that VAE (convolutional tilt, started from
  its weights, base frozen), trained by FVNCE against the ``base`` noise (the VAE's own
  samples) for ``--tilt-steps`` steps with each rule of ``--rules``; score
  ``-log p~(x)`` (``log Z`` does not change a ranking);
* ``fvnce (recommended)``: per seed, the rule whose run has the highest *validation*
  AUROC (the test set is never used for a choice);
* ``isolation_forest``: scikit-learn IsolationForest (defaults) on the pixels in [0, 1];
* ``pca``: PCA reconstruction error; the number of components is chosen among
  ``PCA_COMPONENTS`` by validation AUROC (ELPV) or fixed at 64 (Fashion-MNIST, whose
  validation part has no anomalies);
* ``pyod_autoencoder``: PyOD's fully connected ``AutoEncoder`` (hidden 64-32, its
  defaults otherwise, ``--ae-epochs`` epochs), trained from scratch.

Reported per method: test AUROC, AUPRC, the false-alarm rate on test normals and the
detection rate at the threshold set on the validation normal images for the default
alarm rate (``fvnce.thresholds.DEFAULT_ALARM_RATE``, split-conformal quantile), and the
wall and CPU time (``time.process_time``: on a shared machine the time the process
computed) of fitting and scoring (for an FVNCE run, the VAE it starts from included).  For the VAE and each FVNCE run also the held-out
log-likelihood of the test normal images (nats per image; ``--ll-k`` importance samples;
for the tilted model minus an estimated ``log Z`` from ``--logz-n`` samples, with its
k-hat, ESS fraction and whether it is reliable: k-hat <= 0.7 and ESS >= 5 %).  Both
runs' importance estimates use the same latents, so the tilted run's gain over its VAE
splits exactly into ``base_gain`` (0 for a frozen base) and ``tilt_gain`` = mean of
``g - c`` on the images minus ``log Z`` (at most ``2B`` for a tilt bounded by ``B``).

**Fashion-MNIST one-class** (the Debian package ``dataset-fashion-mnist``), the standard
protocol: each class in turn is normal; its 6,000 training images are the training data
(``--fashion-val`` of them, default 10 %, kept aside for validation: early stopping and
the alarm threshold); the 10,000 test images are the test set, the other nine classes
anomalous.  Images are 28x28 intensities in [0, 1] (not binarised).  Methods as above
with the rules of ``--fashion-rules`` (default kl); reported: per-class and mean test
AUROC beside published figures, and the wall time of the whole protocol.

    python benchmarks/images.py                        # ELPV 32x32 all/mono/poly x 3 seeds, Fashion-MNIST 10 classes
    python benchmarks/images.py --parts elpv --sizes 32,64
    python benchmarks/images.py --parts fashion --fashion-classes 0,1
    python benchmarks/images.py --quick                # smoke run: ELPV mono, 1 seed, class 0 subsampled, few steps
    python benchmarks/images.py --render images.partial.json   # the tables of an interrupted run's partial JSON

Markdown tables go to stdout; everything to ``--out`` (JSON).
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

CELL_TYPES = ("all", "mono", "poly")
PCA_COMPONENTS = (8, 16, 32, 64, 128)
FASHION_PCA = 64
BASELINES = ("isolation_forest", "pca", "pyod_autoencoder")
RECOMMENDED = "fvnce (recommended)"

#: Published mean one-class AUROC over the 10 classes of Fashion-MNIST, same protocol (one
#: class normal, its training images for training, the full test set), only as read in a
#: named source: GEOM, Golan & El-Yaniv, "Deep anomaly detection using geometric
#: transformations", NeurIPS 2018, Table 1 (with its Dirichlet normality score), mean 93.5
#: as listed for that paper by Papers with Code; its per-class figures, as quoted in Shi &
#: Zhang, "AGAD: Adversarial Generative Anomaly Detection", Table 1, are in docs/images.md.
#: No Deep SVDD figure (Ruff et al., ICML 2018, report MNIST and CIFAR-10 only; the figure
#: of Bergman & Hoshen, ICLR 2020, Table 2, could not be read) and no VAE figure could be
#: confirmed in a source, so none is listed.
PUBLISHED_FASHION = {
    "GEOM (Golan & El-Yaniv 2018, Table 1)": 0.935,
}


# ----------------------------------------------------------------------------- metrics
def metrics(val_scores, val_labels, test_scores, test_labels) -> dict:
    """Test AUROC and AUPRC, and the operating point at the default alarm rate: the
    threshold is the split-conformal quantile of the *validation normal* scores
    (higher = more anomalous; an image alarms when its score is strictly above it)."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    from fvnce.thresholds import DEFAULT_ALARM_RATE, alarm_threshold

    vs, ts = np.asarray(val_scores, float), np.asarray(test_scores, float)
    vy = None if val_labels is None else np.asarray(val_labels).astype(bool)
    ty = np.asarray(test_labels).astype(bool)
    cal = alarm_threshold(vs if vy is None else vs[~vy], DEFAULT_ALARM_RATE)
    thr = cal["threshold"]
    alarm = ts > thr
    out = {"auroc": float(roc_auc_score(ty, ts)), "auprc": float(average_precision_score(ty, ts)),
           "alarm_rate": DEFAULT_ALARM_RATE, "threshold": thr, "n_calibration": cal["n"],
           "false_alarm_rate": float(alarm[~ty].mean()), "detection_rate": float(alarm[ty].mean())}
    if vy is not None and vy.any() and (~vy).any():
        out["val_auroc"] = float(roc_auc_score(vy, vs))
    return out


def recommend(results: dict) -> str | None:
    """The FVNCE run of highest validation AUROC (ties: the first trained), as the poc
    chooses with labels."""
    ok = [m for m in results if m.startswith("fvnce ") and results[m].get("val_auroc") is not None]
    return max(ok, key=lambda m: results[m]["val_auroc"]) if ok else None


FAMILIES = ("tilt", "mix1", "ppca")


def fvnce_methods(rules: list[str], families) -> list[str]:
    """Names of the FVNCE runs: per family of ``families`` (tilt: the tilted VAE, named by
    its rule alone; mix1, ppca: named by rule and family), per rule."""
    return [f"fvnce {rule_label(r)}" + ("" if fam == "tilt" else f" {fam}")
            for fam in FAMILIES if fam in families for r in rules]


def rule_label(rule: str) -> str:
    return rule.replace(":", "")


def parse_rule(rule: str) -> dict:
    """``kl`` -> {"rule": "kl"}; ``power:1.5`` -> {"rule": "power", "gamma": 1.5} (the
    poc's parser, so that the spellings match ``fvnce poc --rules``)."""
    from fvnce.poc import parse_rule as poc_parse

    name, params = poc_parse(rule)
    return {"rule": name, **params}


# ----------------------------------------------------------------------------- baselines
def baselines(x_tr, x_val, y_val, x_te, seed: int, ae_epochs: int, pca_fixed: int | None) -> dict:
    """Validation and test scores (higher = more anomalous) and wall times of the
    classical and deep baselines fitted on ``x_tr``."""
    import numpy as np
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.metrics import roc_auc_score

    out = {}
    t, c0 = time.perf_counter(), time.process_time()
    forest = IsolationForest(random_state=seed).fit(x_tr)
    out["isolation_forest"] = {"val": -forest.score_samples(x_val), "test": -forest.score_samples(x_te),
                               "wall_s": time.perf_counter() - t, "cpu_s": time.process_time() - c0}
    t, c0 = time.perf_counter(), time.process_time()
    most = min(x_tr.shape[0] - 1, x_tr.shape[1])
    choices = [pca_fixed] if pca_fixed else [c for c in PCA_COMPONENTS if c <= most]
    best = None
    for c in choices:
        pca = PCA(min(c, most), random_state=seed).fit(x_tr)

        def err(x):
            return ((x - pca.inverse_transform(pca.transform(x))) ** 2).sum(1)

        sv = err(x_val)
        val_auc = roc_auc_score(y_val, sv) if y_val is not None and 0 < y_val.sum() < len(y_val) else None
        if best is None or (val_auc is not None and val_auc > best[0]):
            best = (val_auc, c, sv, err(x_te))
    out["pca"] = {"val": best[2], "test": best[3], "components": best[1], "wall_s": time.perf_counter() - t,
                  "cpu_s": time.process_time() - c0}
    try:
        from pyod.models.auto_encoder import AutoEncoder
    except ImportError:
        return out
    import torch

    t, c0 = time.perf_counter(), time.process_time()
    torch.manual_seed(seed)
    ae = AutoEncoder(epoch_num=ae_epochs, random_state=seed, verbose=0, device="cpu")
    ae.fit(np.asarray(x_tr, dtype=np.float32))
    out["pyod_autoencoder"] = {"val": ae.decision_function(np.asarray(x_val, np.float32)),
                               "test": ae.decision_function(np.asarray(x_te, np.float32)),
                               "epochs": ae_epochs, "wall_s": time.perf_counter() - t,
                               "cpu_s": time.process_time() - c0}
    return out


# ----------------------------------------------------------------------------- fvnce
def fvnce_runs(ds, work: Path, seed: int, rules: list[str], args) -> dict:
    """Train the VAE (ELBO) and one tilted VAE per rule (FVNCE, ``base`` noise, started
    from the VAE) on ``ds`` through :func:`fvnce.runs.train_run`; score the validation
    and test images with the public scoring API; estimate the held-out log-likelihood of
    the test normal images.  Returns per-method scores, times and log-likelihoods."""
    import numpy as np
    import torch

    from fvnce.runs import RunConfig, load_run, score_rows, train_run
    from fvnce.train import TrainConfig

    def train(cfg: RunConfig, name: str) -> tuple[Path, float, float]:
        t, c0 = time.perf_counter(), time.process_time()
        run_dir = work / name
        train_run(cfg, run_dir, dataset=ds, progress=False)
        return run_dir, time.perf_counter() - t, time.process_time() - c0

    tc = dict(progress=False, seed=seed, eval_every=args.eval_every, checkpoint_every=args.eval_every)
    plan = [("vae", RunConfig(data=ds.spec, objective="elbo", model="vae", noise="diag_gaussian",
                              train=TrainConfig(steps=args.vae_steps, **tc), eval_k=args.score_k), None)]
    for rule in rules if "tilt" in args.families else []:
        plan.append((f"fvnce {rule_label(rule)}",
                     RunConfig(data=ds.spec, objective="fvnce", objective_options=parse_rule(rule), model="tilted_vae",
                               model_options={} if args.tilt_bound is None else {"tilt_bound": args.tilt_bound},
                               noise="base", train=TrainConfig(steps=args.tilt_steps, **tc), eval_k=args.score_k),
                     "vae"))
    # the poc's simple families on continuous images (fvnce.poc.plan.make_plan): from the data,
    # against fvnce.image_plan.IMAGE_SIMPLE_NOISE, one run per rule
    from fvnce.image_plan import IMAGE_PPCA_DIMS, IMAGE_SIMPLE_LR, IMAGE_SIMPLE_NOISE
    from fvnce.poc import PocConfig

    simple = []
    if "mix1" in args.families:
        simple.append(("mix1", "gaussian_mixture", {"components": 1, "init": "data"}))
    if "ppca" in args.families:
        k = min(IMAGE_PPCA_DIMS, ds.train.shape[0] - 2, ds.dim - 1)
        simple.append(("ppca", "linear_gaussian", {"z_dim": k, "init": "pca"}))
    for label, model, opts in simple:
        for rule in rules:
            plan.append((f"fvnce {rule_label(rule)} {label}",
                         RunConfig(data=ds.spec, objective="fvnce",
                                   objective_options={**parse_rule(rule), **PocConfig().objective_options},
                                   model=model, model_options=dict(opts), noise=IMAGE_SIMPLE_NOISE,
                                   train=TrainConfig(steps=args.tilt_steps, lr=IMAGE_SIMPLE_LR, **tc),
                                   eval_k=args.score_k), None))
    out, dirs, trained = {}, {}, {}
    normals = ds.test[ds.test_labels == 0] if ds.test_labels is not None else ds.test
    for name, cfg, parent in plan:
        if parent is not None:
            cfg.init_from = str(dirs[parent])
        run_dir, wall, cpu = train(cfg, name.replace(" ", "-"))
        dirs[name] = run_dir
        trained[name] = (wall, cpu)
        run = load_run(run_dir)
        t, c0 = time.perf_counter(), time.process_time()
        torch.manual_seed(seed + 2)
        val = score_rows(run, ds.val.numpy(), k=args.score_k)
        test = score_rows(run, ds.test.numpy(), k=args.score_k)
        score_s, score_cpu = time.perf_counter() - t, time.process_time() - c0
        # wall_s: what a user spends on this detector, the VAE it starts from included
        entry = {"val": val, "test": test, "train_s": wall, "score_s": score_s,
                 "wall_s": wall + score_s + (trained[parent][0] if parent else 0.0),
                 "cpu_s": cpu + score_cpu + (trained[parent][1] if parent else 0.0), "steps": cfg.train.steps}
        if args.ll_k:
            entry["heldout"] = heldout_ll(run, normals, seed, args.ll_k, args.logz_n)
        out[name] = entry
        if not np.isfinite(test).all():
            entry["note"] = f"{int((~np.isfinite(test)).sum())} non-finite test score(s)"
    return out


def heldout_ll(run, x, seed: int, k: int, logz_n: int) -> dict:
    """Mean log-likelihood (nats per image) of the rows ``x``: the IWAE estimate with ``k``
    samples for the VAE; for the tilted model the same estimate of ``log p~`` minus an
    estimated ``log Z`` (:func:`fvnce.evaluate.estimate_log_partition`, its ``n`` =
    ``logz_n``), reported with the estimate's k-hat, ESS fraction and reliability.

    The IWAE latents are drawn first, from the same seed for every run: a tilted run whose
    base is its VAE, frozen, with the VAE's encoder (the ``base`` noise), draws the very
    latents the VAE drew, so ``base_mean`` (its base's IWAE) equals the VAE's ``mean`` and
    the gain over the VAE is exactly ``tilt_mean - log_z`` (``tilt_mean``: the exact mean of
    ``g(x) - c``); no Monte Carlo difference between two IWAE estimates enters it.  With
    ``|g| <= B`` that gain is at most ``2B`` whatever the test images.  ``log Z`` is
    drawn afterwards, from its own seed."""
    import torch

    from fvnce import evaluate as ev

    model = run.model
    x = x.to(next(model.parameters()).dtype)
    rec: dict = {"n": int(len(x)), "k": k}
    torch.manual_seed(seed + 5)
    lp = ev.log_likelihood(model, run.encoder, x, k=k, log_z=0.0).double()  # log p~(x), -c included
    if model.normalised:
        rec.update(log_z=0.0, khat=None, ess_fraction=None, reliable=True, proposal="normalised")
        ll = lp
    else:
        if hasattr(model, "base") and hasattr(model, "log_ratio_to_base"):
            torch.manual_seed(seed + 5)  # the same latents again: log p~ = log p_base + g - c exactly
            base = ev.log_likelihood(model.base, run.encoder, x, k=k).double()
            with torch.no_grad():
                tilt = model.log_ratio_to_base(x).double()
            rec.update(base_mean=float(base.mean()), tilt_mean=float(tilt.mean()),
                       tilt_bound=getattr(model, "tilt_bound", None))
        torch.manual_seed(seed + 6)
        est = ev.estimate_log_partition(model, run.encoder, noise=run.noise, n=logz_n)
        rec.update(log_z=float(est.log_z), khat=float(est.khat), ess_fraction=float(est.ess_fraction),
                   reliable=bool(est.reliable), proposal=est.proposal, logz_n=logz_n)
        ll = lp - float(est.log_z)
    rec["mean"] = float(ll.mean())
    rec["se"] = float(ll.std() / max(1, len(ll)) ** 0.5)
    return rec


def one_split(ds, work: Path, seed: int, rules: list[str], args, pca_fixed: int | None) -> dict:
    """Every method on one split ``ds``; returns metrics per method (and the extras)."""
    import numpy as np

    x_tr, x_val, x_te = (t.numpy().astype(np.float64) for t in (ds.train, ds.val, ds.test))
    y_val = None if ds.val_labels is None else ds.val_labels.numpy().astype(int)
    y_te = ds.test_labels.numpy().astype(int)
    raw = baselines(x_tr, x_val, y_val, x_te, seed, args.ae_epochs, pca_fixed)
    raw.update(fvnce_runs(ds, work, seed, rules, args))
    res: dict = {}
    for name, r in raw.items():
        m = metrics(r["val"], y_val, r["test"], y_te)
        m.update({k: v for k, v in r.items() if k not in ("val", "test")})
        res[name] = m
    rec = recommend(res)
    if rec is not None:
        res[RECOMMENDED] = {**res[rec], "choice": rec}
    return res


# ----------------------------------------------------------------------------- data
def elpv_split(cell_type: str, size: int, seed: int):
    from fvnce.data import DataSpec, load_dataset

    return load_dataset(DataSpec(source="elpv", cell_type=cell_type, image_size=size, seed=seed))


def fashion_arrays():
    """(train images, train labels, test images, test labels) of Fashion-MNIST, uint8
    images flattened to 784 values; None when not installed."""
    from fvnce.data import fashion_mnist_arrays

    return fashion_mnist_arrays()


def fashion_split(arrays, cls: int, seed: int, val_fraction: float, max_train: int | None, max_test: int | None):
    """The one-class split of class ``cls`` as an fvnce Dataset: the class's training
    images split into train and validation (``val_fraction``, normal only), the test images
    (every class; label 1 = another class) the test set, in their order; 8-bit intensities
    divided by 255, not binarised (:func:`fvnce.data.dataset_from_split`)."""
    import numpy as np

    from fvnce.data import DataSpec, dataset_from_split, split_indices

    x_tr, y_tr, x_te, y_te = arrays
    rng = np.random.default_rng([seed, cls])
    mine = x_tr[y_tr == cls]
    if max_train and max_train < len(mine):
        mine = mine[np.sort(rng.choice(len(mine), max_train, replace=False))]
    if max_test and max_test < len(x_te):
        keep = np.sort(rng.choice(len(x_te), max_test, replace=False))
        x_te, y_te = x_te[keep], y_te[keep]
    part = np.full(len(mine) + len(x_te), "test", dtype=object)
    _, val = split_indices(len(mine), None, val_fraction, 0.0, seed)[:2]
    part[:len(mine)] = "train"
    part[val] = "val"
    labels = np.r_[np.zeros(len(mine), int), (y_te != cls).astype(int)]
    spec = DataSpec(source="fashion-mnist-one-class", val_fraction=val_fraction, test_fraction=0.0, seed=seed,
                    binarize=False)
    return dataset_from_split(np.concatenate([mine, x_te]), part, labels, spec,
                              names=[f"pixel{i}" for i in range(784)], image_shape=(1, 28, 28), scale=255.0)


# ----------------------------------------------------------------------------- tables
def md_table(rows: list[dict], cols: list[str], title: str = "") -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
        return "" if v is None else str(v)
    lines = ([f"**{title}**", ""] if title else []) + ["| " + " | ".join(cols) + " |",
                                                       "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text, flush=True)
    return text


def mean_sd(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None, None
    return statistics.mean(vals), (statistics.stdev(vals) if len(vals) > 1 else None)


def summarise_elpv(raw: list[dict], methods: list[str]) -> list[dict]:
    """Mean (and sd) over seeds per (cell type, size, method)."""
    rows = []
    groups = sorted({(r["cell_type"], r["size"]) for r in raw}, key=lambda g: (g[1], CELL_TYPES.index(g[0])))
    for ct, size in groups:
        reps = [r for r in raw if r["cell_type"] == ct and r["size"] == size]
        for m in methods:
            got = [r["results"][m] for r in reps if m in r["results"]]
            if not got:
                continue
            row = {"cells": ct, "size": size, "method": m, "seeds": len(got)}
            for key in ("auroc", "auprc", "false_alarm_rate", "detection_rate", "wall_s"):
                row[key], row[key + "_sd"] = mean_sd([g.get(key) for g in got])
            row["cpu_s"] = mean_sd([g.get("cpu_s") for g in got])[0]
            if m == RECOMMENDED:
                row["choices"] = ",".join(g.get("choice", "") for g in got)
            rows.append(row)
    return rows


def verdicts(rows: list[dict]) -> list[dict]:
    """Per (cells, size): the best baseline by mean test AUROC (the VAE counts as one) and
    the recommended FVNCE run's margin over it."""
    out = []
    for ct, size in dict.fromkeys((r["cells"], r["size"]) for r in rows):
        mine = {r["method"]: r for r in rows if r["cells"] == ct and r["size"] == size}
        base = {m: r["auroc"] for m, r in mine.items() if m in (*BASELINES, "vae") and r["auroc"] is not None}
        rec = mine.get(RECOMMENDED)
        if not base or rec is None:
            continue
        best = max(base, key=base.get)
        out.append({"cells": ct, "size": size, "best_baseline": best, "best_baseline_auroc": base[best],
                    "fvnce_recommended_auroc": rec["auroc"], "margin": rec["auroc"] - base[best],
                    "fvnce_wins": rec["auroc"] >= base[best]})
    return out


def ll_rows(raw: list[dict], rules: list[str]) -> list[dict]:
    rows = []
    for r in raw:
        res = r["results"]
        vae = (res.get("vae") or {}).get("heldout")
        for rule in rules:
            h = (res.get(f"fvnce {rule_label(rule)}") or {}).get("heldout")
            if not h or not vae:
                continue
            # gain = base_gain + tilt_gain; base_gain is 0 when the tilted run's base and encoder are its VAE's
            base_gain = h["base_mean"] - vae["mean"] if "base_mean" in h else None
            tilt_gain = h["tilt_mean"] - h["log_z"] if "tilt_mean" in h else None
            rows.append({"cells": r["cell_type"], "size": r["size"], "seed": r["seed"], "rule": rule_label(rule),
                         "vae_ll": vae["mean"], "fvnce_ll": h["mean"], "gain": h["mean"] - vae["mean"],
                         "base_gain": base_gain, "tilt_gain": tilt_gain, "log_z": h["log_z"],
                         "proposal": h.get("proposal"), "khat": h["khat"], "ess_fraction": h["ess_fraction"],
                         "reliable": h["reliable"], "beats_vae_reliably": bool(h["reliable"] and h["mean"] > vae["mean"])})
    return rows


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = C.parser("images", __doc__)
    p.add_argument("--parts", default="elpv,fashion", help="comma list of elpv, fashion")
    p.add_argument("--cell-types", default=None, help="ELPV cell types (default all,mono,poly; quick: mono)")
    p.add_argument("--sizes", default="32", help="ELPV image sizes, comma list (default 32)")
    p.add_argument("--seeds", type=int, default=None, help="ELPV seeds (default 3, quick 1)")
    p.add_argument("--rules", default="kl,power:1.5", help="FVNCE rules on ELPV (default kl,power:1.5)")
    p.add_argument("--fashion-rules", default="kl", help="FVNCE rules on Fashion-MNIST (default kl)")
    p.add_argument("--fashion-classes", default=None, help="classes 0-9 (default all; quick: 0)")
    p.add_argument("--fashion-val", type=float, default=0.1, help="share of the class's training images that "
                   "validates (default 0.1)")
    p.add_argument("--fashion-max-train", type=int, default=None, help="subsample the class's training images")
    p.add_argument("--fashion-max-test", type=int, default=None, help="subsample the test set")
    p.add_argument("--vae-steps", type=int, default=None, help="ELBO steps of the VAE (default 800, quick 30)")
    p.add_argument("--tilt-steps", type=int, default=None, help="FVNCE steps of each tilted run (default 400, "
                   "quick 20)")
    p.add_argument("--tilt-bound", type=float, default=None, help="bound B of the tilt, |g| <= B (default: the "
                   "model's, 5); a smaller bound keeps the VAE a usable proposal for log Z")
    p.add_argument("--families", default="tilt,mix1,ppca", help="FVNCE model families (comma list of tilt, the "
                   "tilted VAE; mix1, one diagonal Gaussian; ppca, probabilistic PCA; default all three)")
    p.add_argument("--eval-every", type=int, default=100, help="validation loss (best weights) every N steps")
    p.add_argument("--score-k", type=int, default=None, help="importance samples per score (default 16, quick 2)")
    p.add_argument("--ll-k", type=int, default=None, help="importance samples for held-out log-likelihood on ELPV "
                   "(default 64, quick 4; 0: not measured)")
    p.add_argument("--logz-n", type=int, default=None, help="samples of the log Z estimate (default 50000, quick "
                   "200); a saturated bounded tilt needs this many before the PSIS tail (the largest 3 sqrt(n)) "
                   "lies above the draws the tilt pins to its floor")
    p.add_argument("--ae-epochs", type=int, default=None, help="PyOD AutoEncoder epochs (default 10, quick 1)")
    p.add_argument("--render", type=Path, default=None, help="no training: the tables of a (partial) JSON that "
                   "this script wrote, written to --out")
    args = p.parse_args(argv)
    if args.render is not None:
        return render(args.render, args.out)
    q = args.quick
    args.vae_steps = args.vae_steps or (30 if q else 800)
    args.tilt_steps = args.tilt_steps or (20 if q else 400)
    args.score_k = args.score_k or (2 if q else 16)
    args.ll_k = (4 if q else 64) if args.ll_k is None else args.ll_k
    args.logz_n = args.logz_n or (200 if q else 50000)
    args.ae_epochs = args.ae_epochs or (1 if q else 10)
    seeds = args.seeds or (1 if q else 3)
    cell_types = (args.cell_types or ("mono" if q else ",".join(CELL_TYPES))).split(",")
    sizes = [int(s) for s in args.sizes.split(",")]
    rules = args.rules.split(",")
    f_rules = args.fashion_rules.split(",")
    classes = [int(c) for c in (args.fashion_classes or ("0" if q else "0,1,2,3,4,5,6,7,8,9")).split(",")]
    if q:
        args.fashion_max_train = args.fashion_max_train or 300
        args.fashion_max_test = args.fashion_max_test or 400
    parts = args.parts.split(",")
    C.set_threads(args.threads)
    notes: list[str] = []
    try:
        import pyod  # noqa: F401
    except ImportError:
        notes.append("PyOD is not installed: pyod_autoencoder skipped (pip install -e '.[bench]')")
    work = Path(tempfile.mkdtemp(prefix="fvnce-images-"))
    out: dict = {"benchmark": "images", "machine": C.machine(args.threads), "quick": q, "notes": notes,
                 "config": {"vae_steps": args.vae_steps, "tilt_steps": args.tilt_steps, "tilt_bound": args.tilt_bound,
                            "score_k": args.score_k,
                            "ll_k": args.ll_k, "logz_n": args.logz_n, "ae_epochs": args.ae_epochs,
                            "eval_every": args.eval_every, "rules": rules, "fashion_rules": f_rules,
                            "pca_components": list(PCA_COMPONENTS), "fashion_pca": FASHION_PCA,
                            "fashion_val": args.fashion_val, "fashion_max_train": args.fashion_max_train,
                            "fashion_max_test": args.fashion_max_test,
                            "families": args.families}}
    methods = ["vae", *fvnce_methods(rules, args.families), RECOMMENDED, *BASELINES]
    try:
        if "elpv" in parts:
            out["elpv"] = run_elpv(cell_types, sizes, seeds, rules, methods, args, work, notes, out)
        if "fashion" in parts:
            out["fashion"] = run_fashion(classes, f_rules, args, work, notes, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for n in notes:
        print(f"note: {n}", flush=True)
    C.write_json(args.out, out)
    return out


def render(path: Path, out_path: Path) -> dict:
    """Tables (and summaries) of the per-split results in a JSON this script wrote,
    complete or partial (an interrupted run writes ``<out>.partial.json`` after every
    split)."""
    import json

    data = json.loads(Path(path).read_text())
    cfg = data.get("config", {})
    rules = cfg.get("rules", ["kl"])
    f_rules = cfg.get("fashion_rules", ["kl"])
    raw = (data.get("elpv") or {}).get("raw") or []
    if raw:
        methods = ["vae", *fvnce_methods(rules, cfg.get("families", FAMILIES)), RECOMMENDED, *BASELINES]
        data["elpv"] = {**elpv_tables(raw, methods, rules), "raw": raw}
    per_class = (data.get("fashion") or {}).get("per_class") or []
    if per_class:
        data["fashion"] = {**data["fashion"], **fashion_tables(per_class, f_rules, cfg.get("families", FAMILIES))}
    data["rendered_from"] = str(path)
    C.write_json(out_path, data)
    return data


def elpv_tables(raw: list[dict], methods: list[str], rules: list[str]) -> dict:
    rows = summarise_elpv(raw, methods)
    md = md_table(rows, ["cells", "size", "method", "seeds", "auroc", "auroc_sd", "auprc", "false_alarm_rate",
                         "detection_rate", "wall_s", "cpu_s"], "ELPV: test metrics, mean over seeds")
    ver = verdicts(rows)
    md += md_table(ver, ["cells", "size", "best_baseline", "best_baseline_auroc", "fvnce_recommended_auroc",
                         "margin", "fvnce_wins"], "ELPV: recommended FVNCE against the best baseline")
    lls = ll_rows(raw, rules)
    if lls:
        md += md_table(lls, ["cells", "size", "seed", "rule", "vae_ll", "fvnce_ll", "gain", "base_gain", "tilt_gain",
                             "proposal", "khat", "ess_fraction", "reliable", "beats_vae_reliably"], "ELPV: held-out log-likelihood of test normals "
                       "(nats per image)")
    return {"rows": rows, "verdicts": ver, "heldout_ll": lls, "markdown": md}


def fashion_tables(per_class: list[dict], rules: list[str], families=FAMILIES) -> dict:
    methods = [m for m in ("vae", *fvnce_methods(rules, families), *BASELINES)
               if any(m in r for r in per_class)]
    cols = ["class", "name", *methods]
    mean = {"class": "mean", "name": f"{len(per_class)} classes"}
    for c in cols[2:]:
        mean[c] = mean_sd([r.get(c) for r in per_class])[0]
    md = md_table([*per_class, mean], cols, "Fashion-MNIST one-class: test AUROC per normal class")
    md += md_table([{"method": k, "mean_auroc": v} for k, v in PUBLISHED_FASHION.items()], ["method", "mean_auroc"],
                   "Fashion-MNIST one-class: published mean AUROC")
    return {"mean": mean, "published_mean": PUBLISHED_FASHION, "markdown": md,
            "wall_s_sum": sum(r["wall_s"] for r in per_class),
            "cpu_s_sum": sum(r.get("cpu_s") or 0.0 for r in per_class)}


def run_elpv(cell_types, sizes, seeds, rules, methods, args, work, notes, out) -> dict:
    raw: list[dict] = []
    t_all = time.perf_counter()
    for size in sizes:
        for ct in cell_types:
            for seed in range(args.seed, args.seed + seeds):
                l0, t0, c0 = C.load(), time.perf_counter(), time.process_time()
                try:
                    ds = elpv_split(ct, size, seed)
                except Exception as exc:  # noqa: BLE001 (elpv-dataset missing: fvnce.errors.DataError)
                    notes.append(f"ELPV skipped: {' '.join(str(exc).split())[:200]}")
                    return {"skipped": notes[-1]}
                load_s = time.perf_counter() - t0
                d = work / f"elpv-{ct}-{size}-{seed}"
                res = one_split(ds, d, seed, rules, args, None)
                shutil.rmtree(d, ignore_errors=True)
                rec = {"cell_type": ct, "size": size, "seed": seed, "n_train": len(ds.train), "n_val": len(ds.val),
                       "n_test": len(ds.test), "test_anomalies": int(ds.test_labels.sum()),
                       "val_anomalies": int(ds.val_labels.sum()), "load_s": load_s,
                       "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "load_before": l0,
                       "load_after": C.load(), "results": res}
                raw.append(rec)
                print(f"elpv {ct} {size}px seed {seed}: " + ", ".join(
                    f"{m} {res[m]['auroc']:.3f}" for m in methods if m in res) + f" ({rec['wall_s']:.0f} s, load "
                    f"{l0:.1f}-{rec['load_after']:.1f})", flush=True)
                C.write_json(args.out.with_suffix(".partial.json"), {**out, "elpv": {"raw": raw}})
    return {**elpv_tables(raw, methods, rules), "raw": raw,
            "wall_s": time.perf_counter() - t_all}


def run_fashion(classes, rules, args, work, notes, out) -> dict:
    from fvnce.data.builtin import FASHION_CLASSES

    arrays = fashion_arrays()
    if arrays is None:
        notes.append("Fashion-MNIST skipped: files not found (apt-get install dataset-fashion-mnist)")
        return {"skipped": notes[-1]}
    methods = ["vae", *fvnce_methods(rules, args.families), *BASELINES]
    per_class, t_all, l_start = [], time.perf_counter(), C.load()
    fargs = type(args)(**{**vars(args), "ll_k": 0})  # the held-out likelihood is measured on ELPV only
    for cls in classes:
        l0, t0, c0 = C.load(), time.perf_counter(), time.process_time()
        ds = fashion_split(arrays, cls, args.seed, args.fashion_val, args.fashion_max_train, args.fashion_max_test)
        d = work / f"fashion-{cls}"
        res = one_split(ds, d, args.seed, rules, fargs, FASHION_PCA)
        shutil.rmtree(d, ignore_errors=True)
        row = {"class": cls, "name": FASHION_CLASSES[cls], "n_train": len(ds.train), "n_val": len(ds.val),
               "n_test": len(ds.test), "wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
               "load_before": l0, "load_after": C.load()}
        row.update({m: res[m]["auroc"] for m in methods if m in res})
        row["results"] = res
        per_class.append(row)
        print(f"fashion class {cls}: " + ", ".join(f"{m} {row[m]:.3f}" for m in methods if m in row)
              + f" ({row['wall_s']:.0f} s)", flush=True)
        C.write_json(args.out.with_suffix(".partial.json"), {**out, "fashion": {"per_class": per_class}})
    wall = time.perf_counter() - t_all
    return {"per_class": per_class, **fashion_tables(per_class, rules, args.families), "wall_s": wall, "load_start": l_start,
            "load_end": C.load()}


if __name__ == "__main__":
    main()
