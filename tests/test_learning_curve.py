"""The learning curve of every poc (fvnce.learning_curve): nested subsets of the training
rows with the same validation and test rows, the verdict sentence from the slope against
its standard error, and the curve in summary.json for a single run and for a union."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from fvnce.cli import main
from fvnce.data import DataSpec, dataset_from_array
from fvnce.errors import ConfigError
from fvnce.learning_curve import parse_fractions, subset, subset_rows, verdict


def test_fractions_are_parsed_and_checked():
    assert parse_fractions("0.5,0.25,0.5") == (0.25, 0.5)
    assert parse_fractions("none") == () and parse_fractions("None") == ()
    for bad in ("0", "1", "0.5,x", "1.5", ""):
        with pytest.raises(ConfigError, match="--learning-curve"):
            parse_fractions(bad)


def test_subsets_are_nested_and_keep_validation_and_test_rows():
    for n in (7, 100, 1001):
        small, large = set(subset_rows(n, 0.25, 3)), set(subset_rows(n, 0.5, 3))
        assert small <= large and len(small) == math.ceil(0.25 * n) and len(large) == math.ceil(0.5 * n)
    ds = dataset_from_array(np.random.default_rng(0).normal(size=(200, 3)), DataSpec(source="array", seed=0))
    sub = subset(ds, 0.25, seed=0)
    idx = subset_rows(len(ds.train), 0.25, 0)
    assert torch.equal(sub.train, ds.train[idx]) and sub.val is ds.val and sub.test is ds.test
    assert sub.preprocessor is ds.preprocessor and len(ds.train) > len(sub.train)


def _pt(f, rows, auroc, se):
    return {"fraction": f, "rows": rows, "auroc": auroc, "auroc_se": se}


def test_verdict_compares_the_slope_with_its_standard_error():
    # 0.75 -> 0.87 with SEs 0.03 and 0.04: change 0.12 against 2 x 0.05: rising
    rising = verdict([_pt(0.25, 50, 0.7, 0.05), _pt(0.5, 100, 0.75, 0.03), _pt(1.0, 200, 0.87, 0.04)], "auroc")
    assert rising == ("From 100 to 200 training rows (50 % to 100 %) the test AUROC changed by +0.12 (+1.2 per 1,000 "
                      "rows; standard error of the change 0.05): it was still rising, so more data is likely to help.")
    flat = verdict([_pt(0.5, 100, 0.88, 0.03), _pt(1.0, 200, 0.90, 0.04)], "auroc")
    assert "within 2 standard errors, so more data is unlikely to help much" in flat
    falling = verdict([_pt(0.5, 100, 0.95, 0.01), _pt(1.0, 200, 0.85, 0.01)], "auroc")
    assert "it fell" in falling
    assert verdict([_pt(1.0, 200, 0.9, 0.04)], "auroc") is None
    assert verdict([_pt(0.5, 100, 0.9, None), _pt(1.0, 200, 0.9, 0.04)], "auroc") is None


def _table(path, labelled: bool):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    x[::10] += 1.5 if labelled else 5.0  # labelled: overlapping, so that no AUROC is exactly 1
    with open(path, "w") as fh:
        fh.write("a,b,c" + (",status" if labelled else "") + "\n")
        for i, row in enumerate(x):
            fh.write(",".join(f"{v:.6f}" for v in row) + ((",bad" if i % 10 == 0 else ",ok") if labelled else "") + "\n")


def test_poc_with_labels_has_the_curve_of_its_recommended_run(tmp_path):
    _table(tmp_path / "t.csv", labelled=True)
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(tmp_path / "t.csv"), "--label", "status", "--normal", "ok", "--budget", "15",
                 "--noises", "full_gaussian", "--rules", "kl", "--mixtures", "1", "--no-baselines", "--out",
                 str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    rec = s["recommended"]["run"]
    curve = s["learning_curve"]
    n = s["data"]["n_train"]
    assert [p["fraction"] for p in curve] == [0.25, 0.5, 1.0]
    assert [p["rows"] for p in curve] == [math.ceil(0.25 * n), math.ceil(0.5 * n), n]
    keys = {"fraction", "rows", "auroc", "auroc_se", "auprc", "log_likelihood", "log_likelihood_se",
            "log_likelihood_reliable", "false_alarms_per_1000", "false_alarms_per_1000_se"}
    assert all(set(p) == keys for p in curve)
    full = next(r for r in s["runs"] if r["name"] == rec)
    assert curve[-1]["auroc"] == full["metrics"]["auroc"]  # the 100 % point is the poc's own run
    assert curve[-1]["false_alarms_per_1000"] == full["operating_point"]["false_alarms_per_1000"]
    assert all(p["auroc_se"] > 0 and p["log_likelihood_se"] > 0 for p in curve)
    assert s["learning_curve_verdict"].startswith(f"From {curve[1]['rows']} to {n} training rows")
    for f in ("0.25", "0.5"):  # retrained on the subset (the VAE it starts from too)
        ck = torch.load(out / "learning_curve" / f"f{f}" / "runs" / rec / "checkpoint.pt", weights_only=True)
        assert ck["n_train"] == math.ceil(float(f) * n)
        if full["started_from"]:
            cfg = json.loads((out / "learning_curve" / f"f{f}" / "runs" / rec / "config.json").read_text())
            assert cfg["run"]["init_from"] == str(out / "learning_curve" / f"f{f}" / "runs" / "elbo-vae")
    assert main(["poc", "--data", str(tmp_path / "t.csv"), "--label", "status", "--normal", "ok", "--budget", "5",
                 "--noises", "full_gaussian", "--rules", "kl", "--mixtures", "none", "--no-baselines",
                 "--learning-curve", "none", "--out", str(tmp_path / "none"), "--quiet"]) == 0
    s = json.loads((tmp_path / "none" / "summary.json").read_text())
    assert s["learning_curve"] == [] and s["learning_curve_verdict"].startswith("No learning curve: it was not asked")
    assert not (tmp_path / "none" / "learning_curve").exists()


def test_unlabelled_union_has_the_curve_of_its_members_and_the_union(tmp_path):
    _table(tmp_path / "u.csv", labelled=False)
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(tmp_path / "u.csv"), "--budget", "15", "--noises", "full_gaussian",
                 "--rules", "kl", "--no-baselines", "--learning-curve", "0.5", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "summary.json").read_text())
    rec = s["recommended"]
    assert rec["run"] == "union"
    curve = s["learning_curve"]
    assert [p["fraction"] for p in curve] == [0.5, 1.0]
    for p in curve:  # the union: no labels, no AUROC, no density; its members: log-likelihoods
        assert p["auroc"] is None and p["log_likelihood"] is None
        assert set(p["members"]) == set(rec["members"])
        assert all(m["log_likelihood"] is not None and m["log_likelihood_se"] > 0 for m in p["members"].values())
    assert (out / "learning_curve" / "f0.5" / "runs" / "union" / "union.json").is_file()
    assert all(m in s["learning_curve_verdict"] for m in rec["members"])
    assert "members' (a union is not a density)" in s["learning_curve_note"]


def test_the_report_never_rounds_a_curve_point_to_a_perfect_score():
    """An AUROC of 0.99995 is not "1.000", 0.4 false alarms per 1,000 not "0.0"; exact
    values stay as they are."""
    from fvnce.report.extras import extras_sections

    summary = {"learning_curve_verdict": "v", "learning_curve": [
        {"fraction": 0.5, "rows": 62, "auroc": 0.99995, "auroc_se": 0.0001, "auprc": 0.99999,
         "false_alarms_per_1000": 0.4, "false_alarms_per_1000_se": 0.4, "log_likelihood": -12.7,
         "log_likelihood_se": 1.1},
        {"fraction": 1.0, "rows": 124, "auroc": 1.0, "auroc_se": 0.0, "auprc": 1.0,
         "false_alarms_per_1000": 0.0, "false_alarms_per_1000_se": 0.0, "log_likelihood": -12.0,
         "log_likelihood_se": 1.0}]}
    html = extras_sections(summary)
    assert "0.99995 ± 0.000" in html and "0.99999<" in html and "0.4 ± 0.4" in html
    assert "1.000 ± 0.000" in html and "0.0 ± 0.0" in html
    assert ">1.000<" in html  # an exact 1 is shown as such
