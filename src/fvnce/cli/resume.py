"""``fvnce train --resume``: which flags are settings of the run, and where each lands in its
configuration; the comparison itself is :mod:`fvnce.runs.resume`."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from ..rules import rule_flags
from ..runs.config import RunConfig
from ..runs.files import read_config
from ..runs.resume import check_same_settings, leaf_paths
from ..train import TrainConfig
from .options import read_toml, run_config

__all__ = ["NOT_SETTINGS", "flag_name", "flag_paths", "resume_length"]

def flag_paths() -> dict[str, tuple[tuple, ...]]:
    """Where each ``train`` flag lands in a run's configuration (paths into
    RunConfig.to_dict()), the rules' parameter flags as registered now; with --resume every
    given one must equal the saved setting."""
    return {
        **{k: (("data", k),) for k in ("features", "label", "normal", "contaminated", "transform", "binarize",
                                      "max_rows", "dequantize", "image_size", "cell_type")},
        "data": (("data", "source"),), "drop_missing": (("data", "missing"),), "impute": (("data", "missing"),),
        "split_seed": (("data", "seed"),), "seed": (("train", "seed"), ("data", "seed")),
        "objective": (("objective",),), "noise": (("noise",),), "model": (("model",),),
        "init_from": (("init_from",),), "alarm_rate": (("alarm_rate",),), "eval_k": (("eval_k",),),
        "rule": (("objective_options", "rule"),),
        **{flag: (("objective_options", param),) for flag, (_, param) in rule_flags().items()},
        **{k: (("objective_options", k),) for k in ("k", "nu", "exp_mode", "tau")},
        **{k: (("model_options", k),) for k in ("z_dim", "tilt_bound", "freeze_base", "components", "init")},
        **{k: (("train", k),) for k in ("batch_size", "lr", "grad_clip", "checkpoint_every", "eval_every",
                                        "device", "precision", "compile", "dist_noise")},
    }


#: ``train`` options that are not settings of the run (or, steps/epochs, may change on --resume)
NOT_SETTINGS = ("out", "resume", "overwrite", "quiet", "no_eval", "config", "steps", "epochs",
                "vae", "vae_weights",  # --resume refuses them: the run keeps its own copy of the VAE
                "cost_false_alarm", "cost_miss", "anomaly_share")  # applied after training, not stored settings


def resume_length(args):
    """With --resume the run's saved settings are used, and only its length may change:
    every other setting given (flags, and every key of a --config file) must equal the
    saved one, compared after the same normalisation as a new run's (paths resolved)."""
    paths_of = flag_paths()
    given = [k for k in paths_of if getattr(args, k, None) is not None]
    if given or args.config:
        saved = RunConfig.from_dict(read_config(Path(args.out))["run"])
        try:  # as a new run would build it; on top of the saved run when no file gives the base
            toml = read_toml(args.config) if args.config else None
            fresh = run_config(args, base=RunConfig.from_dict(toml if toml is not None else saved.to_dict()))
        except ConfigError as exc:
            raise ConfigError(f"--resume: {exc}") from None
        paths = [(flag_name(flag), path) for flag in given for path in paths_of[flag]
                 if not (flag == "seed" and path[0] == "data" and args.split_seed is not None)]
        if toml is not None:
            paths += [(f"{'.'.join(path)} (in {args.config})", path) for path in leaf_paths(toml)]
        # saved itself is never changed: the base is a copy
        check_same_settings(fresh.to_dict(), saved.to_dict(), paths)
    if args.steps is None and args.epochs is None:
        return None
    return RunConfig(train=TrainConfig(steps=args.steps, epochs=args.epochs))


def flag_name(dest: str) -> str:
    """The flag of an argparse destination, as the user types it."""
    return "--binarize/--no-binarize" if dest == "binarize" else f"--{dest.replace('_', '-')}"
