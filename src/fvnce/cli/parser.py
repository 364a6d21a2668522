"""The ``fvnce`` argument parser: every subcommand and flag, the choices read from the
registries (objectives, rules and their parameter flags, transforms, stabilisations)."""

from __future__ import annotations

import argparse

from ..data.spec import DEQUANTIZE_MODES, TRANSFORMS
from ..distributed import DIST_NOISE
from ..objectives import OBJECTIVES
from ..rules import EXP_MODES, RULES, named_rules
from ..train.config import PRECISIONS

__all__ = ["EXIT_BAD_INPUT", "EXIT_INTERRUPTED", "Parser", "build_parser"]

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"fvnce: error: {message} (see '{self.prog} --help')\n")


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
    g.add_argument("--transform", choices=list(TRANSFORMS), default=None,
                   help="continuous preprocessing (default auto: Yeo-Johnson on heavy-tailed columns, then standardise)")
    g.add_argument("--dequantize", choices=list(DEQUANTIZE_MODES), default=None,
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
    g.add_argument("--objective", choices=list(OBJECTIVES), default=None)
    g.add_argument("--rule", choices=named_rules(), default=None,
                   help="scoring rule (fvnce: kl, power, shifted_log; nce/vnce also logistic)")
    for rule in RULES.values():  # each rule's parameter flag: --alpha (power), --shift (shifted_log)
        if rule.flag and rule.param:
            g.add_argument(f"--{rule.flag}", type=float, metavar=rule.flag_metavar, help=rule.flag_help)
    g.add_argument("--k", type=int, help="importance samples per point")
    g.add_argument("--nu", type=int, help="noise samples per data point")
    g.add_argument("--exp-mode", choices=list(EXP_MODES), default=None,
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
    g.add_argument("--init", choices=["random", "pca", "data"], default=None,
                   help="how the parameters start: pca (linear_gaussian: probabilistic PCA of the training "
                        "rows), data (gaussian_mixture: the training rows' moments; for data that are not "
                        "standardised, such as images), random (the default)")
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
    t.add_argument("--dist-noise", choices=list(DIST_NOISE), default=None,
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
    g.add_argument("--precision", choices=list(PRECISIONS), default=None,
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


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fvnce", description="Fully variational noise-contrastive estimation: train, "
                                               "evaluate and compare latent-variable models and anomaly detectors.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=Parser)

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
    p.add_argument("--maps", metavar="DIR", help="also write each image's per-pixel anomaly map as a PNG into DIR (a "
                                                  "new or empty folder), named after the image; image runs only")
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

