"""Tests of fvnce.report: HTML reports built from run / POC directories (fixtures written here)."""

from __future__ import annotations

import base64
import html as html_mod
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fvnce.errors import CheckpointError
from fvnce.report import build_report

EVIL = "<script>alert(1)</script>"
SECTIONS = ["data", "recommendation", "comparison", "training", "roc", "samples", "glossary"]
CHROMIUM = "/usr/bin/chromium"


# --------------------------------------------------------------------------- fixtures


def _metrics(path: Path, objective: str, rng: np.random.Generator, retry: bool) -> None:
    lines = []
    for step in range(0, 200, 5):
        rec = {"step": step, "loss": 2.0 * np.exp(-step / 60) + 0.1 * rng.random(),
               "data_loss": 1.2 * np.exp(-step / 60), "log_normaliser": 0.0, "lr": 1e-3,
               "elapsed": step * 0.01}
        if objective not in ("elbo", "iwae"):
            rec.update(noise_loss=0.8 * np.exp(-step / 50), accuracy=0.5 + 0.4 * (1 - np.exp(-step / 40)),
                       ess_fraction=0.5)
        lines.append(json.dumps(rec))
        if step % 50 == 0:
            lines.append(json.dumps({"step": step, "val_loss": 2.1 * np.exp(-step / 60)}))
        if retry and step == 100:
            lines.append(json.dumps({"step": step, "event": "retry", "reason": "non-finite noise loss"}))
    path.write_text("\n".join(lines) + "\n")


def _scores(rng, labels: bool, shift: float):
    if not labels:
        return None, None
    normal = rng.normal(0, 1, 300)
    anomaly = rng.normal(shift, 1, 60)
    return normal.tolist(), anomaly.tolist()


def write_run(run_dir: Path, *, objective="fvnce", rule="power", noise="gaussian", dim=5,
              image_shape=None, labels=True, evaluation=True, samples=True, retry=False,
              shift=2.0, seed=0, source="synthetic", name_extra="") -> dict:
    """A run directory as the CLI writes it; returns the test metrics."""
    rng = np.random.default_rng(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    rule_cfg = None if objective in ("elbo", "iwae") else {
        "name": rule, "alpha": 0.5, "exp_mode": "clamp", "tau": 20.0}
    cfg = {"fvnce_version": "0.1.0", "data": {"source": source}, "model": {"name": "vae", "options": {"hidden": 16}},
           "objective": {"name": objective, "k": 4, "nu": 1, **({"rule": rule_cfg} if rule_cfg else {})},
           "noise": {"name": noise, "options": {}}, "train": {"steps": 200, "lr": 1e-3},
           "x_dim": dim, "image_shape": image_shape, "binary": image_shape is not None,
           "feature_names": [f"f{i}{name_extra}" for i in range(dim)]}
    (run_dir / "config.json").write_text(json.dumps(cfg))
    _metrics(run_dir / "metrics.jsonl", objective, rng, retry)
    normal, anomaly = _scores(rng, labels, shift)
    auroc = float(np.mean(np.asarray(anomaly)[:, None] > np.asarray(normal)[None, :])) if labels else None
    m = {"log_likelihood": -3.5 - rng.random(), "noise_accuracy": None if objective in ("elbo", "iwae") else 0.81,
         "auroc": auroc, "auprc": 0.7 if labels else None, "fpr_at_95_tpr": 0.032 if labels else None}
    if samples:
        if image_shape is not None:
            s = (rng.random((20, image_shape[0] * image_shape[1])) > 0.5).astype(float)
        else:
            s = rng.normal(size=(200, dim))
        np.save(run_dir / "samples.npy", s)
    if evaluation:
        ev = {**m, "log_likelihood_kind": "estimate" if objective in ("fvnce", "nce") else "iwae_bound",
              "log_z": {"log_z": 0.1, "ess_fraction": 0.4, "proposal": "encoder"},
              "roc": None, "scores": {"normal": normal, "anomaly": anomaly} if labels else None,
              "val": {"auroc": auroc, "auprc": 0.7, "fpr_at_95_tpr": 0.04, "log_likelihood": -3.6,
                      "noise_accuracy": 0.8},
              "samples_file": "samples.npy" if samples else None, "sampling_method": "ancestral"}
        (run_dir / "evaluation.json").write_text(json.dumps(ev))
    return m


def write_poc(root: Path, *, dim=5, image_shape=None, labels=True, evil=False, toy=False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    name0 = EVIL if evil else "fvnce-power-gauss"
    specs = [(name0, "fvnce", "power", "gaussian", "ok", 2.5),
             ("fvnce-kl-flow", "fvnce", "kl", "flow", "ok", 1.5),
             ("elbo", "elbo", None, None, "ok", 1.0),
             ("fvnce-logistic-gauss", "fvnce", "logistic", "gaussian", "failed", 0.0)]
    runs = []
    for i, (name, obj, rule, noise, status, shift) in enumerate(specs):
        rd = f"runs/run{i}"
        if status == "ok":
            m = write_run(root / rd, objective=obj, rule=rule or "kl", noise=noise or "none", dim=dim,
                          image_shape=image_shape, labels=labels, shift=shift, seed=i, retry=(i == 1))
            err = None
        else:
            (root / rd).mkdir(parents=True)
            m = {k: None for k in ("log_likelihood", "noise_accuracy", "auroc", "auprc", "fpr_at_95_tpr")}
            err = ("NonFiniteLossError: noise term became NaN at step 12 " + (EVIL if evil else "")
                   + " /very/long/path/" + "x" * 150)
        vm = dict(m)
        if m["log_likelihood"] is not None:
            vm["log_likelihood"] = m["log_likelihood"] - 0.1
        runs.append({"name": name, "objective": obj, "rule": rule,
                     "rule_params": {"alpha": 0.5} if rule == "power" else {}, "noise": noise,
                     "model": "vae", "run_dir": rd, "status": status, "error": err,
                     "train_time_s": 12.5 + i, "metrics": m, "val_metrics": vm})
    rng = np.random.default_rng(9)
    n, a = rng.normal(0, 1, 300).tolist(), rng.normal(1.2, 1, 60).tolist()
    baselines = [{"name": EVIL if evil else "isolation_forest",
                  "metrics": {"auroc": 0.8 if labels else None, "auprc": 0.5 if labels else None,
                              "fpr_at_95_tpr": 0.4 if labels else None, "log_likelihood": None,
                              "noise_accuracy": None},
                  "val_metrics": {"auroc": 0.79 if labels else None},
                  "roc": None, "scores": {"normal": n, "anomaly": a} if labels else None}]
    summary = {"fvnce_version": "0.1.0", "created": "2024-05-01T12:00:00+00:00", "wall_time_s": 321.0,
               "data": {"source": EVIL if evil else "sensors.csv", "n_train": 1000, "n_val": 200,
                        "n_test": 360, "dim": dim, "image_shape": image_shape, "binary": image_shape is not None,
                        "notes": ["dropped 3 constant columns", *([EVIL] if evil else [])],
                        "has_labels": labels},
               "runs": runs, "baselines": baselines,
               "recommended": {"run": name0, "criterion": "highest validation AUROC" if labels
                               else "highest validation log-likelihood",
                               "reason": "best on validation " + (EVIL if evil else "")}}
    if toy:
        summary["toy_2d"] = True
    (root / "summary.json").write_text(json.dumps(summary))
    return root


def _pngs(text: str) -> list[bytes]:
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)]


def _check_common(text: str) -> None:
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)\s*=\s*["\']?\s*(https?:)?//', text, re.I)
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<script[^>]*\bsrc", text, re.I)
    assert not re.search(r"<link\b", text, re.I)
    assert text.count("<script") == 1  # only the report's own inline self-check
    pngs = _pngs(text)
    assert pngs and all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    assert len(pngs) == text.count("<img ")
    for sec in SECTIONS:
        if sec in ("data", "recommendation", "comparison"):
            continue
        assert f'<section id="{sec}">' in text


# --------------------------------------------------------------------------- content tests
# Reports are built once per variant (module scope): rendering plots is the slow part.


@pytest.fixture(scope="module")
def main_report(tmp_path_factory) -> tuple[Path, str]:
    poc = write_poc(tmp_path_factory.mktemp("main") / "poc")
    out = build_report(poc)
    assert out == poc / "report.html" and out.is_file()
    return poc, out.read_text()


@pytest.fixture(scope="module")
def evil_image_report(tmp_path_factory) -> Path:
    """Image data (8x8 samples) with hostile names everywhere and a long error message."""
    poc = write_poc(tmp_path_factory.mktemp("evil") / "poc", dim=64, image_shape=[8, 8], evil=True)
    return build_report(poc)


def test_poc_report_sections_tables_and_images(main_report):
    _, text = main_report
    _check_common(text)
    for sec in SECTIONS:
        assert f'<section id="{sec}">' in text
    assert "Anomaly detection proof of concept" in text and "sensors.csv" in text
    assert "1,000 / 200 / 360" in text and "dropped 3 constant columns" in text
    assert "5 min 21 s" in text and "fvnce 0.1.0" in text
    # recommendation with business numbers and the validation/test statement
    assert "3.2% of normal items would be flagged" in text
    assert "validation data only" in text and "held-out test" in text
    assert "highest validation AUROC" in text
    # comparison table: highlighted recommended row, failed run with its error, estimate marker
    assert text.count('<tr class="rec">') == 1
    assert '<tr class="bad first">' in text and '<tr class="bad detail">' in text and "NonFiniteLossError: noise term became NaN" in text
    assert "(estimate)" in text and "isolation_forest" in text
    assert "power (alpha=0.5)" in text
    assert "Noise distribution × rule (validation AUROC)" in text
    # images: 3 training figures, ROC, 2 histograms; samples not drawn for 5-D data
    assert text.count('alt="Training curves of') == 3
    assert 'alt="ROC curves of all runs and baselines"' in text
    assert text.count('alt="Score histogram of') == 2
    assert "Samples are not shown for 5-dimensional data" in text
    assert "Training was restarted 1 time(s)" in text and "non-finite noise loss" in text
    assert "How to read this report" in text and "FPR@95TPR" in text


def test_escaping_of_user_strings(evil_image_report):
    text = evil_image_report.read_text()
    assert EVIL not in text
    assert "<script>alert" not in text and "alert(1)</script>" not in text
    escaped = html_mod.escape(EVIL)
    assert text.count(escaped) >= 5  # run name, source, note, error, baseline, reason...
    _check_common(text)


def test_image_data_sample_grids(evil_image_report):
    text = evil_image_report.read_text()
    assert text.count('alt="Samples of') == 3  # the failed run has no samples
    assert "No samples for: <b>fvnce-logistic-gauss</b>" in text
    assert "images of 8 × 8 pixels" in text


def test_toy_2d_sample_scatter(tmp_path):
    text = build_report(write_poc(tmp_path / "toy", dim=2, toy=True)).read_text()
    _check_common(text)
    assert text.count('alt="Samples of') == 3
    assert "not shown for" not in text


def test_no_labels_and_damaged_files(tmp_path):
    poc = write_poc(tmp_path / "nolab", labels=False)
    (poc / "runs" / "run1" / "evaluation.json").write_text("{not json")
    shutil.rmtree(poc / "runs" / "run2")
    (poc / "runs" / "run0" / "samples.npy").write_bytes(b"garbage")
    text = build_report(poc).read_text()
    _check_common(text)
    assert "ROC curves of all runs" not in text and "Score histogram" not in text
    assert "no anomaly labels" in text
    assert "Noise distribution × rule (validation log-likelihood)" in text
    assert "Not available (no anomaly labels in the test data)" in text
    assert "evaluation.json could not be read" in text and "run directory not found" in text
    assert "samples.npy could not be read" in text


def test_single_run_report_and_missing_evaluation(tmp_path):
    run = tmp_path / "run"
    write_run(run, image_shape=[8, 8], dim=64, retry=True)
    out = build_report(run)
    assert out == run / "report.html"
    text = out.read_text()
    _check_common(text)
    for sec in ("configuration", "results", "training", "roc", "samples", "glossary"):
        assert f'<section id="{sec}">' in text
    assert "FVNCE run report: run" in text and 'alt="Samples of run"' in text
    assert 'alt="ROC curves of all runs and baselines"' in text and "(estimate)" in text

    bare = tmp_path / "bare"
    write_run(bare, evaluation=False, samples=False, objective="elbo", dim=3)
    with open(bare / "metrics.jsonl", "a") as f:
        f.write('{"step": 300, "loss": 1.')  # truncated last line (crash)
    text = build_report(bare, out=tmp_path / "elsewhere.html").read_text()
    assert (tmp_path / "elsewhere.html").is_file() and not (bare / "report.html").exists()
    assert "evaluation.json is missing" in text and "1 unreadable line(s)" in text
    assert "Samples are not shown for 3-dimensional data" in text
    assert text.count('alt="Training curves of') == 1


def test_poc_without_runs_or_recommendation(tmp_path):
    poc = tmp_path / "empty_poc"
    poc.mkdir()
    (poc / "summary.json").write_text(json.dumps({
        "fvnce_version": "0.1.0", "data": {"source": "x.csv", "dim": 4, "has_labels": True},
        "runs": [], "baselines": [], "recommended": None}))
    (tmp_path / "reports").mkdir()
    out = build_report(poc / "summary.json", out=tmp_path / "reports")
    assert out == tmp_path / "reports" / "report.html" and out.is_file()
    assert [p.name for p in (tmp_path / "reports").iterdir()] == ["report.html"]  # no temp files
    text = out.read_text()
    assert "No configuration could be recommended" in text and '<section id="glossary">' in text
    assert "<img " not in text


def test_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        build_report(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="neither a POC directory") as info:
        build_report(tmp_path / "empty")
    assert "\n" not in str(info.value)
    (tmp_path / "badpoc").mkdir()
    (tmp_path / "badpoc" / "summary.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_report(tmp_path / "badpoc")
    assert list((tmp_path / "empty").iterdir()) == []


def test_deterministic_and_no_pyplot(tmp_path):
    had_pyplot = "matplotlib.pyplot" in sys.modules
    import matplotlib

    backend = dict.__getitem__(matplotlib.rcParams, "backend")  # get_backend() imports pyplot
    run = tmp_path / "run"
    write_run(run, dim=2)
    a = build_report(run, out=tmp_path / "a.html").read_text()
    b = build_report(run, out=tmp_path / "b.html").read_text()
    strip = lambda t: re.sub(r"report generated [^<·]*", "", t)  # noqa: E731
    assert a != strip(a) and strip(a) == strip(b)
    assert dict.__getitem__(matplotlib.rcParams, "backend") == backend
    if not had_pyplot:
        assert "matplotlib.pyplot" not in sys.modules


# --------------------------------------------------------------------------- browser rendering


def _chromium(args: list[str], profile: Path, width: int) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}",
           f"--window-size={width},1000", "--virtual-time-budget=5000", *args]
    env = {**os.environ, "HOME": str(profile)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, env=env)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (/usr/bin/chromium)")
@pytest.mark.parametrize("width", [800, 420])
def test_chromium_renders_everything(tmp_path, evil_image_report, width):
    report = evil_image_report
    n_img = report.read_text().count("<img ")
    res = _chromium(["--dump-dom", report.as_uri()], tmp_path / "profile", width)
    dom = res.stdout
    m = re.search(r'<div id="fvnce-check" hidden="">([^<]*)</div>', dom)
    assert m, f"no self-check result in DOM (rc={res.returncode}): {res.stderr[-2000:]}"
    check = html_mod.unescape(m.group(1))
    assert check.startswith("OK "), check
    assert f"images {n_img}/{n_img} loaded" in check and "nothing cut off" in check
    assert "alert(1)" not in dom.replace(html_mod.escape(EVIL), "")  # stayed text, never a tag

    if width == 800:
        shot = tmp_path / "shot.png"
        res = _chromium([f"--screenshot={shot}", report.as_uri()], tmp_path / "profile2", width)
        assert shot.is_file(), res.stderr[-2000:]
        data = shot.read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
        keep = os.environ.get("FVNCE_REPORT_SCREENSHOT")
        if keep:
            shutil.copy(shot, keep)


def test_roc_curve_from_scores():
    from fvnce.report.plots import roc_curve

    fpr, tpr = roc_curve([0.0, 1.0, 2.0, 3.0], [2.5, 4.0])
    assert fpr[0] == tpr[0] == 0.0 and fpr[-1] == tpr[-1] == 1.0
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    auc = float(np.sum(np.diff(fpr) * (np.asarray(tpr[1:]) + np.asarray(tpr[:-1])) / 2))
    assert auc == pytest.approx(7 / 8)  # pairs (anomaly > normal): 3 + 4 of 8
    assert roc_curve([], [1.0]) is None and roc_curve([float("nan")], [1.0]) is None


def test_low_ess_log_likelihood_is_flagged_unreliable():
    from fvnce.report.cells import ll_cell

    assert "unreliable" in ll_cell(-60.0, "estimate", 5e-5) and "5.0e-05" in ll_cell(-60.0, "estimate", 5e-5)
    assert "unreliable" not in ll_cell(-13.5, "estimate", 0.9) and "(estimate)" in ll_cell(-13.5, "estimate", 0.9)
    assert "estimate" not in ll_cell(-13.5, "iwae_bound", 1e-6)


# --------------------------------------------------------------------------- verdicts of the poc


def write_verdict_poc(root: Path, labels: bool = True) -> Path:
    """A POC directory whose summary comes from fvnce.poc's own assessment and choice: the VAE
    wins, one power run is degraded, one kl run has an unreliable log-likelihood, and the
    training logs hold stabilisation changes and warnings."""
    from fvnce.poc import assess_runs, recommend

    specs = [("elbo-vae", "elbo", None, 0.97, -30.0, None),
             ("fvnce-power1.5-kde", "fvnce", "power", 0.62, -33.0,
              {"log_z": 1.0, "ess_fraction": 0.3, "khat": 0.41, "reliable": True, "proposal": "encoder"}),
             ("fvnce-kl-kde", "fvnce", "kl", 0.99, -11.0,
              {"log_z": -19.0, "ess_fraction": 7e-5, "khat": 1.38, "reliable": False, "proposal": "noise"}),
             ("fvnce-kl-gmm", "fvnce", "kl", 0.96, -30.1,
              {"log_z": 2.0, "ess_fraction": 0.2, "khat": 0.55, "reliable": True, "proposal": "encoder"})]
    runs = []
    for i, (name, obj, rule, auroc, ll, log_z) in enumerate(specs):
        rd = root / "runs" / name
        write_run(rd, objective=obj, rule=rule or "kl", dim=5, labels=labels, seed=i)
        ev = json.loads((rd / "evaluation.json").read_text())
        ev["log_z"] = log_z
        heavy = name == "fvnce-kl-kde"
        ev["noise_term"] = None if obj == "elbo" else {"khat": 0.95 if heavy else 0.2,
                                                       "ess_fraction": 0.004 if heavy else 0.5, "reliable": not heavy}
        (rd / "evaluation.json").write_text(json.dumps(ev))
        if rule == "power":
            with open(rd / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": 120, "event": "stabilise", "reason": "log w above tau on 3% of rows",
                                    "from": {"exp_mode": "exact", "tau": 10}, "to": {"exp_mode": "linear", "tau": 10}})
                        + "\n")
                f.write(json.dumps({"step": 150, "event": "warning", "kind": "heavy_tail",
                                    "message": "noise-side weights have k-hat 0.93 " + EVIL}) + "\n")
        m = {"auroc": auroc if labels else None, "log_likelihood": ll, "log_likelihood_se": 0.2,
             "log_likelihood_reliable": None, "auprc": 0.5, "fpr_at_95_tpr": 0.1, "noise_accuracy": 0.8}
        runs.append({"name": name, "objective": obj, "rule": rule,
                     "rule_params": {"alpha": 1.5} if rule == "power" else {},
                     "noise": None if obj == "elbo" else name.rsplit("-", 1)[1], "model": "vae", "run_dir": f"runs/{name}",
                     "status": "ok", "error": None, "train_time_s": 3.0, "metrics": dict(m), "val_metrics": dict(m),
                     "log_z": log_z, "noise_term": ev["noise_term"],
                     "started_from": "elbo-vae" if obj == "fvnce" else None})
    counts = {"normal": 300, "anomaly": 60} if labels else None
    assess_runs(runs, counts)
    summary = {"fvnce_version": "0.1.0", "created": "2024-05-01T12:00:00+00:00", "wall_time_s": 30.0,
               "data": {"source": "sensors.csv", "n_train": 1000, "n_val": 360, "n_test": 360, "dim": 5,
                        "has_labels": labels, "val_counts": counts},
               "criteria": {"auroc_margin_min": 0.02, "se_factor": 2.0, "khat_max": 0.7, "ess_fraction_min": 0.05,
                            "reference": "elbo-vae"},
               "runs": runs, "baselines": [], "recommended": recommend(runs, labels, counts)}
    (root / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def verdict_report(tmp_path_factory) -> tuple[dict, str]:
    poc = write_verdict_poc(tmp_path_factory.mktemp("verdict") / "poc")
    return json.loads((poc / "summary.json").read_text()), build_report(poc).read_text()


def test_report_shows_vae_recommendation_in_the_headline(verdict_report):
    summary, text = verdict_report
    _check_common(text)
    rec = summary["recommended"]
    assert rec["run"] == "elbo-vae"
    statement = ("No FVNCE configuration beat the VAE it started from on validation data; "
                 "the VAE is recommended.")
    assert rec["vae_statement"].startswith("No eligible FVNCE configuration beat the VAE it started from")
    header = text[text.index("<header>"):text.index("</header>")]
    assert html_mod.escape(rec["vae_statement"]) in header and html_mod.escape(rec["reason"]) in header
    # 60 anomalies: 0.97 and 0.96 are within noise; the higher AUROC is chosen and the tie is named
    assert ("elbo-vae is recommended because it has the highest validation AUROC (0.9700) of the 2 eligible "
            "runs, ahead of fvnce-kl-gmm (0.9600); 1 other run is within noise of it (2 standard errors), which "
            "these validation rows cannot separate") in header
    assert statement not in text  # the higher-scoring kl run was left out, and the text says so
    assert "fvnce-kl-kde (unreliable log-likelihood)" in header
    assert text.count('<tr class="rec">') == 1


def test_report_shows_degraded_and_unreliable_runs_with_their_sentences(verdict_report):
    summary, text = verdict_report
    by = {r["name"]: r for r in summary["runs"]}
    assert by["fvnce-power1.5-kde"]["status"] == "degraded" and by["fvnce-kl-kde"]["reliable"] is False
    assert '<tr class="degraded first">' in text and '<tr class="degraded detail">' in text
    assert '<span class="tag degraded">degraded</span>' in text
    assert html_mod.escape(by["fvnce-power1.5-kde"]["status_reason"]) in text
    assert "validation AUROC 0.6200 is 0.3500 below the VAE&#x27;s 0.9700" in text
    assert '<tr class="unreliable first">' in text and '<span class="tag unreliable">unreliable</span>' in text
    for w in by["fvnce-kl-kde"]["warnings"]:
        assert html_mod.escape(w) in text
    # the unreliable log-likelihood only ever appears with its warning, k-hat and ESS
    cell = re.search(r"-11\.00[^<]*<span[^>]*>([^<]*)</span>", text)
    assert cell and "unreliable" in cell.group(1) and "k-hat 1.38" in cell.group(1)
    assert "7.0e-05" in cell.group(1)
    assert text.count("-11.00") == 1
    # the k-hat and ESS columns, with the usual reading
    assert "log Z: k-hat · ESS" in text and "Noise term (training): k-hat · ESS" in text
    assert '<span class="bad-text"><span class="nowrap">1.38 ·</span> 0.01% unreliable</span>' in text
    # the noise term's diagnostic has its own word: "unreliable" is the run status only
    assert ('<span class="warn-text"><span class="nowrap">0.95 ·</span> 0.40% heavy-tailed weights</span>'
            in text) and '<span class="nowrap">0.41 ·</span> 30.0%' in text
    assert "0.40% unreliable" not in text
    glossary = text[text.index('<section id="glossary">'):]
    assert "Noise term: heavy-tailed weights" in glossary and "for a chosen run they stand as shown" in glossary
    assert "Pareto k-hat above 0.7" in text and "Hanley &amp; McNeil 1982" in text
    # the matrix marks both and stars neither; the VAE is quoted for reference
    matrix = text[text.index("Noise distribution × rule"):]
    matrix = matrix[:matrix.index("</table>")]
    assert "degraded</span>" in matrix and "unreliable</span>" in matrix
    assert matrix.count("★</span>") == 1 and '<span class="best-cell">0.960 ★</span>' in matrix
    assert "the VAE elbo-vae they started from has 0.970" in matrix


def test_report_lists_training_events(verdict_report):
    _, text = verdict_report
    assert '<h3 id="training-events">Training events</h3>' in text
    assert ("step 120: the objective&#x27;s stabilisation was changed automatically from exp_mode=exact, tau=10 "
            "to exp_mode=linear, tau=10 (log w above tau on 3% of rows)") in text
    assert "1 × stabilisation changed, 1 × warning" in text
    assert "step 150: warning (heavy_tail): noise-side weights have k-hat 0.93" in text
    assert EVIL not in text and html_mod.escape(EVIL) in text
    assert "changed automatically 1 time(s) (dashed purple lines)" in text and "1 warning(s)" in text


def test_report_without_labels_ranks_by_log_likelihood(tmp_path):
    poc = write_verdict_poc(tmp_path / "nolab", labels=False)
    summary = json.loads((poc / "summary.json").read_text())
    text = build_report(poc).read_text()
    _check_common(text)
    # the kl run's 19-nat artefact is not recommended; the power run is degraded on log-likelihood
    assert summary["recommended"]["run"] == "elbo-vae"
    assert "validation log-likelihood -33.00 nats is 3.00 below the VAE&#x27;s -30.00" in text
    assert ("elbo-vae is recommended because it has the highest validation log-likelihood (-30.00 nats) of the 2 "
            "eligible runs, ahead of fvnce-kl-gmm (-30.10 nats)") in text


def test_single_run_report_shows_weight_diagnostics_and_events(tmp_path):
    run = tmp_path / "run"
    write_run(run, dim=3)
    ev = json.loads((run / "evaluation.json").read_text())
    ev["log_z"] = {"log_z": -19.0, "ess_fraction": 2e-3, "khat": 1.21, "reliable": False, "proposal": "noise"}
    ev["noise_term"] = {"khat": 0.45, "ess_fraction": 0.31, "reliable": True}
    (run / "evaluation.json").write_text(json.dumps(ev))
    with open(run / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 7, "event": "stabilise", "from": {"exp_mode": "exact", "tau": 10},
                            "to": {"exp_mode": "linear", "tau": 10}}) + "\n")
    text = build_report(run).read_text()
    _check_common(text)
    assert "(estimate, unreliable: log Z weights have k-hat 1.21, ESS fraction 2.0e-03)" in text
    assert '<span class="bad-text"><span class="nowrap">1.21 ·</span> 0.20% unreliable</span>' in text
    assert ('Noise term importance weights of training (k-hat · ESS)</td><td><span class="nowrap">0.45 ·</span> '
            "31.0%") in text
    assert "step 7: the objective&#x27;s stabilisation was changed automatically from exp_mode=exact" in text


# --------------------------------------------------------------------------- layout at 1,280 px

#: Measures the rendered page (our own probe, added to a copy of the report with its
#: Content-Security-Policy removed, so it measures any version of the report): the page's
#: width, every table against the box that holds it, and the full-width detail rows
#: (warnings, errors) against the visible part of that box.
LAYOUT_JS = """
window.addEventListener('load',function(){
var out={width:document.documentElement.scrollWidth,window:window.innerWidth,tables:[],cut:[]};
function box(el){for(var p=el.parentElement;p;p=p.parentElement){var o=getComputedStyle(p).overflowX;
if(o==='auto'||o==='scroll'||o==='hidden'){return p;}}return document.documentElement;}
var ts=document.querySelectorAll('table');
for(var i=0;i<ts.length;i++){var b=box(ts[i]),s=ts[i].closest('section');
out.tables.push({section:s?s.id:'',table:Math.round(ts[i].getBoundingClientRect().width),
box:b.clientWidth,scroll:b.scrollWidth});}
var cells=document.querySelectorAll('td,th');
for(i=0;i<cells.length;i++){var c=cells[i],r=c.getBoundingClientRect(),br=box(c).getBoundingClientRect();
var right=Math.min(br.right,window.innerWidth);
if(r.width>0&&r.right>right+1){out.cut.push((c.textContent||'').slice(0,60));}}
document.body.dataset.layout=JSON.stringify(out);
});
"""


def write_wide_poc(root: Path) -> Path:
    """The verdict poc with more runs: long names, many rules (many grid columns), a mixture
    family, warnings on several rows."""
    write_verdict_poc(root)
    summary = json.loads((root / "summary.json").read_text())
    extra = [("fvnce-shifted_log-full_gaussian-mix4", "shifted_log", {}, "full_gaussian", "gaussian_mixture"),
             ("fvnce-pseudo_spherical-marginals-with-a-rather-long-configuration-name", "pseudo_spherical", {},
              "marginals", "tilted_vae"),
             ("fvnce-power0.5-kde", "power", {"alpha": 0.5}, "kde", "tilted_vae"),
             ("fvnce-power2.5-kde", "power", {"alpha": 2.5}, "kde", "tilted_vae"),
             ("fvnce-logistic-full_gaussian", "logistic", {}, "full_gaussian", "tilted_vae"),
             ("fvnce-asymmetric_power-full_gaussian", "asymmetric_power", {"alpha": 0.25, "c": 3.0},
              "full_gaussian", "tilted_vae")]
    for i, (name, rule, params, noise, model) in enumerate(extra):
        rd = f"runs/{name}"
        m = write_run(root / rd, rule=rule, noise=noise, dim=5, seed=10 + i)
        warn = (f"The noise term of {name} rests on heavy-tailed importance weights, with Pareto k-hat 0.94 "
                "(limit 0.7) and effective sample size 0.93% (minimum 5%): training optimised a high-variance "
                "estimate of the objective.")
        summary["runs"].append({
            "name": name, "objective": "fvnce", "rule": rule, "rule_params": params, "noise": noise, "model": model,
            "run_dir": rd, "status": "ok", "error": None, "train_time_s": 4000.0 + i,
            "metrics": {**m, "log_likelihood_se": 0.2}, "val_metrics": {**m, "log_likelihood_se": 0.2},
            "log_z": {"log_z": 1.0, "ess_fraction": 0.0031, "khat": 0.82, "reliable": False},
            "noise_term": {"khat": 0.94, "ess_fraction": 0.0093, "reliable": False},
            "warnings": [warn], "reliable": False})
    (root / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed (/usr/bin/chromium)")
def test_layout_at_1280_px_nothing_wider_than_the_page(tmp_path):
    report = build_report(write_wide_poc(tmp_path / "wide"))
    text = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", report.read_text())
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", f"<script>{LAYOUT_JS}</script>\n</body>"))
    res = _chromium(["--dump-dom", probe.as_uri()], tmp_path / "profile", 1280)
    m = re.search(r'data-layout="([^"]*)"', res.stdout)
    assert m, f"no layout measurement in the DOM (rc={res.returncode}): {res.stderr[-2000:]}"
    layout = json.loads(html_mod.unescape(m.group(1)))
    assert layout["window"] == 1280
    assert layout["width"] <= 1280, layout
    compare = [t for t in layout["tables"] if t["section"] == "comparison"]
    assert len(compare) >= 2  # the comparison table and the noise x rule grid(s)
    wide = [t for t in layout["tables"] if t["scroll"] > t["box"] + 1]
    assert not wide, f"tables wider than their box: {wide}"
    assert not layout["cut"], f"cells cut off: {layout['cut'][:10]}"


# --------------------------------------------------------------------------- numbers as an analyst writes them


def test_rates_are_never_rounded_to_0_or_100_percent_unless_exact():
    from fvnce.report.html import fmt_count, fmt_frac, fmt_pct

    assert fmt_pct(0.9996) == "99.96%" and fmt_pct(1.0) == "100.0%" and fmt_pct(0.0) == "0.0%"
    assert fmt_pct(0.00004) == "0.004%" and fmt_pct(807 / 809) == "99.8%"
    assert fmt_frac(0.99996) == "0.99996" and fmt_frac(1.0) == "1.000" and fmt_frac(0.0004) == "0.0004"
    assert fmt_pct(1 - 1e-12).startswith(">99.99") and fmt_pct(1e-13).startswith("<0.0000")
    assert fmt_count(807, 809) == "807 of 809 (99.8%)" and fmt_count(1999, 2000) == "1,999 of 2,000 (99.95%)"
    assert fmt_count(None, 809, 0.9996) == "99.96%"


def test_clopper_pearson_range_of_a_rate():
    from scipy.stats import binom

    from fvnce.report.alarm import rate_range

    lo, hi = rate_range(0, 27)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.005 ** (1 / 27), rel=1e-12)  # P(0 of 27 | hi) = 0.005
    lo, hi = rate_range(27, 27)
    assert hi == 1.0 and lo == pytest.approx(0.005 ** (1 / 27), rel=1e-12)
    lo, hi = rate_range(7, 500)
    assert binom.sf(6, 500, lo) == pytest.approx(0.005, rel=1e-9)  # P(X >= 7 | lo)
    assert binom.cdf(7, 500, hi) == pytest.approx(0.005, rel=1e-9)  # P(X <= 7 | hi)


def test_operating_sentence_counts_and_too_few_items_in_the_same_sentence():
    from fvnce.report.alarm import operating_sentence

    alarm = {"rate": 0.01}
    few = {"false_alarms_per_1000": 0.0, "false_alarms": 0, "n_normal": 27, "detected": 807, "n_anomaly": 809,
           "detection_rate": 807 / 809}
    text = operating_sentence(few, alarm, "the recommended model")
    assert text == ("At the alarm threshold set for 1 % false alarms, the recommended model raised 0 false alarms "
                    "among 27 normal test items (0 per 1,000) — too few items to check the 1 % target (at that rate "
                    "27 items show 0.27 false alarms on average): the rate could be anywhere from 0 to 178 per "
                    "1,000 (99 % range) — and detected 807 of 809 anomalies (99.8 %).")
    many = {**few, "false_alarms": 12, "n_normal": 1530, "false_alarms_per_1000": 12000 / 1530}
    text = operating_sentence(many, alarm)
    assert "12 false alarms among 1,530 normal test items (7.8 per 1,000; 99 % range of the rate: 3.2 to 16 per " \
           "1,000)" in text and "too few" not in text
    above = {**few, "false_alarms": 3, "false_alarms_per_1000": 3000 / 27}
    assert "wholly above the 1 % target" in operating_sentence(above, alarm)
    old = {"false_alarms_per_1000": 7.8, "detection_rate": 0.9996}  # files without counts
    assert operating_sentence(old, alarm).endswith("raised 7.8 false alarms per 1,000 normal test items and "
                                                   "detected 99.96 % of the anomalies.")


def test_headline_of_a_small_test_part_says_the_target_cannot_be_checked(tmp_path):
    poc = write_poc(tmp_path / "small")
    ev_path = poc / "runs" / "run0" / "evaluation.json"
    ev = json.loads(ev_path.read_text())
    ev["alarm"] = {"rate": 0.01, "threshold": 1.5, "n": 32, "calibrated_on": "validation normal rows"}
    ev["operating_point"] = {"threshold": 1.5, "n_normal": 27, "false_alarms": 0, "false_alarms_per_1000": 0.0,
                             "n_anomaly": 809, "detected": 807, "detection_rate": 807 / 809,
                             "expected_per_1000": [0.0, 259.0], "range_level": 0.99, "within_expected": True}
    ev_path.write_text(json.dumps(ev))
    text = build_report(poc).read_text()
    header = html_mod.unescape(text[text.index("<header>"):text.index("</header>")])
    first = re.search(r'<p class="verdict"><b>([^<]*)</b></p>', header).group(1)
    sentence = first.split(". ")[0]
    assert "0 false alarms among 27 normal test items" in sentence and "too few items to check the 1 % target" \
        in sentence and "0 to 178 per 1,000 (99 % range)" in sentence and "807 of 809 anomalies (99.8 %)" in sentence
    assert "100 %" not in header and "100.0 %" not in header
    alarm = html_mod.unescape(text[text.index('<section id="alarm">'):])
    assert "807 of 809 (99.8%)" in alarm


# --------------------------------------------------------------------------- families, cards, commands


def write_family_poc(root: Path, with_commands: bool = True) -> Path:
    """The verdict poc plus a 4-component mixture in the same noise x rule cell as the tilted
    run fvnce-kl-gmm, with a higher validation AUROC and a lower log-likelihood than the VAE;
    it is the recommendation."""
    write_verdict_poc(root)
    summary = json.loads((root / "summary.json").read_text())
    name = "fvnce-kl-gmm-mix4"
    m = write_run(root / "runs" / name, rule="kl", noise="gmm", dim=5, seed=21)
    metrics = {**m, "auroc": 0.98, "log_likelihood": -39.67}
    summary["runs"].append({"name": name, "objective": "fvnce", "rule": "kl", "rule_params": {}, "noise": "gmm",
                            "model": "gaussian_mixture", "run_dir": f"runs/{name}", "status": "ok", "error": None,
                            "train_time_s": 2.0, "metrics": metrics,
                            "val_metrics": {**metrics, "auroc": 0.995}, "reliable": True})
    rec = {"run": name, "criterion": "highest validation AUROC", "reason": "best validation AUROC"}
    if with_commands:
        rec["train_command"] = ("fvnce train --data 'my data.csv' --label label --normal normal --model "
                                "gaussian_mixture --components 4 --rule kl --noise gmm --steps 5000 --out RUN "
                                "<&> " + "x" * 300)
    summary["recommended"] = rec
    (root / "summary.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def family_report(tmp_path_factory) -> str:
    return build_report(write_family_poc(tmp_path_factory.mktemp("family") / "poc")).read_text()


def test_one_noise_rule_grid_per_model_family(family_report):
    text = family_report
    grids = text[text.index("Noise distribution × rule"):text.index('<section id="alarm">')
                 if '<section id="alarm">' in text else text.index('<section id="training">')]
    assert "Model vae" in grids and "Model gaussian_mixture, 4 components" in grids
    tilted = grids[grids.index("Model vae"):grids.index("Model gaussian_mixture")]
    mixture = grids[grids.index("Model gaussian_mixture"):]
    # the tilted run's own value in its cell; the mixture's 0.995 only in the mixture's grid
    assert "<td><b>gmm</b></td><td>—</td><td>0.960</td>" in tilted and "0.995" not in tilted
    assert '<span class="best-cell">0.995 ★</span>' in mixture and grids.count("★</span>") == 1


def test_matrix_cell_with_two_runs_names_each(tmp_path):
    poc = write_verdict_poc(tmp_path / "twins")
    summary = json.loads((poc / "summary.json").read_text())
    twin = json.loads(json.dumps(next(r for r in summary["runs"] if r["name"] == "fvnce-kl-gmm")))
    twin.update(name="fvnce-kl-gmm-seed2", run_dir=None)
    twin["val_metrics"]["auroc"] = 0.955
    summary["runs"].append(twin)
    (poc / "summary.json").write_text(json.dumps(summary))
    text = build_report(poc).read_text()
    grid = text[text.index("Noise distribution × rule"):]
    assert '<span class="small">fvnce-kl-gmm:</span> <span class="best-cell">0.960 ★</span><br>' \
           '<span class="small">fvnce-kl-gmm-seed2:</span> 0.955' in grid


def test_stat_cards_say_what_they_compare_and_why_a_lower_log_likelihood_wins(family_report):
    text = html_mod.unescape(family_report)
    rec = text[text.index('<section id="recommendation">'):text.index('<section id="comparison">')]
    assert "Figures of fvnce-kl-gmm-mix4 on the held-out test data, each compared with the VAE:" \
        in re.sub(r"</?b>", "", rec)
    assert "Compare: elbo-vae (the VAE):" in rec and "-30.00 nats" in rec
    assert ("Not how the choice was made: that is the validation AUROC, measured with the anomaly labels. "
            "Log-likelihoods of different model families (here gaussian_mixture, vae) are not a detection "
            "criterion: a lower one can be the better detector, as here.") in rec


def test_production_commands_are_shown_escaped_and_copyable(family_report, tmp_path):
    text = family_report
    assert '<h3 id="production">From recommendation to production</h3>' in text
    cmd = re.search(r'<pre class="command"><code>([^<]*)</code></pre>', text).group(1)
    assert "&lt;&amp;&gt;" in cmd and html_mod.unescape(cmd).startswith(
        "fvnce train --data 'my data.csv' --label label --normal normal --model gaussian_mixture --components 4")
    # none in summary.json: no section, no empty block
    plain = build_report(write_family_poc(tmp_path / "plain", with_commands=False)).read_text()
    assert "From recommendation to production" not in plain and "<pre" not in plain


def test_union_recommendation_shows_member_and_score_commands(tmp_path):
    poc = write_poc(tmp_path / "union", labels=False)
    summary = json.loads((poc / "summary.json").read_text())
    summary["recommended"] = {
        "run": "union", "criterion": "without anomaly labels: the union", "reason": "union of two",
        "members": ["fvnce-power-gauss", "fvnce-kl-flow"], "single_choice": "fvnce-power-gauss",
        "union": {"run_dir": "runs/union", "combination": "max of z-scores",
                  "alarm": {"rate": 0.01, "threshold": 2.0, "n": 200},
                  "operating_point": {"alarms": 5, "n_items": 360, "alarms_per_1000": 5000 / 360}},
        "member_commands": [{"run": "fvnce-power-gauss", "command": "fvnce train --rule power --out A"},
                            {"run": "fvnce-kl-flow", "command": "fvnce train --rule kl --out B"}],
        "score_command": "fvnce union A B --out U && fvnce score U new.csv --out scores.csv"}
    (poc / "summary.json").write_text(json.dumps(summary))
    text = build_report(poc).read_text()
    blocks = [html_mod.unescape(c) for c in re.findall(r'<pre class="command"><code>([^<]*)</code></pre>', text)]
    assert blocks == ["fvnce train --rule power --out A", "fvnce train --rule kl --out B",
                      "fvnce union A B --out U && fvnce score U new.csv --out scores.csv"]
    assert "Train the union's member <b>fvnce-kl-flow</b>" in text
    assert "5 alarms among 360 test items (14 per 1,000; 99 % range of the rate" in text


# --------------------------------------------------------------------------- figures


def test_training_axis_is_cut_short_of_spikes_and_marks_them():
    from fvnce.report.plots import robust_limits, training_figure

    steps = np.arange(0, 5000, 10)
    recs = [{"step": int(s), "loss": 2.0 * np.exp(-s / 800) + 0.5, "data_loss": 1.2 * np.exp(-s / 800) + 0.3,
             "noise_loss": 2e9 if s in (1200, 3300) else 0.8 * np.exp(-s / 700) + 0.2} for s in steps]
    recs[410]["data_loss"] = 4e4
    fig = training_figure(recs, "spiky")
    ax = fig.axes[0]
    lo, hi = ax.get_ylim()
    assert hi < 3.0 and lo > 0.0  # the curves (0.2 to 2.5) fill the axis
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["axis cut: 3 point(s) above, up to 2e+09 (triangles)"]
    # an ordinary decaying curve keeps its full range, early transient included
    smooth = 50.0 * np.exp(-steps / 300) + 1.0
    assert robust_limits(smooth) is None
    fig = training_figure([{"step": int(s), "loss": float(v)} for s, v in zip(steps, smooth)], "smooth")
    assert fig.axes[0].get_ylim()[1] > 50.0 and not fig.axes[0].texts


def test_roc_legend_keeps_names_whole_and_styles_distinct():
    from fvnce.report.plots import curve_styles, roc_figure

    names = [f"fvnce-shifted_log-full_gaussian-mix4-configuration-{i:02d} (AUROC 0.9{i:02d})" for i in range(25)]
    fig = roc_figure([(n, [0.0, 0.5, 1.0], [0.0, 0.8, 1.0], i == 3) for i, n in enumerate(names)])
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == ["random guessing", *names]
    lines = [ln for ln in fig.axes[0].get_lines() if ln.get_label() in names]
    pairs = {(ln.get_color(), ln.get_linestyle()) for ln in lines}
    assert len(lines) == 25 and len(pairs) == 25
    assert len(set(curve_styles(40))) == 40
    # the legend sits below the axes, not over the curves
    fig.canvas.draw()
    assert legend.get_window_extent().y1 < fig.axes[0].get_window_extent().y0


def test_colour_image_samples_are_pointed_to_the_pictures_section():
    """(3, H, W) samples are drawn by the pictures section; the samples section says so
    instead of calling them undrawable high-dimensional data."""
    from fvnce.report.samples import samples_section

    html = samples_section([], [3, 8, 8], 192)
    assert "colour images are drawn with the pictures" in html and "192-dimensional" not in html
    assert "192-dimensional" in samples_section([], None, 192)
