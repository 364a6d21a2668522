"""Run directories: one training run from data to evaluation, on disk.

Data flow: data spec -> :func:`fvnce.data.load_dataset` -> noise fitted on the training
split -> model + objective -> :class:`fvnce.train.Trainer` -> run directory ->
:func:`evaluate_run` -> report.  A run directory holds

    config.json        everything needed to rebuild model, noise and data (plain JSON)
    preprocess.json    the fitted preprocessing, re-applied at scoring time
    noise.pt           the fitted noise (tensors and plain data only)
    checkpoint.pt      latest training state; best.pt the best-validation parameters
    metrics.jsonl      training curves
    evaluation.json    metrics on validation and test data; samples.npy model samples

Every file is written atomically.  Nothing here prints; callers pass ``log``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__, distributed
from .checkpoint import atomic_write_bytes, atomic_write_json, atomic_torch_save, load_checkpoint
from .data import DataSpec, Dataset, load_dataset, prepare_scoring_data
from .data.preprocess import Preprocessor
from .errors import CheckpointError, ConfigError
from .models import MODELS, make_model
from .noise import NOISES, load_noise, make_noise
from .objectives import OBJECTIVES, make_objective
from .train import CHECKPOINT_NAME, TrainConfig, Trainer

__all__ = ["RunConfig", "LoadedRun", "evaluate_run", "load_run", "sample_run", "score_file", "train_run"]

CONFIG_NAME = "config.json"
PREPROCESS_NAME = "preprocess.json"
NOISE_NAME = "noise.pt"
EVALUATION_NAME = "evaluation.json"
SAMPLES_NAME = "samples.npy"


#: the noise made of a tilted model's own frozen base VAE (fvnce.noise.BaseModelNoise)
BASE_NOISE = "base"


def _default_noise(binary: bool) -> str:
    return "marginals" if binary else "full_gaussian"


@dataclass
class RunConfig:
    """Everything a training run needs besides the data values themselves.

    ``model="auto"`` picks a VAE for ``elbo``/``iwae`` and its energy-tilted
    (unnormalised) version for the noise-contrastive objectives, with a Bernoulli
    decoder for binary data and a Gaussian one otherwise.  ``noise="auto"`` picks the
    product of marginals for binary data and a full-covariance Gaussian otherwise.
    """

    data: DataSpec = field(default_factory=DataSpec)
    objective: str = "fvnce"
    objective_options: dict[str, Any] = field(default_factory=dict)
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    noise: str = "auto"
    noise_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_k: int = 64
    #: a finished run whose weights start this one (a pre-trained VAE starts an
    #: energy-tilted model: its base and encoder are copied, the tilt starts at zero)
    init_from: str | None = None

    def validate(self) -> None:
        """Check names and options before any data is read or file written."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; valid objectives: {', '.join(OBJECTIVES)}")
        make_objective(self.objective, **self.objective_options)
        if self.model != "auto" and self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; valid models: auto, {', '.join(MODELS)}")
        check_model_sizes(self.model_options)
        if self.noise not in ("auto", BASE_NOISE) and ":" not in self.noise and self.noise not in NOISES:
            raise ConfigError(f"unknown noise {self.noise!r}; valid noises: auto, {BASE_NOISE}, "
                              f"{', '.join(sorted(NOISES))}, or module:callable")
        if self.noise == BASE_NOISE:
            if self.objective != "fvnce":
                raise ConfigError(f"noise {BASE_NOISE!r} (the frozen base VAE of a tilted model) works with "
                                  f"objective fvnce, not {self.objective}")
            if self.model not in ("auto", "tilted_vae"):
                raise ConfigError(f"noise {BASE_NOISE!r} needs model tilted_vae (or auto), got {self.model!r}")
        if isinstance(self.eval_k, bool) or not isinstance(self.eval_k, int) or self.eval_k < 1:
            raise ConfigError(f"eval_k must be a positive integer, got {self.eval_k!r}")

    def resolved_model(self, binary: bool) -> tuple[str, dict]:
        opts = dict(self.model_options)
        name = self.model
        if name == "auto":
            name = "vae" if self.objective in ("elbo", "iwae") else "tilted_vae"
        if name in ("vae", "tilted_vae", "conv_vae"):
            opts.setdefault("likelihood", "bernoulli" if binary else "gaussian")
        if self.noise == BASE_NOISE:  # a noise must stay fixed: the base it samples from is frozen
            opts["freeze_base"] = True
        return name, opts

    def resolved_noise(self, binary: bool) -> str:
        return _default_noise(binary) if self.noise == "auto" else self.noise

    def to_dict(self) -> dict:
        return {"data": self.data.to_dict(), "objective": self.objective,
                "objective_options": dict(self.objective_options), "model": self.model,
                "model_options": _jsonable(self.model_options), "noise": self.noise,
                "noise_options": _jsonable(self.noise_options), "train": self.train.to_dict(), "eval_k": self.eval_k,
                "init_from": self.init_from}

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown configuration key {bad[0]!r}; valid keys: {', '.join(sorted(known))}")
        d = dict(d)
        if "data" in d:
            d["data"] = DataSpec.from_dict(d["data"]) if isinstance(d["data"], dict) else d["data"]
        if "train" in d:
            d["train"] = TrainConfig.from_dict(d["train"]) if isinstance(d["train"], dict) else d["train"]
        return cls(**d)


def check_model_sizes(options: dict) -> None:
    """Latent and hidden sizes must be positive integers (torch would fail with a traceback
    on a negative one and silently build an empty layer for zero)."""
    for key in ("z_dim", "h_dim"):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, got {v!r}")
    for key in ("hidden", "tilt_hidden"):
        v = options.get(key)
        if v is not None and (not isinstance(v, (list, tuple))
                              or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in v)):
            raise ConfigError(f"{key} must be a list of positive integers, got {v!r}")


def _jsonable(d: dict) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


# --- building blocks ----------------------------------------------------------------------

def _build(config: RunConfig, x_dim: int, image_shape, binary: bool):
    name, opts = config.resolved_model(binary)
    if image_shape is not None:
        opts.setdefault("image_shape", tuple(image_shape))
    model, encoder = make_model(name, x_dim, **opts)
    objective = make_objective(config.objective, **config.objective_options)
    objective.check_model(model)
    if not objective.uses_encoder:
        encoder = None
    return name, opts, model, encoder, objective


def _check_noise_support(noise, binary: bool, model_name: str, opts: dict) -> None:
    discrete_model = opts.get("likelihood") == "bernoulli" or model_name == "rbm"
    if discrete_model and not getattr(noise, "discrete", False):
        raise ConfigError(f"noise {noise.name!r} is a continuous density but the model ({model_name}, binary "
                          "data) is a probability mass function, so their ratio is meaningless; use a discrete "
                          "noise for binary data: marginals, gmm or kde")
    if not discrete_model and getattr(noise, "discrete", False):
        raise ConfigError(f"noise {noise.name!r} is discrete but the model is a density; use a continuous noise")


def train_run(config: RunConfig, run_dir: str | Path, *, resume: bool = False, dataset: Dataset | None = None,
              noise=None, log: Callable[[str], None] = lambda m: None, progress: bool | None = None):
    """Train one run into ``run_dir`` (created only once every input has been checked).

    ``dataset`` and ``noise`` may be passed to share them between runs (the proof of
    concept does).  With ``resume=True`` the run's own saved configuration is used; only
    ``steps``/``epochs`` of a ``config`` passed along are taken (to train longer).
    Returns ``(trainer_result, dataset)``.
    """
    run_dir = Path(run_dir)
    if resume:
        saved = _read_config(run_dir)
        length = {k: v for k, v in (config.train.to_dict().items() if config is not None else ())
                  if k in ("steps", "epochs")}
        config = RunConfig.from_dict(saved["run"])
        if length:  # the only settings a resumed run may change: how long it trains
            config.train = TrainConfig.from_dict({**config.train.to_dict(), **length})
        if progress is not None:
            config.train.progress = progress
    config.validate()
    if progress is not None:
        config.train.progress = progress
    if resume:  # fail before reading (possibly large) data when the run cannot be resumed
        if not (run_dir / CHECKPOINT_NAME).exists():
            raise CheckpointError(f"nothing to resume: no {CHECKPOINT_NAME} in {run_dir}")
        load_checkpoint(run_dir / CHECKPOINT_NAME)
        noise_state = _load_noise_state(run_dir)
    else:
        _check_new_run_dir(run_dir)
    if dataset is None:
        dataset = load_dataset(config.data)
        for note in dataset.notes:
            log(f"fvnce: note: {note}")
    torch.manual_seed(config.train.seed)
    name, opts, model, encoder, objective = _build(config, dataset.dim, dataset.image_shape, dataset.binary)
    base_noise = config.noise == BASE_NOISE
    if base_noise:
        noise = None  # built from the model once its base holds the starting weights
    elif resume:
        noise = load_noise(noise_state, data=dataset.train)
    elif noise is None:  # fitted once (rank 0 under torch.distributed) and broadcast
        noise = distributed.fit_on_main(
            lambda: make_noise(config.resolved_noise(dataset.binary), dataset.train, seed=config.train.seed,
                               **config.noise_options),
            lambda fitted: fitted.state(), lambda state: load_noise(state, data=dataset.train))
    if config.init_from and not resume:
        _warm_start(model, encoder, config.init_from)
        log(f"fvnce: starting from the weights of {config.init_from}")
    if base_noise:
        if not config.init_from and not resume:
            log(f"fvnce: note: noise {BASE_NOISE!r} without --init-from samples an untrained base VAE; "
                "start from a trained VAE run")
        noise = _base_noise(model, resume, run_dir)
    for w in getattr(noise, "warnings", []):
        log(f"fvnce: note: {w}")
    _check_noise_support(noise, dataset.binary, name, opts)

    # the trainer checks the device, precision and parameters: before anything is written
    trainer = Trainer(model, encoder, objective, noise, config.train, run_dir=run_dir, log=log)
    if not resume:  # rank 0 only under torch.distributed (its errors reach every rank)
        distributed.main_first(lambda: _write_run_files(run_dir, config, dataset, name, opts, objective, noise))
    result = trainer.fit(dataset.train, normal_rows(dataset.val, dataset.val_labels), resume=resume)
    return result, dataset


def _base_noise(model, resume: bool, run_dir: Path):
    """The ``base`` noise of a tilted model; on resume its frozen base comes from the
    checkpoint first (the noise must be the one the run started with)."""
    from .noise import BaseModelNoise

    if resume:
        ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
        model.load_state_dict(ckpt["model"])
    return BaseModelNoise.from_model(model)


def _check_new_run_dir(run_dir: Path) -> None:
    """A new run goes into a new (or empty) folder, or replaces an earlier fvnce run."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"output {run_dir} exists and is not a directory; choose a new --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not (run_dir / CONFIG_NAME).exists():
            raise ConfigError(f"output directory {run_dir} exists and is not an fvnce run; choose a new --out")
    parent = next((a for a in run_dir.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"cannot create {run_dir}: {parent} is a file, not a directory")


def _write_run_files(run_dir: Path, config: RunConfig, dataset: Dataset, name: str, opts: dict, objective,
                     noise) -> None:
    _check_new_run_dir(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    for stale in (EVALUATION_NAME, SAMPLES_NAME, "report.html"):
        (run_dir / stale).unlink(missing_ok=True)
    atomic_write_json(run_dir / CONFIG_NAME, _config_record(config, dataset, name, opts, objective, noise))
    atomic_write_json(run_dir / PREPROCESS_NAME, dataset.preprocessor.state())
    atomic_torch_save(noise.state(), run_dir / NOISE_NAME)


def normal_rows(x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The rows labelled normal (all rows when there are no labels): the validation loss
    measures fit to the data distribution, which the anomalies are not part of."""
    return x if labels is None else x[labels == 0]


def _warm_start(model, encoder, source: str) -> None:
    """Copy a finished run's parameters into ``model`` (or into its ``base`` when the
    model is an energy-tilted version of the source) and into ``encoder``."""
    src = Path(source)
    path = src / "best.pt" if (src / "best.pt").exists() else src / "checkpoint.pt"
    if not (src / CONFIG_NAME).exists():
        raise ConfigError(f"--init-from {source}: not an fvnce run directory (no {CONFIG_NAME})")
    ckpt = load_checkpoint(path)
    target = model.base if hasattr(model, "base") and not _fits(model, ckpt["model"]) else model
    try:
        target.load_state_dict(ckpt["model"])
        if encoder is not None and ckpt.get("encoder") is not None:
            encoder.load_state_dict(ckpt["encoder"])
    except RuntimeError as exc:
        raise ConfigError(f"--init-from {source}: its model does not match this one "
                          f"({str(exc).splitlines()[0]}); use the same model size options") from None


def _fits(module, state: dict) -> bool:
    return set(module.state_dict()) == set(state)


def _config_record(config: RunConfig, dataset: Dataset, model_name: str, model_opts: dict, objective, noise) -> dict:
    return {
        "fvnce_version": __version__,
        "run": config.to_dict(),
        "data": config.data.to_dict(),
        "model": {"name": model_name, "options": _jsonable(model_opts)},
        "objective": objective.config(),
        "noise": {"name": noise.name, "options": _jsonable(config.noise_options)},
        "train": config.train.to_dict(),
        "x_dim": dataset.dim,
        "image_shape": list(dataset.image_shape) if dataset.image_shape else None,
        "binary": bool(dataset.binary),
        "feature_names": list(dataset.feature_names),
    }


def _read_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG_NAME
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    if not path.exists():
        raise CheckpointError(f"{run_dir} is not an fvnce run directory (no {CONFIG_NAME})")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(cfg, dict) or "run" not in cfg:
            raise ValueError("missing 'run' section")
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt: {exc}") from None
    return cfg


# --- loading a trained run ------------------------------------------------------------------

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
    record = _read_config(run_dir)
    config = RunConfig.from_dict(record["run"])
    try:
        pre = Preprocessor.from_state(json.loads((run_dir / PREPROCESS_NAME).read_text(encoding="utf-8")))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is incomplete: {PREPROCESS_NAME} is missing") from None
    except ValueError as exc:
        raise CheckpointError(f"{run_dir / PREPROCESS_NAME} is corrupt: {exc}") from None
    if record.get("fvnce_version", "0.1.0") == "0.1.0" and "tilt_bound" not in config.model_options \
            and config.resolved_model(record["binary"])[0] == "tilted_vae":
        config.model_options["tilt_bound"] = None  # runs of 0.1.0 had an unbounded tilt
    _, _, model, encoder, objective = _build(config, record["x_dim"], record.get("image_shape"), record["binary"])
    path = run_dir / "best.pt"
    used = "best"
    if weights != "best" or not path.exists():
        path, used = run_dir / "checkpoint.pt", "last"
    ckpt = load_checkpoint(path)
    try:
        model.load_state_dict(ckpt["model"])
        if encoder is not None and ckpt.get("encoder") is not None:
            encoder.load_state_dict(ckpt["encoder"])
    except (KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{path} does not match the run's model: {str(exc).splitlines()[0]}") from None
    noise_state = _load_noise_state(run_dir)
    data = None
    if isinstance(noise_state, dict) and noise_state.get("name") == "plugin":
        data = (dataset or load_dataset(config.data)).train
    if isinstance(noise_state, dict) and noise_state.get("name") == BASE_NOISE:
        from .noise import BaseModelNoise

        noise = BaseModelNoise.from_model(model)
    else:
        noise = load_noise(noise_state, data=data)
    model.eval()
    if encoder is not None:
        encoder.eval()
    return LoadedRun(run_dir, record, config, model, encoder, objective, noise, pre, used)


def _load_noise_state(run_dir: Path):
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


def _check_output_file(out: Path) -> None:
    """Checked before any work: the output's folder exists and the output is not a folder."""
    if out.is_dir():
        raise ConfigError(f"output {out} is a directory; give a file name")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"cannot write {out}: folder {parent} does not exist")


# --- evaluation -------------------------------------------------------------------------------

def _split_metrics(run: LoadedRun, x: torch.Tensor, labels, log_z, k: int, n_samples_acc: int = 2000):
    """Metrics of one split.  ``log_likelihood`` is the mean over the normal rows,
    ``log_likelihood_se = std(ll) / sqrt(n)`` its standard error over those rows (Monte
    Carlo spread of the rows only: the error of an estimated ``log Z`` shifts every row
    alike and is not in it; None for fewer than two rows), ``log_likelihood_reliable``
    True for normalised models, else ``log_z.reliable``."""
    from . import evaluate as ev

    x = x.to(next(run.model.parameters()).dtype)
    out: dict[str, Any] = {}
    ll = ev.log_likelihood(run.model, run.encoder, x, k=k, log_z=log_z)
    normal = torch.ones(len(x), dtype=torch.bool) if labels is None else (labels == 0)
    lln = ll[normal].double()
    out["log_likelihood"] = float(lln.mean()) if len(lln) else None
    out["log_likelihood_se"] = float(lln.std() / math.sqrt(len(lln))) if len(lln) > 1 else None
    out["log_likelihood_reliable"] = True if run.model.normalised else bool(log_z.reliable)
    xn = x[normal][:n_samples_acc]
    out["noise_accuracy"] = ev.noise_accuracy(run.model, run.encoder, xn, run.noise) if len(xn) else None
    scores = -ll  # the anomaly score: negative estimated log-density (log Z only shifts it)
    out["_scores"] = scores
    if labels is not None:
        m = ev.anomaly_metrics(scores.numpy(), labels.numpy())
        out.update({key: m[key] for key in ("auroc", "auprc", "fpr_at_95_tpr")})
        out["_roc"] = m.get("roc")
    else:
        out.update({"auroc": None, "auprc": None, "fpr_at_95_tpr": None, "_roc": None})
    return out


def evaluate_run(run_dir: str | Path, *, dataset: Dataset | None = None, data_file: str | None = None,
                 k: int | None = None, n_samples: int = 64, write: bool = True) -> dict:
    """Evaluate a trained run on its validation and test splits (or on ``data_file``,
    preprocessed as in training) and write ``evaluation.json`` and ``samples.npy``.

    Metrics: log-likelihood in nats per example (an IWAE bound for normalised models,
    an importance-sampling estimate through log Z for unnormalised ones) with its
    standard error ``log_likelihood_se`` and ``log_likelihood_reliable``, balanced
    data-vs-noise accuracy, and where labels exist AUROC, AUPRC and the false-alarm rate
    at 95% detection, the anomaly score being the negative estimated log-density.

    Importance-weight diagnostics (:mod:`fvnce.diagnostics`): ``log_z = {log_z,
    ess_fraction, khat, reliable, proposal, candidates: {name: {log_z, ess_fraction, khat,
    reliable}}}`` (unnormalised models; None otherwise) and ``noise_term = {khat,
    ess_fraction, reliable}``, the diagnostics of the noise-side weights ``r(y), y ~ p_n``
    (the KL noise term; None when the run has no noise).  Non-finite values (the exact
    candidate's ``khat = -inf``) are written as null.
    """
    from . import evaluate as ev

    t0 = time.perf_counter()
    run = load_run(run_dir, dataset=dataset)
    k = k or run.config.eval_k
    torch.manual_seed(run.config.train.seed + 1)
    log_z, noise_w = None, None
    if not run.model.normalised:
        log_z = ev.estimate_log_partition(run.model, run.encoder, run.noise)
        noise_w = log_z.candidates.get("noise")
    if noise_w is None:  # normalised model (where it is cheap), or no noise candidate
        noise_w = ev.noise_weight_report(run.model, run.encoder, run.noise)
    diag = ("khat", "ess_fraction", "reliable")
    result: dict[str, Any] = {
        "fvnce_version": __version__, "weights": run.weights,
        "log_likelihood_kind": "iwae_bound" if run.model.normalised else "estimate",
        "log_z": None if log_z is None else {
            "log_z": log_z.log_z, "ess_fraction": log_z.ess_fraction, "khat": log_z.khat,
            "reliable": log_z.reliable, "proposal": log_z.proposal,
            "candidates": {name: {key: c[key] for key in ("log_z", *diag)} for name, c in log_z.candidates.items()}},
        "noise_term": None if noise_w is None else {key: noise_w[key] for key in diag},
    }
    if data_file is not None:
        x, raw_labels = prepare_scoring_data(data_file, run.preprocessor, label=run.config.data.label,
                                             return_labels=True)
        labels = _labels_from(raw_labels, run.config.data.normal)
        test = _split_metrics(run, torch.as_tensor(x), labels, log_z, k)
        val = None
    else:
        if dataset is None:
            dataset = load_dataset(run.config.data)
        test = _split_metrics(run, dataset.test, dataset.test_labels, log_z, k)
        val = _split_metrics(run, dataset.val, dataset.val_labels, log_z, k)
    scores, roc = test.pop("_scores"), test.pop("_roc")
    result.update(test)
    result["roc"] = roc
    if data_file is None and dataset.test_labels is not None:
        lab = dataset.test_labels.bool()
        result["scores"] = {"normal": scores[~lab].tolist(), "anomaly": scores[lab].tolist()}
    else:
        result["scores"] = None
    if val is not None:
        val.pop("_scores"), val.pop("_roc")
        result["val"] = val
    result["samples_file"], result["sampling_method"] = None, None
    if n_samples > 0 and write:
        try:
            samples, method = ev.sample(run.model, run.encoder, n_samples, noise=run.noise)
            result["samples_file"], result["sampling_method"] = SAMPLES_NAME, method
            if write:
                _atomic_npy(Path(run_dir) / SAMPLES_NAME, samples.detach().cpu().numpy())
        except NotImplementedError:
            pass
    result["wall_time_s"] = time.perf_counter() - t0
    if write:
        atomic_write_json(Path(run_dir) / EVALUATION_NAME, _finite_json(result))
    return _finite_json(result)


def _labels_from(raw_labels, normal) -> torch.Tensor | None:
    if raw_labels is None or normal is None:
        return None
    return torch.as_tensor(np.asarray([str(v) != str(normal) for v in raw_labels], dtype=np.int64))


def _finite_json(obj):
    """Replace NaN/inf floats by None so the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_json(v) for v in obj]
    return obj


def _atomic_npy(path: Path, array: np.ndarray) -> None:
    import io
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())


# --- scoring and sampling ------------------------------------------------------------------

def score_file(run_dir: str | Path, data_file: str, out: str | Path, *, k: int | None = None,
               missing: str | None = None) -> int:
    """Write one anomaly score per row of ``data_file`` (same order) to the CSV ``out``.

    The score is the negative estimated log-density (higher = more anomalous).  Returns
    the number of rows written.
    """
    from . import evaluate as ev

    _check_output_file(Path(out))
    run = load_run(run_dir)
    x = prepare_scoring_data(data_file, run.preprocessor, missing=missing)
    torch.manual_seed(run.config.train.seed + 2)
    xt = torch.as_tensor(x).to(next(run.model.parameters()).dtype)
    scores = ev.anomaly_scores(run.model, run.encoder, xt, k=k or run.config.eval_k).numpy()
    lines = ["row,score"] + [f"{i},{s:.9g}" for i, s in enumerate(scores)]
    from .checkpoint import atomic_write_text
    atomic_write_text(Path(out), "\n".join(lines) + "\n")
    return len(scores)


def sample_run(run_dir: str | Path, n: int, out: str | Path) -> str:
    """Draw ``n`` model samples into ``out``: ``.npy`` (in model space), or ``.png``
    (an image grid; image data only).  Returns the sampling method used."""
    from . import evaluate as ev

    out = Path(out)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"--n must be a positive integer, got {n!r}")
    if out.suffix not in (".npy", ".png"):
        raise ConfigError(f"sample output must end in .npy or .png, got {out.name!r}")
    _check_output_file(out)
    run = load_run(run_dir)
    if out.suffix == ".png" and run.image_shape is None:
        raise ConfigError("a .png grid needs image data; this run's data are not images: use .npy")
    torch.manual_seed(run.config.train.seed + 3)
    try:
        samples, method = ev.sample(run.model, run.encoder, n, noise=run.noise)
    except NotImplementedError as exc:
        raise ConfigError(f"this model cannot be sampled: {exc}") from None
    arr = samples.detach().cpu().numpy()
    if out.suffix == ".npy":
        _atomic_npy(out, arr)
    else:
        from .report.plots import image_grid_png
        atomic_write_bytes(out, image_grid_png(arr, run.image_shape, f"{n} samples ({method})"))
    return method
