"""The cost of an alarm for a trained run (or a union of runs): :mod:`fvnce.costs` on its scores.

The normal validation scores are the ones its alarm threshold was set from (``alarm.json``'s
``validation_scores``), so the cost-minimising threshold and the alarm-rate threshold are
compared on the same numbers; the anomalous validation rows are scored as the alarm
calibration scores (same weights and ``k``), the test rows as ``fvnce score`` does.
:func:`run_cost` stores the record and the anomalous validation scores in ``alarm.json``
(key ``cost`` and ``validation_anomaly_scores``): the file is rewritten whenever the
weights change, so a stored cost never outlives the weights it was computed for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..costs import cost_report, unavailable
from ..data import load_dataset
from ..errors import CheckpointError, ConfigError
from ..fileio import atomic_write_json
from .alarm import read_alarm
from .config import RunConfig
from .files import ALARM_NAME, read_config
from .loading import load_run, score_rows
from .union import combine, is_union, member_scores, read_union

__all__ = ["cost_threshold", "run_cost", "run_scores"]

#: torch seed offsets (on the run's seed): anomalous validation rows, test rows (as fvnce score)
_VAL_OFFSET, _TEST_OFFSET = 4, 2


def run_scores(run_dir: Path, x, offset: int, dataset) -> np.ndarray:
    """Scores of the preprocessed rows ``x`` by the run or union at ``run_dir``, torch seeded
    with the run's seed plus ``offset`` and left as it was."""
    if len(x) == 0:
        return np.zeros(0)
    if is_union(run_dir):
        rec = read_union(run_dir)
        parts = [member_scores(load_run(m["path"], dataset=dataset), x, offset) for m in rec["members"]]
        return combine(parts, [(m["center"], m["spread"]) for m in rec["members"]])
    run = load_run(run_dir, dataset=dataset)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(run.config.train.seed + offset)
        return score_rows(run, x)


def _dataset(run_dir: Path, dataset):
    if dataset is not None:
        return dataset
    d = Path(read_union(run_dir)["members"][0]["path"]) if is_union(run_dir) else run_dir
    return load_dataset(RunConfig.from_dict(read_config(d)["run"]).data)


def _alarm(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory not found: {run_dir}")
    rec = read_alarm(run_dir)
    if rec is None or rec.get("threshold") is None:
        raise ConfigError(f"run {run_dir} has no alarm threshold to compare the cost with; run 'fvnce evaluate "
                          f"{run_dir}' first")
    return rec


def run_cost(run_dir: str | Path, costs: dict, *, dataset=None, write: bool = True) -> dict:
    """The cost record (:func:`fvnce.costs.cost_report`) of the run or union at ``run_dir``,
    ``costs`` = ``{cost_false_alarm, cost_miss, anomaly_share}``: the cheapest threshold on
    the validation rows beside the alarm-rate threshold, both on the test rows too.  Written
    into ``alarm.json`` when ``write``."""
    run_dir = Path(run_dir)
    alarm = _alarm(run_dir)
    normal = np.asarray([v for v in alarm["validation_scores"] if v is not None], dtype=np.float64)
    a, b, share = costs["cost_false_alarm"], costs["cost_miss"], costs.get("anomaly_share")
    if not alarm.get("labelled"):
        rec = unavailable("the cost cannot be estimated: the data has no anomaly labels, so neither the miss rate "
                            "nor the false-alarm rate of a threshold can be measured (both need labelled "
                            "validation rows)", a, b, share)
        rec["sentence"] = rec["reason"] + "."
    else:
        dataset = _dataset(run_dir, dataset)
        val_anom = run_scores(run_dir, dataset.val[dataset.val_labels != 0], _VAL_OFFSET, dataset)
        lab = dataset.test_labels
        test = run_scores(run_dir, dataset.test, _TEST_OFFSET, dataset)
        t_norm, t_anom = (test, None) if lab is None else (test[(lab == 0).numpy()], test[(lab != 0).numpy()])
        rec = cost_report(normal, val_anom, t_norm, t_anom, cost_false_alarm=a, cost_miss=b, anomaly_share=share,
                            alarm_threshold=alarm["threshold"])
        if not rec.get("available"):
            rec["sentence"] = rec["reason"] + "."
        alarm["validation_anomaly_scores"] = sorted(float(v) for v in val_anom if np.isfinite(v))
    if write:
        alarm["cost"] = rec
        atomic_write_json(run_dir / ALARM_NAME, alarm)
    return rec


def cost_threshold(run_dir: str | Path, costs: dict) -> tuple[float, str]:
    """The cheapest threshold for ``costs`` on the run's validation rows (for ``fvnce score``)
    and its description; ConfigError when the cost cannot be estimated."""
    run_dir = Path(run_dir)
    alarm = _alarm(run_dir)
    if not alarm.get("labelled"):
        raise ConfigError(f"the cost cannot be estimated for {run_dir}: its validation rows have no anomaly labels, "
                          "so the miss rate of a threshold is unknown; give --threshold or --alarm-rate")
    normal = [v for v in alarm["validation_scores"] if v is not None]
    anomalies = alarm.get("validation_anomaly_scores")
    if anomalies is None:
        dataset = _dataset(run_dir, None)
        anomalies = run_scores(run_dir, dataset.val[dataset.val_labels != 0], _VAL_OFFSET, dataset)
    rec = cost_report(normal, anomalies, cost_false_alarm=costs["cost_false_alarm"], cost_miss=costs["cost_miss"],
                        anomaly_share=costs.get("anomaly_share"))
    if not rec["available"]:
        raise ConfigError(f"{rec['reason']}; give --threshold or --alarm-rate")
    return rec["threshold"], (f"lowest expected cost on the validation rows: {rec['validation']['cost_per_1000']:.4g} "
                              f"per 1,000 items, anomaly share {rec['anomaly_share']:.3g} from {rec['share_source']}")
