"""Fixed cost of a ``fvnce train`` process, before and after, side by side.

The fixed cost is the process wall time minus the time of its training loop (the
``trained N steps in X s`` line: ``Trainer.fit`` from the first to the last step, with
validation and checkpoints): imports, data, noise fitting, evaluation, samples, report
files and interpreter start/exit.

"before" is the source tree of an older commit (``--before-rev``, default
``DEFAULT_BEFORE``: the tree before the training loop was split and the process start
was cut), checked out into a temporary ``git worktree`` and run with
``PYTHONPATH=<worktree>/src`` from the same virtual environment; "after" is this tree.
Both run the same command lines, interleaved in rounds (the order alternates), one thread
each; the table gives medians over the rounds.

    python benchmarks/process_cost.py                      # digits, 1500 steps, elbo and fvnce, 3 rounds
    python benchmarks/process_cost.py --steps 300 --rounds 2 --objectives elbo
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
#: the tree before the training loop was split (the golden runs' parent commit)
DEFAULT_BEFORE = "279fe07"
LOOP = re.compile(r"trained (\d+) steps in ([0-9.]+) s")


def run_once(src: Path, objective: str, steps: int, data: str, out: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "fvnce", "train", "--data", data, "--steps", str(steps), "--objective", objective,
           "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=out.parent)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({src}):\n{proc.stderr[-2000:]}")
    m = LOOP.search(proc.stderr)
    loop = float(m.group(2))
    return {"wall_s": wall, "loop_s": loop, "fixed_s": wall - loop}


def main(argv=None) -> dict:
    p = C.parser("process_cost", __doc__)
    p.add_argument("--before-rev", default=DEFAULT_BEFORE, help="git revision of the 'before' tree")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--data", default="digits")
    p.add_argument("--objectives", default="elbo,fvnce")
    args = p.parse_args(argv)
    objectives = [o for o in args.objectives.split(",") if o]
    rounds = 1 if args.quick else args.rounds
    steps = 200 if args.quick else args.steps
    tmp = Path(tempfile.mkdtemp(prefix="fvnce_process_cost_"))
    before = tmp / "before"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(before), args.before_rev],
                   check=True)
    rev = subprocess.run(["git", "-C", str(before), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    trees = {"before": before / "src", "after": ROOT / "src"}
    res: dict = {(o, t): [] for o in objectives for t in trees}
    try:
        for r in range(rounds):
            for o in objectives:
                order = list(trees) if r % 2 == 0 else list(reversed(trees))
                for t in order:
                    rec = run_once(trees[t], o, steps, args.data, tmp / f"run_{t}")
                    res[(o, t)].append(rec)
                    print(f"round {r + 1} {o:6s} {t:6s} wall {rec['wall_s']:6.2f} s  loop {rec['loop_s']:6.2f} s  "
                          f"fixed {rec['fixed_s']:5.2f} s", flush=True)
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for o in objectives:
        med = {t: {k: statistics.median(x[k] for x in res[(o, t)]) for k in ("wall_s", "loop_s", "fixed_s")}
               for t in trees}
        rows.append({"objective": o, "before_wall_s": med["before"]["wall_s"], "before_loop_s": med["before"]["loop_s"],
                     "before_fixed_s": med["before"]["fixed_s"], "after_wall_s": med["after"]["wall_s"],
                     "after_loop_s": med["after"]["loop_s"], "after_fixed_s": med["after"]["fixed_s"],
                     "fixed_after_over_before": med["after"]["fixed_s"] / med["before"]["fixed_s"]})
    print(f"fvnce train --data {args.data} --steps {steps}: before = {rev} (git worktree), after = {head} "
          f"(this tree{', with local changes' if _dirty() else ''}); medians of {rounds} round(s), 1 thread")
    C.table(rows, list(rows[0]), "process fixed cost (wall - training loop)")
    payload = {"benchmark": "process_cost", "machine": C.machine(1), "before": rev, "after": head, "steps": steps,
               "data": args.data, "rounds": rounds, "rows": rows,
               "raw": {f"{o}/{t}": v for (o, t), v in res.items()}}
    C.write_json(args.out, payload)
    return payload


def _dirty() -> bool:
    out = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                         capture_output=True, text=True).stdout
    return bool(out.strip())


if __name__ == "__main__":
    main()
