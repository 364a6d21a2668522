"""The base class of the objectives.

The importance weights live in :mod:`fvnce.objectives.weights`, the output record in
:mod:`fvnce.objectives.output`, the helpers for objective writers in
:mod:`fvnce.objectives.util`; their names stay importable from here.
"""

from __future__ import annotations

from torch import Tensor
from torch.distributions import Distribution

from .output import Diagnostics, ObjectiveOutput, read_floats
from .weights import (LogWeights, calibrate_log_normaliser, effective_sample_size, enumerate_states, estimate_log_ratio,
                      exact_ratio, log_weights)

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
