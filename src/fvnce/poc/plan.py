"""The poc's plan: its configuration, the noise candidates and rules, and the grid of runs
(the VAE, every noise x rule, the diagonal mixtures) as named run configurations."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..costs import check_costs
from ..criteria import VAE_RUN
from ..data import DataSpec
from ..errors import ConfigError
from ..evaluate import check_alarm_rate
from ..image_plan import IMAGE_SIMPLE_LR, IMAGE_SIMPLE_NOISE, continuous_images, linear_plan
from ..rules import RULES, scoring_rule
from ..runs import BASE_NOISE, RunConfig, default_noise, check_model_sizes
from ..runs.config import check_noise_name
from ..train import TrainConfig

__all__ = ["BUDGETS", "MIXTURES", "TILT_OPTIONS", "VAE_FINETUNED_RUN", "PocConfig", "default_noises",
           "fitted_noise_names", "make_plan", "mixture_plan", "parse_rule", "rule_label", "train_config"]

#: training steps per run for each budget preset
BUDGETS = {"quick": 150, "default": 800, "long": 4000}
#: model options of the energy-tilted model that the VAE baseline does not take
TILT_OPTIONS = ("tilt_bound", "freeze_base", "tilt_hidden", "tilt_channels")
#: default component counts of the poc's diagonal mixtures: 1 (independent features) and 4
MIXTURES = (1, 4)
#: the models the poc trains beside the VAE family (never over your own VAE)
SIMPLE_MODELS = ("gaussian_mixture", "linear_gaussian")
#: your own VAE fine-tuned by the ELBO (``--vae-finetune``)
VAE_FINETUNED_RUN = "elbo-vae-finetuned"


def parse_rule(text: str) -> tuple[str, dict]:
    """``kl`` | ``power:1.5`` | ``shifted_log:2`` -> (name, params), validated."""
    name, _, value = text.strip().partition(":")
    params: dict[str, float] = {}
    if value:
        cls = RULES.get(name)
        key = None if cls is None else cls.param  # the rule's parameter, as registered
        if key is None:
            raise ConfigError(f"rule {name!r} takes no parameter (got {text!r})")
        try:
            params[key] = float(value)
        except ValueError:
            raise ConfigError(f"rule parameter in {text!r} is not a number") from None
    try:
        rule = scoring_rule(name, **params)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    bad = rule.convexity_violations()
    if bad:
        raise ConfigError(f"rule {text!r} cannot be used by fvnce: {bad[0]}")
    return name, params


def rule_label(name: str, params: dict) -> str:
    """The rule as it appears in run names: ``kl``, ``power1.5`` (the registered rule's
    :meth:`~fvnce.rules.ScoringRule.run_label`)."""
    return RULES[name].run_label(params)


def default_noises(binary: bool, tilted: bool = True) -> list[str]:
    """The poc's noise candidates: the VAE's own samples (``base``: the closest noise, an
    exact ratio, reliable log Z), a simple fitted noise, and near-miss perturbations (kde).
    docs/benchmarks.md has the measurements behind the choice."""
    simple = ["marginals", "kde"] if binary else ["full_gaussian", "kde"]
    return ([BASE_NOISE] if tilted else []) + simple + ([] if tilted else ["gmm"])


def mixture_plan(config: "PocConfig", dataset) -> list[int]:
    """Component counts of the diagonal Gaussian mixtures (``gaussian_mixture``) that the
    poc trains beside the VAE family: on continuous tables and continuous ``(C, H, W)``
    images with ``model="auto"`` (the built-in image sets given as ``(H, W)`` keep the VAE
    family alone).

    Why: a VAE (like a full-covariance Gaussian) learns the correlations of the features
    and then explains away a row that is extreme along them; a mixture of diagonal
    Gaussians does not.  On ADBench wbc and cardiotocography that decides detection
    (validation-chosen FVNCE 0.85 / 0.66 test AUROC without the mixtures, IsolationForest
    0.98 / 0.81; docs/benchmarks.md, "ADBench"), and on ELPV poly cells the independent
    pixels of one component rank defects as well as IsolationForest (docs/images.md).  They
    are small (seconds per run)."""
    tabular = dataset.image_shape is None
    if config.model != "auto" or dataset.binary or not (tabular or continuous_images(dataset.image_shape, False)):
        return []
    return list(dict.fromkeys(config.mixtures))


@dataclass
class PocConfig:
    data: DataSpec = field(default_factory=lambda: DataSpec(source="digits", normal="0"))
    noises: list[str] | None = None
    rules: list[str] = field(default_factory=lambda: ["kl", "power:1.5"])
    budget: str | int = "default"
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    objective_options: dict[str, Any] = field(default_factory=lambda: {"exp_mode": "linear", "tau": 10.0})
    train: TrainConfig = field(default_factory=lambda: TrainConfig(progress=False))
    baselines: bool = True
    eval_k: int = 32
    #: target false-alarm rate of every run's alarm threshold (fvnce.runs.alarm)
    alarm_rate: float = 0.01
    #: component counts of the diagonal Gaussian mixtures trained beside the VAE family on
    #: continuous tabular data (``model="auto"`` only; empty: none). See :func:`mixture_plan`.
    mixtures: tuple[int, ...] = MIXTURES
    #: your own VAE (fvnce.user_vae.vae_spec): the VAE baseline as it is, the base of every
    #: tilted run and of the ``base`` noise; ``vae_finetune`` > 0 adds it fine-tuned by the ELBO
    vae: dict[str, Any] | None = None
    vae_finetune: int = 0
    #: fractions of the training rows the recommendation is retrained on (fvnce.learning_curve);
    #: None: by the data (fvnce.image_plan.poc_plan)
    learning_curve: tuple[float, ...] | None = None
    #: {cost_false_alarm, cost_miss, anomaly_share}: the recommendation's cost (fvnce.costs)
    costs: dict[str, Any] | None = None

    def steps(self) -> int:
        if isinstance(self.budget, int) and not isinstance(self.budget, bool):
            if self.budget < 1:
                raise ConfigError(f"--budget must be a positive number of steps, got {self.budget}")
            return self.budget
        if self.budget not in BUDGETS:
            raise ConfigError(f"unknown budget {self.budget!r}; use {', '.join(BUDGETS)} or a number of steps")
        return BUDGETS[self.budget]

    def validate(self) -> list[tuple[str, dict]]:
        self.steps()
        if not self.rules:
            raise ConfigError("--rules is empty")
        rules = [parse_rule(r) for r in self.rules]
        for n in self.noises or []:
            check_noise_name(n, allow_auto=False)
        check_model_sizes(self.model_options)
        check_alarm_rate(self.alarm_rate, "--alarm-rate")
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.mixtures):
            raise ConfigError(f"--mixtures must be positive component counts, got {list(self.mixtures)}")
        self._validate_extras()
        return rules

    def _validate_extras(self) -> None:
        """Your own VAE, the learning curve, the costs."""
        if self.vae is not None and self.model != "auto":
            raise ConfigError(f"--vae sets the poc's models (your VAE and tilted models over it); --model "
                              f"{self.model} cannot be combined with it")
        ft = self.vae_finetune
        if isinstance(ft, bool) or not isinstance(ft, int) or ft < 0:
            raise ConfigError(f"--vae-finetune must be a number of steps >= 0, got {ft!r}")
        if ft and self.vae is None:
            raise ConfigError("--vae-finetune needs --vae")
        if any(not 0 < f < 1 for f in self.learning_curve or ()):
            raise ConfigError(f"--learning-curve fractions must lie strictly between 0 and 1, got "
                              f"{list(self.learning_curve)}")
        if self.costs is not None:
            check_costs(self.costs.get("cost_false_alarm"), self.costs.get("cost_miss"),
                        self.costs.get("anomaly_share"))


def train_config(base: TrainConfig, steps: int) -> TrainConfig:
    """``base`` for one run of the grid: ``steps`` steps, evaluation and checkpoints spread over them."""
    cfg = copy.deepcopy(base)
    cfg.steps, cfg.epochs = steps, None
    cfg.eval_every = max(1, min(cfg.eval_every, steps // 8 or 1))
    cfg.checkpoint_every = max(cfg.checkpoint_every, steps // 4 or 1)
    cfg.progress = False
    return cfg


def fitted_noise_names(noises: list[str], binary: bool) -> list[str]:
    """The noise candidates fitted to the data (all but ``base``), or the default one."""
    return [n for n in noises if n != BASE_NOISE] or [default_noise(binary)]


def make_plan(config: PocConfig, rules: list[tuple[str, dict]], noises: list[str], dataset, steps: int,
              out_dir: Path) -> list[tuple[str, RunConfig]]:
    """The grid as (run name, run configuration), the VAE first.

    The VAE of the same architecture is trained first: it is a baseline, and every FVNCE
    run starts from its weights (an energy-tilted VAE whose tilt starts at zero), so the
    noise-contrastive rules spend their budget on what the VAE got wrong.  Then one FVNCE
    run per noise x rule, and per rule one diagonal mixture for each count of
    :func:`mixture_plan`, trained from scratch against the first fitted noise; on continuous
    images the mixtures start from the data's moments, probabilistic PCA
    (:func:`fvnce.image_plan.linear_plan`) joins them, and both train against
    ``IMAGE_SIMPLE_NOISE`` with a learning rate of at most ``IMAGE_SIMPLE_LR``."""
    base_dir = out_dir / "runs" / VAE_RUN
    vae_options = {k: v for k, v in config.model_options.items() if k not in TILT_OPTIONS}
    fitted_noises = fitted_noise_names(noises, dataset.binary)
    plan: list[tuple[str, RunConfig]] = [(VAE_RUN, RunConfig(
        data=config.data, objective="elbo", model="vae" if config.model == "auto" else config.model,
        model_options=vae_options, noise=fitted_noises[0], train=train_config(config.train, steps),
        eval_k=config.eval_k, alarm_rate=config.alarm_rate, vae=config.vae))]
    if config.vae is not None and config.vae_finetune:  # your VAE fine-tuned by the ELBO: an extra run
        plan.append((VAE_FINETUNED_RUN, copy.deepcopy(plan[0][1])))
        plan[-1][1].train = train_config(config.train, config.vae_finetune)

    def add_fvnce(noise_name: str, model: str, model_options: dict, init_from: str | None, suffix: str = "",
                  lr: float | None = None) -> None:
        """One FVNCE run per rule against ``noise_name``, appended to the plan (``lr``: a
        cap on the learning rate)."""
        for rule_name, params in rules:
            name = f"fvnce-{rule_label(rule_name, params)}-{noise_name.replace(':', '.')}{suffix}"
            train = train_config(config.train, steps)
            if lr is not None:
                train.lr = min(train.lr, lr)
            plan.append((name, RunConfig(
                data=config.data, objective="fvnce",
                objective_options={"rule": rule_name, **params, **config.objective_options},
                model=model, model_options=dict(model_options), noise=noise_name,
                train=train, eval_k=config.eval_k, init_from=init_from,
                alarm_rate=config.alarm_rate, vae=None if model in SIMPLE_MODELS else config.vae)))

    warm = config.model == "auto"
    for noise_name in noises:
        add_fvnce(noise_name, config.model, config.model_options, str(base_dir) if warm else None)
    images = continuous_images(dataset.image_shape, dataset.binary)
    simple_noise, simple_lr = (IMAGE_SIMPLE_NOISE, IMAGE_SIMPLE_LR) if images else (fitted_noises[0], None)
    for k in mixture_plan(config, dataset):
        add_fvnce(simple_noise, "gaussian_mixture", {"components": k, **({"init": "data"} if images else {})},
                  None, f"-mix{k}", simple_lr)
    for k in linear_plan(config, dataset):
        add_fvnce(simple_noise, "linear_gaussian", {"z_dim": k, "init": "pca"}, None, f"-ppca{k}", simple_lr)
    return plan
