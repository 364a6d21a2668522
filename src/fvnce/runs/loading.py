"""A trained run rebuilt from its directory, and the anomaly scores of its rows."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import evaluate as ev
from ..checkpoint import load_checkpoint
from ..data import Dataset, load_dataset
from ..data.preprocess import Preprocessor
from ..errors import CheckpointError
from ..noise import BaseModelNoise, load_noise
from ..user_vae import run_module_file
from .build import build_parts
from .config import BASE_NOISE, RunConfig
from .files import PREPROCESS_NAME, load_noise_state, read_config, weights_file

__all__ = ["LoadedRun", "load_run", "score_rows"]


@dataclass
class LoadedRun:
    """A trained run rebuilt from its directory (on the CPU, in evaluation mode)."""

    run_dir: Path
    record: dict
    config: RunConfig
    model: torch.nn.Module
    encoder: torch.nn.Module | None
    objective: Any
    noise: Any
    preprocessor: Preprocessor
    weights: str

    @property
    def image_shape(self):
        return tuple(self.record["image_shape"]) if self.record.get("image_shape") else None


def load_run(run_dir: str | Path, *, weights: str = "best", dataset: Dataset | None = None) -> LoadedRun:
    """Rebuild model, encoder, noise and preprocessing from a run directory.

    ``weights="best"`` takes the best-validation parameters when the run kept them, else
    the latest checkpoint.  Plug-in noises are re-created from the training data.
    """
    run_dir = Path(run_dir)
    record = read_config(run_dir)
    config = RunConfig.from_dict(record["run"])
    try:
        pre = Preprocessor.from_state(json.loads((run_dir / PREPROCESS_NAME).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is incomplete: {PREPROCESS_NAME} is missing") from None
    except ValueError as exc:
        raise CheckpointError(f"{run_dir / PREPROCESS_NAME} is corrupt: {exc}") from None
    module_file = None
    if config.vae is not None:  # the user's own VAE: its copy in the run folder, checked against its hash
        module_file = run_module_file(run_dir)
    parts = build_parts(config, record["x_dim"], record.get("image_shape"), record["binary"], module_file=module_file)
    model, encoder = parts.model, parts.encoder
    path, used = weights_file(run_dir, weights)
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"])
        if encoder is not None and ckpt.get("encoder") is not None:
            encoder.load_state_dict(ckpt["encoder"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the run's model: {str(exc).splitlines()[0]}") from None
    noise_state = load_noise_state(run_dir)
    data = None
    if isinstance(noise_state, dict) and noise_state.get("name") == "plugin":
        data = (dataset or load_dataset(config.data)).train
    if isinstance(noise_state, dict) and noise_state.get("name") == BASE_NOISE:
        noise = BaseModelNoise.from_model(model)
    else:
        noise = load_noise(noise_state, data=data)
    model.eval()
    if encoder is not None:
        encoder.eval()
    return LoadedRun(run_dir, record, config, model, encoder, parts.objective, noise, pre, used)


def score_rows(run: LoadedRun, x, *, k: int | None = None) -> np.ndarray:
    """The anomaly score (negative estimated log-density) of each row of ``x``, rows
    already preprocessed (``run.preprocessor.transform``), with ``k`` importance samples
    (default: the run's ``eval_k``) drawn from torch's global random state: the scores
    ``fvnce score`` writes (it seeds that state with the run's seed + 2 first)."""
    xt = torch.as_tensor(np.asarray(x)).to(next(run.model.parameters()).dtype)
    return ev.anomaly_scores(run.model, run.encoder, xt, k=k or run.config.eval_k).numpy()
