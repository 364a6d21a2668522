"""Evaluation of trained models: log-likelihood, log Z, data-vs-noise accuracy, anomaly
detection metrics, samples, and the isolation-forest baseline.

Everything runs under ``torch.no_grad()``, in log space, in the model's dtype and on its
device, and processes large inputs in chunks of ``batch_size`` rows (importance samples
for one chunk are drawn together; no Python loop runs over samples).

* :func:`log_likelihood` -- per-example ``log p(x)``: the IWAE bound
  ``logsumexp_j [log p(x, z_j) - log q(z_j | x)] - log k`` for normalised models (exact
  when the encoder's discrete support is summed over), and for unnormalised models the
  same estimate of ``log p~(x)`` minus an *estimated* ``log Z``.
* :func:`estimate_log_partition` -- ``log Z = log int int p~(x, z) dx dz`` (``p~``
  includes ``exp(-c)``, so a perfectly fitted model has ``log Z = 0``) by importance
  sampling over joint proposals, with the Kish effective sample size and the PSIS
  Pareto k-hat of each (:mod:`fvnce.diagnostics`); the exact value when the model has a
  tractable one.  :func:`noise_weight_report` gives the same diagnostics of the noise-side
  weights alone (the KL noise term), for normalised models too.
* :func:`noise_accuracy` -- balanced accuracy of the classifier ``log r(x) > 0``.
* :func:`anomaly_scores`, :func:`anomaly_metrics` -- scores (higher = more anomalous)
  and AUROC, AUPRC, false-alarm rate at 95 % detection, a stored ROC curve.
* :func:`sample` -- ancestral, Gibbs, or sampling-importance-resampling, whichever the
  model allows; returns the samples and the name of the method used.
* :func:`isolation_forest_scores` -- the scikit-learn baseline.
* :func:`alarm_threshold`, :func:`operating_point`, :func:`false_alarm_range`,
  :func:`alarm_curve` -- the alarm threshold for a target false-alarm rate (split-conformal
  quantile of calibration scores), what it does on labelled items, the range of false
  alarms it should give, and detection / false alarms against the threshold.

Randomness comes from torch's global generator (``torch.manual_seed``): noises are
``torch.distributions`` objects, whose ``sample`` takes no generator.
"""

from ..thresholds import (ALARM_RANGE_LEVEL, alarm_curve, alarm_threshold, check_alarm_rate, check_threshold,
                          false_alarm_range, operating_point)
from .util import PROPOSALS, SAMPLE_METHODS, SCORE_KINDS
from .anomalies import anomaly_metrics, anomaly_scores, isolation_forest_scores
from .likelihood import log_likelihood, noise_accuracy
from .log_z import LogZEstimate, choose_proposal, estimate_log_partition, noise_weight_report
from .sampling import sample


__all__ = [
    "LogZEstimate",
    "alarm_curve",
    "alarm_threshold",
    "anomaly_metrics",
    "anomaly_scores",
    "check_alarm_rate",
    "check_threshold",
    "choose_proposal",
    "estimate_log_partition",
    "false_alarm_range",
    "isolation_forest_scores",
    "log_likelihood",
    "noise_accuracy",
    "noise_weight_report",
    "operating_point",
    "sample",
]
