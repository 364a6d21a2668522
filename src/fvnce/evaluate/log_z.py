"""Estimates of log Z and the diagnostics of noise-side importance weights."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from ..diagnostics import reliable as _is_reliable
from ..errors import ConfigError
from .util import (PROPOSALS, check_batch_size, check_k, joint_proposal, log_c, noise_log_weights,
                      proposal_log_weights, weight_summary)


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
        return float(model.log_partition()) - log_c(model)
    return 0.0 if model.normalised else None


def choose_proposal(candidates: dict[str, dict]) -> str:
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
      :class:`~fvnce.models.EnergyTiltedVAE` that is ``exp(g(x) - c)``, computed as such
      rather than as the difference of two log-joints).

    Each candidate's estimate is ``logsumexp(log w) - log(#w)``, reported with its Kish
    effective sample size, the PSIS Pareto k-hat of its weights and whether it is
    reliable (``khat <= 0.7`` and ESS fraction ``>= 0.05``, :mod:`fvnce.diagnostics`).
    The answer is the exact value if there is one; otherwise, among the reliable
    candidates, the one with the largest ESS fraction; if none is reliable, the one with
    the smallest k-hat (the ESS of heavy-tailed weights is itself unreliable, the k-hat
    is not).  A candidate with NaN weights reports NaN, ESS 0 and ``khat = inf``.
    Raises :class:`~fvnce.errors.ConfigError` when no candidate applies.
    """
    check_k(k)
    check_batch_size(batch_size)
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
        _, lw = noise_log_weights(model, encoder, noise, n, k, batch_size)
        candidates["noise"] = weight_summary(lw)
    if "model_proposal" in wanted:
        prop = joint_proposal(model)
        if prop is not None:
            _, lw = proposal_log_weights(model, prop, n, batch_size, exact_base=True)
            candidates["model_proposal"] = weight_summary(lw)
    if not candidates:
        intractable = model.has("log_partition") and not getattr(model, "log_partition_tractable", True)
        why = " (its exact log_partition() is intractable here)" if intractable else ""
        raise ConfigError(f"cannot estimate log Z of {type(model).__name__}{why}: give a noise distribution, or "
                          "use a model with a closed-form log_partition() or a proposal() with sample_joint "
                          f"(proposals tried: {', '.join(wanted)})")
    best = choose_proposal(candidates)
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


