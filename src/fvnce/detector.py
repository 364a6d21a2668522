"""A scikit-learn / PyOD-style anomaly detector over one fvnce run.

:class:`Detector` is ``fvnce train`` + ``fvnce score`` behind ``fit`` /
``score_samples`` / ``decision_function`` / ``predict``: ``fit(X)`` prepares the array
as a file would be (:func:`fvnce.data.dataset_from_array`: split, Yeo-Johnson or
standardisation), trains one run (:func:`fvnce.runs.train_run`) into a run directory
and sets its alarm threshold (the split-conformal ``1 - alarm_rate`` quantile of the
validation rows' scores, ``alarm.json``); the scores are those ``fvnce score`` writes
for the same run (:func:`fvnce.runs.score_rows`, same seed), with the sign of
scikit-learn's: higher = more normal.

>>> import numpy as np, fvnce
>>> X = np.random.default_rng(0).normal(size=(300, 2))
>>> det = fvnce.Detector(steps=50).fit(X)
>>> labels = det.predict(X)          # -1 anomaly, +1 normal
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from sklearn.base import BaseEstimator, OutlierMixin
from sklearn.utils.validation import check_is_fitted

from .data import MIN_TRAIN_ROWS, DataSpec, dataset_from_array, split_indices
from .errors import ConfigError
from .objectives import uses_noise
from .runs import RunConfig, load_run, read_alarm, score_rows, train_run
from .runs.config import DEFAULT_OBJECTIVE_OPTIONS, objective_options
from .train import TrainConfig

__all__ = ["Detector"]

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - older scikit-learn
    def _validate_data(est, X, reset=True, **kw):
        return est._validate_data(X, reset=reset, **kw)


class Detector(OutlierMixin, BaseEstimator):
    """Anomaly detector: an fvnce model's estimated log-density against its alarm threshold.

    Every argument is a keyword hyper-parameter, stored unchanged (checked in ``fit``):

    * ``objective``, ``rule``, ``alpha`` (power), ``shift`` (shifted_log), ``k`` (importance
      samples in training), ``noise``, ``model``, ``z_dim``: as ``fvnce train``'s options;
      ``components``: the number of components of ``model="gaussian_mixture"`` (default 4);
    * ``steps``, ``batch_size``, ``lr``, ``device``, ``seed``: training;
    * ``eval_k``: importance samples per row when scoring (the threshold uses the same);
    * ``alarm_rate``: target false-alarm rate of the threshold, in (0, 1);
    * ``validation_fraction``: the share of the rows held out of training to set the
      threshold on (and to keep the best weights by); ``feature_transform``: as ``--transform``;
      ``dequantize``: as ``--dequantize`` ("auto": integer-valued columns get uniform noise
      in training);
    * ``run_dir``: where the run is written (kept; an earlier run there is replaced, the
      new one built beside it and swapped in once trained); None trains in a temporary folder removed at the end of ``fit``;
    * ``quiet``: no progress bar or notes.

    ``fit(X)`` is unlabelled, as ``fvnce train`` on a file without a label column: the
    rows are split (validation_fraction held out), every other row is trained on
    (anomalies among them included), and the threshold is taken over all validation rows.

    Fitted attributes: ``threshold_`` (the alarm threshold on the ``fvnce score`` scale:
    negative log-density, an alarm above it), ``offset_ = -threshold_`` (so that
    ``decision_function = score_samples - offset_`` is negative exactly for an alarm, as
    IsolationForest's), ``alarm_`` (the ``alarm.json`` record), ``n_features_in_``
    (``feature_names_in_`` for a DataFrame), ``run_dir_`` (None for a temporary run).
    """

    def __init__(self, *, objective="fvnce", rule="kl", alpha=None, shift=None, k=None, noise="auto",
                 model="auto", z_dim=None, components=None, steps=4000, batch_size=128, lr=1e-3, eval_k=64, alarm_rate=0.01,
                 validation_fraction=0.15, feature_transform="auto", dequantize="auto", device="auto", seed=0, run_dir=None, quiet=True):
        self.objective = objective
        self.rule = rule
        self.alpha = alpha
        self.shift = shift
        self.k = k
        self.noise = noise
        self.model = model
        self.z_dim = z_dim
        self.components = components
        self.steps = steps
        self.batch_size = batch_size
        self.lr = lr
        self.eval_k = eval_k
        self.alarm_rate = alarm_rate
        self.validation_fraction = validation_fraction
        self.feature_transform = feature_transform
        self.dequantize = dequantize
        self.device = device
        self.seed = seed
        self.run_dir = run_dir
        self.quiet = quiet

    # ------------------------------------------------------------------ configuration
    def _run_config(self, spec: DataSpec) -> RunConfig:
        noisy = uses_noise(self.objective)  # an objective without noise has no rule: ``rule`` is ignored
        if not noisy and (self.alpha is not None or self.shift is not None):
            raise ConfigError(f"objective {self.objective!r} has no scoring rule: leave alpha and shift unset")
        opts = objective_options(self.objective, DEFAULT_OBJECTIVE_OPTIONS if noisy else {},
                                 rule=self.rule if noisy else None, params={"alpha": self.alpha, "shift": self.shift},
                                 k=self.k, spell=str, hint=lambda want, rule: f"; rule is {rule!r}")
        config = RunConfig(data=spec, objective=self.objective, objective_options=opts, model=self.model,
                           model_options=self._model_options(), noise=self.noise,
                           train=TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr,
                                             seed=self.seed, device=self.device, progress=not self.quiet),
                           eval_k=self.eval_k, alarm_rate=self.alarm_rate)
        config.validate()
        return config

    def _model_options(self) -> dict:
        opts = {} if self.z_dim is None else {"z_dim": self.z_dim}
        if self.components is not None:
            if self.model != "gaussian_mixture":
                raise ConfigError(f"components is the gaussian_mixture model's option; model is {self.model!r}")
            opts["components"] = self.components
        return opts

    def _check_rows(self, n: int) -> None:
        v = self.validation_fraction
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 0.9:
            raise ConfigError(f"validation_fraction must be a number in (0, 0.9), got {v!r}")
        need = MIN_TRAIN_ROWS
        while len(split_indices(need, None, float(v), 0.0, 0)[0]) < MIN_TRAIN_ROWS:
            need += 1
        if n < need:
            raise ValueError(f"Detector needs at least {need} samples ({MIN_TRAIN_ROWS} to train on, the rest to "
                             f"set the alarm threshold on, validation_fraction={v:g}); got {n} sample(s)")

    # ------------------------------------------------------------------ estimator API
    def fit(self, X, y=None):
        """Train on the rows of ``X`` (N, D) and set the alarm threshold; ``y`` is ignored."""
        X = _validate_data(self, X, reset=True, dtype=np.float64)
        self._check_rows(X.shape[0])
        names = [str(c) for c in getattr(self, "feature_names_in_", [])] or None
        spec = DataSpec(source="array", seed=self.seed,
                        val_fraction=float(self.validation_fraction), test_fraction=0.0, transform=self.feature_transform,
                        dequantize=self.dequantize)
        config = self._run_config(spec)
        dataset = dataset_from_array(X, spec, names=names)
        log = (lambda m: None) if self.quiet else (lambda m: print(m, file=sys.stderr, flush=True))
        for note in dataset.notes:
            log(f"fvnce: note: {note}")
        temp = self.run_dir is None
        run_dir = Path(tempfile.mkdtemp(prefix="fvnce-detector-")) if temp else Path(self.run_dir)
        try:
            train_run(config, run_dir, overwrite=not temp, dataset=dataset, log=log, progress=not self.quiet)
            alarm = read_alarm(run_dir)
            run = load_run(run_dir, dataset=dataset)
        finally:
            if temp:
                shutil.rmtree(run_dir, ignore_errors=True)
        if alarm.get("threshold") is None:  # pragma: no cover - _check_rows keeps validation rows
            raise ValueError(f"no alarm threshold could be set: {alarm.get('note')}")
        # what scoring needs (no noise or objective: the estimator stays small and picklable)
        self._run = dataclasses.replace(run, noise=None, objective=None)
        self.alarm_ = alarm
        self.threshold_ = float(alarm["threshold"])
        self.offset_ = -self.threshold_
        self.run_dir_ = None if temp else run_dir
        return self

    def score_samples(self, X) -> np.ndarray:
        """Estimated log-density of each row (higher = more normal; ``log Z`` of an
        unnormalised model left out): minus the ``score`` column of ``fvnce score``."""
        check_is_fitted(self)
        X = _validate_data(self, X, reset=False, dtype=np.float64)
        x = self._run.preprocessor.transform(X, where="X")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self._run.config.train.seed + 2)  # as fvnce score
            scores = score_rows(self._run, x)
        return -np.asarray(scores, dtype=np.float64)

    def decision_function(self, X) -> np.ndarray:
        """``score_samples(X) - offset_``: negative for a row that raises an alarm."""
        return self.score_samples(X) - self.offset_

    def predict(self, X) -> np.ndarray:
        """-1 for a row that raises an alarm (its anomaly score above ``threshold_``), +1 otherwise."""
        return np.where(self.decision_function(X) < 0, -1, 1)
