"""Run configuration: :class:`RunConfig`, everything a run needs besides the data
values, and the defaults it resolves (model and noise by data type)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..data import DataSpec
from ..errors import ConfigError
from ..fileio import jsonable
from ..models import MODELS
from ..noise import NOISES
from ..objectives import OBJECTIVES, make_objective, uses_noise
from ..rules import rule_flags, rule_parameters
from ..thresholds import DEFAULT_ALARM_RATE, check_alarm_rate
from ..train import TrainConfig
from ..user_vae import check_config


BASE_NOISE = "base"
#: the objective options of a new run from the command line or :class:`fvnce.Detector`
#: (a :class:`RunConfig` itself defaults to the objective's own): the linear stabilisation
DEFAULT_OBJECTIVE_OPTIONS = {"exp_mode": "linear", "tau": 10.0}


def default_noise(binary: bool) -> str:
    """The noise of ``noise="auto"``: the product of marginals for binary data, else a
    full-covariance Gaussian."""
    return "marginals" if binary else "full_gaussian"


@dataclass
class RunConfig:
    """Everything a training run needs besides the data values themselves.

    ``model="auto"`` picks a VAE for ``elbo``/``iwae`` and its energy-tilted
    (unnormalised) version for the noise-contrastive objectives, with a Bernoulli
    decoder for binary data and a Gaussian one otherwise.  ``noise="auto"`` picks the
    product of marginals for binary data and a full-covariance Gaussian otherwise.
    """

    data: DataSpec = field(default_factory=DataSpec)
    objective: str = "fvnce"
    objective_options: dict[str, Any] = field(default_factory=dict)
    model: str = "auto"
    model_options: dict[str, Any] = field(default_factory=dict)
    noise: str = "auto"
    noise_options: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval_k: int = 64
    #: a finished run whose weights start this one (a pre-trained VAE starts an
    #: energy-tilted model: its base and encoder are copied, the tilt starts at zero)
    init_from: str | None = None
    #: target false-alarm rate of the run's alarm threshold (alarm.json): the threshold is
    #: the split-conformal (1 - alarm_rate) quantile of the validation normal rows' scores
    alarm_rate: float = DEFAULT_ALARM_RATE
    #: the user's own VAE (``--vae``: :mod:`fvnce.user_vae`): {file, function, weights, sha256}
    vae: dict[str, Any] | None = None

    def validate(self) -> None:
        """Check names and options before any data is read or file written."""
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"unknown objective {self.objective!r}; valid objectives: {', '.join(OBJECTIVES)}")
        make_objective(self.objective, **self.objective_options)
        if self.model != "auto" and self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; valid models: auto, {', '.join(MODELS)}")
        check_model_sizes(self.model_options)
        check_noise_name(self.noise, allow_auto=True)
        if self.noise == BASE_NOISE:
            if self.objective != "fvnce":
                raise ConfigError(f"noise {BASE_NOISE!r} (the frozen base VAE of a tilted model) works with "
                                  f"objective fvnce, not {self.objective}")
            if self.model not in ("auto", "tilted_vae"):
                raise ConfigError(f"noise {BASE_NOISE!r} needs model tilted_vae (or auto), got {self.model!r}")
        if isinstance(self.eval_k, bool) or not isinstance(self.eval_k, int) or self.eval_k < 1:
            raise ConfigError(f"eval_k must be a positive integer, got {self.eval_k!r}")
        check_alarm_rate(self.alarm_rate, "alarm_rate")
        if self.vae is not None:  # the user's own VAE (fvnce.user_vae)
            check_config(self)

    def resolved_model(self, binary: bool) -> tuple[str, dict]:
        opts = dict(self.model_options)
        name = self.model
        if name == "auto":
            name = "tilted_vae" if uses_noise(self.objective) else "vae"
        if name in ("vae", "tilted_vae", "conv_vae"):
            opts.setdefault("likelihood", "bernoulli" if binary else "gaussian")
        if self.noise == BASE_NOISE:  # a noise must stay fixed: the base it samples from is frozen
            opts["freeze_base"] = True
        return name, opts

    def resolved_noise(self, binary: bool) -> str:
        return default_noise(binary) if self.noise == "auto" else self.noise

    def to_dict(self) -> dict:
        d = {"data": self.data.to_dict(), "objective": self.objective,
                "objective_options": dict(self.objective_options), "model": self.model,
                "model_options": jsonable(self.model_options), "noise": self.noise,
                "noise_options": jsonable(self.noise_options), "train": self.train.to_dict(), "eval_k": self.eval_k,
                "init_from": self.init_from, "alarm_rate": self.alarm_rate}
        if self.vae is not None:  # only then: runs without a user VAE keep their files as before
            d["vae"] = dict(self.vae)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(d) - known)
        if bad:
            raise ConfigError(f"unknown configuration key {bad[0]!r}; valid keys: {', '.join(sorted(known))}")
        d = dict(d)
        if "data" in d:
            d["data"] = DataSpec.from_dict(d["data"]) if isinstance(d["data"], dict) else d["data"]
        if "train" in d:
            d["train"] = TrainConfig.from_dict(d["train"]) if isinstance(d["train"], dict) else d["train"]
        return cls(**d)


def objective_options(objective: str, options: dict, *, rule: str | None = None, params: dict | None = None,
                      k=None, nu=None, tau=None, exp_mode: str | None = None,
                      spell=lambda flag: f"--{flag}", hint=lambda want, rule: f": add --rule {want}") -> dict:
    """The objective options of a run: ``options`` with the given settings applied (None:
    not given).  ``params``: ``{flag: value}`` of the rules' parameter flags
    (:func:`fvnce.rules.rule_flags`, e.g. ``{"alpha": 1.5, "shift": None}``), each refused
    unless the rule is the one it belongs to.  An objective without noise keeps ``k`` only,
    and refuses a rule, noise samples or rule parameters.  ``spell`` names a flag and
    ``hint`` ends the message of a parameter of another rule (the command line's by default)."""
    opts = dict(options)
    if rule:
        opts["rule"] = rule
    flags = rule_flags()
    for flag, value in (params or {}).items():
        if value is None:
            continue
        want, key = flags[flag]
        if opts.get("rule", "kl") != want:
            raise ConfigError(f"{spell(flag)} is the {want} rule's parameter{hint(want, opts.get('rule', 'kl'))}")
        opts[key] = value
    for key, v in (("k", k), ("nu", nu), ("tau", tau)):
        if v is not None:
            opts[key] = v
    if exp_mode:
        opts["exp_mode"] = exp_mode
    if not uses_noise(objective):
        bad = [key for key in opts if key not in ("k",)]
        if any(key in ("rule", "nu", *rule_parameters()) for key in bad):
            raise ConfigError(f"objective {objective!r} has no scoring rule, noise samples or rule parameters "
                              f"(got {', '.join(sorted(bad))})")
        opts = {key: v for key, v in opts.items() if key == "k"}
    return opts


def check_noise_name(name: str, allow_auto: bool) -> None:
    """ConfigError unless ``name`` is a noise: a registered one, ``base``, a plug-in
    ``module:callable``, or (with ``allow_auto``, a run's default) ``auto``."""
    special = ("auto", BASE_NOISE) if allow_auto else (BASE_NOISE,)
    if name not in special and ":" not in name and name not in NOISES:
        raise ConfigError(f"unknown noise {name!r}; valid noises: {', '.join(special)}, "
                          f"{', '.join(sorted(NOISES))}, or module:callable")


def check_model_sizes(options: dict) -> None:
    """Latent and hidden sizes must be positive integers (torch would fail with a traceback
    on a negative one and silently build an empty layer for zero)."""
    for key in ("z_dim", "h_dim", "components"):
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{key.replace('_', '-')} must be a positive integer, got {v!r}")
    for key in ("hidden", "tilt_hidden"):
        v = options.get(key)
        if v is not None and (not isinstance(v, (list, tuple))
                              or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in v)):
            raise ConfigError(f"{key} must be a list of positive integers, got {v!r}")
