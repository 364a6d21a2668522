"""The settings a resumed run may be given: a run continues with its saved settings, and
only its length (steps or epochs) may change; every other setting given again must equal
the saved one."""

from __future__ import annotations

import json
from pathlib import Path

from ..data import BUILTIN
from ..errors import ConfigError

__all__ = ["FREE_PATHS", "check_same_settings", "leaf_paths", "same_setting", "setting_at", "show_setting"]

#: configuration paths (into RunConfig.to_dict()) a resumed run may change (how long it
#: trains) or that are no setting
FREE_PATHS = (("train", "steps"), ("train", "epochs"), ("train", "progress"))


def leaf_paths(d: dict, prefix: tuple = ()) -> list[tuple]:
    """Paths to the non-mapping values of a nested mapping (a TOML run configuration)."""
    out = []
    for key, value in d.items():
        out += leaf_paths(value, prefix + (key,)) if isinstance(value, dict) else [prefix + (key,)]
    return out


def setting_at(d: dict, path: tuple):
    """The value at ``path`` of the nested mapping ``d``; None where there is none."""
    for key in path:
        d = d.get(key) if isinstance(d, dict) else None
    return d


def same_setting(path: tuple, a, b) -> bool:
    """Equal settings; data files and --init-from runs compared as resolved paths."""
    if path in (("data", "source"), ("init_from",)) and isinstance(a, str) and isinstance(b, str):
        def where(v: str) -> str:
            return v if path[0] == "data" and v in BUILTIN else str(Path(v).expanduser().resolve())
        return where(a) == where(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return list(a) == list(b)
    return a == b


def show_setting(v) -> str:
    """A setting in a message: ``unset`` for None, JSON for lists and booleans."""
    return "unset" if v is None else (json.dumps(v) if isinstance(v, (list, bool)) else str(v))


def check_same_settings(given: dict, saved: dict, paths) -> None:
    """ConfigError naming the first setting that differs: ``paths`` are ``(name, path)``
    pairs, ``name`` how the message calls the setting, ``path`` where it is in the
    configurations ``given`` (as a new run would build it) and ``saved`` (both
    ``RunConfig.to_dict()``); :data:`FREE_PATHS` are skipped."""
    for name, path in paths:
        if path in FREE_PATHS:
            continue
        a, b = setting_at(given, path), setting_at(saved, path)
        if not same_setting(path, a, b):
            raise ConfigError(f"--resume continues the run with its saved settings, and {name} differs: saved "
                              f"{show_setting(b)}, given {show_setting(a)} (only --steps or --epochs may change)")
