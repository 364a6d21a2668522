"""Training objectives and their registry.

``make_objective(name, **params)``; adding an objective = one module + one line in
``OBJECTIVES``.  Every objective is called as ``objective(model, encoder, x, noise)`` and
returns an :class:`ObjectiveOutput`.
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import Objective
from .output import ObjectiveOutput
from .weights import (LogWeights, calibrate_log_normaliser, effective_sample_size, estimate_log_ratio,
                      log_weights)
from .elbo import ELBO
from .fvnce import FVNCE
from .iwae import IWAE
from .nce import NCE
from .vnce import VNCE

__all__ = [
    "ELBO", "FVNCE", "IWAE", "LogWeights", "NCE", "OBJECTIVES", "Objective", "ObjectiveOutput", "VNCE",
    "calibrate_log_normaliser", "effective_sample_size", "estimate_log_ratio", "log_weights", "make_objective",
    "uses_noise",
]

OBJECTIVES: dict[str, type[Objective]] = {
    "fvnce": FVNCE,
    "elbo": ELBO,
    "iwae": IWAE,
    "nce": NCE,
    "vnce": VNCE,
}


def uses_noise(name: str) -> bool:
    """Whether the registered objective ``name`` contrasts data with noise samples (an
    unknown name counts as one: it is refused where it is checked)."""
    return getattr(OBJECTIVES.get(name), "uses_noise", True)


def make_objective(name: str, **params) -> Objective:
    """Build an objective by registry name; errors name the bad value and list valid ones."""
    if name not in OBJECTIVES:
        raise ConfigError(f"unknown objective {name!r}; valid objectives: {', '.join(OBJECTIVES)}")
    if isinstance(params.get("rule"), dict):  # from a saved config
        rule = dict(params.pop("rule"))
        params["rule"] = rule.pop("name")
        for key, value in rule.items():  # the logistic rule's nu mirrors the objective's
            params.setdefault(key, value)
    try:
        return OBJECTIVES[name](**params)
    except TypeError as exc:
        raise ConfigError(f"objective {name!r}: {exc}") from None
