"""Property-based tests of the file loaders and the option parsing.

Whatever the bytes of a data file or the values of the options, fvnce either works or
stops with its one-line error (DataError / ConfigError in the library; exit code 2 and
one ``fvnce: error:`` line on the command line), never with another exception.
Most examples call the loaders directly (fast); a few go through ``fvnce.cli.main``.
"""

from __future__ import annotations

import io
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fvnce.data import DataSpec, load_dataset, prepare_scoring_data
from fvnce.data.files import read_raw
from fvnce.errors import FvnceError

from conftest import run_cli

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                      HealthCheck.too_slow])


def assert_one_line_error(exc: BaseException) -> None:
    assert isinstance(exc, FvnceError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text.strip() and "\n" not in text.strip(), repr(text)


def assert_cli_failed_cleanly(rc, err) -> str:
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and lines[0].startswith("fvnce: error: ") and "Traceback" not in err, err
    return lines[0]


# -- CSV files --------------------------------------------------------------------------------
NAME = st.text(alphabet=string.ascii_letters + string.digits + " _-<>&\"'é,;", min_size=0, max_size=6)
CELL = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(-1e3, 1e3).map(lambda v: f"{v:.4g}"),
    st.integers(-10**20, 10**20).map(str),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "NA", "null", "1e999", "-0", "0x1F", "1,5", " 3 ", "TRUE",
                     "2024-01-01", '"', "\"a,b\"", "é", "\t"]),
    st.text(alphabet=string.printable, max_size=4),
)


@st.composite
def csv_text(draw) -> bytes:
    n_cols = draw(st.integers(1, 4))
    header = [draw(NAME) for _ in range(n_cols)]
    n_rows = draw(st.integers(0, 40))
    numeric = draw(st.booleans())  # half the files mostly numbers, so that many of them load
    cell = st.floats(-50, 50).map(lambda v: f"{v:.3f}") if numeric else CELL
    rows = []
    for _ in range(n_rows):
        width = n_cols if draw(st.integers(0, 9)) else draw(st.integers(0, n_cols + 2))
        rows.append(",".join(draw(cell) if not numeric or draw(st.integers(0, 30)) else draw(CELL)
                             for _ in range(width)))
    sep = draw(st.sampled_from(["\n", "\r\n"]))
    text = sep.join([",".join(header), *rows]) + draw(st.sampled_from(["", sep]))
    return text.encode(draw(st.sampled_from(["utf-8", "utf-8", "latin-1"])), errors="replace")


CSV_BYTES = st.one_of(csv_text(), st.binary(max_size=200))


def _check_loaded(ds) -> None:
    for t in (ds.train, ds.val, ds.test):
        assert t.dtype == torch.float32 and t.ndim == 2
        assert torch.isfinite(t).all()
    assert len(ds.train) >= 10


@settings(FUZZ, max_examples=120)
@given(data=CSV_BYTES, missing=st.sampled_from(["error", "drop", "impute"]),
       transform=st.sampled_from(["auto", "standardize", "yeo-johnson", "none"]),
       use_label=st.booleans())
def test_csv_loader_loads_or_raises_one_line_error(tmp_path_factory, data, missing, transform, use_label):
    path = tmp_path_factory.mktemp("csv") / "fuzz.csv"
    path.write_bytes(data)
    label = normal = None
    if use_label:
        first = data.split(b"\n", 1)[0].decode("utf-8", "replace").split(",")[0].strip()
        second = data.split(b"\n")[1].decode("utf-8", "replace").split(",")[0].strip() if data.count(b"\n") else ""
        label, normal = (first or "status"), (second or "0")
    try:
        ds = load_dataset(DataSpec(source=str(path), missing=missing, transform=transform, label=label,
                                   normal=normal))
    except Exception as exc:  # noqa: BLE001 - the property: only fvnce's own errors
        assert_one_line_error(exc)
        return
    _check_loaded(ds)
    # what loads for training can be prepared again for scoring (same columns)
    try:
        x = prepare_scoring_data(path, ds.preprocessor, missing="impute")
    except Exception as exc:  # noqa: BLE001
        assert_one_line_error(exc)
        return
    assert np.isfinite(x).all()


@settings(FUZZ, max_examples=6)
@given(data=CSV_BYTES)
def test_csv_through_the_cli_trains_or_fails_with_one_line(tmp_path_factory, capsys, data):
    root = tmp_path_factory.mktemp("cli_csv")
    path = root / "fuzz.csv"
    path.write_bytes(data)
    out = root / "OUT"
    rc, _, err = run_cli(["train", "--data", path, "--steps", "2", "--batch-size", "16", "--z-dim", "2",
                       "--no-eval", "--quiet", "--out", out], capsys)
    if rc == 0:
        assert (out / "checkpoint.pt").exists() and not err.strip()
    else:
        assert_cli_failed_cleanly(rc, err)
        assert not out.exists()


def test_csv_through_the_cli_examples(tmp_path, capsys):
    """Deterministic companions of the property above: one file that trains, one that does not."""
    good = tmp_path / "good.csv"
    rng = np.random.default_rng(0)
    good.write_text("u,v\n" + "".join(f"{a:.3f},{b:.3f}\n" for a, b in rng.normal(size=(40, 2))))
    rc, _, err = run_cli(["train", "--data", good, "--steps", "2", "--z-dim", "2", "--no-eval", "--quiet",
                       "--out", tmp_path / "ok"], capsys)
    assert rc == 0, err
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b'a,b\n1,"2\n3,4\n')
    rc, _, err = run_cli(["train", "--data", bad, "--steps", "2", "--out", tmp_path / "no", "--quiet"], capsys)
    assert_cli_failed_cleanly(rc, err)
    assert not (tmp_path / "no").exists()


# -- .npy files --------------------------------------------------------------------------------
DTYPES = st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_,
                          np.complex64, "<U3", "datetime64[D]"])


@st.composite
def npy_bytes(draw) -> bytes:
    kind = draw(st.integers(0, 9))
    buf = io.BytesIO()
    if kind == 0:  # Python objects: must be refused (allow_pickle=False), never unpickled
        arr = np.empty(draw(st.integers(1, 5)), dtype=object)
        for i in range(len(arr)):
            arr[i] = draw(st.sampled_from([{"a": 1}, [1, 2], "text", 3.5, None]))
        np.save(buf, arr, allow_pickle=True)
    elif kind == 1:  # not an .npy at all
        return draw(st.binary(max_size=120))
    elif kind == 2:  # a valid header, cut short
        np.save(buf, np.zeros((20, 3)))
        data = buf.getvalue()
        return data[: draw(st.integers(0, len(data) - 1))]
    else:
        dtype = draw(DTYPES)
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=14))
        if np.prod(shape) > 2000:
            shape = shape[:2]
        arr = draw(hnp.arrays(dtype, shape))
        np.save(buf, arr, allow_pickle=False)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_preprocessor(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "img.npy"
    np.save(path, np.random.default_rng(0).integers(0, 16, size=(60, 4, 4)).astype(np.float32))
    return load_dataset(DataSpec(source=str(path))).preprocessor


@settings(FUZZ, max_examples=120)
@given(data=npy_bytes(), missing=st.sampled_from(["error", "drop", "impute"]))
def test_npy_loader_loads_or_raises_one_line_error(tmp_path_factory, image_preprocessor, data, missing):
    path = tmp_path_factory.mktemp("npy") / "fuzz.npy"
    path.write_bytes(data)
    for call in (lambda: read_raw(path),
                 lambda: load_dataset(DataSpec(source=str(path), missing=missing)),
                 lambda: prepare_scoring_data(path, image_preprocessor, missing="impute")):
        try:
            out = call()
        except Exception as exc:  # noqa: BLE001
            assert_one_line_error(exc)
            continue
        if hasattr(out, "train"):
            _check_loaded(out)
        elif isinstance(out, np.ndarray):
            assert out.shape[1] == 16 and np.isfinite(out).all()


def test_object_npy_is_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    arr = np.empty(3, dtype=object)
    arr[:] = [Boom(), Boom(), Boom()]
    path = tmp_path / "evil.npy"
    np.save(path, arr, allow_pickle=True)
    with pytest.raises(FvnceError, match="Python objects"):
        load_dataset(DataSpec(source=str(path)))


# -- options ----------------------------------------------------------------------------------
def _value(kind: str):
    nums = st.one_of(st.integers(-5, 5), st.integers(-10**30, 10**30),
                     st.floats(allow_nan=True, allow_infinity=True), st.floats(0, 3))
    words = st.one_of(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)),
                              max_size=6),
                      st.sampled_from(["", "-", "--", "nan", "inf", "-inf", "1e999", "0x10", "1_000", " 2", "1.5",
                                       "kl", "power", "shifted_log", "logistic", "exact", "clip", "linear",
                                       "fvnce", "elbo", "iwae", "nce", "vnce", "kde", "gmm", "flow", "auto",
                                       "quick", "power:1.5", "power:3", "kl,power:1.5", "os:getcwd", "x:y",
                                       ":", "a:", ":b", "cpu", "cuda", "tilted_vae", "rbm"]))
    return {"num": st.one_of(nums.map(str), words), "word": st.one_of(words, nums.map(str))}[kind]


TRAIN_OPTIONS = {
    "--alpha": "num", "--shift": "num", "--k": "num", "--nu": "num", "--tau": "num", "--steps": "num",
    "--epochs": "num", "--batch-size": "num", "--lr": "num", "--grad-clip": "num", "--seed": "num",
    "--z-dim": "num", "--max-rows": "num", "--split-seed": "num", "--checkpoint-every": "num",
    "--rule": "word", "--objective": "word", "--exp-mode": "word", "--noise": "word", "--model": "word",
    "--transform": "word", "--device": "word", "--features": "word", "--label": "word", "--normal": "word",
}
POC_OPTIONS = {"--rules": "word", "--noises": "word", "--budget": "num", "--batch-size": "num", "--lr": "num",
               "--seed": "num", "--z-dim": "num", "--model": "word", "--max-rows": "num"}
FLAGS = ["--drop-missing", "--impute", "--binarize", "--no-binarize"]


@st.composite
def options(draw, table: dict) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(sorted(table)), max_size=6, unique=True))
    argv = []
    for opt in chosen:
        v = draw(_value(table[opt]))
        argv.append(f"{opt}={v}" if draw(st.booleans()) else opt)
        if not argv[-1].startswith(f"{opt}="):
            argv.append(v)
    argv += draw(st.lists(st.sampled_from(FLAGS), max_size=2, unique=True))
    return argv


@settings(FUZZ, max_examples=150)
@given(argv=options(TRAIN_OPTIONS))
def test_train_options_valid_or_one_line_error(tmp_path_factory, capsys, argv):
    """The data file does not exist: valid options end at 'file not found' (nothing is
    trained), invalid ones at their own message, both as one line with exit code 2."""
    root = tmp_path_factory.mktemp("opts")
    missing = root / "missing.csv"
    rc, _, err = run_cli(["train", *argv, "--data", missing, "--out", root / "OUT", "--quiet"], capsys)
    line = assert_cli_failed_cleanly(rc, err)
    assert not (root / "OUT").exists()
    if "file not found" in line:  # the options passed every check: they build a configuration
        from fvnce import cli
        from fvnce.cli.options import run_config
        args = cli.build_parser().parse_args(["train", *argv, "--data", str(missing), "--out", "X"])
        cfg = run_config(args)
        assert cfg.train.lr > 0 and (cfg.train.steps is None or cfg.train.steps > 0)


@settings(FUZZ, max_examples=80)
@given(argv=options(POC_OPTIONS))
def test_poc_options_valid_or_one_line_error(tmp_path_factory, capsys, argv):
    root = tmp_path_factory.mktemp("pocopts")
    rc, _, err = run_cli(["poc", *argv, "--data", root / "missing.csv", "--out", root / "POC", "--quiet"], capsys)
    assert_cli_failed_cleanly(rc, err)
    assert not (root / "POC").exists()


@settings(FUZZ, max_examples=60)
@given(k=_value("num"), n=_value("num"), out=_value("word"))
def test_evaluate_sample_options_one_line_error(tmp_path_factory, capsys, k, n, out):
    assume(not str(out).startswith("-"))
    root = tmp_path_factory.mktemp("evalopts")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        for argv in (["evaluate", "norun", "--k", k], ["sample", "norun", "--n", n, "--out", out],
                     ["score", "norun", "--data", "x.csv", "--out", out, "--k", k]):
            rc, _, err = run_cli(argv, capsys)
            assert_cli_failed_cleanly(rc, err)
    assert sorted(p.name for p in root.iterdir()) == []
