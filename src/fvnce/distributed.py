"""Multi-process and multi-node training on ``torch.distributed`` (nothing of our own).

``fvnce train`` and :class:`fvnce.train.Trainer` run unchanged under ``torchrun``::

    torchrun --standalone --nproc_per_node=4 -m fvnce train ...
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 -m fvnce train ...

The command line calls :func:`init_from_env`, which starts the process group from
torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` ...):
NCCL on CUDA (device ``cuda:LOCAL_RANK``), gloo on the CPU.  The trainer notices an
initialised process group and then

* wraps model + encoder + objective in ``DistributedDataParallel`` (gradients are
  averaged over ranks after every backward pass);
* keeps the **global batch** of ``batch_size`` rows exactly as a single process draws it
  (the same seeded per-epoch permutation) and gives each rank a contiguous, disjoint
  shard of it (:func:`shard_bounds`, the distributed sampler); the local loss is
  re-weighted by ``world * local_rows / global_rows`` so that averaged gradients are
  the gradient of the global-batch mean even when the last batch of an epoch does not
  split evenly;
* agrees across ranks, every step, on whether a step failed (rollback) and whether to
  stop (signal), so no rank is left waiting in a collective;
* writes checkpoints, metrics, ``best.pt`` and progress on rank 0 only; the checkpoint
  holds every rank's RNG state, so resuming with the same world size is exact.

Randomness (``TrainConfig.dist_noise``).  The objective draws noise samples and encoder
samples from the global torch RNG.

``"rank"`` (default, for production): after the common seeding and the log-normaliser
calibration, rank ``r > 0`` reseeds its RNG with :func:`rank_seed` ``(seed, r)``: noise and
latent samples are drawn independently per rank (rank 0 keeps the single-process stream).
The run is then the single-process run *in distribution*; its parameters equal a
single-process run's only when the objective draws nothing (e.g. KL on a normalised
model with enumerated discrete latents).

``"shard"`` (for verification and exact reproducibility): every rank keeps the
single-process RNG stream, and each noise draw of a step is made at the *global* size
(``nu * batch_size`` rows, one call, as the single process makes it) and sliced to the
rank's shard (:class:`ShardedNoise`): the union of the ranks' noise samples *is* the
single-process draw.  With no other randomness in the objective (encoder-free
objectives such as ``nce``; discrete latents summed over exactly, e.g. RBMs and the
two-Gaussian mixture) a W-process run ends at the single-process parameters up to
floating-point rounding (tested with 2 gloo processes).  Continuous encoders still draw
their reparameterisation noise locally, from the common stream, so their samples are
correlated across ranks (unbiased, but use ``"rank"`` in production).

Shutting down: a gloo process can abort at interpreter exit after
``destroy_process_group()`` ("terminate called without an active exception");
:func:`exit_process` destroys the group, flushes and leaves with ``os._exit``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = [
    "ShardedNoise",
    "all_reduce_sum",
    "broadcast_object",
    "exit_process",
    "fit_on_main",
    "flush_and_exit",
    "init_from_env",
    "is_active",
    "is_main",
    "launched",
    "main_first",
    "rank",
    "rank_seed",
    "shard_bounds",
    "world_size",
]

DIST_NOISE = ("rank", "shard")


# ----------------------------------------------------------------------------- state
def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting the
    ``RANK``/``WORLD_SIZE`` environment variables) with more than one process."""
    try:
        return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def is_active() -> bool:
    """Whether a ``torch.distributed`` process group is initialised."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def rank() -> int:
    return torch.distributed.get_rank() if is_active() else 0


def world_size() -> int:
    return torch.distributed.get_world_size() if is_active() else 1


def is_main() -> bool:
    return rank() == 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_from_env(device: str = "auto") -> bool:
    """Start the process group from torchrun's environment; True when this process is
    now (or already was) part of a group.  A single process does nothing.  Backend:
    NCCL when the run uses CUDA, gloo otherwise."""
    if is_active():
        return True
    if not launched():
        return False
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank())
    torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def default_device(name: str) -> torch.device:
    """``auto`` under a process group: ``cuda:LOCAL_RANK`` when CUDA is present."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() if is_active() else torch.cuda.current_device())
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None and is_active():
        return torch.device("cuda", local_rank())
    return dev


def exit_process(code: int = 0) -> None:
    """End the process with ``code``: under a process group, destroy it, flush and
    ``os._exit`` (avoids gloo's abort at interpreter exit); otherwise ``sys.exit``."""
    if not is_active():
        sys.exit(code)
    try:
        torch.distributed.destroy_process_group()
    except Exception:  # pragma: no cover - best effort on the way out
        pass
    flush_and_exit(code)


def flush_and_exit(code: int = 0) -> None:
    """Flush stdout and stderr and leave with ``os._exit(code)``, skipping the
    interpreter's teardown (every file fvnce writes is written atomically and closed by
    then)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # pragma: no cover - a closed pipe: nothing more to say
            pass
    os._exit(int(code))


# ------------------------------------------------------------------------- helpers
def rank_seed(seed: int, r: int, step: int = 0) -> int:
    """The RNG seed of rank ``r`` (rank 0 at step 0 keeps ``seed`` itself)."""
    if r == 0 and step == 0:
        return seed
    return (seed * 1_000_003 + r * 999_983 + step * 7_919 + 104_729) % (2 ** 63)


def shard_bounds(n: int, r: int, world: int) -> tuple[int, int]:
    """Contiguous rows ``[start, stop)`` of ``n`` that rank ``r`` of ``world`` owns
    (sizes differ by at most one; the first ``n % world`` ranks get the extra row)."""
    base, extra = divmod(n, world)
    start = r * base + min(r, extra)
    return start, start + base + (1 if r < extra else 0)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (plain data and CPU tensors)."""
    if not is_active():
        return obj
    box = [obj if rank() == src else None]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list:
    if not is_active():
        return [obj]
    out: list = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def all_reduce_sum(values: Tensor) -> Tensor:
    """Sum of ``values`` over ranks (a copy; float64 on the CPU for gloo, the tensor's
    device for NCCL)."""
    if not is_active():
        return values
    t = values.detach().clone()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
    return t


def all_reduce_max(values: Tensor) -> Tensor:
    if not is_active():
        return values
    t = values.detach().clone()
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return t


def main_first(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` on rank 0 only (e.g. file writes); an :class:`~fvnce.errors.FvnceError`
    it raises is raised on every rank, so none is left waiting."""
    return fit_on_main(fn, lambda obj: None, lambda state: None)


def fit_on_main(fit: Callable[[], Any], to_state: Callable[[Any], Any],
                from_state: Callable[[Any], Any]) -> Any:
    """``fit()`` once, on rank 0, and the result on every rank: rank 0 broadcasts
    ``to_state(result)`` and the others rebuild it with ``from_state`` (noise fitting is
    done this way).  Errors are re-raised on every rank."""
    from .errors import ConfigError, FvnceError

    if not is_active():
        return fit()
    if is_main():
        try:
            obj = fit()
            payload: tuple = ("ok", to_state(obj))
        except FvnceError as exc:
            broadcast_object(("error", str(exc)))
            raise
        except BaseException as exc:
            broadcast_object(("error", f"{type(exc).__name__}: {exc}"))
            raise
        broadcast_object(payload)
        return obj
    status, value = broadcast_object(None)
    if status == "error":
        raise ConfigError(f"rank 0 failed: {value}")
    return from_state(value)


class ShardedNoise:
    """A noise whose draws, during a step, are made at the global size and sliced to
    this rank's shard (``dist_noise="shard"``).  Outside a step, and for ``log_prob``
    and every other attribute, it is the wrapped noise."""

    def __init__(self, noise) -> None:
        self.base = noise
        self._shard: tuple[int, int, int] | None = None

    def set_shard(self, start: int, count: int, total: int) -> None:
        self._shard = (start, count, total)

    def clear(self) -> None:
        self._shard = None

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape)
        if self._shard is None or len(shape) == 0:
            return self.base.sample(shape)
        start, count, total = self._shard
        n = shape[0]
        if count == 0 or n % count:
            return self.base.sample(shape)
        mult = n // count
        y = self.base.sample(torch.Size((mult * total,)) + shape[1:])
        return y[mult * start:mult * (start + count)]

    def log_prob(self, value):
        return self.base.log_prob(value)

    def __getattr__(self, name):
        if name == "base":
            raise AttributeError(name)
        return getattr(self.base, name)
