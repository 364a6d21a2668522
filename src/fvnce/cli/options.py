"""Command-line flags turned into configurations: the run of ``fvnce train`` (objective
options through :func:`fvnce.runs.config.objective_options`, as :class:`fvnce.Detector`),
its data, costs and the user's VAE."""

from __future__ import annotations

import sys

from ..costs import check_costs
from ..data import DataSpec
from ..errors import ConfigError
from ..rules import rule_flags
from ..runs.config import DEFAULT_OBJECTIVE_OPTIONS, RunConfig, objective_options
from ..train import TrainConfig
from ..user_vae import vae_spec

__all__ = ["costs", "data_spec", "mixtures", "read_toml", "run_config", "vae_spec_of"]


def costs(args) -> dict | None:
    """``{cost_false_alarm, cost_miss, anomaly_share}`` from the flags, checked; None without costs."""
    a, b, p = args.cost_false_alarm, args.cost_miss, args.anomaly_share
    if a is None and b is None:
        if p is not None:
            raise ConfigError("--anomaly-share needs --cost-false-alarm and --cost-miss")
        return None
    if a is None or b is None:
        raise ConfigError("give both --cost-false-alarm and --cost-miss")
    check_costs(a, b, p)
    return {"cost_false_alarm": a, "cost_miss": b, "anomaly_share": p}


def vae_spec_of(args) -> dict | None:
    """The user's VAE of ``--vae``/``--vae-weights`` (fvnce.user_vae.vae_spec); with it the
    rows reach the VAE as they are unless --transform/--dequantize say otherwise."""
    spec = vae_spec(args.vae, args.vae_weights)
    if spec is not None:
        if args.transform is None:
            args.transform = "none"
        if args.dequantize is None:
            args.dequantize = "none"
    return spec


def data_spec(args, base=None):
    """The DataSpec of the data flags: ``base`` (default: the defaults) with every given flag applied."""
    d = dict(base.to_dict()) if base is not None else {}
    if args.data is not None:
        d["source"] = args.data
    if args.features:
        d["features"] = [c.strip() for c in args.features.split(",") if c.strip()]
    for key in ("label", "normal", "transform", "binarize", "max_rows", "contaminated", "dequantize", "image_size",
                "cell_type"):
        v = getattr(args, key, None)
        if v is not None:
            d[key] = v
    if args.drop_missing:
        d["missing"] = "drop"
    elif args.impute:
        d["missing"] = "impute"
    seed = args.split_seed if args.split_seed is not None else getattr(args, "seed", None)
    if seed is not None:
        d["seed"] = seed
    return DataSpec.from_dict(d) if d else DataSpec()


def read_toml(path: str) -> dict:
    """The run settings of a TOML file; ConfigError when it is missing or not TOML."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def run_config(args, base=None):
    """The RunConfig of a ``train`` command line: ``base`` (default: the ``--config`` file,
    else the CLI defaults) with every given flag applied."""
    if base is None:
        base = RunConfig.from_dict(read_toml(args.config)) if args.config else RunConfig(
            objective_options=dict(DEFAULT_OBJECTIVE_OPTIONS))
    cfg = base
    if args.objective:
        cfg.objective = args.objective
    cfg.objective_options = objective_options(
        cfg.objective, cfg.objective_options, rule=args.rule,
        params={flag: getattr(args, flag) for flag in rule_flags()}, k=args.k, nu=args.nu, tau=args.tau,
        exp_mode=args.exp_mode)
    if args.model:
        cfg.model = args.model
    if args.z_dim is not None:
        cfg.model_options = {**cfg.model_options, "z_dim": args.z_dim}
    if args.tilt_bound is not None:
        cfg.model_options = {**cfg.model_options, "tilt_bound": args.tilt_bound}
    if args.freeze_base:
        cfg.model_options = {**cfg.model_options, "freeze_base": True}
    if args.components is not None:
        if cfg.model != "gaussian_mixture":
            raise ConfigError("--components is the gaussian_mixture model's option: add --model gaussian_mixture")
        cfg.model_options = {**cfg.model_options, "components": args.components}
    if args.init is not None:
        cfg.model_options = {**cfg.model_options, "init": args.init}
    if args.eval_k is not None:
        cfg.eval_k = args.eval_k
    if args.noise:
        cfg.noise = args.noise
    if args.init_from:
        cfg.init_from = args.init_from
    if args.alarm_rate is not None:
        cfg.alarm_rate = args.alarm_rate
    train = cfg.train.to_dict()
    for key in ("steps", "epochs", "batch_size", "lr", "grad_clip", "seed", "checkpoint_every", "eval_every",
                "device", "precision", "compile", "dist_noise"):
        v = getattr(args, key)
        if v is not None:
            train[key] = v
            if key == "steps":
                train["epochs"] = None
            if key == "epochs":
                train["steps"] = None
    train["progress"] = not args.quiet and sys.stderr.isatty()
    cfg.train = TrainConfig.from_dict(train)
    vae = vae_spec_of(args)
    if vae is not None:
        cfg.vae = vae
    cfg.data = data_spec(args, cfg.data)
    cfg.validate()
    return cfg


def mixtures(text: str) -> tuple[int, ...]:
    """The component counts of ``--mixtures`` (``none``: no mixtures)."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--mixtures must be comma-separated component counts or 'none', got {text!r}") from None


