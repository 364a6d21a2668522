"""What is deterministic by construction, compared bit for bit on one machine: two runs of
one seed, a run resumed after a kill or a Ctrl-C against the uninterrupted run, and a run
in a fresh process against one in this process (the golden runs of tests/golden_runs.py,
60 steps each).  Every part a run leaves is compared by its sha256 (weights, optimiser
state, random-number state, best weights, metrics history without timings, evaluation,
alarm, samples); against values stored on another machine see tests/test_golden.py.

A resumed run also matches where it once differed (the power_rollback cases): the
heavy-tail warning is not given again (the checkpoint keeps whether it was), rollbacks
that happened after the checkpoint are not logged twice when the resumed run replays
them, and a Ctrl-C checkpoint keeps the last periodic rollback target.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import golden_runs as G

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def uninterrupted(name: str) -> dict:
    """The sha256 of each part of golden run ``name`` trained in one go (once per process)."""
    return G.bits(G.run(name, first=None))


def differing(a: dict, b: dict) -> list[str]:
    assert a.keys() == b.keys()
    return [k for k in a if a[k] != b[k]]


@pytest.mark.parametrize("name", sorted(G.RUNS))
def test_two_runs_of_one_seed_are_identical(name):
    first = G.bits(G.run(name))
    assert differing(first, G.bits(G.run(name))) == []


@pytest.mark.parametrize("name, how, step", [
    ("elbo", "kill", 35),             # periodic checkpoint at 20, metrics written up to 30
    ("fvnce_kl_resumed", "kill", 35),
    ("fvnce_kl_resumed", "stop", 35),  # Ctrl-C: a checkpoint at 35
    ("rbm_nce", "stop", 20),
    ("power_rollback", "kill", 50),    # resumed at 40, the rollback at step 56 replayed
    ("power_rollback", "kill", 57),    # killed after that rollback
    ("power_rollback", "stop", 40),
])
def test_resumed_weights_equal_the_uninterrupted_run(name, how, step):
    got = G.bits(G.run(name, first=None, interrupt=(how, step)))
    assert [k for k in differing(uninterrupted(name), got) if k != "metrics"] == []


@pytest.mark.parametrize("name, how, step", [
    ("elbo", "kill", 35),
    ("fvnce_kl_resumed", "kill", 35),
    ("fvnce_kl_resumed", "stop", 35),
    ("rbm_nce", "stop", 20),
    ("power_rollback", "kill", 50),    # resumed at 40 after the heavy-tail warning
    ("power_rollback", "kill", 57),    # the rollback at 56 (back to 40) replayed
    ("power_rollback", "stop", 45),    # Ctrl-C between periodic checkpoints, before that rollback
])
def test_resumed_run_equals_the_uninterrupted_run(name, how, step):
    got = G.bits(G.run(name, first=None, interrupt=(how, step)))
    assert differing(uninterrupted(name), got) == []


def test_training_on_equals_training_that_long_at_once():
    """A finished 25-step run trained on to 60 steps: the same weights, optimiser and random
    state as 60 steps at once; its history adds the first part's last step (logged and
    validated at the end of that run)."""
    name = "fvnce_kl_resumed"
    longer = G.run(name)
    at_once = G.run(name, first=None)
    assert set(differing(G.bits(at_once), G.bits(longer))) == {"metrics"}
    extra = [m for m in longer["metrics"] if m not in at_once["metrics"]]
    assert [m["step"] for m in extra] == [25, 25] and "loss" in extra[0] and "val_loss" in extra[1]
    assert [m for m in longer["metrics"] if m not in extra] == at_once["metrics"]


def test_a_fresh_process_gives_the_same_bits():
    """No state of this process (seeds, default dtype, threads set by other tests) leaks in."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "golden_runs.py"), "--bits", *sorted(G.RUNS)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fresh = json.loads(proc.stdout)
    here = {name: G.bits(G.run(name)) if G.RUNS[name][1] else uninterrupted(name) for name in sorted(G.RUNS)}
    assert {name: differing(here[name], fresh[name]) for name in here} == {name: [] for name in here}
