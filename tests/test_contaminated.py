"""Training on data with anomalies in it: ``--contaminated`` (labels kept for evaluation
only) and files without a label column (``fvnce train`` and ``fvnce poc`` train on every
row; the poc chooses by a label-free criterion and says so)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fvnce.cli import main
from fvnce.data import DataSpec, load_dataset, split_indices
from fvnce.errors import DataError


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """300 rows, 30 of them anomalies (far out), with and without the label column."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 3))
    bad = np.arange(300) % 10 == 0
    x[bad] += 5.0
    folder = tmp_path_factory.mktemp("contaminated")
    with open(folder / "labelled.csv", "w") as fh, open(folder / "unlabelled.csv", "w") as fu:
        fh.write("a,b,c,status\n")
        fu.write("a,b,c\n")
        for row, b in zip(x, bad):
            fh.write(",".join(f"{v:.6f}" for v in row) + (",bad\n" if b else ",ok\n"))
            fu.write(",".join(f"{v:.6f}" for v in row) + "\n")
    return folder


def test_contaminated_split_keeps_the_normal_split_and_stratifies_anomalies():
    anom = np.zeros(1000, dtype=bool)
    anom[::10] = True
    clean = split_indices(1000, anom, 0.15, 0.15, seed=3)
    dirty = split_indices(1000, anom, 0.15, 0.15, seed=3, contaminated=True)
    for c, d in zip(clean, dirty):
        assert np.array_equal(c[~anom[c]], d[~anom[d]])  # the same normal rows everywhere
    tr, va, te = dirty
    assert anom[tr].sum() == 70 and anom[va].sum() == 15 and anom[te].sum() == 15
    assert not anom[clean[0]].any()
    assert sorted(np.concatenate(dirty).tolist()) == list(range(1000))


def test_contaminated_dataset_trains_on_anomalies_and_keeps_labels(files):
    ds = load_dataset(DataSpec(source=str(files / "labelled.csv"), label="status", normal="ok", contaminated=True))
    clean = load_dataset(DataSpec(source=str(files / "labelled.csv"), label="status", normal="ok"))
    assert int(ds.train_labels.sum()) == 22 and len(ds.train) == len(clean.train) + 22
    assert ds.val_labels is not None and ds.test_labels is not None and clean.train_labels is None
    assert any("22 anomalous row(s) kept in the" in n for n in ds.notes)
    with pytest.raises(DataError, match="contaminated: .* has no anomaly labels here"):
        load_dataset(DataSpec(source=str(files / "unlabelled.csv"), contaminated=True))


def test_train_contaminated_still_evaluates_with_the_labels(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(files / "labelled.csv"), "--label", "status", "--normal", "ok",
                 "--contaminated", "--objective", "elbo", "--steps", "20", "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "contaminated: 22 anomalous row(s) kept" in err and "AUROC" in err
    assert json.loads((run / "config.json").read_text())["run"]["data"]["contaminated"] is True
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["auroc"] is not None and ev["val"]["auroc"] is not None
    assert ev["alarm"]["calibrated_on"] == "validation normal rows" and ev["operating_point"]["n_anomaly"] == 4


def test_train_on_an_unlabelled_file_uses_every_row(files, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--data", str(files / "unlabelled.csv"), "--objective", "elbo", "--steps", "10",
                 "--out", str(run)]) == 0
    err = capsys.readouterr().err
    assert "validation rows, all of them (the data has no anomaly labels)" in err
    ds = load_dataset(DataSpec(source=str(files / "unlabelled.csv")))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 300 and len(ds.train) == 210
    ev = json.loads((run / "evaluation.json").read_text())
    assert ev["auroc"] is None and ev["alarm"]["labelled"] is False and ev["alarm"]["n"] == 45


def test_poc_on_an_unlabelled_file_without_mixtures_chooses_by_reliable_validation_log_likelihood(files, tmp_path):
    # with the mixtures (the default) the choice is a union of two runs: tests/test_union.py
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(files / "unlabelled.csv"), "--budget", "15", "--noises", "full_gaussian",
                 "--rules", "kl", "--no-baselines", "--mixtures", "none", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rec = summary["recommended"]
    assert summary["data"]["has_labels"] is False
    assert rec["criterion"].startswith("highest validation log-likelihood, among runs whose estimate is reliable")
    eligible = [r for r in summary["runs"] if r["status"] == "ok" and r["reliable"]]
    best = max(eligible, key=lambda r: r["val_metrics"]["log_likelihood"])
    assert rec["run"] == best["name"]
    text = (out / "report.html").read_text()
    assert "Chosen by:</b> highest validation log-likelihood, among runs whose estimate is reliable" in text
    assert "The data has no anomaly labels, so the choice cannot use detection figures" in text
    assert "test items (" in text and "; the data has no anomaly labels, so false alarms and detections" in text
    rec_run = next(r for r in summary["runs"] if r["name"] == rec["run"])
    assert rec_run["alarm"]["labelled"] is False


def test_poc_contaminated_reports_the_operating_point_of_the_recommended_run(files, tmp_path):
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(files / "labelled.csv"), "--label", "status", "--normal", "ok",
                 "--contaminated", "--budget", "15", "--noises", "full_gaussian", "--rules", "kl",
                 "--alarm-rate", "0.05", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["contaminated"] is True and summary["data"]["n_train_anomalies"] == 22
    assert summary["recommended"]["run"] != "union" and "members" not in summary["recommended"]  # labels decide
    assert summary["alarm_rate"] == 0.05 and summary["baselines"][0]["metrics"]["auroc"] is not None
    text = (out / "report.html").read_text()
    header = text[text.index("<header>"):text.index("</header>")]
    assert "At the alarm threshold set for 5 % false alarms, the recommended model raised" in header
    assert '<section id="alarm">' in text and 'alt="Alarm threshold of' in text
