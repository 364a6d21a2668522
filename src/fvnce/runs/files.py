"""The files of a run directory (their names: :mod:`fvnce.filenames`): written, checked and read.

Every file is written atomically."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..checkpoint import atomic_torch_save
from ..data import Dataset
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_json, jsonable
from ..filenames import (ALARM_NAME, BEST_NAME, CHECKPOINT_NAME, CONFIG_NAME, EVALUATION_NAME, NOISE_NAME,
                         PREPROCESS_NAME, REPORT_NAME, SAMPLES_NAME, SUMMARY_NAME, UNION_NAME)
from ..version import __version__

__all__ = ["ALARM_NAME", "BEST_NAME", "CHECKPOINT_NAME", "CONFIG_NAME", "EVALUATION_NAME", "NOISE_NAME",
           "PREPROCESS_NAME", "REPORT_NAME", "SAMPLES_NAME", "SUMMARY_NAME", "UNION_NAME", "check_new_run_dir", "check_output_file",
           "check_run_dir", "load_noise_state", "read_config", "weights_file", "write_run_files"]

if TYPE_CHECKING:
    from .config import RunConfig


def check_new_run_dir(run_dir: Path) -> None:
    """A new run's files go into a new (or empty) folder, or into a run folder that
    :func:`fvnce.runs.training.train_run` has checked (:mod:`fvnce.runs.output`)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output {run_dir} exists and is not a directory; choose a new --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / CONFIG_NAME).exists():
            raise ConfigError(f"output directory {run_dir} exists and is not an fvnce run; choose a new --out")
    parent = next((a for a in run_dir.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"cannot create {run_dir}: {parent} is a file, not a directory")


def write_run_files(run_dir: Path, config: RunConfig, dataset: Dataset, name: str, opts: dict, objective,
                    noise) -> None:
    """Write a new run's ``config.json``, ``preprocess.json`` and ``noise.pt`` (removing the
    results of an earlier run in the folder: they would not belong to this one)."""
    check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (EVALUATION_NAME, SAMPLES_NAME, ALARM_NAME, REPORT_NAME):
        (run_dir / stale).unlink(missing_ok=True)
    atomic_write_json(run_dir / CONFIG_NAME, _config_record(config, dataset, name, opts, objective, noise))
    atomic_write_json(run_dir / PREPROCESS_NAME, dataset.preprocessor.state())
    atomic_torch_save(noise.state(), run_dir / NOISE_NAME)


def _config_record(config: RunConfig, dataset: Dataset, model_name: str, model_opts: dict, objective, noise) -> dict:
    return {
        "fvnce_version": __version__,
        "run": config.to_dict(),
        "data": config.data.to_dict(),
        "model": {"name": model_name, "options": jsonable(model_opts)},
        "objective": objective.config(),
        "noise": {"name": noise.name, "options": jsonable(config.noise_options)},
        "train": config.train.to_dict(),
        "x_dim": dataset.dim,
        "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
        "binary": bool(dataset.binary),
        "feature_names": list(dataset.feature_names),
    }


def check_run_dir(run_dir: Path) -> None:
    """CheckpointError unless ``run_dir`` is a run (``config.json``) or a union of runs
    (``union.json``): checked before anything else a command does with it."""
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not (run_dir / CONFIG_NAME).is_file() and not (run_dir / UNION_NAME).is_file():
        raise CheckpointError(f"{run_dir} is not an fvnce run directory (no {CONFIG_NAME})")


def weights_file(run_dir: Path, weights: str = "best") -> tuple[Path, str]:
    """``(path, used)``: the parameters of a run that ``weights`` asks for -- ``best.pt`` (the
    best-validation parameters) when ``weights="best"`` and the run kept them, else the latest
    ``checkpoint.pt`` (``used``: ``"best"`` or ``"last"``)."""
    path = run_dir / BEST_NAME
    if weights != "best" or not path.exists():
        return run_dir / CHECKPOINT_NAME, "last"
    return path, "best"


def read_config(run_dir: Path) -> dict:
    """The run's ``config.json`` (as written by :func:`write_run_files`, older versions brought
    up to date); CheckpointError when ``run_dir`` is no run, a union of runs, or corrupt."""
    path = run_dir / CONFIG_NAME
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not path.exists():
        if (run_dir / UNION_NAME).is_file():
            raise CheckpointError(f"{run_dir} is a union of runs, not one run: only 'fvnce score' takes it; give "
                                  "one of its members (listed in its union.json) to this command")
        raise CheckpointError(f"{run_dir} is not an fvnce run directory (no {CONFIG_NAME})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict) or "run" not in cfg:
            raise ValueError("missing 'run' section")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    run = cfg["run"] if isinstance(cfg["run"], dict) else {}
    data = run.get("data")
    if isinstance(data, dict):
        data.setdefault("dequantize", "none")  # runs written before 0.3.0 were trained without
    model = cfg.get("model")
    if cfg.get("fvnce_version", "0.1.0") == "0.1.0" and isinstance(model, dict) and model.get("name") == "tilted_vae":
        opts = run.get("model_options", {})
        if isinstance(opts, dict) and "tilt_bound" not in opts:
            run["model_options"] = {**opts, "tilt_bound": None}  # runs of 0.1.0 had an unbounded tilt
    return cfg


def load_noise_state(run_dir: Path):
    """The fitted noise's state of ``noise.pt`` (plain data only); CheckpointError when
    it is missing or not such a file."""
    noise_path = run_dir / NOISE_NAME
    if not noise_path.exists():
        raise CheckpointError(f"{run_dir} is incomplete: {NOISE_NAME} is missing")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state = torch.load(noise_path, weights_only=True, map_location="cpu")
    except Exception as exc:  # corrupt or crafted file: never executed
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise CheckpointError(f"cannot read {noise_path} (corrupt, truncated or not plain data): {line}") from None
    if not isinstance(state, dict) or not isinstance(state.get("name"), str):
        raise CheckpointError(f"{noise_path} is not an fvnce noise file")
    return state


def check_output_file(out: Path) -> None:
    """Checked before any work: the output's folder exists and the output is not a folder."""
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {parent} does not exist")
