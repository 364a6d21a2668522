"""The training loop: one :class:`Trainer` for every objective and model.

A run directory holds

* ``checkpoint.pt`` -- everything needed to continue bit-for-bit (parameters, optimiser
  state, step, global RNG state, current stabilisation settings), written atomically
  every ``checkpoint_every`` steps, at the end, and when training is interrupted;
* ``best.pt`` -- the parameters with the lowest validation loss (when validation data
  is given);
* ``metrics.jsonl`` -- one JSON object per line: training records (``step``, ``loss``,
  ``data_loss``, ``noise_loss``, the objective's diagnostics, ``lr``, ``elapsed``),
  validation records (``val_loss``) and events (``"event": "retry"`` ...).

Reproducibility.  ``torch.manual_seed(seed)`` starts a run; the data order of epoch
``e`` is a ``randperm`` from a generator seeded with ``(seed, e)``, so it can be
regenerated on resume; the global RNG (noise and encoder samples) is saved in the
checkpoint.  A resumed run ends with exactly the parameters of an uninterrupted one.
Validation draws its random numbers from a forked RNG with a fixed seed: the same
noise and encoder samples at every evaluation, and no effect on the training stream.

Stabilisation.  Gradient-norm clipping; a step whose loss is non-finite, whose log
ratios explode (beyond ``explode_log_ratio``) or whose gradients are non-finite is not
taken: training rolls back to the last good state (kept in memory at the start and at
each checkpoint), halves the learning rate and the clipping norm, and tightens the
scoring rule's stabilisation (exact -> linear with tau at most 10, else tau halved, at
least 1; every stabilised rule is still strictly proper with minimiser ``p/q``, see
:mod:`fvnce.rules`).  Each such change is logged and recorded as an ``"event":
"stabilise"`` line in ``metrics.jsonl``.  After ``max_retries`` such rollbacks
:class:`DivergenceError` is raised.  At each validation the Pareto k-hat and ESS of the
noise-side importance weights are recorded; when they turn unreliable a ``"warning"``
event names the likely cause and fix.

Scale.  Under an initialised ``torch.distributed`` process group (``torchrun``) the
trainer uses DistributedDataParallel, shards every global batch over the ranks and
writes files on rank 0 only; see :mod:`fvnce.distributed` for the randomness
(``dist_noise``) and what equals a single-process run.  ``precision="bf16"`` runs every
parameterised leaf layer (``Linear``, ``Conv`` ...) of the model and encoder under
bfloat16 autocast and casts its output back to the parameters' dtype, so activations,
log-densities, log-weights, logsumexp and the scoring rules stay in float32; the noise
is never autocast.  ``compile=True`` wraps the model's ``log_joint`` and the encoder in
``torch.compile`` (eager fallback with a one-line message if compilation fails).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor, nn

from . import distributed as _dist
from .checkpoint import load_checkpoint, save_checkpoint
from .fileio import atomic_write_text, read_jsonl
from .objectives.base import calibrate_log_normaliser
from .errors import CheckpointError, ConfigError, FvnceError, NonFiniteLossError

__all__ = [
    "DivergenceError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "train",
]

PRECISIONS = ("fp32", "bf16", "auto")
#: default number of steps when neither ``steps`` nor ``epochs`` is given
DEFAULT_STEPS = 4000
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"
METRICS_NAME = "metrics.jsonl"
_DIVERGENCE_HINT = ("the noise is probably too far from the data: try a noise closer to it "
                    "(e.g. --noise flow or kde) or exp_mode linear")


#: fewest validation noise points whose weights get a Pareto k-hat during training
MIN_TAIL_WEIGHTS = 100

#: with clip/linear exponentials, log ratios this many times ``explode_log_ratio`` count
#: as exploding (they cannot overflow, but such ratios mean the noise misses the data)
STABILISED_EXPLODE_FACTOR = 10.0


class DivergenceError(NonFiniteLossError):
    """Training kept diverging after ``max_retries`` rollbacks."""


class TrainingInterrupted(FvnceError):
    """SIGINT/SIGTERM (or :meth:`Trainer.request_stop`) stopped training after a step."""

    def __init__(self, message: str, step: int = 0, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.run_dir = run_dir


# --------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
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
            need(v is None or (_is_int(v) and v > 0), name, "a positive integer or None")
        for name in ("batch_size", "log_every", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            need(_is_int(v) and v > 0, name, "a positive integer")
        need(_is_num(self.lr) and math.isfinite(self.lr) and self.lr > 0, "lr", "a positive number")
        need(_is_num(self.weight_decay) and math.isfinite(self.weight_decay) and self.weight_decay >= 0,
             "weight_decay", "a non-negative number")
        need(self.grad_clip is None or (_is_num(self.grad_clip) and self.grad_clip > 0),
             "grad_clip", "a positive number or None")
        need(_is_int(self.seed) and 0 <= self.seed < 2 ** 63, "seed", "a non-negative integer")
        need(_is_int(self.max_retries) and self.max_retries >= 0, "max_retries", "a non-negative integer")
        need(_is_num(self.explode_log_ratio) and self.explode_log_ratio > 0, "explode_log_ratio",
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


# --------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------
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


class _StepFailure(Exception):
    """A step that must not be taken (non-finite loss/gradient, exploding weights)."""


def _default_log(msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except Exception:  # pragma: no cover - tqdm missing
        print(msg, file=sys.stderr, flush=True)


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _clone_state(sd: dict) -> dict:
    return {k: (v.detach().clone() if isinstance(v, Tensor) else v) for k, v in sd.items()}


def _map_tensors(obj, fn):
    """Apply ``fn`` to every tensor inside nested dicts, lists and tuples."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    return obj


def _deepclone(obj):
    return _map_tensors(obj, lambda t: t.detach().clone())


def _to_cpu(obj):
    return _map_tensors(obj, lambda t: t.detach().cpu())


# --------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------
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
        self.model = model
        self.encoder = encoder
        self.objective = objective
        self.noise = noise
        check = getattr(objective, "check_model", None)
        if callable(check):  # e.g. elbo refuses an unnormalised model, nce one without a closed-form marginal
            check(model)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.log = log if log is not None else _default_log
        #: only the main process writes files (False on ranks > 0 under torch.distributed)
        self.is_main = True
        self.rank, self.world = _dist.rank(), _dist.world_size()
        self._distributed = _dist.is_active() and self.world > 1
        if self._distributed:
            self.is_main = self.rank == 0
        self.device = self._resolve_device(self.config.device)
        self.precision = self._resolve_precision(self.config.precision, self.device)
        if self.precision == "bf16" and self.device.type == "cpu" and not any(_cpu_native_bf16()):
            self._say("fvnce: this CPU has no native bfloat16 arithmetic (no AMX, no AVX512-BF16): "
                      "bf16 steps run several times slower than fp32 here")
        self._ddp = None
        self._compiled = False
        self._hooks: list = []
        self._stop_signal: int | None = None
        params = list(model.parameters())
        if encoder is not None:
            seen = {id(p) for p in params}
            params += [p for p in encoder.parameters() if id(p) not in seen]
        self._params = [p for p in params if p.requires_grad]
        if not self._params:
            raise ConfigError("the model and encoder have no trainable parameters")
        # foreach: one multi-tensor kernel per update instead of a Python loop over parameters
        self.optimizer = torch.optim.Adam(self._params, lr=self.config.lr,
                                          weight_decay=self.config.weight_decay, foreach=True)
        self.lr = float(self.config.lr)
        self.grad_clip = None if self.config.grad_clip is None else float(self.config.grad_clip)
        self.retries = 0
        self.step = 0
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.history: list[dict] = []
        self._elapsed0 = 0.0
        self._t0 = time.perf_counter()
        self._snapshot: dict | None = None
        self._metrics_file = None
        self._perm_cache: tuple[int, Tensor] | None = None

    # -- small helpers -------------------------------------------------------------------
    @staticmethod
    def _resolve_device(name: str) -> torch.device:
        if name == "auto":
            if _dist.is_active():
                return _dist.default_device("auto")
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device={name!r} but CUDA is not available on this machine; use device='auto'")
        return _dist.default_device(name) if _dist.is_active() else dev

    @staticmethod
    def _resolve_precision(name: str, device: torch.device) -> str:
        """``auto``: bf16 where the hardware multiplies bfloat16 natively (a CUDA device
        that supports it, or a CPU with AMX tiles), fp32 elsewhere -- on an AVX2-only CPU
        a bf16 VAE step measured 8-10x *slower* than fp32 (docs/benchmarks.md)."""
        if name == "auto":
            if device.type == "cuda":
                ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
            else:
                ok = device.type == "cpu" and _cpu_native_bf16()[0]
            return "bf16" if ok else "fp32"
        return name

    def _say(self, msg: str) -> None:
        """Log a line (on rank 0 only under torch.distributed)."""
        if self.is_main:
            self.log(msg)

    @property
    def _comm_device(self) -> torch.device:
        if self._distributed and torch.distributed.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    def _agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (single process: ``flag``)."""
        if not self._distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self._comm_device)
        return bool(_dist.all_reduce_max(t).item() > 0)

    # -- precision, compilation, DistributedDataParallel -------------------------------
    def _install_precision_hooks(self) -> None:
        if self.precision != "bf16" or self._hooks:
            return
        device_type = self.device.type
        target = self._params[0].dtype if self._params[0].dtype in (torch.float32, torch.float64) else torch.float32
        stack: list = []

        def enter(module, args):
            ctx = torch.autocast(device_type, dtype=torch.bfloat16)
            ctx.__enter__()
            stack.append(ctx)

        def leave(module, args, out):
            if stack:
                stack.pop().__exit__(None, None, None)
            return _upcast(out, target)

        for m in self._modules():
            for sub in m.modules():
                leaf = next(sub.children(), None) is None
                if leaf and next(sub.parameters(recurse=False), None) is not None:
                    self._hooks.append(sub.register_forward_pre_hook(enter))
                    self._hooks.append(sub.register_forward_hook(leave, always_call=True))

    def _remove_precision_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def _compile(self) -> None:
        if not self.config.compile or self._compiled:
            return
        self._compiled = True
        state = {"failed": False}
        targets = [(self.model, "log_joint")]
        if self.encoder is not None:
            targets.append((self.encoder, "forward"))
        for module, attr in targets:
            eager = getattr(module, attr)
            try:
                compiled = torch.compile(eager)
            except Exception as exc:  # e.g. no compiler support on this Python / platform
                self._say(f"fvnce: torch.compile is not available here ({_first_line(exc)}); running eagerly")
                return
            setattr(module, attr, _CompiledOrEager(compiled, eager, state, self._say))

    def _has_unused_parameters(self, x: Tensor, x_log_pn: Tensor | None) -> bool:
        """Whether some trainable parameter gets no gradient from the objective (probed
        on a few rows with a forked RNG, agreed over ranks)."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.optimizer.zero_grad(set_to_none=True)
            try:
                out = self.objective(self.model, self.encoder, x, self.noise, x_log_pn=x_log_pn)
                out.loss.backward()
                unused = any(p.grad is None for p in self._params)
            except Exception:
                unused = True
            self.optimizer.zero_grad(set_to_none=True)
        return self._agree(unused)

    def _wrap_ddp(self, x: Tensor, x_log_pn: Tensor | None) -> None:
        if not self._distributed or self._ddp is not None:
            return
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters only when needed (an extra graph traversal per step): a
        # parameter may get no gradient, e.g. a log-normaliser that the loss ignores
        unused = self._has_unused_parameters(x, x_log_pn)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self._ddp = DistributedDataParallel(_ObjectiveModule(self.model, self.encoder, self.objective),
                                            device_ids=ids, output_device=ids[0] if ids else None,
                                            find_unused_parameters=unused)

    @property
    def rule(self):
        rule = getattr(self.objective, "rule", None)
        return rule if rule is not None and hasattr(rule, "exp_mode") and hasattr(rule, "tau") else None

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_NAME

    @property
    def _writes(self) -> bool:
        return self.is_main and self.run_dir is not None

    def request_stop(self) -> None:
        """Ask :meth:`fit` to save a checkpoint and stop after the current step (what
        SIGINT and SIGTERM do)."""
        self._stop_signal = -1

    def _elapsed(self) -> float:
        return self._elapsed0 + time.perf_counter() - self._t0

    def _rng_state(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
        return state

    def _set_rng_state(self, state: dict) -> None:
        torch.set_rng_state(state["cpu"].to(torch.uint8).cpu())
        cuda = state.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in cuda])

    def _modules(self):
        return [m for m in (self.model, self.encoder) if m is not None]

    def _set_train(self, mode: bool) -> None:
        for m in self._modules():
            m.train(mode)

    def _perm(self, epoch: int, n: int) -> Tensor:
        if self._perm_cache is not None and self._perm_cache[0] == epoch:
            return self._perm_cache[1]
        g = torch.Generator()
        g.manual_seed((self.config.seed * 1_000_003 + epoch * 7919 + 12345) % (2 ** 63))
        perm = torch.randperm(n, generator=g)
        self._perm_cache = (epoch, perm)
        return perm

    def _batch_index(self, step: int, n: int) -> Tensor:
        """Row indices of the batch for 0-based ``step``."""
        bs = min(self.config.batch_size, n)
        spe = steps_per_epoch(n, bs)
        epoch, i = divmod(step, spe)
        return self._perm(epoch, n)[i * bs:(i + 1) * bs]

    # -- the per-step work -----------------------------------------------------------
    def _step(self, x: Tensor, x_log_pn: Tensor | None, scale: float = 1.0):
        """One optimiser step on the batch ``x``; raises :class:`_StepFailure` (before
        any parameter changes) when the step must not be taken.  Returns the objective
        output and the gradient norm before clipping.  Under torch.distributed ``x`` is
        this rank's shard, the local loss is multiplied by ``scale`` (see
        :mod:`fvnce.distributed`) and all ranks agree on failures."""
        self.optimizer.zero_grad(set_to_none=True)
        failure = None
        try:
            try:
                if self._ddp is not None:
                    loss = self._ddp(x, x_log_pn, self.noise, scale)
                    out = self._ddp.module.last
                    self._ddp.module.last = None
                else:
                    out = self.objective(self.model, self.encoder, x, self.noise, x_log_pn=x_log_pn)
                    loss = out.loss
            except ValueError as exc:  # a Distribution refusing non-finite parameters
                if "constraint" not in str(exc):
                    raise
                raise _StepFailure(f"non-finite distribution parameters: {str(exc).splitlines()[0]}") from None
            try:
                out.check_finite()
            except NonFiniteLossError as exc:
                raise _StepFailure(str(exc)) from None
            self._check_explosion(out)
        except _StepFailure as exc:
            if not self._distributed:
                raise
            failure = str(exc)
        if self._distributed and self._agree(failure is not None):
            raise _StepFailure(failure or "the step failed on another rank")
        loss.backward()
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self._params, max_norm)
        if not bool(torch.isfinite(norm)):
            names = self._nonfinite_grad_names()
            raise _StepFailure(f"non-finite gradient (norm {norm.item()}) in {names}")
        self.optimizer.step()
        return out, norm

    def _check_explosion(self, out) -> None:
        """Exploding importance weights: the mean noise-side log ratio or the largest
        noise-side log weight above ``explode_log_ratio``, and for rules that exponentiate
        the data side in exact mode (power, generic) the mean data-side log ratio.  Only
        large *positive* log ratios count: they overflow the exponentials, while very
        negative ones merely make weights vanish (and a healthy VAE has large data-side
        ratios against a simple noise, which its KL rule never exponentiates).  Every
        proper stabilisation keeps the noise loss at least linear in ``r`` (exponential in
        ``log r``), so the noise-side limit is the same in every ``exp_mode``; rules whose
        losses cannot overflow (logistic) get ``STABILISED_EXPLODE_FACTOR`` times more room
        when stabilised, as before."""
        if not getattr(self.objective, "uses_noise", True):
            return
        rule = self.rule
        limit = self.config.explode_log_ratio
        if not math.isfinite(limit):
            return
        exact = rule is None or getattr(rule, "exp_mode", "exact") == "exact"
        if not exact and not getattr(rule, "overflows", True):
            limit *= STABILISED_EXPLODE_FACTOR
        d = out.diagnostics or {}
        checks = [("noise_log_ratio", d.get("noise_log_ratio"))]
        if exact and rule is not None and getattr(rule, "name", "") in ("power", "generic") \
                and getattr(rule, "alpha", 2.0) != 1.0:
            checks.append(("data_log_ratio", d.get("data_log_ratio")))
        for key, t in (out.parts or {}).items():
            if t is not None and "noise" in key and ("log-ratio" in key or "log ratio" in key) \
                    and isinstance(t, Tensor) and t.numel():
                finite = t.detach()[torch.isfinite(t.detach())]
                if finite.numel():
                    checks.append((f"max {key}", finite.max().item()))
        for key, v in checks:
            if v is None:
                continue
            v = float(v)
            if math.isfinite(v) and v > limit:
                raise _StepFailure(f"exploding importance weights: {key} = {v:.3g} exceeds "
                                   f"explode_log_ratio = {limit:g}")

    def _nonfinite_grad_names(self) -> str:
        names = []
        for prefix, m in (("model", self.model), ("encoder", self.encoder)):
            if m is None:
                continue
            for name, p in m.named_parameters():
                if p.grad is not None and not bool(torch.isfinite(p.grad).all()):
                    names.append(f"{prefix}.{name}")
        return ", ".join(names[:5]) + (" ..." if len(names) > 5 else "") if names else "the parameters"

    # -- snapshots, rollback -----------------------------------------------------------
    def _take_snapshot(self) -> None:
        self._snapshot = {
            "step": self.step,
            "model": _clone_state(self.model.state_dict()),
            "encoder": None if self.encoder is None else _clone_state(self.encoder.state_dict()),
            "optimizer": _deepclone(self.optimizer.state_dict()),
            "rng": _deepclone(self._rng_state()),
        }

    def _apply_lr(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr

    def _rollback(self, reason: str, failed_step: int) -> None:
        if self.retries >= self.config.max_retries:
            raise DivergenceError(
                f"training diverged at step {failed_step} after {self.retries} "
                f"retr{'y' if self.retries == 1 else 'ies'}: {reason}; {_DIVERGENCE_HINT}")
        snap = self._snapshot
        assert snap is not None
        self.retries += 1
        self.model.load_state_dict(snap["model"])
        if self.encoder is not None:
            self.encoder.load_state_dict(snap["encoder"])
        self.optimizer.load_state_dict(_deepclone(snap["optimizer"]))
        self._set_rng_state(snap["rng"])
        self.step = snap["step"]
        self.lr *= 0.5
        self._apply_lr()
        if self.grad_clip is not None:
            self.grad_clip *= 0.5
        rule_msg, change = "", None
        rule = self.rule
        if rule is not None and getattr(rule, "overflows", True):
            before = {"exp_mode": rule.exp_mode, "tau": float(rule.tau)}
            if rule.exp_mode == "exact":
                # the stabilised rule is again strictly proper with the same minimiser
                # (fvnce.rules): a change of numerics, not of what is learned
                rule.exp_mode = "linear"
                rule.tau = min(float(rule.tau), 10.0)
            else:
                rule.tau = max(float(rule.tau) / 2.0, 1.0)
            after = {"exp_mode": rule.exp_mode, "tau": float(rule.tau)}
            if after != before:
                change = {"from": before, "to": after}
                rule_msg = f", exp_mode={rule.exp_mode} tau={rule.tau:g}"
        self.history = [h for h in self.history if h.get("step", 0) <= self.step]
        if self._writes:
            reopen = self._metrics_file is not None
            if reopen:
                self._metrics_file.close()
            _truncate_metrics(self.run_dir / METRICS_NAME, self.step)
            if reopen:
                self._metrics_file = open(self.run_dir / METRICS_NAME, "a", encoding="utf-8")
        event = {"step": self.step, "event": "retry", "retry": self.retries, "failed_step": failed_step,
                 "reason": reason, "lr": self.lr, "grad_clip": self.grad_clip,
                 "exp_mode": None if rule is None else rule.exp_mode,
                 "tau": None if rule is None else rule.tau, "elapsed": self._elapsed()}
        self._record(event)
        if change is not None:
            self._record({"step": self.step, "event": "stabilise", "reason": f"divergence at step {failed_step}",
                          **change, "elapsed": self._elapsed()})
        self._say(f"fvnce: step {failed_step}: {reason}; rolled back to step {self.step} "
                 f"(retry {self.retries}/{self.config.max_retries}): lr={self.lr:g} "
                 f"grad_clip={self.grad_clip}{rule_msg}")
        if change is not None:
            self._say(f"fvnce: the objective's stabilisation changed from exp_mode={change['from']['exp_mode']} "
                      f"tau={change['from']['tau']:g} to exp_mode={change['to']['exp_mode']} "
                      f"tau={change['to']['tau']:g} (still a proper rule with the same minimiser; "
                      "recorded in metrics.jsonl)")

    # -- files -------------------------------------------------------------------------
    def _record(self, rec: dict) -> None:
        rec = {k: _json_safe(v) for k, v in rec.items()}
        self.history.append(rec)
        if self._writes and self._metrics_file is not None:
            self._metrics_file.write(json.dumps(rec) + "\n")
            self._metrics_file.flush()

    def _state_payload(self, n_train: int) -> dict:
        rule = self.rule
        return {
            "step": self.step,
            "model": _to_cpu(dict(self.model.state_dict())),
            "encoder": None if self.encoder is None else _to_cpu(dict(self.encoder.state_dict())),
            "optimizer": _to_cpu(self.optimizer.state_dict()),
            "rng": self._rng_state(),
            "lr": self.lr,
            "grad_clip": self.grad_clip,
            "rule": None if rule is None else {"exp_mode": rule.exp_mode, "tau": float(rule.tau)},
            "retries": self.retries,
            "config": self.config.to_dict(),
            "best_val": self.best_val,
            "best_step": self.best_step,
            "n_train": n_train,
            "elapsed": self._elapsed(),
        }

    def save(self, n_train: int) -> None:
        """Write ``checkpoint.pt`` (atomically) and refresh the rollback snapshot.
        Under torch.distributed every rank must call it (the RNG states of all ranks
        are gathered into the checkpoint); rank 0 writes."""
        rng_ranks = _dist.all_gather_object(self._rng_state()) if self._distributed else None
        if self._writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self._metrics_file is not None:
                self._metrics_file.flush()
            payload = self._state_payload(n_train)
            if rng_ranks is not None:
                payload["rng_ranks"] = _to_cpu(rng_ranks)
                payload["world_size"] = self.world
            save_checkpoint(self.checkpoint_path, payload)
        self._take_snapshot()

    def _restore(self, n_train: int) -> None:
        ckpt = load_checkpoint(self.checkpoint_path)
        cfg = ckpt.get("config") or {}
        for key in ("seed", "batch_size"):
            if key in cfg and cfg[key] != getattr(self.config, key):
                raise CheckpointError(f"cannot resume from {self.checkpoint_path}: it was trained with "
                                      f"{key}={cfg[key]!r}, this run has {key}={getattr(self.config, key)!r}")
        if ckpt.get("n_train") not in (None, n_train):
            raise CheckpointError(f"cannot resume from {self.checkpoint_path}: it was trained on "
                                  f"{ckpt['n_train']} rows, this training set has {n_train}")
        try:
            self.model.load_state_dict(ckpt["model"])
            if self.encoder is not None:
                if ckpt.get("encoder") is None:
                    raise CheckpointError(f"{self.checkpoint_path} holds no encoder, but this run has one")
                self.encoder.load_state_dict(ckpt["encoder"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, KeyError, ValueError) as exc:
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"checkpoint {self.checkpoint_path} does not match this model: {line}") from None
        self.step = int(ckpt["step"])
        self.lr = float(ckpt.get("lr", self.config.lr))
        self._apply_lr()
        self.grad_clip = ckpt.get("grad_clip", self.grad_clip)
        rule, saved_rule = self.rule, ckpt.get("rule")
        if rule is not None and saved_rule is not None:
            rule.exp_mode = saved_rule["exp_mode"]
            rule.tau = float(saved_rule["tau"])
        self.retries = int(ckpt.get("retries", 0))
        self.best_val = ckpt.get("best_val")
        self.best_step = ckpt.get("best_step")
        self._elapsed0 = float(ckpt.get("elapsed", 0.0))
        rng_ranks = ckpt.get("rng_ranks")
        if self._distributed and rng_ranks and len(rng_ranks) == self.world:
            self._set_rng_state(rng_ranks[self.rank])
        elif self._distributed and self.config.dist_noise == "rank" and self.rank != 0:
            self._seed_all(_dist.rank_seed(self.config.seed, self.rank, self.step))
        else:
            self._set_rng_state(ckpt["rng"])

    def _seed_all(self, seed: int) -> None:
        torch.manual_seed(seed)
        if self.device.type == "cuda":
            torch.cuda.manual_seed_all(seed)

    # -- validation ------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, x: Tensor, x_log_pn: Tensor | None = None, batch_size: int | None = None) -> float:
        """Mean objective loss on ``x`` (evaluation mode, fixed random numbers)."""
        bs = batch_size or max(self.config.batch_size, 256)
        devices = []
        if self.device.type == "cuda":
            devices = [self.device.index if self.device.index is not None else torch.cuda.current_device()]
        was_training = [m.training for m in self._modules()]
        self._set_train(False)
        total, count, noise_lr = 0.0, 0, []
        try:
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.config.seed + 1_000_003)
                for i in range(0, x.shape[0], bs):
                    xb = x[i:i + bs]
                    lp = None if x_log_pn is None else x_log_pn[i:i + bs]
                    out = self.objective(self.model, self.encoder, xb, self.noise, x_log_pn=lp)
                    total += float(out.loss) * xb.shape[0]
                    count += xb.shape[0]
                    if getattr(out, "noise_log_ratio", None) is not None:
                        noise_lr.append(out.noise_log_ratio.detach().reshape(-1).cpu())
        finally:
            for m, t in zip(self._modules(), was_training):
                m.train(t)
        self.last_val_noise_log_ratio = torch.cat(noise_lr) if noise_lr else None
        return total / max(count, 1)

    def _noise_tail(self, rec: dict) -> None:
        """Pareto k-hat and ESS of the validation noise-side weights into ``rec``; a
        ``warning`` event (logged once per run) when they turn unreliable."""
        lr = getattr(self, "last_val_noise_log_ratio", None)
        if lr is None or lr.numel() < MIN_TAIL_WEIGHTS:  # too few weights to judge a tail
            return
        from .diagnostics import heavy_tail_message, weight_report

        rep = weight_report(lr)
        rec["noise_khat"], rec["noise_ess_fraction"] = rep["khat"], rep["ess_fraction"]
        msg = heavy_tail_message(rep["khat"], rep["ess_fraction"], "noise-side")
        if msg is None:
            self._tail_warned = False
            return
        if not getattr(self, "_tail_warned", False):
            self._tail_warned = True
            self._pending_events.append({"step": self.step, "event": "warning", "kind": "heavy_tail",
                                         "khat": rep["khat"], "ess_fraction": rep["ess_fraction"],
                                         "message": msg})
            self._say(f"fvnce: warning at step {self.step}: {msg}")

    def _validate(self, val: Tensor, val_log_pn: Tensor | None, n_train: int) -> None:
        if self._distributed:  # each rank evaluates its rows; weighted mean over ranks
            a, b = _dist.shard_bounds(val.shape[0], self.rank, self.world)
            local = self.evaluate(val[a:b], None if val_log_pn is None else val_log_pn[a:b]) if b > a else 0.0
            tot = _dist.all_reduce_sum(torch.tensor([local * (b - a), float(b - a)], dtype=torch.float64,
                                                    device=self._comm_device))
            v = float(tot[0] / tot[1])
        else:
            v = self.evaluate(val, val_log_pn)
        rec = {"step": self.step, "val_loss": v, "elapsed": self._elapsed()}
        improved = math.isfinite(v) and (self.best_val is None or v < self.best_val)
        if improved:
            self.best_val, self.best_step = v, self.step
            if self._writes:
                save_checkpoint(self.run_dir / BEST_NAME, {
                    "step": self.step, "val_loss": v,
                    "model": _to_cpu(dict(self.model.state_dict())),
                    "encoder": None if self.encoder is None else _to_cpu(dict(self.encoder.state_dict())),
                })
        rec["best_val"] = self.best_val
        self._pending_events = []
        self._noise_tail(rec)
        self._record(rec)
        for event in self._pending_events:
            self._record(event)

    # -- setup -----------------------------------------------------------------------
    def _prepare_data(self, x: Tensor | None, what: str) -> Tensor | None:
        if x is None:
            return None
        if not isinstance(x, Tensor):
            raise ConfigError(f"{what} data must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ConfigError(f"{what} data must have shape (N, D) with N >= 1, got {tuple(x.shape)}")
        dtype = self._params[0].dtype
        if x.is_floating_point() and x.dtype != dtype:
            x = x.to(dtype)
        return x.to(self.device)

    @torch.no_grad()
    def _log_pn(self, x: Tensor | None) -> Tensor | None:
        if x is None or not getattr(self.objective, "uses_noise", True) or self.noise is None \
                or not getattr(self.noise, "has_density", True):
            return None
        chunks = [self.noise.log_prob(x[i:i + 8192]) for i in range(0, x.shape[0], 8192)]
        return torch.cat(chunks).detach().to(x.dtype)

    def _move(self) -> None:
        for m in self._modules():
            m.to(self.device)
        to = getattr(self.noise, "to", None)
        if callable(to):
            moved = to(self.device)
            if moved is not None:
                self.noise = moved

    @torch.no_grad()
    def _calibrate(self) -> None:
        model = self.model
        if getattr(model, "c", None) is None or not self.config.calibrate:
            return
        if not getattr(self.objective, "uses_noise", True) or self.noise is None:
            return
        shift = calibrate_log_normaliser(model, self.encoder, self.noise)
        self._say(f"fvnce: calibrated the log-normaliser (shift {shift:+.4g}, c = {float(model.c):.4g})")

    # -- main loop -------------------------------------------------------------------
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
        if resume and self.run_dir is None:
            raise ConfigError("resume=True needs a run directory")
        self._metrics_file = None
        self._move()
        self._compile()
        train = self._prepare_data(train, "training")
        val = self._prepare_data(val, "validation")
        n = train.shape[0]
        total = cfg.total_steps(n)
        if self._distributed:
            bs = min(cfg.batch_size, n)
            smallest = min(bs, n - (steps_per_epoch(n, bs) - 1) * bs)
            if smallest < self.world:
                raise ConfigError(f"batch_size={cfg.batch_size} on {n} training rows leaves a batch of {smallest} "
                                  f"rows, fewer than the {self.world} processes: use a larger batch_size")
        base_noise = self.noise
        sharded = self._distributed and cfg.dist_noise == "shard" and self.noise is not None
        if sharded:
            self.noise = _dist.ShardedNoise(self.noise)
        self.history = []
        self._stop_signal = None
        self._perm_cache = None

        if resume:
            if not self.checkpoint_path.exists():
                raise CheckpointError(f"nothing to resume: no {CHECKPOINT_NAME} in {self.run_dir}")
            self._restore(n)
        else:
            torch.manual_seed(cfg.seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed_all(cfg.seed)
            self.step, self.retries, self.best_val, self.best_step = 0, 0, None, None
            self._elapsed0 = 0.0
        self._t0 = time.perf_counter()

        if self._writes:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            metrics = self.run_dir / METRICS_NAME
            if resume:
                self.history = _truncate_metrics(metrics, self.step)
            elif metrics.exists():
                metrics.unlink()
                (self.run_dir / BEST_NAME).unlink(missing_ok=True)
            self._metrics_file = open(metrics, "a", encoding="utf-8")

        old_handlers = self._install_signals()
        pbar = None
        try:
            if not resume:
                self._calibrate()
                if self._distributed and cfg.dist_noise == "rank" and self.rank != 0:
                    self._seed_all(_dist.rank_seed(cfg.seed, self.rank))
            train_log_pn = self._log_pn(train)
            val_log_pn = self._log_pn(val)
            self._wrap_ddp(train[:4], None if train_log_pn is None else train_log_pn[:4])  # broadcasts rank 0's parameters
            self._install_precision_hooks()
            self._take_snapshot()
            pbar = _progress(cfg.progress and self.is_main, total, self.step)
            last_out = None
            last_saved = self.step if resume else -1
            while self.step < total:
                idx = self._batch_index(self.step, n)
                scale, local_rows = 1.0, len(idx)
                if self._distributed:  # this rank's shard of the global batch
                    a, b = _dist.shard_bounds(len(idx), self.rank, self.world)
                    if sharded:
                        self.noise.set_shard(a, b - a, len(idx))
                    scale, local_rows = self.world * (b - a) / len(idx), b - a
                    idx = idx[a:b]
                idx = idx.to(self.device)
                xb = train[idx]
                lp = None if train_log_pn is None else train_log_pn[idx]
                self._set_train(True)
                try:
                    try:
                        out, norm = self._step(xb, lp, scale)
                    finally:
                        if sharded:
                            self.noise.clear()
                except _StepFailure as exc:
                    self._rollback(str(exc), self.step + 1)
                    if pbar is not None:
                        pbar.reset(total)
                        pbar.update(self.step)
                    continue
                self.step += 1
                last_out = out
                rec = None
                if self.step % cfg.log_every == 0 or self.step == total or self.step == 1:
                    rec = self._train_record(out, norm)
                    if self._distributed:
                        rec = self._reduce_record(rec, local_rows)
                    self._record(rec)
                    if pbar is not None:
                        post = {"loss": f"{rec['loss']:.4g}" if rec["loss"] is not None else "nan"}
                        if rec.get("accuracy") is not None:
                            post["acc"] = f"{rec['accuracy']:.3f}"
                        pbar.set_postfix(post, refresh=False)
                if pbar is not None:
                    pbar.update(1)
                if val is not None and (self.step % cfg.eval_every == 0 or self.step == total):
                    self._validate(val, val_log_pn, n)
                if self.step % cfg.checkpoint_every == 0 or self.step == total:
                    self.save(n)
                    last_saved = self.step
                if callback is not None:
                    callback(self, rec)
                if self._distributed and self._agree(self._stop_signal is not None) and self._stop_signal is None:
                    self._stop_signal = -2  # another rank was signalled: stop together
                if self._stop_signal is not None:
                    if last_saved != self.step:
                        self.save(n)
                    where = (f"checkpoint saved in {self.run_dir}; resume with --resume" if self._writes
                             else "no run directory, nothing saved")
                    msg = f"training interrupted at step {self.step}; {where}"
                    raise TrainingInterrupted(msg, self.step, self.run_dir)  # the caller reports it
            if last_saved != self.step:  # resumed at/after the end: make sure the final state is on disk
                self.save(n)
        finally:
            if pbar is not None:
                pbar.close()
            self._restore_signals(old_handlers)
            self._remove_precision_hooks()
            self.noise = base_noise
            if self._ddp is not None:
                self._ddp = None
                import gc

                gc.collect()  # drop the reducer's autograd hooks before another fit
            if self._metrics_file is not None:
                self._metrics_file.close()
                self._metrics_file = None

        final_loss = None if last_out is None else float(last_out.loss.detach())
        return TrainResult(history=list(self.history), step=self.step, retries=self.retries,
                           best_val=self.best_val, best_step=self.best_step, final_loss=final_loss,
                           elapsed=self._elapsed(), run_dir=self.run_dir)

    def _reduce_record(self, rec: dict, rows: int) -> dict:
        """Row-weighted mean over ranks of a training record's numbers."""
        keys = [k for k in sorted(rec) if k not in ("step", "lr", "elapsed", "grad_norm")
                and (rec[k] is None or (_is_num(rec[k])))]
        vals = [rows * (math.nan if rec[k] is None else float(rec[k])) for k in keys] + [float(rows)]
        tot = _dist.all_reduce_sum(torch.tensor(vals, dtype=torch.float64, device=self._comm_device)).cpu()
        for i, k in enumerate(keys):
            rec[k] = float(tot[i] / tot[-1])
        return rec

    def _train_record(self, out, norm: Tensor) -> dict:
        rec: dict[str, Any] = {"step": self.step, "loss": float(out.loss.detach()),
                               "data_loss": float(out.data_terms.detach().mean())}
        rec["noise_loss"] = None if out.noise_terms is None else float(out.noise_terms.detach().mean())
        for k, v in (out.diagnostics or {}).items():  # the objective's own values win
            if isinstance(v, Tensor) and v.numel() == 1:
                v = float(v)
            if k != "step" and (v is None or isinstance(v, (int, float, bool, str))):
                rec[k] = v
        rec["grad_norm"] = float(norm)
        rec["lr"] = self.lr
        rec["elapsed"] = self._elapsed()
        return rec

    # -- signals ---------------------------------------------------------------------
    def _install_signals(self):
        if threading.current_thread() is not threading.main_thread():
            return None
        old = {}

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop at once
            self._stop_signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover - unusual platforms
                pass
        return old

    @staticmethod
    def _restore_signals(old) -> None:
        if not old:
            return
        for sig, h in old.items():
            try:
                signal.signal(sig, h if h is not None else signal.SIG_DFL)
            except (ValueError, OSError):  # pragma: no cover
                pass


class _ObjectiveModule(nn.Module):
    """Model, encoder and objective as one module: what DistributedDataParallel wraps
    (its forward returns the scaled local loss; the full output is kept in ``last``)."""

    def __init__(self, model: nn.Module, encoder: nn.Module | None, objective) -> None:
        super().__init__()
        self.model = model
        self.encoder = encoder
        self.objective = objective
        self.last = None

    def forward(self, x: Tensor, x_log_pn: Tensor | None, noise, scale: float) -> Tensor:
        out = self.objective(self.model, self.encoder, x, noise, x_log_pn=x_log_pn)
        self.last = out
        return out.loss if scale == 1.0 else out.loss * scale


class _CompiledOrEager:
    """A ``torch.compile``-d callable that falls back, for good, to the eager one the
    first time compilation fails (one line of log for the whole trainer)."""

    def __init__(self, compiled, eager, state: dict, say) -> None:
        self.compiled, self.eager, self.state, self.say = compiled, eager, state, say

    def __call__(self, *args, **kwargs):
        if not self.state["failed"]:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as exc:  # backend/compiler errors surface at the first call
                self.state["failed"] = True
                self.say(f"fvnce: torch.compile failed ({_first_line(exc)}); running eagerly")
        return self.eager(*args, **kwargs)


def _cpu_native_bf16() -> tuple[bool, bool]:
    """(AMX tiles, AVX512-BF16) on this CPU; (False, False) where torch cannot tell."""
    try:
        return bool(torch.cpu._is_amx_tile_supported()), bool(torch.cpu._is_avx512_bf16_supported())
    except Exception:  # noqa: BLE001 - private helpers: absent on some builds
        return False, False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0][:200] if text else type(exc).__name__)


def _upcast(out, dtype: torch.dtype):
    """Tensors of a half-precision dtype in ``out`` (tensor, tuple, list) cast to ``dtype``."""
    if isinstance(out, Tensor):
        return out.to(dtype) if out.dtype in (torch.bfloat16, torch.float16) else out
    if isinstance(out, (tuple, list)):
        return type(out)(_upcast(o, dtype) for o in out)
    return out


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True, desc="train",
                mininterval=0.5)


def _truncate_metrics(path: Path, step: int) -> list[dict]:
    """Keep the records of ``path`` up to ``step`` (dropping unparsable lines, e.g. a
    line cut by a crash) and rewrite the file atomically.  Returns the kept records."""
    if not path.exists():
        return []
    kept = [rec for rec in read_jsonl(path)[0] if int(rec.get("step", 0)) <= step]
    lines = [json.dumps(rec) for rec in kept]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return kept


def train(model, encoder, objective, noise, train_data: Tensor, val_data: Tensor | None = None,
          config: TrainConfig | None = None, run_dir: str | Path | None = None,
          resume: bool = False, log: Callable[[str], None] | None = None) -> TrainResult:
    """Convenience wrapper: ``Trainer(...).fit(train_data, val_data, resume)``."""
    return Trainer(model, encoder, objective, noise, config, run_dir, log).fit(train_data, val_data, resume)
