"""Command-line smoke tests on tiny data, in temporary folders."""

import json
import subprocess
import sys

import numpy as np
import pytest

from fvnce.cli import main


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A small CSV: 3 correlated heavy-ish features, a label column with 'ok' and 'bad'."""
    rng = np.random.default_rng(0)
    n = 240
    z = rng.normal(size=(n, 1))
    x = np.hstack([z + 0.3 * rng.normal(size=(n, 1)), 2 * z + 0.3 * rng.normal(size=(n, 1)),
                   np.exp(0.5 * rng.normal(size=(n, 1)))])
    label = np.array(["ok"] * n, dtype=object)
    bad = rng.choice(n, 30, replace=False)
    x[bad] += rng.normal(0, 4, size=(30, 3))
    label[bad] = "bad"
    path = tmp_path_factory.mktemp("data") / "sensors.csv"
    with open(path, "w") as fh:
        fh.write("temp,pressure,vibration,status\n")
        for row, lab in zip(x, label):
            fh.write(",".join(f"{v:.6f}" for v in row) + f",{lab}\n")
    return path


@pytest.fixture(scope="module")
def trained(table, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    rc = main(["train", "--data", str(table), "--label", "status", "--normal", "ok", "--objective", "fvnce",
               "--rule", "power", "--alpha", "1.5", "--k", "2", "--noise", "full_gaussian", "--steps", "60",
               "--batch-size", "64", "--z-dim", "2", "--seed", "1", "--out", str(run), "--quiet"])
    assert rc == 0
    return run


def test_train_writes_a_complete_run(trained):
    for name in ("config.json", "preprocess.json", "noise.pt", "checkpoint.pt", "metrics.jsonl", "evaluation.json"):
        assert (trained / name).exists(), name
    cfg = json.loads((trained / "config.json").read_text())
    assert cfg["objective"]["rule"]["name"] == "power" and cfg["objective"]["rule"]["alpha"] == 1.5
    assert cfg["objective"]["k"] == 2 and cfg["noise"]["name"] == "full_gaussian"
    assert cfg["feature_names"] == ["temp", "pressure", "vibration"]


def test_evaluate_json(trained, capsys):
    assert main(["evaluate", str(trained), "--json", "--k", "8"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("log_likelihood", "noise_accuracy", "auroc", "auprc", "fpr_at_95_tpr"):
        assert key in out
    assert 0 <= out["auroc"] <= 1 and 0 <= out["noise_accuracy"] <= 1
    assert out["log_likelihood_kind"] == "estimate"


def test_score_keeps_row_order(trained, table, tmp_path):
    out = tmp_path / "scores.csv"
    assert main(["score", str(trained), "--data", str(table), "--out", str(out), "--quiet"]) == 0
    lines = out.read_text().strip().splitlines()
    assert lines[0] == "row,score,alarm" and len(lines) == 241
    rows = [int(line.split(",")[0]) for line in lines[1:]]
    assert rows == list(range(240))
    scores = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert np.isfinite(scores).all()
    labels = np.array([r.split(",")[-1] for r in table.read_text().splitlines()[1:]])
    assert scores[labels == "bad"].mean() > scores[labels == "ok"].mean()


def test_sample_npy(trained, tmp_path):
    out = tmp_path / "s.npy"
    assert main(["sample", str(trained), "--n", "10", "--out", str(out), "--quiet"]) == 0
    arr = np.load(out)
    assert arr.shape == (10, 3) and np.isfinite(arr).all()


def test_sample_png_needs_images(trained, tmp_path, capsys):
    assert main(["sample", str(trained), "--n", "4", "--out", str(tmp_path / "s.png")]) == 2
    assert "needs image data" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_image_run_sample_png(tmp_path):
    run = tmp_path / "img"
    assert main(["train", "--data", "digits", "--objective", "elbo", "--steps", "20", "--max-rows", "300",
                 "--out", str(run), "--quiet", "--no-eval"]) == 0
    out = tmp_path / "grid.png"
    assert main(["sample", str(run), "--n", "16", "--out", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_continues(table, tmp_path):
    run = tmp_path / "r"
    base = ["train", "--data", str(table), "--label", "status", "--normal", "ok", "--steps", "30",
            "--out", str(run), "--quiet", "--no-eval"]
    assert main(base) == 0
    assert main(["train", "--out", str(run), "--resume", "--quiet", "--no-eval"]) == 0


def test_poc_end_to_end_reduced(tmp_path):
    out = tmp_path / "poc"
    rc = main(["poc", "--data", "digits", "--normal", "1", "--max-rows", "600", "--budget", "30",
               "--noises", "marginals,kde,gmm", "--rules", "kl,power:1.5", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    fv = [r for r in summary["runs"] if r["objective"] == "fvnce"]
    assert len(fv) == 6 and {r["noise"] for r in fv} == {"marginals", "kde", "gmm"}
    assert {r["rule"] for r in fv} == {"kl", "power"}
    assert any(r["objective"] == "elbo" for r in summary["runs"])
    assert summary["baselines"][0]["name"] == "isolation_forest"
    for r in summary["runs"]:
        assert {"objective", "rule", "noise", "metrics"} <= set(r)
        if r["status"] == "ok":
            assert {"auroc", "auprc", "fpr_at_95_tpr", "log_likelihood", "noise_accuracy"} <= set(r["metrics"])
    rec = summary["recommended"]
    # the VAE baseline is eligible too; the choice is a full sentence on validation data
    assert rec["run"] in {r["name"] for r in summary["runs"]} and "validation" in rec["criterion"]
    assert rec["reason"].startswith(f"{rec['run']} is recommended because") and rec["reason"].endswith(".")
    assert (out / "report.html").exists()


def test_poc_on_a_table_trains_the_diagonal_mixtures(table, tmp_path):
    out = tmp_path / "poc"
    rc = main(["poc", "--data", str(table), "--label", "status", "--normal", "ok", "--budget", "20",
               "--rules", "kl", "--noises", "full_gaussian", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    mix = {r["name"]: r for r in summary["runs"] if r["model"] == "gaussian_mixture"}
    assert set(mix) == {"fvnce-kl-full_gaussian-mix1", "fvnce-kl-full_gaussian-mix4"}
    assert summary["mixtures"] == [1, 4] and all(r["started_from"] is None for r in mix.values())
    assert main(["poc", "--data", str(table), "--label", "status", "--normal", "ok", "--budget", "5",
                 "--rules", "kl", "--noises", "full_gaussian", "--mixtures", "none", "--out",
                 str(tmp_path / "none"), "--quiet", "--no-baselines"]) == 0
    assert not any("-mix" in r["name"] for r in json.loads((tmp_path / "none" / "summary.json").read_text())["runs"])


def test_interrupting_a_poc_stops_it_without_a_summary(table, tmp_path, capsys, monkeypatch):
    """Ctrl-C (SIGINT) in the middle of a poc stops the poc with exit 130; it used to end only
    the run being trained (recorded as failed) and go on with the next."""
    import fvnce.poc.grid
    from fvnce.train import TrainingInterrupted

    real, calls = fvnce.poc.grid.train_run, []

    def train_run(rc, run_dir, **kw):
        calls.append(run_dir.name)
        if len(calls) == 2:
            raise TrainingInterrupted.at(7, run_dir, True)
        return real(rc, run_dir, **kw)

    monkeypatch.setattr(fvnce.poc.grid, "train_run", train_run)
    out = tmp_path / "poc"
    rc = main(["poc", "--data", str(table), "--label", "status", "--normal", "ok", "--budget", "5",
               "--rules", "kl", "--noises", "full_gaussian", "--out", str(out)])
    assert rc == 130 and len(calls) == 2
    err = capsys.readouterr().err
    assert f"poc interrupted at step 7 of run {calls[1]}" in err and "--resume" not in err
    assert not (out / "summary.json").exists() and "run it again with --overwrite (or choose a new --out)" in err


def test_python_dash_m_and_help():
    res = subprocess.run([sys.executable, "-m", "fvnce", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0
    for cmd in ("train", "evaluate", "score", "sample", "poc", "report"):
        assert cmd in res.stdout


@pytest.mark.parametrize("argv,fragment", [
    (["train", "--data", "nope.csv", "--out", "X"], "file not found"),
    (["train", "--objective", "fvnce", "--rule", "power", "--alpha", "2.5", "--out", "X"], "alpha=2.5"),
    (["train", "--k", "-1", "--out", "X"], "k must be a positive integer"),
    (["train", "--noise", "bogus", "--out", "X"], "valid noises"),
    (["train", "--model", "bogus", "--out", "X"], "valid models"),
    (["train", "--rule", "bogus", "--out", "X"], "invalid choice"),
    (["train", "--steps", "-5", "--out", "X"], "steps"),
    (["evaluate", "not_a_run"], "run directory not found"),
    (["poc", "--rules", "logistic", "--out", "X"], "noise side"),
    (["train", "--tau", "0", "--out", "X"], "tau must be a positive"),
    (["train", "--tau", "-2", "--exp-mode", "clip", "--out", "X"], "tau must be a positive"),
    (["train", "--tilt-bound", "-1", "--out", "X"], "tilt_bound must be a positive"),
    (["train", "--noise", "base", "--objective", "nce", "--out", "X"], "works with objective fvnce"),
    (["poc", "--mixtures", "1,x", "--out", "X"], "--mixtures must be comma-separated"),
    (["poc", "--mixtures", "0", "--out", "X"], "--mixtures must be positive"),
])
def test_bad_input_one_line_exit_2(argv, fragment, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        sys.exit(main(argv))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "X").exists()


def test_init_from_starts_tilted_model_at_the_vae(tmp_path):
    import torch

    vae, tilted = tmp_path / "vae", tmp_path / "tilted"
    common = ["--data", "digits", "--max-rows", "300", "--quiet", "--no-eval"]
    assert main(["train", "--objective", "elbo", "--steps", "10", "--out", str(vae), *common]) == 0
    assert main(["train", "--init-from", str(vae), "--steps", "1", "--lr", "1e-12", "--out", str(tilted),
                 *common]) == 0
    src = torch.load(vae / "checkpoint.pt", weights_only=True)
    dst = torch.load(tilted / "checkpoint.pt", weights_only=True)
    for name, value in src["model"].items():
        torch.testing.assert_close(dst["model"][f"base.{name}"], value, atol=1e-8, rtol=0)
    for name, value in src["encoder"].items():
        torch.testing.assert_close(dst["encoder"][name], value, atol=1e-8, rtol=0)
    assert main(["train", "--init-from", str(tmp_path), "--steps", "1", "--out", str(tmp_path / "x"), *common]) == 2


def test_resume_may_only_change_the_length(table, tmp_path, capsys):
    import torch

    run = tmp_path / "r"
    assert main(["train", "--data", str(table), "--label", "status", "--normal", "ok", "--steps", "20",
                 "--out", str(run), "--quiet", "--no-eval"]) == 0
    assert main(["train", "--out", str(run), "--resume", "--lr", "0.1", "--quiet"]) == 2
    assert "--lr differs: saved 0.001, given 0.1 (only --steps or --epochs may change)" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--resume", "--steps", "30", "--quiet", "--no-eval"]) == 0
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == 30


def test_headline_never_shows_an_estimated_log_likelihood_without_its_diagnostics():
    from fvnce.cli.text import headline

    bad = headline({"log_likelihood": -3.0, "log_likelihood_kind": "estimate",
                     "log_z": {"khat": 1.2, "ess_fraction": 0.001, "reliable": False}})
    assert "UNRELIABLE estimate: log Z k-hat 1.20, ESS 0.1 %" in bad
    good = headline({"log_likelihood": -3.0, "log_likelihood_kind": "estimate",
                      "log_z": {"khat": 0.2, "ess_fraction": 0.5, "reliable": True}})
    assert "(estimate: log Z k-hat 0.20, ESS 50 %)" in good and "UNRELIABLE" not in good
    assert headline({"log_likelihood": -3.0, "log_likelihood_kind": "iwae_bound", "log_z": None}) \
        == "test log-likelihood -3.000 nats"


@pytest.mark.parametrize("command", [["score", "--data", "x.csv", "--out", "s.csv"], ["evaluate"],
                                     ["sample", "--out", "s.npy"]])
def test_a_missing_or_foreign_run_folder_is_named_before_anything_else(command, tmp_path, capsys, monkeypatch):
    """``score`` used to say the run "has no alarm threshold" for a folder that does not exist."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("not a run")
    for folder, message in (("missing", "run directory not found: missing"),
                            ("other", "other is not an fvnce run directory (no config.json)")):
        assert main([command[0], folder, *command[1:]]) == 2
        assert capsys.readouterr().err.strip() == f"fvnce: error: {message}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


@pytest.mark.parametrize("flag,value", [("--steps", "-1"), ("--epochs", "0"), ("--grad-clip", "0"),
                                        ("--tilt-bound", "-1")])
def test_number_checks_never_say_none(flag, value, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", flag, value, "--out", "X"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "None" not in err
    assert f"must be a positive {'integer' if flag in ('--steps', '--epochs') else 'number'}, got" in err


def test_components_sets_the_mixture_size(table, tmp_path, capsys):
    run = tmp_path / "mix"
    assert main(["train", "--data", str(table), "--label", "status", "--normal", "ok", "--model", "gaussian_mixture",
                 "--components", "3", "--steps", "5", "--eval-k", "8", "--eval-every", "2", "--out", str(run),
                 "--quiet", "--no-eval"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert saved["run"]["model_options"] == {"components": 3} and saved["model"]["options"]["components"] == 3
    assert saved["run"]["eval_k"] == 8 and saved["run"]["train"]["eval_every"] == 2
    assert main(["train", "--data", str(table), "--components", "3", "--out", str(tmp_path / "x")]) == 2
    assert "--components is the gaussian_mixture model's option" in capsys.readouterr().err


def _parsed_config(command: str) -> dict:
    import shlex

    from fvnce.cli import build_parser
    from fvnce.cli.options import run_config

    argv = shlex.split(command)
    assert argv[:2] == ["fvnce", "train"]
    return run_config(build_parser().parse_args(argv[1:])).to_dict()


def test_the_recommended_train_command_trains_the_recommended_run_again(table, tmp_path, monkeypatch):
    from fvnce.runs import RunConfig
    from fvnce.cli.train_line import config_differences, train_command

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(table), "--label", "status", "--normal", "ok", "--budget", "12", "--rules",
                 "power:1.5", "--noises", "full_gaussian,base", "--mixtures", "2", "--seed", "3", "--split-seed", "5",
                 "--z-dim", "2", "--alarm-rate", "0.05", "--no-baselines", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    rec = summary["recommended"]
    cmd = rec["train_command"]
    assert cmd.endswith(" --out recommended-run") and "members" not in rec
    saved = json.loads((out / "runs" / rec["run"] / "config.json").read_text())["run"]
    assert config_differences(_parsed_config(cmd), saved) == []
    if saved["init_from"]:
        assert f"--init-from {out / 'runs' / 'elbo-vae'}" in cmd
    # every kind of run the poc trains has a command that parses back to its settings
    kinds = {json.loads((d / "config.json").read_text())["run"]["model"] for d in (out / "runs").iterdir()}
    assert kinds == {"vae", "auto", "gaussian_mixture"}
    for d in (out / "runs").iterdir():
        rc = RunConfig.from_dict(json.loads((d / "config.json").read_text())["run"])
        line, note = train_command(rc, "again")
        assert note is None and config_differences(_parsed_config(line), rc.to_dict()) == []
    # run as it is: the same split, settings and starting weights give the same test AUROC
    import shlex
    assert main(shlex.split(cmd)[1:] + ["--quiet"]) == 0
    ev = json.loads((tmp_path / "recommended-run" / "evaluation.json").read_text())
    poc_auroc = next(r for r in summary["runs"] if r["name"] == rec["run"])["metrics"]["auroc"]
    assert ev["auroc"] == pytest.approx(poc_auroc, abs=1e-9)
    # the same for a run that starts from the poc's VAE (--init-from) and samples it as its noise
    tilted = RunConfig.from_dict(json.loads((out / "runs" / "fvnce-power1.5-base" / "config.json").read_text())["run"])
    line, _ = train_command(tilted, "tilted")
    assert "--init-from" in line and "--noise base" in line
    assert main(shlex.split(line)[1:] + ["--quiet"]) == 0
    ev = json.loads((tmp_path / "tilted" / "evaluation.json").read_text())
    poc_auroc = next(r for r in summary["runs"] if r["name"] == "fvnce-power1.5-base")["metrics"]["auroc"]
    assert ev["auroc"] == pytest.approx(poc_auroc, abs=1e-9)


def test_the_operating_point_gives_counts_beside_its_rates_and_never_a_rounded_0_or_100_percent():
    from fvnce.cli.text import operating_text, pct, share

    op = {"false_alarms_per_1000": 0.0, "false_alarms": 0, "n_normal": 809, "detection_rate": 26999 / 27000,
          "detected": 26999, "n_anomaly": 27000}
    assert operating_text(op, {"rate": 0.01}) == (
        "at the alarm threshold (target 1 %): 0 false alarms per 1,000 normal test items (0 of 809), "
        "99.996 % of anomalies detected (26,999 of 27,000)")
    op = {"false_alarms_per_1000": 1000 * 2 / 809, "false_alarms": 2, "n_normal": 809, "detection_rate": 1.0,
          "detected": 27, "n_anomaly": 27}
    assert operating_text(op, {"rate": 0.05}) == (
        "at the alarm threshold (target 5 %): 2.47 false alarms per 1,000 normal test items (2 of 809), "
        "100 % of anomalies detected (27 of 27)")
    op = {"false_alarms_per_1000": None, "detection_rate": None, "alarms_per_1000": 12.0, "alarms": 3, "n_items": 250}
    assert operating_text(op, {"rate": 0.05}) == ("at the alarm threshold (target 5 %): 12 alarms per 1,000 test "
                                                  "items (3 of 250)")
    assert share(0.99999, 100.0) == "99.999" and share(2e-7, 100.0) == "0.00002" and share(1e-6, 1000.0) == "0.001"
    assert share(0.0, 1000.0) == "0" and share(1.0, 100.0) == "100" and pct(0.9999999) == "99.99999 %"
    assert operating_text(None, {"rate": 0.01}) is None and operating_text({"alarms_per_1000": None}, {"rate": 0.1}) \
        is None


def test_train_command_of_an_image_run_keeps_its_image_size_cell_type_and_start():
    """An image poc's production line: the size, the ELPV cell type and how the model starts
    are flags (without them the line would train on other pixels, or be refused)."""
    from fvnce.cli.train_line import train_command
    from fvnce.data import DataSpec
    from fvnce.runs import RunConfig

    rc = RunConfig(data=DataSpec(source="elpv", cell_type="poly", image_size=32), objective="fvnce",
                   objective_options={"rule": "kl", "exp_mode": "linear", "tau": 10.0}, model="linear_gaussian",
                   model_options={"z_dim": 128, "init": "pca"}, noise="diag_gaussian")
    cmd, note = train_command(rc, "again")
    assert note is None
    assert "--image-size 32" in cmd and "--cell-type poly" in cmd and "--init pca" in cmd
