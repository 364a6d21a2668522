"""The registries are the single source: a rule or a noise registered in one place is a
choice of the command line, a setting that a run saves and reloads, part of run names and
train commands, and a candidate of the poc named in its summary and report, with no other
edit."""

from __future__ import annotations

import json

import pytest
import torch

from fvnce.cli import build_parser, main
from fvnce.cli.options import run_config
from fvnce.cli.resume import flag_paths
from fvnce.cli.train_line import train_command
from fvnce.errors import ConfigError
from fvnce.noise import NOISES, make_noise
from fvnce.noise.gaussian import DiagGaussianNoise
from fvnce.rules import RULES, PowerRule, named_rules, scoring_rule
from fvnce.runs import load_run
from fvnce.runs.config import check_noise_name


class BetaRule(PowerRule):
    """The power rule under another name, its exponent called ``beta`` (flag ``--beta``)."""

    name = "beta_power"
    param = flag = "beta"
    flag_help = "beta_power rule exponent"

    def __init__(self, beta: float = 1.5, exp_mode: str = "exact", tau: float = 20.0) -> None:
        super().__init__(beta, exp_mode, tau)

    @property
    def params(self) -> dict:
        return {"beta": self.alpha}


class WideNoise(DiagGaussianNoise):
    """The diagonal Gaussian noise with twice the data's spread."""

    name = "wide_diag"

    @classmethod
    def _fit(cls, data, seed: int = 0):
        fitted = DiagGaussianNoise._fit.__func__(cls, data, seed).state()
        return cls(fitted["dim"], loc=fitted["loc"], scale=2.0 * fitted["scale"])


@pytest.fixture
def registered(monkeypatch):
    monkeypatch.setitem(RULES, BetaRule.name, BetaRule)
    monkeypatch.setitem(NOISES, WideNoise.name, WideNoise)


def _train_args(table, out, *extra):
    return ["train", "--data", str(table), "--label", "status", "--normal", "ok", "--k", "2", "--z-dim", "2",
            "--batch-size", "32", "--steps", "4", "--out", str(out), "--quiet", "--no-eval", *extra]


def _choices(parser, command: str, dest: str):
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return next(a for a in sub._actions if a.dest == dest)


def test_a_registered_rule_is_a_choice_with_its_own_flag(registered, table, tmp_path):
    parser = build_parser()
    assert "beta_power" in _choices(parser, "train", "rule").choices == named_rules()
    assert "generic" not in named_rules()  # needs a Python function: no choice of the command line
    assert _choices(parser, "train", "beta").help == "beta_power rule exponent"
    cfg = run_config(parser.parse_args(_train_args(table, tmp_path / "r", "--rule", "beta_power", "--beta", "1.2")))
    assert cfg.objective_options == {"exp_mode": "linear", "tau": 10.0, "rule": "beta_power", "beta": 1.2, "k": 2}
    assert flag_paths()["beta"] == (("objective_options", "beta"),)  # --resume compares it
    with pytest.raises(ConfigError, match="--beta is the beta_power rule's parameter: add --rule beta_power"):
        run_config(parser.parse_args(_train_args(table, tmp_path / "r", "--beta", "1.2")))
    with pytest.raises(ConfigError, match="objective 'elbo' has no scoring rule.*beta"):
        run_config(parser.parse_args(_train_args(table, tmp_path / "r", "--objective", "elbo", "--rule",
                                                 "beta_power", "--beta", "1.2")))


def test_a_registered_rule_names_runs_and_writes_its_train_command(registered, table, tmp_path):
    assert RULES["beta_power"].run_label({"beta": 1.2}) == "beta_power1.2"
    assert RULES["kl"].run_label({}) == "kl" and RULES["power"].run_label({"alpha": 1.5}) == "power1.5"
    cfg = run_config(build_parser().parse_args(_train_args(table, tmp_path / "r", "--rule", "beta_power",
                                                           "--beta", "1.2")))
    line, note = train_command(cfg, "again")
    assert note is None and "--rule beta_power --beta 1.2" in line


def test_a_registered_noise_is_accepted_everywhere_a_name_is(registered, table, tmp_path):
    check_noise_name("wide_diag", allow_auto=False)
    x = torch.randn(50, 3, dtype=torch.float64)
    wide, plain = make_noise("wide_diag", x).state(), make_noise("diag_gaussian", x).state()
    assert wide["name"] == "wide_diag" and torch.equal(wide["scale"], 2 * plain["scale"])
    cfg = run_config(build_parser().parse_args(_train_args(table, tmp_path / "r", "--noise", "wide_diag")))
    assert cfg.noise == "wide_diag"
    with pytest.raises(ConfigError, match="unknown noise 'narrow_diag'"):
        check_noise_name("narrow_diag", allow_auto=False)


def test_a_run_with_a_registered_rule_and_noise_trains_and_reloads(registered, table, tmp_path):
    out = tmp_path / "r"
    assert main(_train_args(table, out, "--rule", "beta_power", "--beta", "1.2", "--noise", "wide_diag")) == 0
    record = json.loads((out / "config.json").read_text())
    assert record["objective"]["rule"]["name"] == "beta_power" and record["objective"]["rule"]["beta"] == 1.2
    assert record["noise"]["name"] == "wide_diag"
    run = load_run(out)
    assert isinstance(run.noise, WideNoise) and run.objective.rule.params == {"beta": 1.2}
    assert scoring_rule("beta_power", beta=1.2).describe() == run.objective.rule.describe()


def test_a_registered_rule_and_noise_reach_the_poc_and_its_report(registered, table, tmp_path):
    from fvnce.poc import parse_rule

    assert parse_rule("beta_power:1.2") == ("beta_power", {"beta": 1.2})
    out = tmp_path / "poc"
    assert main(["poc", "--data", str(table), "--label", "status", "--normal", "ok", "--rules", "beta_power:1.2",
                 "--noises", "wide_diag", "--budget", "4", "--mixtures", "none", "--no-baselines",
                 "--learning-curve", "none", "--out", str(out), "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    run = next(r for r in summary["runs"] if r["name"] == "fvnce-beta_power1.2-wide_diag")
    assert run["rule"] == "beta_power" and run["rule_params"] == {"beta": 1.2} and run["noise"] == "wide_diag"
    html = (out / "report.html").read_text()
    assert "fvnce-beta_power1.2-wide_diag" in html and "beta_power (beta=1.2)" in html
