"""``train`` and ``poc`` never replace an earlier output silently: a folder holding a run or a
poc is refused in one line (exit 2, nothing touched) unless ``--overwrite`` is given, and the
replacement is built beside the old output and swapped in at the end, so that an error or
Ctrl-C before then leaves the old output whole."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from fvnce.cli import main
from fvnce.errors import ConfigError
from fvnce.runs import RunConfig, train_run





def _train(table, run, *extra, lr="0.002"):
    return ["train", "--data", str(table), "--label", "status", "--normal", "ok", "--noise", "diag_gaussian",
            "--z-dim", "2", "--k", "2", "--lr", lr, "--batch-size", "32", "--steps", "6", "--out", str(run), "--quiet",
            *extra]


def _poc(table, out, *extra):
    return ["poc", "--data", str(table), "--label", "status", "--normal", "ok", "--budget", "6", "--rules", "kl",
            "--noises", "full_gaussian", "--mixtures", "none", "--no-baselines", "--out", str(out), "--quiet", *extra]


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}."))


@pytest.fixture(scope="module")
def finished(table, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "run"
    assert main(_train(table, run)) == 0
    return run


def test_a_finished_run_is_refused_and_kept_then_replaced_with_overwrite(finished, table, tmp_path, capsys):
    run = tmp_path / "run"
    (tmp_path / "run").mkdir()
    for name, data in _snapshot(finished).items():
        (run / name).write_bytes(data)
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_train(table, run, lr="0.01")) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fvnce: error: output directory {run} holds a finished run; give --overwrite to replace it, "
                   "or choose a new --out")
    assert _snapshot(run) == before
    assert main(_train(table, run, "--overwrite", lr="0.01")) == 0
    assert json.loads((run / "config.json").read_text())["run"]["train"]["lr"] == 0.01
    assert (run / "alarm.json").exists() and (run / "evaluation.json").exists() and _siblings(run) == []
    assert main(_train(table, run, "--overwrite", "--resume")) == 2
    assert "give one of them" in capsys.readouterr().err


@pytest.mark.parametrize("content,what", [
    ({"config.json": "{}", "noise.pt": ""}, "a partial run (no alarm threshold yet: stopped before it finished)"),
    ({"summary.json": "{}", "runs/elbo-vae/config.json": "{}"}, "a finished poc"),
    ({"runs/elbo-vae/config.json": "{}"}, "a partial poc (no summary.json: stopped before it finished)"),
    ({"union.json": "{}"}, "a union of runs"),
])
@pytest.mark.parametrize("command", ["train", "poc"])
def test_every_kind_of_earlier_output_is_refused_by_both_commands(table, tmp_path, capsys, content, what, command):
    out = tmp_path / "out"
    for name, text in content.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text)
    before = _snapshot(out)
    argv = _train(table, out) if command == "train" else _poc(table, out)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"fvnce: error: output directory {out} holds {what}; give --overwrite to replace it, or choose a " \
                  "new --out"
    assert _snapshot(out) == before


@pytest.mark.parametrize("command", ["train", "poc"])
def test_a_folder_of_other_files_is_refused_even_with_overwrite(table, tmp_path, capsys, command):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("months of work")
    argv = (_train(table, out) if command == "train" else _poc(table, out)) + ["--overwrite"]
    assert main(argv) == 2
    assert "exists and is not an fvnce run or poc; choose a new --out" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_the_python_api_refuses_and_replaces_like_the_command_line(finished, table, tmp_path):
    run = tmp_path / "run"
    assert main(_train(table, run)) == 0
    cfg = RunConfig.from_dict(json.loads((run / "config.json").read_text())["run"])
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="holds a finished run; give --overwrite"):
        train_run(cfg, run)
    assert _snapshot(run) == before
    cfg.train.lr = 0.005
    train_run(cfg, run, overwrite=True)
    assert json.loads((run / "config.json").read_text())["run"]["train"]["lr"] == 0.005 and _siblings(run) == []


def test_an_interrupted_overwrite_leaves_the_old_run_whole(finished, table, tmp_path, capsys, monkeypatch):
    """Ctrl-C while the new run trains (exit 130), and an error after it trained but before
    the swap: both leave the old run as it was and no half-built folder beside it."""
    import fvnce.runs.training as training
    from fvnce.train import TrainingInterrupted

    run = tmp_path / "run"
    assert main(_train(table, run)) == 0
    before = _snapshot(run)
    real_fit, seen = training.Trainer.fit, []

    def interrupted_fit(self, *a, **kw):
        seen.append(self.run_dir)
        assert (self.run_dir / "config.json").exists()  # the new run's files are written, beside the old one
        raise TrainingInterrupted.at(3, self.run_dir, True)

    monkeypatch.setattr(training.Trainer, "fit", interrupted_fit)
    capsys.readouterr()
    assert main(_train(table, run, "--overwrite", lr="0.01")) == 130
    err = capsys.readouterr().err
    assert seen == [run.parent / ".run.fvnce-new"]
    assert f"the new run was discarded and {run} was left as it was" in err and "--resume" not in err
    assert _snapshot(run) == before and _siblings(run) == []

    monkeypatch.setattr(training.Trainer, "fit", real_fit)

    def ctrl_c(*a, **kw):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "calibrate_alarm", ctrl_c)  # trained, not yet swapped in
    assert main(_train(table, run, "--overwrite", lr="0.01")) == 130
    assert _snapshot(run) == before and _siblings(run) == []


def test_a_failed_swap_puts_the_old_output_back(finished, table, tmp_path, monkeypatch):
    import fvnce.runs.output as output

    run = tmp_path / "run"
    assert main(_train(table, run)) == 0
    before = _snapshot(run)
    real, calls = os.replace, []

    def replace(src, dst):  # os.replace also writes every file atomically: only the folders count here
        if ".fvnce-" in Path(src).name + Path(dst).name:
            calls.append((Path(src).name, Path(dst).name))
            if len(calls) == 2:  # the old output renamed away, the new one not yet in
                raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(output.os, "replace", replace)
    assert main(_train(table, run, "--overwrite", lr="0.01")) == 2
    assert calls == [("run", ".run.fvnce-old"), (".run.fvnce-new", "run"), (".run.fvnce-old", "run")]
    assert _snapshot(run) == before and _siblings(run) == []


def test_poc_overwrite_swaps_in_a_poc_whose_runs_point_at_their_final_folder(table, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = Path("poc")  # relative, as users type it
    assert main(_poc(table, out)) == 0
    first = _snapshot(out)
    assert main(_poc(table, out, "--seed", "1")) == 2
    assert f"output directory {out} holds a finished poc; give --overwrite" in capsys.readouterr().err
    assert _snapshot(out) == first

    import fvnce.poc.grid
    from fvnce.train import TrainingInterrupted

    real, calls = fvnce.poc.grid.train_run, []

    def train_run(rc, run_dir, **kw):
        calls.append(run_dir)
        if len(calls) == 2:
            raise TrainingInterrupted.at(2, run_dir, True)
        return real(rc, run_dir, **kw)

    monkeypatch.setattr(fvnce.poc.grid, "train_run", train_run)
    assert main(_poc(table, out, "--seed", "1", "--overwrite")) == 130
    assert calls[0] == Path(".poc.fvnce-new") / "runs" / "elbo-vae"
    assert f"the new poc was discarded and {out} was left as it was" in capsys.readouterr().err
    assert _snapshot(out) == first and _siblings(out) == []
    monkeypatch.setattr(fvnce.poc.grid, "train_run", real)

    assert main(_poc(table, out, "--seed", "1", "--overwrite")) == 0
    assert _siblings(out) == [] and json.loads((out / "summary.json").read_text())["data"]["spec"]["seed"] == 1
    member = next(d for d in (out / "runs").iterdir() if d.name.startswith("fvnce-"))
    assert json.loads((member / "config.json").read_text())["run"]["init_from"] == str(out / "runs" / "elbo-vae")
    rec = json.loads((out / "summary.json").read_text())["recommended"]
    if "--init-from" in (rec.get("train_command") or ""):
        assert f"--init-from {(tmp_path / out / 'runs' / 'elbo-vae')}" in rec["train_command"]
    # a member of the swapped-in poc trains on
    assert main(["train", "--out", str(member), "--resume", "--steps", "9", "--quiet", "--no-eval"]) == 0
    import torch
    assert torch.load(member / "checkpoint.pt", weights_only=True)["step"] == 9


def test_a_run_is_not_started_from_weights_that_its_overwrite_would_delete(finished, table, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train(table, run)) == 0
    before = _snapshot(run)
    capsys.readouterr()
    assert main(_train(table, run, "--overwrite", "--init-from", str(run))) == 2
    assert f"--init-from {run} is in {run}, which --overwrite would replace" in capsys.readouterr().err
    assert _snapshot(run) == before
