"""Evidence lower bound (Kingma & Welling 2014; Rezende et al. 2014).

    ELBO(x) = E_{q(z|x)} [ log p(x, z) - log q(z|x) ] <= log p(x)

Loss: ``-mean ELBO``, averaged over ``k`` reparameterised samples per point (or taken
exactly for enumerable discrete latents).  Normalised models only.
"""

from __future__ import annotations

from torch import Tensor

from .base import Objective
from .output import ObjectiveOutput
from .util import noise_diagnostics, require_normalised, validate_positive_int
from .weights import log_weights

__all__ = ["ELBO"]


class ELBO(Objective):
    name = "elbo"
    uses_noise = False

    def __init__(self, k: int = 1) -> None:
        self.k = validate_positive_int("k", k, "elbo")

    def config(self) -> dict:
        return {"name": self.name, "k": self.k}

    def check_model(self, model) -> None:
        require_normalised(self.name, model)

    def __call__(self, model, encoder, x: Tensor, noise=None, x_log_pn=None) -> ObjectiveOutput:
        lw = log_weights(model, encoder, x, 0.0, self.k)
        per = lw.expect(lambda t: -t) if lw.enumerated else -lw.log_w.mean(0)
        loss = per.mean()
        diag = noise_diagnostics(lw.log_ratio, None, model)  # computed when read
        diag["data_loss"] = loss.detach()
        parts = {"model log-density log p(x,z)": lw.log_joint, "encoder log-density log q(z|x)": lw.log_q}
        return ObjectiveOutput(loss, per, None, diag, parts)
