"""The ``base`` noise: the frozen base VAE of an energy-tilted model, sampled ancestrally.

For ``p~(x, z) = p_base(x, z) exp(g(x) - c)`` with ``p_base`` frozen, contrasting the data
against ``p_n = p_base`` gives the density ratio in closed form,

    r(x) = p~(x) / p_base(x) = exp(g(x) - c),

with no latent variable left to integrate: every rule's loss is then evaluated exactly
(the fully variational bound is tight for any encoder), and the noise term of the KL
rule is the importance-sampling estimate of ``Z`` through the base, the same weights that
:func:`fvnce.evaluate.estimate_log_partition` uses.  The noise is as close to the data
as the VAE it came from: the contrast is spent on what the VAE got wrong, and the model
cannot hide mass where the noise never looks (wherever the tilted model has mass, its
base has mass within ``e^{B}`` for a tilt bounded by ``B``).

The base VAE's own marginal density is intractable, so this noise has no ``log_prob``:
it is only usable with the tilted model whose frozen base it is (``exact_log_ratio``).
It is not in the fitted-noise registry (it is built from a model, not fitted to data);
runs create it with ``noise = "base"`` and rebuild it from the run's model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fvnce.errors import ConfigError

from .base import NoiseDistribution

__all__ = ["BaseModelNoise"]


class BaseModelNoise(NoiseDistribution):
    """Ancestral samples of a frozen normalised model ``vae`` (``vae.sample(n)``)."""

    name = "base"
    #: no tractable ``log_prob``; the ratio to its tilted model is exact instead
    has_density = False

    def __init__(self, vae, dim: int | None = None) -> None:
        if any(p.requires_grad for p in vae.parameters()):
            raise ConfigError("the base noise needs a frozen base model (freeze_base=True): a noise must be "
                              "a fixed distribution while the model trains")
        self.vae = vae
        dim = int(dim if dim is not None else getattr(vae, "x_dim"))
        super().__init__(dim)
        self.discrete = getattr(vae, "likelihood", "gaussian") == "bernoulli"

    @classmethod
    def from_model(cls, model) -> "BaseModelNoise":
        """The base noise of an energy-tilted model (its ``base``, which must be frozen)."""
        base = getattr(model, "base", None)
        if base is None or not hasattr(model, "log_ratio_to_base"):
            raise ConfigError(f"noise 'base' needs an energy-tilted model (tilted_vae), got {type(model).__name__}")
        return cls(base)

    @torch.no_grad()
    def sample(self, sample_shape=torch.Size()) -> Tensor:
        shape = torch.Size(sample_shape)
        n = int(shape.numel()) if len(shape) else 1
        x = self.vae.sample(n)
        return x.reshape(*shape, self.dim) if len(shape) else x[0]

    def log_prob(self, value: Tensor) -> Tensor:
        raise ConfigError("noise 'base' has no tractable density (the marginal of a VAE); it is used through "
                          "the exact ratio exp(g(x) - c) of the tilted model whose frozen base it is")

    def exact_log_ratio(self, model, x: Tensor) -> Tensor:
        """``log r(x) = g(x) - c`` for the tilted model whose base this is."""
        if getattr(model, "base", None) is not self.vae:
            raise ConfigError("noise 'base' belongs to another model: its ratio is exact only for the tilted "
                              "model whose frozen base it is")
        return model.log_ratio_to_base(x)

    def state(self) -> dict:
        return {"name": self.name, "warnings": list(self.warnings), "dim": self.dim}

    @classmethod
    def from_state(cls, state: dict, data: Tensor | None = None) -> "BaseModelNoise":
        raise ConfigError("noise 'base' is rebuilt from its run's model (BaseModelNoise.from_model), not from a file")

    def to(self, device) -> "BaseModelNoise":
        return self  # the base moves with the model it belongs to
