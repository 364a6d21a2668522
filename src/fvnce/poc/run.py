"""Running the proof of concept end to end: plan, grid, assessment, choice, extras, then
``summary.json`` and ``report.html`` in the output folder."""

from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..checkpoint import atomic_write_json
from ..criteria import criteria_record
from ..data import load_dataset
from ..errors import ConfigError
from ..image_plan import linear_plan, poc_plan
from ..noise import make_noise
from ..report import build_report
from ..fileio import finite_json
from ..runs.output import check_output, replacing
from ..train import TrainingInterrupted
from ..user_vae import check_user_vae
from .assess import assess_runs
from .choose import recommend
from .extras import poc_extras
from .grid import isolation_forest, train_grid, val_counts
from .plan import PocConfig, default_noises, make_plan, mixture_plan
from .production import production_commands
from .union import recommend_union

__all__ = ["run_poc"]


def run_poc(config: PocConfig, out_dir: str | Path, *, log: Callable[[str], None] = lambda m: None,
            progress: bool = True, workers: int = 1, overwrite: bool = False) -> dict:
    """Train, evaluate and compare; write ``summary.json`` and ``report.html``.

    ``workers > 1`` trains the FVNCE runs in that many processes (spawned; each with
    ``cores // workers`` torch threads) once the VAE they start from has finished; the
    runs and their seeds are the same as with one worker.  An ``out_dir`` that holds a poc
    or a run is refused unless ``overwrite``; then the new poc is built beside it and
    swapped in at the end (:mod:`fvnce.runs.output`: an error or Ctrl-C leaves the old one
    as it was)."""
    t0 = time.perf_counter()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"--workers must be a positive integer, got {workers!r}")
    rules = config.validate()
    out_dir = Path(out_dir)
    replace = check_output(out_dir, overwrite)
    try:
        with replacing(out_dir, replace) as work:
            return _run_poc_into(config, rules, work, out_dir, t0, log, progress, workers)
    except TrainingInterrupted as exc:
        if not replace:
            raise
        raise TrainingInterrupted(f"{str(exc).split(';')[0]}; the new poc was discarded and {out_dir} was left as it "
                                  "was", exc.step, None) from None


def _checked_inputs(config: PocConfig, noises: list[str], dataset) -> dict[str, Any]:
    """Your own VAE and the noise plug-ins checked against the data before anything is
    written (a mismatch is an input error); the plug-ins fitted, by name."""
    if config.vae is not None:
        check_user_vae(config.vae, dataset)
    return {n: make_noise(n, dataset.train, seed=config.train.seed) for n in noises if ":" in n}


def _run_poc_into(config: PocConfig, rules: list, out_dir: Path, final: Path, t0: float, log, progress: bool,
                  workers: int) -> dict:
    """:func:`run_poc` into the folder ``out_dir``, which becomes ``final`` when it is done."""
    dataset = load_dataset(config.data)
    for note in dataset.notes:
        log(f"fvnce: note: {note}")
    config = poc_plan(config, dataset, log)  # noises, steps, learning curve left to the data
    has_labels = dataset.val_labels is not None and bool(dataset.val_labels.any())
    noises = config.noises or default_noises(dataset.binary, tilted=config.model in ("auto", "tilted_vae"))
    steps = config.steps()
    fitted = _checked_inputs(config, noises, dataset)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = make_plan(config, rules, noises, dataset, steps, out_dir)
    runs = train_grid(plan, config.data, dataset, fitted, out_dir, workers, log, progress)

    counts = val_counts(dataset) if has_labels else None
    assess_runs(runs, counts)
    for r in runs:
        for line in ([r["status_reason"]] if r.get("status") == "degraded" else []) + r["warnings"]:
            log(f"fvnce: {r['name']}: {line}")
    recommended = recommend(runs, has_labels, counts)
    if not has_labels:
        recommended = recommend_union(recommended, runs, dataset, out_dir, config.alarm_rate, log)
    if recommended is not None and recommended.get("run"):
        recommended.update(production_commands(recommended, dict(plan), final, config.data.source))
    baselines = [isolation_forest(dataset, config.train.seed)] if config.baselines else []
    extras = poc_extras(config, dict(plan), recommended, runs, dataset, out_dir, log)
    summary = {
        "fvnce_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": _data_record(config, dataset, has_labels, counts),
        "alarm_rate": config.alarm_rate,
        "criteria": criteria_record(),
        "steps_per_run": steps,
        "noises": noises,
        "rules": config.rules,
        "mixtures": mixture_plan(config, dataset),
        "ppca": linear_plan(config, dataset),
        "runs": runs,
        "baselines": baselines,
        "recommended": recommended,
        "toy_2d": dataset.dim == 2,
        **extras,
    }
    summary["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "summary.json", finite_json(summary))
    build_report(out_dir)
    summary["wall_time_s"] = time.perf_counter() - t0
    atomic_write_json(out_dir / "summary.json", finite_json(summary))
    return summary


def _data_record(config: PocConfig, dataset, has_labels: bool, counts: dict | None) -> dict:
    """``summary.json``'s ``data``: the source, its split and what the poc found in it."""
    return {"source": config.data.source, "spec": config.data.to_dict(), "n_train": len(dataset.train),
            "n_val": len(dataset.val), "n_test": len(dataset.test), "dim": dataset.dim,
            "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
            "binary": bool(dataset.binary), "notes": list(dataset.notes), "has_labels": has_labels,
            "val_counts": counts, "contaminated": bool(config.data.contaminated),
            "n_train_anomalies": None if dataset.train_labels is None else int(dataset.train_labels.sum())}
