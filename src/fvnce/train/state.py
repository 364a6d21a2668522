"""The checkpoint: what it holds, writing it, and reading it back for a resume.

``checkpoint.pt`` holds everything needed to continue bit for bit: parameters,
optimiser state, step, the global RNG state (every rank's under torch.distributed), the
guard's learning rate, clipping norm, retry count and current stabilisation, the best
validation loss and the elapsed time.  ``tail_warned`` says whether the heavy-tail warning was given; a checkpoint written
off schedule (Ctrl-C) also holds the rollback snapshot of the last periodic one.
``best.pt`` holds the parameters with the lowest
validation loss.  Files are written atomically (:mod:`fvnce.checkpoint`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .. import distributed as _dist
from ..checkpoint import load_checkpoint, save_checkpoint
from ..errors import CheckpointError
from ..filenames import BEST_NAME, CHECKPOINT_NAME
from ._tree import to_cpu
from .rng import seed_all, set_rng_state

__all__ = ["BEST_NAME", "CHECKPOINT_NAME", "load_for_resume", "payload", "restore_rng", "save_best", "write"]


def _weights(model, encoder) -> dict:
    return {"model": to_cpu(dict(model.state_dict())),
            "encoder": None if encoder is None else to_cpu(dict(encoder.state_dict()))}


def payload(*, step: int, model, encoder, optimizer, rng: dict, guard: dict, config: dict,
            best_val, best_step, n_train: int, elapsed: float, tail_warned: bool = False,
            snapshot: dict | None = None) -> dict:
    """The checkpoint's content (plain data and CPU tensors).  ``snapshot``: the guard's
    rollback target, when it is not this step (a checkpoint written off schedule, at a
    Ctrl-C), so that the resumed run rolls back where the uninterrupted one would."""
    weights = _weights(model, encoder)
    return {
        "step": step,
        "model": weights["model"],
        "encoder": weights["encoder"],
        "optimizer": to_cpu(optimizer.state_dict()),
        "rng": rng,
        "lr": guard["lr"],
        "grad_clip": guard["grad_clip"],
        "rule": guard["rule"],
        "retries": guard["retries"],
        "config": config,
        "best_val": best_val,
        "best_step": best_step,
        "n_train": n_train,
        "elapsed": elapsed,
        "tail_warned": tail_warned,
        **({} if snapshot is None else {"snapshot": to_cpu(snapshot)}),
    }


def write(path: Path, content: dict, rng_ranks: list | None = None, world: int = 1) -> None:
    """Write ``content`` atomically to ``path`` (with every rank's RNG state when given)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if rng_ranks is not None:
        content["rng_ranks"] = to_cpu(rng_ranks)
        content["world_size"] = world
    save_checkpoint(path, content)


def save_best(path: Path, step: int, val_loss: float, model, encoder) -> None:
    save_checkpoint(path, {"step": step, "val_loss": val_loss, **_weights(model, encoder)})


def load_for_resume(path: Path, config, n_train: int, model, encoder, optimizer) -> dict:
    """Read the checkpoint at ``path``, check that it belongs to this run (seed, batch
    size, training rows, model), load parameters and optimiser state, and return it
    for the parts that own the rest (step, guard, RNG, best validation, elapsed)."""
    ckpt = load_checkpoint(path)
    cfg = ckpt.get("config") or {}
    for key in ("seed", "batch_size"):
        if key in cfg and cfg[key] != getattr(config, key):
            raise CheckpointError(f"cannot resume from {path}: it was trained with "
                                  f"{key}={cfg[key]!r}, this run has {key}={getattr(config, key)!r}")
    if ckpt.get("n_train") not in (None, n_train):
        raise CheckpointError(f"cannot resume from {path}: it was trained on "
                              f"{ckpt['n_train']} rows, this training set has {n_train}")
    try:
        model.load_state_dict(ckpt["model"])
        if encoder is not None:
            if ckpt.get("encoder") is None:
                raise CheckpointError(f"{path} holds no encoder, but this run has one")
            encoder.load_state_dict(ckpt["encoder"])
        optimizer.load_state_dict(ckpt["optimizer"])
    except (RuntimeError, KeyError, ValueError) as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} does not match this model: {line}") from None
    return ckpt


def restore_rng(ckpt: dict, config, device: torch.device, rank: int = 0, world: int = 1) -> None:
    """The RNG state of a resumed run: this rank's saved state; with another world size,
    rank 0 takes the saved state and, under ``dist_noise="rank"``, the others a fresh
    rank seed for the step."""
    rng_ranks = ckpt.get("rng_ranks")
    if world > 1 and rng_ranks and len(rng_ranks) == world:
        set_rng_state(rng_ranks[rank])
    elif world > 1 and config.dist_noise == "rank" and rank != 0:
        seed_all(_dist.rank_seed(config.seed, rank, int(ckpt["step"])), device)
    else:
        set_rng_state(ckpt["rng"])
