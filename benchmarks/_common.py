"""Shared helpers of the benchmark scripts: thread settings, interleaved timing rounds
with load recording, medians, machine description, tables and the JSON writer.

Timing protocol: variants run in *rounds*; each round runs every variant once,
in an order that rotates from round to round, so slow drifts of the machine hit all
variants alike.  ``os.getloadavg()`` is read before and after each round; a round whose
1-minute load average exceeds ``threads + busy_margin`` (someone else is computing) is
flagged ``disturbed`` and left out of the medians when enough clean rounds remain.
Ratios are per-round ratios against the baseline measured in the same round, then the
median of those.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def parser(name: str, doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"benchmarks/{name}.py", description=doc.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke mode, about 2 minutes")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS / f"{name}.json", help="JSON output path")
    p.add_argument("--seed", type=int, default=0)
    return p


def set_threads(n: int) -> None:
    """Pin torch (and BLAS through the environment of child libraries) to ``n`` threads."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    import torch
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set in this process


def load() -> float:
    return os.getloadavg()[0]


def machine(threads: int) -> dict:
    import torch
    cpu = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("unknown", "x86_64", ""):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    fl = line.split(":", 1)[1].split()
                    flags = sorted(x for x in fl if x.startswith(("avx", "amx", "fma")))
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cpu_flags": flags, "cores": os.cpu_count(), "threads": threads,
            "torch": torch.__version__, "python": platform.python_version(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def interleaved(variants: dict[str, Callable[[], None]], rounds: int, reps: int = 1, warmup: int = 1,
                busy_margin: float = 0.75, threads: int = 1, clock: Callable[[], float] | None = None) -> dict:
    """Time every variant ``reps`` calls per round for ``rounds`` rounds, rotating the
    order.  Returns per-variant lists of seconds per call, plus per-round loads and flags.
    ``clock`` defaults to wall time (``time.perf_counter``); ``time.thread_time`` counts
    only this thread's CPU time, which on a shared machine leaves out the time the
    other processes hold the core (not their effect on caches)."""
    clock = clock or time.perf_counter
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds_info = []
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        l0 = load()
        for n in order:
            t = clock()
            for _ in range(reps):
                variants[n]()
            times[n].append((clock() - t) / reps)
        l1 = load()
        rounds_info.append({"load_before": l0, "load_after": l1,
                            "disturbed": max(l0, l1) > threads + busy_margin})
    return {"times": times, "rounds": rounds_info}


def summarise(res: dict, baseline: str | None = None, min_clean: int = 3) -> dict:
    """Medians (seconds) and per-round ratios against ``baseline`` over the clean rounds
    (all rounds if fewer than ``min_clean`` are clean; then ``used_disturbed`` is set)."""
    flags = [r["disturbed"] for r in res["rounds"]]
    clean = [i for i, d in enumerate(flags) if not d]
    used_disturbed = len(clean) < min_clean
    keep = list(range(len(flags))) if used_disturbed else clean
    out = {"rounds": len(flags), "clean_rounds": len(clean), "used_disturbed": used_disturbed,
           "load_min": min(min(r["load_before"], r["load_after"]) for r in res["rounds"]),
           "load_max": max(max(r["load_before"], r["load_after"]) for r in res["rounds"]),
           "variants": {}}
    for n, ts in res["times"].items():
        sel = [ts[i] for i in keep]
        v = {"median_s": statistics.median(sel), "min_s": min(sel), "max_s": max(sel), "n": len(sel)}
        if baseline is not None:
            ratios = [ts[i] / res["times"][baseline][i] for i in keep]
            v["ratio_median"] = statistics.median(ratios)
            qs = sorted(ratios)
            v["ratio_range"] = [qs[0], qs[-1]]
        out["variants"][n] = v
    return out


def table(rows: Sequence[dict], cols: Sequence[str], title: str = "") -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)
    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(cols)]
    lines = [title] if title else []
    lines.append(" | ".join(c.ljust(w[i]) for i, c in enumerate(cols)))
    lines.append("-+-".join("-" * x for x in w))
    lines += [" | ".join(x[i].ljust(w[i]) for i in range(len(cols))) for x in cells]
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def _clean(v):
    import math
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        return _clean(v.item())
    return v


def write_json(path: Path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_clean(payload), indent=1))
    tmp.replace(path)
    print(f"wrote {path}", flush=True)


def quiet(msg: str) -> None:
    pass
