"""fvnce: fully variational noise-contrastive estimation for latent-variable models.

Train a model by teaching it to tell data from samples of a known noise distribution,
with one encoder ``q(z|x)`` bounding both the data and the noise side of a proper
scoring rule (Zach 2023, arXiv:2304.02473).  The VAE is the KL member of the family.

>>> import torch, fvnce
>>> x = torch.randn(500, 4)
>>> model, encoder = fvnce.make_model("tilted_vae", 4, likelihood="gaussian", z_dim=2)
>>> noise = fvnce.make_noise("full_gaussian", x)
>>> objective = fvnce.make_objective("fvnce", rule="power", alpha=1.5, k=4)
>>> result = fvnce.Trainer(model, encoder, objective, noise,
...                        fvnce.TrainConfig(steps=20, progress=False)).fit(x)
"""

from .version import __version__
from .errors import CheckpointError, ConfigError, DataError, FvnceError, NonFiniteLossError
from .models import MODELS, make_model
from .noise import NOISES, make_noise
from .objectives import OBJECTIVES, make_objective
from .rules import RULES, scoring_rule
from .train import TrainConfig, Trainer

__all__ = [
    "CheckpointError", "ConfigError", "DataError", "Detector", "FvnceError", "MODELS", "NOISES", "NonFiniteLossError",
    "OBJECTIVES", "RULES", "TrainConfig", "Trainer", "__version__", "make_model", "make_noise", "make_objective",
    "scoring_rule",
]


def __getattr__(name: str):
    # Detector imports scikit-learn, which ``import fvnce`` does not need otherwise
    if name == "Detector":
        from .detector import Detector

        return Detector
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
