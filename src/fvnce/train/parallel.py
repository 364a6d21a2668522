"""Training under torch.distributed: DistributedDataParallel, batch shards, and the
collectives the loop needs (agreeing on failures and stops, averaging records).

Under an initialised process group (``torchrun``) the trainer wraps model, encoder and
objective in ``DistributedDataParallel``, gives every rank a contiguous shard of each
global batch (the local loss re-weighted so that averaged gradients are those of the
global-batch mean) and writes files on rank 0 only.  The process group itself, rank
seeds, noise sharding and what equals a single-process run: :mod:`fvnce.distributed`.
A single process gets the same object with ``active`` False, where every method is the
identity.
"""

from __future__ import annotations

import gc
import math

import torch
from torch import Tensor, nn

from .. import distributed as _dist
from ..errors import ConfigError
from .config import is_number, steps_per_epoch

__all__ = ["Parallel"]


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


class Parallel:
    """This process's place in the process group (rank 0 of 1 without one)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.rank, self.world = _dist.rank(), _dist.world_size()
        self.active = _dist.is_active() and self.world > 1
        #: only the main process writes files (False on ranks > 0)
        self.is_main = self.rank == 0 if self.active else True
        self.ddp = None

    @property
    def comm_device(self) -> torch.device:
        if self.active and torch.distributed.get_backend() == "nccl":
            return self.device
        return torch.device("cpu")

    def agree(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on any rank (single process: ``flag``)."""
        if not self.active:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], dtype=torch.float64, device=self.comm_device)
        return bool(_dist.all_reduce_max(t).item() > 0)

    def check_batches(self, n: int, batch_size: int) -> None:
        if not self.active:
            return
        bs = min(batch_size, n)
        smallest = min(bs, n - (steps_per_epoch(n, bs) - 1) * bs)
        if smallest < self.world:
            raise ConfigError(f"batch_size={batch_size} on {n} training rows leaves a batch of {smallest} "
                              f"rows, fewer than the {self.world} processes: use a larger batch_size")

    def share_noise(self, noise, dist_noise: str):
        """The noise as this rank samples it: with ``dist_noise="shard"`` a
        :class:`~fvnce.distributed.ShardedNoise` (global-size draws, this rank's slice)."""
        if self.active and dist_noise == "shard" and noise is not None:
            return _dist.ShardedNoise(noise)
        return noise

    def shard(self, idx: Tensor, noise=None) -> tuple[Tensor, float, int]:
        """This rank's rows of the global batch ``idx``, the loss scale and their count;
        a sharded ``noise`` is told the rows for the coming step (:meth:`end_step` after it)."""
        if not self.active:
            return idx, 1.0, len(idx)
        a, b = _dist.shard_bounds(len(idx), self.rank, self.world)
        if isinstance(noise, _dist.ShardedNoise):
            noise.set_shard(a, b - a, len(idx))
        return idx[a:b], self.world * (b - a) / len(idx), b - a

    @staticmethod
    def end_step(noise) -> None:
        if isinstance(noise, _dist.ShardedNoise):
            noise.clear()

    def gather_rng(self, state: dict) -> list | None:
        """Every rank's RNG state (None in a single process)."""
        return _dist.all_gather_object(state) if self.active else None

    def reduce_record(self, rec: dict, rows: int) -> dict:
        """Row-weighted mean over ranks of a training record's numbers."""
        if not self.active:
            return rec
        keys = [k for k in sorted(rec) if k not in ("step", "lr", "elapsed", "grad_norm")
                and (rec[k] is None or (is_number(rec[k])))]
        vals = [rows * (math.nan if rec[k] is None else float(rec[k])) for k in keys] + [float(rows)]
        tot = _dist.all_reduce_sum(torch.tensor(vals, dtype=torch.float64, device=self.comm_device)).cpu()
        for i, k in enumerate(keys):
            rec[k] = float(tot[i] / tot[-1])
        return rec

    def shard_mean(self, fn, x: Tensor, x_log_pn: Tensor | None) -> float:
        """``fn(x, x_log_pn)``, a mean over rows, with each rank taking its share of the rows."""
        if not self.active:
            return fn(x, x_log_pn)
        a, b = _dist.shard_bounds(x.shape[0], self.rank, self.world)
        local = fn(x[a:b], None if x_log_pn is None else x_log_pn[a:b]) if b > a else 0.0
        tot = _dist.all_reduce_sum(torch.tensor([local * (b - a), float(b - a)], dtype=torch.float64,
                                                device=self.comm_device))
        return float(tot[0] / tot[1])

    # -- DistributedDataParallel ---------------------------------------------------------
    def wrap(self, model, encoder, objective, optimizer, params: list, noise, x: Tensor,
             x_log_pn: Tensor | None) -> None:
        """Wrap model, encoder and objective in DDP (broadcasts rank 0's parameters)."""
        if not self.active or self.ddp is not None:
            return
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters only when needed (an extra graph traversal per step): a
        # parameter may get no gradient, e.g. a log-normaliser that the loss ignores
        unused = self._has_unused_parameters(model, encoder, objective, optimizer, params, noise, x, x_log_pn)
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_ObjectiveModule(model, encoder, objective),
                                           device_ids=ids, output_device=ids[0] if ids else None,
                                           find_unused_parameters=unused)

    def unwrap(self) -> None:
        if self.ddp is not None:
            self.ddp = None
            gc.collect()  # drop the reducer's autograd hooks before another fit

    def forward(self, model, encoder, objective, noise, x: Tensor, x_log_pn: Tensor | None, scale: float):
        """``(loss, output)`` of the objective on this rank's rows (through DDP when wrapped)."""
        if self.ddp is not None:
            loss = self.ddp(x, x_log_pn, noise, scale)
            out = self.ddp.module.last
            self.ddp.module.last = None
            return loss, out
        out = objective(model, encoder, x, noise, x_log_pn=x_log_pn)
        return out.loss, out

    def _has_unused_parameters(self, model, encoder, objective, optimizer, params, noise, x, x_log_pn) -> bool:
        """Whether some trainable parameter gets no gradient from the objective (probed
        on a few rows with a forked RNG, agreed over ranks)."""
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            optimizer.zero_grad(set_to_none=True)
            try:
                out = objective(model, encoder, x, noise, x_log_pn=x_log_pn)
                out.loss.backward()
                unused = any(p.grad is None for p in params)
            except Exception:
                unused = True
            optimizer.zero_grad(set_to_none=True)
        return self.agree(unused)
