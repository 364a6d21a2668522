"""Evaluation of trained models: log-likelihood, log Z, data-vs-noise accuracy, anomaly
detection metrics, samples, and the isolation-forest baseline.

Everything runs under ``torch.no_grad()``, in log space, in the model's dtype and on its
device, and processes large inputs in chunks of ``batch_size`` rows (importance samples
for one chunk are drawn together; no Python loop runs over samples).

* :func:`log_likelihood` -- per-example ``log p(x)``: the IWAE bound
  ``logsumexp_j [log p(x, z_j) - log q(z_j | x)] - log k`` for normalised models (exact
  when the encoder's discrete support is summed over), and for unnormalised models the
  same estimate of ``log p~(x)`` minus an *estimated* ``log Z``.
* :func:`estimate_log_partition` -- ``log Z = log int int p~(x, z) dx dz`` (``p~``
  includes ``exp(-c)``, so a perfectly fitted model has ``log Z = 0``) by importance
  sampling over joint proposals, with the Kish effective sample size and the PSIS
  Pareto k-hat of each (:mod:`fvnce.diagnostics`); the exact value when the model has a
  tractable one.  :func:`noise_weight_report` gives the same diagnostics of the noise-side
  weights alone (the KL noise term), for normalised models too.
* :func:`noise_accuracy` -- balanced accuracy of the classifier ``log r(x) > 0``.
* :func:`anomaly_scores`, :func:`anomaly_metrics` -- scores (higher = more anomalous)
  and AUROC, AUPRC, false-alarm rate at 95 % detection, a stored ROC curve.
* :func:`sample` -- ancestral, Gibbs, or sampling-importance-resampling, whichever the
  model allows; returns the samples and the name of the method used.
* :func:`isolation_forest_scores` -- the scikit-learn baseline.
* :func:`alarm_threshold`, :func:`operating_point`, :func:`false_alarm_range`,
  :func:`alarm_curve` -- the alarm threshold for a target false-alarm rate (split-conformal
  quantile of calibration scores), what it does on labelled items, the range of false
  alarms it should give, and detection / false alarms against the threshold.

Randomness comes from torch's global generator (``torch.manual_seed``): noises are
``torch.distributions`` objects, whose ``sample`` takes no generator.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .diagnostics import reliable as _is_reliable
from .diagnostics import weight_report
from .errors import ConfigError, DataError
from .objectives.base import LogWeights, exact_ratio, log_weights

__all__ = [
    "LogZEstimate",
    "alarm_curve",
    "alarm_threshold",
    "anomaly_metrics",
    "anomaly_scores",
    "check_alarm_rate",
    "check_threshold",
    "estimate_log_partition",
    "false_alarm_range",
    "isolation_forest_scores",
    "log_likelihood",
    "noise_accuracy",
    "noise_weight_report",
    "operating_point",
    "sample",
]

#: largest number of (row, importance sample) pairs evaluated at once; larger ``k`` is
#: split into blocks of samples whose log-sum-exps are combined
_MAX_PAIRS = 1 << 16

#: names of the log Z proposals, in the order they are tried
PROPOSALS = ("exact", "noise", "model_proposal")
#: names of the sampling methods of :func:`sample`
SAMPLE_METHODS = ("ancestral", "gibbs", "sir-proposal", "sir-noise")
#: kinds of :func:`anomaly_scores`
SCORE_KINDS = ("nll", "log_ratio")


# --------------------------------------------------------------------------- helpers
def _reference(model) -> Tensor:
    """A tensor carrying the model's dtype and device."""
    for t in model.parameters():
        return t
    for t in model.buffers():
        return t
    return torch.zeros(())


def _as_input(model, x) -> Tensor:
    """``x`` as a floating tensor in the model's dtype, on its device."""
    ref = _reference(model)
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise DataError(f"expected a (N, D) batch of points, got shape {tuple(x.shape)}")
    return x.to(dtype=ref.dtype, device=ref.device)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return k


def _log_c(model) -> float:
    c = model.c
    return 0.0 if c is None else float(c.detach())


def _enumerated_log_ratio(lw: LogWeights) -> Tensor:
    """``log sum_s q_s w_s`` over the states with ``q_s > 0`` (masked before adding, so a
    state whose ``log q`` underflowed to ``-inf`` never makes ``-inf + inf``)."""
    alive = lw.log_q_weight > -math.inf
    t = torch.where(alive, lw.log_q_weight + lw.log_w, torch.full_like(lw.log_w, -math.inf))
    return torch.logsumexp(t, dim=0)


def _log_mean_weight(model, encoder, x: Tensor, log_pn: Tensor | float, k: int) -> Tensor:
    """Per row of ``x``: ``log (1/k) sum_j w_j`` with ``w = p~(x, z)/(q(z|x) p_n(x))``
    (exact ``log E_q w`` for enumerated latents; ``p~(x)/p_n(x)`` in closed form when
    ``encoder`` is None).  Large ``k`` is processed in blocks of samples."""
    if encoder is None:
        return model.log_unnormalised_marginal(x) - log_pn
    block = max(1, min(k, _MAX_PAIRS // max(1, x.shape[0])))
    first = log_weights(model, encoder, x, log_pn, block, exact_limit=True)
    if first.enumerated:
        return _enumerated_log_ratio(first)
    parts = [torch.logsumexp(first.log_w, dim=0)]
    done = block
    while done < k:
        m = min(block, k - done)
        parts.append(torch.logsumexp(log_weights(model, encoder, x, log_pn, m).log_w, dim=0))
        done += m
    return torch.logsumexp(torch.stack(parts), dim=0) - math.log(k)


def _log_px_tilde(model, encoder, x: Tensor, k: int, batch_size: int) -> Tensor:
    """``log p~(x)`` estimate (includes ``-c``) for all rows, in chunks."""
    out = [_log_mean_weight(model, encoder, chunk, 0.0, k) for chunk in x.split(batch_size)]
    return torch.cat(out) if out else x.new_zeros(0)


def _noise_sample(noise, n: int, ref: Tensor) -> tuple[Tensor, Tensor]:
    """``n`` noise samples and their log-densities, in the dtype/device of ``ref``."""
    y = noise.sample((n,))
    log_pn = noise.log_prob(y)
    return y.to(dtype=ref.dtype, device=ref.device), log_pn.to(dtype=ref.dtype, device=ref.device)


def _noise_log_prob(noise, x: Tensor) -> Tensor:
    """``log p_n(x)`` in the dtype/device of ``x``, also when the noise lives elsewhere."""
    try:
        lp = noise.log_prob(x)
    except RuntimeError:  # noise on another device or in another dtype: evaluate it there
        like = noise.sample((1,))
        lp = noise.log_prob(x.to(dtype=like.dtype, device=like.device))
    return lp.to(dtype=x.dtype, device=x.device)


def _noise_log_ratio(model, encoder, noise, x: Tensor, k: int) -> Tensor:
    """Per row: ``log r(x)`` against ``noise``, exact when the noise knows the ratio."""
    exact = exact_ratio(noise)
    if exact is not None:
        return exact(model, x)
    return _log_mean_weight(model, encoder, x, _noise_log_prob(noise, x), k)


def _joint_proposal(model):
    """The model's normalised joint proposal with ``sample_joint``, or None."""
    prop = model.proposal()
    if prop is None or not getattr(prop, "normalised", False) or not hasattr(prop, "sample_joint"):
        return None
    return prop


def _proposal_log_weights(model, prop, n: int, batch_size: int) -> tuple[Tensor, Tensor]:
    """``n`` joint samples ``(x, z) ~ p_prop`` and ``log p~(x, z) - log p_prop(x, z)``."""
    xs, lws = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x, z = prop.sample_joint(m)
        xs.append(x)
        lws.append(model.log_joint(x, z) - prop.log_joint(x, z))
    return torch.cat(xs), torch.cat(lws)


def _noise_log_weights(model, encoder, noise, n: int, k: int, batch_size: int,
                       keep_x: bool = False) -> tuple[Tensor | None, Tensor]:
    """Importance log-weights of the noise proposal ``x ~ p_n, z ~ q(z|x)``.

    Returns per-(x, z) weights ``(n*k,)`` for sampled latents, and per-x weights ``(n,)``
    (the exact ``r(x)``) for enumerated latents or a closed-form marginal.  With
    ``keep_x`` the per-x log-ratio estimates (averaging the ``k`` samples) are returned
    together with the points, for resampling.
    """
    ref, exact = _reference(model), exact_ratio(noise)
    xs, lws = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        if exact is not None:  # the base noise: r(y) = exp(g(y) - c) exactly
            y = noise.sample((m,)).to(dtype=ref.dtype, device=ref.device)
            xs.append(y)
            lws.append(exact(model, y))
            continue
        y, log_pn = _noise_sample(noise, m, ref)
        if keep_x:
            xs.append(y)
            lws.append(_log_mean_weight(model, encoder, y, log_pn, k))
        elif encoder is None:
            lws.append(model.log_unnormalised_marginal(y) - log_pn)
        else:
            lw = log_weights(model, encoder, y, log_pn, k, exact_limit=True)
            lws.append(_enumerated_log_ratio(lw) if lw.enumerated else lw.log_w.reshape(-1))
    return (torch.cat(xs) if keep_x else None), torch.cat(lws)


def _summary(log_w: Tensor) -> dict[str, Any]:
    """log Z and the weight diagnostics of a flat set of log-weights:
    ``log_z = logsumexp(log w) - log n``, ``ess``, ``ess_fraction``, ``khat``, ``reliable``
    and ``n`` (:func:`~fvnce.diagnostics.weight_report`); with NaN weights ``log_z`` is
    NaN and ``n_nan`` counts them."""
    log_w = log_w.detach().reshape(-1).double()
    report = weight_report(log_w)
    n_nan = int(torch.isnan(log_w).sum())
    if n_nan:
        return {"log_z": math.nan, **report, "n_nan": n_nan}
    log_z = float(torch.logsumexp(log_w, 0)) - math.log(log_w.numel())
    return {"log_z": log_z, **report}


# --------------------------------------------------------------------------- log Z
@dataclass
class LogZEstimate:
    """An estimate of ``log Z = log int int p~(x, z) dx dz`` (``p~`` includes ``exp(-c)``).

    ``log_z`` is the chosen candidate's value, ``ess`` its Kish effective sample size
    ``(sum w)^2 / sum w^2`` out of ``n`` weights, ``ess_fraction = ess / n``, ``khat``
    the PSIS Pareto k-hat of its weights (:func:`~fvnce.diagnostics.pareto_khat`) and
    ``reliable`` whether ``khat <= 0.7`` and ``ess_fraction >= 0.05``
    (:func:`~fvnce.diagnostics.reliable`; derived, not passed in).  ``proposal`` names the
    candidate (``"exact"``, ``"noise"`` or ``"model_proposal"``); ``candidates`` maps
    every proposal that was tried to its own ``log_z``, ``ess``, ``ess_fraction``,
    ``khat``, ``reliable`` and ``n``.  An exact value has ``ess = inf``,
    ``ess_fraction = 1``, ``khat = -inf`` (no tail), ``reliable = True`` and ``n = 0``.
    Importance-sampled values are *estimates*: ``log`` of an unbiased estimate of ``Z``
    is biased low, and when not ``reliable`` it can be far off.
    """

    log_z: float
    ess: float
    ess_fraction: float
    n: int
    proposal: str
    khat: float = math.inf
    candidates: dict[str, dict] = field(default_factory=dict)
    reliable: bool = field(init=False)

    def __post_init__(self) -> None:
        self.reliable = _is_reliable(self.khat, self.ess_fraction)

    def __float__(self) -> float:
        return float(self.log_z)

    def to_dict(self) -> dict:
        """Plain, strict-JSON-serialisable dict (non-finite floats, e.g. the exact
        value's ``ess = inf`` and ``khat = -inf``, become None)."""
        def clean(v):
            if isinstance(v, dict):
                return {k: clean(u) for k, u in v.items()}
            if isinstance(v, float) and not math.isfinite(v):
                return None
            return v
        return clean(asdict(self))


def _exact_log_z(model) -> float | None:
    """``log Z`` in closed form, or None: 0 for normalised models, ``log_partition() - c``
    for models that have one and say it is tractable (``log_partition_tractable``, e.g.
    an RBM with few hidden units; models without the attribute are tractable)."""
    if model.has("log_partition"):
        if not getattr(model, "log_partition_tractable", True):
            return None
        return float(model.log_partition()) - _log_c(model)
    return 0.0 if model.normalised else None


def _choose(candidates: dict[str, dict]) -> str:
    """The answer among the candidates: ``"exact"`` when present; else the reliable
    candidate with the largest ESS fraction; if none is reliable, the smallest k-hat
    (ties: the larger ESS fraction)."""
    if "exact" in candidates:
        return "exact"
    good = [name for name, c in candidates.items() if c["reliable"]]
    if good:
        return max(good, key=lambda name: candidates[name]["ess_fraction"])
    return min(candidates, key=lambda name: (candidates[name]["khat"], -candidates[name]["ess_fraction"]))


@torch.no_grad()
def estimate_log_partition(model, encoder=None, noise=None, n: int = 20000, k: int = 1,
                           batch_size: int = 4096, proposals: Sequence[str] | None = None) -> LogZEstimate:
    """Estimate ``log Z`` of a model by importance sampling over joint proposals ``(x, z)``.

    ``Z = int int p~(x, z) dx dz`` with ``p~ = exp(log_joint)``, which already includes
    ``exp(-c)``: a model whose log-normaliser ``c`` is right has ``log Z = 0``, and
    ``log p(x) = log p~(x) - log Z``.  Candidates (``proposals`` restricts them; default
    all that apply):

    * ``"exact"`` -- normalised models (``log Z = 0`` by construction) and models with a
      closed-form ``log_partition()`` (``log Z = log_partition() - c``) that is tractable
      (a model may set ``log_partition_tractable = False``, e.g. an RBM with too many
      hidden units to enumerate; the other candidates are used then).  When available it
      is the answer.
    * ``"noise"`` -- ``x ~ p_n`` (needs ``noise``), ``z ~ q(z | x)`` (``k`` per point), weight
      ``p~(x, z) / (p_n(x) q(z | x))``: the noise term of the KL rule.  For enumerable
      discrete encoders the sum over ``z`` is exact and the weight per ``x`` is the exact
      ratio ``r(x)``; with ``encoder=None`` the model's closed-form
      ``log_unnormalised_marginal`` is used the same way.
    * ``"model_proposal"`` -- when ``model.proposal()`` returns a normalised model with
      ``sample_joint``: ``(x, z) ~ p_prop``, weight ``p~(x, z) / p_prop(x, z)`` (for an
      :class:`~fvnce.models.EnergyTiltedVAE` that is ``exp(g(x) - c)``).

    Each candidate's estimate is ``logsumexp(log w) - log(#w)``, reported with its Kish
    effective sample size, the PSIS Pareto k-hat of its weights and whether it is
    reliable (``khat <= 0.7`` and ESS fraction ``>= 0.05``, :mod:`fvnce.diagnostics`).
    The answer is the exact value if there is one; otherwise, among the reliable
    candidates, the one with the largest ESS fraction; if none is reliable, the one with
    the smallest k-hat (the ESS of heavy-tailed weights is itself unreliable, the k-hat
    is not).  A candidate with NaN weights reports NaN, ESS 0 and ``khat = inf``.
    Raises :class:`~fvnce.errors.ConfigError` when no candidate applies.
    """
    _check_k(k)
    _check_batch_size(batch_size)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    wanted = PROPOSALS if proposals is None else tuple(proposals)
    bad = [p for p in wanted if p not in PROPOSALS]
    if bad:
        raise ConfigError(f"unknown log Z proposal {bad[0]!r}; valid proposals: {', '.join(PROPOSALS)}")

    candidates: dict[str, dict] = {}
    if "exact" in wanted:
        exact = _exact_log_z(model)
        if exact is not None:
            candidates["exact"] = {"log_z": exact, "ess": math.inf, "ess_fraction": 1.0, "n": 0,
                                   "khat": -math.inf, "reliable": True}
    if "noise" in wanted and noise is not None:
        if encoder is None and not model.has("log_unnormalised_marginal"):
            raise ConfigError(f"the noise proposal for log Z needs an encoder: {type(model).__name__} "
                              "has no closed-form marginal over its latents")
        _, lw = _noise_log_weights(model, encoder, noise, n, k, batch_size)
        candidates["noise"] = _summary(lw)
    if "model_proposal" in wanted:
        prop = _joint_proposal(model)
        if prop is not None:
            _, lw = _proposal_log_weights(model, prop, n, batch_size)
            candidates["model_proposal"] = _summary(lw)
    if not candidates:
        intractable = model.has("log_partition") and not getattr(model, "log_partition_tractable", True)
        why = " (its exact log_partition() is intractable here)" if intractable else ""
        raise ConfigError(f"cannot estimate log Z of {type(model).__name__}{why}: give a noise distribution, or "
                          "use a model with a closed-form log_partition() or a proposal() with sample_joint "
                          f"(proposals tried: {', '.join(wanted)})")
    best = _choose(candidates)
    chosen = candidates[best]
    return LogZEstimate(log_z=chosen["log_z"], ess=chosen["ess"], ess_fraction=chosen["ess_fraction"],
                        n=chosen["n"], proposal=best, khat=chosen["khat"], candidates=candidates)


@torch.no_grad()
def noise_weight_report(model, encoder, noise, n: int = 20000, k: int = 1,
                        batch_size: int = 4096) -> dict[str, Any] | None:
    """Diagnostics of the noise-side importance weights ``w = p~(x, z) / (p_n(x) q(z|x))``,
    ``x ~ p_n, z ~ q(z | x)`` (the KL noise term, whose mean estimates ``Z``): the
    ``"noise"`` candidate of :func:`estimate_log_partition` (``log_z``, ``ess``,
    ``ess_fraction``, ``khat``, ``reliable``, ``n``), for normalised models too.  None
    when ``noise`` is None, or when ``encoder`` is None and the model has no closed-form
    marginal (nothing to weigh the noise with)."""
    if noise is None or (encoder is None and not model.has("log_unnormalised_marginal")):
        return None
    est = estimate_log_partition(model, encoder, noise=noise, n=n, k=k, batch_size=batch_size,
                                 proposals=("noise",))
    return est.candidates["noise"]


# --------------------------------------------------------------------------- likelihood
@torch.no_grad()
def log_likelihood(model, encoder, x: Tensor, k: int = 256, batch_size: int = 256,
                   log_z: LogZEstimate | float | None = None, noise=None) -> Tensor:
    """Per-example log-likelihood ``(N,)`` of the rows of ``x``.

    * Normalised model: the IWAE bound ``logsumexp_j [log p(x, z_j) - log q(z_j|x)] - log k``
      with ``z_j ~ q(z | x)``; it lies below ``log p(x)`` in expectation and tightens as
      ``k`` grows.  Enumerable discrete encoders are summed over exactly (then ``k`` is
      irrelevant and the value is exact).
    * Unnormalised model: the same estimate of ``log p~(x)`` (which includes ``-c``)
      minus ``log_z``: a :class:`LogZEstimate` or a float; when None it is computed by
      :func:`estimate_log_partition` (with ``noise`` if given).  The result is an
      *estimate*, as good as ``log Z`` (check its ESS), and no longer a bound.
    * ``encoder=None`` (fully observed models, e.g. an RBM trained by ``nce``): the
      closed-form ``model.log_unnormalised_marginal(x)`` (minus ``log Z`` if unnormalised).

    ``log_z`` is ignored for normalised models.  Against models whose density is known
    (the linear-Gaussian oracle, small RBMs), the estimate matches the truth within
    Monte Carlo error; ``tests/test_evaluate.py`` checks this.
    """
    _check_k(k)
    _check_batch_size(batch_size)
    x = _as_input(model, x)
    lp = _log_px_tilde(model, encoder, x, k, batch_size)
    if model.normalised:
        return lp
    if log_z is None:
        log_z = estimate_log_partition(model, encoder, noise=noise)
    return lp - float(log_z)


@torch.no_grad()
def noise_accuracy(model, encoder, x: Tensor, noise, k: int = 1, batch_size: int = 4096) -> float:
    """Balanced accuracy of the data-vs-noise classifier ``log r(x) > 0``.

    ``log r = log p~(x) - log p_n(x)`` (importance-sampled with ``k`` samples, exact for
    enumerated latents or ``encoder=None``) on the held-out data ``x`` and on as many
    fresh samples of ``noise``; the accuracy is the mean of the hit rates on both sides.
    0.5 means the model cannot tell data from noise.
    """
    _check_k(k)
    _check_batch_size(batch_size)
    x = _as_input(model, x)
    ref = _reference(model)
    data_lr = torch.cat([_noise_log_ratio(model, encoder, noise, c, k) for c in x.split(batch_size)])
    noise_lr = []
    for start in range(0, x.shape[0], batch_size):
        y = noise.sample((min(batch_size, x.shape[0] - start),)).to(dtype=ref.dtype, device=ref.device)
        noise_lr.append(_noise_log_ratio(model, encoder, noise, y, k))
    noise_lr = torch.cat(noise_lr)
    hit_data = (data_lr > 0).double().mean()
    hit_noise = (noise_lr <= 0).double().mean()
    return float(0.5 * (hit_data + hit_noise))


# --------------------------------------------------------------------------- anomalies
@torch.no_grad()
def anomaly_scores(model, encoder, x: Tensor, k: int = 64, kind: str = "nll", noise=None,
                   batch_size: int = 256) -> Tensor:
    """Anomaly score per row of ``x`` ``(N,)``; higher = more anomalous.

    * ``"nll"`` (default): ``-log p~(x)``, the negative estimated (unnormalised) log-density
      (IWAE estimate with ``k`` samples, exact for enumerated latents).  The constant
      ``log Z`` is left out: it does not change any ranking-based metric.
    * ``"log_ratio"``: ``-log r(x) = -(log p~(x) - log p_n(x))`` against ``noise``
      (required): how much less than the noise the model believes in ``x``.
    """
    if kind not in SCORE_KINDS:
        raise ConfigError(f"unknown anomaly score kind {kind!r}; valid kinds: {', '.join(SCORE_KINDS)}")
    if kind == "log_ratio" and noise is None:
        raise ConfigError("anomaly score kind 'log_ratio' needs a noise distribution (noise=...)")
    _check_k(k)
    _check_batch_size(batch_size)
    x = _as_input(model, x)
    out = []
    for chunk in x.split(batch_size):
        if kind == "nll":
            out.append(-_log_mean_weight(model, encoder, chunk, 0.0, k))
        else:
            out.append(-_noise_log_ratio(model, encoder, noise, chunk, k))
    return torch.cat(out) if out else x.new_zeros(0)


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _downsample(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 200) -> tuple[list, list]:
    if len(fpr) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return [float(v) for v in fpr], [float(v) for v in tpr]


def anomaly_metrics(scores, labels) -> dict:
    """Detection metrics of ``scores`` (higher = more anomalous) against ``labels``
    (1 = anomaly, 0 = normal).

    Returns ``auroc`` and ``auprc`` (scikit-learn ``roc_auc_score`` and
    ``average_precision_score``), ``fpr_at_95_tpr`` (the false-alarm rate at 95 %
    detection: the smallest false-positive rate among ROC points whose true-positive
    rate is at least 0.95) and ``roc = {"fpr": [...], "tpr": [...]}`` (at most 200 points,
    endpoints kept).  All values are None when ``labels`` is None or has a single class.
    ``+inf`` scores count as the most anomalous (and ``-inf`` as the least); NaN scores
    raise :class:`~fvnce.errors.DataError` (a ValueError) naming how many there are.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    empty = {"auroc": None, "auprc": None, "fpr_at_95_tpr": None, "roc": None}
    if labels is None:
        return empty
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    y = _to_numpy(labels).reshape(-1)
    if s.shape != y.shape:
        raise DataError(f"scores and labels differ in length: {s.size} scores, {y.size} labels")
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise DataError(f"{n_nan} of {s.size} anomaly scores are NaN")
    values = np.unique(y)
    if not np.isin(values, [0, 1]).all():
        raise DataError(f"labels must be 0 (normal) or 1 (anomaly), got values {values.tolist()[:5]}")
    y = y.astype(np.int64)
    if values.size < 2:
        return empty
    # every metric here depends on the order of the scores only: dense ranks keep order
    # and ties and make +-inf finite (+inf ranks highest, -inf lowest)
    ranks = np.unique(s, return_inverse=True)[1].reshape(-1).astype(np.float64)
    fpr, tpr, _ = roc_curve(y, ranks, drop_intermediate=False)
    roc_fpr, roc_tpr = _downsample(fpr, tpr)
    return {
        "auroc": float(roc_auc_score(y, ranks)),
        "auprc": float(average_precision_score(y, ranks)),
        "fpr_at_95_tpr": float(fpr[tpr >= 0.95].min()),
        "roc": {"fpr": roc_fpr, "tpr": roc_tpr},
    }


def isolation_forest_scores(train, test, seed: int = 0) -> np.ndarray:
    """Baseline anomaly scores of ``test`` from a scikit-learn ``IsolationForest`` fitted
    on ``train`` (``-score_samples``, so higher = more anomalous, like
    :func:`anomaly_scores`)."""
    from sklearn.ensemble import IsolationForest

    train, test = _to_numpy(train), _to_numpy(test)
    forest = IsolationForest(random_state=seed).fit(train)
    return -forest.score_samples(test)


# --------------------------------------------------------------------------- alarm thresholds
#: probability of the expected range of false alarms that :func:`operating_point` reports
ALARM_RANGE_LEVEL = 0.99


def check_alarm_rate(rate: Any, name: str = "alarm rate") -> float:
    """``rate`` as a float strictly between 0 and 1, else ConfigError naming it."""
    ok = not isinstance(rate, bool) and isinstance(rate, (int, float)) and math.isfinite(float(rate))
    if not ok or not 0.0 < float(rate) < 1.0:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1 (a target false-alarm rate, "
                          f"e.g. 0.01), got {rate!r}")
    return float(rate)


def check_threshold(threshold: Any) -> float:
    """``threshold`` as a finite float, else ConfigError naming it."""
    ok = not isinstance(threshold, bool) and isinstance(threshold, (int, float))
    if not ok or not math.isfinite(float(threshold)):
        raise ConfigError(f"alarm threshold must be a finite number, got {threshold!r}")
    return float(threshold)


def _conformal_rank(n: int, rate: float) -> int:
    """``ceil((n + 1)(1 - rate))`` computed exactly (the rate as written in decimal)."""
    from fractions import Fraction

    return (n + 1) - math.floor((n + 1) * Fraction(repr(float(rate))))


def alarm_threshold(scores, rate: float) -> dict:
    """The alarm threshold for a target false-alarm rate ``rate`` from calibration
    ``scores`` (higher = more anomalous; an item raises an alarm when its score is
    *strictly above* the threshold).

    With ``n`` calibration scores the threshold is their ``k``-th smallest value,
    ``k = ceil((n + 1)(1 - rate))`` (split-conformal, Vovk et al. 2005; Angelopoulos &
    Bates 2021, "A gentle introduction to conformal prediction", sec. 1): for a new score
    exchangeable with the calibration scores, ``P(score > threshold) <= (n + 1 - k)/(n + 1)
    <= rate``, with equality up to ``1/(n + 1)`` when the scores have no ties.  The plain
    empirical quantile (``k = ceil(n (1 - rate))``) would exceed the rate on average.

    When ``n < (1 - rate)/rate`` (e.g. fewer than 99 rows for 1 %) that ``k`` exceeds
    ``n``: the largest score is used and ``note`` says so; its expected false-alarm rate
    ``1/(n + 1)`` is then above ``rate``.  NaN scores are left out (and counted in
    ``note``).  Returns ``{"threshold", "rate", "n", "rank", "expected_rate", "note"}``;
    ``threshold`` is None without any score.
    """
    rate = check_alarm_rate(rate)
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    n_nan = int(np.isnan(s).sum())
    s = np.sort(s[~np.isnan(s)])
    n = int(s.size)
    notes = [f"{n_nan} NaN score(s) left out"] if n_nan else []
    if n == 0:
        return {"threshold": None, "rate": rate, "n": 0, "rank": None, "expected_rate": None,
                "note": "; ".join(notes + ["no calibration scores: no threshold"])}
    k = _conformal_rank(n, rate)
    if k > n:
        need = _min_rows(rate)
        notes.append(f"only {n} validation row(s): a false-alarm rate of {rate:g} needs at least {need}; the "
                     f"threshold is the largest validation score, whose expected false-alarm rate is "
                     f"1/{n + 1} = {1 / (n + 1):.3g}")
        k = n
    return {"threshold": float(s[k - 1]), "rate": rate, "n": n, "rank": int(k),
            "expected_rate": (n + 1 - k) / (n + 1), "note": "; ".join(notes) or None}


def _min_rows(rate: float) -> int:
    """The fewest calibration scores for which :func:`alarm_threshold` meets ``rate``."""
    n = max(1, math.floor(1.0 / rate) - 1)
    while _conformal_rank(n, rate) > n:
        n += 1
    while n > 1 and _conformal_rank(n - 1, rate) <= n - 1:
        n -= 1
    return n


def false_alarm_range(n: int, rank: int, m: int, level: float = ALARM_RANGE_LEVEL) -> tuple[int, int]:
    """The central ``level`` range of the number of false alarms among ``m`` new normal
    items at the threshold of :func:`alarm_threshold` (``rank``-th smallest of ``n``
    calibration scores), when all ``n + m`` scores are exchangeable and have no ties.

    Derivation: the threshold's coverage ``F(s_(k))`` is the ``k``-th order statistic of
    ``n`` uniforms, ``Beta(k, n + 1 - k)``; given it, each new item alarms independently
    with probability ``p = 1 - F(s_(k)) ~ Beta(n + 1 - k, k)``, so the count is
    beta-binomial ``BB(m, n + 1 - k, k)`` (under exchangeability alone the count depends
    on ranks only, whose law is the same).  Its mean is ``m (n + 1 - k)/(n + 1)``; its
    variance ``m p (1 - p) (n + 1 + m)/(n + 2)`` is the binomial one widened by the
    threshold's own randomness (about ``p (1 - p)(1/m + 1/n)`` for the rate).
    """
    from scipy.stats import betabinom

    if m < 1 or n < 1:
        return 0, 0
    dist = betabinom(int(m), int(n + 1 - rank), int(rank))
    tail = (1.0 - level) / 2.0
    return int(dist.ppf(tail)), int(dist.ppf(1.0 - tail))


def operating_point(scores, labels, threshold: float, calibration: dict | None = None,
                    level: float = ALARM_RANGE_LEVEL) -> dict:
    """What an alarm threshold does on labelled (or unlabelled) items.

    ``scores`` higher = more anomalous, ``labels`` 1 = anomaly, 0 = normal, or None; an
    item alarms when its score is strictly above ``threshold``.  Returns ``threshold``,
    ``n_items``, ``alarms``, ``alarms_per_1000``; with labels ``n_normal``,
    ``false_alarms``, ``false_alarm_rate``, ``false_alarms_per_1000``, ``n_anomaly``,
    ``detected`` and ``detection_rate`` (None where a class is absent).  With the
    ``calibration`` record of :func:`alarm_threshold` (and ``labelled``: whether it was
    calibrated on normal rows only, the default when ``labels`` are given),
    ``expected_per_1000`` is the central ``level`` range (:func:`false_alarm_range`) of the
    rate per 1,000 that the same kind of rows (normal items, or all items) should show, and
    ``within_expected`` whether they do.
    """
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    alarm = s > threshold
    out: dict[str, Any] = {"threshold": float(threshold), "n_items": int(s.size), "alarms": int(alarm.sum()),
                           "alarms_per_1000": 1000.0 * float(alarm.mean()) if s.size else None}
    keys = ("n_normal", "false_alarms", "false_alarm_rate", "false_alarms_per_1000", "n_anomaly", "detected",
            "detection_rate")
    out.update(dict.fromkeys(keys))
    if labels is not None:
        y = _to_numpy(labels).reshape(-1).astype(bool)
        if y.shape != s.shape:
            raise DataError(f"scores and labels differ in length: {s.size} scores, {y.size} labels")
        n0, n1 = int((~y).sum()), int(y.sum())
        fa, det = int(alarm[~y].sum()), int(alarm[y].sum())
        out.update(n_normal=n0, false_alarms=fa, n_anomaly=n1, detected=det)
        if n0:
            out.update(false_alarm_rate=fa / n0, false_alarms_per_1000=1000.0 * fa / n0)
        if n1:
            out["detection_rate"] = det / n1
    out["expected_per_1000"], out["within_expected"], out["range_level"] = None, None, None
    on_normal = bool((calibration or {}).get("labelled", labels is not None))
    if on_normal and labels is None:  # calibrated on normal rows: unlabelled items say nothing about it
        return out
    m, count = (out["n_normal"], out["false_alarms"]) if on_normal else (out["n_items"], out["alarms"])
    if calibration and calibration.get("rank") and m:
        lo, hi = false_alarm_range(calibration["n"], calibration["rank"], m, level)
        out["expected_per_1000"] = [1000.0 * lo / m, 1000.0 * hi / m]
        out["within_expected"] = bool(lo <= count <= hi)
        out["range_level"] = level
    return out


def alarm_curve(scores, labels, max_points: int = 200) -> dict | None:
    """Detection rate and false alarms per 1,000 normal items against the threshold
    (``labels`` None: alarms per 1,000 items), at most ``max_points`` thresholds spread
    over the score quantiles; None without finite scores."""
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    y = None if labels is None else _to_numpy(labels).reshape(-1).astype(bool)
    finite = np.isfinite(s)
    if not finite.any():
        return None
    grid = np.unique(np.quantile(s[finite], np.linspace(0.0, 1.0, max_points)))

    def per_1000(part):
        return [1000.0 * float((part > t).mean()) if part.size else None for t in grid]

    if y is None:
        return {"threshold": grid.tolist(), "alarms_per_1000": per_1000(s), "false_alarms_per_1000": None,
                "detection_rate": None}
    anom = s[y]
    return {"threshold": grid.tolist(), "alarms_per_1000": per_1000(s), "false_alarms_per_1000": per_1000(s[~y]),
            "detection_rate": [float((anom > t).mean()) for t in grid] if anom.size else None}


# --------------------------------------------------------------------------- sampling
def _resample(x: Tensor, log_w: Tensor, n: int) -> Tensor:
    log_w = torch.where(torch.isnan(log_w), torch.full_like(log_w, -math.inf), log_w)
    if not bool(torch.isfinite(torch.logsumexp(log_w, 0))):
        raise FloatingPointError("importance resampling failed: every importance weight is zero or infinite")
    probs = torch.softmax(log_w.double(), 0)
    idx = torch.multinomial(probs, n, replacement=True)
    return x[idx.to(x.device)]


@torch.no_grad()
def sample(model, encoder=None, n: int = 64, noise=None, method: str = "auto", n_proposal: int | None = None,
           k: int = 16, batch_size: int = 4096) -> tuple[Tensor, str]:
    """Draw ``n`` samples ``(n, D)`` from the model's marginal over ``x``; returns
    ``(samples, method)``.

    Methods (``method="auto"`` picks the first that applies, in this order):

    * ``"ancestral"`` -- normalised models with an exact ``sample()``;
    * ``"sir-proposal"`` -- sampling-importance-resampling: ``n_proposal`` joint samples
      from ``model.proposal()`` (a normalised model with ``sample_joint``), weights
      ``p~(x, z) / p_prop(x, z)`` as in :func:`estimate_log_partition`, ``n`` draws with
      replacement (e.g. :class:`~fvnce.models.EnergyTiltedVAE` through its base VAE);
    * ``"gibbs"`` / ``"ancestral"`` -- an unnormalised model's own ``sample()`` (block
      Gibbs for an RBM: approximate for a finite number of steps);
    * ``"sir-noise"`` -- resampling ``n_proposal`` noise samples with weights ``r(x)``
      estimated with ``k`` encoder samples (exact for enumerated latents).

    SIR samples are approximate: exact only as ``n_proposal`` grows, and poor when the
    weights' effective sample size is small.  ``n_proposal`` defaults to
    ``max(1000, 20 n)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    valid = ("auto", *SAMPLE_METHODS)
    if method not in valid:
        raise ConfigError(f"unknown sampling method {method!r}; valid methods: {', '.join(valid)}")
    _check_k(k)
    _check_batch_size(batch_size)
    m = max(1000, 20 * n) if n_proposal is None else n_proposal
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"n_proposal must be a positive integer, got {n_proposal!r}")
    own = model.has("sample")
    prop = _joint_proposal(model)
    if method == "auto":
        from .models.rbm import RBM

        if model.normalised and own:
            method = "ancestral"
        elif prop is not None:
            method = "sir-proposal"
        elif own:
            method = "gibbs" if isinstance(model, RBM) else "ancestral"
        elif noise is not None:
            method = "sir-noise"
        else:
            raise ConfigError(f"cannot sample {type(model).__name__}: it has no sampler and no proposal(); "
                              "give a noise distribution for importance resampling")
    if method in ("ancestral", "gibbs"):
        if not own:
            raise ConfigError(f"{type(model).__name__} has no sample() method; use method 'sir-noise' or 'auto'")
        return model.sample(n), method
    if method == "sir-proposal":
        if prop is None:
            raise ConfigError(f"{type(model).__name__}.proposal() gives no normalised model with sample_joint")
        xs, lw = _proposal_log_weights(model, prop, m, batch_size)
        return _resample(xs, lw, n), method
    if noise is None:
        raise ConfigError("sampling method 'sir-noise' needs a noise distribution (noise=...)")
    xs, lw = _noise_log_weights(model, encoder, noise, m, k, batch_size, keep_x=True)
    return _resample(xs, lw, n), method
