"""Importance-weighted bound (Burda et al. 2016).

    IWAE_k(x) = E_{z_1..k ~ q} log (1/k) sum_j p(x, z_j) / q(z_j|x),
    ELBO = IWAE_1 <= IWAE_k <= IWAE_2k <= log p(x).

Loss: ``-mean IWAE_k``.  Enumerable discrete latents give ``log p(x)`` exactly.
Normalised models only.
"""

from __future__ import annotations

from torch import Tensor

from .base import Objective
from .output import ObjectiveOutput
from .util import noise_diagnostics, require_normalised, validate_positive_int
from .weights import log_weights

__all__ = ["IWAE"]


class IWAE(Objective):
    name = "iwae"
    uses_noise = False

    def __init__(self, k: int = 8) -> None:
        self.k = validate_positive_int("k", k, "iwae")

    def config(self) -> dict:
        return {"name": self.name, "k": self.k}

    def check_model(self, model) -> None:
        require_normalised(self.name, model)

    def __call__(self, model, encoder, x: Tensor, noise=None, x_log_pn=None) -> ObjectiveOutput:
        lw = log_weights(model, encoder, x, 0.0, self.k, exact_limit=True)
        per = -lw.log_ratio()
        loss = per.mean()
        diag = noise_diagnostics(lw.log_ratio, None, model)  # computed when read
        diag["data_loss"] = loss.detach()
        parts = {"model log-density log p(x,z)": lw.log_joint, "encoder log-density log q(z|x)": lw.log_q}
        return ObjectiveOutput(loss, per, None, diag, parts)

