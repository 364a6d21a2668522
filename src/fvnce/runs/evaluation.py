"""Evaluating a trained run: log-likelihood, noise accuracy, anomaly metrics and
importance-weight diagnostics into ``evaluation.json``, model samples into ``samples.npy``."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import evaluate as ev
from ..data import Dataset, load_dataset, prepare_scoring_data
from ..fileio import atomic_write_json, atomic_write_npy, finite_json
from ..version import __version__
from ..image_plan import run_log_z_samples
from .alarm import calibrate_alarm, read_alarm
from .files import EVALUATION_NAME, SAMPLES_NAME
from .loading import LoadedRun, load_run

__all__ = ["ALARM_KEYS", "evaluate_run"]


def _split_metrics(run: LoadedRun, x: torch.Tensor, labels, log_z, k: int, n_samples_acc: int = 2000,
                   x_ll: torch.Tensor | None = None):
    """Metrics of one split.  ``log_likelihood`` is the mean over the normal rows (of
    ``x_ll``, the rows dequantised, when given: :func:`fvnce.data.load.dequantize`),
    ``log_likelihood_se = std(ll) / sqrt(n)`` its standard error over those rows (Monte
    Carlo spread of the rows only: the error of an estimated ``log Z`` shifts every row
    alike and is not in it; None for fewer than two rows), ``log_likelihood_reliable``
    True for normalised models, else ``log_z.reliable``."""
    x = x.to(next(run.model.parameters()).dtype)
    out: dict[str, Any] = {}
    ll = ev.log_likelihood(run.model, run.encoder, x, k=k, log_z=log_z)
    normal = torch.ones(len(x), dtype=torch.bool) if labels is None else (labels == 0)
    lln = (ll if x_ll is None else ev.log_likelihood(run.model, run.encoder, x_ll.to(x.dtype), k=k,
                                                      log_z=log_z))[normal].double()
    out["log_likelihood"] = float(lln.mean()) if len(lln) else None
    out["log_likelihood_se"] = float(lln.std() / math.sqrt(len(lln))) if len(lln) > 1 else None
    out["log_likelihood_reliable"] = True if run.model.normalised else bool(log_z.reliable)
    xn = x[normal][:n_samples_acc]
    out["noise_accuracy"] = ev.noise_accuracy(run.model, run.encoder, xn, run.noise) if len(xn) else None
    scores = -ll  # the anomaly score: negative estimated log-density (log Z only shifts it)
    out["_scores"] = scores
    # in the units of `fvnce score` and of the alarm threshold: -log p~(x), log Z left out
    out["_alarm_scores"] = scores if run.model.normalised else scores - float(log_z)
    if labels is not None:
        m = ev.anomaly_metrics(scores.numpy(), labels.numpy())
        out.update({key: m[key] for key in ("auroc", "auprc", "fpr_at_95_tpr")})
        out["_roc"] = m.get("roc")
    else:
        out.update({"auroc": None, "auprc": None, "fpr_at_95_tpr": None, "_roc": None})
    return out


def evaluate_run(run_dir: str | Path, *, dataset: Dataset | None = None, data_file: str | None = None,
                 k: int | None = None, n_samples: int = 64, write: bool = True) -> dict:
    """Evaluate a trained run on its validation and test splits (or on ``data_file``,
    preprocessed as in training) and write ``evaluation.json`` and ``samples.npy``.

    Metrics: log-likelihood in nats per example (an IWAE bound for normalised models,
    an importance-sampling estimate through log Z for unnormalised ones) with its
    standard error ``log_likelihood_se`` and ``log_likelihood_reliable``, balanced
    data-vs-noise accuracy, and where labels exist AUROC, AUPRC and the false-alarm rate
    at 95% detection, the anomaly score being the negative estimated log-density.

    Importance-weight diagnostics (:mod:`fvnce.diagnostics`; 20,000 noise or proposal
    samples per candidate, 2,000 on continuous images: :mod:`fvnce.image_plan`): ``log_z = {log_z,
    ess_fraction, khat, reliable, proposal, candidates: {name: {log_z, ess_fraction, khat,
    reliable}}}`` (unnormalised models; None otherwise) and ``noise_term = {khat,
    ess_fraction, reliable}``, the diagnostics of the noise-side weights ``r(y), y ~ p_n``
    (the KL noise term; None when the run has no noise).  Non-finite values (the exact
    candidate's ``khat = -inf``) are written as null.

    The alarm threshold (``alarm.json``, :mod:`fvnce.runs.alarm`) on the test rows (or
    ``data_file``): ``alarm`` = the threshold record, ``operating_point`` = false alarms
    per 1,000 normal items and the detection rate there, with the range of false alarms
    expected at that threshold (:func:`fvnce.evaluate.operating_point`), ``alarm_curve``
    = both against the threshold; scores in the units of ``fvnce score``.
    """
    t0 = time.perf_counter()
    run = load_run(run_dir, dataset=dataset)
    k = k or run.config.eval_k
    torch.manual_seed(run.config.train.seed + 1)
    log_z, noise_w = None, None
    n_lz = run_log_z_samples(run)  # fewer on continuous images (fvnce.image_plan)
    if not run.model.normalised:
        log_z = ev.estimate_log_partition(run.model, run.encoder, run.noise, n=n_lz)
        noise_w = log_z.candidates.get("noise")
    if noise_w is None:  # normalised model (where it is cheap), or no noise candidate
        noise_w = ev.noise_weight_report(run.model, run.encoder, run.noise, n=n_lz)
    diag = ("khat", "ess_fraction", "reliable")
    result: dict[str, Any] = {
        "fvnce_version": __version__, "weights": run.weights,
        "log_likelihood_kind": "iwae_bound" if run.model.normalised else "estimate",
        "log_z": None if log_z is None else {
            "log_z": log_z.log_z, "ess_fraction": log_z.ess_fraction, "khat": log_z.khat,
            "reliable": log_z.reliable, "proposal": log_z.proposal,
            "candidates": {name: {key: c[key] for key in ("log_z", *diag)} for name, c in log_z.candidates.items()}},
        "noise_term": None if noise_w is None else {key: noise_w[key] for key in diag},
    }
    if data_file is not None:
        x, raw_labels = prepare_scoring_data(data_file, run.preprocessor, label=run.config.data.label,
                                             return_labels=True)
        test_labels = _labels_from(raw_labels, run.config.data.normal)
        test = _split_metrics(run, torch.as_tensor(x), test_labels, log_z, k)
        val = None
    else:
        if dataset is None:
            dataset = load_dataset(run.config.data)
        test_labels = dataset.test_labels
        test = _split_metrics(run, dataset.test, test_labels, log_z, k, x_ll=dataset.test_dequantized)
        val = _split_metrics(run, dataset.val, dataset.val_labels, log_z, k, x_ll=dataset.val_dequantized)
    scores, roc, alarm_scores = test.pop("_scores"), test.pop("_roc"), test.pop("_alarm_scores")
    result.update(test)
    result["roc"] = roc
    result.update(_alarm_results(run, dataset, alarm_scores, test_labels, calibrate=write and data_file is None))
    if data_file is None and dataset.test_labels is not None:
        lab = dataset.test_labels.bool()
        result["scores"] = {"normal": scores[~lab].tolist(), "anomaly": scores[lab].tolist()}
    else:
        result["scores"] = None
    if val is not None:
        val.pop("_scores"), val.pop("_roc"), val.pop("_alarm_scores")
        result["val"] = val
    result["samples_file"], result["sampling_method"] = None, None
    if n_samples > 0 and write:
        try:
            samples, method = ev.sample(run.model, run.encoder, n_samples, noise=run.noise)
            result["samples_file"], result["sampling_method"] = SAMPLES_NAME, method
            if write:
                atomic_write_npy(Path(run_dir) / SAMPLES_NAME, samples.detach().cpu().numpy())
        except NotImplementedError:
            pass
    result["wall_time_s"] = time.perf_counter() - t0
    if write:
        atomic_write_json(Path(run_dir) / EVALUATION_NAME, finite_json(result))
    return finite_json(result)


def _alarm_results(run: LoadedRun, dataset, scores, labels, calibrate: bool) -> dict:
    """``alarm`` (the threshold of ``run``, from ``alarm.json``; set on the validation rows
    here when the run has none and ``calibrate``), ``operating_point`` (what it does on these
    rows: :func:`fvnce.evaluate.operating_point`) and ``alarm_curve`` (detection and false
    alarms against the threshold); None where there is no threshold."""
    rec = read_alarm(run.run_dir)
    if rec is None and calibrate:  # a run trained before alarm thresholds existed
        rec = calibrate_alarm(run.run_dir, dataset, run=run)
    out: dict[str, Any] = {"alarm": None, "operating_point": None,
                           "alarm_curve": ev.alarm_curve(scores.numpy(), None if labels is None else labels.numpy())}
    if rec is None:
        return out
    out["alarm"] = {key: rec.get(key) for key in ALARM_KEYS}
    if rec.get("threshold") is not None:
        out["operating_point"] = ev.operating_point(scores.numpy(), None if labels is None else labels.numpy(),
                                                    rec["threshold"], calibration=rec)
    return out


#: the keys of alarm.json that evaluation.json repeats (all but the validation scores)
ALARM_KEYS = ("rate", "threshold", "n", "rank", "expected_rate", "calibrated_on", "labelled", "note")


def _labels_from(raw_labels, normal) -> torch.Tensor | None:
    if raw_labels is None or normal is None:
        return None
    return torch.as_tensor(np.asarray([str(v) != str(normal) for v in raw_labels], dtype=np.int64))
