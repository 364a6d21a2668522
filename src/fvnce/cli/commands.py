"""The ``fvnce`` subcommands: each takes the parsed arguments and returns the exit code."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .. import distributed
from ..data import DataSpec
from ..errors import ConfigError
from ..filenames import REPORT_NAME, SUMMARY_NAME
from ..learning_curve import parse_fractions
from ..poc import PocConfig, run_poc
from ..report import build_report
from ..runs import evaluate_run, read_alarm, sample_run, score_file, train_run
from ..runs.costing import cost_threshold, run_cost
from ..train import TrainConfig
from . import options
from .resume import resume_length
from .text import alarm_line, headline, pct, stderr_log

__all__ = ["COMMANDS"]


def train(args) -> int:
    """``fvnce train``: train a run (or resume one), set its alarm threshold, evaluate it."""
    # under torchrun: join the process group (gloo on CPU, NCCL on CUDA); rank 0 talks
    distributed.init_from_env(args.device or "auto")
    if not distributed.is_main():
        args.quiet = True
    log = stderr_log(args.quiet)
    if args.resume and args.overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it: give one of them")
    costs = options.costs(args)
    if args.resume:
        if args.vae or args.vae_weights:
            raise ConfigError("--resume continues with the run's own copy of your VAE; leave out --vae")
        result, dataset = train_run(resume_length(args), args.out, resume=True, log=log,
                                    progress=not args.quiet and sys.stderr.isatty())
    else:
        cfg = options.run_config(args)
        result, dataset = train_run(cfg, args.out, overwrite=args.overwrite, log=log)
    log(f"fvnce: trained {result.step} steps in {result.elapsed:.1f} s -> {args.out}")
    if distributed.is_main():
        log("fvnce: " + alarm_line(read_alarm(args.out)))
    if not args.no_eval and distributed.is_main():
        ev = evaluate_run(args.out, dataset=dataset)
        log("fvnce: " + headline(ev))
    if costs is not None and distributed.is_main():
        log("fvnce: " + run_cost(args.out, costs, dataset=dataset)["sentence"])
    return 0


def evaluate(args) -> int:
    """``fvnce evaluate``: a run's metrics (``--json``: as one JSON object)."""
    if args.k is not None and args.k < 1:
        raise ConfigError(f"--k must be a positive integer, got {args.k}")
    ev = evaluate_run(args.run_dir, data_file=args.data, k=args.k, write=args.data is None)
    if args.json:
        keep = {k: v for k, v in ev.items() if k not in ("scores", "roc", "alarm_curve")}
        print(json.dumps(keep))
    else:
        print(headline(ev))
    return 0


def score(args) -> int:
    """``fvnce score``: one anomaly score and alarm per row or image."""
    costs = options.costs(args)
    threshold, how = args.threshold, None
    if costs is not None:  # the threshold of lowest expected cost on the run's validation rows
        if args.alarm_rate is not None or args.threshold is not None:
            raise ConfigError("give costs, --alarm-rate or --threshold, not more than one")
        threshold, how = cost_threshold(args.run_dir, costs)
    res = score_file(args.run_dir, args.data, args.out, k=args.k, missing="impute" if args.impute else None,
                     alarm_rate=args.alarm_rate, threshold=threshold, maps=args.maps)
    if "maps" in res:
        stderr_log(args.quiet)(f"fvnce: wrote {res['maps']} per-pixel anomaly map(s) to {args.maps} (heat scale "
                               f"{res['map_scale'][0]:.4g} to {res['map_scale'][1]:.4g} nats per pixel)")
    how = how or ("given" if res["rate"] is None else f"target false-alarm rate {pct(res['rate'])} on "
                  f"{res['source']}")
    stderr_log(args.quiet)(f"fvnce: wrote {res['rows']} scores to {args.out}; {res['alarms']} alarm(s) above the "
                           f"threshold {res['threshold']:.6g} ({how})" + (f"; note: {res['note']}" if res["note"] else ""))
    return 0


def sample(args) -> int:
    """``fvnce sample``: model samples into a .npy file or a .png grid."""
    method = sample_run(args.run_dir, args.n, args.out)
    stderr_log(args.quiet)(f"fvnce: wrote {args.n} samples ({method}) to {args.out}")
    return 0


def poc(args) -> int:
    """``fvnce poc``: the proof of concept (every noise x rule, baselines, report)."""
    vae = options.vae_spec_of(args)  # before the data spec: it sets the --transform/--dequantize defaults
    if args.data is None and args.normal is None and args.label is None:
        spec = options.data_spec(args, DataSpec(source="digits", normal="0"))
    else:
        if args.data is None:
            args.data = "digits"
        spec = options.data_spec(args)
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
                    baselines=not args.no_baselines, mixtures=options.mixtures(args.mixtures),
                    **({} if args.alarm_rate is None else {"alarm_rate": args.alarm_rate}), **_poc_extras(args))
    summary = run_poc(cfg, args.out, log=stderr_log(args.quiet), progress=not args.quiet and sys.stderr.isatty(),
                      workers=args.workers, overwrite=args.overwrite)
    rec = summary.get("recommended")
    log = stderr_log(args.quiet)
    log(f"fvnce: poc finished in {summary['wall_time_s']:.0f} s; report: {Path(args.out) / REPORT_NAME}")
    if rec:
        what = (f"{rec['run']} of {' and '.join(rec['members'])}, in {Path(args.out) / 'runs' / rec['run']}"
                if rec.get("members") else rec["run"])
        log(f"fvnce: recommended {what} ({rec['criterion']})")
        if rec.get("train_command"):
            log(f"fvnce: to train it again: {rec['train_command']}")
        elif rec.get("member_commands"):
            log(f"fvnce: to train its members again and score the union: recommended.member_commands and "
                f"score_command in {Path(args.out) / SUMMARY_NAME}")
    return 0


def _poc_extras(args) -> dict:
    """The poc's settings for your own VAE, the learning curve and the costs."""
    vae = options.vae_spec_of(args)
    fractions = None if args.learning_curve is None else parse_fractions(args.learning_curve)  # None: by the data
    return {"vae": vae, "vae_finetune": args.vae_finetune, "learning_curve": fractions,
            "costs": options.costs(args)}


def report(args) -> int:
    """``fvnce report``: (re)build the HTML report of a poc or run folder."""
    path = build_report(args.path, args.out)
    print(path)
    return 0


COMMANDS = {"train": train, "evaluate": evaluate, "score": score, "sample": sample, "poc": poc, "report": report}
