"""Reliability diagnostics of importance weights: Kish effective sample size and the
Pareto k-hat of Pareto smoothed importance sampling (PSIS).

An importance-sampling estimate ``Z_hat = (1/n) sum_i w_i`` (the KL noise term
``E_{p_n} r``, or ``log Z`` through a proposal) is only as good as the tail of the
weights.  Two numbers describe it:

* the Kish effective sample size ``ESS = (sum w)^2 / sum w^2`` and its fraction
  ``ESS / n``, which says how many draws carry the estimate;
* the Pareto k-hat: the shape ``k`` of a generalised Pareto distribution fitted to the
  ``M = 3 sqrt(n)`` largest weights (``M = n / 5`` for ``n <= 225``).  A weight
  distribution with tail ``P(w > t) ~ t^(-1/k)`` has finite moments of order below
  ``1/k`` only: for ``k >= 1/2`` the variance of the weights is infinite, for
  ``k >= 1`` even their mean, and the estimate converges slowly or not at all.

Reading (Vehtari, Simpson, Gelman, Yao and Gabry 2024, "Pareto smoothed importance
sampling", JMLR 25(72)): ``k < 0.5`` good, ``0.5 <= k <= 0.7`` usable (the
pre-asymptotic convergence is still practical for the sample sizes used here),
``k > 0.7`` unreliable: the estimate can be far off, however many draws there are, and
the ESS itself is then a noisy, over-optimistic number.  The ESS alone cannot detect
this, which is why both are reported.

The fit is the PSIS one: the tail is the ``M`` largest weights, the threshold ``u`` the
largest weight below them, and the shape is the Zhang and Stephens (2009, Technometrics
51(3)) empirical-Bayes estimate with the weakly informative prior of Vehtari et al.
(2024), ``k <- (M k + 10 * 0.5) / (M + 10)``.  On weights without ties it agrees with
``arviz_stats``' ``psislw`` to round-off (``tests/test_diagnostics.py`` checks it).

One difference, for tied weights: the tail is the weights *strictly above* ``u`` (peaks
over a threshold are exceedances ``w > u``).  A generalised Pareto distribution is
continuous; weights tied with ``u`` (an atom, e.g. a bounded tilt saturating at its
floor, or weights rounded to a grid) are not exceedances, and fitting them as exceedances
of size zero makes a bounded, tied tail look heavy (k-hat above 1 for weights confined
to an interval).  Without ties the two readings coincide.  Bounded weights that pile up
just above a floor without being tied (a saturated ``tanh``) can still give a large
k-hat while the ``M`` largest lie on the edge of the pile; more draws (a smaller share
``M / n``) move the tail above it (``docs/images.md``, "Held-out log-likelihood").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .numfmt import finite
from .objectives.weights import effective_sample_size

__all__ = [
    "ESS_FRACTION_MIN",
    "KHAT_MAX",
    "MIN_WEIGHTS",
    "finite",
    "heavy_tail_message",
    "pareto_khat",
    "reliable",
    "weight_report",
    "weights_reliable",
]

#: largest Pareto k-hat whose estimate is trusted (Vehtari et al. 2024)
KHAT_MAX = 0.7
#: smallest Kish ESS fraction ``ESS / n`` whose estimate is trusted
ESS_FRACTION_MIN = 0.05
#: fewest non-zero weights PSIS can fit: its tail takes ``n / 5`` of them for small ``n``
#: and needs at least 5
MIN_WEIGHTS = 25
#: log-weights spread by less than this (nats) count as all equal (round-off only)
_EQUAL_SPREAD = 1e-12


def _flat_float64(log_w) -> np.ndarray:
    """``log_w`` (tensor, array or sequence) as a flat float64 numpy array."""
    if isinstance(log_w, torch.Tensor):
        log_w = log_w.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(log_w, dtype=np.float64).reshape(-1)


def _tail_length(n: int) -> int:
    """PSIS tail size for ``n`` independent draws: ``3 sqrt(n)``, or ``n / 5`` for ``n <= 225``."""
    return int(3 * math.sqrt(n)) if n > 225 else n // 5


def _gpd_shape(x: np.ndarray) -> float:
    """Shape ``k`` of a generalised Pareto distribution (location 0) fitted to the sorted,
    positive exceedances ``x``: the Zhang-Stephens estimate (the profile likelihood of
    ``theta = -k / sigma`` averaged over a grid of ``30 + sqrt(M)`` quantile-based values,
    ``k(theta) = mean log(1 - theta x)``), then shrunk towards 0.5 by the prior of
    Vehtari et al. (2024), worth 10 observations."""
    m = x.size
    grid = 30 + int(math.sqrt(m))
    quartile = x[int(m / 4 + 0.5) - 1]
    theta = 1.0 / x[-1] + (1.0 - np.sqrt(grid / (np.arange(1, grid + 1) - 0.5))) / (3.0 * quartile)
    k = np.log1p(-theta[:, None] * x[None, :]).mean(axis=1)
    profile = m * (np.log(-theta / k) - k - 1.0)
    post = np.exp(profile - profile.max())
    post /= post.sum()
    keep = post >= 10 * np.finfo(float).eps  # grid points of negligible weight are dropped
    post, theta = post[keep] / post[keep].sum(), theta[keep]
    k_hat = float(np.log1p(-float(np.dot(theta, post)) * x).mean())
    return (m * k_hat + 10 * 0.5) / (m + 10)


def pareto_khat(log_w) -> float:
    """PSIS Pareto k-hat of the weights ``exp(log_w)`` (a flat set; any shape is flattened).

    ``k`` is the shape of the generalised Pareto distribution
    ``F(t) = 1 - (1 + k t / sigma)^(-1/k)`` fitted to the exceedances ``w - u`` of the
    largest weights over the threshold ``u`` (the module docstring); weights drawn from a
    Pareto distribution with tail index ``a`` (``P(w > t) = t^(-a)``) have ``k = 1/a``,
    bounded weights ``k < 0``.  Only weights strictly above ``u`` are exceedances: weights
    tied with the threshold are left out of the fit.  Edge cases:

    * ``-inf`` log-weights are zero weights: they are dropped before the fit;
    * any NaN or ``+inf`` log-weight: ``inf`` (nothing can be trusted);
    * fewer than :data:`MIN_WEIGHTS` non-zero weights: ``inf`` (cannot tell);
    * all weights equal (up to round-off), or the largest ones all tied (no weight
      between the threshold and the maximum): ``-inf`` (no tail at all; counts as
      reliable);
    * 1 to 4 weights above the threshold, the rest of the tail tied with it: ``inf``
      (too few exceedances to fit; cannot tell).

    The result is never NaN.
    """
    a = _flat_float64(log_w)
    if np.isnan(a).any() or np.isposinf(a).any():
        return math.inf
    a = a[np.isfinite(a)]
    if a.size < MIN_WEIGHTS:
        return math.inf
    a = np.sort(a - a.max())
    if -a[0] <= _EQUAL_SPREAD:
        return -math.inf
    n = a.size
    m = _tail_length(n)
    u = a[n - m - 1]
    tail = a[n - m:]
    tail = tail[tail > u]
    if tail.size == 0 or tail[-1] - tail[0] <= _EQUAL_SPREAD:
        return -math.inf  # an atom at the maximum: the largest weights are tied
    if tail.size < 5:
        return math.inf
    with np.errstate(all="ignore"):
        khat = _gpd_shape(np.expm1(tail - u))  # exceedances w - u in units of u (k is scale-free)
    return math.inf if math.isnan(khat) else khat


def reliable(khat: float, ess_fraction: float) -> bool:
    """Whether an importance-sampling estimate can be trusted:
    ``khat <= KHAT_MAX`` (0.7) and ``ess_fraction >= ESS_FRACTION_MIN`` (5 %).

    The usual reading of the Pareto k-hat (Vehtari et al. 2024): ``k < 0.5`` good,
    ``0.5 - 0.7`` ok, ``> 0.7`` unreliable: the variance of the weights is effectively
    infinite and the estimate (and the ESS) can be far off.  ``khat = -inf`` (constant
    weights, or an exact value) is reliable; NaN or ``+inf`` ``khat`` and a non-finite
    ``ess_fraction`` are not.
    """
    khat, ess_fraction = float(khat), float(ess_fraction)
    return (not math.isnan(khat) and khat <= KHAT_MAX
            and math.isfinite(ess_fraction) and ess_fraction >= ESS_FRACTION_MIN)


def weights_reliable(khat: Any, ess_fraction: Any, reliable: Any = None) -> bool | None:
    """Are recorded importance weights usable (summary and evaluation files)?

    ``reliable`` (a bool, as evaluation recorded it) wins; else k-hat <= KHAT_MAX and ESS
    fraction >= ESS_FRACTION_MIN on what is known (a non-finite value counts as unknown);
    None if neither is known (older files).  With both known this is :func:`reliable`."""
    if isinstance(reliable, bool):
        return reliable
    k, e = finite(khat), finite(ess_fraction)
    if k is None and e is None:
        return None
    return (k is None or k <= KHAT_MAX) and (e is None or e >= ESS_FRACTION_MIN)


def weight_report(log_w) -> dict[str, Any]:
    """Diagnostics of a flat set of log importance weights.

    Returns ``n`` (number of weights, zero weights included), ``ess`` (Kish,
    ``(sum w)^2 / sum w^2``, see :func:`~fvnce.objectives.weights.effective_sample_size`;
    0 when a weight is NaN or infinite, or all are zero), ``ess_fraction = ess / n``,
    ``khat`` (:func:`pareto_khat`) and ``reliable`` (:func:`reliable`).
    """
    a = torch.from_numpy(_flat_float64(log_w))
    n = a.numel()
    ess = 0.0
    if n and not bool(torch.isnan(a).any() or torch.isposinf(a).any()):
        ess = float(effective_sample_size(a))
        ess = ess if math.isfinite(ess) else 0.0  # all weights zero: -inf - -inf
    frac = ess / n if n else 0.0
    khat = pareto_khat(a)
    return {"n": n, "ess": ess, "ess_fraction": frac, "khat": khat, "reliable": reliable(khat, frac)}


def _fmt_khat(khat: float) -> str:
    return f"{khat:.2g}" if math.isfinite(khat) else str(khat)


def _fmt_pct(fraction: float) -> str:
    return f"{100 * fraction:.2g} %" if math.isfinite(fraction) else "n/a"


_CAUSE_AND_FIX = ("the model puts mass where the noise rarely samples; use a noise closer to the data "
                  "(kde or flow, or the model's base), a bounded tilt, or a smaller learning rate")


def heavy_tail_message(khat: float, ess_fraction: float, where: str) -> str | None:
    """One-sentence warning about unreliable importance weights, or None when
    :func:`reliable` holds.  ``where`` names the weights (e.g. ``"noise-side"``,
    ``"log Z (noise proposal)"``); the sentence names the likely cause and the fix, e.g.

        noise-side importance weights are heavy-tailed (Pareto k-hat 1.3 > 0.7, ESS 0.2 %):
        the model puts mass where the noise rarely samples; use a noise closer to the data
        (kde or flow, or the model's base), a bounded tilt, or a smaller learning rate
    """
    khat, ess_fraction = float(khat), float(ess_fraction)
    if reliable(khat, ess_fraction):
        return None
    ess = _fmt_pct(ess_fraction)
    if math.isnan(khat) or khat == math.inf:
        what = (f"are degenerate (non-finite, or too few non-zero weights for a Pareto k-hat; "
                f"ESS {ess})")
    elif khat > KHAT_MAX:
        what = f"are heavy-tailed (Pareto k-hat {_fmt_khat(khat)} > {KHAT_MAX}, ESS {ess})"
    else:
        what = (f"have a small effective sample size (ESS {ess} < {_fmt_pct(ESS_FRACTION_MIN)}, "
                f"Pareto k-hat {_fmt_khat(khat)})")
    return f"{where} importance weights {what}: {_CAUSE_AND_FIX}"
