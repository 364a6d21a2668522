"""The latent-variable model interface every objective works with.

A model is an ``nn.Module`` that evaluates the log of its (possibly unnormalised) joint
density ``log p~(x, z)``.  Conventions:

* ``x`` has shape ``(B, D)`` (images are flattened; convolutional parts reshape).
* ``z`` has shape ``(*S, B, *z_event)``: leading sample dimensions (importance samples,
  or enumerated latent states) broadcast against the batch.  ``log_joint`` returns
  ``(*S, B)``.
* An unnormalised model carries a learnable log-normaliser ``c`` (the parameter
  ``log_normaliser``) and ``log_joint`` already subtracts it: ``log p~ = log phi - c``.
  At the optimum of any proper rule, ``c`` equals the log partition function of ``phi``.
* Tractable models (test oracles) also implement ``log_marginal`` (normalised
  ``log p(x)``), ``log_partition`` (exact ``log Z`` of ``phi``, excluding ``c``) and
  ``posterior`` (exact ``p(z | x)`` as a Distribution).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

__all__ = ["LatentVariableModel"]


class LatentVariableModel(nn.Module):
    """Base class for ``p~_theta(x, z)``.

    Subclasses set ``normalised`` and implement :meth:`log_joint`.  Unnormalised
    subclasses call ``self._init_log_normaliser()`` in their constructor.
    """

    #: True when ``exp(log_joint)`` integrates to one over (x, z).
    normalised: bool = True
    #: "continuous" (reparameterised encoders) or "discrete" (enumerated encoders).
    latent_type: str = "continuous"

    def _init_log_normaliser(self, value: float = 0.0) -> None:
        self.log_normaliser = nn.Parameter(torch.tensor(float(value)))

    def _shift(self) -> Tensor:
        """What ``log_joint`` subtracts: the log-normaliser ``c`` of an unnormalised model,
        else a zero of the dtype and device of the model's first parameter."""
        if self.c is not None:
            return self.c
        p = next(self.parameters())
        return torch.zeros((), dtype=p.dtype, device=p.device)

    def log_joint(self, x: Tensor, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``log p~(x, z)`` with shape ``z.shape[:-1]`` (or ``z.shape`` for integer z)."""
        raise NotImplementedError

    # -- optional capabilities ---------------------------------------------------------
    def log_unnormalised_marginal(self, x: Tensor) -> Tensor:
        """``log p~(x) = log int p~(x, z) dz`` in closed form (needed by ``nce``)."""
        raise NotImplementedError(f"{type(self).__name__} has no closed-form marginal over its latents")

    def log_marginal(self, x: Tensor) -> Tensor:
        """Exact normalised ``log p(x)`` (tractable models only)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact marginal likelihood")

    def log_partition(self) -> Tensor:
        """Exact ``log Z`` of the unnormalised part (tractable unnormalised models only)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact log partition function")

    def posterior(self, x: Tensor) -> Distribution:
        """Exact ``p(z | x)`` (tractable models only)."""
        raise NotImplementedError(f"{type(self).__name__} has no exact posterior")

    def sample(self, n: int) -> Tensor:
        """Exact samples ``x ~ p(x)`` (normalised models with ancestral sampling)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be sampled exactly")

    def proposal(self) -> "LatentVariableModel | None":
        """A normalised model close to this one, usable as importance proposal for log Z."""
        return None

    @property
    def c(self) -> Tensor | None:
        """The learnable log-normaliser, or None for a normalised model."""
        return getattr(self, "log_normaliser", None)

    def has(self, capability: str) -> bool:
        """Whether an optional method is overridden (e.g. ``has("log_marginal")``)."""
        return getattr(type(self), capability) is not getattr(LatentVariableModel, capability)
