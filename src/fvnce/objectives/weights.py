"""Importance log-weights of the objectives, exact enumeration over discrete latents, the
effective sample size and the closed-form start of the log-normaliser.

Log importance weight (never formed as a ratio of densities):

    log w(x, z) = log p~(x, z) - log q(z | x) - log p_n(x),   E_q w = r(x) = p~(x) / p_n(x).

With ``k`` samples, ``log r_k = logsumexp_j log w_j - log k``.  With a discrete encoder
whose support is small, expectations over ``q`` are taken exactly by summing over its
states: ``E_q l(w) = sum_s exp(log q_s) l(w_s)``, with states of zero probability
masked *before* ``l`` is applied so that ``0 * inf`` never appears, in the value or in
the gradient.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from ..errors import ConfigError


__all__ = [
    "LogWeights",
    "MAX_ENUMERATION",
    "calibrate_log_normaliser",
    "effective_sample_size",
    "enumerate_states",
    "estimate_log_ratio",
    "exact_ratio",
    "log_weights",
]

#: largest number of latent states summed over exactly
MAX_ENUMERATION = 4096


@dataclass
class LogWeights:
    """Importance log-weights of one batch of points.

    ``log_w`` has shape ``(S, N)``: ``S`` importance samples (or enumerated states) for
    each of ``N`` points.  ``log_q_weight`` is ``None`` for sampled latents and holds
    ``log q(s | x)`` for enumerated ones.  ``log_joint`` and ``log_q`` are kept so that
    a non-finite loss can be traced to the model or the encoder.
    """

    log_w: Tensor
    log_joint: Tensor
    log_q: Tensor
    log_q_weight: Tensor | None = None

    @property
    def enumerated(self) -> bool:
        return self.log_q_weight is not None

    def log_ratio(self) -> Tensor:
        """Per point: ``log r_k`` (sampled) or ``log E_q w`` exactly (enumerated)."""
        if self.enumerated:
            return torch.logsumexp(self.log_q_weight + self.log_w, dim=0)
        if self.log_w.shape[0] == 1:  # k = 1: the log-sum-exp of one value is that value, bit for bit
            return self.log_w[0]
        return torch.logsumexp(self.log_w, dim=0) - math.log(self.log_w.shape[0])

    def expect(self, loss: Callable[[Tensor], Tensor]) -> Tensor:
        """Per point: ``loss(log r_k)`` for sampled latents, ``E_q loss(log w)`` exactly
        for enumerated ones."""
        if not self.enumerated:
            return loss(self.log_ratio())
        alive = self.log_q_weight > -math.inf
        safe_t = torch.where(alive, self.log_w, torch.zeros_like(self.log_w))
        terms = torch.where(alive, torch.exp(self.log_q_weight) * loss(safe_t), torch.zeros_like(safe_t))
        return terms.sum(dim=0)

    def expect_with_ratio(self, loss: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        """``(self.expect(loss), self.log_ratio())``, the log ratio computed once for
        sampled latents (where ``expect`` applies ``loss`` to it)."""
        lr = self.log_ratio()
        return (self.expect(loss) if self.enumerated else loss(lr)), lr

    def split(self, n_first: int) -> tuple["LogWeights", "LogWeights"]:
        """Split along the point dimension into the first ``n_first`` points and the rest."""
        def cut(t, sl):
            return None if t is None else t[:, sl]
        a, b = slice(None, n_first), slice(n_first, None)
        return (LogWeights(cut(self.log_w, a), cut(self.log_joint, a), cut(self.log_q, a), cut(self.log_q_weight, a)),
                LogWeights(cut(self.log_w, b), cut(self.log_joint, b), cut(self.log_q, b), cut(self.log_q_weight, b)))


def enumerate_states(q: Distribution) -> Tensor | None:
    """All latent states of a small discrete ``q`` with shape ``(S, *batch, *event)``,
    or ``None`` when ``q`` is continuous or its support is too large to enumerate."""
    base, n_event = q, 0
    if isinstance(q, Independent):
        base, n_event = q.base_dist, q.reinterpreted_batch_ndims
    if isinstance(base, (Categorical, OneHotCategorical)) and n_event == 0:
        return q.enumerate_support(expand=True)
    if isinstance(base, Bernoulli) and n_event <= 1:
        d = base.batch_shape[-1] if n_event == 1 else 1
        if 2 ** d > MAX_ENUMERATION:
            return None
        if n_event == 0:
            return q.enumerate_support(expand=True)
        bits = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=base.logits.dtype,
                            device=base.logits.device)  # (S, d)
        view = (bits.shape[0],) + (1,) * (len(q.batch_shape)) + (d,)
        return bits.view(view).expand((bits.shape[0],) + tuple(q.batch_shape) + (d,))
    return None


def log_weights(model, encoder, x: Tensor, log_pn: Tensor | float, k: int = 1, *,
                detach_from: int | None = None, exact_limit: bool = False) -> LogWeights:
    """Importance log-weights ``log w`` of the points ``x`` under ``q = encoder(x)``.

    Continuous latents are drawn by reparameterisation (``k`` per point); small
    discrete ones are enumerated (then ``k`` must be 1).  ``detach_from=n`` stops
    gradients into the encoder from the points ``x[n:]`` (their samples and ``log q``
    become constants; ``0``: all points, as the importance-sampled noise term of VNCE
    requires).  Detached points go through the encoder under
    ``torch.no_grad`` (no graph, no backward pass); the model still sees all points in
    one batched call.  ``exact_limit`` accepts ``k > 1`` with enumerated latents, for
    estimators whose ``k -> inf`` limit is what exact summation gives (IWAE: ``log p(x)``).
    """
    n = x.shape[0]
    cut = n if detach_from is None else detach_from
    parts = []
    if cut > 0:
        parts.append(_latents(encoder(x[:cut]), k, False, exact_limit))
    if cut < n:
        with torch.no_grad():
            q_rest = encoder(x[cut:])
        parts.append(_latents(q_rest, k, True, exact_limit))
    if len(parts) == 1:
        z, log_q, enumerated = parts[0]
    else:
        z = torch.cat([parts[0][0], parts[1][0]], dim=1)
        log_q = torch.cat([parts[0][1], parts[1][1]], dim=1)
        enumerated = parts[0][2]
    log_joint, log_q, log_pn = _wide(model.log_joint(x, z)), _wide(log_q), _wide(log_pn)
    log_w = log_joint - log_q - log_pn
    return LogWeights(log_w, log_joint, log_q, log_q_weight=log_q if enumerated else None)


def _latents(q: Distribution, k: int, detached: bool, exact_limit: bool) -> tuple[Tensor, Tensor, bool]:
    """Latents of ``q`` with shape ``(S, N, ...)`` and their ``log q`` ``(S, N)``: all
    states when ``q`` is small and discrete, otherwise ``k`` draws (reparameterised
    unless ``detached``).  The last item says whether the states were enumerated."""
    states = enumerate_states(q)
    if states is not None:
        if k != 1 and not exact_limit:
            raise ConfigError(f"k={k} importance samples need a reparameterisable (continuous) encoder; "
                              "discrete latents are summed over exactly, which is the k=1 bound")
        log_q = q.log_prob(states)
        return states, (log_q.detach() if detached else log_q), True
    if detached:
        z = q.sample((k,))
        return z, q.log_prob(z).detach(), False
    if not q.has_rsample:
        raise ConfigError(f"encoder returned {type(q).__name__}, which has neither rsample nor a small "
                          "enumerable support; use a Gaussian encoder or a categorical/Bernoulli "
                          f"one with at most {MAX_ENUMERATION} states")
    z = q.rsample((k,))
    return z, q.log_prob(z), False


def _wide(t):
    """Half-precision log-densities (from autocast networks) promoted to float32: the
    log-weight arithmetic always runs in at least float32."""
    if isinstance(t, Tensor) and t.dtype in (torch.bfloat16, torch.float16):
        return t.float()
    return t


def exact_ratio(noise) -> Callable[[Any, Tensor], Tensor] | None:
    """The noise's closed-form ``log r(y)`` for its model, called as ``exact(model, y)``
    (the frozen base of an energy-tilted model: ``r = exp(g - c)``), or None when the
    ratio must be estimated."""
    return getattr(noise, "exact_log_ratio", None)


def estimate_log_ratio(model, encoder, x: Tensor, log_pn: Tensor, k: int = 1) -> Tensor:
    """``log r(x)``: exact through the closed-form marginal when there is no encoder,
    otherwise the ``k``-sample importance estimate (exact for enumerated latents)."""
    if encoder is None:
        return model.log_unnormalised_marginal(x) - log_pn
    return log_weights(model, encoder, x, log_pn, k).log_ratio()


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Kish effective sample size ``(sum w)^2 / sum w^2`` of a flat set of log-weights."""
    log_w = log_w.detach().reshape(-1)
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))


@torch.no_grad()
def calibrate_log_normaliser(model, encoder, noise: Distribution, n: int = 1024, k: int = 1) -> float:
    """Set an unnormalised model's log-normaliser so that the noise-side mean of the
    (importance-sampled) ratio is one: ``c <- c + log mean_{y ~ p_n} r(y)``.

    Power rules give the log-normaliser vanishing gradients when it starts far off; this
    closed-form start avoids that.  Returns the shift applied (0 for normalised models).
    """
    if model.c is None:
        return 0.0
    y = noise.sample((n,)).to(model.c.dtype)
    exact = exact_ratio(noise)
    if exact is not None:
        lr = exact(model, y)
    else:
        lr = estimate_log_ratio(model, encoder, y, noise.log_prob(y).to(y.dtype), k)
    lr = lr[torch.isfinite(lr)]
    if lr.numel() == 0:
        return 0.0
    shift = (torch.logsumexp(lr, 0) - math.log(lr.numel())).item()
    model.log_normaliser.add_(shift)
    return shift
