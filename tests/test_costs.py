"""The cost of an alarm (fvnce.costs): the cheapest threshold is the minimum over every
threshold (brute force, exact), never costs more than the alarm-rate threshold on the
validation rows, and the record says when the cost cannot be estimated."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fvnce import costs
from fvnce.errors import ConfigError
from fvnce.evaluate import alarm_threshold


def brute_cost(normal, anomaly, t, p, a, b):
    """Plain loops, the definition: alarm when the score is strictly above t."""
    fa = sum(1 for s in normal if s > t) / len(normal)
    miss = sum(1 for s in anomaly if not s > t) / len(anomaly)
    return 1000.0 * ((1 - p) * a * fa + p * b * miss)


def every_threshold(normal, anomaly):
    """Below, between and above all scores, and the scores themselves: every distinct set
    of alarms there is."""
    s = sorted(set(normal) | set(anomaly))
    mids = [(x + y) / 2 for x, y in zip(s, s[1:])]
    return [s[0] - 1.0, s[-1] + 1.0, *s, *mids]


def test_worked_example():
    # normal 1..4, anomalies 3.5 and 5, half anomalies, equal costs: t = 3 alarms on 4 (one
    # false alarm in four normal items) and on both anomalies: 1000 * 0.5 * 0.25 = 125
    best = costs.cheapest_threshold([1, 2, 3, 4], [3.5, 5], 0.5, 1.0, 1.0)
    assert best == {"threshold": 3.0, "cost_per_1000": 125.0, "false_alarm_rate": 0.25, "detection_rate": 1.0}
    assert costs.expected_cost([1, 2, 3, 4], [3.5, 5], 3.5, 0.5, 1.0, 1.0) == 375.0


def test_candidates_cover_every_set_of_alarms():
    n, a = [0.5, 2.0, 2.0], [1.0, 3.0]
    cand = costs.candidate_thresholds(n, a)
    assert cand[0] < 0.5 and list(cand[1:]) == [0.5, 1.0, 2.0, 3.0]
    sets = {tuple(s > t for s in n + a) for t in cand}
    brute = {tuple(s > t for s in n + a) for t in every_threshold(n, a)}
    assert sets == brute


@pytest.mark.parametrize("seed", range(20))
def test_cheapest_equals_brute_force_minimum(seed):
    rng = np.random.default_rng(seed)
    n = np.round(rng.normal(0, 1, rng.integers(1, 9)), 1).tolist()  # rounded: ties between and within classes
    a = np.round(rng.normal(1, 1, rng.integers(1, 6)), 1).tolist()
    p, ca, cb = float(rng.uniform(0.01, 0.99)), float(rng.uniform(0, 10)), float(rng.uniform(0, 100))
    best = costs.cheapest_threshold(n, a, p, ca, cb)
    grid = every_threshold(n, a)
    brute = min(brute_cost(n, a, t, p, ca, cb) for t in grid)
    assert best["cost_per_1000"] == pytest.approx(brute, rel=1e-12, abs=1e-12)
    assert brute_cost(n, a, best["threshold"], p, ca, cb) == pytest.approx(best["cost_per_1000"], rel=1e-12, abs=1e-12)
    # ties go to the highest threshold: no higher threshold of the grid costs as little
    same = [s > best["threshold"] for s in n + a]
    higher = [t for t in grid if t > best["threshold"] and [s > t for s in n + a] != same]
    assert all(brute_cost(n, a, t, p, ca, cb) > best["cost_per_1000"] + 1e-9 for t in higher)


def test_never_and_always_alarm_are_the_ends():
    n, a = [1.0, 2.0], [3.0]
    # misses free: never alarm (the largest score) is cheapest; false alarms free: always alarm
    assert costs.cheapest_threshold(n, a, 0.3, 1.0, 0.0)["threshold"] == 3.0
    low = costs.cheapest_threshold(n, a, 0.3, 0.0, 1.0)
    assert low["cost_per_1000"] == 0.0 and low["detection_rate"] == 1.0
    rec = costs.cost_report(n, a, cost_false_alarm=2.0, cost_miss=5.0, anomaly_share=0.1)
    assert rec["never_alarm_per_1000"] == pytest.approx(1000 * 0.1 * 5.0)
    assert rec["always_alarm_per_1000"] == pytest.approx(1000 * 0.9 * 2.0)


@settings(max_examples=200, deadline=None)
@given(normal=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=25),
       anomaly=st.lists(st.floats(-50, 50, allow_nan=False), min_size=1, max_size=10),
       share=st.floats(0.001, 0.999), ca=st.floats(0, 1e4), cb=st.floats(0, 1e4),
       rate=st.floats(0.01, 0.5), t=st.floats(-100, 100))
def test_cheapest_never_costs_more_than_any_threshold(normal, anomaly, share, ca, cb, rate, t):
    best = costs.cheapest_threshold(normal, anomaly, share, ca, cb)
    at_alarm_rate = alarm_threshold(np.asarray(normal), rate)["threshold"]
    for other in (at_alarm_rate, t):
        assert best["cost_per_1000"] <= costs.expected_cost(normal, anomaly, other, share, ca, cb) * (1 + 1e-12) + 1e-9


def test_report_on_validation_and_test_with_the_alarm_rate_point():
    rng = np.random.default_rng(3)
    vn, va, tn, ta = rng.normal(0, 1, 300), rng.normal(2.5, 1, 20), rng.normal(0, 1, 300), rng.normal(2.5, 1, 20)
    t_rate = alarm_threshold(vn, 0.01)["threshold"]
    rec = costs.cost_report(vn, va, tn, ta, cost_false_alarm=1.0, cost_miss=50.0, alarm_threshold=t_rate)
    assert rec["available"] and rec["share_source"] == "validation labels (20 of 320 rows)"
    assert rec["anomaly_share"] == 20 / 320
    assert rec["validation"]["cost_per_1000"] <= rec["alarm_rate_point"]["validation"]["cost_per_1000"]
    t = rec["threshold"]
    assert rec["test"]["false_alarms"] == int((tn > t).sum()) and rec["test"]["detected"] == int((ta > t).sum())
    assert rec["test"]["cost_per_1000"] == pytest.approx(brute_cost(tn, ta, t, 20 / 320, 1.0, 50.0))
    assert "cheapest threshold" in rec["sentence"] and "alarm-rate threshold" in rec["sentence"]
    given_share = costs.cost_report(vn, va, cost_false_alarm=1.0, cost_miss=50.0, anomaly_share=0.001)
    assert given_share["share_source"] == "given (--anomaly-share)" and given_share["test"] is None
    # rarer anomalies: a miss matters less, so the threshold rises (fewer alarms)
    assert given_share["threshold"] >= rec["threshold"]


def test_without_anomalous_rows_the_cost_is_not_estimated():
    rec = costs.cost_report([1.0, 2.0], [], cost_false_alarm=1.0, cost_miss=10.0)
    assert rec["available"] is False and "cannot be estimated" in rec["reason"] and "miss" in rec["reason"]
    assert rec["never_alarm_per_1000"] is None
    rec = costs.cost_report([1.0, 2.0], None, cost_false_alarm=1.0, cost_miss=10.0, anomaly_share=0.02)
    assert rec["available"] is False and rec["never_alarm_per_1000"] == pytest.approx(200.0)


@pytest.mark.parametrize("a,b,p", [(-1, 1, None), (1, float("nan"), None), (0, 0, None), (1, 1, 0.0), (1, 1, 1.0),
                                   (True, 1, None), (1, 1, float("inf"))])
def test_bad_costs_are_refused(a, b, p):
    with pytest.raises(ConfigError):
        costs.check_costs(a, b, p)


def test_nan_scores_are_left_out():
    n = [1.0, float("nan"), 2.0]
    assert costs.error_rates(n, [3.0], 1.5) == (0.5, 0.0)
    assert list(itertools.islice(costs.candidate_thresholds(n, [3.0]), 1, None)) == [1.0, 2.0, 3.0]


# -- train and score with costs ---------------------------------------------------------------
def test_train_stores_the_cost_and_score_uses_its_threshold(tmp_path, capsys):
    import json

    from fvnce.cli import main

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    bad = np.arange(400) % 8 == 0
    x[bad] += 2.0
    with open(tmp_path / "t.csv", "w") as fh:
        fh.write("a,b,c,status\n")
        for row, b in zip(x, bad):
            fh.write(",".join(f"{v:.6f}" for v in row) + (",bad\n" if b else ",ok\n"))
    run = tmp_path / "run"
    common = ["--data", str(tmp_path / "t.csv"), "--label", "status", "--normal", "ok"]
    assert main(["train", *common, "--objective", "elbo", "--steps", "20", "--out", str(run),
                 "--cost-false-alarm", "1", "--cost-miss", "30"]) == 0
    assert "cheapest threshold on the validation rows" in capsys.readouterr().err
    alarm = json.loads((run / "alarm.json").read_text())
    rec = alarm["cost"]
    assert rec["available"] and rec["alarm_rate_point"]["threshold"] == alarm["threshold"]
    assert rec["validation"]["cost_per_1000"] <= rec["alarm_rate_point"]["validation"]["cost_per_1000"]
    # exact against the stored scores: the record is the minimum over every threshold of these numbers
    normal, anomalies = alarm["validation_scores"], alarm["validation_anomaly_scores"]
    assert len(anomalies) == rec["validation"]["n_anomaly"] > 0
    grid = every_threshold(normal, anomalies)
    p = rec["anomaly_share"]
    assert rec["validation"]["cost_per_1000"] == pytest.approx(min(brute_cost(normal, anomalies, t, p, 1, 30)
                                                                   for t in grid), rel=1e-12)
    out = tmp_path / "scores.csv"
    assert main(["score", str(run), "--data", str(tmp_path / "t.csv"), "--out", str(out), "--cost-false-alarm", "1",
                 "--cost-miss", "30"]) == 0
    assert "lowest expected cost on the validation rows" in capsys.readouterr().err
    s = np.loadtxt(out, delimiter=",", skiprows=1)
    assert np.array_equal(s[:, 2], (s[:, 1] > rec["threshold"]).astype(float))
    # costs exclude the other thresholds; half a pair of costs is refused
    assert main(["score", str(run), "--data", str(tmp_path / "t.csv"), "--out", str(out), "--cost-false-alarm", "1",
                 "--cost-miss", "30", "--threshold", "2"]) == 2
    assert main(["score", str(run), "--data", str(tmp_path / "t.csv"), "--out", str(out), "--cost-miss", "3"]) == 2
    assert "give both --cost-false-alarm and --cost-miss" in capsys.readouterr().err


def test_without_labels_train_says_the_cost_cannot_be_estimated(tmp_path, capsys):
    from fvnce.cli import main

    np.savetxt(tmp_path / "u.csv", np.random.default_rng(0).normal(size=(200, 2)), delimiter=",", header="a,b",
               comments="")
    assert main(["train", "--data", str(tmp_path / "u.csv"), "--objective", "elbo", "--steps", "5", "--out",
                 str(tmp_path / "run"), "--cost-false-alarm", "1", "--cost-miss", "30"]) == 0
    assert "the cost cannot be estimated: the data has no anomaly labels" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "run"), "--data", str(tmp_path / "u.csv"), "--out", str(tmp_path / "s.csv"),
                 "--cost-false-alarm", "1", "--cost-miss", "30"]) == 2
    assert "no anomaly labels" in capsys.readouterr().err
