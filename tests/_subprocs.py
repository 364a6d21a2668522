"""Shared by the signal tests of test_train and test_reliability: start-up of a Python
interpreter dominates, so the interrupted subprocesses run side by side."""

from __future__ import annotations

import time
from pathlib import Path
from subprocess import Popen


def signal_after_first_checkpoint(procs: dict[str, tuple[Path, Popen, int]], timeout: float = 120.0,
                                  delay: float = 0.03) -> dict[str, tuple[Path, int, str, str]]:
    """Send each process its signal ``delay`` seconds after its run directory's first
    ``checkpoint.pt`` appears (a process that ends earlier is left alone: the test
    reports it), wait for all, and return ``name -> (run_dir, returncode, stdout,
    stderr)``.  Processes still alive on the way out are killed."""
    try:
        pending, t0 = set(procs), time.monotonic()
        while pending and time.monotonic() - t0 < timeout:
            for name in sorted(pending):
                run_dir, proc, sig = procs[name]
                if (run_dir / "checkpoint.pt").exists():
                    time.sleep(delay)  # somewhere after the first checkpoint, not on it
                    proc.send_signal(sig)
                    pending.discard(name)
                elif proc.poll() is not None:
                    pending.discard(name)
            time.sleep(0.005)
        results = {}
        for name, (run_dir, proc, _) in procs.items():
            out, err = proc.communicate(timeout=timeout)
            results[name] = (run_dir, proc.returncode, out, err)
        return results
    finally:
        for _, proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
