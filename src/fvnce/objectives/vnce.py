"""Variational noise-contrastive estimation (Rhodes & Gutmann 2019, AISTATS).

Only the data side is bounded with the encoder; the noise side keeps the log of an
importance-sampled marginal:

    L = E_{p_d} E_{q(z|x)} l1(w(x, z))  +  E_{p_n} l0( (1/k) sum_j w(y, z_j) ),  z_j ~ q(.|y)

The data term is an upper bound (``l1`` convex) and ``q`` is trained through it alone;
the noise term is a plug-in estimate, biased for finite ``k`` (``l0`` is concave for
the default logistic rule), with the encoder held fixed in it.  Any rule whose data
side is convex in ``r`` may be used; the default is the logistic loss with ``nu``.
"""

from __future__ import annotations

from torch import Tensor

from ..errors import ConfigError
from .base import Objective
from .fvnce import data_log_pn, draw_noise
from .output import ObjectiveOutput
from .util import make_rule, mean_of, noise_diagnostics, validate_positive_int
from .weights import log_weights

__all__ = ["VNCE"]


class VNCE(Objective):
    name = "vnce"

    def __init__(self, rule="logistic", k: int = 1, nu: int = 1, exp_mode: str = "exact", tau: float = 20.0,
                 **rule_params) -> None:
        self.k = validate_positive_int("k", k, "vnce")
        self.nu = validate_positive_int("nu", nu, "vnce")
        if rule == "logistic":
            rule_params.setdefault("nu", float(self.nu))
        self.rule = make_rule(rule, exp_mode, tau, rule_params, "vnce")
        bad = [v for v in self.rule.convexity_violations() if v.startswith("data side")]
        if bad:
            raise ConfigError("vnce refuses this rule: " + "; ".join(bad) + " - the data-side bound needs it convex")

    def config(self) -> dict:
        return {"name": self.name, "rule": self.rule.config(), "k": self.k, "nu": self.nu}

    def __call__(self, model, encoder, x: Tensor, noise=None, x_log_pn: Tensor | None = None) -> ObjectiveOutput:
        x_log_pn = data_log_pn(noise, x, x_log_pn, "vnce")
        b = x.shape[0]
        y, y_log_pn = draw_noise(noise, self.nu * b, x)
        lw_d = log_weights(model, encoder, x, x_log_pn, 1)
        lw_n = log_weights(model, encoder, y, y_log_pn, self.k, detach_from=0, exact_limit=True)
        data_terms = lw_d.expect(self.rule.data_loss)
        lr_n = lw_n.log_ratio()
        noise_terms = self.rule.noise_loss(lr_n)
        loss = data_terms.mean() + noise_terms.mean()
        diag = noise_diagnostics(lw_d.log_ratio, lr_n, model)  # computed when read
        diag["data_loss"] = mean_of(data_terms)
        diag["noise_loss"] = mean_of(noise_terms)
        parts = {"data-side model log-density log p~(x,z)": lw_d.log_joint,
                 "data-side encoder log-density log q(z|x)": lw_d.log_q,
                 "noise-side model log-density log p~(y,z)": lw_n.log_joint,
                 "noise-side log-ratio": lw_n.log_w}
        return ObjectiveOutput(loss, data_terms, noise_terms, diag, parts,
                               noise_log_ratio=lr_n.detach())
