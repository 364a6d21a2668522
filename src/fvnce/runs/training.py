"""Training one run into its directory: data -> noise fitted on the training split ->
model + objective -> :class:`fvnce.train.Trainer` -> run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from .. import distributed
from ..checkpoint import load_checkpoint
from ..data import Dataset, load_dataset, normal_rows
from ..errors import ConfigError
from ..image_plan import continuous_images
from ..noise import load_noise, make_noise
from ..train import TrainConfig, Trainer, TrainingInterrupted
from ..train.state import save_best
from ..user_vae import check_user_vae, copy_module, run_module_file
from .alarm import calibrate_alarm
from .build import base_noise, build_parts, check_noise_support, warm_start
from .config import BASE_NOISE, RunConfig
from .files import (ALARM_NAME, BEST_NAME, CHECKPOINT_NAME, check_new_run_dir, load_noise_state, read_config,
                    write_run_files)
from .output import NEW_SUFFIX, check_output, replacing, sibling

__all__ = ["adopt_run", "train_run"]


def train_run(config: RunConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
              dataset: Dataset | None = None, noise=None, log: Callable[[str], None] = lambda m: None,
              progress: bool | None = None):
    """Train one run into ``run_dir`` (created only once every input has been checked).

    ``dataset`` and ``noise`` may be passed to share them between runs (the proof of
    concept does).  With ``resume=True`` the run's own saved configuration is used; only
    ``steps``/``epochs`` of a ``config`` passed along are taken (to train longer); a run
    stopped before its first checkpoint starts again from step 0 with its saved settings.
    A ``run_dir`` that holds a run or a poc is refused unless ``overwrite``; then the new
    run is built beside it and swapped in once trained (:mod:`fvnce.runs.output`: an error
    or Ctrl-C leaves the old one as it was).
    Once trained, the run's alarm threshold is set on its validation rows
    (:func:`fvnce.runs.alarm.calibrate_alarm`, ``alarm.json``).
    Returns ``(trainer_result, dataset)``.
    """
    run_dir = Path(run_dir)
    if resume:
        saved = read_config(run_dir)
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
    replace = False
    if resume and not (run_dir / CHECKPOINT_NAME).exists() and not (run_dir / BEST_NAME).exists():
        # stopped before its first checkpoint: nothing trained to keep, the settings are saved
        log(f"fvnce: {run_dir} has no checkpoint yet (stopped before the first one): training it from step 0 "
            "with its saved settings")
        resume = False
    elif not resume:
        replace = check_output(run_dir, overwrite)
        if replace and config.init_from and Path(config.init_from).resolve().is_relative_to(run_dir.resolve()):
            raise ConfigError(f"--init-from {config.init_from} is in {run_dir}, which --overwrite would replace; copy "
                              "it elsewhere first, or choose a new --out")
    main = distributed.is_main()
    try:
        with replacing(run_dir, replace and main) as work:
            return _train(config, run_dir if not replace else sibling(run_dir, NEW_SUFFIX), resume,
                          dataset, noise, log)
    except TrainingInterrupted as exc:
        if not replace:
            raise
        raise TrainingInterrupted(f"training interrupted at step {exc.step}; the new run was discarded and "
                                  f"{run_dir} was left as it was", exc.step, None) from None


def _train(config: RunConfig, run_dir: Path, resume: bool, dataset, noise, log):
    """:func:`train_run` into ``run_dir`` once the output folder has been checked."""
    if resume:  # fail before reading (possibly large) data when the run cannot be resumed
        resumed = load_checkpoint(run_dir / CHECKPOINT_NAME)
        noise_state = load_noise_state(run_dir)
    if dataset is None:
        dataset = load_dataset(config.data)
        for note in dataset.notes:
            log(f"fvnce: note: {note}")
    module_file = None
    if config.vae is not None:  # the user's own VAE (fvnce.user_vae): checked on the data before anything is written
        if resume:
            module_file = run_module_file(run_dir)
        else:
            check_user_vae(config.vae, dataset)
    torch.manual_seed(config.train.seed)
    name, opts, model, encoder, objective = build_parts(config, dataset.dim, dataset.image_shape, dataset.binary,
                                                        module_file=module_file,
                                                        load_weights=config.vae is not None and not resume
                                                        and not config.init_from)
    uses_base = config.noise == BASE_NOISE
    if uses_base:
        noise = None  # built from the model once its base holds the starting weights
    elif resume:
        noise = load_noise(noise_state, data=dataset.train)
    elif noise is None:  # fitted once (rank 0 under torch.distributed) and broadcast
        noise = distributed.fit_on_main(
            lambda: make_noise(config.resolved_noise(dataset.binary), dataset.train, seed=config.train.seed,
                               **config.noise_options),
            lambda fitted: fitted.state(), lambda state: load_noise(state, data=dataset.train))
    if config.init_from and not resume:
        warm_start(model, encoder, config.init_from)
        log(f"fvnce: starting from the weights of {config.init_from}")
    elif not resume and getattr(model, "starts_from_data", False):  # e.g. linear_gaussian init="pca"
        try:
            log(f"fvnce: {model.start_from_data(dataset.train, encoder, quantum=quantum(dataset))}")
        except ValueError as exc:
            raise ConfigError(f"model {name!r}: {exc}") from None
    if uses_base:
        if not config.init_from and not resume:
            log(f"fvnce: note: noise {BASE_NOISE!r} without --init-from samples an untrained base VAE; "
                "start from a trained VAE run")
        noise = base_noise(model, resumed["model"] if resume else None)
    resumed = None  # the trainer reads the checkpoint itself: do not hold this copy while training
    for w in getattr(noise, "warnings", []):
        log(f"fvnce: note: {w}")
    check_noise_support(noise, dataset.binary, name, opts)

    # the trainer checks the device, precision and parameters: before anything is written
    trainer = Trainer(model, encoder, objective, noise, config.train, run_dir=run_dir, log=log)
    if not resume:  # rank 0 only under torch.distributed (its errors reach every rank)
        distributed.main_first(lambda: write_run_files(run_dir, config, dataset, name, opts, objective, noise))
        if config.vae is not None and distributed.is_main():
            copy_module(run_dir, config.vae)
    elif distributed.is_main():  # the weights change: a threshold of the old ones must not outlive them
        (run_dir / ALARM_NAME).unlink(missing_ok=True)
    result = trainer.fit(dataset.train, normal_rows(dataset.val, dataset.val_labels), resume=resume)
    if distributed.is_main():
        calibrate_alarm(run_dir, dataset)
    return result, dataset


def quantum(dataset) -> float | None:
    """The step of the values of ``dataset`` when they are quantised: ``1/255`` for
    continuous 8-bit images scaled to [0, 1], else None."""
    return 1 / 255 if continuous_images(dataset.image_shape, dataset.binary) else None


def adopt_run(config: RunConfig, run_dir: str | Path, dataset, *, log=lambda m: None) -> dict[str, Any]:
    """A run folder for the user's VAE *as it is* (no training): the run files, the module
    copy, ``best.pt`` holding the given weights, and the alarm threshold set on the
    validation rows.  ``config`` is an ``elbo`` RunConfig with ``vae`` set."""
    run_dir = Path(run_dir)
    config.validate()
    if config.vae is None or config.objective != "elbo":
        raise ConfigError("adopt_run takes an elbo run with a user VAE")
    check_user_vae(config.vae, dataset)
    check_new_run_dir(run_dir)
    name, opts, model, encoder, objective = build_parts(config, dataset.dim, dataset.image_shape, dataset.binary,
                                                        load_weights=True)
    noise = make_noise(config.resolved_noise(dataset.binary), dataset.train, seed=config.train.seed,
                       **config.noise_options)
    write_run_files(run_dir, config, dataset, name, opts, objective, noise)
    copy_module(run_dir, config.vae)
    save_best(run_dir / BEST_NAME, 0, None, model, encoder)
    calibrate_alarm(run_dir, dataset)
    log(f"fvnce: your VAE {config.vae['file']}:{config.vae['function']} with weights {config.vae['weights']}, "
        "as it is (not trained)")
    return {"run_dir": str(run_dir)}
