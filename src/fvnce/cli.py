"""The ``fvnce`` command line (also ``python -m fvnce``).

Subcommands: ``train``, ``evaluate``, ``score``, ``sample``, ``poc``, ``report``.
Bad input ends with a one-line ``fvnce: error: ...`` on stderr and exit code 2;
an interrupted training run exits with 130 after saving a checkpoint.  Nothing runs at
import time.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"fvnce: error: {message} (see '{self.prog} --help')\n")


def _log_fn(quiet: bool):
    def log(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)
    return log


def _data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="D",
                   help="built-in name (digits, fashion-mnist, breast-cancer, elpv, rings, spirals, gaussians), a "
                        ".csv/.npy/.parquet file, or an image folder DIR with DIR/train/good (normal, training), "
                        "DIR/test/good (normal) and DIR/test/<kind> (anomalies) (default digits)")
    g.add_argument("--image-size", type=int, metavar="N",
                   help="image folders and elpv: resize every image to NxN (default: elpv 64; a folder keeps its "
                        "images' size, which must then be the same for all)")
    g.add_argument("--cell-type", choices=["mono", "poly", "all"], default=None,
                   help="elpv: the solar cells to use (default all)")
    g.add_argument("--features", metavar="COLS", help="comma-separated feature columns (default: all numeric)")
    g.add_argument("--label", metavar="COL", help="label column; rows whose label differs from --normal are anomalies")
    g.add_argument("--normal", metavar="VALUE", help="label value of normal rows (others: kept out of training, "
                                                      "used in evaluation)")
    g.add_argument("--contaminated", action="store_true", default=None,
                   help="with a label column: train on every training row, anomalies included (split in the same "
                        "proportions as the normal rows); validation and test still use the labels")
    g.add_argument("--transform", choices=["auto", "standardize", "yeo-johnson", "none"], default=None,
                   help="continuous preprocessing (default auto: Yeo-Johnson on heavy-tailed columns, then standardise)")
    g.add_argument("--dequantize", choices=["auto", "none"], default=None,
                   help="auto (default): add uniform noise on [-0.5, 0.5] to integer-valued columns of the training "
                        "rows, so that a density cannot pile up on the integers; none: keep them")
    b = g.add_mutually_exclusive_group()
    b.add_argument("--binarize", dest="binarize", action="store_true", default=None, help="binarise image data")
    b.add_argument("--no-binarize", dest="binarize", action="store_false", help="keep image data continuous")
    m = g.add_mutually_exclusive_group()
    m.add_argument("--drop-missing", action="store_true", default=None, help="drop rows with NaN/inf values")
    m.add_argument("--impute", action="store_true", default=None, help="replace NaN/inf by the training median")
    g.add_argument("--max-rows", type=int, metavar="N", help="use a random subset of N rows")
    g.add_argument("--split-seed", type=int, metavar="S", help="seed of the train/val/test split (default: --seed)")


def _train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and objective")
    g.add_argument("--objective", choices=["fvnce", "elbo", "iwae", "nce", "vnce"], default=None)
    g.add_argument("--rule", choices=["kl", "power", "shifted_log", "logistic"], default=None,
                   help="scoring rule (fvnce: kl, power, shifted_log; nce/vnce also logistic)")
    g.add_argument("--alpha", type=float, help="power rule exponent, 1 <= alpha <= 2 for fvnce")
    g.add_argument("--shift", type=float, metavar="C", help="shifted_log rule constant c >= 0")
    g.add_argument("--k", type=int, help="importance samples per point")
    g.add_argument("--nu", type=int, help="noise samples per data point")
    g.add_argument("--exp-mode", choices=["exact", "linear", "clip"], default=None,
                   help="stabilisation (default linear: the rule's weight frozen outside |log r| <= tau, still "
                        "strictly proper with the same minimiser; clip: truncated at r = e^tau)")
    g.add_argument("--tau", type=float, help="band |log r| <= tau of --exp-mode linear/clip, > 0 (default 10)")
    g.add_argument("--noise", metavar="NAME", help="noise distribution name or module:callable plug-in "
                                                   "(runs your code: only name modules you trust)")
    g.add_argument("--model", metavar="NAME", help="model name (default auto)")
    g.add_argument("--z-dim", type=int, help="latent dimension")
    g.add_argument("--tilt-bound", type=float, metavar="B",
                   help="tilted_vae: bound the tilt, g = B tanh(h/B), so |log p~ - log p_base| <= B + |c|")
    g.add_argument("--components", type=int, metavar="N",
                   help="gaussian_mixture: number of mixture components (default 4)")
    g.add_argument("--freeze-base", action="store_true", default=None,
                   help="tilted_vae: train the tilt and log-normaliser only (implied by --noise base)")
    g.add_argument("--init-from", metavar="RUN_DIR", help="start from a finished run's weights (a VAE run "
                                                          "starts an energy-tilted model)")
    t = p.add_argument_group("training")
    s = t.add_mutually_exclusive_group()
    s.add_argument("--steps", type=int, help="optimiser steps")
    s.add_argument("--epochs", type=int, help="passes over the training data")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    t.add_argument("--grad-clip", type=float, help="gradient-norm clipping (default 10)")
    t.add_argument("--eval-every", type=int, metavar="N",
                   help="validation loss every N steps; best.pt keeps the best (default 100)")
    t.add_argument("--eval-k", type=int, metavar="K",
                   help="importance samples per row when the run is evaluated, scores rows and sets its alarm "
                        "threshold (default 64)")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--checkpoint-every", type=int, metavar="N",
                   help="write checkpoint.pt every N steps (default 100; also at the end and on Ctrl-C)")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None)
    _precision_arg(t)
    t.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model and encoder (falls back to eager if compilation fails)")
    t.add_argument("--dist-noise", choices=["rank", "shard"], default=None,
                   help="under torchrun: independent per-rank noise/latent samples (rank, default) or "
                        "global-size noise draws sliced per rank (shard, reproduces a single-process run)")


def _alarm_rate_arg(p, what: str) -> None:
    p.add_argument("--alarm-rate", type=float, metavar="RATE",
                   help=f"target false-alarm rate of {what} (default 0.01)")


def _overwrite_arg(p, what: str) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace the run or poc that --out holds (the new {what} is built beside it and swapped "
                        "in at the end; without this flag such an --out is refused)")


def _precision_arg(g) -> None:
    g.add_argument("--precision", choices=["fp32", "bf16", "auto"], default=None,
                   help="bf16: bfloat16 autocast for the network layers, log-weights kept in float32; "
                        "auto: bf16 on CUDA devices that support it and on CPUs with AMX, else fp32 (default fp32)")


def _vae_args(p, poc: bool = False) -> None:
    g = p.add_argument_group("your own VAE (docs/bring_your_own_model.md)")
    g.add_argument("--vae", metavar="FILE.py:FUNCTION",
                   help="start from your VAE: FUNCTION() in FILE.py returns (encoder, decoder); runs your code: name "
                        "only files you trust. --transform and --dequantize then default to none")
    g.add_argument("--vae-weights", metavar="WEIGHTS.pt",
                   help="torch.save({'encoder': ..., 'decoder': ...}) of their state_dicts (read as plain tensors)")
    if poc:
        g.add_argument("--vae-finetune", type=int, default=0, metavar="STEPS",
                       help="also fine-tune your VAE by the ELBO for STEPS steps, as an extra run (default 0: none)")


def _cost_args(p, what: str = "the cost-minimising alarm threshold, reported beside the alarm-rate one") -> None:
    g = p.add_argument_group("what an alarm costs (your own units)")
    g.add_argument("--cost-false-alarm", type=float, metavar="A", help=f"cost of a false alarm; with --cost-miss: {what}")
    g.add_argument("--cost-miss", type=float, metavar="B", help="cost of a missed anomaly")
    g.add_argument("--anomaly-share", type=float, metavar="P",
                   help="share of anomalies among the items (default: as found in the validation labels)")


def _costs(args) -> dict | None:
    """``{cost_false_alarm, cost_miss, anomaly_share}`` from the flags, checked; None without costs."""
    from .costs import check_costs
    from .errors import ConfigError

    a, b, p = args.cost_false_alarm, args.cost_miss, args.anomaly_share
    if a is None and b is None:
        if p is not None:
            raise ConfigError("--anomaly-share needs --cost-false-alarm and --cost-miss")
        return None
    if a is None or b is None:
        raise ConfigError("give both --cost-false-alarm and --cost-miss")
    check_costs(a, b, p)
    return {"cost_false_alarm": a, "cost_miss": b, "anomaly_share": p}


def _vae_spec(args) -> dict | None:
    """The user's VAE of ``--vae``/``--vae-weights`` (fvnce.user_vae.vae_spec); with it the
    rows reach the VAE as they are unless --transform/--dequantize say otherwise."""
    from .user_vae import vae_spec

    spec = vae_spec(args.vae, args.vae_weights)
    if spec is not None:
        if args.transform is None:
            args.transform = "none"
        if args.dequantize is None:
            args.dequantize = "none"
    return spec


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fvnce", description="Fully variational noise-contrastive estimation: train, "
                                               "evaluate and compare latent-variable models and anomaly detectors.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("train", help="train one model into a run directory")
    _data_args(p)
    _train_args(p)
    p.add_argument("--config", metavar="FILE.toml", help="TOML file with run settings (flags override it)")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    p.add_argument("--resume", action="store_true", help="continue RUN_DIR from its last checkpoint")
    _overwrite_arg(p, "run")
    p.add_argument("--quiet", action="store_true", help="no progress bar or log lines")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    _alarm_rate_arg(p, "the run's alarm threshold: the conformal (1 - RATE) quantile of the validation normal "
                       "rows' scores (all validation rows without labels)")
    _vae_args(p)
    _cost_args(p)

    p = sub.add_parser("evaluate", help="evaluate a run on its held-out data (or --data FILE)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", metavar="FILE", help="evaluate on this file instead (preprocessed as in training)")
    p.add_argument("--k", type=int, help="importance samples for the log-likelihood")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("score", help="write one anomaly score per input row or image (higher = more anomalous)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="a data file (writes row,score,alarm) or, for a run trained on images, a folder (every "
                        "image under it, sorted) or one image file (writes path,score,alarm)")
    p.add_argument("--out", required=True, metavar="SCORES.csv")
    p.add_argument("--k", type=int, help="importance samples per row")
    p.add_argument("--impute", action="store_true", help="replace missing values by training medians")
    a = p.add_mutually_exclusive_group()
    a.add_argument("--alarm-rate", type=float, metavar="RATE",
                   help="alarm at this target false-alarm rate instead of the run's (from its stored validation "
                        "scores)")
    a.add_argument("--threshold", type=float, metavar="T", help="alarm when the score is above T")
    _cost_args(p, "the alarm threshold: the one of lowest expected cost on the run's validation rows (instead of "
                  "its alarm-rate threshold)")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("sample", help="draw samples from a trained model")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--out", required=True, metavar="FILE", help=".npy, or .png grid for image data")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("poc", help="proof of concept: every noise x rule, baselines, report")
    _data_args(p)
    p.add_argument("--noises", metavar="a,b,c", help="noise candidates (default by data type); built-in names or "
                                                    "module:callable plug-ins")
    p.add_argument("--rules", metavar="r1,r2", default="kl,power:1.5",
                   help="FVNCE rules, e.g. kl,power:1.5,shifted_log:2 (default kl,power:1.5)")
    p.add_argument("--budget", default="default", help="quick, default, long, or steps per run")
    p.add_argument("--model", metavar="NAME", default="auto")
    p.add_argument("--z-dim", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--mixtures", metavar="K1,K2", default="1,4",
                   help="component counts of the diagonal Gaussian mixtures trained beside the VAE family on "
                        "continuous tabular data, or 'none' (default 1,4)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train the grid's runs in N worker processes on this machine (default 1)")
    _alarm_rate_arg(p, "every run's alarm threshold")
    _precision_arg(p)
    _vae_args(p, poc=True)
    p.add_argument("--learning-curve", metavar="F1,F2",
                   help="retrain the recommended configuration on these fractions of the training rows (nested "
                        "subsets; same validation and test rows), or 'none' (default 0.25,0.5; 0.5 on images)")
    _cost_args(p)
    p.add_argument("--out", default="poc_out", metavar="DIR")
    _overwrite_arg(p, "poc")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser("report", help="(re)build the HTML report of a poc or run directory")
    p.add_argument("path", metavar="DIR")
    p.add_argument("--out", metavar="FILE.html")
    return parser


# --- helpers turning flags into configurations ----------------------------------------------

def _data_spec(args, base=None):
    from .data import DataSpec

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


def _read_toml(path: str) -> dict:
    from .errors import ConfigError

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


def _run_config(args, base=None):
    """The RunConfig of a ``train`` command line: ``base`` (default: the ``--config`` file,
    else the CLI defaults) with every given flag applied."""
    from .errors import ConfigError
    from .runs import RunConfig
    from .train import TrainConfig

    if base is None:
        base = RunConfig.from_dict(_read_toml(args.config)) if args.config else RunConfig(
            objective_options={"exp_mode": "linear", "tau": 10.0})
    cfg = base
    if args.objective:
        cfg.objective = args.objective
    opts = dict(cfg.objective_options)
    if args.rule:
        opts["rule"] = args.rule
    if args.alpha is not None:
        if opts.get("rule", "kl") != "power":
            raise ConfigError("--alpha is the power rule's parameter: add --rule power")
        opts["alpha"] = args.alpha
    if args.shift is not None:
        if opts.get("rule") != "shifted_log":
            raise ConfigError("--shift is the shifted_log rule's parameter: add --rule shifted_log")
        opts["c"] = args.shift
    for key in ("k", "nu", "tau"):
        v = getattr(args, key)
        if v is not None:
            opts[key] = v
    if args.exp_mode:
        opts["exp_mode"] = args.exp_mode
    if cfg.objective in ("elbo", "iwae"):
        bad = [k for k in opts if k not in ("k",)]
        if any(k in ("rule", "alpha", "c", "nu") for k in bad):
            raise ConfigError(f"objective {cfg.objective!r} has no scoring rule, noise samples or rule parameters "
                              f"(got {', '.join(sorted(bad))})")
        opts = {k: v for k, v in opts.items() if k == "k"}
    cfg.objective_options = opts
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
    vae = _vae_spec(args)
    if vae is not None:
        cfg.vae = vae
    cfg.data = _data_spec(args, cfg.data)
    cfg.validate()
    return cfg


# --- subcommands ----------------------------------------------------------------------------

#: where each ``train`` flag lands in a run's configuration (paths into RunConfig.to_dict());
#: with --resume every given one must equal the saved setting
_FLAG_PATHS = {
    **{k: (("data", k),) for k in ("features", "label", "normal", "contaminated", "transform", "binarize",
                                  "max_rows", "dequantize", "image_size", "cell_type")},
    "data": (("data", "source"),), "drop_missing": (("data", "missing"),), "impute": (("data", "missing"),),
    "split_seed": (("data", "seed"),), "seed": (("train", "seed"), ("data", "seed")),
    "objective": (("objective",),), "noise": (("noise",),), "model": (("model",),), "init_from": (("init_from",),),
    "alarm_rate": (("alarm_rate",),), "shift": (("objective_options", "c"),), "eval_k": (("eval_k",),),
    **{k: (("objective_options", k),) for k in ("rule", "alpha", "k", "nu", "exp_mode", "tau")},
    **{k: (("model_options", k),) for k in ("z_dim", "tilt_bound", "freeze_base", "components")},
    **{k: (("train", k),) for k in ("batch_size", "lr", "grad_clip", "checkpoint_every", "eval_every", "device",
                                    "precision", "compile", "dist_noise")},
}
#: ``train`` options that are not settings of the run (or, steps/epochs, may change on --resume)
_NOT_SETTINGS = ("out", "resume", "overwrite", "quiet", "no_eval", "config", "steps", "epochs",
                 "vae", "vae_weights",  # --resume refuses them: the run keeps its own copy of the VAE
                 "cost_false_alarm", "cost_miss", "anomaly_share")  # applied after training, not stored settings
#: configuration paths a resumed run may change (how long it trains) or that are no setting
_FREE_PATHS = (("train", "steps"), ("train", "epochs"), ("train", "progress"))


def _resume_length(args):
    """With --resume the run's saved settings are used, and only its length may change:
    every other setting given (flags, and every key of a --config file) must equal the
    saved one, compared after the same normalisation as a new run's (paths resolved)."""
    from .errors import ConfigError
    from .runs import RunConfig, _read_config
    from .train import TrainConfig

    given = [k for k in _FLAG_PATHS if getattr(args, k, None) is not None]
    if given or args.config:
        saved = RunConfig.from_dict(_read_config(Path(args.out))["run"])
        try:  # as a new run would build it; on top of the saved run when no file gives the base
            toml = _read_toml(args.config) if args.config else None
            fresh = _run_config(args, base=RunConfig.from_dict(toml if toml is not None else saved.to_dict()))
        except ConfigError as exc:
            raise ConfigError(f"--resume: {exc}") from None
        have, want = fresh.to_dict(), saved.to_dict()  # saved itself is never changed: the base is a copy
        paths = [(_flag_name(flag), path) for flag in given for path in _FLAG_PATHS[flag]
                 if not (flag == "seed" and path[0] == "data" and args.split_seed is not None)]
        if toml is not None:
            paths += [(f"{'.'.join(path)} (in {args.config})", path) for path in _leaf_paths(toml)]
        for name, path in paths:
            if path in _FREE_PATHS:
                continue
            a, b = _at(have, path), _at(want, path)
            if not _same_setting(path, a, b):
                raise ConfigError(f"--resume continues the run with its saved settings, and {name} differs: saved "
                                  f"{_show(b)}, given {_show(a)} (only --steps or --epochs may change)")
    if args.steps is None and args.epochs is None:
        return None
    return RunConfig(train=TrainConfig(steps=args.steps, epochs=args.epochs))


def _flag_name(dest: str) -> str:
    return "--binarize/--no-binarize" if dest == "binarize" else f"--{dest.replace('_', '-')}"


def _leaf_paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    """Paths to the non-mapping values of a nested mapping (a TOML run configuration)."""
    out = []
    for key, value in d.items():
        out += _leaf_paths(value, prefix + (key,)) if isinstance(value, dict) else [prefix + (key,)]
    return out


def _at(d: dict, path: tuple):
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def _same_setting(path: tuple, a, b) -> bool:
    """Equal settings; data files and --init-from runs compared as resolved paths."""
    if path in (("data", "source"), ("init_from",)) and isinstance(a, str) and isinstance(b, str):
        from .data import BUILTIN

        def where(v: str) -> str:
            return v if path[0] == "data" and v in BUILTIN else str(Path(v).expanduser().resolve())
        return where(a) == where(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def _show(v) -> str:
    return "unset" if v is None else (json.dumps(v) if isinstance(v, (list, bool)) else str(v))


def _cmd_train(args) -> int:
    from . import distributed
    from .runs import evaluate_run, train_run

    # under torchrun: join the process group (gloo on CPU, NCCL on CUDA); rank 0 talks
    distributed.init_from_env(args.device or "auto")
    if not distributed.is_main():
        args.quiet = True
    log = _log_fn(args.quiet)
    if args.resume and args.overwrite:
        from .errors import ConfigError
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    costs = _costs(args)
    if args.resume:
        if args.vae or args.vae_weights:
            from .errors import ConfigError
            raise ConfigError("--resume continues with the run's own copy of your VAE; leave out --vae")
        result, dataset = train_run(_resume_length(args), args.out, resume=True, log=log,
                                    progress=not args.quiet and sys.stderr.isatty())
    else:
        cfg = _run_config(args)
        result, dataset = train_run(cfg, args.out, overwrite=args.overwrite, log=log)
    log(f"fvnce: trained {result.step} steps in {result.elapsed:.1f} s -> {args.out}")
    if distributed.is_main():
        from .runs import read_alarm

        log("fvnce: " + _alarm_line(read_alarm(args.out)))
    if not args.no_eval and distributed.is_main():
        ev = evaluate_run(args.out, dataset=dataset)
        log("fvnce: " + _headline(ev))
    if costs is not None and distributed.is_main():
        from .runs.costing import run_cost

        log("fvnce: " + run_cost(args.out, costs, dataset=dataset)["sentence"])
    return 0


def _alarm_line(rec: dict | None) -> str:
    """``alarm threshold 12.3 (target false-alarm rate 1 %, set on 270 validation normal rows)``."""
    if not rec or rec.get("threshold") is None:
        return "no alarm threshold" + (f": {rec['note']}" if rec and rec.get("note") else "")
    text = (f"alarm threshold {rec['threshold']:.6g} (target false-alarm rate {_pct(rec['rate'])}, set on "
            f"{rec['n']} {rec['calibrated_on']})")
    return text + (f"; note: {rec['note']}" if rec.get("note") else "")


def _pct(rate) -> str:
    return f"{100 * rate:.3g} %"


def _operating_text(op: dict | None, alarm: dict | None) -> str | None:
    """The operating point in words: false alarms per 1,000 normal items and the share of
    anomalies detected at the alarm threshold (alarms per 1,000 items without labels)."""
    if not op or not alarm:
        return None
    target = f"at the alarm threshold (target {_pct(alarm['rate'])})"
    if op.get("false_alarms_per_1000") is not None:
        text = f"{target}: {op['false_alarms_per_1000']:.3g} false alarms per 1,000 normal test items"
        if op.get("detection_rate") is not None:
            text += f", {100 * op['detection_rate']:.3g} % of anomalies detected"
        return text
    return f"{target}: {op['alarms_per_1000']:.3g} alarms per 1,000 test items" if op.get("alarms_per_1000") \
        is not None else None


def _headline(ev: dict) -> str:
    parts = []
    if ev.get("log_likelihood") is not None:
        kind = " (estimate)" if ev.get("log_likelihood_kind") == "estimate" else ""
        lz = ev.get("log_z") or {}
        if lz:  # an importance-sampled log Z: its diagnostics always go with the number
            khat, ess = lz.get("khat"), lz.get("ess_fraction")
            diag = f"log Z k-hat {khat:.2f}" if isinstance(khat, (int, float)) else "log Z k-hat n/a"
            diag += f", ESS {100 * ess:.2g} %" if isinstance(ess, (int, float)) else ""
            kind = f" ({'estimate' if lz.get('reliable') else 'UNRELIABLE estimate'}: {diag})"
        parts.append(f"test log-likelihood {ev['log_likelihood']:.3f} nats{kind}")
    if ev.get("noise_accuracy") is not None:
        parts.append(f"noise accuracy {ev['noise_accuracy']:.3f}")
    if ev.get("auroc") is not None:
        parts.append(f"AUROC {ev['auroc']:.3f}")
    if ev.get("fpr_at_95_tpr") is not None:
        parts.append(f"FPR@95TPR {ev['fpr_at_95_tpr']:.3f}")
    op = _operating_text(ev.get("operating_point"), ev.get("alarm"))
    if op:
        parts.append(op)
    return ", ".join(parts) or "evaluated"


def _cmd_evaluate(args) -> int:
    from .runs import evaluate_run

    if args.k is not None and args.k < 1:
        from .errors import ConfigError
        raise ConfigError(f"--k must be a positive integer, got {args.k}")
    ev = evaluate_run(args.run_dir, data_file=args.data, k=args.k, write=args.data is None)
    if args.json:
        keep = {k: v for k, v in ev.items() if k not in ("scores", "roc", "alarm_curve")}
        print(json.dumps(keep))
    else:
        print(_headline(ev))
    return 0


def _cmd_score(args) -> int:
    from .runs import score_file

    costs = _costs(args)
    threshold, how = args.threshold, None
    if costs is not None:  # the threshold of lowest expected cost on the run's validation rows
        from .errors import ConfigError
        from .runs.costing import cost_threshold

        if args.alarm_rate is not None or args.threshold is not None:
            raise ConfigError("give costs, --alarm-rate or --threshold, not more than one")
        threshold, how = cost_threshold(args.run_dir, costs)
    res = score_file(args.run_dir, args.data, args.out, k=args.k, missing="impute" if args.impute else None,
                     alarm_rate=args.alarm_rate, threshold=threshold)
    how = how or ("given" if res["rate"] is None else f"target false-alarm rate {_pct(res['rate'])} on "
                  f"{res['source']}")
    _log_fn(args.quiet)(f"fvnce: wrote {res['rows']} scores to {args.out}; {res['alarms']} alarm(s) above the "
                        f"threshold {res['threshold']:.6g} ({how})" + (f"; note: {res['note']}" if res["note"] else ""))
    return 0


def _cmd_sample(args) -> int:
    from .runs import sample_run

    method = sample_run(args.run_dir, args.n, args.out)
    _log_fn(args.quiet)(f"fvnce: wrote {args.n} samples ({method}) to {args.out}")
    return 0


def _mixtures(text: str) -> tuple[int, ...]:
    from .errors import ConfigError

    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(int(k) for k in text.split(",") if k.strip())
    except ValueError:
        raise ConfigError(f"--mixtures must be comma-separated component counts or 'none', got {text!r}") from None


def _cmd_poc(args) -> int:
    from .data import DataSpec
    from .poc import PocConfig, run_poc
    from .train import TrainConfig

    vae = _vae_spec(args)  # before the data spec: it sets the --transform/--dequantize defaults
    if args.data is None and args.normal is None and args.label is None:
        spec = _data_spec(args, DataSpec(source="digits", normal="0"))
    else:
        if args.data is None:
            args.data = "digits"
        spec = _data_spec(args)
    budget = int(args.budget) if str(args.budget).isdigit() else args.budget
    train = {"progress": False, "seed": args.seed}
    if args.lr is not None:
        train["lr"] = args.lr
    if args.batch_size is not None:
        train["batch_size"] = args.batch_size
    if args.precision is not None:
        train["precision"] = args.precision
    rules = args.rules if isinstance(args.rules, str) else ""  # argparse reads "--rules=--" as []
    cfg = PocConfig(data=spec, rules=[r for r in rules.split(",") if r.strip()], budget=budget,
                    noises=[n.strip() for n in args.noises.split(",") if n.strip()] if args.noises else None,
                    model=args.model, model_options={"z_dim": args.z_dim} if args.z_dim is not None else {},
                    train=TrainConfig.from_dict({**TrainConfig().to_dict(), **train}),
                    baselines=not args.no_baselines, mixtures=_mixtures(args.mixtures),
                    **({} if args.alarm_rate is None else {"alarm_rate": args.alarm_rate}), **_poc_extras(args))
    summary = run_poc(cfg, args.out, log=_log_fn(args.quiet), progress=not args.quiet and sys.stderr.isatty(),
                      workers=args.workers, overwrite=args.overwrite)
    rec = summary.get("recommended")
    log = _log_fn(args.quiet)
    log(f"fvnce: poc finished in {summary['wall_time_s']:.0f} s; report: {Path(args.out) / 'report.html'}")
    if rec:
        what = (f"{rec['run']} of {' and '.join(rec['members'])}, in {Path(args.out) / 'runs' / rec['run']}"
                if rec.get("members") else rec["run"])
        log(f"fvnce: recommended {what} ({rec['criterion']})")
        if rec.get("train_command"):
            log(f"fvnce: to train it again: {rec['train_command']}")
        elif rec.get("member_commands"):
            log(f"fvnce: to train its members again and score the union: recommended.member_commands and "
                f"score_command in {Path(args.out) / 'summary.json'}")
    return 0


def _poc_extras(args) -> dict:
    """The poc's settings for your own VAE, the learning curve and the costs."""
    from .learning_curve import parse_fractions

    vae = _vae_spec(args)
    fractions = None if args.learning_curve is None else parse_fractions(args.learning_curve)  # None: by the data
    return {"vae": vae, "vae_finetune": args.vae_finetune, "learning_curve": fractions,
            "costs": _costs(args)}


def _cmd_report(args) -> int:
    from .report import build_report

    path = build_report(args.path, args.out)
    print(path)
    return 0


COMMANDS = {"train": _cmd_train, "evaluate": _cmd_evaluate, "score": _cmd_score, "sample": _cmd_sample,
            "poc": _cmd_poc, "report": _cmd_report}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from . import __version__
        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    from .errors import FvnceError
    from .train import TrainingInterrupted

    try:
        return COMMANDS[args.command](args)
    except TrainingInterrupted as exc:
        print(f"fvnce: {exc}", file=sys.stderr)
        if exc.run_dir is not None:
            import shlex
            print(f"fvnce: to continue: fvnce train --out {shlex.quote(str(exc.run_dir))} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FvnceError as exc:
        print(f"fvnce: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("fvnce: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, MemoryError) as exc:  # disk full, permissions: still one line
        print(f"fvnce: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _entry() -> None:  # pragma: no cover - console script wrapper
    """Run :func:`main` and leave with ``os._exit`` after flushing: every file fvnce writes
    is written atomically and closed by then, and the interpreter's teardown after
    torch (and torch._dynamo, which every torch optimiser imports) took about 1 s of each
    command.  Under torchrun the process group is destroyed first."""
    from .distributed import exit_process, flush_and_exit, is_active

    code = main()
    if is_active():
        exit_process(code)  # destroy the process group, flush, os._exit
    flush_and_exit(code)


if __name__ == "__main__":  # pragma: no cover
    _entry()
