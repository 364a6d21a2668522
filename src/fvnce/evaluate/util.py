"""Shared helpers of the evaluation modules: input checks, chunked importance weights."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..diagnostics import weight_report
from ..errors import ConfigError, DataError
from ..objectives.weights import LogWeights, exact_ratio, log_weights

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
def reference_tensor(model) -> Tensor:
    """A tensor carrying the model's dtype and device."""
    for t in model.parameters():
        return t
    for t in model.buffers():
        return t
    return torch.zeros(())


def as_input(model, x) -> Tensor:
    """``x`` as a floating tensor in the model's dtype, on its device."""
    ref = reference_tensor(model)
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise DataError(f"expected a (N, D) batch of points, got shape {tuple(x.shape)}")
    return x.to(dtype=ref.dtype, device=ref.device)


def check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return batch_size


def check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    return k


def log_c(model) -> float:
    c = model.c
    return 0.0 if c is None else float(c.detach())


def _enumerated_log_ratio(lw: LogWeights) -> Tensor:
    """``log sum_s q_s w_s`` over the states with ``q_s > 0`` (masked before adding, so a
    state whose ``log q`` underflowed to ``-inf`` never makes ``-inf + inf``)."""
    alive = lw.log_q_weight > -math.inf
    t = torch.where(alive, lw.log_q_weight + lw.log_w, torch.full_like(lw.log_w, -math.inf))
    return torch.logsumexp(t, dim=0)


def log_mean_weight(model, encoder, x: Tensor, log_pn: Tensor | float, k: int) -> Tensor:
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


def log_px_tilde(model, encoder, x: Tensor, k: int, batch_size: int) -> Tensor:
    """``log p~(x)`` estimate (includes ``-c``) for all rows, in chunks."""
    out = [log_mean_weight(model, encoder, chunk, 0.0, k) for chunk in x.split(batch_size)]
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


def noise_log_ratio(model, encoder, noise, x: Tensor, k: int) -> Tensor:
    """Per row: ``log r(x)`` against ``noise``, exact when the noise knows the ratio."""
    exact = exact_ratio(noise)
    if exact is not None:
        return exact(model, x)
    return log_mean_weight(model, encoder, x, _noise_log_prob(noise, x), k)


def joint_proposal(model):
    """The model's normalised joint proposal with ``sample_joint``, or None."""
    prop = model.proposal()
    if prop is None or not getattr(prop, "normalised", False) or not hasattr(prop, "sample_joint"):
        return None
    return prop


def proposal_log_weights(model, prop, n: int, batch_size: int, exact_base: bool = False) -> tuple[Tensor, Tensor]:
    """``n`` joint samples ``(x, z) ~ p_prop`` and ``log p~(x, z) - log p_prop(x, z)``.

    ``exact_base``: when ``prop`` is the model's own base (an energy-tilted model), the
    weight is computed as ``g(x) - c`` itself (``log_ratio_to_base``); the difference of
    the two log-joints (hundreds of nats in float32) would round it to a grid of ~1e-4
    nats and tie draws that differ."""
    exact = exact_base and prop is getattr(model, "base", None) and hasattr(model, "log_ratio_to_base")
    xs, lws = [], []
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        x, z = prop.sample_joint(m)
        xs.append(x)
        lws.append(model.log_ratio_to_base(x) if exact else model.log_joint(x, z) - prop.log_joint(x, z))
    return torch.cat(xs), torch.cat(lws)


def noise_log_weights(model, encoder, noise, n: int, k: int, batch_size: int,
                       keep_x: bool = False) -> tuple[Tensor | None, Tensor]:
    """Importance log-weights of the noise proposal ``x ~ p_n, z ~ q(z|x)``.

    Returns per-(x, z) weights ``(n*k,)`` for sampled latents, and per-x weights ``(n,)``
    (the exact ``r(x)``) for enumerated latents or a closed-form marginal.  With
    ``keep_x`` the per-x log-ratio estimates (averaging the ``k`` samples) are returned
    together with the points, for resampling.
    """
    ref, exact = reference_tensor(model), exact_ratio(noise)
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
            lws.append(log_mean_weight(model, encoder, y, log_pn, k))
        elif encoder is None:
            lws.append(model.log_unnormalised_marginal(y) - log_pn)
        else:
            lw = log_weights(model, encoder, y, log_pn, k, exact_limit=True)
            lws.append(_enumerated_log_ratio(lw) if lw.enumerated else lw.log_w.reshape(-1))
    return (torch.cat(xs) if keep_x else None), torch.cat(lws)


def weight_summary(log_w: Tensor) -> dict[str, Any]:
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

