"""Fully variational noise-contrastive estimation (Zach 2023, arXiv:2304.02473).

For an admissible rule (``l1`` and ``l0`` both convex in ``r``) and ``r = E_q w``,

    L_FV = E_{x ~ p_d} E_{z_1..k ~ q(.|x)} l1(r_k(x)) + E_{y ~ p_n} E_{z_1..k ~ q(.|y)} l0(r_k(y))
         >= E_{p_d} l1(r) + E_{p_n} l0(r),        r_k = (1/k) sum_j w(., z_j),

and the bound tightens monotonically in ``k`` (the IWAE argument, on both sides).  ``nu``
noise samples per data point are drawn; data and noise points go through the encoder
and the model in one batched pass.  Discrete latents with few states are summed over
exactly.  A noise that knows the ratio in closed form (``exact_log_ratio``: the frozen
base of an energy-tilted model, ``r = exp(g - c)``) is used without the encoder: the
bound is then tight.  For a normalised model with the KL rule the noise term has expectation
exactly 1 for any noise and encoder, and ``noise_term="auto"`` uses that value: the
objective is then ``-ELBO + 1 + E log p_n`` (the VAE).

When the noise-side loss is linear in ``r`` (the KL rule, in every ``exp_mode``:
``l0(r) = r``), ``E_q l0(r_k(y)) = r(y)`` for *every* encoder, so the noise term carries
no information about ``q``: its encoder gradient is zero in expectation (exactly zero
for enumerated latents) and only adds variance.  ``noise_encoder="auto"`` then runs the
encoder on the noise points without gradient (``z ~ q(.|y)`` as a fixed proposal): the
model's gradient stays unbiased, the encoder's loses that noise, and the encoder's
backward pass over the noise points is skipped.  Other rules (``l0`` strictly convex)
tighten their noise-side bound through ``q`` and keep the gradient.

Energy-tilted models ``p~(x, z) = p_base(x, z) exp(g(x) - c)`` (``base_fit="auto"`` or
``"elbo"``): the normalised base and the encoder are fitted by the ELBO of the data, and
the tilt ``g`` and ``c`` by the rule, whose bound uses the base's importance weights as
fixed numbers,

    L = -ELBO_base(data) + E_{p_d} E_q l1(sg[w_base] e^{g - c}) + E_{p_n} E_q l0(sg[w_base] e^{g - c}).

The two parts touch disjoint parameters.  For any base, the rule's optimum over a rich
enough tilt is ``p~ = p_d`` (the ratio ``p~ / p_n`` is what the rule fits), so the
estimator stays consistent; in exchange the base never sits in the dead zone of a rule
whose data loss is bounded as ``r -> 0`` (power, shifted_log), and never receives the
high-variance noise-side gradient of ``Z`` (a from-scratch KL run otherwise trails the
VAE by many nats).  ``base_fit="rule"`` trains everything by the rule (the plain FV bound).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Objective
from .output import ObjectiveOutput
from .util import make_rule, mean_of, noise_diagnostics, ratio_output, validate_positive_int
from .weights import LogWeights, exact_ratio, log_weights

__all__ = ["FVNCE"]

NOISE_TERMS = ("auto", "estimate")
NOISE_ENCODER = ("auto", "grad", "detach")
BASE_FITS = ("auto", "elbo", "rule")


def data_log_pn(noise, x: Tensor, x_log_pn: Tensor | None, owner: str) -> Tensor:
    """``log p_n(x)`` of the data batch (precomputed by the trainer when it can be)."""
    if noise is None:
        raise ConfigError(f"{owner} needs a noise distribution")
    return noise.log_prob(x).to(x.dtype) if x_log_pn is None else x_log_pn


def draw_noise(noise, n: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """``n`` noise samples in ``like``'s dtype and device, with their log-densities."""
    y = noise.sample((n,)).to(dtype=like.dtype, device=like.device)
    return y, noise.log_prob(y).to(like.dtype)


class FVNCE(Objective):
    """Fully variational NCE with any admissible scoring rule.

    Parameters: ``rule`` (name or :class:`~fvnce.rules.ScoringRule`; ``kl``, ``power``,
    ``shifted_log`` or a generic rule), its parameters (``alpha``, ``c``), ``k``
    importance samples per point, ``nu`` noise samples per data point, ``exp_mode`` and
    ``tau`` for the stabilised exponentials, ``noise_term`` (``auto`` or ``estimate``),
    ``noise_encoder`` (``auto``: no encoder gradient from the noise side when the noise
    loss is linear in ``r``; ``grad``: always; ``detach``: never).
    """

    name = "fvnce"

    def __init__(self, rule="kl", k: int = 1, nu: int = 1, exp_mode: str = "exact", tau: float = 20.0,
                 noise_term: str = "auto", noise_encoder: str = "auto", base_fit: str = "auto",
                 **rule_params) -> None:
        self.rule = make_rule(rule, exp_mode, tau, rule_params, "fvnce")
        bad = self.rule.convexity_violations()
        if bad:
            raise ConfigError("fvnce refuses this rule: " + "; ".join(bad)
                              + " - a fully variational bound needs both sides convex (use it with nce or vnce)")
        self.k = validate_positive_int("k", k, "fvnce")
        self.nu = validate_positive_int("nu", nu, "fvnce")
        if noise_term not in NOISE_TERMS:
            raise ConfigError(f"fvnce: noise_term must be one of {NOISE_TERMS}, got {noise_term!r}")
        self.noise_term = noise_term
        if noise_encoder not in NOISE_ENCODER:
            raise ConfigError(f"fvnce: noise_encoder must be one of {NOISE_ENCODER}, got {noise_encoder!r}")
        self.noise_encoder = noise_encoder
        if base_fit not in BASE_FITS:
            raise ConfigError(f"fvnce: base_fit must be one of {BASE_FITS}, got {base_fit!r}")
        self.base_fit = base_fit

    def config(self) -> dict:
        return {"name": self.name, "rule": self.rule.config(), "k": self.k, "nu": self.nu,
                "noise_term": self.noise_term, "noise_encoder": self.noise_encoder, "base_fit": self.base_fit}

    def fits_base_by_elbo(self, model) -> bool:
        """Whether the model's normalised base (and the encoder) are fitted by the ELBO and
        only the tilt and log-normaliser by the rule (``base_fit``, module docstring)."""
        base = getattr(model, "base", None)
        has_base = base is not None and not model.normalised and getattr(base, "normalised", False) \
            and hasattr(model, "log_ratio_to_base")
        if self.base_fit == "auto":
            return has_base
        if self.base_fit == "elbo" and not has_base:
            raise ConfigError(f"fvnce: base_fit='elbo' needs an energy-tilted model with a normalised base, "
                              f"got {type(model).__name__}")
        return self.base_fit == "elbo"

    def detaches_noise_encoder(self) -> bool:
        """Whether the encoder gets no gradient from the noise points (see the module docstring)."""
        if self.noise_encoder == "auto":
            return self.rule.constant_weight
        return self.noise_encoder == "detach"

    def skips_noise(self, model) -> bool:
        """Whether the noise term is replaced by its exact expectation 1 (normalised model, KL rule)."""
        return self.noise_term == "auto" and model.normalised and self.rule.name == "kl"

    def __call__(self, model, encoder, x: Tensor, noise=None, x_log_pn: Tensor | None = None) -> ObjectiveOutput:
        if exact_ratio(noise) is not None:
            return self._exact_ratio(model, x, noise)
        x_log_pn = data_log_pn(noise, x, x_log_pn, "fvnce")
        if self.fits_base_by_elbo(model):
            return self._tilt_by_rule(model, encoder, x, noise, x_log_pn)
        b = x.shape[0]
        if self.skips_noise(model):
            lw_d, lw_n = log_weights(model, encoder, x, x_log_pn, self.k), None
        else:
            y, y_log_pn = draw_noise(noise, self.nu * b, x)
            lw = log_weights(model, encoder, torch.cat([x, y]), torch.cat([x_log_pn, y_log_pn]), self.k,
                             detach_from=b if self.detaches_noise_encoder() else None)
            lw_d, lw_n = lw.split(b)
        data_terms = lw_d.expect(self.rule.data_loss)
        if lw_n is None:
            noise_terms, noise_mean, noise_lr = None, torch.ones((), dtype=x.dtype, device=x.device), None
        else:
            noise_terms, noise_lr = lw_n.expect_with_ratio(self.rule.noise_loss)
            noise_mean, noise_lr = noise_terms.mean(), noise_lr.detach()
        loss = data_terms.mean() + noise_mean
        diag = noise_diagnostics(lw_d.log_ratio, noise_lr, model)  # computed when read
        diag["data_loss"] = mean_of(data_terms)
        diag["noise_loss"] = noise_mean.detach()
        parts = {"data-side model log-density log p~(x,z)": lw_d.log_joint,
                 "data-side encoder log-density log q(z|x)": lw_d.log_q,
                 "data-side log-ratio": lw_d.log_w}
        if lw_n is not None:
            parts.update({"noise-side model log-density log p~(y,z)": lw_n.log_joint,
                          "noise-side encoder log-density log q(z|y)": lw_n.log_q,
                          "noise-side log-ratio": lw_n.log_w})
        return ObjectiveOutput(loss, data_terms, noise_terms, diag, parts, noise_log_ratio=noise_lr)

    def _tilt_by_rule(self, model, encoder, x: Tensor, noise, x_log_pn: Tensor) -> ObjectiveOutput:
        """Energy-tilted model ``p_base(x, z) exp(g(x) - c)``: the base and the encoder get the
        ELBO of the data, the tilt and ``c`` the rule's fully variational bound, with the
        base's importance weights held fixed in it (module docstring, ``base_fit``)."""
        b = x.shape[0]
        y, y_log_pn = draw_noise(noise, self.nu * b, x)
        xy = torch.cat([x, y])
        lw = log_weights(model.base, encoder, xy, torch.cat([x_log_pn, y_log_pn]), self.k, detach_from=b)
        base, _ = lw.split(b)  # the data points
        base.log_w = base.log_w + x_log_pn  # log p_base(x, z) - log q(z | x)
        elbo = base.expect(lambda t: t) if base.enumerated else base.log_w.mean(0)  # E_q, as in ELBO
        tilt = model.log_ratio_to_base(xy)
        fixed = LogWeights(lw.log_w.detach() + tilt, lw.log_joint.detach() + tilt, lw.log_q.detach(),
                           None if lw.log_q_weight is None else lw.log_q_weight.detach())
        lw_d, lw_n = fixed.split(b)
        data_terms = lw_d.expect(self.rule.data_loss)
        noise_terms, noise_lr = lw_n.expect_with_ratio(self.rule.noise_loss)
        noise_lr = noise_lr.detach()
        loss = data_terms.mean() + noise_terms.mean() - elbo.mean()
        diag = noise_diagnostics(lw_d.log_ratio, noise_lr, model)
        diag["data_loss"] = mean_of(data_terms)
        diag["noise_loss"] = mean_of(noise_terms)
        diag["base_elbo"] = mean_of(elbo)
        parts = {"data-side base log-density log p_base(x,z)": lw.log_joint[:, :b],
                 "data-side encoder log-density log q(z|x)": lw.log_q[:, :b],
                 "tilt g(x) - c": tilt, "data-side log-ratio": lw_d.log_w, "noise-side log-ratio": lw_n.log_w}
        return ObjectiveOutput(loss, data_terms, noise_terms, diag, parts, noise_log_ratio=noise_lr)

    def _exact_ratio(self, model, x: Tensor, noise) -> ObjectiveOutput:
        """A noise that knows the model's ratio in closed form (the frozen base of a tilted
        model: ``r = exp(g - c)``): the rule's exact loss, the bound being tight."""
        b = x.shape[0]
        y = noise.sample((self.nu * b,)).to(dtype=x.dtype, device=x.device)
        lr = noise.exact_log_ratio(model, torch.cat([x, y]))
        lr_d, lr_n = lr[:b], lr[b:]
        return ratio_output(self.rule, lr_d, lr_n, model, {"data-side log-ratio": lr_d, "noise-side log-ratio": lr_n})
