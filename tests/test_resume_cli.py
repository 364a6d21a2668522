"""``fvnce train ... --resume``: the run's own command line with ``--resume`` appended is
accepted (and may train longer); a setting that differs from the saved one is refused
with one line naming it and both values."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from fvnce.cli import build_parser, main
from fvnce.cli.resume import NOT_SETTINGS, flag_paths





def _command(table, run, steps=20, lr="0.002"):
    return ["train", "--data", str(table), "--label", "status", "--normal", "ok", "--objective", "fvnce",
            "--rule", "power", "--alpha", "1.5", "--k", "2", "--noise", "diag_gaussian", "--z-dim", "2",
            "--lr", lr, "--batch-size", "32", "--seed", "4", "--alarm-rate", "0.05", "--steps", str(steps),
            "--out", str(run), "--quiet", "--no-eval"]


def _step(run) -> int:
    return int(torch.load(run / "checkpoint.pt", weights_only=True)["step"])


def test_the_exact_command_with_resume_is_accepted_and_can_train_longer(table, tmp_path):
    run = tmp_path / "run"
    assert main(_command(table, run)) == 0
    assert main(_command(table, run) + ["--resume"]) == 0  # nothing left to do: accepted all the same
    assert _step(run) == 20
    assert main(_command(table, run, steps=35) + ["--resume"]) == 0
    assert _step(run) == 35
    assert json.loads((run / "config.json").read_text())["run"]["train"]["lr"] == 0.002


def test_a_changed_setting_is_refused_naming_it_and_both_values(table, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_command(table, run)) == 0
    capsys.readouterr()
    before = (run / "checkpoint.pt").read_bytes()
    assert main(_command(table, run, steps=30, lr="0.01") + ["--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("fvnce: error: --resume continues the run with its saved settings, and --lr differs: saved "
                   "0.002, given 0.01 (only --steps or --epochs may change)")
    assert (run / "checkpoint.pt").read_bytes() == before and _step(run) == 20


@pytest.mark.parametrize("change,fragment", [
    (["--alpha", "1.25"], "--alpha differs: saved 1.5, given 1.25"),
    (["--noise", "kde"], "--noise differs: saved diag_gaussian, given kde"),
    (["--seed", "5"], "--seed differs: saved 4, given 5"),
    (["--split-seed", "9"], "--split-seed differs: saved 4, given 9"),
    (["--alarm-rate", "0.01"], "--alarm-rate differs: saved 0.05, given 0.01"),
    (["--contaminated"], "--contaminated differs: saved false, given true"),
    (["--transform", "none"], "--transform differs: saved auto, given none"),
    (["--no-binarize"], "--binarize/--no-binarize differs: saved unset, given false"),
    (["--device", "cpu"], "--device differs: saved auto, given cpu"),
])
def test_other_changes_are_refused_too(table, tmp_path, capsys, change, fragment):
    run = tmp_path / "run"
    assert main(_command(table, run)) == 0
    capsys.readouterr()
    assert main(["train", "--out", str(run), "--resume", *change]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err


def test_paths_are_compared_after_resolution(table, tmp_path, monkeypatch):
    monkeypatch.chdir(table.parent)
    run = tmp_path / "run"
    cmd = _command("sensors.csv", run)
    assert main(cmd) == 0
    cmd[cmd.index("sensors.csv")] = os.path.join(".", "..", table.parent.name, "sensors.csv")
    assert main(cmd + ["--steps", "25", "--resume"]) == 0 and _step(run) == 25
    assert main(["train", "--data", str(table), "--out", str(run), "--resume", "--quiet", "--no-eval"]) == 0


def test_a_config_file_is_compared_key_by_key(table, tmp_path, capsys):
    conf = tmp_path / "run.toml"
    conf.write_text(f'objective = "fvnce"\nnoise = "diag_gaussian"\n[objective_options]\nrule = "kl"\n'
                    f'[model_options]\nz_dim = 2\n[data]\nsource = "{table}"\nlabel = "status"\nnormal = "ok"\n'
                    '[train]\nsteps = 15\nlr = 0.003\nbatch_size = 32\n')
    run = tmp_path / "run"
    cmd = ["train", "--config", str(conf), "--out", str(run), "--quiet", "--no-eval"]
    assert main(cmd) == 0
    saved = json.loads((run / "config.json").read_text())["run"]
    assert saved["data"]["source"] == str(table) and saved["train"]["lr"] == 0.003  # the file's data, not digits
    assert main(cmd + ["--resume", "--steps", "20"]) == 0 and _step(run) == 20
    conf.write_text(conf.read_text().replace("lr = 0.003", "lr = 0.03"))
    capsys.readouterr()
    assert main(cmd + ["--resume"]) == 2
    assert f"train.lr (in {conf}) differs: saved 0.003, given 0.03" in capsys.readouterr().err


def test_every_train_option_is_a_compared_setting_or_named_as_none():
    parser = build_parser()
    train = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "train")[1]
    dests = {a.dest for a in train._actions if a.dest != "help"}
    assert dests == set(flag_paths()) | set(NOT_SETTINGS)


def test_resume_of_a_run_stopped_before_its_first_checkpoint_trains_it_from_step_0(table, tmp_path, capsys,
                                                                                   monkeypatch):
    """Killed before the first checkpoint, a run folder holds config.json, preprocess.json,
    noise.pt (and metrics.jsonl): --resume with the same settings trains it from step 0, and
    gives the run an uninterrupted command gives; other settings are refused as usual."""
    import fvnce.runs.training as training

    real = training.Trainer.fit

    def killed(self, *a, **kw):
        (self.run_dir / "metrics.jsonl").write_text('{"step": 1, "loss": 3.0}\n')
        raise KeyboardInterrupt  # as a SIGKILL would leave it: no checkpoint, no alarm threshold

    monkeypatch.setattr(training.Trainer, "fit", killed)
    run = tmp_path / "run"
    assert main(_command(table, run)) == 130
    monkeypatch.setattr(training.Trainer, "fit", real)
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "noise.pt", "preprocess.json"]
    capsys.readouterr()
    assert main(_command(table, run, lr="0.01") + ["--resume"]) == 2
    assert "--lr differs: saved 0.002, given 0.01" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "metrics.jsonl", "noise.pt", "preprocess.json"]
    assert main([a for a in _command(table, run) if a != "--quiet"] + ["--resume"]) == 0
    err = capsys.readouterr().err
    assert f"fvnce: {run} has no checkpoint yet (stopped before the first one): training it from step 0 with its " \
           "saved settings" in err
    whole = tmp_path / "whole"
    assert main(_command(table, whole)) == 0
    a, b = (torch.load(d / "checkpoint.pt", weights_only=True) for d in (run, whole))
    assert a["step"] == b["step"] == 20
    for name, value in b["model"].items():
        assert torch.equal(a["model"][name], value), name
    assert (run / "alarm.json").read_bytes() == (whole / "alarm.json").read_bytes()
    lines = [len((d / "metrics.jsonl").read_text().splitlines()) for d in (run, whole)]
    assert lines[0] == lines[1]
