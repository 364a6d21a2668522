"""A run's configuration as the ``fvnce train`` command line that trains it again.

:func:`train_command` writes every setting of a :class:`~fvnce.runs.config.RunConfig` as
a flag (the defaults too, so that the line does not depend on them), then parses the line
with the command line's own parser and checks that it gives the same configuration; a
setting that no flag expresses (a noise option, a model option other than those with
flags) gives no command and a note naming it, never a command that trains something else.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..data import BUILTIN
from ..errors import FvnceError
from ..rules import rule_flags
from ..runs.config import RunConfig
from .options import run_config
from .parser import build_parser

__all__ = ["config_differences", "source_arg", "train_command"]

#: settings compared as paths (after resolution), and those that are no setting
_PATHS = (("data", "source"), ("init_from",))
_FREE = (("train", "progress"),)


def _num(v) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


def source_arg(source: str) -> str:
    """The ``--data`` argument of a data source: a built-in name (or a path that does not
    exist) as it is, a file or folder as its resolved path."""
    if source in BUILTIN or not Path(source).expanduser().exists():
        return source
    return str(Path(source).expanduser().resolve())


def _flags(rc: RunConfig) -> list[str]:
    d = rc.to_dict()
    data, train, obj, mopts = d["data"], d["train"], d["objective_options"], d["model_options"]
    out = ["--data", source_arg(data["source"])]
    if data.get("features"):
        out += ["--features", ",".join(data["features"])]
    for key, flag in (("label", "--label"), ("normal", "--normal"), ("transform", "--transform"),
                      ("dequantize", "--dequantize"), ("max_rows", "--max-rows"), ("seed", "--split-seed"),
                      ("image_size", "--image-size"), ("cell_type", "--cell-type")):
        if data.get(key) is not None:
            out += [flag, _num(data[key])]
    if data.get("binarize") is not None:
        out.append("--binarize" if data["binarize"] else "--no-binarize")
    if data.get("missing") in ("drop", "impute"):
        out.append("--drop-missing" if data["missing"] == "drop" else "--impute")
    if data.get("contaminated"):
        out.append("--contaminated")
    out += ["--objective", d["objective"]]
    rule_params = tuple((param, f"--{flag}") for flag, (_, param) in rule_flags().items())
    for key, flag in (("rule", "--rule"), *rule_params, ("k", "--k"), ("nu", "--nu"), ("exp_mode", "--exp-mode"),
                      ("tau", "--tau")):
        if obj.get(key) is not None:
            out += [flag, _num(obj[key])]
    out += ["--model", d["model"]]
    for key, flag in (("z_dim", "--z-dim"), ("tilt_bound", "--tilt-bound"), ("components", "--components"),
                      ("init", "--init")):
        if mopts.get(key) is not None:
            out += [flag, _num(mopts[key])]
    if mopts.get("freeze_base"):
        out.append("--freeze-base")
    out += ["--noise", d["noise"]]
    if d.get("init_from"):
        out += ["--init-from", d["init_from"]]
    if train.get("steps") is not None:
        out += ["--steps", _num(train["steps"])]
    elif train.get("epochs") is not None:
        out += ["--epochs", _num(train["epochs"])]
    for key in ("batch_size", "lr", "grad_clip", "eval_every", "checkpoint_every", "seed", "device", "precision",
                "dist_noise"):
        if train.get(key) is not None:
            out += [f"--{key.replace('_', '-')}", _num(train[key])]
    if train.get("compile"):
        out.append("--compile")
    out += ["--eval-k", _num(d["eval_k"]), "--alarm-rate", _num(d["alarm_rate"])]
    return out


def _leaves(d, prefix=()):
    if isinstance(d, dict):
        out = {}
        for k, v in d.items():
            out.update(_leaves(v, prefix + (k,)))
        return out
    return {prefix: list(d) if isinstance(d, tuple) else d}


def config_differences(a: dict, b: dict) -> list[str]:
    """Dotted names of the settings where two ``RunConfig.to_dict()`` records differ (paths
    of data files and ``init_from`` compared after resolution; ``train.progress`` ignored)."""
    def norm(path, v):
        if path in _PATHS and isinstance(v, str) and not (path[0] == "data" and v in BUILTIN):
            return str(Path(v).expanduser().resolve())
        return v

    la, lb = _leaves(a), _leaves(b)
    return sorted(".".join(p) for p in set(la) | set(lb)
                  if p not in _FREE and norm(p, la.get(p, "<unset>")) != norm(p, lb.get(p, "<unset>")))


def train_command(rc: RunConfig, out: str) -> tuple[str | None, str | None]:
    """``(command, note)``: the ``fvnce train`` line (shlex-quoted) that trains ``rc`` into
    ``out``, checked by parsing it back; ``(None, note)`` when a setting has no flag."""
    argv = ["train", *_flags(rc), "--out", str(out)]
    try:
        args = build_parser().parse_args(argv)
        got = run_config(args).to_dict()
    except (FvnceError, SystemExit) as exc:
        return None, f"no train command: its settings do not parse back ({exc})"
    diff = config_differences(got, rc.to_dict())
    if diff:
        return None, f"no train command: no flag sets {', '.join(diff)}"
    return "fvnce " + shlex.join(argv), None
