"""Training and evaluating the poc's grid of runs (here or in worker processes), each run
recorded as a summary entry; and the IsolationForest baseline."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

from .. import evaluate as ev
from ..criteria import VAE_RUN
from ..data import DataSpec, load_dataset
from ..errors import FvnceError
from ..noise import make_noise
from ..rules import RULES
from ..runs import BASE_NOISE, RunConfig, evaluate_run, train_run
from ..train import DivergenceError, TrainingInterrupted
from ..runs.training import adopt_run

__all__ = ["METRIC_KEYS", "isolation_forest", "run_one", "train_grid", "val_counts"]

METRIC_KEYS = ("log_likelihood", "log_likelihood_se", "log_likelihood_reliable", "noise_accuracy", "auroc",
               "auprc", "fpr_at_95_tpr")


def _metrics(evaluation: dict) -> tuple[dict, dict]:
    test = {k: evaluation.get(k) for k in METRIC_KEYS}
    val = {k: (evaluation.get("val") or {}).get(k) for k in METRIC_KEYS}
    return test, val


def val_counts(dataset) -> dict:
    """Normal and anomalous rows of the validation split (for AUROC standard errors)."""
    n1 = int((dataset.val_labels != 0).sum())
    return {"normal": int(len(dataset.val_labels)) - n1, "anomaly": n1}


def rule_params(options: dict) -> dict:
    """The run's rule parameter as the registry declares it (``{"alpha": 1.5}``); empty for
    rules without one, and for rules whose parameter mirrors an objective option and has no
    flag of its own (logistic's ``nu``)."""
    cls = RULES.get(options.get("rule"))
    key = cls.param if cls is not None and cls.flag else None
    return {key: options[key]} if key in options else {}


def run_one(name: str, rc: RunConfig, dataset, fitted: dict, out_dir: Path, log) -> dict:
    """Train and evaluate one run of the grid; its summary entry (errors recorded, not raised)."""
    entry: dict[str, Any] = {"name": name, "objective": rc.objective, "model": None, "noise": rc.noise,
                             "rule": rc.objective_options.get("rule"), "run_dir": f"runs/{name}",
                             "rule_params": rule_params(rc.objective_options),
                             "status": "ok", "error": None, "metrics": {}, "val_metrics": {},
                             "started_from": Path(rc.init_from).name if rc.init_from else None}
    t_run = time.perf_counter()
    try:
        if rc.noise != BASE_NOISE and rc.noise not in fitted:
            fitted[rc.noise] = make_noise(rc.noise, dataset.train, seed=rc.train.seed)
        run_dir = out_dir / "runs" / name
        if run_dir.exists():
            shutil.rmtree(run_dir)
        if rc.vae is not None and name == VAE_RUN:  # your own VAE, as it is: not trained
            adopt_run(rc, run_dir, dataset, log=log)
        else:
            train_run(rc, run_dir, dataset=dataset, noise=fitted.get(rc.noise), log=log, progress=False)
        entry["train_time_s"] = time.perf_counter() - t_run
        evaluation = evaluate_run(run_dir, dataset=dataset, k=rc.eval_k)
        entry["metrics"], entry["val_metrics"] = _metrics(evaluation)
        entry["log_z"] = evaluation.get("log_z")  # estimate, k-hat, effective sample size, proposal (unnormalised)
        entry["noise_term"] = evaluation.get("noise_term")  # k-hat and ESS of the noise-side weights
        entry["alarm"] = evaluation.get("alarm")  # the alarm threshold, and what it does on the test rows
        entry["operating_point"] = evaluation.get("operating_point")
        entry["model"] = rc.resolved_model(dataset.binary)[0]
    except DivergenceError as exc:
        entry.update(status="diverged", error=str(exc))
    except TrainingInterrupted as exc:  # Ctrl-C / SIGTERM stops the poc, not just this run
        raise TrainingInterrupted(f"poc interrupted at step {exc.step} of run {name}; it did not finish and wrote "
                                  f"no summary: run it again with --overwrite (or choose a new --out)",
                                  exc.step, None) from None
    except FvnceError as exc:
        entry.update(status="failed", error=str(exc))
    entry.setdefault("train_time_s", time.perf_counter() - t_run)
    return entry


#: per worker process: the data set and the fitted noises, loaded once
_WORKER: dict[str, Any] = {}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _pool_run(name: str, rc: RunConfig, data: DataSpec, out_dir: str) -> dict:
    """:func:`run_one` in a worker process (same data split and noise seeds)."""
    if _WORKER.get("spec") != data.to_dict():
        _WORKER.clear()
        _WORKER.update(spec=data.to_dict(), dataset=load_dataset(data), fitted={})
    return run_one(name, rc, _WORKER["dataset"], _WORKER["fitted"], Path(out_dir), lambda m: None)


def train_grid(plan: list[tuple[str, RunConfig]], data: DataSpec, dataset, fitted: dict, out_dir: Path,
               workers: int, log: Callable[[str], None], progress: bool) -> list[dict]:
    """Train and evaluate every run of ``plan``, the VAE (``plan[0]``) first: the FVNCE runs
    start from it (when it failed, they start fresh). With ``workers > 1`` the rest run in
    that many spawned processes, each with ``cores // workers`` torch threads.  The summary
    entries, in the order of the plan."""
    runs: list[dict] = []
    bar = _bar(len(plan), progress)
    pool = None
    if workers > 1 and len(plan) > 2:
        threads = max(1, (os.cpu_count() or 1) // workers)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_worker_init, initargs=(threads,))
    try:
        def finish(entry: dict) -> None:
            log(f"fvnce: {entry['name']}: {entry['status']}" + _brief(entry))
            runs.append(entry)
            if bar is not None:
                bar.update(1)

        # the VAE first (the FVNCE runs start from it), then the rest: here or in the pool
        first = run_one(plan[0][0], plan[0][1], dataset, fitted, out_dir, log)
        if first["status"] == "failed":
            for _, other in plan:
                other.init_from = None  # no base to start from: FVNCE runs start fresh
        finish(first)
        if pool is not None:
            futures = [pool.submit(_pool_run, name, rc, data, str(out_dir)) for name, rc in plan[1:]]
            for fut in futures:
                finish(fut.result())
        else:
            for name, rc in plan[1:]:
                finish(run_one(name, rc, dataset, fitted, out_dir, log))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if bar is not None:
        bar.close()
    return runs


def isolation_forest(dataset, seed: int) -> dict:
    """The IsolationForest baseline's summary entry (empty metrics without test labels)."""
    entry: dict[str, Any] = {"name": "isolation_forest", "metrics": {}, "val_metrics": {}, "roc": None, "scores": None}
    if dataset.test_labels is None:
        return entry
    t = time.perf_counter()
    s_val = ev.isolation_forest_scores(dataset.train.numpy(), dataset.val.numpy(), seed=seed)
    s_test = ev.isolation_forest_scores(dataset.train.numpy(), dataset.test.numpy(), seed=seed)
    mv = ev.anomaly_metrics(s_val, dataset.val_labels.numpy())
    mt = ev.anomaly_metrics(s_test, dataset.test_labels.numpy())
    keep = ("auroc", "auprc", "fpr_at_95_tpr")
    entry["metrics"] = {k: mt[k] for k in keep}
    entry["val_metrics"] = {k: mv[k] for k in keep}
    entry["roc"] = mt.get("roc")
    lab = dataset.test_labels.numpy().astype(bool)
    entry["scores"] = {"normal": s_test[~lab].tolist(), "anomaly": s_test[lab].tolist()}
    entry["train_time_s"] = time.perf_counter() - t
    return entry


def _brief(entry: dict) -> str:
    m = entry["metrics"]
    parts = [f"{k}={m[k]:.4g}" for k in ("auroc", "log_likelihood") if m.get(k) is not None]
    return (" (" + ", ".join(parts) + ")") if parts else (f" ({entry['error']})" if entry["error"] else "")


def _bar(total: int, progress: bool):
    if not progress:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, desc="fvnce poc", unit="run", dynamic_ncols=True)
