"""Output folders of ``fvnce train`` and ``fvnce poc``: what a folder holds, the refusal to
replace it silently, and its safe replacement.

A folder that holds a run, a union of runs or a poc (finished or not) is replaced only when
asked (``--overwrite``, ``overwrite=True``).  The replacement is built beside the old
output, in a sibling folder of the same parent (``.NAME.fvnce-new``), and swapped in once
complete: the old folder is renamed away (``.NAME.fvnce-old``), the new one renamed in,
then the old one deleted.  An error, Ctrl-C or a crash before the swap leaves the old
output as it was (the half-built sibling is removed, or left behind by a crash and removed
by the next replacement); a crash between the two renames leaves it whole under
``.NAME.fvnce-old``.  Paths recorded inside the new output that name the sibling folder
(a poc's runs start from its VAE: ``init_from`` in their ``config.json``) are rewritten to
the final folder before the swap.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..errors import ConfigError
from ..fileio import atomic_write_json
from .files import ALARM_NAME, CONFIG_NAME, EVALUATION_NAME, SUMMARY_NAME, UNION_NAME
NEW_SUFFIX = ".fvnce-new"
OLD_SUFFIX = ".fvnce-old"


def holds(folder: str | Path) -> str | None:
    """What ``folder`` holds, in words (``"a finished run"``, ``"a partial run (no alarm
    threshold yet: stopped before it finished)"``, ``"a union of runs"``, ``"a finished poc"``,
    ``"a partial poc (no summary.json: stopped before it finished)"``); None when it is
    missing or empty; ``""`` when it holds something else."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return None
    if (folder / SUMMARY_NAME).is_file():
        return "a finished poc"
    if (folder / "runs").is_dir():
        return f"a partial poc (no {SUMMARY_NAME}: stopped before it finished)"
    if (folder / UNION_NAME).is_file():
        return "a union of runs"
    if (folder / CONFIG_NAME).is_file():
        if (folder / ALARM_NAME).is_file() or (folder / EVALUATION_NAME).is_file():
            return "a finished run"
        return "a partial run (no alarm threshold yet: stopped before it finished)"
    return ""


def check_output(out: str | Path, overwrite: bool) -> bool:
    """Check ``out`` as the folder of a new run or poc, before any work: True when it holds
    an earlier output that is to be replaced (``overwrite``), False when it is missing or
    empty.  ConfigError (one line) when it is a file, holds something that is no fvnce
    output, or holds one and ``overwrite`` is false."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output {out} exists and is not a directory; choose a new --out")
    parent = next((a for a in out.absolute().parents if a.exists()), None)
    if parent is not None and not parent.is_dir():
        raise ConfigError(f"cannot create {out}: {parent} is a file, not a directory")
    what = holds(out)
    if what is None:
        return False
    if what == "":
        raise ConfigError(f"output directory {out} exists and is not an fvnce run or poc; choose a new --out")
    if not overwrite:
        raise ConfigError(f"output directory {out} holds {what}; give --overwrite to replace it, or choose a new "
                          "--out")
    return True


def sibling(out: str | Path, suffix: str) -> Path:
    out = Path(out)
    return out.parent / f".{out.name}{suffix}"


@contextmanager
def replacing(out: str | Path, replace: bool) -> Iterator[Path]:
    """The folder to build the output of ``out`` in: ``out`` itself unless ``replace``;
    else a fresh sibling folder, swapped in for ``out`` when the block ends without an
    exception (:func:`swap_in`) and removed when it raises (the old output untouched)."""
    out = Path(out)
    if not replace:
        yield out
        return
    work = sibling(out, NEW_SUFFIX)
    shutil.rmtree(work, ignore_errors=True)  # left by a crash during an earlier replacement
    work.mkdir(parents=True)
    try:
        yield work
        swap_in(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def swap_in(work: Path, out: Path) -> None:
    """Rename ``out`` away, ``work`` in its place (paths inside it that name ``work``
    rewritten first), then delete the old output."""
    rehome(work, out)
    old = sibling(out, OLD_SUFFIX)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
    try:
        os.replace(work, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def rehome(work: Path, out: Path) -> None:
    """Rewrite ``init_from`` of every ``config.json`` in ``work`` (the folder itself and
    ``runs/*``) that names a folder inside ``work`` to the same folder inside ``out``."""
    root = Path(os.path.abspath(work))
    for path in [work / CONFIG_NAME, *sorted((work / "runs").glob(f"*/{CONFIG_NAME}"))]:
        if not path.is_file():
            continue
        record = json.loads(path.read_text(encoding="utf-8"))
        run = record.get("run") if isinstance(record, dict) else None
        src = run.get("init_from") if isinstance(run, dict) else None
        if not isinstance(src, str):
            continue
        try:
            rel = Path(os.path.abspath(src)).relative_to(root)
        except ValueError:
            continue
        was_absolute = Path(src).is_absolute()
        run["init_from"] = str((Path(os.path.abspath(out)) if was_absolute else out) / rel)
        atomic_write_json(path, record)
