"""The proof of concept: every noise candidate x every FVNCE rule, plus baselines, on one
data split; evaluated, compared, and one configuration recommended on validation data.

Output directory::

    DIR/runs/<name>/     one run directory per trained configuration
    DIR/summary.json     runs, baselines, metrics, the recommendation and its criterion
    DIR/report.html      the self-contained report (fvnce.report)
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable


from . import __version__
from .checkpoint import atomic_write_json
from .data import DataSpec, load_dataset
from .errors import ConfigError, FvnceError
from .noise import NOISES, make_noise
from .rules import scoring_rule
from .runs import RunConfig, check_model_sizes, evaluate_run, train_run
from .train import DivergenceError, TrainConfig

__all__ = ["BUDGETS", "PocConfig", "parse_rule", "run_poc"]

#: training steps per run for each budget preset
BUDGETS = {"quick": 150, "default": 800, "long": 4000}
METRIC_KEYS = ("log_likelihood", "noise_accuracy", "auroc", "auprc", "fpr_at_95_tpr")


def parse_rule(text: str) -> tuple[str, dict]:
    """``kl`` | ``power:1.5`` | ``shifted_log:2`` -> (name, params), validated."""
    name, _, value = text.strip().partition(":")
    params: dict[str, float] = {}
    if value:
        key = {"power": "alpha", "shifted_log": "c", "logistic": "nu"}.get(name)
        if key is None:
            raise ConfigError(f"rule {name!r} takes no parameter (got {text!r})")
        try:
            params[key] = float(value)
        except ValueError:
            raise ConfigError(f"rule parameter in {text!r} is not a number") from None
    try:
        rule = scoring_rule(name, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bad = rule.convexity_violations()
    if bad:
        raise ConfigError(f"rule {text!r} cannot be used by fvnce: {bad[0]}")
    return name, params


def _rule_label(name: str, params: dict) -> str:
    return name + "".join(f"{v:g}" for v in params.values())


def default_noises(binary: bool) -> list[str]:
    return ["marginals", "gmm", "kde"] if binary else ["full_gaussian", "gmm", "kde"]


@dataclass
class PocConfig:
    data: DataSpec = field(default_factory=lambda: DataSpec(source="digits", normal="0"))
    noises: list[str] | None = None
    rules: list[str] = field(default_factory=lambda: ["kl", "power:1.5"])
    budget: str | int = "default"
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    objective_options: dict[str, Any] = field(default_factory=lambda: {"exp_mode": "linear", "tau": 10.0})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    baselines: bool = True
    eval_k: int = 32

    def steps(self) -> int:
        if isinstance(self.budget, int) and not isinstance(self.budget, bool):
            if self.budget < 1:
                raise ConfigError(f"--budget must be a positive number of steps, got {self.budget}")
            return self.budget
        if self.budget not in BUDGETS:
            raise ConfigError(f"unknown budget {self.budget!r}; use {', '.join(BUDGETS)} or a number of steps")
        return BUDGETS[self.budget]

    def validate(self) -> list[tuple[str, dict]]:
        self.steps()
        if not self.rules:
            raise ConfigError("--rules is empty")
        rules = [parse_rule(r) for r in self.rules]
        for n in self.noises or []:
            if ":" not in n and n not in NOISES:
                raise ConfigError(f"unknown noise {n!r}; valid noises: {', '.join(sorted(NOISES))}, or module:callable")
        check_model_sizes(self.model_options)
        return rules


def _metrics(ev: dict) -> tuple[dict, dict]:
    test = {k: ev.get(k) for k in METRIC_KEYS}
    val = {k: (ev.get("val") or {}).get(k) for k in METRIC_KEYS}
    return test, val


def _choose(runs: list[dict], has_labels: bool) -> dict | None:
    ok = [r for r in runs if r["status"] == "ok" and r["objective"] == "fvnce"]
    key, criterion = ("auroc", "highest validation AUROC") if has_labels else \
        ("log_likelihood", "highest validation log-likelihood")
    scored = [r for r in ok if r["val_metrics"].get(key) is not None]
    if not scored:
        return None
    best = max(scored, key=lambda r: (r["val_metrics"][key], r["val_metrics"].get("log_likelihood") or -1e300))
    v = best["val_metrics"][key]
    reason = (f"{best['name']} has the {criterion.split(' ', 1)[1]} ({v:.4g}) among {len(scored)} FVNCE runs; "
              "the choice used validation data only, test figures are reported for it separately")
    return {"run": best["name"], "criterion": criterion, "reason": reason}


def run_poc(config: PocConfig, out_dir: str | Path, *, log: Callable[[str], None] = lambda m: None,
            progress: bool = True, workers: int = 1) -> dict:
    """Train, evaluate and compare; write ``summary.json`` and ``report.html``.

    ``workers > 1`` trains the FVNCE runs in that many processes (spawned; each with
    ``cores // workers`` torch threads) once the VAE they start from has finished; the
    runs and their seeds are the same as with one worker."""
    t0 = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers!r}")
    rules = config.validate()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output {out_dir} exists and is not a directory; choose a new --out")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "summary.json").exists():
        raise ConfigError(f"output directory {out_dir} exists and is not an fvnce poc directory; choose a new --out")
    dataset = load_dataset(config.data)
    for note in dataset.notes:
        log(f"fvnce: note: {note}")
    has_labels = dataset.val_labels is not None and bool(dataset.val_labels.any())
    noises = config.noises or default_noises(dataset.binary)
    steps = config.steps()
    fitted: dict[str, Any] = {}
    for n in noises:  # user plug-ins are checked before anything is written: a bad one is an input error
        if ":" in n:
            fitted[n] = make_noise(n, dataset.train, seed=config.train.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    # The VAE of the same architecture is trained first: it is a baseline, and every
    # FVNCE run starts from its weights (an energy-tilted VAE whose tilt starts at zero),
    # so the noise-contrastive rules spend their budget on what the VAE got wrong.
    base_dir = out_dir / "runs" / "elbo-vae"
    plan: list[tuple[str, RunConfig]] = [("elbo-vae", RunConfig(
        data=config.data, objective="elbo", model="vae" if config.model == "auto" else config.model,
        model_options=dict(config.model_options), noise=noises[0], train=_train_cfg(config.train, steps),
        eval_k=config.eval_k))]
    warm = config.model == "auto"
    for noise_name in noises:
        for rule_name, params in rules:
            name = f"fvnce-{_rule_label(rule_name, params)}-{noise_name.replace(':', '.')}"
            plan.append((name, RunConfig(
                data=config.data, objective="fvnce",
                objective_options={"rule": rule_name, **params, **config.objective_options},
                model=config.model, model_options=dict(config.model_options), noise=noise_name,
                train=_train_cfg(config.train, steps), eval_k=config.eval_k,
                init_from=str(base_dir) if warm else None)))

    runs: list[dict] = []
    bar = _bar(len(plan), progress)
    pool = None
    if workers > 1 and len(plan) > 2:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

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
        first = _run_one(plan[0][0], plan[0][1], dataset, fitted, out_dir, log)
        if first["status"] == "failed":
            for _, other in plan:
                other.init_from = None  # no base to start from: FVNCE runs start fresh
        finish(first)
        if pool is not None:
            futures = [pool.submit(_pool_run, name, rc, config.data, str(out_dir)) for name, rc in plan[1:]]
            for fut in futures:
                finish(fut.result())
        else:
            for name, rc in plan[1:]:
                finish(_run_one(name, rc, dataset, fitted, out_dir, log))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    if bar is not None:
        bar.close()

    baselines = []
    if config.baselines:
        baselines.append(_isolation_forest(dataset, config.train.seed))
    summary = {
        "fvnce_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": {"source": config.data.source, "spec": config.data.to_dict(), "n_train": len(dataset.train),
                 "n_val": len(dataset.val), "n_test": len(dataset.test), "dim": dataset.dim,
                 "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
                 "binary": bool(dataset.binary), "notes": list(dataset.notes), "has_labels": has_labels},
        "steps_per_run": steps,
        "noises": noises,
        "rules": config.rules,
        "runs": runs,
        "baselines": baselines,
        "recommended": _choose(runs, has_labels),
        "toy_2d": dataset.dim == 2,
    }
    summary["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "summary.json", _finite(summary))
    from .report import build_report
    build_report(out_dir)
    summary["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "summary.json", _finite(summary))
    return summary


def _run_one(name: str, rc: RunConfig, dataset, fitted: dict, out_dir: Path, log) -> dict:
    """Train and evaluate one run of the grid; its summary entry (errors recorded, not raised)."""
    entry: dict[str, Any] = {"name": name, "objective": rc.objective, "model": None, "noise": rc.noise,
                             "rule": rc.objective_options.get("rule"), "run_dir": f"runs/{name}",
                             "rule_params": {k: v for k, v in rc.objective_options.items() if k in ("alpha", "c")},
                             "status": "ok", "error": None, "metrics": {}, "val_metrics": {}}
    t_run = time.perf_counter()
    try:
        if rc.noise not in fitted:
            fitted[rc.noise] = make_noise(rc.noise, dataset.train, seed=rc.train.seed)
        run_dir = out_dir / "runs" / name
        if run_dir.exists():
            import shutil
            shutil.rmtree(run_dir)
        train_run(rc, run_dir, dataset=dataset, noise=fitted[rc.noise], log=log, progress=False)
        entry["train_time_s"] = time.perf_counter() - t_run
        ev = evaluate_run(run_dir, dataset=dataset, k=rc.eval_k)
        entry["metrics"], entry["val_metrics"] = _metrics(ev)
        entry["log_z"] = ev.get("log_z")  # estimate, effective sample size and proposal (unnormalised models)
        entry["model"] = rc.resolved_model(dataset.binary)[0]
    except DivergenceError as exc:
        entry.update(status="diverged", error=str(exc))
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
    """:func:`_run_one` in a worker process (same data split and noise seeds)."""
    if _WORKER.get("spec") != data.to_dict():
        _WORKER.clear()
        _WORKER.update(spec=data.to_dict(), dataset=load_dataset(data), fitted={})
    return _run_one(name, rc, _WORKER["dataset"], _WORKER["fitted"], Path(out_dir), lambda m: None)


def _train_cfg(base: TrainConfig, steps: int) -> TrainConfig:
    cfg = copy.deepcopy(base)
    cfg.steps, cfg.epochs = steps, None
    cfg.eval_every = max(1, min(cfg.eval_every, steps // 8 or 1))
    cfg.checkpoint_every = max(cfg.checkpoint_every, steps // 4 or 1)
    cfg.progress = False
    return cfg


def _isolation_forest(dataset, seed: int) -> dict:
    from . import evaluate as ev

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


def _finite(obj):
    from .runs import _finite_json
    return _finite_json(obj)
