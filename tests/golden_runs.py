"""Golden runs: small fixed-seed training runs (60 steps each) whose final parameters,
metrics history, evaluation and samples are recorded in ``tests/golden/runs.json`` as
values, and compared within a float32 tolerance (``tests/test_golden.py``, which states
the tolerance and why).  What is deterministic by construction (two runs of one seed,
a resumed run against the uninterrupted one, a fresh process against this one) is
compared bit for bit in ``tests/test_determinism.py``.

Re-record only for a deliberate behaviour change (a new objective term, another order
of random draws, a changed default), from a commit whose behaviour is known to be right,
and say so in the commit; a refactoring that claims "no behaviour change" must pass
without re-recording:

    python tests/golden_runs.py --record

``python tests/golden_runs.py --check`` compares this process's runs with the file
(exit 1 and one line per difference); ``--bits`` prints the sha256 of every part of
every run.  The tests run both in subprocesses.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import numpy as np
import torch

GOLDEN = Path(__file__).resolve().parent / "golden" / "runs.json"
VOLATILE = {"elapsed", "wall_time_s", "fvnce_version"}

#: name -> (run settings, steps of a first part when the run is trained longer afterwards)
RUNS = {
    "elbo": ({"objective": "elbo", "model": "vae", "model_options": {"z_dim": 4, "hidden": [32]},
              "data": {"source": "digits", "max_rows": 400, "normal": "0", "binarize": True}}, None),
    "fvnce_kl_noise": ({"objective": "fvnce", "objective_options": {"rule": "kl", "nu": 1, "k": 2,
                                                                    "exp_mode": "linear", "tau": 10.0},
                        "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16]},
                        "noise": "full_gaussian",
                        "data": {"source": "breast-cancer", "normal": "benign"}}, None),
    "fvnce_power_noise": ({"objective": "fvnce", "objective_options": {"rule": "power", "alpha": 1.5, "nu": 2,
                                                                       "exp_mode": "linear", "tau": 10.0},
                           "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16]},
                           "noise": "diag_gaussian", "data": {"source": "breast-cancer", "normal": "benign"}},
                          None),
    "rbm_nce": ({"objective": "nce", "objective_options": {"nu": 2}, "model": "rbm", "model_options": {"h_dim": 6},
                 "noise": "marginals",
                 "data": {"source": "digits", "max_rows": 400, "normal": "0", "binarize": True}}, None),
    "fvnce_kl_resumed": ({"objective": "fvnce", "objective_options": {"rule": "kl", "nu": 1,
                                                                      "exp_mode": "linear", "tau": 10.0},
                          "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16]},
                          "noise": "full_gaussian", "data": {"source": "breast-cancer", "normal": "benign"}}, 25),
    # exact exponentials, an unbounded tilt and a tight explosion limit: a rollback after a checkpoint, the
    # stabilisation tightened (retry and stabilise events, metrics truncated)
    "power_rollback": ({"objective": "fvnce", "objective_options": {"rule": "power", "alpha": 1.5, "nu": 2,
                                                                    "exp_mode": "exact"},
                        "model": "tilted_vae", "model_options": {"z_dim": 2, "hidden": [16], "tilt_bound": None},
                        "noise": "diag_gaussian", "data": {"source": "breast-cancer", "normal": "benign"},
                        "train": {"lr": 2e-2, "explode_log_ratio": 14.0, "max_retries": 5}}, None),
}
TRAIN = {"steps": 60, "batch_size": 32, "lr": 2e-3, "log_every": 10, "eval_every": 20, "checkpoint_every": 20,
         "progress": False, "device": "cpu", "seed": 3}

#: tolerances of the stored values (justified in tests/test_golden.py)
RTOL = 2e-4
SAMPLES_RTOL = 2e-2
#: vectors up to this length are stored in full, longer ones as sums and norms
SMALL = 32
#: float-valued settings and schedules: compared exactly, not within the tolerance
EXACT_KEYS = frozenset({"lr", "grad_clip", "tau", "rate", "range_level"})
#: free-text fields: compared exactly once their decimal numbers (rounded floats) are masked
TEXT_KEYS = frozenset({"message", "reason", "note"})


def machine() -> dict:
    """Where the values were recorded (shown in failure messages, never a reason to skip)."""
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy": np.__version__, "torch_threads": torch.get_num_threads()}


# -- running ------------------------------------------------------------------------------

class Killed(Exception):
    """Raised after a step to leave a run directory as a hard kill leaves it."""


@contextmanager
def interrupted_at(step: int, how: str):
    """Within the block, a training run stops once, after ``step``: ``how="stop"`` as on
    Ctrl-C (a checkpoint at ``step``, :class:`TrainingInterrupted`), ``how="kill"`` as on
    a hard kill (nothing saved beyond the last periodic checkpoint; :class:`Killed`)."""
    from fvnce.train import Trainer

    fit, fired = Trainer.fit, []

    def callback(trainer, record):
        if trainer.step == step and not fired:
            fired.append(step)
            if how == "kill":
                raise Killed(f"killed after step {step}")
            trainer.request_stop()

    def fit_with_callback(self, train, val=None, resume=False, callback_=None):
        return fit(self, train, val, resume, callback=callback)

    with mock.patch.object(Trainer, "fit", fit_with_callback):
        yield
    assert fired, f"the run never reached step {step}"


def _settings(name: str, steps: int) -> dict:
    settings, _ = RUNS[name]
    d = {**settings, "eval_k": 8, "train": {**TRAIN, **settings.get("train", {}), "steps": steps}}
    return json.loads(json.dumps(d))


def _strip(obj):
    """Drop timings (recursively)."""
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def run(name: str, *, first: int | None = -1, interrupt: tuple[str, int] | None = None) -> dict:
    """Train golden run ``name`` in a temporary directory, evaluate it, and return what it
    left: checkpoint, best weights, metrics history, evaluation, alarm and samples (timings
    dropped).  ``first``: steps of a first part before training on to the full length
    (default: the run's own, None: in one go).  ``interrupt=(how, step)``: stopped after
    ``step`` (:func:`interrupted_at`) and then resumed."""
    from fvnce.runs import RunConfig, evaluate_run, train_run
    from fvnce.train import TrainConfig
    from fvnce.train.interrupt import TrainingInterrupted

    first = RUNS[name][1] if first == -1 else first
    total = TRAIN["steps"]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / name
        config = RunConfig.from_dict(_settings(name, first or total))
        if interrupt is None:
            train_run(config, out)
        else:
            how, step = interrupt
            with interrupted_at(step, how), pytest_raises(Killed if how == "kill" else TrainingInterrupted):
                train_run(config, out)
        if first or interrupt:
            train_run(RunConfig(train=TrainConfig(steps=total)), out, resume=True)
        evaluation = evaluate_run(out)
        checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
        best = torch.load(out / "best.pt", weights_only=False) if (out / "best.pt").exists() else None
        metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        samples = np.load(out / "samples.npy") if (out / "samples.npy").exists() else None
        alarm = json.loads((out / "alarm.json").read_text()) if (out / "alarm.json").exists() else None
    return {"checkpoint": _strip(checkpoint), "best": _strip(best), "metrics": _strip(metrics),
            "evaluation": _strip(json.loads(json.dumps(evaluation))), "alarm": alarm, "samples": samples}


@contextmanager
def pytest_raises(exc_type):
    """Expect ``exc_type`` from the block (without importing pytest into the recorder)."""
    try:
        yield
    except exc_type:
        return
    raise AssertionError(f"expected {exc_type.__name__}")


# -- bit-for-bit digests ----------------------------------------------------------------------

def _feed(h, obj) -> None:
    """Canonical bytes of nested data: tensors and arrays by dtype, shape and raw bytes,
    floats by their exact hexadecimal form."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        h.update(b"{")
        for k in sorted(obj, key=str):
            h.update(repr(k).encode() + b":")
            _feed(h, obj[k])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
            h.update(b",")
        h.update(b"]")
    elif isinstance(obj, float):
        h.update(b"f" + obj.hex().encode())
    else:
        h.update(f"{type(obj).__name__}:{obj!r}".encode())


def bits(result: dict) -> dict:
    """sha256 of each part of a :func:`run` result (the checkpoint part by part)."""
    parts = {f"checkpoint.{k}": v for k, v in result["checkpoint"].items()}
    parts.update({k: v for k, v in result.items() if k != "checkpoint"})
    out = {}
    for k, v in parts.items():
        h = hashlib.sha256()
        _feed(h, v)
        out[k] = h.hexdigest()
    return out


# -- stored values ------------------------------------------------------------------------------

def _vector(x) -> dict:
    """A vector's stored form: its length and shape, sum, sum of magnitudes, 2-norm, extremes
    (all in float64), and its values when it is short."""
    a = np.asarray(x, dtype=np.float64)
    flat = a.ravel()
    v = {"vector": int(flat.size), "shape": list(a.shape)}
    if flat.size:
        v.update({"sum": float(flat.sum()), "abs_sum": float(np.abs(flat).sum()),
                  "norm": float(np.linalg.norm(flat)), "min": float(flat.min()), "max": float(flat.max())})
    if flat.size <= SMALL:
        v["values"] = flat.tolist()
    return v


def _is_numbers(x) -> bool:
    return (isinstance(x, list) and bool(x)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in x))


def _values(obj, key: str = ""):
    """JSON data with every list of numbers replaced by :func:`_vector`."""
    if isinstance(obj, dict):
        return {k: _values(v, k) for k, v in obj.items()}
    if _is_numbers(obj) and key not in EXACT_KEYS:
        return _vector(obj)
    if isinstance(obj, list):
        return [_values(v, key) for v in obj]
    return obj


def stored(result: dict) -> dict:
    """What the golden file keeps of a :func:`run` result."""
    ck = result["checkpoint"]
    params = {f"{part}.{k}": _vector(v.detach().double().numpy())
              for part in ("model", "encoder") for k, v in sorted((ck[part] or {}).items())}
    return {"step": ck["step"], "lr": ck["lr"], "grad_clip": ck["grad_clip"], "rule": ck["rule"],
            "retries": ck["retries"], "best_step": ck["best_step"], "best_val": ck["best_val"],
            "params": params, "metrics": _values(result["metrics"]),
            "evaluation": _values(result["evaluation"]), "alarm": _values(result["alarm"]),
            "samples": None if result["samples"] is None else _vector(result["samples"])}


def _mask(text: str) -> str:
    return re.sub(r"\d+\.\d+", "#", text)


def _dev(want: float, got: float, scale: float = 0.0) -> float:
    """The relative tolerance that ``got`` needs to match ``want``: the difference over the
    larger magnitude, or over ``scale`` when that is larger."""
    if not (math.isfinite(want) and math.isfinite(got)):
        return 0.0 if want == got or (math.isnan(want) and math.isnan(got)) else math.inf
    m = max(abs(want), abs(got), scale)
    return abs(want - got) / m if m else 0.0


def deviations(want, got, path: str = "") -> list[tuple[str, float, str]]:
    """``(path, deviation, message)`` for every compared quantity of stored values
    ``want`` and ``got``.  A float's deviation is its relative difference; a vector's sum is
    measured against its sum of magnitudes, its extremes and elements against its largest
    magnitude (what a rounding error in a reduction or an update scales with).  Everything
    else (integers, strings, flags, lengths, shapes, keys, the floats named in
    :data:`EXACT_KEYS`) must be equal: deviation 0 or infinity."""
    key = path.rsplit(".", 1)[-1].split("[")[0]
    if isinstance(want, dict) and isinstance(got, dict):
        if "vector" in want and "vector" in got:
            return _vector_deviations(want, got, path)
        if set(want) != set(got):
            return [(path, math.inf, f"keys differ: missing {sorted(set(want) - set(got))}, "
                                     f"extra {sorted(set(got) - set(want))}")]
        return [d for k in want for d in deviations(want[k], got[k], f"{path}.{k}" if path else k)]
    if isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            return [(path, math.inf, f"{len(got)} entries, stored {len(want)}")]
        return [d for i, (w, g) in enumerate(zip(want, got)) for d in deviations(w, g, f"{path}[{i}]")]
    if isinstance(want, float) and isinstance(got, float) and key not in EXACT_KEYS:
        return [(path, _dev(want, got), f"{got!r}, stored {want!r}")]
    if isinstance(want, str) and isinstance(got, str) and key in TEXT_KEYS:
        return [(path, 0.0 if _mask(want) == _mask(got) else math.inf, f"{got!r}, stored {want!r}")]
    same = type(want) is type(got) and want == got
    return [(path, 0.0 if same else math.inf, f"{got!r}, stored {want!r} (compared exactly)")]


def _vector_deviations(want: dict, got: dict, path: str) -> list[tuple[str, float, str]]:
    if want["vector"] != got["vector"] or want["shape"] != got["shape"]:
        return [(path, math.inf, f"shape {got['shape']}, stored {want['shape']}")]
    if not want["vector"]:
        return []
    scale = max(abs(want["min"]), abs(want["max"]))
    out = [(f"{path}.{k}", _dev(want[k], got[k], s), f"{got[k]!r}, stored {want[k]!r}")
           for k, s in (("sum", want["abs_sum"]), ("abs_sum", 0.0), ("norm", 0.0), ("min", scale), ("max", scale))]
    for i, (w, g) in enumerate(zip(want.get("values", ()), got.get("values", ()))):
        out.append((f"{path}[{i}]", _dev(w, g, scale), f"{g!r}, stored {w!r}"))
    return out


def compare(want, got, rtol: float = None, samples_rtol: float = None) -> list[str]:
    """The quantities of ``got`` that differ from ``want`` by more than ``rtol`` (the
    samples: ``samples_rtol``) (:func:`deviations`), one line each."""
    rtol = RTOL if rtol is None else rtol
    samples_rtol = SAMPLES_RTOL if samples_rtol is None else samples_rtol
    out = []
    for path, dev, msg in deviations(want, got):
        tol = samples_rtol if path.startswith("samples") else rtol
        if dev > tol:
            out.append(f"{path}: {msg} (deviation {dev:.2g} > {tol:g})")
    return out


# -- command line ------------------------------------------------------------------------------

def record() -> None:
    torch.set_num_threads(1)
    data = {"recorded_on": machine(), "runs": {name: stored(run(name)) for name in RUNS}}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


def check(names) -> list[str]:
    golden = json.loads(GOLDEN.read_text())["runs"]
    got = {name: json.loads(json.dumps(stored(run(name)))) for name in names}
    return [f"{name}: {d}" for name in names for d in compare(golden[name], got[name])]


if __name__ == "__main__":
    args = sys.argv[1:]
    torch.set_num_threads(1)
    if args == ["--record"]:
        record()
    elif args[:1] == ["--check"]:
        diffs = check(args[1:] or sorted(RUNS))
        print("\n".join(diffs) or f"ok on {machine()}")
        sys.exit(1 if diffs else 0)
    elif args[:1] == ["--bits"]:
        print(json.dumps({name: bits(run(name)) for name in args[1:] or sorted(RUNS)}))
    else:
        sys.exit("usage: python tests/golden_runs.py --record | --check [NAME...] | --bits [NAME...]")
