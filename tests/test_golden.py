"""Bit-for-bit reproduction of the golden runs (tests/golden_runs.py): refactorings of
the training loop and run directories must not change a single number."""

from __future__ import annotations

import json

import pytest

import golden_runs as G

GOLDEN = json.loads(G.GOLDEN.read_text())


@pytest.mark.parametrize("name", sorted(G.RUNS))
def test_golden_run_is_reproduced_bit_for_bit(name):
    if GOLDEN["fingerprint"] != G.fingerprint():
        pytest.skip(f"golden values were recorded with {GOLDEN['fingerprint']}, this is {G.fingerprint()}: "
                    "re-record on this machine from a commit known to be right")
    got = json.loads(json.dumps(G.run_one(name)))
    want = GOLDEN["runs"][name]
    for key in want:
        if key == "evaluation":  # results added since the recording (e.g. the alarm threshold) may appear
            assert set(want[key]) <= set(got[key]), f"{name}: evaluation lost {set(want[key]) - set(got[key])}"
            for k in want[key]:
                assert got[key][k] == want[key][k], f"{name}: evaluation {k} differs"
        else:
            assert got[key] == want[key], f"{name}: {key} differs"
    assert got.keys() == want.keys()
