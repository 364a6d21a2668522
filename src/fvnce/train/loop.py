"""The training loop: :class:`Trainer` and its ``fit``, which reads top to bottom --
batch, step, record, validate, checkpoint -- and hands every concern to its part (the
list is in :mod:`fvnce.train`).  Imports run one way: this module imports the parts, no
part imports it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from torch import Tensor, nn

from .. import distributed as _dist
from ..errors import CheckpointError, ConfigError
from . import state
from .batches import BatchOrder, noise_log_prob, prepare_data
from .config import TrainConfig, TrainResult
from .guard import Guard, calibrate
from .interrupt import StopFlag, TrainingInterrupted
from .metrics import METRICS_NAME, MetricsLog, train_record
from .optim import make_optimizer
from .parallel import Parallel
from .precision import Precision, move_to, resolve_device, resolve_precision
from .progress import Progress, default_log
from .rng import rng_state, seed_all
from .step import StepFailure, take_step, trainable_parameters
from .validation import Validator, mean_loss

__all__ = ["Trainer", "train"]


class Trainer:
    """Trains ``model`` (and ``encoder``) by minimising ``objective`` against ``noise``.

    ``objective(model, encoder, x, noise, x_log_pn)`` returns an
    :class:`~fvnce.objectives.base.ObjectiveOutput`; ``noise`` is a Distribution with
    ``sample`` and ``log_prob`` (moved with ``.to(device)`` when it has one);
    ``encoder`` may be None for objectives that do not use one.  ``run_dir`` (optional)
    receives checkpoints and metrics; ``log`` is a callable taking one line of text
    (default: stderr, compatible with the progress bar).
    """

    def __init__(self, model: nn.Module, encoder: nn.Module | None, objective, noise,
                 config: TrainConfig | None = None, run_dir: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        self.config = config if config is not None else TrainConfig()
        if not isinstance(self.config, TrainConfig):
            raise ConfigError(f"config must be a TrainConfig, got {type(self.config).__name__}")
        self.model, self.encoder, self.objective, self.noise = model, encoder, objective, noise
        check = getattr(objective, "check_model", None)
        if callable(check):  # e.g. elbo refuses an unnormalised model, nce one without a closed-form marginal
            check(model)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = log if log is not None else default_log
        self.device = resolve_device(self.config.device)
        self._parallel = Parallel(self.device)
        self.rank, self.world, self.is_main = self._parallel.rank, self._parallel.world, self._parallel.is_main
        self._precision = Precision(self.config.precision, self.device, self.config.compile, self._say)
        self.precision = self._precision.name
        self._stop = StopFlag()
        self._params = trainable_parameters(model, encoder)
        self.optimizer = make_optimizer(self._params, self.config)
        self.guard = Guard(self.config, model, encoder, self.optimizer, objective, self.device)
        best = None if not self._writes else (lambda step, v: state.save_best(
            self.run_dir / state.BEST_NAME, step, v, self.model, self.encoder))
        self.validator = Validator(best, self._say)
        self._metrics = MetricsLog(self.run_dir / METRICS_NAME if self._writes else None)
        self._order = BatchOrder(self.config.seed, self.config.batch_size)
        self.step = 0
        self._elapsed0, self._t0 = 0.0, time.perf_counter()
        self._last_saved = -1

    # -- the loop ------------------------------------------------------------------------
    def fit(self, train: Tensor, val: Tensor | None = None, resume: bool = False,
            callback: Callable[["Trainer", dict | None], None] | None = None) -> TrainResult:
        """Train to the configured number of steps; ``resume=True`` continues from
        ``run_dir/checkpoint.pt``.  ``callback(trainer, record)`` is called after every
        step (``record`` is the logged training record or None); it may call
        :meth:`request_stop`.

        Raises :class:`TrainingInterrupted` after SIGINT/SIGTERM (checkpoint saved),
        :class:`DivergenceError` when rollbacks do not help.
        """
        cfg = self.config
        train, val, total = self._start(train, val, resume)
        n, base_noise, old_handlers, bar = train.shape[0], self.noise, self._stop.install(), None
        try:
            train_lp, val_lp = self._prepare(train, val, resume)
            bar, last_out = Progress(cfg.progress and self.is_main, total, self.step), None
            while self.step < total:
                xb, lp, scale, rows = self._batch(train, train_lp, n)
                try:
                    out, norm = self._step(xb, lp, scale)
                except StepFailure as exc:
                    self._rollback(str(exc), self.step + 1)
                    bar.restart_at(self.step)
                    continue
                self.step, last_out = self.step + 1, out
                rec = self._log_step(out, norm, rows) if self._logs(total) else None
                bar.show(rec)
                if val is not None and (self.step % cfg.eval_every == 0 or self.step == total):
                    self._validate(val, val_lp, n)
                if self.step % cfg.checkpoint_every == 0 or self.step == total:
                    self.save(n)
                if callback is not None:
                    callback(self, rec)
                self._stop_if_asked(n)
            if self._last_saved != self.step:  # resumed at/after the end: the final state on disk
                self.save(n)
        finally:
            self._finish(bar, old_handlers, base_noise)
        final_loss = None if last_out is None else float(last_out.loss.detach())
        return TrainResult(history=list(self.history), step=self.step, retries=self.retries,
                           best_val=self.best_val, best_step=self.best_step, final_loss=final_loss,
                           elapsed=self._elapsed(), run_dir=self.run_dir)

    def _start(self, train, val, resume: bool):
        """Data on the device, the step count, and the counters of a new or resumed run."""
        if resume and self.run_dir is None:
            raise ConfigError("resume=True needs a run directory")
        self._move()
        self._precision.compile_once(self.model, self.encoder)
        dtype = self._params[0].dtype
        train = prepare_data(train, "training", dtype, self.device)
        val = prepare_data(val, "validation", dtype, self.device)
        n = train.shape[0]
        self._parallel.check_batches(n, self.config.batch_size)
        self.noise = self._parallel.share_noise(self.noise, self.config.dist_noise)
        self._metrics.history = []
        self._order = BatchOrder(self.config.seed, self.config.batch_size)
        if resume:
            if not self.checkpoint_path.exists():
                raise CheckpointError(f"nothing to resume: no {state.CHECKPOINT_NAME} in {self.run_dir}")
            self._restore(n)
        else:
            seed_all(self.config.seed, self.device)
            self.step, self.guard.retries = 0, 0
            self.validator.best_val, self.validator.best_step = None, None
            self.validator.tail_warned = False
            self._elapsed0 = 0.0
        self._t0 = time.perf_counter()
        self._last_saved = self.step if resume else -1
        if self._writes:
            if not resume and self._metrics.path.exists():
                (self.run_dir / state.BEST_NAME).unlink(missing_ok=True)
            self._metrics.open(self.step if resume else None, self.guard.retries if resume else None)
        return train, val, self.config.total_steps(n)

    def _prepare(self, train: Tensor, val: Tensor | None, resume: bool):
        """Calibration, ``log p_n`` of the data, DDP, precision hooks, the first snapshot."""
        cfg = self.config
        if not resume and self.config.calibrate:
            msg = calibrate(self.model, self.encoder, self.objective, self.noise)
            if msg is not None:
                self._say(msg)
            if self._parallel.active and cfg.dist_noise == "rank" and self.rank != 0:
                seed_all(_dist.rank_seed(cfg.seed, self.rank), self.device)
        train_lp = noise_log_prob(train, self.objective, self.noise)
        val_lp = noise_log_prob(val, self.objective, self.noise)
        self._parallel.wrap(self.model, self.encoder, self.objective, self.optimizer, self._params, self.noise,
                            train[:4], None if train_lp is None else train_lp[:4])  # broadcasts rank 0's parameters
        self._install_precision_hooks()
        if self._resumed_snapshot is not None:  # resumed from a Ctrl-C checkpoint: roll back where it would have
            self.guard.restore_snapshot(self._resumed_snapshot)
            self._resumed_snapshot = None
        else:
            self.guard.snapshot(self.step)
        for m in self._modules():  # every submodule, once; _step re-enters training mode after validation
            m.train(True)
        return train_lp, val_lp

    def _finish(self, bar, old_handlers, base_noise) -> None:
        if bar is not None:
            bar.close()
        self._stop.restore(old_handlers)
        self._remove_precision_hooks()
        self.noise = base_noise
        self._parallel.unwrap()
        self._metrics.close()

    def _batch(self, train: Tensor, train_lp: Tensor | None, n: int):
        """This rank's rows of the step's batch, their ``log p_n``, the loss scale and the row count."""
        local, scale, rows = self._parallel.shard(self._order.index(self.step, n), self.noise)
        local = local.to(self.device)
        return train[local], None if train_lp is None else train_lp[local], scale, rows

    def _step(self, x: Tensor, x_log_pn: Tensor | None, scale: float = 1.0):
        """One optimiser step in training mode (:func:`fvnce.train.step.take_step`); raises
        :class:`StepFailure` before any parameter changes when the step must not be taken."""
        p = self._parallel

        def forward(xb, lp, s):
            return p.forward(self.model, self.encoder, self.objective, self.noise, xb, lp, s)

        for m in self._modules():
            if not m.training:  # train() walks every submodule: only when it is needed
                m.train(True)
        try:
            return take_step(forward, x, x_log_pn, scale, self.optimizer, self._params, self.guard.grad_clip,
                             self.guard.check, p.agree if p.active else None,
                             (("model", self.model), ("encoder", self.encoder)))
        finally:
            p.end_step(self.noise)

    def _logs(self, total: int) -> bool:
        return self.step % self.config.log_every == 0 or self.step == total or self.step == 1

    def _log_step(self, out, norm: Tensor, rows: int) -> dict:
        rec = train_record(out, norm, self.step, self.guard.lr, self._elapsed())
        rec = self._parallel.reduce_record(rec, rows)
        self._metrics.record(rec)
        return rec

    def _rollback(self, reason: str, failed_step: int) -> None:
        done = self.guard.rollback(reason, failed_step, self._elapsed())
        self.step = done.step
        self._metrics.truncate(self.step)
        for event in done.events:
            self._metrics.record(event)
        for msg in done.messages:
            self._say(msg)

    def _validate(self, val: Tensor, val_log_pn: Tensor | None, n_train: int) -> None:
        v = self._parallel.shard_mean(self.evaluate, val, val_log_pn)
        for rec in self.validator.record(v, self.step, self._elapsed(), self.last_val_noise_log_ratio):
            self._metrics.record(rec)

    def _stop_if_asked(self, n: int) -> None:
        if not self._stop.asked(self._parallel.agree):
            return
        if self._last_saved != self.step:
            self.save(n, off_schedule=True)
        raise TrainingInterrupted.at(self.step, self.run_dir, self._writes)

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, n_train: int, off_schedule: bool = False) -> None:
        """Write ``checkpoint.pt`` (atomically) and refresh the rollback snapshot.
        Under torch.distributed every rank must call it (the RNG states of all ranks
        are gathered into the checkpoint); rank 0 writes.  ``off_schedule`` (a checkpoint
        at a Ctrl-C, between periodic ones): the snapshot stays the last periodic one and
        goes into the checkpoint, so that a resumed run rolls back to the same step as
        an uninterrupted one."""
        rng_ranks = self._parallel.gather_rng(rng_state(self.device))
        # one process only: under torch.distributed each rank's snapshot holds its own RNG state
        snapshot = self.guard.snapshot_state if off_schedule and self.world == 1 else None
        if snapshot is not None and snapshot["step"] == self.step:
            snapshot = None
        if self._writes:
            self._metrics.flush()
            content = state.payload(step=self.step, model=self.model, encoder=self.encoder,
                                    optimizer=self.optimizer, rng=rng_state(self.device), guard=self.guard.state(),
                                    config=self.config.to_dict(), best_val=self.best_val, best_step=self.best_step,
                                    n_train=n_train, elapsed=self._elapsed(),
                                    tail_warned=self.validator.tail_warned, snapshot=snapshot)
            state.write(self.checkpoint_path, content, rng_ranks, self.world)
        if not off_schedule:
            self.guard.snapshot(self.step)
        self._last_saved = self.step

    def _restore(self, n_train: int) -> None:
        ckpt = state.load_for_resume(self.checkpoint_path, self.config, n_train, self.model, self.encoder,
                                     self.optimizer)
        self.step = int(ckpt["step"])
        self.guard.load_state(ckpt)
        self.validator.best_val, self.validator.best_step = ckpt.get("best_val"), ckpt.get("best_step")
        self.validator.tail_warned = bool(ckpt.get("tail_warned", False))
        self._resumed_snapshot = ckpt.get("snapshot")
        self._elapsed0 = float(ckpt.get("elapsed", 0.0))
        p = self._parallel
        state.restore_rng(ckpt, self.config, self.device, p.rank if p.active else 0, p.world if p.active else 1)

    # -- validation ------------------------------------------------------------------------
    def evaluate(self, x: Tensor, x_log_pn: Tensor | None = None, batch_size: int | None = None) -> float:
        """Mean objective loss on ``x`` (evaluation mode, fixed random numbers)."""
        bs = batch_size or max(self.config.batch_size, 256)
        v, self.last_val_noise_log_ratio = mean_loss(self.objective, self.model, self.encoder, self.noise, x,
                                                     x_log_pn, bs, self.config.seed, self.device)
        return v

    # -- small helpers ---------------------------------------------------------------------
    def _move(self) -> None:
        self.noise = move_to(self.device, self._modules(), self.noise)

    def _install_precision_hooks(self) -> None:
        self._precision.install(self._modules(), self._params[0].dtype)

    def _remove_precision_hooks(self) -> None:
        self._precision.remove()

    _hooks = property(lambda self: [] if self._precision.hooks is None else self._precision.hooks.handles)

    def _batch_index(self, step: int, n: int) -> Tensor:
        """Row indices of the batch for 0-based ``step``."""
        return self._order.index(step, n)

    def _modules(self):
        return [m for m in (self.model, self.encoder) if m is not None]

    def _say(self, msg: str) -> None:
        """Log a line (on rank 0 only under torch.distributed)."""
        if self.is_main:
            self.log(msg)

    def _elapsed(self) -> float:
        return self._elapsed0 + time.perf_counter() - self._t0

    #: whether this process writes the run directory (rank 0 of a run that has one)
    _writes = property(lambda self: self.is_main and self.run_dir is not None)

    def request_stop(self) -> None:
        """Ask :meth:`fit` to save a checkpoint and stop after the current step (what
        SIGINT and SIGTERM do)."""
        self._stop.request()

    checkpoint_path = property(lambda self: None if self.run_dir is None else self.run_dir / state.CHECKPOINT_NAME)

    # what the parts own, readable under the names of the single-file trainer
    _resolve_precision = staticmethod(resolve_precision)
    history = property(lambda self: self._metrics.history)
    rule = property(lambda self: self.guard.rule)
    lr = property(lambda self: self.guard.lr)
    grad_clip = property(lambda self: self.guard.grad_clip)
    retries = property(lambda self: self.guard.retries)
    best_val = property(lambda self: self.validator.best_val)
    best_step = property(lambda self: self.validator.best_step)
    last_val_noise_log_ratio: Tensor | None = None
    _resumed_snapshot: dict | None = None  # the rollback target kept in a Ctrl-C checkpoint


def train(model, encoder, objective, noise, train_data: Tensor, val_data: Tensor | None = None,
          config: TrainConfig | None = None, run_dir: str | Path | None = None,
          resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Convenience wrapper: ``Trainer(...).fit(train_data, val_data, resume)``."""
    return Trainer(model, encoder, objective, noise, config, run_dir, log).fit(train_data, val_data, resume)
