"""Test-wide settings.

Tests use tiny tensors: one intra-op thread is faster than two and does not collapse
when the other core is busy (the suite runs its files in parallel with pytest-xdist).
"""

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def float64():
    """Exact comparisons in float64, restored afterwards (xdist workers share the process)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def quiet(msg: str) -> None:
    """A ``log`` that drops every line."""


def run_cli(argv, capsys) -> tuple[int, str, str]:
    """Run ``fvnce`` on ``argv`` (any items, made strings): ``(exit code, stdout, stderr)``,
    argparse's own exits included."""
    from fvnce.cli import main

    capsys.readouterr()
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A small CSV of 200 rows: columns a, b, c (standard normal) and status, every tenth row 'bad', else 'ok'."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    path = tmp_path_factory.mktemp("data") / "sensors.csv"
    with open(path, "w") as fh:
        fh.write("a,b,c,status\n")
        for i, row in enumerate(x):
            fh.write(",".join(f"{v:.6f}" for v in row) + (",bad\n" if i % 10 == 0 else ",ok\n"))
    return path
