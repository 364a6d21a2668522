"""Noise-contrastive estimation for fully observed unnormalised models
(Gutmann & Hyvarinen 2010, 2012), with any proper scoring rule.

    L = E_{p_d} l1(r(x)) + E_{p_n} l0(r(y)),   r = p~(x) / p_n(x),

with the model's closed-form (latent-free, or latents summed analytically) marginal
``log p~(x) = log phi(x) - c`` and a learnable log-normaliser ``c``.  The default rule
is the logistic loss with ``nu`` noise samples per data point (classic NCE).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from .base import Objective
from .fvnce import data_log_pn, draw_noise
from .output import ObjectiveOutput
from .util import make_rule, ratio_output, validate_positive_int

__all__ = ["NCE"]


class NCE(Objective):
    name = "nce"
    uses_encoder = False

    def __init__(self, rule="logistic", nu: int = 1, exp_mode: str = "exact", tau: float = 20.0, **rule_params) -> None:
        self.nu = validate_positive_int("nu", nu, "nce")
        if rule == "logistic":
            rule_params.setdefault("nu", float(self.nu))
        self.rule = make_rule(rule, exp_mode, tau, rule_params, "nce")

    def config(self) -> dict:
        return {"name": self.name, "rule": self.rule.config(), "nu": self.nu}

    def check_model(self, model) -> None:
        if not model.has("log_unnormalised_marginal"):
            raise ConfigError(f"nce needs a model with a closed-form marginal over its latents; "
                              f"{type(model).__name__} has none: use fvnce or vnce")
        if model.c is None:
            raise ConfigError("nce needs an unnormalised model with a learnable log-normaliser")

    def __call__(self, model, encoder, x: Tensor, noise=None, x_log_pn: Tensor | None = None) -> ObjectiveOutput:
        x_log_pn = data_log_pn(noise, x, x_log_pn, "nce")
        b = x.shape[0]
        y, y_log_pn = draw_noise(noise, self.nu * b, x)
        log_phi = model.log_unnormalised_marginal(torch.cat([x, y]))
        lr = log_phi - torch.cat([x_log_pn, y_log_pn])
        parts = {"data-side model log-density log p~(x)": log_phi[:b], "noise-side model log-density log p~(y)": log_phi[b:]}
        return ratio_output(self.rule, lr[:b], lr[b:], model, parts)
