"""The label-free union written to the poc's folder (``runs/union``, :mod:`fvnce.runs.union`)
once :func:`fvnce.poc.choose.union_members` has chosen its members."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from .. import evaluate as ev
from ..errors import FvnceError
from ..runs import create_union
from ..runs.evaluation import ALARM_KEYS
from .choose import UNION_RUN, union_members, union_recommendation

__all__ = ["recommend_union"]


def recommend_union(rec: dict | None, runs: list[dict], dataset, out_dir: Path, alarm_rate: float,
                    log: Callable[[str], None]) -> dict | None:
    """Without labels: ``rec`` replaced by the union of :func:`~fvnce.poc.choose.union_members`,
    built in ``out_dir/runs/union`` with its alarm threshold and its operating point on the
    test rows; ``rec`` unchanged when the poc lacks either kind or the union cannot be built
    (with a warning).  An earlier poc's union in ``out_dir`` is removed first."""
    shutil.rmtree(out_dir / "runs" / UNION_RUN, ignore_errors=True)
    choice = union_members(rec, runs)
    if choice is None:
        return rec
    a, b = choice.joint, choice.independent
    try:
        made = create_union(out_dir / "runs" / UNION_RUN, [out_dir / a["run_dir"], out_dir / b["run_dir"]], dataset,
                            alarm_rate, rows=dataset.test)
    except FvnceError as exc:
        log(f"fvnce: warning: the union of {a['name']} and {b['name']} could not be built ({exc}); "
            f"recommending the single run {rec['run']}")
        return rec
    alarm = {k: made["alarm"].get(k) for k in ALARM_KEYS}  # as a run's evaluation.json repeats it
    labels = None if dataset.test_labels is None else dataset.test_labels.numpy()
    operating = ev.operating_point(made["scores"], labels, alarm["threshold"], calibration=made["alarm"]) \
        if alarm.get("threshold") is not None and len(made["scores"]) else None
    return union_recommendation(rec, choice, made["union"], alarm, operating, ev.alarm_curve(made["scores"], labels))
