"""Explosion detection, rollback and retries.

A step whose loss is non-finite, whose log ratios explode (beyond
``explode_log_ratio``) or whose gradients are non-finite is not taken: training rolls
back to the last good state (:meth:`Guard.snapshot`, kept in memory at the start and at
each checkpoint), halves the learning rate and the clipping norm, and tightens the
scoring rule's stabilisation (exact -> linear with tau at most 10, else tau halved, at
least 1; every stabilised rule is still strictly proper with minimiser ``p/q``, see
:mod:`fvnce.rules`).  After ``max_retries`` rollbacks :class:`DivergenceError` is
raised.  The guard owns what rollbacks change: the learning rate, the clipping norm,
the retry count and the snapshot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import NonFiniteLossError
from ..objectives.output import Diagnostics, read_floats
from ..objectives.weights import calibrate_log_normaliser
from ._tree import deepclone
from .rng import rng_state, set_rng_state

__all__ = ["DivergenceError", "Guard", "Rollback", "STABILISED_EXPLODE_FACTOR", "calibrate", "explosion", "rule_of"]

#: with clip/linear exponentials, log ratios this many times ``explode_log_ratio`` count
#: as exploding (they cannot overflow, but such ratios mean the noise misses the data)
STABILISED_EXPLODE_FACTOR = 10.0
_DIVERGENCE_HINT = ("the noise is probably too far from the data: try a noise closer to it "
                    "(e.g. --noise flow or kde) or exp_mode linear")


class DivergenceError(NonFiniteLossError):
    """Training kept diverging after ``max_retries`` rollbacks."""


def rule_of(objective):
    """The objective's scoring rule when its stabilisation can be changed, else None."""
    rule = getattr(objective, "rule", None)
    return rule if rule is not None and hasattr(rule, "exp_mode") and hasattr(rule, "tau") else None


def explosion(out, objective, limit: float) -> str | None:
    """Why ``out`` shows exploding importance weights, or None.

    The mean noise-side log ratio or the largest noise-side log weight above ``limit``,
    and for rules that exponentiate the data side in exact mode (power, generic) the mean
    data-side log ratio.  Only large *positive* log ratios count: they overflow the
    exponentials, while very negative ones merely make weights vanish (and a healthy VAE
    has large data-side ratios against a simple noise, which its KL rule never
    exponentiates).  Every proper stabilisation keeps the noise loss at least linear in
    ``r`` (exponential in ``log r``), so the noise-side limit is the same in every
    ``exp_mode``; rules whose losses cannot overflow (logistic) get
    ``STABILISED_EXPLODE_FACTOR`` times more room when stabilised."""
    if not getattr(objective, "uses_noise", True):
        return None
    rule = rule_of(objective)
    if not math.isfinite(limit):
        return None
    exact = rule is None or getattr(rule, "exp_mode", "exact") == "exact"
    if not exact and not getattr(rule, "overflows", True):
        limit *= STABILISED_EXPLODE_FACTOR
    d = out.diagnostics or {}
    names = ["noise_log_ratio"]
    if exact and rule is not None and getattr(rule, "name", "") in ("power", "generic") \
            and getattr(rule, "alpha", 2.0) != 1.0:
        names.append("data_log_ratio")
    checks = [(key, d.tensor(key) if isinstance(d, Diagnostics) else d.get(key)) for key in names]
    for key, t in (out.parts or {}).items():
        if t is not None and "noise" in key and ("log-ratio" in key or "log ratio" in key) \
                and isinstance(t, Tensor) and t.numel():
            checks.append((f"max {key}", _max_finite(t.detach())))
    values = read_floats([v for _, v in checks])  # one host read for all of them
    for (key, _), v in zip(checks, values):
        if v is None:
            continue
        v = float(v)
        if math.isfinite(v) and v > limit:
            return f"exploding importance weights: {key} = {v:.3g} exceeds explode_log_ratio = {limit:g}"
    return None


def _max_finite(t: Tensor) -> Tensor:
    """The largest finite entry of ``t``, or -inf when there is none (NaN and +-inf map
    to -inf: one pass, no boolean indexing)."""
    return torch.nan_to_num(t, nan=-math.inf, posinf=-math.inf).amax()


@torch.no_grad()
def calibrate(model, encoder, objective, noise) -> str | None:
    """Start the log-normaliser ``c`` of an unnormalised model in closed form, so that the
    noise-side mean of ``r`` is 1 (power rules get no gradient for ``c`` when it starts
    far off); returns the line to log, or None when there was nothing to calibrate."""
    if getattr(model, "c", None) is None:
        return None
    if not getattr(objective, "uses_noise", True) or noise is None:
        return None
    shift = calibrate_log_normaliser(model, encoder, noise)
    return f"fvnce: calibrated the log-normaliser (shift {shift:+.4g}, c = {float(model.c):.4g})"


@dataclass
class Rollback:
    """What a rollback did: the step trained from again, events for the metrics file and
    lines for the log."""

    step: int
    events: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


class Guard:
    """Keeps the last good state of ``model``, ``encoder``, ``optimizer`` and the RNG,
    and rolls back to it with a more cautious setting when a step fails."""

    def __init__(self, config, model, encoder, optimizer, objective, device: torch.device) -> None:
        self.config, self.model, self.encoder = config, model, encoder
        self.optimizer, self.objective, self.device = optimizer, objective, device
        self.lr = float(config.lr)
        self.grad_clip = None if config.grad_clip is None else float(config.grad_clip)
        self.retries = 0
        self._snapshot: dict | None = None

    @property
    def rule(self):
        return rule_of(self.objective)

    def check(self, out) -> str | None:
        """Why the step that gave ``out`` must not be taken (exploding weights), or None."""
        return explosion(out, self.objective, self.config.explode_log_ratio)

    def snapshot(self, step: int) -> None:
        self._snapshot = {
            "step": step,
            "model": deepclone(self.model.state_dict()),
            "encoder": None if self.encoder is None else deepclone(self.encoder.state_dict()),
            "optimizer": deepclone(self.optimizer.state_dict()),
            "rng": deepclone(rng_state(self.device)),
        }

    @property
    def snapshot_state(self) -> dict | None:
        """The rollback target (step, parameters, optimiser and RNG state)."""
        return self._snapshot

    def restore_snapshot(self, snap: dict) -> None:
        """Take ``snap`` (a saved :attr:`snapshot_state`, e.g. from a Ctrl-C checkpoint) as
        the rollback target."""
        self._snapshot = deepclone(snap)

    def apply_lr(self) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = self.lr

    def state(self) -> dict:
        """The checkpoint entries the guard owns."""
        rule = self.rule
        return {"lr": self.lr, "grad_clip": self.grad_clip, "retries": self.retries,
                "rule": None if rule is None else {"exp_mode": rule.exp_mode, "tau": float(rule.tau)}}

    def load_state(self, ckpt: dict) -> None:
        self.lr = float(ckpt.get("lr", self.config.lr))
        self.apply_lr()
        self.grad_clip = ckpt.get("grad_clip", self.grad_clip)
        rule, saved_rule = self.rule, ckpt.get("rule")
        if rule is not None and saved_rule is not None:
            rule.exp_mode = saved_rule["exp_mode"]
            rule.tau = float(saved_rule["tau"])
        self.retries = int(ckpt.get("retries", 0))

    def rollback(self, reason: str, failed_step: int, elapsed: float) -> Rollback:
        """Restore the snapshot, halve lr and clipping norm, tighten the rule's
        stabilisation; :class:`DivergenceError` after ``max_retries`` rollbacks."""
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
        self.optimizer.load_state_dict(deepclone(snap["optimizer"]))
        set_rng_state(snap["rng"])
        step = snap["step"]
        self.lr *= 0.5
        self.apply_lr()
        if self.grad_clip is not None:
            self.grad_clip *= 0.5
        change = self._tighten_rule()
        rule = self.rule
        done = Rollback(step)
        done.events.append({"step": step, "event": "retry", "retry": self.retries, "failed_step": failed_step,
                            "reason": reason, "lr": self.lr, "grad_clip": self.grad_clip,
                            "exp_mode": None if rule is None else rule.exp_mode,
                            "tau": None if rule is None else rule.tau, "elapsed": elapsed})
        rule_msg = ""
        if change is not None:
            done.events.append({"step": step, "event": "stabilise", "reason": f"divergence at step {failed_step}",
                                **change, "elapsed": elapsed})
            rule_msg = f", exp_mode={rule.exp_mode} tau={rule.tau:g}"
        done.messages.append(f"fvnce: step {failed_step}: {reason}; rolled back to step {step} "
                             f"(retry {self.retries}/{self.config.max_retries}): lr={self.lr:g} "
                             f"grad_clip={self.grad_clip}{rule_msg}")
        if change is not None:
            done.messages.append(
                f"fvnce: the objective's stabilisation changed from exp_mode={change['from']['exp_mode']} "
                f"tau={change['from']['tau']:g} to exp_mode={change['to']['exp_mode']} "
                f"tau={change['to']['tau']:g} (still a proper rule with the same minimiser; "
                "recorded in metrics.jsonl)")
        return done

    def _tighten_rule(self) -> dict | None:
        rule = self.rule
        if rule is None or not getattr(rule, "overflows", True):
            return None
        before = {"exp_mode": rule.exp_mode, "tau": float(rule.tau)}
        if rule.exp_mode == "exact":
            # the stabilised rule is again strictly proper with the same minimiser
            # (fvnce.rules): a change of numerics, not of what is learned
            rule.exp_mode = "linear"
            rule.tau = min(float(rule.tau), 10.0)
        else:
            rule.tau = max(float(rule.tau) / 2.0, 1.0)
        after = {"exp_mode": rule.exp_mode, "tau": float(rule.tau)}
        return {"from": before, "to": after} if after != before else None
