"""Validation: the objective's mean loss on held-out rows, the best-validation
parameters, and the tail of the noise-side importance weights.

Validation draws its random numbers from a forked RNG with a fixed seed: the same noise
and encoder samples at every evaluation, and no effect on the training stream.  At each
validation the Pareto k-hat and ESS of the noise-side weights are recorded; when they
turn unreliable a ``"warning"`` event names the likely cause and fix (once, until they
recover).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

__all__ = ["MIN_TAIL_WEIGHTS", "Validator", "mean_loss"]

#: fewest validation noise points whose weights get a Pareto k-hat during training
MIN_TAIL_WEIGHTS = 100


@torch.no_grad()
def mean_loss(objective, model, encoder, noise, x: Tensor, x_log_pn: Tensor | None, batch_size: int, seed: int,
              device: torch.device) -> tuple[float, Tensor | None]:
    """Mean objective loss on ``x`` in evaluation mode with fixed random numbers, and the
    noise-side log ratios seen (None when the objective reports none)."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    modules = [m for m in (model, encoder) if m is not None]
    was_training = [m.training for m in modules]
    for m in modules:
        m.train(False)
    total, count, noise_lr = 0.0, 0, []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + 1_000_003)
            for i in range(0, x.shape[0], batch_size):
                xb = x[i:i + batch_size]
                lp = None if x_log_pn is None else x_log_pn[i:i + batch_size]
                out = objective(model, encoder, xb, noise, x_log_pn=lp)
                total += float(out.loss) * xb.shape[0]
                count += xb.shape[0]
                if getattr(out, "noise_log_ratio", None) is not None:
                    noise_lr.append(out.noise_log_ratio.detach().reshape(-1).cpu())
    finally:
        for m, t in zip(modules, was_training):
            m.train(t)
    return total / max(count, 1), (torch.cat(noise_lr) if noise_lr else None)


class Validator:
    """Keeps the best validation loss (``on_best(step, loss)`` is called at each new
    best, e.g. to write ``best.pt``) and whether the heavy-tail warning was given
    (``tail_warned``, kept in the checkpoint so that a resumed run does not warn again)."""

    def __init__(self, on_best: Callable[[int, float], None] | None, say: Callable[[str], None]) -> None:
        self.on_best, self.say = on_best, say
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.tail_warned = False

    def record(self, v: float, step: int, elapsed: float, noise_log_ratio: Tensor | None) -> list[dict]:
        """The validation record of loss ``v`` at ``step`` and any warning events."""
        rec = {"step": step, "val_loss": v, "elapsed": elapsed}
        improved = math.isfinite(v) and (self.best_val is None or v < self.best_val)
        if improved:
            self.best_val, self.best_step = v, step
            if self.on_best is not None:
                self.on_best(step, v)
        rec["best_val"] = self.best_val
        events = self._noise_tail(rec, step, noise_log_ratio)
        return [rec, *events]

    def _noise_tail(self, rec: dict, step: int, lr: Tensor | None) -> list[dict]:
        """Pareto k-hat and ESS of the validation noise-side weights into ``rec``; a
        ``warning`` event (logged once per run) when they turn unreliable."""
        if lr is None or lr.numel() < MIN_TAIL_WEIGHTS:  # too few weights to judge a tail
            return []
        from ..diagnostics import heavy_tail_message, weight_report

        rep = weight_report(lr)
        rec["noise_khat"], rec["noise_ess_fraction"] = rep["khat"], rep["ess_fraction"]
        msg = heavy_tail_message(rep["khat"], rep["ess_fraction"], "noise-side")
        if msg is None:
            self.tail_warned = False
            return []
        if self.tail_warned:
            return []
        self.tail_warned = True
        self.say(f"fvnce: warning at step {step}: {msg}")
        return [{"step": step, "event": "warning", "kind": "heavy_tail", "khat": rep["khat"],
                 "ess_fraction": rep["ess_fraction"], "message": msg}]
