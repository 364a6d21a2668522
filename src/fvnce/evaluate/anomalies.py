"""Anomaly scores, their metrics, and the isolation-forest baseline."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from .util import SCORE_KINDS, as_input, check_batch_size, check_k, log_mean_weight, noise_log_ratio


# --------------------------------------------------------------------------- anomalies
@torch.no_grad()
def anomaly_scores(model, encoder, x: Tensor, k: int = 64, kind: str = "nll", noise=None,
                   batch_size: int = 256) -> Tensor:
    """Anomaly score per row of ``x`` ``(N,)``; higher = more anomalous.

    * ``"nll"`` (default): ``-log p~(x)``, the negative estimated (unnormalised) log-density
      (IWAE estimate with ``k`` samples, exact for enumerated latents).  The constant
      ``log Z`` is left out: it does not change any ranking-based metric.
    * ``"log_ratio"``: ``-log r(x) = -(log p~(x) - log p_n(x))`` against ``noise``
      (required): how much less than the noise the model believes in ``x``.
    """
    if kind not in SCORE_KINDS:
        raise ConfigError(f"unknown anomaly score kind {kind!r}; valid kinds: {', '.join(SCORE_KINDS)}")
    if kind == "log_ratio" and noise is None:
        raise ConfigError("anomaly score kind 'log_ratio' needs a noise distribution (noise=...)")
    check_k(k)
    check_batch_size(batch_size)
    x = as_input(model, x)
    out = []
    for chunk in x.split(batch_size):
        if kind == "nll":
            out.append(-log_mean_weight(model, encoder, chunk, 0.0, k))
        else:
            out.append(-noise_log_ratio(model, encoder, noise, chunk, k))
    return torch.cat(out) if out else x.new_zeros(0)


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def _downsample(fpr: np.ndarray, tpr: np.ndarray, max_points: int = 200) -> tuple[list, list]:
    if len(fpr) > max_points:
        idx = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(int))
        fpr, tpr = fpr[idx], tpr[idx]
    return [float(v) for v in fpr], [float(v) for v in tpr]


def anomaly_metrics(scores, labels) -> dict:
    """Detection metrics of ``scores`` (higher = more anomalous) against ``labels``
    (1 = anomaly, 0 = normal).

    Returns ``auroc`` and ``auprc`` (scikit-learn ``roc_auc_score`` and
    ``average_precision_score``), ``fpr_at_95_tpr`` (the false-alarm rate at 95 %
    detection: the smallest false-positive rate among ROC points whose true-positive
    rate is at least 0.95) and ``roc = {"fpr": [...], "tpr": [...]}`` (at most 200 points,
    endpoints kept).  All values are None when ``labels`` is None or has a single class.
    ``+inf`` scores count as the most anomalous (and ``-inf`` as the least); NaN scores
    raise :class:`~fvnce.errors.DataError` (a ValueError) naming how many there are.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    empty = {"auroc": None, "auprc": None, "fpr_at_95_tpr": None, "roc": None}
    if labels is None:
        return empty
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    y = _to_numpy(labels).reshape(-1)
    if s.shape != y.shape:
        raise DataError(f"scores and labels differ in length: {s.size} scores, {y.size} labels")
    n_nan = int(np.isnan(s).sum())
    if n_nan:
        raise DataError(f"{n_nan} of {s.size} anomaly scores are NaN")
    values = np.unique(y)
    if not np.isin(values, [0, 1]).all():
        raise DataError(f"labels must be 0 (normal) or 1 (anomaly), got values {values.tolist()[:5]}")
    y = y.astype(np.int64)
    if values.size < 2:
        return empty
    # every metric here depends on the order of the scores only: dense ranks keep order
    # and ties and make +-inf finite (+inf ranks highest, -inf lowest)
    ranks = np.unique(s, return_inverse=True)[1].reshape(-1).astype(np.float64)
    fpr, tpr, _ = roc_curve(y, ranks, drop_intermediate=False)
    roc_fpr, roc_tpr = _downsample(fpr, tpr)
    return {
        "auroc": float(roc_auc_score(y, ranks)),
        "auprc": float(average_precision_score(y, ranks)),
        "fpr_at_95_tpr": float(fpr[tpr >= 0.95].min()),
        "roc": {"fpr": roc_fpr, "tpr": roc_tpr},
    }


def isolation_forest_scores(train, test, seed: int = 0) -> np.ndarray:
    """Baseline anomaly scores of ``test`` from a scikit-learn ``IsolationForest`` fitted
    on ``train`` (``-score_samples``, so higher = more anomalous, like
    :func:`anomaly_scores`)."""
    from sklearn.ensemble import IsolationForest

    train, test = _to_numpy(train), _to_numpy(test)
    forest = IsolationForest(random_state=seed).fit(train)
    return -forest.score_samples(test)


