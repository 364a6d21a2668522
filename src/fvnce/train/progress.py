"""What the user sees while training: log lines and the progress bar (tqdm on stderr)."""

from __future__ import annotations

import sys

__all__ = ["Progress", "default_log"]


def default_log(msg: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    except Exception:  # pragma: no cover - tqdm missing
        print(msg, file=sys.stderr, flush=True)


class Progress:
    """A progress bar over ``total`` steps starting at ``initial``; does nothing when
    disabled or when tqdm is missing."""

    def __init__(self, enabled: bool, total: int, initial: int) -> None:
        self.total, self.bar = total, None
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:  # pragma: no cover
            return
        self.bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True, desc="train",
                        mininterval=0.5)

    def show(self, rec: dict | None) -> None:
        """One step done; ``rec`` (a training record, or None) updates the figures shown."""
        if self.bar is None:
            return
        if rec is not None:
            post = {"loss": f"{rec['loss']:.4g}" if rec["loss"] is not None else "nan"}
            if rec.get("accuracy") is not None:
                post["acc"] = f"{rec['accuracy']:.3f}"
            self.bar.set_postfix(post, refresh=False)
        self.bar.update(1)

    def restart_at(self, step: int) -> None:
        if self.bar is not None:
            self.bar.reset(self.total)
            self.bar.update(step)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
