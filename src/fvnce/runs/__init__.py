"""Run directories: one training run from data to evaluation, on disk.

Data flow: data spec -> :func:`fvnce.data.load_dataset` -> noise fitted on the training
split -> model + objective -> :class:`fvnce.train.Trainer` -> run directory ->
:func:`evaluate_run` -> report.  Nothing here prints; callers pass ``log``.

* :mod:`~fvnce.runs.config` -- :class:`RunConfig` and its defaults;
* :mod:`~fvnce.runs.build` -- model, encoder, objective and noise from a configuration;
* :mod:`~fvnce.runs.training` -- :func:`train_run`;
* :mod:`~fvnce.runs.loading` -- :func:`load_run`, a trained run rebuilt, and :func:`score_rows`;
* :mod:`~fvnce.runs.evaluation` -- :func:`evaluate_run`;
* :mod:`~fvnce.runs.scoring` -- :func:`score_file` and :func:`sample_run`;
* :mod:`~fvnce.runs.alarm` -- the alarm threshold of a run (``alarm.json``);
* :mod:`~fvnce.runs.union` -- a union of runs: one detector, an alarm when any member finds a row extreme;
* :mod:`~fvnce.runs.costing` -- the cost of an alarm for a run;
* :mod:`~fvnce.runs.resume` -- the settings a resumed run may be given;
* :mod:`~fvnce.runs.output` -- what an output folder holds, and replacing it;
* :mod:`~fvnce.runs.files` -- the files of a run directory (names: :mod:`fvnce.filenames`).

Imports point one way: files, config -> build -> loading -> alarm -> union -> scoring, costing;
training and evaluation use loading and alarm.
"""

from .alarm import DEFAULT_ALARM_RATE, calibrate_alarm, read_alarm, resolve_threshold
from .config import BASE_NOISE, RunConfig, check_model_sizes, default_noise
from .evaluation import evaluate_run
from .files import (ALARM_NAME, CONFIG_NAME, EVALUATION_NAME, NOISE_NAME, PREPROCESS_NAME, SAMPLES_NAME,
                    read_config)
from .loading import LoadedRun, load_run, score_rows
from .scoring import sample_run, score_file
from .training import train_run
from .union import create_union, is_union

__all__ = ["RunConfig", "LoadedRun", "calibrate_alarm", "evaluate_run", "load_run", "read_alarm", "sample_run",
           "score_file", "score_rows", "train_run",
           "create_union", "is_union"]
