"""Samples from a model: ancestral, Gibbs or sampling-importance-resampling."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from .util import (SAMPLE_METHODS, check_batch_size, check_k, joint_proposal, noise_log_weights,
                      proposal_log_weights)


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
    check_k(k)
    check_batch_size(batch_size)
    m = max(1000, 20 * n) if n_proposal is None else n_proposal
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ConfigError(f"n_proposal must be a positive integer, got {n_proposal!r}")
    own = model.has("sample")
    prop = joint_proposal(model)
    if method == "auto":
        from ..models.rbm import RBM

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
        xs, lw = proposal_log_weights(model, prop, m, batch_size)
        return _resample(xs, lw, n), method
    if noise is None:
        raise ConfigError("sampling method 'sir-noise' needs a noise distribution (noise=...)")
    xs, lw = noise_log_weights(model, encoder, noise, m, k, batch_size, keep_x=True)
    return _resample(xs, lw, n), method
