"""benchmarks/images.py: its metrics against exact oracles, the choice of the recommended
run on validation data only, the one-class Fashion-MNIST split, and (slow) the quick
path end to end with well-formed JSON and markdown tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

import images as B  # noqa: E402


def test_metrics_threshold_from_validation_normals_only():
    # 200 validation normals 0..199: the 1 % split-conformal threshold is the
    # ceil(201 * 0.99) = 199th smallest, 198; the validation anomalies (1000) must not move it
    val = np.r_[np.arange(200.0), [1000.0, 1001.0]]
    y_val = np.r_[np.zeros(200), [1, 1]]
    test = np.array([197.0, 198.0, 199.0, 250.0, 198.5, 300.0])
    y_test = np.array([0, 0, 0, 0, 1, 1])
    m = B.metrics(val, y_val, test, y_test)
    assert m["threshold"] == 198.0 and m["n_calibration"] == 200
    assert m["false_alarm_rate"] == 0.5  # 199 and 250 are above 198
    assert m["detection_rate"] == 1.0
    assert m["auroc"] == 0.75  # 198.5 beats 2 of 4 normals, 300 beats all 4
    assert m["val_auroc"] == 1.0
    # average precision: ranks 300 (anomaly), 250, 199, 198.5 (anomaly): (1/1 + 2/4) / 2
    assert m["auprc"] == pytest.approx(0.75)


def test_metrics_without_validation_labels_calibrate_on_every_validation_row():
    m = B.metrics(np.arange(200.0), None, np.array([0.0, 500.0]), np.array([0, 1]))
    assert m["threshold"] == 198.0 and "val_auroc" not in m
    assert m["false_alarm_rate"] == 0.0 and m["detection_rate"] == 1.0


def test_recommend_chooses_by_validation_auroc_never_test():
    res = {"fvnce kl": {"val_auroc": 0.6, "auroc": 0.99}, "fvnce power1.5": {"val_auroc": 0.7, "auroc": 0.5},
           "fvnce kl mix1": {"val_auroc": 0.65, "auroc": 0.99}, "pca": {"val_auroc": 0.9, "auroc": 0.9}}
    assert B.recommend(res) == "fvnce power1.5"
    res["fvnce kl ppca"] = {"val_auroc": 0.8, "auroc": 0.1}  # every FVNCE family competes, baselines never
    assert B.recommend(res) == "fvnce kl ppca"
    assert B.recommend({"fvnce kl": {"auroc": 0.9}}) is None


def test_fvnce_method_names_per_family_and_rule():
    assert B.fvnce_methods(["kl", "power:1.5"], "tilt,mix1,ppca") == [
        "fvnce kl", "fvnce power1.5", "fvnce kl mix1", "fvnce power1.5 mix1", "fvnce kl ppca", "fvnce power1.5 ppca"]
    assert B.fvnce_methods(["kl"], ["ppca"]) == ["fvnce kl ppca"]


def test_rule_parsing_matches_the_poc():
    assert B.parse_rule("kl") == {"rule": "kl"}
    p = B.parse_rule("power:1.5")
    assert p["rule"] == "power" and list(p.values())[1] == 1.5
    assert B.rule_label("power:1.5") == "power1.5"


def test_summary_and_verdicts():
    def res(a):
        return {"auroc": a, "auprc": a, "false_alarm_rate": 0.01, "detection_rate": 0.5, "wall_s": 1.0}
    raw = [{"cell_type": "mono", "size": 32, "seed": s,
            "results": {"vae": res(0.7 + s / 100), "pca": res(0.9), "isolation_forest": res(0.8),
                        B.RECOMMENDED: {**res(0.85), "choice": "fvnce kl"}}} for s in range(2)]
    rows = B.summarise_elpv(raw, ["vae", B.RECOMMENDED, "pca", "isolation_forest"])
    vae = next(r for r in rows if r["method"] == "vae")
    assert vae["auroc"] == pytest.approx(0.705) and vae["seeds"] == 2
    assert next(r for r in rows if r["method"] == B.RECOMMENDED)["choices"] == "fvnce kl,fvnce kl"
    (v,) = B.verdicts(rows)
    assert v["best_baseline"] == "pca" and v["margin"] == pytest.approx(-0.05) and not v["fvnce_wins"]


def test_markdown_table_is_well_formed(capsys):
    text = B.md_table([{"a": 0.12345, "b": None}, {"a": 1234.4, "b": "x"}], ["a", "b"], "T")
    assert text.splitlines() == ["**T**", "", "| a | b |", "|---|---|", "| 0.123 |  |", "| 1234 | x |"]
    assert capsys.readouterr().out.strip() == text.strip()


def test_fashion_split_is_the_one_class_protocol():
    arrays = B.fashion_arrays()
    if arrays is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    x_tr, y_tr, x_te, y_te = arrays
    assert len(x_tr) == 60000 and len(x_te) == 10000 and (y_tr == 3).sum() == 6000
    ds = B.fashion_split(arrays, 3, 0, 0.1, None, None)
    assert len(ds.train) + len(ds.val) == 6000 and len(ds.val) == 600
    assert ds.image_shape == (1, 28, 28) and not ds.binary
    assert len(ds.test) == 10000 and int(ds.test_labels.sum()) == 9000
    # intensities divided by 255, not binarised or standardised; the test set unchanged in order
    np.testing.assert_allclose(ds.test.numpy(), x_te / 255.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ds.test_labels.numpy(), (y_te != 3).astype(np.float32))
    mine = {r.tobytes() for r in x_tr[y_tr == 3]}
    got = np.rint(ds.train.numpy() * 255).astype(np.uint8)
    assert all(r.tobytes() in mine for r in got[:50])


def test_help():
    proc = subprocess.run([sys.executable, str(BENCH / "images.py"), "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--fashion-classes" in proc.stdout


@pytest.mark.slow
def test_quick_run_writes_well_formed_output(tmp_path):
    out = tmp_path / "images.json"
    proc = subprocess.run([sys.executable, str(BENCH / "images.py"), "--quick", "--threads", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"machine", "config", "notes", "elpv", "fashion"} <= set(data)
    tables = [ln for ln in proc.stdout.splitlines() if ln.startswith("|")]
    assert tables and all(ln.endswith("|") for ln in tables)
    for part in ("elpv", "fashion"):
        if "skipped" in data[part]:
            continue
        md = data[part]["markdown"]
        for block in md.split("\n\n"):
            rows = [ln for ln in block.splitlines() if ln.startswith("|")]
            assert len({ln.count("|") for ln in rows}) <= 1, block
    if "skipped" not in data["elpv"]:
        methods = {r["method"] for r in data["elpv"]["rows"]}
        assert {"vae", "fvnce kl", B.RECOMMENDED, "isolation_forest", "pca"} <= methods
        for r in data["elpv"]["rows"]:
            assert 0 <= r["auroc"] <= 1 and 0 <= r["false_alarm_rate"] <= 1 and r["wall_s"] > 0
        (raw,) = data["elpv"]["raw"]
        assert raw["results"]["vae"]["n_calibration"] == raw["n_val"] - raw["val_anomalies"]
        assert data["elpv"]["heldout_ll"] and all(r["khat"] is not None for r in data["elpv"]["heldout_ll"])
    if "skipped" not in data["fashion"]:
        (row,) = data["fashion"]["per_class"]
        assert row["class"] == 0 and row["n_test"] == 400 and 0 <= row["vae"] <= 1
        assert data["fashion"]["published_mean"]


def test_heldout_ll_gain_over_the_vae_is_exactly_mean_tilt_minus_log_z():
    # A tilted model whose base and encoder are its VAE's, frozen, with a tilt bounded by
    # B = 1: the IWAE latents of both runs are the same draws, so the tilted run's base
    # estimate equals the VAE's and the gain is exactly mean(g - c) - log Z (at most 2B),
    # with no Monte Carlo difference of two IWAE estimates in it.
    import copy
    from types import SimpleNamespace

    import torch

    from fvnce.models import EnergyTiltedVAE, make_model
    from fvnce.noise.frozen_base import BaseModelNoise

    torch.manual_seed(0)
    vae, enc = make_model("vae", 12, z_dim=3, hidden=(16,), likelihood="gaussian")
    vae, enc = vae.double(), enc.double()
    tilted = EnergyTiltedVAE(copy.deepcopy(vae), 12, hidden=(8,), tilt_bound=1.0, freeze_base=True).double()
    torch.nn.init.normal_([m for m in tilted.tilt.modules() if isinstance(m, torch.nn.Linear)][-1].weight, std=3.0)
    x = torch.randn(40, 12, dtype=torch.float64)
    h_vae = B.heldout_ll(SimpleNamespace(model=vae, encoder=enc, noise=None), x, seed=3, k=4, logz_n=300)
    run = SimpleNamespace(model=tilted, encoder=enc, noise=BaseModelNoise.from_model(tilted))
    h = B.heldout_ll(run, x, seed=3, k=4, logz_n=300)
    with torch.no_grad():
        tilt = (tilted.g(x) - tilted.log_normaliser).mean().item()
    assert h["base_mean"] == pytest.approx(h_vae["mean"], abs=1e-10)
    assert h["tilt_mean"] == pytest.approx(tilt, abs=1e-12)
    assert h["mean"] - h_vae["mean"] == pytest.approx(tilt - h["log_z"], abs=1e-9)
    assert h["mean"] - h_vae["mean"] <= 2.0
    (row,) = B.ll_rows([{"cell_type": "mono", "size": 8, "seed": 3,
                         "results": {"vae": {"heldout": h_vae}, "fvnce kl": {"heldout": h}}}], ["kl"])
    assert row["base_gain"] == pytest.approx(0.0, abs=1e-10)
    assert row["gain"] == pytest.approx(row["base_gain"] + row["tilt_gain"], abs=1e-9)
