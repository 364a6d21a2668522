"""Proper scoring rules on the density ratio, written as functions of ``log r``.

A strictly convex generator ``f`` on ``(0, inf)`` gives the Bregman loss

    L_f = E_{p_d}[ l1(r(x)) ] + E_{p_n}[ l0(r(x)) ],
    l1(r) = -f'(r),   l0(r) = r f'(r) - f(r),

minimised exactly at ``r = p_d / p_n`` (Gutmann & Hirayama 2011; Pihlaja et al. 2010).
When both ``l1`` and ``l0`` are convex in ``r`` the rule is *admissible* for fully
variational NCE (Zach 2023, arXiv:2304.02473): ``r = E_q[w]`` and Jensen bounds both
sides with one encoder.  Admissibility is ``f''' <= 0`` and ``(r f''(r))' >= 0``.

Stabilisation (``exp_mode``).  In ``t = log r`` every rule is driven by its *weight*
``h(r) = r f''(r)``: ``dl1/dt = -h`` and ``dl0/dt = r h``.  Three modes:

* ``"exact"`` -- the rule as written (``exp`` may overflow when ``|log r|`` is large).
* ``"linear"`` (default of the CLI) -- the weight is frozen outside the band
  ``|log r| <= tau``: ``h_s(r) = h(clamp(r, e^-tau, e^tau))``.  Beyond the band the data
  loss continues *linearly in log r* (KL-like, the slowest fall any admissible rule can
  have, so no incentive to grow spikes, and a constant slope below the band, so no dead
  zone) and the noise loss *linearly in r* (its tangent).  This is the rule of the
  generator ``f_s`` with ``r f_s'' = h_s``: ``h_s`` is still positive and non-decreasing
  and ``f_s'' = h_s / r`` still non-increasing, so ``f_s`` is strictly convex and
  admissible.  Hence the stabilised rule is again strictly proper with minimiser exactly
  ``p/q`` (no truncation), both sides stay convex in ``r`` (the fully variational bounds
  hold), and the expected loss is bounded below and grows without bound as the
  log-normaliser goes to either infinity.  For the KL rule it changes nothing.
* ``"clip"`` -- the truncated rule: data side ``l1(min(r, R))`` (= ``max(l1(r), l1(R))``),
  noise side ``l0`` extended by its tangent in ``r`` above ``R = e^tau``.  Both sides are
  convex in ``r``; the rule is proper with minimiser ``min(p/q, R)`` (data points whose
  ratio exceeds ``R`` get no gradient).

Where a mode extends a side by a function of ``e^{t - tau}``, that part is computed in
float64 with ``expm1`` (no overflow below ``log r = tau + 700``); the band itself never
exponentiates a ``t`` larger than ``tau``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["EXP_MODES", "GenericRule", "KLRule", "LogisticRule", "PowerRule", "RULES", "ScoringRule",
           "ShiftedLogRule", "named_rules", "rule_flags", "rule_parameters", "scoring_rule"]

EXP_MODES = ("exact", "linear", "clip")


def _check_tau(tau) -> float:
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau) or tau <= 0:
        raise ValueError(f"tau must be a positive finite number (the band |log r| <= tau of the "
                         f"stabilised rule), got tau={tau!r}")
    return float(tau)


class ScoringRule:
    """Base class: a proper scoring rule on the ratio, evaluated on ``t = log r``.

    Subclasses implement the exact losses :meth:`_l1` and :meth:`_l0` as functions of
    ``t`` and, where they have one, the closed-form weight :meth:`weight`
    (``h = r f''(r) = -dl1/dt``).  The public :meth:`data_loss` and :meth:`noise_loss`
    apply the stabilisation chosen by ``exp_mode`` and ``tau`` (module docstring).
    ``params`` holds the rule's hyper-parameters (for messages and for saving).
    """

    name: str = "rule"
    #: False for rules whose losses cannot overflow (they ignore ``exp_mode``)
    overflows: bool = True
    #: True when ``exp_mode="linear"`` leaves the rule unchanged (constant weight: KL); the
    #: noise loss is then linear in ``r`` as evaluated, in every mode, and ``E_q l0(r_k) = r``
    #: for every encoder
    constant_weight: bool = False
    #: the rule's one numeric parameter (a keyword of ``__init__``: ``alpha``, ``c``,
    #: ``nu``), None when it has none; it is written after the name in run names
    param: str | None = None
    #: the ``fvnce train`` flag (without ``--``; also the :class:`fvnce.Detector` keyword)
    #: that sets :attr:`param`, its metavar and help; None: no flag of its own
    flag: str | None = None
    flag_metavar: str | None = None
    flag_help: str | None = None
    #: False for rules that need more than a name and numbers (a Python function): they are
    #: no choice of the command line
    by_name: bool = True

    @classmethod
    def run_label(cls, params: dict) -> str:
        """The rule in run names: its name, then its parameter values (``power1.5``, ``kl``)."""
        return cls.name + "".join(f"{v:g}" for v in params.values())

    def __init__(self, exp_mode: str = "exact", tau: float = 20.0) -> None:
        if exp_mode not in EXP_MODES:
            raise ValueError(f"exp_mode must be one of {EXP_MODES}, got {exp_mode!r}")
        self.exp_mode = exp_mode
        self.tau = _check_tau(tau)
        self._edges: tuple | None = None  # (exp_mode, tau) and the band of :meth:`_band`

    # -- the exact per-element losses (subclasses) ---------------------------------------
    def _l1(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def _l0(self, t: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def weight(self, t: Tensor) -> Tensor:
        """``h = r f''(r)`` at ``r = e^t`` (``= -dl1/dt``); by autograd unless overridden."""
        with torch.enable_grad():
            t = t.detach().double().requires_grad_(True)
            (g,) = torch.autograd.grad(self._l1(t).sum(), t)
        return -g

    # -- the stabilised losses -----------------------------------------------------------
    def _stabilised(self) -> bool:
        return self.overflows and not (self.exp_mode == "exact" or (self.exp_mode == "linear" and self.constant_weight))

    def _band(self) -> tuple[float | None, float, float, float]:
        """``(lo, hi, h(lo), h(hi))`` of the current mode (``lo`` None for ``clip``)."""
        key = (self.exp_mode, self.tau)
        if self._edges is None or self._edges[0] != key:
            hi = self.tau
            lo = -self.tau if self.exp_mode == "linear" else None
            h_hi = float(self.weight(torch.tensor(hi, dtype=torch.float64)))
            h_lo = float(self.weight(torch.tensor(lo, dtype=torch.float64))) if lo is not None else 0.0
            self._edges = (key, (lo, hi, h_lo, h_hi))
        return self._edges[1]

    def data_loss(self, log_r: Tensor) -> Tensor:
        """``l1`` at ``log r`` (stabilised according to ``exp_mode``)."""
        if not self._stabilised():
            return self._l1(log_r)
        lo, hi, h_lo, h_hi = self._band()
        out = self._l1(torch.clamp(log_r, min=lo, max=hi))
        if lo is None:  # clip: l1(min(r, R)), flat above R
            return out
        # linear: slope -h(hi) in t above the band, -h(lo) below it
        return out - h_hi * torch.relu(log_r - hi) + h_lo * torch.relu(lo - log_r)

    def noise_loss(self, log_r: Tensor) -> Tensor:
        """``l0`` at ``log r`` (stabilised according to ``exp_mode``)."""
        if not self._stabilised():
            return self._l0(log_r)
        lo, hi, h_lo, h_hi = self._band()
        out = self._l0(torch.clamp(log_r, min=lo, max=hi))
        # tangent in r above R = e^hi: + h(R) (r - R) = h(R) R expm1(t - hi), in float64
        over = torch.expm1(torch.relu(log_r.double() - hi)) * (h_hi * math.exp(hi))
        out = out + over.to(out.dtype)
        if lo is not None:  # tangent in r below e^lo: + h(e^lo) (r - e^lo)
            out = out + (h_lo * math.exp(lo)) * torch.expm1(torch.clamp(log_r - lo, max=0.0))
        return out

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
        """Sides whose exact loss is not convex in ``r``, checked numerically on a log grid.

        With ``g(t) = l(e^t)``, ``d^2 l / dr^2 = (g''(t) - g'(t)) e^{-2t}``, so the sign
        of ``g'' - g'`` decides.  Derivatives come from autograd in float64.  Returns
        human-readable descriptions, empty when admissible (the stabilised modes keep an
        admissible rule admissible).
        """
        t = torch.linspace(log_r_min, log_r_max, n, dtype=torch.float64, requires_grad=True)
        out = []
        for side, fn in (("data side l1", self._l1), ("noise side l0", self._l0)):
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

    @property
    def admissible(self) -> bool:
        """True when both sides are convex in ``r`` (usable by fully variational NCE)."""
        return not self.convexity_violations()


class KLRule(ScoringRule):
    r"""Kullback-Leibler rule, ``f(r) = r log r``: ``l1 = -log r``, ``l0 = r``, ``h = 1``.

    The data side is ``-ELBO + log p_n(x)`` with a single importance weight; the noise
    side is an unbiased estimate of ``Z / exp(c)``.  For a normalised model the noise
    side has expectation 1 for any noise and encoder: this instance is the VAE.  Its
    weight is constant, so ``exp_mode="linear"`` is the exact rule.
    """

    name = "kl"
    constant_weight = True

    def _l1(self, t: Tensor) -> Tensor:
        return -t

    def _l0(self, t: Tensor) -> Tensor:
        return torch.exp(t)

    def weight(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)


class PowerRule(ScoringRule):
    r"""Power rule, ``l1 = -(r^{a-1} - 1)/(a-1)``, ``l0 = (r^a - 1)/a``, ``h = r^{a-1}``.

    Admissible for ``1 <= alpha <= 2`` (``alpha = 1`` is the KL rule up to a constant,
    ``alpha = 2`` least-squares ratio fitting); related to the density-power
    divergence (Basu et al. 1998), hence robust to outliers.  Proper for any
    ``alpha > 0``.
    """

    name = "power"
    param = flag = "alpha"
    flag_help = "power rule exponent, 1 <= alpha <= 2 for fvnce"

    def __init__(self, alpha: float = 1.5, exp_mode: str = "exact", tau: float = 20.0) -> None:
        super().__init__(exp_mode, tau)
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"power rule needs alpha > 0, got alpha={alpha!r}")
        self.alpha = float(alpha)
        self.constant_weight = self.alpha == 1.0

    @property
    def params(self) -> dict:
        return {"alpha": self.alpha}

    def _l1(self, t: Tensor) -> Tensor:
        b = self.alpha - 1.0
        if b == 0.0:
            return -t
        return -torch.expm1(b * t) / b

    def _l0(self, t: Tensor) -> Tensor:
        a = self.alpha
        return torch.expm1(a * t) / a

    def weight(self, t: Tensor) -> Tensor:
        return torch.exp((self.alpha - 1.0) * t)


class ShiftedLogRule(ScoringRule):
    r"""Shifted-log rule, ``l1 = -log(r + c)``, ``l0 = r - c log(r + c)``, ``c >= 0``,
    ``h = r / (r + c)``.

    Interpolates the KL rule (``c = 0``) and a quadratic rule (``c -> inf``); the data
    loss is bounded above by ``-log c``.
    """

    name = "shifted_log"
    param, flag, flag_metavar = "c", "shift", "C"
    flag_help = "shifted_log rule constant c >= 0"

    def __init__(self, c: float = 1.0, exp_mode: str = "exact", tau: float = 20.0) -> None:
        super().__init__(exp_mode, tau)
        if not (isinstance(c, (int, float)) and math.isfinite(c) and c >= 0):
            raise ValueError(f"shifted_log rule needs c >= 0, got c={c!r}")
        self.c = float(c)
        self.constant_weight = self.c == 0.0

    @property
    def params(self) -> dict:
        return {"c": self.c}

    def _log_r_plus_c(self, t: Tensor) -> Tensor:
        if self.c == 0.0:
            return t
        return torch.logaddexp(t, torch.full_like(t, math.log(self.c)))

    def _l1(self, t: Tensor) -> Tensor:
        return -self._log_r_plus_c(t)

    def _l0(self, t: Tensor) -> Tensor:
        out = torch.exp(t)
        if self.c:
            out = out - self.c * self._log_r_plus_c(t)
        return out

    def weight(self, t: Tensor) -> Tensor:
        if self.c == 0.0:
            return torch.ones_like(t)
        return torch.sigmoid(t - math.log(self.c))


class LogisticRule(ScoringRule):
    r"""Classic NCE (logistic loss) with ``nu`` noise samples per data sample.

    ``l1 = log(1 + nu / r) = softplus(log nu - log r)``,
    ``l0 = nu log(1 + r / nu) = nu softplus(log r - log nu)`` (Gutmann & Hyvarinen
    2012).  Its noise side is concave in ``r``, so fully variational NCE refuses it;
    it serves ``nce`` and ``vnce``.  Neither side can overflow, so ``exp_mode`` is
    ignored.
    """

    name = "logistic"
    overflows = False
    param = "nu"  # mirrors the objective's nu (--nu): no flag of its own

    def __init__(self, nu: float = 1.0, exp_mode: str = "exact", tau: float = 20.0) -> None:
        super().__init__(exp_mode, tau)
        if not (isinstance(nu, (int, float)) and math.isfinite(nu) and nu > 0):
            raise ValueError(f"logistic rule needs nu > 0, got nu={nu!r}")
        self.nu = float(nu)

    @property
    def params(self) -> dict:
        return {"nu": self.nu}

    def _l1(self, t: Tensor) -> Tensor:
        return F.softplus(math.log(self.nu) - t)

    def _l0(self, t: Tensor) -> Tensor:
        return self.nu * F.softplus(t - math.log(self.nu))

    def weight(self, t: Tensor) -> Tensor:
        return torch.sigmoid(math.log(self.nu) - t)


class GenericRule(ScoringRule):
    r"""A rule built from a user's differentiable, strictly convex generator ``f(r)``.

    ``l1 = -f'(r)`` and ``l0 = r f'(r) - f(r)`` with ``f'`` taken by autograd.  ``f``
    receives ``r = exp(log r)``, so it works in ratio space; the stabilised modes never
    pass it an ``r`` beyond ``e^tau``.
    """

    name = "generic"
    by_name = False

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

    def _l1(self, t: Tensor) -> Tensor:
        _, f1 = self._derivs_keep(torch.exp(t))
        return -f1

    def _l0(self, t: Tensor) -> Tensor:
        r = torch.exp(t)
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


def named_rules() -> list[str]:
    """The registered rules that a name and numbers build (the command line's choices)."""
    return [name for name, cls in RULES.items() if cls.by_name]


def rule_flags() -> dict[str, tuple[str, str]]:
    """``{flag: (rule name, parameter)}`` of the registered rules' parameter flags."""
    return {cls.flag: (name, cls.param) for name, cls in RULES.items() if cls.flag and cls.param}


def rule_parameters() -> tuple[str, ...]:
    """The parameters of the registered rules (``alpha``, ``c``, ``nu``, ...)."""
    return tuple(dict.fromkeys(cls.param for cls in RULES.values() if cls.param))


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
