"""benchmarks/data_efficiency.py: the choice of configurations from a poc summary, the
nested subsets, the aggregation (unreliable log-likelihoods counted, never averaged in;
paired gains of FVNCE over its VAE), the merge of result files, and (``slow``) the quick
path end to end in a subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "data_efficiency.py"
sys.path.insert(0, str(ROOT / "benchmarks"))
import data_efficiency as DE  # noqa: E402


def _run(name, objective, status="ok", reliable=True, val_auroc=0.9):
    return {"name": name, "objective": objective, "status": status, "reliable": reliable,
            "val_metrics": {"auroc": val_auroc}, "metrics": {}}


RUNS = [
    _run("elbo-vae", "elbo", val_auroc=0.95),
    _run("fvnce-kl-base", "fvnce", val_auroc=0.93),
    _run("fvnce-kl-kde", "fvnce", status="unreliable", reliable=False, val_auroc=0.99),
    _run("fvnce-power1.5-kde", "fvnce", val_auroc=0.94),
    _run("fvnce-kl-full_gaussian-mix1", "fvnce", val_auroc=0.96),
    _run("fvnce-power1.5-full_gaussian-mix1", "fvnce", val_auroc=0.97),
    _run("fvnce-kl-full_gaussian-mix4", "fvnce", val_auroc=0.98),
]


def test_choose_takes_the_recommended_tilted_run():
    picked = DE.choose({"runs": RUNS, "recommended": {"run": "fvnce-kl-base"}})
    assert picked == {"fvnce": "fvnce-kl-base", "mixture1": "fvnce-power1.5-full_gaussian-mix1",
                      "vae": "elbo-vae", "poc_recommended": "fvnce-kl-base"}


def test_choose_otherwise_best_eligible_tilted_run_by_validation_auroc():
    # the recommendation is a mixture: the tilted run of highest validation AUROC among the
    # ok and reliable ones (fvnce-kl-kde scores higher but is unreliable)
    picked = DE.choose({"runs": RUNS, "recommended": {"run": "fvnce-kl-full_gaussian-mix4"}})
    assert picked["fvnce"] == "fvnce-power1.5-kde"
    assert picked["poc_recommended"] == "fvnce-kl-full_gaussian-mix4"
    none = DE.choose({"runs": RUNS[:1], "recommended": None})
    assert none["fvnce"] is None and none["mixture1"] is None


def test_nested_subsets_are_nested_and_seeded():
    a, b = DE.nested(300, 50, 1), DE.nested(300, 200, 1)
    assert len(a) == 50 and len(set(a)) == 50 and set(a) <= set(b)
    assert list(a) == sorted(a) and list(DE.nested(300, 50, 1)) == list(a)
    assert list(DE.nested(300, 50, 2)) != list(a)


def _cell(vae, fv, mix=(0.5, -3.0, True), forest=0.6):
    def one(t):
        return {"status": "ok", "auroc": t[0], "log_likelihood": t[1], "reliable": t[2]}
    return {"vae": one(vae), "fvnce": one(fv), "mixture1": one(mix),
            "iforest": {"status": "ok", "auroc": forest, "log_likelihood": None, "reliable": None}}


RAW = {"toy": {"n_train": 120, "split": {"0": {"n_train": 120}, "1": {"n_train": 120}},
               "points": {"0": {"50": _cell((0.80, -10.0, True), (0.90, -8.0, True)),
                                "all": _cell((0.90, -6.0, True), (0.92, -5.0, False))},
                          "1": {"50": _cell((0.70, -12.0, True), (0.84, -9.0, True)),
                                "all": _cell((0.88, -7.0, True), (0.90, -4.0, True))}}}}


def test_aggregate_means_gains_and_unreliable_left_out():
    rows = {(r["n"], r["method"]): r for r in DE.aggregate(RAW)}
    assert sorted({n for n, _ in rows}) == [50, 120]
    fv50, fv_all = rows[(50, "fvnce")], rows[(120, "fvnce")]
    assert not fv50["all"] and fv_all["all"]
    assert fv50["auroc_mean"] == pytest.approx(0.87) and fv50["auroc_sd"] == pytest.approx(math.sqrt(0.0018))
    assert fv50["gain_auroc_mean"] == pytest.approx(0.12) and fv50["gain_auroc_sd"] == pytest.approx(math.sqrt(0.0008))
    assert fv50["ll_mean"] == pytest.approx(-8.5) and fv50["ll_unreliable"] == 0
    # seed 0's FVNCE log-likelihood with all rows is unreliable: counted, not averaged in, no gain
    assert fv_all["ll_mean"] == -4.0 and fv_all["ll_sd"] is None
    assert fv_all["ll_reliable"] == 1 and fv_all["ll_unreliable"] == 1
    assert fv_all["gain_ll_mean"] == 3.0 and fv_all["gain_ll_seeds"] == 1
    assert "ll_mean" not in rows[(50, "iforest")] and rows[(50, "iforest")]["auroc_mean"] == pytest.approx(0.6)


def test_claim_pairs_the_gains_by_seed():
    c = DE.claim(RAW)["toy"]
    assert c["n_small"] == 50
    assert c["gain_auroc_small"] == pytest.approx(0.12) and c["gain_auroc_all"] == pytest.approx(0.02)
    # per seed: (0.10 - 0.02, 0.14 - 0.02) -> mean 0.10
    assert c["auroc_small_minus_all"] == pytest.approx(0.10) and c["auroc_seeds"] == 2
    assert c["ll_small_minus_all"] == pytest.approx(3.0 - 3.0) and c["ll_seeds"] == 1


def test_markdown_marks_unreliable_estimates(capsys):
    text = DE.markdown(DE.aggregate(RAW))
    lines = text.splitlines()
    assert lines[0].startswith("| set | n |") and set(lines[1]) == {"|", "-"}
    assert len(lines) == 4 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "120 (all)" in lines[3] and "-4.00 (1 unreliable)" in lines[3]


def test_render_merges_files(tmp_path):
    for i, name in enumerate(("a", "b")):
        (tmp_path / f"{name}.json").write_text(json.dumps(
            {"benchmark": "data_efficiency", "machine": {"cpu": "x"}, "complete": i == 0,
             "raw": {name: RAW["toy"]}}))
    out = DE.render([tmp_path / "a.json", tmp_path / "b.json"], tmp_path / "m.json")
    assert set(out["raw"]) == {"a", "b"} and out["complete"] is False
    assert json.loads((tmp_path / "m.json").read_text())["claim"]["b"]["n_small"] == 50
    (tmp_path / "c.json").write_text("{}")
    with pytest.raises(SystemExit, match="not a data_efficiency result"):
        DE.render([tmp_path / "c.json"], tmp_path / "m2.json")


def test_help():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--render" in proc.stdout


@pytest.mark.slow
def test_quick_run_writes_well_formed_json(tmp_path):
    out = tmp_path / "de.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--threads", "1", "--budget", "20", "--rules", "kl",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["complete"] and {"machine", "rows", "claim", "raw", "table"} <= set(data)
    rec = data["raw"]["breast-cancer"]
    assert rec["poc"]["picked"]["vae"] == "elbo-vae" and rec["poc"]["picked"]["fvnce"].startswith("fvnce-kl-")
    n_all = rec["n_train"]
    assert sorted({(r["n"], r["method"]) for r in data["rows"]}) == sorted(
        (n, m) for n in (50, n_all) for m in DE.METHODS)
    for r in data["rows"]:
        assert 0.0 <= r["auroc_mean"] <= 1.0 and r["seeds"] == 1 and r["failed"] == 0
    assert "| breast-cancer | 50 |" in data["table"] and f"{n_all} (all)" in data["table"]
    assert data["claim"]["breast-cancer"]["auroc_seeds"] == 1
