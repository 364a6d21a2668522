"""Your own VAE (``--vae FILE.py:FUNCTION --vae-weights WEIGHTS.pt``, fvnce.user_vae):

* every mismatch is one line and exit 2, with nothing written: a module that cannot be
  imported, a function that returns the wrong things, a VAE that does not fit the data,
  weights that do not load;
* ``fvnce train`` starts from the given weights (a tilted run with the ``base`` noise keeps
  them exactly as its frozen base), keeps a copy of the module with its hash, reloads from
  the copy and refuses a changed copy;
* ``examples/plain_vae.py`` (a VAE written and trained in plain PyTorch) runs through the
  poc: its baseline row is that VAE, unchanged, with the test AUROC that evaluating the
  same weights directly gives (within Monte Carlo error), and every FVNCE run of the VAE
  family starts from it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fvnce.cli import main
from fvnce.errors import ConfigError
from fvnce.user_vae import USER_VAE_FILE, file_sha256, vae_spec

ROOT = Path(__file__).resolve().parents[1]

USER_MODULE = '''
import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.nn import functional as F

X_DIM, Z_DIM = 4, 2


class Enc(nn.Module):
    def __init__(self):
        super().__init__()
        self.h, self.loc, self.s = nn.Linear(X_DIM, 8), nn.Linear(8, Z_DIM), nn.Linear(8, Z_DIM)

    def forward(self, x):
        h = torch.tanh(self.h(x))
        return Independent(Normal(self.loc(h), F.softplus(self.s(h)) + 1e-3), 1)


class Dec(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(Z_DIM, 8), nn.Tanh(), nn.Linear(8, X_DIM))
        self.raw = nn.Parameter(torch.zeros(X_DIM))

    def forward(self, z):
        return Independent(Normal(self.net(z), F.softplus(self.raw) + 1e-3), 1)


class TensorEncoder(nn.Module):
    def forward(self, x):
        return x


class PerFeature(Dec):
    def forward(self, z):
        return Normal(self.net(z), 1.0)


def build():
    return Enc(), Dec()


def one_module():
    return (Enc(),)


def tensor_encoder():
    return TensorEncoder(), Dec()


def per_feature_decoder():
    return Enc(), PerFeature()


def raises():
    raise RuntimeError("no GPU here")
'''


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("user_vae")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(240, 4)) @ rng.normal(size=(4, 4))
    status = np.where(np.arange(240) % 12 == 0, "bad", "ok")
    x[status == "bad"] += 4.0
    with open(d / "t.csv", "w") as fh:
        fh.write("a,b,c,d,status\n")
        for row, s in zip(x, status):
            fh.write(",".join(f"{v:.6f}" for v in row) + f",{s}\n")
    (d / "m.py").write_text(USER_MODULE)
    (d / "broken.py").write_text("import not_a_module_anywhere\n")
    spec = importlib.util.spec_from_file_location("user_module_for_test", d / "m.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.manual_seed(0)
    enc, dec = mod.build()
    torch.save({"encoder": enc.state_dict(), "decoder": dec.state_dict()}, d / "w.pt")
    torch.save({"encoder": enc.state_dict()}, d / "no_decoder.pt")
    wrong = dict(dec.state_dict())
    wrong["raw"] = torch.zeros(7)
    torch.save({"encoder": enc.state_dict(), "decoder": wrong}, d / "wrong_shape.pt")
    (d / "junk.pt").write_bytes(b"not a torch file")
    return d


def _train(files, out, *extra, vae="m.py:build", weights="w.pt"):
    return main(["train", "--data", str(files / "t.csv"), "--label", "status", "--normal", "ok",
                 "--vae", str(files / vae), "--vae-weights", str(files / weights), "--steps", "5", "--quiet",
                 "--out", str(out), *extra])


@pytest.mark.parametrize("vae,weights,extra,message", [
    ("broken.py:build", "w.pt", [], "cannot import"),
    ("m.py:nothing", "w.pt", [], "has no function 'nothing'"),
    ("m.py:one_module", "w.pt", [], "must return (encoder, decoder), two torch.nn.Modules; got a tuple of 1"),
    ("m.py:raises", "w.pt", [], "calling raises() failed (RuntimeError: no GPU here)"),
    ("m.py:tensor_encoder", "w.pt", [], "TensorEncoder"),
    ("m.py:build", "no_decoder.pt", [], "must hold {'encoder': state_dict, 'decoder': state_dict}"),
    ("m.py:build", "wrong_shape.pt", [], "its decoder weights do not fit"),
    ("m.py:build", "junk.pt", [], "cannot read it as plain tensors"),
    ("m.py:build", "w.pt", ["--features", "a,b,c"], "a forward pass on 8 rows of 3 features failed"),
    ("m.py:per_feature_decoder", "w.pt", [], "log_prob(x) on 8 rows of 4 features has shape (2, 8, 4)"),
    ("m.py:build", "w.pt", ["--z-dim", "3"], "fixes its own architecture; leave out z-dim"),
    ("m.py:build", "w.pt", ["--model", "rbm"], "--model rbm cannot be combined"),
])
def test_mismatches_are_one_line_and_exit_2(files, tmp_path, capsys, vae, weights, extra, message):
    out = tmp_path / "run"
    assert _train(files, out, *extra, vae=vae, weights=weights) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fvnce: error: ") and message in err[-1], err
    assert "Traceback" not in "\n".join(err)
    assert not out.exists()


def test_the_option_itself_is_checked():
    with pytest.raises(ConfigError, match="FILE.py:FUNCTION"):
        vae_spec("model.py", "w.pt")
    with pytest.raises(ConfigError, match="not found"):
        vae_spec("/nowhere/model.py:build", "w.pt")
    with pytest.raises(ConfigError, match="--vae-weights needs --vae"):
        vae_spec(None, "w.pt")
    with pytest.raises(ConfigError, match="--vae needs --vae-weights"):
        vae_spec(__file__ + ":build", None)


def test_train_starts_from_the_weights_and_reloads_from_its_copy(files, tmp_path, capsys):
    from fvnce.runs import load_run

    out = tmp_path / "run"
    assert _train(files, out, "--objective", "fvnce", "--noise", "base") == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["run"]["vae"] == {"file": str(files / "m.py"), "function": "build", "weights": str(files / "w.pt"),
                                 "sha256": file_sha256(files / "m.py")}
    assert cfg["model"]["name"] == "tilted_vae" and cfg["run"]["data"]["transform"] == "none"
    assert file_sha256(out / USER_VAE_FILE) == file_sha256(files / "m.py")
    run = load_run(out)
    given = torch.load(files / "w.pt", weights_only=True)
    # the frozen base (the base noise) is the given VAE, exactly; the encoder started from it and trained
    for key, value in given["decoder"].items():
        assert torch.equal(run.model.base.decoder.state_dict()[key], value), key
    assert type(run.model.base).__name__ == "UserVAE" and run.noise.vae is run.model.base
    assert run.model.tilt is not None
    # reloading imports the run's copy; a changed copy is refused
    assert main(["evaluate", str(out), "--quiet"]) == 0
    (out / USER_VAE_FILE).write_text(USER_MODULE + "\n# edited\n")
    capsys.readouterr()
    assert main(["evaluate", str(out)]) == 2
    assert "has changed since it was recorded" in capsys.readouterr().err


def test_resume_does_not_take_another_vae(files, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(files, out, "--objective", "elbo") == 0
    capsys.readouterr()
    assert main(["train", "--out", str(out), "--resume", "--vae", str(files / "m.py:build"), "--quiet"]) == 2
    assert "leave out --vae" in capsys.readouterr().err
    assert main(["train", "--out", str(out), "--resume", "--steps", "8", "--quiet"]) == 0


# -- the example: a VAE in plain PyTorch, through the poc ------------------------------------
@pytest.fixture(scope="module")
def example(tmp_path_factory):
    d = tmp_path_factory.mktemp("plain_vae")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "plain_vae.py"), "--out", str(d), "--quick"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fvnce poc --data" in proc.stdout
    out = d / "poc"
    assert main(["poc", "--data", str(d / "poc.csv"), "--label", "diagnosis", "--normal", "benign",
                 "--vae", str(ROOT / "examples" / "plain_vae.py:build"), "--vae-weights", str(d / "vae.pt"),
                 "--budget", "20", "--rules", "kl", "--noises", "base,full_gaussian", "--mixtures", "none",
                 "--no-baselines", "--learning-curve", "0.5", "--cost-false-alarm", "1", "--cost-miss", "10",
                 "--out", str(out), "--quiet"]) == 0
    spec = importlib.util.spec_from_file_location("plain_vae_example", ROOT / "examples" / "plain_vae.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return d, out, json.loads((out / "summary.json").read_text()), mod


def test_the_baseline_row_is_the_users_vae_unchanged(example):
    d, out, summary, _ = example
    src = summary["vae_source"]
    assert src == {"file": str(ROOT / "examples" / "plain_vae.py"), "function": "build", "weights": str(d / "vae.pt"),
                   "sha256": file_sha256(ROOT / "examples" / "plain_vae.py")}
    given = torch.load(d / "vae.pt", weights_only=True)
    best = torch.load(out / "runs" / "elbo-vae" / "best.pt", weights_only=True)
    assert best["step"] == 0  # not trained
    for key, value in given["decoder"].items():
        assert torch.equal(best["model"][f"decoder.{key}"], value), key
    for key, value in given["encoder"].items():
        assert torch.equal(best["encoder"][key], value), key


def test_the_poc_auroc_of_the_vae_is_what_direct_evaluation_gives(example):
    d, out, summary, mod = example
    from fvnce.data import DataSpec, load_dataset

    ds = load_dataset(DataSpec.from_dict(summary["data"]["spec"]))
    enc, dec = mod.build()
    w = torch.load(d / "vae.pt", weights_only=True)
    enc.load_state_dict(w["encoder"]), dec.load_state_dict(w["decoder"])
    labels = ds.test_labels.numpy()
    # the same estimate (IWAE, the poc's 32 samples per row) with other random draws: its spread is the MC error
    direct = [roc_auc_score(labels, mod.anomaly_scores(enc, dec, ds.test.numpy(), k=32, seed=s)) for s in range(8)]
    vae = next(r for r in summary["runs"] if r["name"] == "elbo-vae")
    mc = max(float(np.std(direct)), 1.0 / (labels.sum() * (1 - labels).sum()))  # at least one pair of rows
    assert abs(vae["metrics"]["auroc"] - np.mean(direct)) <= 4 * mc + 1e-9, (vae["metrics"]["auroc"], direct)


def test_every_fvnce_run_starts_from_the_users_vae(example):
    d, out, summary, _ = example
    fv = [r for r in summary["runs"] if r["objective"] == "fvnce"]
    assert {r["name"] for r in fv} == {"fvnce-kl-base", "fvnce-kl-full_gaussian"}
    given = torch.load(d / "vae.pt", weights_only=True)
    for r in fv:
        assert r["started_from"] == "elbo-vae" and r["status"] != "failed", r
        cfg = json.loads((out / r["run_dir"] / "config.json").read_text())
        assert cfg["run"]["vae"]["sha256"] == summary["vae_source"]["sha256"] and cfg["model"]["name"] == "tilted_vae"
        assert (out / r["run_dir"] / USER_VAE_FILE).is_file()
    base = torch.load(out / "runs" / "fvnce-kl-base" / "best.pt", weights_only=True)
    for key, value in given["decoder"].items():  # frozen under the base noise: still the user's VAE
        assert torch.equal(base["model"][f"base.decoder.{key}"], value), key


def test_the_example_poc_has_its_learning_curve_and_cost(example):
    d, out, summary, _ = example
    curve = summary["learning_curve"]
    if summary["recommended"]["run"] == "elbo-vae":  # the user's VAE as it is: fvnce trained nothing to retrain
        assert curve == [] and summary["learning_curve_verdict"] == (
            "No learning curve: the recommendation is your own VAE as it is, which fvnce did not "
            "train on these rows.")
    else:
        assert [p["fraction"] for p in curve] == [0.5, 1.0] and curve[0]["rows"] < curve[1]["rows"]
        assert all(p["auroc_se"] is not None and p["log_likelihood_se"] is not None for p in curve)
        assert summary["learning_curve_verdict"].startswith("From ")
        assert summary["learning_curve_note"].endswith("starting from your VAE as it is")
    cost = summary["recommended"]["cost"]
    assert cost["available"] and cost["share_source"].startswith("validation labels")
    assert cost["validation"]["cost_per_1000"] <= cost["alarm_rate_point"]["validation"]["cost_per_1000"]
    text = (out / "report.html").read_text()
    vae = text.split('<section id="your-vae">')[1].split("</section>")[0]
    assert summary["vae_source"]["sha256"] in vae and "elbo-vae" in vae and "not trained" in vae
    assert '<section id="learning-curve">' in text and "No learning curve" in text or "training rows" in text
    section = text.split('<section id="cost">')[1].split("</section>")[0]
    assert "alarm-rate threshold" in section and "never alarm" in section and "always alarm" in section
