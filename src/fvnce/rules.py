"""Proper scoring rules on the density ratio, written as functions of ``log r``.

A strictly convex generator ``f`` on ``(0, inf)`` gives the Bregman loss

    L_f = E_{p_d}[ l1(r(x)) ] + E_{p_n}[ l0(r(x)) ],
    l1(r) = -f'(r),   l0(r) = r f'(r) - f(r),

minimised exactly at ``r = p_d / p_n`` (Gutmann & Hirayama 2011; Pihlaja et al. 2010).
When both ``l1`` and ``l0`` are convex in ``r`` the rule is *admissible* for fully
variational NCE (Zach 2023, arXiv:2304.02473): ``r = E_q[w]`` and Jensen bounds both
sides with one encoder.

Every rule here takes and returns tensors of any shape and works in log space.  Where a
rule needs ``exp(a * log r)`` it goes through :func:`stable_exp`, whose ``exp_mode``
chooses between the exact exponential and two stabilised versions:

* ``"exact"``  -- ``exp(a t)``;
* ``"clip"``   -- ``exp(a * min(t, tau))`` (hard clip of the log ratio at ``tau``);
* ``"linear"`` -- ``exp(a t)`` for ``t <= tau`` and its first-order Taylor expansion
  ``exp(a tau) (1 + a (t - tau))`` above: C^1 and convex, so gradients stay bounded.

A stabilised loss is no longer a guaranteed bound on the exact-ratio loss: it is a
different (smaller) loss once ``log r`` passes ``tau``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = [
    "EXP_MODES",
    "GenericRule",
    "KLRule",
    "LogisticRule",
    "PowerRule",
    "RULES",
    "ScoringRule",
    "ShiftedLogRule",
    "scoring_rule",
    "stable_exp",
]

EXP_MODES = ("exact", "clip", "linear")


def stable_exp(t: Tensor, a: float = 1.0, mode: str = "exact", tau: float = 20.0) -> Tensor:
    """``exp(a * t)`` computed according to ``mode`` (see module docstring).

    The threshold ``tau`` applies to ``t`` (the log ratio), not to ``a * t``.
    """
    if mode == "exact":
        return torch.exp(a * t)
    if mode == "clip":
        return torch.exp(a * torch.clamp(t, max=tau))
    if mode == "linear":
        # Double-where: the exp branch never sees t > tau, so neither value nor
        # gradient can overflow in the branch that where() discards.
        below = t <= tau
        t_low = torch.where(below, t, torch.full_like(t, tau))
        base = torch.exp(a * t_low)
        return torch.where(below, base, base * (1.0 + a * (t - tau)))
    raise ValueError(f"exp_mode must be one of {EXP_MODES}, got {mode!r}")


class ScoringRule:
    """Base class: a proper scoring rule on the ratio, evaluated on ``log r``.

    Subclasses implement :meth:`data_loss` (``l1``) and :meth:`noise_loss` (``l0``).
    ``params`` holds the rule's hyper-parameters (for messages and for saving).
    """

    name: str = "rule"

    def __init__(self, exp_mode: str = "exact", tau: float = 20.0) -> None:
        if exp_mode not in EXP_MODES:
            raise ValueError(f"exp_mode must be one of {EXP_MODES}, got {exp_mode!r}")
        if not math.isfinite(tau):
            raise ValueError(f"tau must be finite, got {tau!r}")
        self.exp_mode = exp_mode
        self.tau = float(tau)

    # -- the two per-element losses -----------------------------------------------------
    def data_loss(self, log_r: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def noise_loss(self, log_r: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _exp(self, t: Tensor, a: float = 1.0) -> Tensor:
        return stable_exp(t, a, self.exp_mode, self.tau)

    # -- description -------------------------------------------------------------------
    @property
    def params(self) -> dict:
        return {}

    def config(self) -> dict:
        """Plain-data description from which :func:`scoring_rule` rebuilds the rule."""
        return {"name": self.name, **self.params, "exp_mode": self.exp_mode, "tau": self.tau}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({inner})"

    def describe(self) -> str:
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items())
        return f"'{self.name}'" + (f" ({inner})" if inner else "")

    # -- admissibility -----------------------------------------------------------------
    def convexity_violations(self, log_r_min: float = -12.0, log_r_max: float = 12.0, n: int = 241) -> list[str]:
        """Sides whose loss is not convex in ``r``, checked numerically on a log grid.

        With ``g(t) = l(e^t)``, ``d^2 l / dr^2 = (g''(t) - g'(t)) e^{-2t}``, so the sign
        of ``g'' - g'`` decides.  Derivatives come from autograd in float64 with the
        exact exponential.  Returns human-readable descriptions, empty when admissible.
        """
        saved = self.exp_mode
        self.exp_mode = "exact"
        try:
            t = torch.linspace(log_r_min, log_r_max, n, dtype=torch.float64, requires_grad=True)
            out = []
            for side, fn in (("data side l1", self.data_loss), ("noise side l0", self.noise_loss)):
                g = fn(t)
                (g1,) = torch.autograd.grad(g.sum(), t, create_graph=True)
                if g1.requires_grad:
                    (g2,) = torch.autograd.grad(g1.sum(), t, allow_unused=True, materialize_grads=True)
                else:  # g' constant in t (a loss linear in log r)
                    g2 = torch.zeros_like(g1)
                curv = (g2 - g1).detach()
                scale = g2.detach().abs() + g1.detach().abs() + 1e-300
                bad = curv < -1e-7 * scale
                if bool(bad.any()):
                    r_bad = torch.exp(t.detach()[bad])
                    out.append(
                        f"{side} is not convex in r for rule {self.describe()} "
                        f"(l'' < 0 for r in [{r_bad.min().item():.3g}, {r_bad.max().item():.3g}])"
                    )
            return out
        finally:
            self.exp_mode = saved

    @property
    def admissible(self) -> bool:
        """True when both sides are convex in ``r`` (usable by fully variational NCE)."""
        return not self.convexity_violations()


class KLRule(ScoringRule):
    r"""Kullback-Leibler rule, ``f(r) = r log r``: ``l1 = -log r``, ``l0 = r``.

    The data side is ``-ELBO + log p_n(x)`` with a single importance weight; the noise
    side is an unbiased estimate of ``Z / exp(c)``.  For a normalised model the noise
    side has expectation 1 for any noise and encoder: this instance is the VAE.
    """

    name = "kl"

    def data_loss(self, log_r: Tensor) -> Tensor:
        return -log_r

    def noise_loss(self, log_r: Tensor) -> Tensor:
        return self._exp(log_r)


class PowerRule(ScoringRule):
    r"""Power rule, ``l1 = -(r^{a-1} - 1)/(a-1)``, ``l0 = (r^a - 1)/a``.

    Admissible for ``1 <= alpha <= 2`` (``alpha = 1`` is the KL rule up to a constant,
    ``alpha = 2`` least-squares ratio fitting); related to the density-power
    divergence (Basu et al. 1998), hence robust to outliers.  Proper for any
    ``alpha > 0``.  Both sides go through the stabilised exponential.
    """

    name = "power"

    def __init__(self, alpha: float = 1.5, exp_mode: str = "exact", tau: float = 20.0) -> None:
        super().__init__(exp_mode, tau)
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"power rule needs alpha > 0, got alpha={alpha!r}")
        self.alpha = float(alpha)

    @property
    def params(self) -> dict:
        return {"alpha": self.alpha}

    def data_loss(self, log_r: Tensor) -> Tensor:
        b = self.alpha - 1.0
        if b == 0.0:
            return -log_r
        return -(self._exp(log_r, b) - 1.0) / b

    def noise_loss(self, log_r: Tensor) -> Tensor:
        a = self.alpha
        return (self._exp(log_r, a) - 1.0) / a


class ShiftedLogRule(ScoringRule):
    r"""Shifted-log rule, ``l1 = -log(r + c)``, ``l0 = r - c log(r + c)``, ``c >= 0``.

    Interpolates the KL rule (``c = 0``) and a quadratic rule (``c -> inf``); the data
    loss is bounded above by ``-log c``.
    """

    name = "shifted_log"

    def __init__(self, c: float = 1.0, exp_mode: str = "exact", tau: float = 20.0) -> None:
        super().__init__(exp_mode, tau)
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
            raise ValueError(f"shifted_log rule needs c >= 0, got c={c!r}")
        self.c = float(c)

    @property
    def params(self) -> dict:
        return {"c": self.c}

    def _log_r_plus_c(self, log_r: Tensor) -> Tensor:
        if self.c == 0.0:
            return log_r
        return torch.logaddexp(log_r, torch.full_like(log_r, math.log(self.c)))

    def data_loss(self, log_r: Tensor) -> Tensor:
        return -self._log_r_plus_c(log_r)

    def noise_loss(self, log_r: Tensor) -> Tensor:
        out = self._exp(log_r)
        if self.c:
            out = out - self.c * self._log_r_plus_c(log_r)
        return out


class LogisticRule(ScoringRule):
    r"""Classic NCE (logistic loss) with ``nu`` noise samples per data sample.

    ``l1 = log(1 + nu / r) = softplus(log nu - log r)``,
    ``l0 = nu log(1 + r / nu) = nu softplus(log r - log nu)`` (Gutmann & Hyvarinen
    2012).  Its noise side is concave in ``r``, so fully variational NCE refuses it;
    it serves ``nce`` and ``vnce``.
    """

    name = "logistic"

    def __init__(self, nu: float = 1.0, exp_mode: str = "exact", tau: float = 20.0) -> None:
        super().__init__(exp_mode, tau)
        if not (isinstance(nu, (int, float)) and math.isfinite(nu) and nu > 0):
            raise ValueError(f"logistic rule needs nu > 0, got nu={nu!r}")
        self.nu = float(nu)

    @property
    def params(self) -> dict:
        return {"nu": self.nu}

    def data_loss(self, log_r: Tensor) -> Tensor:
        return F.softplus(math.log(self.nu) - log_r)

    def noise_loss(self, log_r: Tensor) -> Tensor:
        return self.nu * F.softplus(log_r - math.log(self.nu))


class GenericRule(ScoringRule):
    r"""A rule built from a user's differentiable, strictly convex generator ``f(r)``.

    ``l1 = -f'(r)`` and ``l0 = r f'(r) - f(r)`` with ``f'`` taken by autograd.  ``f``
    receives ``r = exp(log r)`` (after the exp-mode stabilisation), so it works in
    ratio space: keep ``|log r|`` moderate or choose ``exp_mode="clip"``.
    """

    name = "generic"

    def __init__(self, f: Callable[[Tensor], Tensor], exp_mode: str = "exact", tau: float = 20.0,
                 label: str | None = None) -> None:
        super().__init__(exp_mode, tau)
        if not callable(f):
            raise ValueError(f"generic rule needs a callable generator f, got {f!r}")
        self.f = f
        self.label = label or getattr(f, "__name__", "f")
        # properness needs f strictly convex: check f'' > 0 on a grid
        r = torch.logspace(-4, 4, 81, dtype=torch.float64, requires_grad=True)
        f1, f2 = self._derivs(r, second=True)
        if not bool(torch.isfinite(f2).all()) or bool((f2 <= 0).any()):
            raise ValueError(f"generic rule: generator {self.label} is not strictly convex on (0, inf) "
                             "(f''(r) <= 0 somewhere in [1e-4, 1e4]), so the rule is not proper")

    @property
    def params(self) -> dict:
        return {"f": self.label}

    def config(self) -> dict:
        raise TypeError("a generic rule wraps a Python callable and cannot be saved as plain data")

    def _derivs(self, r: Tensor, second: bool = False):
        if not r.requires_grad:
            r = r.detach().requires_grad_(True)
        with torch.enable_grad():
            fr = self.f(r)
            (f1,) = torch.autograd.grad(fr.sum(), r, create_graph=True)
            if not second:
                return fr, f1
            (f2,) = torch.autograd.grad(f1.sum(), r, create_graph=True)
            return f1, f2

    def data_loss(self, log_r: Tensor) -> Tensor:
        r = self._exp(log_r)
        _, f1 = self._derivs_keep(r)
        return -f1

    def noise_loss(self, log_r: Tensor) -> Tensor:
        r = self._exp(log_r)
        fr, f1 = self._derivs_keep(r)
        return r * f1 - fr

    def _derivs_keep(self, r: Tensor):
        # r may already be part of a graph (gradients must flow through f'); make f' a
        # differentiable function of r via create_graph.
        if r.requires_grad:
            with torch.enable_grad():
                fr = self.f(r)
                (f1,) = torch.autograd.grad(fr.sum(), r, create_graph=True)
            return fr, f1
        return self._derivs(r)


RULES: dict[str, type[ScoringRule]] = {
    "kl": KLRule,
    "power": PowerRule,
    "shifted_log": ShiftedLogRule,
    "logistic": LogisticRule,
    "generic": GenericRule,
}


def scoring_rule(name: str | ScoringRule, **params) -> ScoringRule:
    """Build a scoring rule by name: ``kl``, ``power(alpha)``, ``shifted_log(c)``,
    ``logistic(nu)``, or ``generic(f)``.  ``exp_mode`` and ``tau`` are accepted by all.

    >>> scoring_rule("power", alpha=1.5).noise_loss(torch.zeros(3))
    tensor([0., 0., 0.])
    """
    if isinstance(name, ScoringRule):
        if params:
            raise ValueError("scoring_rule: parameters given together with a rule object")
        return name
    if name not in RULES:
        raise ValueError(f"unknown scoring rule {name!r}; valid rules: {', '.join(RULES)}")
    cls = RULES[name]
    try:
        return cls(**params)
    except TypeError as exc:  # unexpected keyword
        raise ValueError(f"scoring rule {name!r}: {exc}") from None
