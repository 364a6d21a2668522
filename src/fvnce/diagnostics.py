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

The k-hat comes from ``arviz_stats.base.array_stats.psislw``.  That function follows
the LOO convention and takes *log-likelihood* values, whose importance ratios are
``exp(-value)``; it is therefore given ``-log w`` here.  (With a symmetric log-weight
distribution, e.g. log-normal weights, the sign makes no difference, which is how the
mistake hides; Pareto-distributed weights in ``tests/test_diagnostics.py`` catch it.)
"""

from __future__ import annotations

import math
import warnings
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


def pareto_khat(log_w) -> float:
    """PSIS Pareto k-hat of the weights ``exp(log_w)`` (a flat set; any shape is flattened).

    ``k`` is the shape of the generalised Pareto distribution
    ``F(t) = 1 - (1 + k t / sigma)^(-1/k)`` fitted to the largest weights; weights drawn
    from a Pareto distribution with tail index ``a`` (``P(w > t) = t^(-a)``) have
    ``k = 1/a``.  Edge cases:

    * ``-inf`` log-weights are zero weights: they are dropped before the fit;
    * any NaN or ``+inf`` log-weight: ``inf`` (nothing can be trusted);
    * fewer than :data:`MIN_WEIGHTS` non-zero weights: ``inf`` (cannot tell);
    * all weights equal (up to round-off), or the largest ones all tied: ``-inf`` (no
      tail at all; counts as reliable).

    Warnings from the fit are suppressed; the result is never NaN.
    """
    a = _flat_float64(log_w)
    if np.isnan(a).any() or np.isposinf(a).any():
        return math.inf
    a = a[np.isfinite(a)]
    if a.size < MIN_WEIGHTS:
        return math.inf
    a = a - a.max()
    if -a.min() <= _EQUAL_SPREAD:
        return -math.inf
    from arviz_stats.base import array_stats

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        try:
            _, khat = array_stats.psislw(-a)  # psislw takes log-likelihoods: ratios exp(-value)
        except ValueError:  # "All tail values are the same": the largest weights are tied
            return -math.inf
    khat = float(khat)
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
