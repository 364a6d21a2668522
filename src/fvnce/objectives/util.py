"""Public helpers for writing an objective: argument checks, the shared diagnostics, the
scoring rule from its name, and the output of a rule on exactly known log ratios."""

from __future__ import annotations

from typing import Callable

from torch import Tensor

from ..errors import ConfigError

from ..rules import ScoringRule, scoring_rule
from .output import Diagnostics, ObjectiveOutput
from .weights import effective_sample_size

__all__ = ["make_rule", "mean_of", "noise_diagnostics", "ratio_output", "require_normalised", "validate_positive_int"]


def validate_positive_int(name: str, value, owner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {name}={value!r}")
    return value


def require_normalised(name: str, model) -> None:
    if not model.normalised:
        raise ConfigError(f"{name} needs a normalised model; {type(model).__name__} is unnormalised "
                          "(its bound would ignore the log-normaliser): use fvnce, nce or vnce")


def noise_diagnostics(data_lr: Tensor | Callable[[], Tensor], noise_lr: Tensor | None, model) -> Diagnostics:
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


def mean_of(t: Tensor) -> Callable[[], Tensor]:
    """The mean of ``t``, computed when a :class:`Diagnostics` entry is read."""
    t = t.detach()
    return lambda: t.mean()


def make_rule(rule, exp_mode: str, tau: float, params: dict, owner: str) -> ScoringRule:
    if isinstance(rule, ScoringRule):
        if params:
            raise ConfigError(f"{owner}: rule parameters {sorted(params)} given with a rule object")
        return rule
    try:
        return scoring_rule(rule, exp_mode=exp_mode, tau=tau, **params)
    except ValueError as exc:
        raise ConfigError(f"{owner}: {exc}") from None


def ratio_output(rule, lr_d: Tensor, lr_n: Tensor, model, parts: dict[str, Tensor]) -> ObjectiveOutput:
    """The rule's loss on log ratios known exactly (a closed-form marginal, or a noise that
    knows the model's ratio): ``mean l1(log r(x)) + mean l0(log r(y))`` with its diagnostics."""
    data_terms, noise_terms = rule.data_loss(lr_d), rule.noise_loss(lr_n)
    loss = data_terms.mean() + noise_terms.mean()
    diag = noise_diagnostics(lr_d, lr_n, model)
    diag["data_loss"] = mean_of(data_terms)
    diag["noise_loss"] = mean_of(noise_terms)
    return ObjectiveOutput(loss, data_terms, noise_terms, diag, parts, noise_log_ratio=lr_n.detach())
