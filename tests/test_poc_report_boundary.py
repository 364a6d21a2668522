"""The poc and its report meet only in summary.json: the report reads the criteria and the
verdicts the poc recorded there and never imports the poc; the poc's label-free union is
decided without touching files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from fvnce.cli import main
from fvnce.criteria import (AUROC_MARGIN_MIN, ESS_FRACTION_MIN, KHAT_MAX, NO_NOISE_TERM, SE_FACTOR, VAE_RUN,
                            criteria_record)
from fvnce.poc.choose import union_members
from fvnce.report.comparison import comparison_section
from fvnce.report.verdicts import poc_criteria

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = {"khat": 1.3, "ess_fraction": 0.001, "reliable": False}


def _entry(name: str, objective: str = "fvnce", model: str = "vae", auroc: float | None = 0.8,
           ll: float | None = -5.0, status: str = "ok", reliable: bool | None = True, **kw) -> dict:
    m = {"auroc": auroc, "log_likelihood": ll}
    return {"name": name, "objective": objective, "model": model, "status": status, "reliable": reliable,
            "noise": None if objective == "elbo" else "kde", "rule": None if objective == "elbo" else "kl",
            "metrics": dict(m), "val_metrics": dict(m), **kw}


def test_importing_and_running_the_report_loads_neither_the_poc_nor_runs(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"runs": [], "recommended": None}))
    code = ("import sys; from fvnce.report import build_report; build_report(sys.argv[1]); "
            "print(sorted(m for m in sys.modules if m.startswith(('fvnce.poc', 'fvnce.runs', 'fvnce.learning_curve'))))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]"
    assert (tmp_path / "report.html").is_file()


def test_criteria_record_holds_the_thresholds_and_the_report_falls_back_to_them():
    rec = criteria_record()
    assert rec == {"auroc_margin_min": AUROC_MARGIN_MIN, "se_factor": SE_FACTOR, "khat_max": KHAT_MAX,
                   "ess_fraction_min": ESS_FRACTION_MIN, "reference": VAE_RUN, "no_noise_term": list(NO_NOISE_TERM)}
    assert poc_criteria({}) == {**rec, "no_noise_term": NO_NOISE_TERM}  # a summary from before they were recorded
    mine = {"auroc_margin_min": 0.05, "se_factor": 3.0, "khat_max": 0.5, "ess_fraction_min": 0.1,
            "reference": "my-vae", "no_noise_term": ["elbo"]}
    assert poc_criteria({"criteria": mine}) == {**mine, "no_noise_term": ("elbo",)}


def test_the_report_takes_objectives_without_a_noise_side_from_the_summary():
    runs = [_entry("elbo-vae", "elbo", noise_term=HEAVY)]

    def html(criteria: dict) -> str:
        return comparison_section(runs, {}, [], None, True, poc_criteria({"criteria": criteria}))

    assert '<span class="warn-text">' not in html({})  # elbo has no noise side (fvnce.criteria)
    assert '<span class="warn-text">' in html({"no_noise_term": []}) and "1.30 ·" in html({"no_noise_term": []})


def test_the_report_compares_with_the_vae_the_summary_names():
    runs = [_entry("elbo-first", "elbo", auroc=0.61), _entry("my-vae", "elbo", auroc=0.73), _entry("fvnce-kl-kde")]
    text = comparison_section(runs, {}, [], None, True, poc_criteria({"criteria": {"reference": "my-vae"}}))
    assert "the VAE my-vae they started from has 0.730" in text
    old = comparison_section(runs, {}, [], None, True, poc_criteria({}))  # no elbo-vae: the first elbo run
    assert "the VAE elbo-first they started from has 0.610" in old


def test_union_members_is_decided_on_the_entries_alone(tmp_path):
    rec = {"run": "joint-b"}
    runs = [_entry("joint-a", ll=-7.0), _entry("joint-b", ll=-4.0),
            _entry("fvnce-kl-kde-mix1", model="gaussian_mixture", ll=-6.0),
            _entry("fvnce-kl-kde-mix4", model="gaussian_mixture", ll=-3.0),  # not one component
            _entry("joint-c", ll=-1.0, status="degraded"), _entry("joint-d", ll=-2.0, reliable=False)]
    choice = union_members(rec, runs)
    assert (choice.joint["name"], choice.independent["name"], choice.n_joint, choice.n_independent) == \
        ("joint-b", "fvnce-kl-kde-mix1", 2, 1)
    assert union_members(rec, runs[:2]) is None and union_members(None, runs) is None
    assert union_members({"run": None}, runs) is None
    assert list(tmp_path.iterdir()) == []


def test_the_poc_records_its_criteria_in_summary_json(tmp_path):
    rng = np.random.default_rng(3)
    np.savetxt(tmp_path / "t.csv", rng.normal(size=(120, 3)), delimiter=",", header="a,b,c", comments="",
               fmt="%.5f")
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(tmp_path / "t.csv"), "--budget", "4", "--rules", "kl", "--noises",
                 "full_gaussian", "--mixtures", "none", "--learning-curve", "none", "--no-baselines", "--out",
                 str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["criteria"] == criteria_record()
    assert {r["name"]: r["reliable"] for r in summary["runs"]}.keys() == {"elbo-vae", "fvnce-kl-full_gaussian"}
