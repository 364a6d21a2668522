"""Smoke tests of the benchmark scripts: each runs with ``--quick`` in a subprocess
(1 thread) and must write a JSON with the expected keys.  Times are never asserted.

All of them take more than 30 s in quick mode on the 2-core machine (and several
minutes when it is busy), so they sit behind the ``slow`` marker; the default suite
only checks that every script parses its arguments.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"

EXPECTED = {
    "step_cost": ["machine", "summary", "rows", "flops", "saved_bytes", "matmul_gflops", "targets"],
    "step_safety": ["machine", "config", "rows", "raw"],
    "pyro_vae": ["machine"],  # plus summary/scores/targets when pyro is installed, "skipped" otherwise
    "instances": ["machine", "config", "aggregate", "by_rule", "runs"],
    "consistency": ["machine", "config", "rows", "targets", "fits"],
    "anomaly": ["machine", "config", "per_class", "means"],
    "known_density": ["machine", "results", "table", "true_mean_log_density"],
    "poc_trust": ["machine", "results", "overall"],
    "adbench": ["machine", "rows", "raw"],
}
EXTRA = {
    "step_cost": ["--batch", "64", "--rounds", "3", "--no-bf16"],
    "consistency": ["--params", "1", "--sizes", "100", "--starts", "1", "--max-iter", "10"],
    "anomaly": ["--sets", "breast-cancer", "--budget", "30"],
    "instances": ["--steps", "20", "--base-steps", "50", "--logz-n", "500"],
    "pyro_vae": ["--epochs", "1", "--max-rows", "1200"],
    "known_density": ["--rules", "kl,power1.5", "--steps", "60"],
    "poc_trust": ["--sets", "breast-cancer", "--budget", "30"],
    "adbench": ["--sets", "wbc", "--budget", "30"],  # skips (and says so) where shared/data is absent
}


def run(name: str, out: Path, extra=(), timeout=900) -> dict:
    cmd = [sys.executable, str(BENCH / f"{name}.py"), "--quick", "--threads", "1", "--out", str(out), *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_help(name):
    proc = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--threads" in proc.stdout


def test_common_summarise_flags_disturbed_rounds():
    sys.path.insert(0, str(BENCH))
    import _common as C
    res = {"times": {"a": [1.0, 1.0, 1.0, 9.0], "b": [2.0, 2.0, 2.0, 2.0]},
           "rounds": [{"load_before": 0.5, "load_after": 0.6, "disturbed": False}] * 3
           + [{"load_before": 3.0, "load_after": 3.0, "disturbed": True}]}
    s = C.summarise(res, baseline="b")
    assert s["clean_rounds"] == 3 and not s["used_disturbed"]
    assert s["variants"]["a"]["median_s"] == 1.0 and s["variants"]["a"]["ratio_median"] == 0.5


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_run_writes_json(name, tmp_path):
    data = run(name, tmp_path / f"{name}.json", EXTRA.get(name, ()))
    for key in EXPECTED[name]:
        assert key in data, f"{name}: missing {key!r} in {sorted(data)}"
    if name == "pyro_vae" and "skipped" not in data:
        assert {"summary", "scores", "targets"} <= set(data)
