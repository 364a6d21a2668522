"""The union of runs (``fvnce.runs.union``): the label-free recommendation of the poc.

Why a union: without labels nothing tells which kind of anomaly the data holds. The exact
test below shows the case it is made for with closed-form densities (no training): rows
extreme in one feature that follow the features' correlation are explained away by the
joint (full-covariance) density and flagged by the independent-features one; rows that
break the correlation are the other way round; the union flags both."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from scipy.stats import multivariate_normal, norm
from sklearn.metrics import roc_auc_score

from fvnce.cli import main
from fvnce.data import DataSpec, load_dataset
from fvnce.evaluate import alarm_threshold
from fvnce.runs import load_run
from fvnce.runs.union import COMBINATION, UNION_NAME, combine, member_scores, robust_scale


def test_combine_is_the_largest_scaled_member_score():
    a, b = np.array([1.0, 5.0, 3.0, np.nan]), np.array([10.0, 10.0, 40.0, 4.0])
    got = combine([a, b], [(1.0, 2.0), (10.0, 10.0)])
    assert np.array_equal(got, [0.0, 2.0, 3.0, -0.6])  # (a-1)/2 = 0, 2, 1, NaN; (b-10)/10 = 0, 0, 3, -0.6
    assert np.isnan(combine([np.array([np.nan])], [(0.0, 1.0)])[0])
    with pytest.raises(ValueError):
        combine([a], [(0.0, 1.0), (0.0, 1.0)])


def test_robust_scale_is_median_and_iqr_with_fallbacks():
    s = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.inf, np.nan])
    assert robust_scale(s) == (2.0, 2.0)  # numpy's linear percentiles of 0..4: 1, 2, 3
    c, w = robust_scale([0.0] * 10 + [10.0])  # IQR 0: the standard deviation
    assert c == 0.0 and w == pytest.approx(np.std([0.0] * 10 + [10.0]))
    assert robust_scale([3.0, 3.0]) == (3.0, 1.0) and robust_scale([]) == (0.0, 1.0)


def test_the_union_catches_both_kinds_of_anomaly_with_exact_densities():
    # normal rows: two strongly correlated features. The joint member is the exact density
    # of contaminated training data, normal rows plus a tight cluster of anomalies at (3, 3):
    # what a flexible model that learned the anomalies gives. The independent member is
    # one standard Gaussian per feature (the normal rows' exact marginals).
    rng = np.random.default_rng(0)
    cov = np.array([[1.0, 0.95], [0.95, 1.0]])
    normal = rng.multivariate_normal([0, 0], cov, size=4000)
    cluster = rng.normal([3.0, 3.0], 0.15, size=(200, 2))  # extreme in each feature, learned by the joint member
    across = rng.normal(size=(200, 1)) * [1.0, -1.0]  # ordinary values of each feature, the correlation reversed
    normal_part, cluster_part = multivariate_normal([0, 0], cov), multivariate_normal([3, 3], 0.0225 * np.eye(2))

    def scores(x):  # the members' anomaly scores: minus the exact log-densities
        joint = np.logaddexp(np.log(0.9) + normal_part.logpdf(x), np.log(0.1) + cluster_part.logpdf(x))
        return -joint, -norm(0, 1).logpdf(x).sum(axis=1)

    scales = [robust_scale(s) for s in scores(normal[:2000])]  # scales from "validation" rows
    held = normal[2000:]
    for anomalies, blind in ((cluster, 0), (across, 1)):
        x = np.vstack([held, anomalies])
        y = np.r_[np.zeros(len(held)), np.ones(len(anomalies))]
        auc = [roc_auc_score(y, s) for s in scores(x)]
        auc_u = roc_auc_score(y, combine(list(scores(x)), scales))
        # one member misses this kind, the other sees it; so does the union
        assert auc[blind] < 0.7 and auc[1 - blind] > 0.85 and auc_u > auc[1 - blind] - 0.05, (auc, auc_u)
    x = np.vstack([held, cluster, across])
    y = np.r_[np.zeros(len(held)), np.ones(len(cluster) + len(across))]
    auc = [roc_auc_score(y, s) for s in scores(x)]
    assert roc_auc_score(y, combine(list(scores(x)), scales)) > max(auc) + 0.1, auc


@pytest.fixture(scope="module")
def poc(tmp_path_factory):
    """An unlabelled continuous table (10 % far-out rows): the poc with its mixtures."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    x[::10] += 5.0
    folder = tmp_path_factory.mktemp("union")
    np.savetxt(folder / "unlabelled.csv", x, delimiter=",", header="a,b,c", comments="", fmt="%.6f")
    out = folder / "poc"
    assert main(["poc", "--data", str(folder / "unlabelled.csv"), "--budget", "15", "--noises", "full_gaussian",
                 "--rules", "kl", "--no-baselines", "--out", str(out), "--quiet"]) == 0
    return folder, out, json.loads((out / "summary.json").read_text())


def _ll(r):
    return r["val_metrics"]["log_likelihood"]


def test_unlabelled_poc_recommends_the_union_of_the_best_joint_model_and_mixture(poc):
    folder, out, summary = poc
    rec = summary["recommended"]
    eligible = [r for r in summary["runs"] if r["status"] == "ok" and r["reliable"]]
    joint = max((r for r in eligible if r["model"] != "gaussian_mixture"), key=_ll)
    mix1 = max((r for r in eligible if r["name"].endswith("-mix1")), key=_ll)
    assert rec["run"] == "union" and rec["members"] == [joint["name"], mix1["name"]]
    assert rec["single_choice"] == max(eligible, key=_ll)["name"]
    assert rec["criterion"].startswith("without anomaly labels: the union of the run that models the features")
    assert rec["reason"].startswith(f"The union of {joint['name']} and {mix1['name']} is recommended")
    union = json.loads((out / "runs" / "union" / UNION_NAME).read_text())
    assert [m["run_dir"] for m in union["members"]] == [f"../{joint['name']}", f"../{mix1['name']}"]
    assert union["combination"] == COMBINATION and union["scale_rows"] == 45
    assert rec["union"]["alarm"]["calibrated_on"].startswith("validation rows, all of them")
    assert rec["union"]["operating_point"]["n_items"] == 45
    text = (out / "report.html").read_text()
    assert "<b>Recommended:</b> the union of two runs" in text and "The union of " in text
    assert text.count('<span class="badge">in the recommended union</span>') == 2
    assert '<section id="alarm">' in text


def test_union_scales_and_threshold_come_from_validation_rows(poc):
    folder, out, summary = poc
    ds = load_dataset(DataSpec(source=str(folder / "unlabelled.csv")))
    union = json.loads((out / "runs" / "union" / UNION_NAME).read_text())
    val = []
    for m in union["members"]:
        run = load_run(out / "runs" / m["name"], dataset=ds)
        val.append(member_scores(run, ds.val, 4))  # as the alarm calibration scores them
        assert (m["center"], m["spread"]) == robust_scale(val[-1])
    expect = alarm_threshold(combine(val, [(m["center"], m["spread"]) for m in union["members"]]), 0.01)
    alarm = json.loads((out / "runs" / "union" / "alarm.json").read_text())
    assert alarm["threshold"] == expect["threshold"] and alarm["n"] == len(ds.val) == 45


def test_score_of_a_union_combines_what_its_members_score(poc, tmp_path, capsys):
    folder, out, summary = poc
    data = str(folder / "unlabelled.csv")
    cols = []
    for m in summary["recommended"]["members"]:
        assert main(["score", str(out / "runs" / m), "--data", data, "--out", str(tmp_path / f"{m}.csv"),
                     "--quiet"]) == 0
        cols.append(np.genfromtxt(tmp_path / f"{m}.csv", delimiter=",", names=True)["score"])
    assert main(["score", str(out / "runs" / "union"), "--data", data, "--out", str(tmp_path / "u.csv")]) == 0
    assert "alarm(s) above the threshold" in capsys.readouterr().err
    got = np.genfromtxt(tmp_path / "u.csv", delimiter=",", names=True)
    members = json.loads((out / "runs" / "union" / UNION_NAME).read_text())["members"]
    want = combine(cols, [(m["center"], m["spread"]) for m in members])
    np.testing.assert_allclose(got["score"], want, rtol=1e-6, atol=1e-6)
    threshold = json.loads((out / "runs" / "union" / "alarm.json").read_text())["threshold"]
    clear = np.abs(got["score"] - threshold) > 1e-6 * abs(threshold)  # the file rounds to 9 digits
    assert np.array_equal(got["alarm"][clear], (got["score"][clear] > threshold).astype(int))
    far = np.arange(len(got)) % 10 == 0
    assert roc_auc_score(far, got["score"]) > 0.9  # the far-out rows score highest


@pytest.mark.parametrize("command", [["evaluate"], ["sample", "--n", "3", "--out", "s.npy"]])
def test_other_commands_refuse_a_union_in_one_line(poc, tmp_path, capsys, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder, out, summary = poc
    assert main([command[0], str(out / "runs" / "union"), *command[1:]]) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is a union of runs, not one run: only 'fvnce score' takes it" in err


def test_a_corrupt_or_orphaned_union_is_refused_in_one_line(poc, tmp_path, capsys):
    folder, out, summary = poc
    copy = tmp_path / "u"
    shutil.copytree(out / "runs" / "union", copy)  # moved without its members
    args = ["score", str(copy), "--data", str(folder / "unlabelled.csv"), "--out", str(tmp_path / "s.csv")]
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "member run ../fvnce-" in err and not (tmp_path / "s.csv").exists()
    (copy / UNION_NAME).write_text('{"members": "x"}')
    assert main(args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "union.json is corrupt" in err and not (tmp_path / "s.csv").exists()


def test_without_mixtures_the_choice_is_one_run_and_an_old_union_goes(poc, tmp_path):
    folder, out, summary = poc
    again = tmp_path / "poc"
    shutil.copytree(out, again)
    assert main(["poc", "--data", str(folder / "unlabelled.csv"), "--budget", "15", "--noises", "full_gaussian",
                 "--rules", "kl", "--no-baselines", "--mixtures", "none", "--out", str(again), "--quiet",
                 "--overwrite"]) == 0
    rec = json.loads((again / "summary.json").read_text())["recommended"]
    assert rec["run"] != "union" and "members" not in rec and not (again / "runs" / "union").exists()


def test_union_threshold_keeps_the_target_false_alarm_rate_on_fresh_rows():
    """The scales are fitted on the validation rows the threshold is set on, so a new row is
    exchangeable with them only up to O(1/n). Measured with exact members on normal rows:
    with n = 199 validation rows and rate 0.05 the conformal rank is k = 190, and for exactly
    exchangeable scores a trial's realised rate on many fresh rows is Beta(n + 1 - k, k) =
    Beta(10, 190): mean 0.05, sd 0.0154. Over 400 trials (each with 2,000 fresh rows,
    adding binomial variance 0.05 * 0.95 / 2000) the mean rate has sd 0.00080; it must lie
    within 4 sd of 0.05."""
    rng = np.random.default_rng(3)
    cov = np.array([[1.0, 0.8], [0.8, 1.0]])
    joint, indep = multivariate_normal([0, 0], cov), norm(0, 1)

    def scores(x):
        return -joint.logpdf(x), -indep.logpdf(x).sum(axis=1)

    n, m, rate, rates = 199, 2000, 0.05, []
    for _ in range(400):
        val, fresh = rng.multivariate_normal([0, 0], cov, size=n), rng.multivariate_normal([0, 0], cov, size=m)
        sv = scores(val)
        scales = [robust_scale(s) for s in sv]
        t = alarm_threshold(combine(list(sv), scales), rate)
        assert t["rank"] == 190 and t["expected_rate"] == pytest.approx(0.05)
        rates.append(float((combine(list(scores(fresh)), scales) > t["threshold"]).mean()))
    sd = np.sqrt((0.05 * 0.95 / 201 + 0.05 * 0.95 / m) / len(rates))
    assert abs(np.mean(rates) - 0.05) < 4 * sd, (np.mean(rates), sd)


def test_members_carry_their_identity_and_a_changed_member_is_refused(poc, tmp_path, capsys):
    from fvnce.runs.union import member_identity

    folder, out, summary = poc
    union = json.loads((out / "runs" / "union" / UNION_NAME).read_text())
    for m in union["members"]:
        assert m["identity"] == member_identity(out / "runs" / m["name"])
        assert set(m["identity"]) == {"weights", "weights_sha256", "preprocess_sha256", "noise_sha256",
                                      "config_sha256"}
    copy = tmp_path / "poc"
    shutil.copytree(out, copy)
    data = str(folder / "unlabelled.csv")
    args = ["score", str(copy / "runs" / "union"), "--data", data, "--out", str(tmp_path / "s.csv"), "--quiet"]
    assert main(args) == 0  # a moved poc keeps its members
    (tmp_path / "s.csv").unlink()
    joint = summary["recommended"]["members"][0]
    assert main(["train", "--out", str(copy / "runs" / joint), "--resume", "--steps", "25", "--quiet",
                 "--no-eval"]) == 0  # the member trains on: other weights
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"fvnce: error: member {joint} of the union {copy / 'runs' / 'union'} changed since the "
                          "union was built (its weights (") and len(err.splitlines()) == 1
    assert "rebuild the union: run the poc again (with --overwrite)" in err and not (tmp_path / "s.csv").exists()
    mix = copy / "runs" / summary["recommended"]["members"][1]
    rec = json.loads((copy / "runs" / "union" / UNION_NAME).read_text())
    rec["members"][0]["identity"] = member_identity(copy / "runs" / joint)  # the first member accepted as it is
    (copy / "runs" / "union" / UNION_NAME).write_text(json.dumps(rec))
    pre = json.loads((mix / "preprocess.json").read_text())
    (mix / "preprocess.json").write_text(json.dumps(pre, indent=1))  # same content, other bytes: a changed file
    assert main(args) == 2
    assert f"member {mix.name} of the union" in capsys.readouterr().err
    for m in rec["members"]:  # a union written before members had identities
        del m["identity"]
    (copy / "runs" / "union" / UNION_NAME).write_text(json.dumps(rec))
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "does not record what its members were when it was built" in err and "rebuild the union" in err


def test_a_union_recommendation_gives_its_members_commands_and_the_score_command(poc):
    import shlex

    from fvnce.cli import build_parser
    from fvnce.cli.options import run_config
    from fvnce.cli.train_line import config_differences

    folder, out, summary = poc
    rec = summary["recommended"]
    assert rec["train_command"] is None
    assert [m["run"] for m in rec["member_commands"]] == rec["members"]
    for m in rec["member_commands"]:
        argv = shlex.split(m["command"])
        assert argv[:2] == ["fvnce", "train"] and argv[-2:] == ["--out", m["run"]]
        saved = json.loads((out / "runs" / m["run"] / "config.json").read_text())["run"]
        assert config_differences(run_config(build_parser().parse_args(argv[1:])).to_dict(), saved) == []
    assert shlex.split(rec["score_command"]) == ["fvnce", "score", str(out / "runs" / "union"), "--data",
                                                 str(folder / "unlabelled.csv"), "--out", "union-scores.csv"]


def test_a_poc_replaced_with_overwrite_scores_its_new_union(poc, tmp_path):
    folder, out, summary = poc
    again = tmp_path / "poc"
    shutil.copytree(out, again)
    data = str(folder / "unlabelled.csv")
    assert main(["poc", "--data", data, "--budget", "15", "--noises", "full_gaussian", "--rules", "kl",
                 "--no-baselines", "--seed", "2", "--out", str(again), "--quiet", "--overwrite"]) == 0
    members = json.loads((again / "runs" / "union" / UNION_NAME).read_text())["members"]
    assert all(m["run_dir"].startswith("../") for m in members)
    assert main(["score", str(again / "runs" / "union"), "--data", data, "--out", str(tmp_path / "u.csv"),
                 "--quiet"]) == 0
    assert len((tmp_path / "u.csv").read_text().splitlines()) == 301
