"""End-to-end reliability of the command line: bad input, interruption, divergence,
untrusted files, no network.

Every bad input must end with exit code 2, exactly one line on stderr that names the
problem, no traceback, and no file created or changed (the whole working folder is
compared before and after).
"""

from __future__ import annotations

import ast
import os
import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fvnce.cli import main

from _subprocs import signal_after_first_checkpoint
from conftest import run_cli

SRC = Path(__file__).resolve().parents[1] / "src" / "fvnce"
FAST = ["--steps", "3", "--batch-size", "32", "--z-dim", "2", "--quiet", "--no-eval"]


# -- helpers ------------------------------------------------------------------------------
def cli(argv) -> int:
    return main([str(a) for a in argv])


def snapshot(*roots: Path) -> dict:
    """Every file and folder under ``roots``: files with size and modification time."""
    snap = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            st = p.stat()
            snap[str(p)] = "dir" if p.is_dir() else (st.st_size, st.st_mtime_ns)
    return snap


def write_csv(path: Path, header: list[str], rows) -> Path:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(",".join(header) + "\n")
        for r in rows:
            fh.write(",".join(str(v) for v in r) + "\n")
    return path


def table(n: int = 120, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 1))
    return np.hstack([z + 0.3 * rng.normal(size=(n, 1)), 2 * z + 0.3 * rng.normal(size=(n, 1)),
                      rng.normal(size=(n, 1))])


# -- shared data and trained runs (built once per worker) -----------------------------------
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    x = table()
    labels = np.where(np.arange(len(x)) % 10 == 0, "bad", "ok")
    write_csv(root / "good.csv", ["a", "b", "c", "status"], [[f"{v:.5f}" for v in r] + [lab]
                                                                for r, lab in zip(x, labels)])
    write_csv(root / "plain.csv", ["a", "b", "c"], [[f"{v:.5f}" for v in r] for r in x])
    (root / "empty.csv").write_bytes(b"")
    write_csv(root / "header.csv", ["a", "b", "c"], [])
    write_csv(root / "one.csv", ["a", "b", "c"], [[1, 2, 3]])
    (root / "data.txt").write_text("a,b\n1,2\n")
    (root / "binary.csv").write_bytes(b"\xff\xfe\x00\x81" * 64)
    write_csv(root / "text.csv", ["a", "b", "c"],
              [[r[0], "broken" if i == 5 else r[1], r[2]] for i, r in enumerate(x)])
    write_csv(root / "nan.csv", ["a", "b", "c"],
              [[r[0], "nan" if i % 20 == 3 else r[1], "inf" if i == 7 else r[2]] for i, r in enumerate(x)])
    write_csv(root / "const.csv", ["a", "b", "c"], [[r[0], 5, r[2]] for r in x])
    write_csv(root / "other_cols.csv", ["a", "b", "d"], [[f"{v:.5f}" for v in r] for r in x])
    rng = np.random.default_rng(1)
    np.save(root / "img.npy", rng.integers(0, 16, size=(150, 6, 6)).astype(np.float32))
    np.save(root / "img_wrong.npy", rng.integers(0, 16, size=(20, 5, 7)).astype(np.float32))
    np.save(root / "flat_wrong.npy", rng.normal(size=(20, 10)))
    np.save(root / "objects.npy", np.array([{"a": 1}] * 5, dtype=object), allow_pickle=True)
    (root / "a_folder").mkdir()
    # trained runs: tabular (with labels) and images
    run, img = root / "run", root / "imgrun"
    assert cli(["train", "--data", root / "good.csv", "--label", "status", "--normal", "ok", "--out", run,
                 *FAST]) == 0
    assert cli(["train", "--data", root / "img.npy", "--objective", "elbo", "--out", img, *FAST]) == 0
    return root


def _copy_run(assets: Path, tmp: Path, name: str = "run") -> Path:
    dst = tmp / f"copy_{name}"
    shutil.copytree(assets / name, dst)
    (dst / "best.pt").unlink(missing_ok=True)  # so that checkpoint.pt is the file read
    return dst


def _truncate(run: Path) -> None:
    data = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(data[: len(data) // 3])


def _version_999(run: Path) -> None:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    ckpt["version"] = 999
    torch.save(ckpt, run / "checkpoint.pt")


class _Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(run: Path, marker: Path) -> None:
    _Evil.marker = str(marker)
    torch.save({"format": "fvnce-checkpoint", "version": 1, "step": 1, "model": _Evil()}, run / "checkpoint.pt")


# -- the table ------------------------------------------------------------------------------
# Each case: (id, setup) with setup(assets, tmp) -> (argv, fragments).  The argv may
# refer to files in ``assets`` (shared) or create files in ``tmp`` (the working folder).
def _case(id_, setup, marks=()):
    return pytest.param(setup, id=id_, marks=marks)


def _train(data, *extra, out="OUT"):
    return ["train", "--data", data, *extra, "--out", out, *FAST]


def _busy_folder(t: Path) -> Path:
    (t / "busy").mkdir()
    (t / "busy" / "notes.txt").write_text("not a run")
    return t / "busy"


CASES = [
    # files
    _case("missing-file", lambda a, t: (_train("missing.csv"), ["file not found", "missing.csv"])),
    _case("path-is-a-directory", lambda a, t: (_train(a / "a_folder"), ["a_folder", "is a directory"])),
    _case("unreadable-bytes", lambda a, t: (_train(a / "binary.csv"), ["binary.csv"])),
    _case("unknown-extension", lambda a, t: (_train(a / "data.txt"), ["unsupported file type '.txt'", ".csv"])),
    _case("unknown-builtin", lambda a, t: (_train("nosuchset"), ["unknown data set 'nosuchset'", "digits"])),
    _case("empty-file", lambda a, t: (_train(a / "empty.csv"), ["empty file", "empty.csv"])),
    _case("header-only", lambda a, t: (_train(a / "header.csv"), ["header.csv", "no data rows"])),
    _case("one-row", lambda a, t: (_train(a / "one.csv"), ["too few rows", "one.csv", "1 normal"])),
    _case("non-numeric-column", lambda a, t: (_train(a / "text.csv"),
                                              ["column 'b'", "text.csv", "not numeric", "'broken'", "row 6"])),
    _case("objects-npy", lambda a, t: (_train(a / "objects.npy"), ["objects.npy", "Python objects"])),
    _case("nan-and-inf", lambda a, t: (_train(a / "nan.csv"),
                                       ["nan.csv", "'b' (6 NaN", "'c' (1 inf", "--drop-missing", "--impute"])),
    _case("missing-label-column", lambda a, t: (_train(a / "good.csv", "--label", "nope"),
                                                ["label column 'nope' not found", "'status'"])),
    _case("missing-normal-value", lambda a, t: (_train(a / "good.csv", "--label", "status", "--normal", "nope"),
                                                ["normal value 'nope'", "'ok'", "'bad'"])),
    _case("missing-feature", lambda a, t: (_train(a / "good.csv", "--features", "a,zz"),
                                           ["'zz'", "not found"])),
    # scoring time
    _case("score-columns-differ", lambda a, t: (
        ["score", a / "run", "--data", a / "other_cols.csv", "--out", "SCORES.csv"],
        ["do not match the training columns", "'c'", "'d'"])),
    _case("evaluate-columns-differ", lambda a, t: (
        ["evaluate", a / "run", "--data", a / "other_cols.csv"], ["do not match the training columns"])),
    _case("score-nan", lambda a, t: (["score", a / "run", "--data", a / "nan.csv", "--out", "SCORES.csv"],
                                     ["'b' (6 NaN", "--impute"])),
    _case("image-wrong-shape", lambda a, t: (
        ["score", a / "imgrun", "--data", a / "img_wrong.npy", "--out", "SCORES.csv"], ["5x7", "6x6"])),
    _case("image-wrong-columns", lambda a, t: (
        ["score", a / "imgrun", "--data", a / "flat_wrong.npy", "--out", "SCORES.csv"], ["10 column", "36"])),
    _case("score-out-folder-missing", lambda a, t: (
        ["score", a / "run", "--data", a / "good.csv", "--out", "nodir/SCORES.csv"], ["folder nodir does not exist"])),
    # hyper-parameters
    _case("alpha-above-2", lambda a, t: (_train(a / "plain.csv", "--rule", "power", "--alpha", "2.5"),
                                         ["alpha=2.5", "not convex"])),
    _case("alpha-below-1", lambda a, t: (_train(a / "plain.csv", "--rule", "power", "--alpha", "0.5"),
                                         ["alpha=0.5", "not convex"])),
    _case("alpha-without-power", lambda a, t: (_train(a / "plain.csv", "--alpha", "1.5"), ["--rule power"])),
    _case("negative-k", lambda a, t: (_train(a / "plain.csv", "--k", "-1"), ["k must be a positive integer"])),
    _case("negative-nu", lambda a, t: (_train(a / "plain.csv", "--nu", "-1"), ["nu must be a positive integer"])),
    _case("negative-steps", lambda a, t: (["train", "--data", a / "plain.csv", "--steps", "-1", "--out", "OUT",
                                           "--quiet"], ["steps must be a positive integer"])),
    _case("negative-z-dim", lambda a, t: (["train", "--data", a / "plain.csv", "--z-dim", "-1", "--out", "OUT"],
                                          ["z-dim must be a positive"])),
    _case("zero-checkpoint-every", lambda a, t: (_train(a / "plain.csv", "--checkpoint-every", "0"),
                                                 ["checkpoint_every must be a positive integer"])),
    _case("nan-lr", lambda a, t: (_train(a / "plain.csv", "--lr", "nan"), ["lr must be a positive number"])),
    _case("unknown-rule", lambda a, t: (_train(a / "plain.csv", "--rule", "bogus"),
                                        ["invalid choice: 'bogus'", "'kl'", "'power'", "'shifted_log'"])),
    _case("unknown-objective", lambda a, t: (_train(a / "plain.csv", "--objective", "bogus"),
                                             ["invalid choice: 'bogus'", "'fvnce'", "'elbo'", "'vnce'"])),
    _case("unknown-exp-mode", lambda a, t: (_train(a / "plain.csv", "--exp-mode", "bogus"),
                                            ["invalid choice", "'linear'"])),
    _case("unknown-noise", lambda a, t: (_train(a / "plain.csv", "--noise", "bogus"),
                                         ["unknown noise 'bogus'", "full_gaussian", "kde", "module:callable"])),
    _case("unknown-model", lambda a, t: (_train(a / "plain.csv", "--model", "bogus"),
                                         ["unknown model 'bogus'", "vae", "rbm"])),
    _case("plugin-module-missing", lambda a, t: (_train(a / "plain.csv", "--noise", "no_such_mod_xyz:f"),
                                                 ["no_such_mod_xyz", "cannot import"])),
    _case("plugin-not-callable", lambda a, t: (_train(a / "plain.csv", "--noise", "os:sep"),
                                               ["'sep' is not callable"])),
    _case("plugin-raises", lambda a, t: (_train(a / "plain.csv", "--noise", "os:getcwd"),
                                         ["os:getcwd", "raised TypeError"])),
    _case("cuda-unavailable", lambda a, t: (_train(a / "plain.csv", "--device", "cuda"), ["CUDA is not available"]),
          marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
    _case("config-missing", lambda a, t: (["train", "--config", "nope.toml", "--out", "OUT"],
                                          ["config file not found"])),
    _case("out-is-a-file", lambda a, t: (_train(a / "plain.csv", out=a / "plain.csv"), ["is not a directory"])),
    _case("out-under-a-file", lambda a, t: (_train(a / "plain.csv", out=a / "plain.csv" / "sub"),
                                            ["is a file, not a directory"])),
    _case("out-not-a-run", lambda a, t: (_train(a / "plain.csv", out=_busy_folder(t)), ["not an fvnce run"])),
    _case("poc-unknown-noise", lambda a, t: (["poc", "--data", a / "good.csv", "--label", "status", "--normal", "ok",
                                              "--noises", "bogus", "--out", "POC"], ["unknown noise 'bogus'"])),
    _case("poc-bad-plugin", lambda a, t: (["poc", "--data", a / "good.csv", "--label", "status", "--normal", "ok",
                                           "--noises", "kde,no_such_mod_xyz:f", "--budget", "5", "--out", "POC",
                                           "--quiet"], ["no_such_mod_xyz", "cannot import"])),
    _case("poc-bad-rule", lambda a, t: (["poc", "--data", a / "good.csv", "--rules", "power:3", "--out", "POC"],
                                        ["power:3", "not convex"])),
    _case("poc-bad-budget", lambda a, t: (["poc", "--data", a / "good.csv", "--budget", "-3", "--out", "POC"],
                                          ["budget"])),
    _case("poc-negative-z-dim", lambda a, t: (["poc", "--data", a / "good.csv", "--label", "status", "--normal",
                                               "ok", "--z-dim", "-1", "--budget", "5", "--out", "POC"],
                                              ["z-dim must be a positive"])),
    # run directories and checkpoints
    _case("evaluate-not-a-run", lambda a, t: (["evaluate", a / "a_folder"], ["not an fvnce run directory"])),
    _case("evaluate-missing-run", lambda a, t: (["evaluate", "nowhere"], ["run directory not found"])),
    _case("resume-not-a-run", lambda a, t: (["train", "--out", a / "a_folder", "--resume", "--quiet"],
                                            ["not an fvnce run directory"])),
    _case("sample-bad-n", lambda a, t: (["sample", a / "run", "--n", "0", "--out", "S.npy"], ["--n must be"])),
    _case("sample-bad-suffix", lambda a, t: (["sample", a / "run", "--out", "S.txt"], [".npy or .png"])),
    _case("truncated-checkpoint", lambda a, t: (
        _truncate(_copy_run(a, t)) or ["evaluate", t / "copy_run"], ["checkpoint.pt", "corrupt or truncated"])),
    _case("truncated-checkpoint-resume", lambda a, t: (
        _truncate(_copy_run(a, t)) or ["train", "--out", t / "copy_run", "--resume"],
        ["checkpoint.pt", "corrupt or truncated"])),
    _case("truncated-checkpoint-score", lambda a, t: (
        _truncate(_copy_run(a, t)) or ["score", t / "copy_run", "--data", a / "good.csv", "--out", "SCORES.csv"],
        ["corrupt or truncated"])),
    _case("garbage-checkpoint", lambda a, t: (
        (_copy_run(a, t) / "checkpoint.pt").write_bytes(b"garbage\n" * 10) and ["evaluate", t / "copy_run"],
        ["checkpoint.pt", "corrupt"])),
    _case("corrupt-noise-file-resume", lambda a, t: (
        (_copy_run(a, t) / "noise.pt").write_bytes(b"junk") and ["train", "--out", t / "copy_run", "--resume"],
        ["noise.pt", "corrupt"])),
    _case("corrupt-config", lambda a, t: (
        (_copy_run(a, t) / "config.json").write_text('{"run": ') and ["evaluate", t / "copy_run"],
        ["config.json is corrupt"])),
    _case("incompatible-version", lambda a, t: (
        _version_999(_copy_run(a, t)) or ["evaluate", t / "copy_run"], ["checkpoint version 999", "version 1"])),
    _case("incompatible-version-resume", lambda a, t: (
        _version_999(_copy_run(a, t)) or ["train", "--out", t / "copy_run", "--resume", "--quiet"],
        ["checkpoint version 999"])),
    _case("crafted-pickle", lambda a, t: (
        _evil(_copy_run(a, t), t.parent / f"{t.name}_PWNED") or ["evaluate", t / "copy_run"],
        ["refusing to load", "executable objects"])),
    _case("crafted-pickle-resume", lambda a, t: (
        _evil(_copy_run(a, t), t.parent / f"{t.name}_PWNED") or ["train", "--out", t / "copy_run", "--resume"],
        ["refusing to load"])),
]


@pytest.mark.parametrize("setup", CASES)
def test_bad_input_one_line_exit_2_nothing_written(setup, assets, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv, fragments = setup(assets, work)
    before = snapshot(work, assets)
    rc, out, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1, err
    assert lines[0].startswith("fvnce: error: ") and "Traceback" not in err
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])
    assert snapshot(work, assets) == before, "a failed command created or changed files"
    assert not (tmp_path / "work_PWNED").exists(), "a crafted checkpoint ran code"


# -- what the messages offer works ------------------------------------------------------------
@pytest.mark.parametrize("flag,note", [("--drop-missing", "dropped 7 row(s)"),
                                       ("--impute", "imputed")])
def test_missing_value_options_work(flag, note, assets, tmp_path, capsys):
    rc, _, err = run_cli(["train", "--data", assets / "nan.csv", flag, "--out", tmp_path / "r",
                          *[f for f in FAST if f != "--quiet"]], capsys)
    assert rc == 0, err
    assert note in err
    assert (tmp_path / "r" / "checkpoint.pt").exists()


def test_constant_column_trains_and_says_so(assets, tmp_path, capsys):
    run = tmp_path / "r"
    rc, _, err = run_cli(["train", "--data", assets / "const.csv", "--out", run,
                          *[f for f in FAST if f not in ("--quiet", "--no-eval")]], capsys)
    assert rc == 0, err
    assert "'b' constant" in err and "Traceback" not in err
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    rc, _, err = run_cli(["score", run, "--data", assets / "const.csv", "--out", tmp_path / "s.csv",
                          "--quiet"], capsys)
    assert rc == 0, err
    scores = np.loadtxt(tmp_path / "s.csv", delimiter=",", skiprows=1)[:, 1]
    assert np.isfinite(scores).all()


def test_crafted_noise_file_is_not_executed(assets, tmp_path, capsys):
    run = _copy_run(assets, tmp_path)
    marker = tmp_path / "PWNED"
    _Evil.marker = str(marker)
    torch.save({"name": "full_gaussian", "x": _Evil()}, run / "noise.pt")
    for argv in (["evaluate", run], ["train", "--out", run, "--resume", "--quiet"]):
        rc, _, err = run_cli(argv, capsys)
        assert rc == 2 and "noise.pt" in err and len(err.strip().splitlines()) == 1, err
    assert not marker.exists()


# -- interruption: SIGKILL and SIGINT on a real `python -m fvnce train` -------------------------
SUB_STEPS = 600  # long enough after the first checkpoint (step 20) for a loaded machine to signal mid-run


def _train_argv(data: Path, out: Path) -> list[str]:
    return ["train", "--data", str(data), "--steps", str(SUB_STEPS), "--checkpoint-every", "20",
            "--batch-size", "32", "--z-dim", "2", "--seed", "3", "--quiet", "--no-eval", "--out", str(out)]


def _params(run: Path) -> dict:
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    return {("model", k): v for k, v in ckpt["model"].items()} | \
        {("encoder", k): v for k, v in (ckpt["encoder"] or {}).items()}


@pytest.fixture(scope="module")
def interrupted(assets, tmp_path_factory):
    """Two real CLI subprocesses, each stopped after its first checkpoint: one by SIGKILL,
    one by SIGINT (started together: interpreter start-up dominates)."""
    root = tmp_path_factory.mktemp("interrupt")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = {}
    for name in ("SIGKILL", "SIGINT"):
        run = root / name
        procs[name] = (run, subprocess.Popen([sys.executable, "-m", "fvnce", *_train_argv(assets / "plain.csv", run)],
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
                       getattr(signal, name))
    return signal_after_first_checkpoint(procs, delay=0.02)


@pytest.fixture(scope="module")
def reference(assets, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(_train_argv(assets / "plain.csv", run)) == 0
    finally:
        torch.set_num_threads(threads)
    return _params(run)


def _resume_and_compare(run: Path, reference: dict, capsys) -> None:
    step = torch.load(run / "checkpoint.pt", weights_only=True)["step"]
    assert 20 <= step < SUB_STEPS, f"stopped at step {step}: not mid-run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc, _, err = run_cli(["train", "--out", run, "--resume", "--quiet", "--no-eval"], capsys)
    finally:
        torch.set_num_threads(threads)
    assert rc == 0, err
    got = _params(run)
    assert got.keys() == reference.keys()
    for key in reference:
        assert torch.equal(got[key], reference[key]), key
    assert torch.load(run / "checkpoint.pt", weights_only=True)["step"] == SUB_STEPS


def test_sigkill_mid_run_then_resume_is_bitwise_exact(interrupted, reference, capsys):
    run, rc, _, err = interrupted["SIGKILL"]
    assert rc == -signal.SIGKILL, err
    _resume_and_compare(run, reference, capsys)


def test_sigint_saves_says_how_to_resume_and_resume_is_exact(interrupted, reference, capsys):
    run, rc, _, err = interrupted["SIGINT"]
    assert rc == 130, err
    assert "Traceback" not in err
    assert "training interrupted at step" in err
    assert f"fvnce train --out {run} --resume" in err
    _resume_and_compare(run, reference, capsys)


# -- divergence: a far too narrow plug-in noise ------------------------------------------------
def test_narrow_noise_exact_overflow_switches_to_proper_stabilisation(assets, tmp_path, capsys, monkeypatch):
    """The exact power-2 data side overflows against a far too narrow noise; the trainer
    rolls back once, switches to the (proper) linear stabilisation, says so, records it,
    and the run completes."""
    mod = "fvnce_test_narrow_noise"
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent("""
        import torch
        from torch.distributions import Independent, Normal

        def narrow(data, seed=0):
            return Independent(Normal(data.mean(0), torch.full((data.shape[1],), 1e-3)), 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    rc, _, err = run_cli(["train", "--data", assets / "plain.csv", "--noise", f"{mod}:narrow", "--exp-mode",
                          "exact", "--rule", "power", "--alpha", "2", "--steps", "20", "--batch-size", "32",
                          "--z-dim", "2", "--no-eval", "--out", run], capsys)
    assert rc == 0, err
    lines = err.strip().splitlines()
    assert len([ln for ln in lines if "rolled back" in ln]) == 1, err
    assert any("stabilisation changed from exp_mode=exact" in ln and "proper" in ln for ln in lines), err
    records = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines()]
    changes = [r for r in records if r.get("event") == "stabilise"]
    assert len(changes) == 1 and changes[0]["to"]["exp_mode"] == "linear"


def test_divergence_with_broken_noise_retries_then_stops(assets, tmp_path, capsys, monkeypatch):
    """A plug-in noise whose density is zero at the data makes every step non-finite:
    three rollbacks, then one error line naming the cause."""
    mod = "fvnce_test_boxed_noise"
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent("""
        import torch
        from torch.distributions import Independent, Normal

        class Boxed(Independent):
            def log_prob(self, x):
                lp = super().log_prob(x)
                inside = (x - self.base_dist.loc).abs().amax(-1) < 1e-2
                return torch.where(inside, lp, torch.full_like(lp, -float("inf")))

        def boxed(data, seed=0):
            return Boxed(Normal(data.mean(0), torch.full((data.shape[1],), 1e-3)), 1)
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    run = tmp_path / "run"
    rc, _, err = run_cli(["train", "--data", assets / "plain.csv", "--noise", f"{mod}:boxed",
                          "--rule", "power", "--alpha", "2", "--steps", "20", "--batch-size", "32",
                          "--z-dim", "2", "--no-eval", "--out", run], capsys)
    assert rc == 2, err
    lines = err.strip().splitlines()
    retries = [ln for ln in lines if "rolled back" in ln]
    assert len(retries) == 3 and all("retry" in ln and "lr=" in ln for ln in retries), err
    errors = [ln for ln in lines if ln.startswith("fvnce: error:")]
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in err
    assert "diverged" in errors[0] and re.search(r"data_log_ratio|data-side|noise_log_ratio|noise-side", errors[0])
    assert "noise" in errors[0] and ("flow" in errors[0] or "closer" in errors[0])
    events = [ln for ln in (run / "metrics.jsonl").read_text().splitlines() if '"event": "retry"' in ln]
    assert len(events) == 3


def test_plugin_found_in_current_folder_without_sys_path(assets, tmp_path, capsys, monkeypatch):
    """`fvnce` (the console script) does not put the current folder on sys.path; a plug-in
    module there, named explicitly, must still be found (as the README shows)."""
    mod = "fvnce_test_cwd_noise"
    (tmp_path / f"{mod}.py").write_text(textwrap.dedent("""
        from torch.distributions import Independent, Normal

        def wide(data, seed=0):
            return Independent(Normal(data.mean(0), 2 * data.std(0)), 1)
    """))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    rc, _, err = run_cli(_train(assets / "plain.csv", "--noise", f"{mod}:wide", out=tmp_path / "r"), capsys)
    assert rc == 0, err
    assert str(tmp_path) not in sys.path


# -- untrusted text reaches the HTML report escaped ---------------------------------------------
def test_report_escapes_column_and_file_names(tmp_path, capsys):
    """A column named <script>..., constant so that a note names it in the poc report (the
    run report lists it as a feature), a file name with <b> and a label value with <i>."""
    evil_col = "<script>alert(1)</script>"
    data = tmp_path / "d<b>x.csv"
    x = table(160, seed=2)
    labels = np.where(np.arange(len(x)) % 8 == 0, "bad", "<i>ok</i>")
    write_csv(data, [evil_col, "b", "c", "status"], [[7, f"{r[1]:.5f}", f"{r[2]:.5f}", lab]
                                                     for r, lab in zip(x, labels)])
    out = tmp_path / "poc"
    rc, _, err = run_cli(["poc", "--data", data, "--label", "status", "--normal", "<i>ok</i>", "--budget", "20",
                          "--noises", "full_gaussian", "--rules", "kl", "--z-dim", "2", "--no-baselines",
                          "--out", out, "--quiet"], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["report", out / "runs" / "elbo-vae", "--out", tmp_path / "run.html"], capsys)
    assert rc == 0, err
    for page in (out / "report.html", tmp_path / "run.html"):
        html = page.read_text(encoding="utf-8")
        assert "<script>alert" not in html and "<i>ok" not in html and "d<b>x" not in html, page
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, page
        assert "d&lt;b&gt;x.csv" in html, page
    assert "&lt;i&gt;ok&lt;/i&gt;" in (out / "report.html").read_text(encoding="utf-8")


# -- no network -----------------------------------------------------------------------------
NETWORK_MODULES = {"socket", "urllib", "urllib.request", "urllib3", "http.client", "http", "requests", "httpx",
                   "aiohttp", "ftplib", "smtplib", "telnetlib", "xmlrpc", "websocket", "websockets"}


def test_no_network_code_in_the_package():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        for node in ast.walk(ast.parse(text)):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                if n in NETWORK_MODULES or n.split(".")[0] in {m.split(".")[0] for m in NETWORK_MODULES}:
                    bad.append(f"{path.name}: import {n}")
        for m in re.finditer(r"(urlopen|urlretrieve|download_url|load_state_dict_from_url|hf_hub|from_pretrained)",
                             text):
            bad.append(f"{path.name}: {m.group(0)}")
        for m in re.finditer(r"(?:https?|ftp)://[^\s\"')]+", text):
            line = text[:m.start()].rsplit("\n", 1)[-1].lstrip()
            if not line.startswith("#") and not _in_docstring(text, m.start()):
                bad.append(f"{path.name}: URL {m.group(0)}")
    assert not bad, bad


def _in_docstring(text: str, pos: int) -> bool:
    return text[:pos].count('"""') % 2 == 1


def test_training_runs_with_sockets_disabled(assets, tmp_path, capsys, monkeypatch):
    import socket

    def refuse(*a, **k):
        raise AssertionError("fvnce tried to open a network connection")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    rc, _, err = run_cli(["train", "--data", assets / "plain.csv", "--out", tmp_path / "r",
                          *[f for f in FAST if f != "--no-eval"]], capsys)
    assert rc == 0, err
    rc, _, err = run_cli(["report", tmp_path / "r", "--out", tmp_path / "r.html"], capsys)
    assert rc == 0, err
