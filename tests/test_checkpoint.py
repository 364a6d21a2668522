"""Atomic writes and safe, versioned checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import zipfile

import pytest
import torch

from fvnce import checkpoint as ck
from fvnce import fileio
from fvnce.checkpoint import (CHECKPOINT_FORMAT, CHECKPOINT_VERSION, atomic_torch_save, atomic_write_bytes,
                              atomic_write_json, atomic_write_text, load_checkpoint, save_checkpoint)
from fvnce.errors import CheckpointError, FvnceError


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic writes ---------------------------------------------------------------------
def test_atomic_writers_round_trip(tmp_path):
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01abc")
    atomic_write_text(tmp_path / "t.txt", "héllo\n")
    atomic_write_json(tmp_path / "j.json", {"a": [1, 2.5, None], "b": "x"})
    atomic_torch_save({"w": torch.arange(3)}, tmp_path / "t.pt")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01abc"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "j.json").read_text()) == {"a": [1, 2.5, None], "b": "x"}
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["w"], torch.arange(3))
    assert _leftovers(tmp_path) == []


def test_atomic_write_replaces_existing(tmp_path):
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    atomic_write_text(p, "new")
    assert p.read_text() == "new"
    assert _leftovers(tmp_path) == []


def test_failing_write_leaves_no_file(tmp_path, monkeypatch):
    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_text(tmp_path / "new.txt", "data")
    assert not (tmp_path / "new.txt").exists()
    assert list(tmp_path.iterdir()) == []


def test_failing_write_keeps_old_file(tmp_path, monkeypatch):
    p = tmp_path / "keep.json"
    atomic_write_json(p, {"v": 1})

    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(ck.os, "replace", boom)
    with pytest.raises(OSError, match="rename failed"):
        atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_unserialisable_json_writes_nothing(tmp_path):
    p = tmp_path / "x.json"
    atomic_write_json(p, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(p, {"bad": object()})
    with pytest.raises(ValueError):
        atomic_write_json(p, {"nan": float("nan")})
    assert json.loads(p.read_text()) == {"ok": True}
    assert _leftovers(tmp_path) == []


def test_interrupted_torch_save_keeps_old_checkpoint(tmp_path, monkeypatch):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"step": 1})
    class Boom(Exception):
        pass

    def raise_in_writer(f):
        f.write(b"partial")
        raise Boom

    with pytest.raises(Boom):
        fileio._atomic_write(p, raise_in_writer)
    assert load_checkpoint(p)["step"] == 1
    assert _leftovers(tmp_path) == []


# -- checkpoints -----------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    p = tmp_path / "c.pt"
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    opt.step()
    payload = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": torch.get_rng_state(),
               "step": 7, "lr": 1e-3, "name": "x", "flag": True, "none": None, "list": [1, (2, 3)]}
    save_checkpoint(p, payload)
    got = load_checkpoint(p)
    assert got["format"] == CHECKPOINT_FORMAT and got["version"] == CHECKPOINT_VERSION == 1
    assert isinstance(got["fvnce_version"], str)
    assert got["step"] == 7 and got["lr"] == 1e-3 and got["flag"] is True and got["none"] is None
    for k, v in model.state_dict().items():
        assert torch.equal(got["model"][k], v) and got["model"][k].dtype == torch.float64
    assert torch.equal(got["rng"], torch.get_rng_state()) or got["rng"].dtype == torch.uint8
    opt2 = torch.optim.Adam(model.parameters())
    opt2.load_state_dict(got["optimizer"])


def test_save_refuses_non_plain_payload(tmp_path):
    with pytest.raises(CheckpointError, match=r"payload\['obj'\] is a Linear"):
        save_checkpoint(tmp_path / "c.pt", {"obj": torch.nn.Linear(1, 1)})
    with pytest.raises(CheckpointError, match="must be a dict"):
        save_checkpoint(tmp_path / "c.pt", [1, 2])
    assert not (tmp_path / "c.pt").exists()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0, 10, 0.5, -20])
def test_truncated_checkpoint(tmp_path, keep):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"w": torch.randn(100), "step": 3})
    data = p.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    p.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="corrupt or truncated") as info:
        load_checkpoint(p)
    assert "\n" not in str(info.value)


def test_garbage_file(tmp_path):
    p = tmp_path / "c.pt"
    p.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(p)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["torch", "raw_pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    obj = {"format": CHECKPOINT_FORMAT, "version": 1, "x": _Evil(marker)}
    if how == "torch":
        torch.save(obj, p)
    else:
        p.write_bytes(pickle.dumps(obj))
    with pytest.raises(CheckpointError, match="refusing to load .* it contains executable objects") as info:
        load_checkpoint(p)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_wrong_format_marker(tmp_path):
    p = tmp_path / "c.pt"
    torch.save({"step": 1}, p)
    with pytest.raises(CheckpointError, match="not an fvnce checkpoint"):
        load_checkpoint(p)
    torch.save(torch.zeros(3), p)
    with pytest.raises(CheckpointError, match="not an fvnce checkpoint"):
        load_checkpoint(p)


@pytest.mark.parametrize("version", [2, 0, "1", None])
def test_incompatible_version(tmp_path, version):
    p = tmp_path / "c.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "version": version}, p)
    with pytest.raises(CheckpointError, match=f"checkpoint version {version}, this fvnce reads version 1"):
        load_checkpoint(p)


def test_checkpoint_error_is_fvnce_error():
    assert issubclass(CheckpointError, FvnceError)


def test_saved_file_is_a_torch_zip(tmp_path):
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"a": 1})
    assert zipfile.is_zipfile(p)
