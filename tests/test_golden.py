"""The golden runs (tests/golden_runs.py) reproduce the values stored in
tests/golden/runs.json on any x86_64 machine with this torch build: never skipped.

What is compared: the final weights (per tensor its sum, sum of magnitudes, 2-norm and
extremes, and every value of tensors of up to 32 elements), the metrics history (losses,
gradient norms, diagnostics at every logged step), the evaluation (log-likelihood,
AUROC, scores, alarm threshold, log Z, ...) and the samples.  Exactly: step counts,
which steps were logged, event kinds, rollbacks and retries, the learning-rate and
stabilisation schedule, flags, strings (numbers in messages masked), lengths and shapes.

Tolerance: RTOL = 2e-4 relative (a vector's sum against its sum of magnitudes, its
elements against its largest magnitude); samples 2e-2.  Why: the runs train in float32,
where one rounding is at most 2^-24 ~ 6e-8 relative; another CPU's kernels (vector
width of ATen's reductions, MKL's GEMM path) round the same sums in another order, so a
length-n reduction can differ by up to ~n * 6e-8 (a 64-wide layer: ~4e-6), and 60
optimiser steps carry those differences forward and amplify them.  Measured on an AMD
EPYC (AVX512) against ATEN_CPU_CAPABILITY=avx2 and =default, MKL_CBWR=COMPATIBLE and
=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, ONEDNN_MAX_CPU_ISA=AVX2, 1 and 2 torch threads
and combinations: the largest deviation of any quantity was 4e-5 (k-hat of the log Z
estimate; losses and gradient norms 3.5e-5, weights 1.2e-5, log-likelihoods 1.2e-6), no
discrete difference; 2e-4 leaves a factor 5.  The samples of the heavy-tailed
``power_rollback`` model differed by up to 4.7e-3 (a few extreme draws dominate the
sums), hence 2e-2 for samples.  Thread counts and MKL_ENABLE_INSTRUCTIONS /
ONEDNN_MAX_CPU_ISA alone changed nothing.

Re-record with ``python tests/golden_runs.py --record`` only for a deliberate behaviour
change (see that module).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import golden_runs as G

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = json.loads(G.GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(G.RUNS))
def test_golden_run_reproduces_the_stored_values(name):
    got = json.loads(json.dumps(G.stored(G.run(name))))
    diffs = G.compare(GOLDEN["runs"][name], got)
    assert diffs == [], f"recorded on {GOLDEN['recorded_on']}, this is {G.machine()}:\n" + "\n".join(diffs)


def test_other_cpu_kernels_reproduce_the_stored_values():
    """The best evidence that the tolerance holds on other CPUs: the runs in a process
    that uses other vector kernels (ATen's AVX2 ones, or the scalar ones on an AVX2
    machine) and MKL's compatible GEMM path."""
    native = torch.backends.cpu.get_cpu_capability()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MKL_CBWR": "COMPATIBLE",
           "ATEN_CPU_CAPABILITY": "default" if native == "AVX2" else "avx2"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "golden_runs.py"), "--check"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_the_comparison_catches_a_change_beyond_the_tolerance():
    want = GOLDEN["runs"]["elbo"]
    got = json.loads(json.dumps(want))
    assert G.compare(want, got) == []
    ll = want["evaluation"]["log_likelihood"]
    got["evaluation"]["log_likelihood"] = ll * (1 + 1.5 * G.RTOL)
    got["params"]["model.decoder.0.bias"]["values"][0] += 1.5 * G.RTOL * max(
        abs(want["params"]["model.decoder.0.bias"]["min"]), abs(want["params"]["model.decoder.0.bias"]["max"]))
    got["metrics"][0]["step"] = 2
    got["lr"] = want["lr"] * (1 + 1e-12)
    paths = [d.split(":")[0] for d in G.compare(want, got)]
    assert sorted(paths) == ["evaluation.log_likelihood", "lr", "metrics[0].step", "params.model.decoder.0.bias[0]"]
    got = json.loads(json.dumps(want))
    got["evaluation"]["log_likelihood"] = ll * (1 + 0.5 * G.RTOL)
    assert G.compare(want, got) == []
