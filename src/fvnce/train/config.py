"""What goes into the training loop and what comes out: ``TrainConfig``, the
hyper-parameters (validated on creation), and ``TrainResult``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import ConfigError

__all__ = ["DEFAULT_STEPS", "PRECISIONS", "TrainConfig", "TrainResult", "steps_per_epoch"]

PRECISIONS = ("fp32", "bf16", "auto")
#: default number of steps when neither ``steps`` nor ``epochs`` is given
DEFAULT_STEPS = 4000


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    """A real number: an int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class TrainConfig:
    """Hyper-parameters of the training loop (plain data; see :meth:`to_dict`).

    Exactly one of ``steps`` and ``epochs`` may be given; with neither, training runs
    ``DEFAULT_STEPS`` (4000) steps.  Invalid values raise :class:`ConfigError`.
    """

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = 10.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 100
    max_retries: int = 3
    explode_log_ratio: float = 60.0
    calibrate: bool = True
    device: str = "auto"
    progress: bool = True
    #: "fp32", "bf16" (bfloat16 autocast for the network layers, log-weights in float32)
    #: or "auto" (bf16 on CUDA devices that support it and on CPUs with AMX, else fp32)
    precision: str = "fp32"
    #: torch.compile the model's log_joint and the encoder (falls back to eager with a
    #: one-line message when compilation fails)
    compile: bool = False
    #: randomness under torch.distributed: "rank" (independent per-rank streams) or
    #: "shard" (global-size noise draws sliced per rank; see fvnce.distributed)
    dist_noise: str = "rank"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        bad = []

        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                bad.append(f"{name} must be {what}, got {name}={getattr(self, name)!r}")

        if self.steps is not None and self.epochs is not None:
            raise ConfigError(f"give either steps or epochs, not both (steps={self.steps!r}, "
                              f"epochs={self.epochs!r})")
        for name in ("steps", "epochs"):
            v = getattr(self, name)
            need(v is None or (_is_int(v) and v > 0), name, "a positive integer")
        for name in ("batch_size", "log_every", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            need(_is_int(v) and v > 0, name, "a positive integer")
        need(is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0, "lr", "a positive number")
        need(is_number(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             "weight_decay", "a non-negative number")
        need(self.grad_clip is None or (is_number(self.grad_clip) and self.grad_clip > 0),
             "grad_clip", "a positive number")
        need(_is_int(self.seed) and 0 <= self.seed < 2 ** 63, "seed", "a non-negative integer")
        need(_is_int(self.max_retries) and self.max_retries >= 0, "max_retries", "a non-negative integer")
        need(is_number(self.explode_log_ratio) and self.explode_log_ratio > 0, "explode_log_ratio",
             "a positive number (inf disables the check)")
        need(isinstance(self.calibrate, bool), "calibrate", "a boolean")
        need(isinstance(self.progress, bool), "progress", "a boolean")
        need(self.precision in PRECISIONS, "precision", "one of " + ", ".join(map(repr, PRECISIONS)))
        need(isinstance(self.compile, bool), "compile", "a boolean")
        need(self.dist_noise in ("rank", "shard"), "dist_noise", "'rank' or 'shard'")
        if not isinstance(self.device, str):
            need(False, "device", "a string such as 'auto', 'cpu' or 'cuda'")
        elif self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                need(False, "device", "'auto' or a torch device such as 'cpu', 'cuda', 'cuda:1'")
        if bad:
            raise ConfigError("invalid training configuration: " + "; ".join(bad))

    def total_steps(self, n_train: int) -> int:
        """Number of optimiser steps for a training set of ``n_train`` rows."""
        if self.steps is not None:
            return self.steps
        if self.epochs is not None:
            return self.epochs * steps_per_epoch(n_train, self.batch_size)
        return DEFAULT_STEPS

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"training configuration must be a mapping, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown training option(s) {', '.join(map(repr, unknown))}; "
                              f"valid options: {', '.join(sorted(names))}")
        return cls(**d)


def steps_per_epoch(n: int, batch_size: int) -> int:
    return max(1, math.ceil(n / batch_size))


@dataclass
class TrainResult:
    """What :meth:`Trainer.fit` returns."""

    history: list[dict] = field(default_factory=list)
    step: int = 0
    retries: int = 0
    best_val: float | None = None
    best_step: int | None = None
    final_loss: float | None = None
    elapsed: float = 0.0
    run_dir: Path | None = None
