"""Self-contained HTML reports from run directories and POC directories.

``build_report(path)`` reads files only (it never trains or imports the command line):

* a POC directory (with ``summary.json``) gives a comparison report at ``DIR/report.html``;
* a run directory (with ``config.json`` / ``metrics.jsonl`` / ``evaluation.json``) gives a
  single-run report at ``RUN/report.html``.

Plots are rendered with matplotlib's Agg canvas (no pyplot state is touched) and embedded as
base64 PNGs, so the HTML file can be mailed or archived on its own.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError
from .load import atomic_write_text, load_summary, read_run_files
from .pages import poc_page, run_page

__all__ = ["build_report"]

_RUN_FILES = ("config.json", "metrics.jsonl", "evaluation.json")


def build_report(path: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write the HTML report for a POC or run directory and return its path.

    ``path`` is a POC directory (contains ``summary.json``; ``summary.json`` itself is also
    accepted) or a run directory. The report goes to ``out`` if given, else
    ``path/report.html``; it is written atomically. Raises :class:`~fvnce.errors.CheckpointError`
    if ``path`` is neither kind of directory.
    """
    path = Path(path)
    if path.is_file() and path.name == "summary.json":
        path = path.parent
    if not path.is_dir():
        raise CheckpointError(f"report: {path} is not a directory (expected a POC or run directory)")
    if (path / "summary.json").is_file():
        text = poc_page(path, load_summary(path))
    elif any((path / name).is_file() for name in _RUN_FILES):
        text = run_page(read_run_files(path))
    else:
        raise CheckpointError(
            f"report: {path} is neither a POC directory (no summary.json) nor a run directory "
            "(no config.json, metrics.jsonl or evaluation.json)")
    target = Path(out) if out is not None else path / "report.html"
    if target.is_dir():
        target = target / "report.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    return target
