"""Stopping on request: SIGINT/SIGTERM (or :meth:`StopFlag.request`) end training after
the current step, with a checkpoint; a second Ctrl-C stops at once."""

from __future__ import annotations

import signal
import threading
from pathlib import Path

from ..errors import FvnceError

__all__ = ["StopFlag", "TrainingInterrupted"]


class TrainingInterrupted(FvnceError):
    """SIGINT/SIGTERM (or :meth:`Trainer.request_stop`) stopped training after a step."""

    def __init__(self, message: str, step: int = 0, run_dir: Path | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.run_dir = run_dir

    @classmethod
    def at(cls, step: int, run_dir: Path | None, saved: bool) -> "TrainingInterrupted":
        """Stopped after ``step``; ``saved``: this process wrote a checkpoint in ``run_dir``."""
        where = f"checkpoint saved in {run_dir}; resume with --resume" if saved else "no run directory, nothing saved"
        return cls(f"training interrupted at step {step}; {where}", step, run_dir)


class StopFlag:
    """Whether (and by which signal) training was asked to stop: ``signal`` is the signal
    number, -1 for :meth:`request`, -2 for another rank's stop, None to go on."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def request(self) -> None:
        self.signal = -1

    def asked(self, agree=None) -> bool:
        """Whether to stop now; ``agree(flag)`` (torch.distributed) makes every rank stop
        when any was asked."""
        if agree is not None and agree(self.signal is not None) and self.signal is None:
            self.signal = -2  # another rank was signalled: stop together
        return self.signal is not None

    def install(self):
        """Catch SIGINT and SIGTERM (main thread only); returns the old handlers."""
        self.signal = None
        if threading.current_thread() is not threading.main_thread():
            return None
        old = {}

        def handler(signum, frame):
            if self.signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # second Ctrl-C: stop at once
            self.signal = signum

        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # pragma: no cover - unusual platforms
                pass
        return old

    @staticmethod
    def restore(old) -> None:
        if not old:
            return
        for sig, h in old.items():
            try:
                signal.signal(sig, h if h is not None else signal.SIG_DFL)
            except (ValueError, OSError):  # pragma: no cover
                pass
