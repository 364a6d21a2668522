"""Shared machinery of the objectives: importance log-weights, exact enumeration over
discrete latents, the output record and its diagnostics.

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
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from ..errors import ConfigError, NonFiniteLossError

__all__ = [
    "Diagnostics",
    "LogWeights",
    "Objective",
    "ObjectiveOutput",
    "calibrate_log_normaliser",
    "effective_sample_size",
    "enumerate_states",
    "estimate_log_ratio",
    "exact_ratio",
    "log_weights",
    "read_floats",
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


def read_floats(values: list) -> list:
    """``values`` (0-dim tensors, numbers or None) as Python floats (numbers and None
    unchanged), with at most one host transfer: tensors off the CPU are stacked and read
    together (each ``.item()`` there would wait for the device); on the CPU a read costs
    nothing and each is read by itself (stacking would cost more than it saves).  Every
    value is exactly what ``.item()`` gives (float32 and bfloat16 widen to float64 exactly)."""
    out = list(values)
    where = [i for i, v in enumerate(out) if isinstance(v, Tensor)]
    if len(where) > 1 and any(out[i].device.type != "cpu" for i in where):
        read = torch.stack([out[i].detach().reshape(()).to(out[where[0]].device, torch.float64)
                            for i in where]).tolist()
        for i, v in zip(where, read):
            out[i] = v
        return out
    for i in where:
        out[i] = out[i].item()
    return out


class Diagnostics(MutableMapping):
    """The detached diagnostics of one batch, computed when first read.

    A value is a number, a 0-dim tensor, or a callable without arguments returning one
    (run under ``torch.no_grad`` when first needed).  Reading gives a Python float (the
    value's ``.item()``) and keeps it, so a training step pays for the diagnostics only
    when something reads them: the trainer's explosion check reads one or two, its
    logging steps read all.  :meth:`tensor` gives the value before the host read, for
    callers that read several values at once (:func:`read_floats`).

    The callables must not read state that changes after the objective returns (the
    parameters change in the optimiser step): capture values, not modules.
    """

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._raw: dict[str, Any] = dict(values or {})
        self._read: dict[str, Any] = {}

    def tensor(self, key: str, default=None):
        """The value of ``key`` without reading it to the host (a tensor, a number or
        ``default``); a callable is evaluated once and replaced by its result."""
        if key in self._read:
            return self._read[key]
        if key not in self._raw:
            return default
        v = self._raw[key]
        if callable(v) and not isinstance(v, Tensor):
            with torch.no_grad():
                v = v()
            self._raw[key] = v
        return v

    def __getitem__(self, key: str):
        if key not in self._read:
            if key not in self._raw:
                raise KeyError(key)
            v = self.tensor(key)
            self._read[key] = v.item() if isinstance(v, Tensor) else v
        return self._read[key]

    def __setitem__(self, key: str, value) -> None:
        self._raw[key] = value
        self._read.pop(key, None)

    def __delitem__(self, key: str) -> None:
        del self._raw[key]
        self._read.pop(key, None)

    def __iter__(self):
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __repr__(self) -> str:
        return f"Diagnostics({dict(self)!r})"


@dataclass
class ObjectiveOutput:
    """What an objective returns for one batch.

    ``loss`` is the scalar to minimise; ``data_terms`` (B,) and ``noise_terms``
    (nu * B,) the per-example values whose means make it (``noise_terms`` is None for
    objectives without a noise side); ``diagnostics`` detached floats (a plain dict, or
    :class:`Diagnostics`, which computes them only when read); ``parts`` the
    raw tensors that let :meth:`check_finite` name a failing term; ``noise_log_ratio``
    the detached per-point ``log r(y)`` estimates of the noise samples (the importance
    weights of the noise term, whose tail the trainer watches), or None.
    """

    loss: Tensor
    data_terms: Tensor
    noise_terms: Tensor | None
    diagnostics: Mapping[str, float] = field(default_factory=dict)
    parts: dict[str, Tensor] = field(default_factory=dict, repr=False)
    noise_log_ratio: Tensor | None = field(default=None, repr=False)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` naming the first non-finite term."""
        if math.isfinite(self.loss.detach().item()):  # one host read, no kernel, on the healthy path
            return
        found = []
        for name, t in self.parts.items():
            if t is not None and not bool(torch.isfinite(t).all()):
                bad = t[~torch.isfinite(t)]
                found.append(f"{name} ({bad.numel()} non-finite of {t.numel()}, e.g. {bad.reshape(-1)[0].item()})")
        for name, t in (("data-side loss", self.data_terms), ("noise-side loss", self.noise_terms)):
            if t is not None and not bool(torch.isfinite(t).all()):
                found.append(name)
        where = "; ".join(found) if found else "the loss itself"
        hint = ""
        if any("noise" in f for f in found) and not any("log q" in f or "log p~" in f for f in found):
            hint = " - the noise-side exponentials overflowed: use exp_mode='linear' or a noise closer to the data"
        raise NonFiniteLossError(f"non-finite loss ({self.loss.item()}) in {where}{hint}")


class Objective:
    """Base class of the objectives: ``objective(model, encoder, x, noise)``.

    ``x`` is a ``(B, D)`` batch of data, ``noise`` a Distribution with ``sample`` and
    ``log_prob`` (ignored by objectives without a noise side), ``x_log_pn`` an optional
    precomputed ``noise.log_prob(x)``.
    """

    name: str = "objective"
    #: whether the objective draws noise samples
    uses_noise: bool = True
    #: whether the objective needs an encoder q(z|x)
    uses_encoder: bool = True

    def __call__(self, model, encoder, x: Tensor, noise: Distribution | None = None,
                 x_log_pn: Tensor | None = None) -> ObjectiveOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_model(self, model) -> None:
        """Raise :class:`ConfigError` when ``model`` cannot be trained by this objective."""

    def config(self) -> dict:
        """Plain-data description from which :func:`fvnce.objectives.make_objective` rebuilds it."""
        return {"name": self.name}

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "name")
        return f"{type(self).__name__}({inner})"


def _validate_positive_int(name: str, value, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {name}={value!r}")
    return value


def require_normalised(name: str, model) -> None:
    if not model.normalised:
        raise ConfigError(f"{name} needs a normalised model; {type(model).__name__} is unnormalised "
                          "(its bound would ignore the log-normaliser): use fvnce, nce or vnce")


def _noise_diagnostics(data_lr: Tensor | Callable[[], Tensor], noise_lr: Tensor | None, model) -> Diagnostics:
    """Shared diagnostics: mean log ratios, balanced data-vs-noise accuracy of the
    classifier ``log r > 0`` (the Bayes rule for equal priors), the effective sample
    size fraction of the noise-side ratios (the importance weights behind log Z), and
    the current log-normaliser.  Computed when read (:class:`Diagnostics`); ``data_lr``
    may be a callable giving the data-side log ratios, so that they too are computed
    only then.  The log-normaliser is copied now: the optimiser step changes it."""
    kept: list[Tensor] = []

    def data() -> Tensor:
        if not kept:
            kept.append((data_lr() if callable(data_lr) else data_lr).detach())
        return kept[0]

    d = Diagnostics({"data_log_ratio": lambda: data().mean()})
    c = model.c
    d["log_normaliser"] = c.detach().clone() if c is not None else 0.0
    if noise_lr is None:
        return d
    noise_lr = noise_lr.detach()

    def accuracy() -> Tensor:
        hit_data = (data() > 0).float().mean()
        hit_noise = (noise_lr <= 0).float().mean()
        return 0.5 * (hit_data + hit_noise)

    d["noise_log_ratio"] = lambda: noise_lr.mean()
    d["accuracy"] = accuracy
    d["ess_fraction"] = lambda: effective_sample_size(noise_lr) / noise_lr.numel()
    return d


def _mean_of(t: Tensor) -> Callable[[], Tensor]:
    """The mean of ``t``, computed when a :class:`Diagnostics` entry is read."""
    t = t.detach()
    return lambda: t.mean()


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


def ratio_output(rule, lr_d: Tensor, lr_n: Tensor, model, parts: dict[str, Tensor]) -> ObjectiveOutput:
    """The rule's loss on log ratios known exactly (a closed-form marginal, or a noise that
    knows the model's ratio): ``mean l1(log r(x)) + mean l0(log r(y))`` with its diagnostics."""
    data_terms, noise_terms = rule.data_loss(lr_d), rule.noise_loss(lr_n)
    loss = data_terms.mean() + noise_terms.mean()
    diag = _noise_diagnostics(lr_d, lr_n, model)
    diag["data_loss"] = _mean_of(data_terms)
    diag["noise_loss"] = _mean_of(noise_terms)
    return ObjectiveOutput(loss, data_terms, noise_terms, diag, parts, noise_log_ratio=lr_n.detach())

