"""Alarm thresholds: the conformal quantile, the range of false alarms it gives, and the
threshold every trained run stores and ``fvnce score`` / ``fvnce evaluate`` apply.

The tolerance used throughout (derived in :func:`fvnce.evaluate.false_alarm_range`): with
``n`` calibration scores and the threshold at their ``k``-th smallest value,
``k = ceil((n + 1)(1 - a))``, the number of false alarms among ``m`` new normal items whose
scores are exchangeable with the calibration scores (and untied) is beta-binomial
``BB(m, n + 1 - k, k)``: the threshold's coverage ``F(s_(k))`` is the ``k``-th order
statistic of ``n`` uniforms, ``Beta(k, n + 1 - k)``, and given it each new item alarms
independently with probability ``1 - F(s_(k))``.  Its mean rate is
``(n + 1 - k)/(n + 1) <= a``; its standard deviation is about
``sqrt(a (1 - a) (1/m + 1/n))``: the binomial spread of the test rows plus that of the
threshold itself (with n = m = 500 and a = 1 %, about 0.6 percentage points, so a
realised rate of 2 % is still within chance).  A test passes when the count lies within
the central 99.9 % of that distribution.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fvnce.cli import main
from fvnce.errors import ConfigError
from fvnce.evaluate import (alarm_curve, alarm_threshold, check_alarm_rate, check_threshold, false_alarm_range,
                            operating_point)

LEVEL = 0.999


# --------------------------------------------------------------------------- the definition


def test_threshold_is_the_conformal_order_statistic():
    s = np.arange(1.0, 200.0)  # 199 scores 1..199 (shuffled order does not matter)
    rec = alarm_threshold(np.random.default_rng(0).permutation(s), 0.01)
    assert rec["rank"] == math.ceil(200 * 0.99) == 198 and rec["threshold"] == 198.0
    assert rec["expected_rate"] == pytest.approx(2 / 200) and rec["note"] is None and rec["n"] == 199
    # ceil((n + 1)(1 - a)) exactly: 100 * 0.93 is 93.00000000000001 in floating point
    assert alarm_threshold(np.arange(99.0), 0.07)["rank"] == 93
    # just enough rows for 1 %: the largest score, expected rate 1/100
    rec = alarm_threshold(np.arange(99.0), 0.01)
    assert rec["rank"] == 99 and rec["threshold"] == 98.0 and rec["note"] is None


def test_too_few_rows_use_the_maximum_and_say_so():
    rec = alarm_threshold([3.0, 1.0, 2.0], 0.01)
    assert rec["threshold"] == 3.0 and rec["rank"] == 3 and rec["expected_rate"] == pytest.approx(0.25)
    assert "only 3 validation row(s): a false-alarm rate of 0.01 needs at least 99" in rec["note"]
    assert alarm_threshold([], 0.01)["threshold"] is None
    rec = alarm_threshold([1.0, float("nan")] + list(range(200)), 0.05)
    assert "1 NaN score(s) left out" in rec["note"] and rec["n"] == 201


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, float("nan"), float("inf"), "0.1", True, None])
def test_bad_rates_are_refused_naming_the_value(bad):
    with pytest.raises(ConfigError) as info:
        check_alarm_rate(bad)
    assert "strictly between 0 and 1" in str(info.value) and str(info.value).endswith(f"got {bad!r}")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), "3", None])
def test_bad_thresholds_are_refused(bad):
    with pytest.raises(ConfigError, match="alarm threshold must be a finite number"):
        check_threshold(bad)


def test_operating_point_and_curve_on_a_hand_example():
    scores = [0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 2.5]
    labels = [0, 0, 0, 0, 1, 1, 1]
    op = operating_point(scores, labels, 2.0)
    assert op["false_alarms"] == 1 and op["n_normal"] == 4 and op["false_alarms_per_1000"] == 250.0
    assert op["detected"] == 3 and op["detection_rate"] == 1.0 and op["alarms"] == 4
    op = operating_point(scores, None, 2.0)
    assert op["false_alarms_per_1000"] is None and op["alarms_per_1000"] == pytest.approx(4000 / 7)
    curve = alarm_curve(scores, labels)
    assert np.all(np.diff(curve["false_alarms_per_1000"]) <= 0) and np.all(np.diff(curve["detection_rate"]) <= 0)
    assert alarm_curve(scores, None)["detection_rate"] is None


# --------------------------------------------------------------------------- the statistics


def test_false_alarm_range_is_the_beta_binomial_one():
    """Simulated exchangeable scores: the realised false-alarm rate averages the
    conformal (n + 1 - k)/(n + 1) <= a, and the count falls outside the 99 % range of
    :func:`false_alarm_range` at most about 1 % of the time."""
    rng = np.random.default_rng(7)
    n, m, a, reps = 500, 1000, 0.01, 2000
    k = alarm_threshold(np.zeros(n), a)["rank"]
    cal = np.sort(rng.standard_t(4, size=(reps, n)), axis=1)[:, k - 1]  # heavy tails change nothing
    counts = (rng.standard_t(4, size=(reps, m)) > cal[:, None]).sum(axis=1)
    mean = (n + 1 - k) / (n + 1)
    assert mean <= a
    # the mean of the realised rates: its standard error from the beta-binomial variance
    sd = math.sqrt(mean * (1 - mean) * (n + 1 + m) / (n + 2) / m)
    assert abs(counts.mean() / m - mean) < 4 * sd / math.sqrt(reps)
    lo, hi = false_alarm_range(n, k, m, 0.99)
    outside = float(np.mean((counts < lo) | (counts > hi)))
    assert outside <= 0.01 + 3 * math.sqrt(0.01 * 0.99 / reps)


@pytest.mark.parametrize("n,m,a", [(500, 500, 0.01), (2000, 5000, 0.01), (300, 300, 0.05)])
def test_realised_rate_on_held_out_normal_rows_is_close_to_the_target(n, m, a):
    """One calibration set and one held-out set of synthetic normal scores: the realised
    rate lies within the central 99.9 % beta-binomial range around the target."""
    rng = np.random.default_rng(n + m)
    rec = alarm_threshold(rng.normal(size=n), a)
    count = int((rng.normal(size=m) > rec["threshold"]).sum())
    lo, hi = false_alarm_range(n, rec["rank"], m, LEVEL)
    assert lo <= count <= hi
    # and the range is narrow enough to mean something (skewed right: 5 rough standard deviations)
    assert hi / m < a + 5 * math.sqrt(a * (1 - a) * (1 / m + 1 / n)) + 1 / m


# --------------------------------------------------------------------------- trained runs


def _write_csv(path, x, labels=None):
    with open(path, "w") as fh:
        fh.write(",".join(f"f{i}" for i in range(x.shape[1])) + (",status" if labels is not None else "") + "\n")
        for i, row in enumerate(x):
            fh.write(",".join(f"{v:.6f}" for v in row) + (f",{labels[i]}" if labels is not None else "") + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """4,000 normal rows of a correlated 2-D Gaussian and 100 far-out anomalies."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4000, 1))
    x = np.hstack([z + 0.4 * rng.normal(size=(4000, 1)), -z + 0.4 * rng.normal(size=(4000, 1))])
    anomalies = rng.normal(0, 1, size=(100, 2)) + np.array([4.0, 4.0])
    folder = tmp_path_factory.mktemp("alarm_data")
    _write_csv(folder / "labelled.csv", np.vstack([x, anomalies]), ["ok"] * 4000 + ["bad"] * 100)
    _write_csv(folder / "unlabelled.csv", x[:1500])
    return folder


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("alarm_runs") / "run"
    assert main(["train", "--data", str(data / "labelled.csv"), "--label", "status", "--normal", "ok",
                 "--objective", "elbo", "--steps", "150", "--batch-size", "128", "--z-dim", "1", "--seed", "0",
                 "--alarm-rate", "0.05", "--out", str(out), "--quiet"]) == 0
    return out


def test_a_trained_run_stores_its_threshold_and_validation_scores(run):
    rec = json.loads((run / "alarm.json").read_text())
    assert rec["rate"] == 0.05 and rec["labelled"] is True and rec["calibrated_on"] == "validation normal rows"
    assert rec["n"] == 600 and len(rec["validation_scores"]) == 600  # 15 % of 4,000 normal rows
    assert rec["threshold"] == alarm_threshold(rec["validation_scores"], 0.05)["threshold"]
    assert json.loads((run / "config.json").read_text())["run"]["alarm_rate"] == 0.05


def test_realised_rate_of_a_trained_run_is_within_the_derived_tolerance(run, capsys):
    """On the run's 600 held-out normal test rows, the false alarms at the 5 % threshold
    lie within the central 99.9 % beta-binomial range (about 14 to 50 of 600)."""
    assert main(["evaluate", str(run), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    op, alarm = ev["operating_point"], ev["alarm"]
    assert op["n_normal"] == 600 and op["n_anomaly"] >= 40
    lo, hi = false_alarm_range(alarm["n"], alarm["rank"], op["n_normal"], LEVEL)
    assert lo <= op["false_alarms"] <= hi
    assert op["within_expected"] is True and op["detection_rate"] > 0.9
    assert op["false_alarms_per_1000"] == pytest.approx(1000 * op["false_alarms"] / 600)
    assert "alarm_curve" not in ev and "scores" not in ev  # the bulky parts stay in evaluation.json


def test_score_writes_alarms_and_overrides(run, data, tmp_path, capsys):
    rec = json.loads((run / "alarm.json").read_text())
    out = tmp_path / "s.csv"
    assert main(["score", str(run), "--data", str(data / "labelled.csv"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    rows = np.genfromtxt(out, delimiter=",", names=True)
    assert out.read_text().splitlines()[0] == "row,score,alarm"
    assert np.array_equal(rows["alarm"], (rows["score"] > rec["threshold"]).astype(float))
    assert f"alarm(s) above the threshold {rec['threshold']:.6g} (target false-alarm rate 5 %" in err
    assert rows["alarm"][4000:].mean() > 0.9 and rows["alarm"][:4000].mean() < 0.1
    # another rate, from the stored validation scores alone
    assert main(["score", str(run), "--data", str(data / "labelled.csv"), "--out", str(out),
                 "--alarm-rate", "0.2", "--quiet"]) == 0
    rows = np.genfromtxt(out, delimiter=",", names=True)
    t = alarm_threshold(rec["validation_scores"], 0.2)["threshold"]
    assert t < rec["threshold"] and np.array_equal(rows["alarm"], (rows["score"] > t).astype(float))
    assert main(["score", str(run), "--data", str(data / "labelled.csv"), "--out", str(out),
                 "--threshold", "1e9", "--quiet"]) == 0
    assert np.genfromtxt(out, delimiter=",", names=True)["alarm"].sum() == 0


def _exit_code(argv) -> int:
    """main's return value, or the code argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("flags,fragment", [
    (["--alarm-rate", "0"], "--alarm-rate must be a number strictly between 0 and 1"),
    (["--alarm-rate", "1"], "got 1.0"),
    (["--alarm-rate", "nan"], "got nan"),
    (["--threshold", "inf"], "alarm threshold must be a finite number, got inf"),
    (["--threshold", "nan"], "got nan"),
    (["--threshold", "1", "--alarm-rate", "0.1"], "not allowed with"),
])
def test_score_bad_alarm_settings_one_line_exit_2_no_file(run, data, tmp_path, capsys, flags, fragment):
    out = tmp_path / "bad.csv"
    assert _exit_code(["score", str(run), "--data", str(data / "labelled.csv"), "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and not out.exists()


@pytest.mark.parametrize("argv", [["train", "--alarm-rate", "1.5", "--out", "X"],
                                  ["poc", "--alarm-rate", "0", "--out", "X"]])
def test_train_and_poc_refuse_a_bad_rate_before_writing(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "strictly between 0 and 1" in err and not (tmp_path / "X").exists()


def test_run_report_shows_the_operating_point(run):
    from fvnce.report import build_report

    text = build_report(run).read_text()
    ev = json.loads((run / "evaluation.json").read_text())
    op = ev["operating_point"]
    assert '<section id="alarm">' in text and 'alt="Alarm threshold of run"' in text
    assert (f"At the alarm threshold set for 5 % false alarms, the model raised {op['false_alarms']} false alarms "
            f"among {op['n_normal']} normal test items") in text
    assert f"detected {op['detected']} of {op['n_anomaly']} anomalies (" in text


def test_unlabelled_run_calibrates_on_all_validation_rows(data, tmp_path, capsys):
    out = tmp_path / "u"
    assert main(["train", "--data", str(data / "unlabelled.csv"), "--objective", "elbo", "--steps", "20",
                 "--z-dim", "1", "--out", str(out), "--quiet", "--no-eval"]) == 0
    rec = json.loads((out / "alarm.json").read_text())
    assert rec["labelled"] is False and rec["calibrated_on"].startswith("validation rows, all of them")
    assert rec["n"] == 225  # 15 % of 1,500: every validation row
    assert main(["evaluate", str(out), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["operating_point"]["false_alarms_per_1000"] is None and ev["operating_point"]["n_items"] == 225
    assert ev["operating_point"]["within_expected"] is not None  # alarms among all rows, as calibrated


def test_old_runs_without_a_threshold(run, data, tmp_path, capsys):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "alarm.json").unlink()
    assert main(["score", str(old), "--data", str(data / "labelled.csv"), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "has no alarm threshold" in err and "fvnce evaluate" in err and not (tmp_path / "s.csv").exists()
    assert main(["score", str(old), "--data", str(data / "labelled.csv"), "--out", str(tmp_path / "s.csv"),
                 "--threshold", "3", "--quiet"]) == 0
    assert main(["evaluate", str(old), "--json"]) == 0  # sets it, as training would have
    assert json.loads((old / "alarm.json").read_text())["threshold"] == \
        json.loads((run / "alarm.json").read_text())["threshold"]


def test_resume_sets_the_threshold_again(data, tmp_path):
    out = tmp_path / "r"
    base = ["train", "--data", str(data / "unlabelled.csv"), "--objective", "elbo", "--z-dim", "1",
            "--out", str(out), "--quiet", "--no-eval"]
    assert main([*base, "--steps", "10"]) == 0
    first = json.loads((out / "alarm.json").read_text())["threshold"]
    assert main(["train", "--out", str(out), "--steps", "30", "--resume", "--quiet", "--no-eval"]) == 0
    assert json.loads((out / "alarm.json").read_text())["threshold"] != first
