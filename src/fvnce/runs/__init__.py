"""Run directories: one training run from data to evaluation, on disk.

Data flow: data spec -> :func:`fvnce.data.load_dataset` -> noise fitted on the training
split -> model + objective -> :class:`fvnce.train.Trainer` -> run directory ->
:func:`evaluate_run` -> report.  Nothing here prints; callers pass ``log``.

* :mod:`~fvnce.runs.config` -- :class:`RunConfig` and its defaults;
* :mod:`~fvnce.runs.build` -- model, encoder, objective and noise from a configuration;
* :mod:`~fvnce.runs.training` -- :func:`train_run`;
* :mod:`~fvnce.runs.loading` -- :func:`load_run`, a trained run rebuilt;
* :mod:`~fvnce.runs.evaluation` -- :func:`evaluate_run`;
* :mod:`~fvnce.runs.scoring` -- :func:`score_file` and :func:`sample_run`;
* :mod:`~fvnce.runs.alarm` -- the alarm threshold of a run (``alarm.json``);
* :mod:`~fvnce.runs.union` -- a union of runs: one detector, an alarm when any member finds a row extreme;
* :mod:`~fvnce.runs.files` -- the files of a run directory and the JSON helpers.
"""

from .alarm import DEFAULT_ALARM_RATE, calibrate_alarm, read_alarm, resolve_threshold
from .config import BASE_NOISE, RunConfig, _default_noise, check_model_sizes
from .evaluation import evaluate_run
from .files import (ALARM_NAME, CONFIG_NAME, EVALUATION_NAME, NOISE_NAME, PREPROCESS_NAME, SAMPLES_NAME, _finite_json,
                    _read_config)
from .loading import LoadedRun, load_run
from .scoring import sample_run, score_file, score_rows
from .training import normal_rows, train_run
from .union import create_union, is_union

__all__ = ["RunConfig", "LoadedRun", "calibrate_alarm", "evaluate_run", "load_run", "read_alarm", "sample_run",
           "score_file", "score_rows", "train_run",
           "create_union", "is_union"]
