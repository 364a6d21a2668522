"""The command lines that take the poc's recommendation to production."""

from __future__ import annotations

import copy
import os
import shlex
from pathlib import Path

from ..criteria import VAE_RUN
from ..runs import RunConfig
from ..cli.train_line import source_arg, train_command
from .choose import UNION_RUN

__all__ = ["production_commands"]


def production_commands(rec: dict, plan: dict[str, RunConfig], final: str | Path, source: str) -> dict:
    """The command lines that train the recommendation for production, on the same data and
    split (:func:`fvnce.cli.train_line.train_command`): ``train_command`` for one run (into
    ``recommended-run``); for a union, ``member_commands`` (one ``{"run", "command"}`` per
    member, into a folder of the member's name) and ``score_command`` (``fvnce score`` of
    the poc's union).  A run that started from the poc's VAE gets ``--init-from`` with the
    absolute path of that VAE run in ``final`` (the poc's folder), so it starts from the
    same weights.  A command that cannot be written is None, with ``*_note`` saying why."""
    vae = str(Path(os.path.abspath(final)) / "runs" / VAE_RUN)

    def command(name: str, out: str) -> tuple[str | None, str | None]:
        rc = copy.deepcopy(plan[name])
        if rc.init_from:
            rc.init_from = vae
        return train_command(rc, out)

    if rec.get("members"):
        members = []
        for name in rec["members"]:
            cmd, note = command(name, name)
            members.append({"run": name, "command": cmd, **({"note": note} if note else {})})
        union = str(Path(os.path.abspath(final)) / "runs" / UNION_RUN)
        score = "fvnce " + shlex.join(["score", union, "--data", source_arg(source), "--out", "union-scores.csv"])
        return {"train_command": None, "member_commands": members, "score_command": score}
    cmd, note = command(rec["run"], "recommended-run")
    return {"train_command": cmd, **({"train_command_note": note} if note else {})}
