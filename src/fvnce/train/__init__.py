"""The training loop: one :class:`Trainer` for every objective and model, in parts.

A run directory holds ``checkpoint.pt`` (everything needed to continue bit for bit),
``best.pt`` (the best-validation parameters) and ``metrics.jsonl``.

Reproducibility.  ``torch.manual_seed(seed)`` starts a run; the data order of epoch
``e`` is regenerated from ``(seed, e)`` on resume; the global RNG (noise and encoder
samples) is saved in the checkpoint.  A resumed run ends with exactly the parameters of
an uninterrupted one.

Each concern has its own module; :mod:`~fvnce.train.loop` holds the :class:`Trainer`
whose ``fit`` calls them, and imports run one way (loop -> parts):

* :mod:`~fvnce.train.config` -- :class:`TrainConfig` and :class:`TrainResult`;
* :mod:`~fvnce.train.loop` -- :class:`Trainer` and its ``fit``;
* :mod:`~fvnce.train.step` -- one optimisation step with its finiteness checks;
* :mod:`~fvnce.train.guard` -- explosion detection, rollback and retries (stabilisation);
* :mod:`~fvnce.train.state` -- the checkpoint payload, saving, resuming;
  :mod:`~fvnce.train.rng` the RNG state;
* :mod:`~fvnce.train.metrics` -- ``metrics.jsonl`` and the records;
* :mod:`~fvnce.train.validation` -- validation loss, ``best.pt``, the noise-tail warning;
* :mod:`~fvnce.train.batches` -- data on the device and the batch order;
* :mod:`~fvnce.train.parallel` -- DistributedDataParallel and batch shards;
* :mod:`~fvnce.train.precision` -- device, bfloat16 hooks, ``torch.compile``;
* :mod:`~fvnce.train.interrupt` -- SIGINT/SIGTERM; :mod:`~fvnce.train.progress` the
  progress bar and log lines.
"""

from ..checkpoint import load_checkpoint, save_checkpoint  # noqa: F401 - names of the old module
from .config import DEFAULT_STEPS, PRECISIONS, TrainConfig, TrainResult, steps_per_epoch
from .guard import STABILISED_EXPLODE_FACTOR, DivergenceError
from .interrupt import TrainingInterrupted
from .loop import Trainer, train
from .metrics import METRICS_NAME
from .metrics import truncate_metrics as _truncate_metrics  # noqa: F401 - used by tests
from .state import BEST_NAME, CHECKPOINT_NAME
from .validation import MIN_TAIL_WEIGHTS

__all__ = [
    "DivergenceError",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "train",
]
