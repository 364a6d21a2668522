"""What evaluation spends and what the poc trains on continuous images (fvnce.image_plan);
tables keep their settings exactly."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from fvnce import evaluate as ev
from fvnce import image_plan as ip
from fvnce.cli import main
from fvnce.cli.train_line import train_command
from fvnce.data import DataSpec
from fvnce.poc import BUDGETS, PocConfig, run_poc
from fvnce.runs import RunConfig, evaluate_run, train_run
from fvnce.train import TrainConfig

Image = pytest.importorskip("PIL.Image")


def make_folder(root, seed=0, n_train=24, n_good=6, n_bad=6, size=10):
    """A tiny image folder tree in the MVTec AD layout: smooth normal images, speckled anomalies."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(60, 180, size)[None, :] + np.zeros((size, 1))
    for where, n, bad in (("train/good", n_train, False), ("test/good", n_good, False), ("test/speck", n_bad, True)):
        (root / where).mkdir(parents=True)
        for i in range(n):
            a = ramp + rng.normal(0, 4, (size, size))
            if bad:
                a = a + rng.choice([0, 90], size=(size, size), p=[0.8, 0.2])
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / where / f"{i:03d}.png")
    return root


IMAGES = SimpleNamespace(image_shape=(1, 8, 8), binary=False)
TABLE = SimpleNamespace(image_shape=None, binary=False)


def test_continuous_images_only():
    assert ip.continuous_images((1, 64, 64), False) and ip.continuous_images((3, 8, 8), False)
    assert not ip.continuous_images((28, 28), False)  # built-in image sets as (H, W): tables' settings
    assert not ip.continuous_images((1, 8, 8), True)
    assert not ip.continuous_images(None, False)
    assert ip.log_z_samples((1, 64, 64), False) == ip.IMAGE_LOG_Z_SAMPLES == 2000
    assert ip.log_z_samples(None, False) == ip.log_z_samples((8, 8), True) == ip.LOG_Z_SAMPLES == 20000


def test_poc_plan_leaves_tables_as_they_were():
    cfg = ip.poc_plan(PocConfig(), TABLE)
    assert cfg.noises is None and cfg.budget == "default" and cfg.learning_curve == (0.25, 0.5)
    binary = ip.poc_plan(PocConfig(budget="quick"), SimpleNamespace(image_shape=(8, 8), binary=True))
    assert binary.noises is None and binary.budget == "quick" and binary.learning_curve == (0.25, 0.5)
    assert BUDGETS == {"quick": 150, "default": 800, "long": 4000}


def test_poc_plan_for_images_and_what_the_user_gives_is_kept():
    said = []
    cfg = ip.poc_plan(PocConfig(), IMAGES, said.append)
    assert cfg.noises == ["base"] and cfg.budget == 300 and cfg.learning_curve == (0.5,)
    assert len(said) == 1 and "noises base; 300 steps per run (budget default); learning curve at 0.5" in said[0]
    assert ip.poc_plan(PocConfig(budget="long"), IMAGES).budget == 1500
    assert ip.poc_plan(PocConfig(model="conv_vae"), IMAGES).noises is None  # no base: the defaults of tables
    given = PocConfig(noises=["kde"], budget=40, learning_curve=(0.25, 0.5))
    said.clear()
    cfg = ip.poc_plan(given, IMAGES, said.append)
    assert cfg.noises == ["kde"] and cfg.budget == 40 and cfg.learning_curve == (0.25, 0.5) and said == []
    assert given.learning_curve == (0.25, 0.5) and PocConfig().learning_curve is None  # a copy; input untouched


def test_linear_plan_on_continuous_images_only_and_below_the_rows():
    rows = SimpleNamespace(image_shape=(1, 32, 32), binary=False, dim=1024, train=np.zeros((412, 1024)))
    assert ip.linear_plan(PocConfig(), rows) == [ip.IMAGE_PPCA_DIMS] == [128]
    few = SimpleNamespace(image_shape=(1, 8, 8), binary=False, dim=64, train=np.zeros((24, 64)))
    assert ip.linear_plan(PocConfig(), few) == [22]
    tiny = SimpleNamespace(image_shape=(1, 2, 1), binary=False, dim=2, train=np.zeros((50, 2)))
    assert ip.linear_plan(PocConfig(), tiny) == [1]
    assert ip.linear_plan(PocConfig(model="vae"), rows) == []
    assert ip.linear_plan(PocConfig(), SimpleNamespace(image_shape=None, binary=False, dim=9,
                                                       train=np.zeros((50, 9)))) == []


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("img") / "parts")


@pytest.mark.parametrize("objective,model,noise,fn", [("elbo", "vae", "diag_gaussian", "noise_weight_report"),
                                                       ("fvnce", "tilted_vae", "diag_gaussian",
                                                        "estimate_log_partition")])
def test_evaluation_of_an_image_run_spends_the_image_sample_count(folder, tmp_path, monkeypatch, objective, model,
                                                                   noise, fn):
    train = TrainConfig(steps=2, batch_size=8, eval_every=1, checkpoint_every=2, progress=False)
    rc = RunConfig(data=DataSpec(source=str(folder), image_size=8), objective=objective, model=model,
                   model_options={"channels": 4}, noise=noise, train=train, eval_k=2)
    train_run(rc, tmp_path / "run")
    seen = []
    real = getattr(ev, fn)

    def spy(*args, **kwargs):
        seen.append(kwargs.get("n"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, fn, spy)
    out = evaluate_run(tmp_path / "run", n_samples=0)
    assert seen == [2000]
    assert out["auroc"] is not None and out["noise_term"] is not None


def test_poc_on_an_image_folder_runs_end_to_end_with_the_image_plan(folder, tmp_path):
    """The default plan on images (the base noise, one learning-curve
    fraction), conv models with the tilt's own width (a tilt option the VAE run must not get)."""
    cfg = PocConfig(data=DataSpec(source=str(folder), image_size=8), budget=4, rules=["kl"],
                    model_options={"channels": 4, "tilt_channels": 4},
                    train=TrainConfig(batch_size=8, progress=False))
    summary = run_poc(cfg, tmp_path / "poc", progress=False)
    assert summary["noises"] == ["base"] and summary["steps_per_run"] == 4
    names = [r["name"] for r in summary["runs"]]
    # the simple families start from the data (20 of the 24 images train, 64 pixels: PPCA keeps 18 dimensions)
    assert names == ["elbo-vae", "fvnce-kl-base", "fvnce-kl-diag_gaussian-mix1", "fvnce-kl-diag_gaussian-mix4",
                     "fvnce-kl-diag_gaussian-ppca18"]
    assert summary["mixtures"] == [1, 4] and summary["ppca"] == [18]
    for name, model, opts in (("fvnce-kl-diag_gaussian-mix4", "gaussian_mixture", {"components": 4, "init": "data"}),
                              ("fvnce-kl-diag_gaussian-ppca18", "linear_gaussian", {"z_dim": 18, "init": "pca"})):
        run = json.loads((tmp_path / "poc" / "runs" / name / "config.json").read_text())["run"]
        assert run["model"] == model and run["model_options"] == opts and run["noise"] == "diag_gaussian"
        assert run["train"]["lr"] == ip.IMAGE_SIMPLE_LR == 1e-4  # they start at a fit: small steps
        cmd, note = train_command(RunConfig.from_dict(run), "again")  # the production line says how it starts
        assert note is None and f"--init {opts['init']}" in cmd
    assert all(r["status"] != "failed" for r in summary["runs"]), [r["error"] for r in summary["runs"]]
    assert [p["fraction"] for p in summary["learning_curve"]][:-1] in ([0.5], [])
    assert summary["recommended"] is not None
    assert (tmp_path / "poc" / "report.html").exists()
    saved = json.loads((tmp_path / "poc" / "runs" / "fvnce-kl-base" / "config.json").read_text())
    assert saved["run"]["model_options"]["tilt_channels"] == 4


def test_poc_command_on_an_image_folder(folder, tmp_path, capsys):
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(folder), "--image-size", "8", "--budget", "3", "--rules", "kl",
                 "--learning-curve", "none", "--no-baselines", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "continuous images: noises base (the image plan" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["noises"] == ["base"] and summary["learning_curve"] == []
    assert (out / "report.html").exists()


def test_the_simple_families_never_take_your_own_vae(tmp_path):
    """With --vae the tilted runs sit over your VAE; the mixtures and PPCA are models of
    their own and must not be built from it."""
    from fvnce.poc.plan import make_plan, parse_rule

    vae = {"file": "m.py", "function": "build", "weights": "w.pt"}
    cfg = PocConfig(data=DataSpec(source="parts", image_size=8), rules=["kl"], vae=vae)
    ds = SimpleNamespace(image_shape=(1, 8, 8), binary=False, dim=64, train=np.zeros((40, 64)))
    plan = dict(make_plan(cfg, [parse_rule("kl")], ["base"], ds, 10, tmp_path))
    assert list(plan) == ["elbo-vae", "fvnce-kl-base", "fvnce-kl-diag_gaussian-mix1", "fvnce-kl-diag_gaussian-mix4",
                          "fvnce-kl-diag_gaussian-ppca38"]
    assert plan["elbo-vae"].vae == vae and plan["fvnce-kl-base"].vae == vae
    assert all(plan[n].vae is None for n in list(plan)[2:])
