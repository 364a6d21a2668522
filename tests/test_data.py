"""Tests for fvnce.data: built-ins, file loaders, preprocessing, splits, error messages."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fvnce.data import (
    BUILTIN,
    FASHION_MNIST_DIR,
    DataSpec,
    Preprocessor,
    load_dataset,
    prepare_scoring_data,
    read_table,
    split_indices,
    yeo_johnson,
)
from fvnce.errors import ConfigError, DataError

pd = pytest.importorskip("pandas")


def _frame(n=200, seed=0, label=True):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "a": rng.normal(size=n),
            "b": rng.lognormal(sigma=1.0, size=n),
            "c": rng.uniform(size=n),
        }
    )
    if label:
        df["status"] = np.where(np.arange(n) % 10 == 0, "bad", "ok")
    return df


def _check_dataset(ds, d, binary):
    for t in (ds.train, ds.val, ds.test):
        assert t.dtype == torch.float32 and t.ndim == 2 and t.shape[1] == d
        assert torch.isfinite(t).all()
        if binary:
            assert set(torch.unique(t).tolist()) <= {0.0, 1.0}
    assert ds.binary == binary
    assert len(ds.feature_names) == d


# ---------------------------------------------------------------- built-ins
def test_digits_default_binary_no_labels():
    ds = load_dataset(DataSpec("digits"))
    _check_dataset(ds, 64, True)
    assert ds.image_shape == (8, 8)
    assert ds.val_labels is None and ds.test_labels is None
    assert len(ds.train) + len(ds.val) + len(ds.test) == 1797


def test_digits_normal_class_and_continuous():
    ds = load_dataset(DataSpec("digits", normal="0"))
    _check_dataset(ds, 64, True)
    assert len(ds.train) < 178  # only zeros in training
    for lab, x in ((ds.val_labels, ds.val), (ds.test_labels, ds.test)):
        assert lab.dtype == torch.float32 and len(lab) == len(x)
        assert 0 < lab.sum() < len(lab)
    ds2 = load_dataset(DataSpec("digits", normal="0", binarize=False, transform="standardize"))
    _check_dataset(ds2, 64, False)
    assert abs(float(ds2.train.mean())) < 0.05
    assert any("constant" in n for n in ds2.notes)


def test_breast_cancer_labels_and_auto_yeo_johnson():
    ds = load_dataset(DataSpec("breast-cancer"))
    _check_dataset(ds, 30, False)
    assert ds.image_shape is None
    assert ds.val_labels.sum() > 0 and ds.test_labels.sum() > 0
    assert len(ds.preprocessor.yeo_johnson_columns) >= 5
    assert ds.train.mean(0).abs().max() < 1e-4


@pytest.mark.parametrize("name", ["rings", "spirals", "gaussians"])
def test_toys(name):
    ds = load_dataset(DataSpec(name, seed=3))
    _check_dataset(ds, 2, False)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 2000
    assert ds.val_labels is None
    again = load_dataset(DataSpec(name, seed=3))
    assert torch.equal(ds.train, again.train)
    other = load_dataset(DataSpec(name, seed=4))
    assert not torch.equal(ds.train, other.train)


def test_fashion_mnist():
    if not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Fashion-MNIST files absent from {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    ds = load_dataset(DataSpec("fashion-mnist", max_rows=600, normal="Trouser"))
    _check_dataset(ds, 784, True)
    assert ds.image_shape == (28, 28)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 600
    assert ds.test_labels.sum() > 0


def test_fashion_mnist_missing_files(monkeypatch, tmp_path):
    import fvnce.data.builtin as b

    monkeypatch.setattr(b, "FASHION_MNIST_DIR", tmp_path / "nowhere")
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset(DataSpec("fashion-mnist", max_rows=10))


def test_builtin_registry_and_unknown_name():
    assert set(BUILTIN) == {"digits", "fashion-mnist", "breast-cancer", "elpv", "rings", "spirals", "gaussians"}
    with pytest.raises(DataError, match="unknown data set 'digitz'"):
        load_dataset(DataSpec("digitz"))


# ---------------------------------------------------------------- files
@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_table_round_trip(tmp_path, ext):
    df = _frame()
    path = tmp_path / f"d.{ext}"
    df.to_csv(path, index=False) if ext == "csv" else df.to_parquet(path)
    X, names, labels = read_table(path, label="status")
    assert names == ["a", "b", "c"]
    np.testing.assert_allclose(X, df[["a", "b", "c"]].to_numpy())
    assert list(labels[:2]) == ["bad", "ok"]
    X2, names2, labels2 = read_table(path, features=["c", "a"])
    assert names2 == ["c", "a"] and labels2 is None
    np.testing.assert_allclose(X2, df[["c", "a"]].to_numpy())

    ds = load_dataset(DataSpec(str(path), label="status", normal="ok"))
    _check_dataset(ds, 3, False)
    assert len(ds.train) + len(ds.val) + len(ds.test) == 200
    assert int(ds.val_labels.sum() + ds.test_labels.sum()) == 20
    assert ds.val_labels.sum() > 0 and ds.test_labels.sum() > 0
    assert "b" in ds.preprocessor.yeo_johnson_columns


def test_npy_round_trip_and_label_by_index(tmp_path):
    rng = np.random.default_rng(1)
    arr = np.column_stack([rng.normal(size=(100, 3)), (np.arange(100) % 5 == 0).astype(float)])
    path = tmp_path / "d.npy"
    np.save(path, arr)
    X, names, labels = read_table(path)
    assert names == ["x0", "x1", "x2", "x3"] and labels is None
    np.testing.assert_array_equal(X, arr)
    X, names, labels = read_table(path, label="3")
    assert names == ["x0", "x1", "x2"] and set(labels) == {"0", "1"}
    ds = load_dataset(DataSpec(str(path), label="x3", normal="0"))
    _check_dataset(ds, 3, False)
    assert int(ds.val_labels.sum() + ds.test_labels.sum()) == 20


def test_npy_images(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(60, 28, 28), dtype=np.uint8)
    np.save(tmp_path / "img.npy", imgs)
    ds = load_dataset(DataSpec(str(tmp_path / "img.npy"), binarize=True))
    _check_dataset(ds, 784, True)
    assert ds.image_shape == (28, 28)
    np.save(tmp_path / "bad.npy", np.zeros((5, 2, 2, 2)))
    with pytest.raises(DataError, match="4-D array of shape"):
        read_table(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="Python objects"):
        read_table(tmp_path / "obj.npy")


def test_non_numeric_id_column_skipped(tmp_path):
    df = _frame(label=False)
    df.insert(0, "id", [f"row-{i}" for i in range(len(df))])
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(DataSpec(str(tmp_path / "d.csv")))
    assert ds.feature_names == ["a", "b", "c"]
    assert any("'id'" in n for n in ds.notes)


# ---------------------------------------------------------------- bad input
def _write(tmp_path, text, name="d.csv"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def test_bad_files(tmp_path):
    with pytest.raises(DataError, match="file not found: .*nope.csv"):
        load_dataset(DataSpec(str(tmp_path / "nope.csv")))
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'.*\.csv"):
        load_dataset(DataSpec(_write(tmp_path, "a\n1\n", "d.xlsx")))
    with pytest.raises(DataError, match="empty file"):
        load_dataset(DataSpec(_write(tmp_path, "")))
    with pytest.raises(DataError, match="no data rows"):
        load_dataset(DataSpec(_write(tmp_path, "a,b\n")))
    with pytest.raises(DataError, match=r"too few rows.*6 normal training row.*8 normal row"):
        load_dataset(DataSpec(_write(tmp_path, "a,b\n" + "".join(f"{i},{i * i}\n" for i in range(8)))))
    with pytest.raises(DataError, match="cannot parse"):
        load_dataset(DataSpec(_write(tmp_path, 'a,b\n1,2\n3,"4\n')))


def test_non_numeric_value_named(tmp_path):
    rows = "".join(f"{i},{i * 2}\n" for i in range(30))
    path = _write(tmp_path, "a,b\n" + rows + "31,oops\n" + rows)
    with pytest.raises(DataError) as e:
        load_dataset(DataSpec(path))
    msg = str(e.value)
    assert "'b'" in msg and "'oops'" in msg and "row 31" in msg and "\n" not in msg


def test_missing_values(tmp_path):
    df = _frame(label=False)
    df.loc[[3, 7, 9], "b"] = np.nan
    df.loc[5, "c"] = np.inf
    path = tmp_path / "m.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataError) as e:
        load_dataset(DataSpec(str(path)))
    msg = str(e.value)
    assert "'b' (3 NaN" in msg and "'c' (1 inf" in msg and "--drop-missing" in msg and "--impute" in msg
    ds = load_dataset(DataSpec(str(path), missing="drop"))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 196
    assert any("dropped 4 row" in n for n in ds.notes)
    ds = load_dataset(DataSpec(str(path), missing="impute"))
    assert len(ds.train) + len(ds.val) + len(ds.test) == 200
    _check_dataset(ds, 3, False)
    med = ds.preprocessor.state()["impute_values"]
    assert all(np.isfinite(med))


def test_constant_column_is_kept(tmp_path):
    df = _frame(label=False)
    df["k"] = 5.0
    df.to_csv(tmp_path / "k.csv", index=False)
    ds = load_dataset(DataSpec(str(tmp_path / "k.csv")))
    assert ds.feature_names[-1] == "k"
    assert ds.preprocessor.std[-1] == 1.0
    assert torch.all(ds.train[:, -1] == 0)
    assert any("'k'" in n and "constant" in n for n in ds.notes)


def test_label_and_feature_errors(tmp_path):
    path = tmp_path / "d.csv"
    _frame().to_csv(path, index=False)
    with pytest.raises(DataError, match="label column 'y' not found.*columns are: 'a', 'b', 'c', 'status'"):
        load_dataset(DataSpec(str(path), label="y", normal="ok"))
    with pytest.raises(DataError, match="normal value 'good' not in label column 'status'.*'ok' \\(180\\)"):
        load_dataset(DataSpec(str(path), label="status", normal="good"))
    with pytest.raises(DataError, match="--normal.*'ok'.*'bad'"):
        load_dataset(DataSpec(str(path), label="status"))
    with pytest.raises(DataError, match="feature column\\(s\\) 'zz' not found"):
        load_dataset(DataSpec(str(path), features=["a", "zz"]))
    with pytest.raises(DataError, match="column 'status' in .* is not numeric: value 'bad' at row 1"):
        load_dataset(DataSpec(str(path), features=["a", "status"]))


def test_numeric_labels_compare_as_strings(tmp_path):
    df = _frame(label=False)
    df["y"] = (np.arange(len(df)) % 4 == 0).astype(int)
    df.to_csv(tmp_path / "d.csv", index=False)
    ds = load_dataset(DataSpec(str(tmp_path / "d.csv"), label="y", normal="0"))
    assert int(ds.val_labels.sum() + ds.test_labels.sum()) == 50
    assert ds.feature_names == ["a", "b", "c"]


def test_spec_validation_and_dict_round_trip():
    spec = DataSpec("x.csv", features=["a"], label="y", normal="0", missing="impute", max_rows=50)
    d = json.loads(json.dumps(spec.to_dict()))
    assert DataSpec.from_dict(d) == spec
    with pytest.raises(ConfigError, match="transform"):
        DataSpec("digits", transform="log")
    with pytest.raises(ConfigError, match="unknown key"):
        DataSpec.from_dict({"source": "digits", "colour": 1})


# ---------------------------------------------------------------- preprocessing
def test_yeo_johnson_matches_sklearn():
    from sklearn.preprocessing import PowerTransformer

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.lognormal(size=500), -rng.lognormal(size=500), rng.normal(size=500) * 3])
    pt = PowerTransformer(method="yeo-johnson", standardize=False).fit(X)
    ref = pt.transform(X)
    for j, lam in enumerate(pt.lambdas_):
        np.testing.assert_allclose(yeo_johnson(X[:, j], lam), ref[:, j], rtol=1e-12, atol=1e-12)
    for lam in (0.0, 2.0, -1.3, 3.5):
        pt.lambdas_ = np.full(3, lam)
        np.testing.assert_allclose(
            np.column_stack([yeo_johnson(X[:, j], lam) for j in range(3)]), pt.transform(X), rtol=1e-12, atol=1e-12
        )


def test_auto_picks_yeo_johnson_for_lognormal_only():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.lognormal(size=2000), rng.normal(size=2000), rng.standard_t(2, size=2000)])
    pre = Preprocessor.fit(X, ["logn", "gauss", "t2"], transform="auto")
    assert pre.yeo_johnson_columns == ["logn", "t2"]
    assert "skewness" in pre.reasons[0] and "no power transform" in pre.reasons[1]
    assert "heavy tails" in pre.reasons[2] or "skewness" in pre.reasons[2]
    assert Preprocessor.fit(X, ["a", "b", "c"], transform="standardize").yeo_johnson_columns == []
    assert Preprocessor.fit(X, ["a", "b", "c"], transform="yeo-johnson").yeo_johnson_columns == ["a", "b", "c"]
    none = Preprocessor.fit(X, ["a", "b", "c"], transform="none")
    np.testing.assert_allclose(none.transform(X), X.astype(np.float32))


def test_preprocessor_state_round_trip():
    ds = load_dataset(DataSpec("breast-cancer"))
    pre = ds.preprocessor
    state = json.loads(json.dumps(pre.state()))
    again = Preprocessor.from_state(state)
    X, _, _ = read_table_from_builtin()
    np.testing.assert_array_equal(pre.transform(X), again.transform(X))
    assert again.yeo_johnson_columns == pre.yeo_johnson_columns
    assert len(again.describe()) == 30
    bin_pre = load_dataset(DataSpec("digits")).preprocessor
    st_ = json.loads(json.dumps(bin_pre.state()))
    assert st_["binary"] and st_["binarize_threshold"] == 0.5 and st_["scale"] == 16.0


def read_table_from_builtin():
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    return d.data, list(d.feature_names), None


def test_splits_reproducible_disjoint_stratified():
    anom = np.arange(500) % 7 == 0
    a = split_indices(500, anom, 0.15, 0.15, seed=5)
    b = split_indices(500, anom, 0.15, 0.15, seed=5)
    c = split_indices(500, anom, 0.15, 0.15, seed=6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    train, val, test = a
    assert len(set(train) | set(val) | set(test)) == 500
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    assert not anom[train].any() and anom[val].any() and anom[test].any()
    assert (~anom[val]).any() and (~anom[test]).any()
    # two anomalies: one each
    two = np.zeros(100, bool)
    two[[3, 50]] = True
    _, v, t = split_indices(100, two, 0.15, 0.15, 0)
    assert two[v].sum() == 1 and two[t].sum() == 1


# ---------------------------------------------------------------- scoring
def test_prepare_scoring_data(tmp_path):
    df = _frame()
    path = tmp_path / "train.csv"
    df.to_csv(path, index=False)
    ds = load_dataset(DataSpec(str(path), label="status", normal="ok"))
    state = json.loads(json.dumps(ds.preprocessor.state()))
    # same file, columns reordered, label present: fine, row order kept
    df[["status", "c", "a", "b"]].to_csv(tmp_path / "score.csv", index=False)
    X = prepare_scoring_data(tmp_path / "score.csv", state)
    assert X.dtype == np.float32 and X.shape == (200, 3)
    np.testing.assert_array_equal(X, ds.preprocessor.transform(df[["a", "b", "c"]].to_numpy()))
    df[["a", "c"]].assign(zz=1.0).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match="missing 1 column\\(s\\) 'b'; 1 extra column\\(s\\) 'zz'"):
        prepare_scoring_data(tmp_path / "bad.csv", state)
    np.save(tmp_path / "s.npy", df[["a", "b", "c"]].to_numpy())
    np.testing.assert_array_equal(prepare_scoring_data(tmp_path / "s.npy", ds.preprocessor), X)
    np.save(tmp_path / "s4.npy", np.zeros((4, 4)))
    with pytest.raises(DataError, match="4 column\\(s\\) per row; the model was trained on 3"):
        prepare_scoring_data(tmp_path / "s4.npy", state)
    df2 = df[["a", "b", "c"]].copy()
    df2.loc[2, "a"] = np.nan
    df2.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(DataError, match="'a' \\(1 NaN, first at row 3\\)"):
        prepare_scoring_data(tmp_path / "nan.csv", state)
    assert np.isfinite(prepare_scoring_data(tmp_path / "nan.csv", state, missing="impute")).all()


def test_scoring_image_shape(tmp_path):
    ds = load_dataset(DataSpec("digits"))
    np.save(tmp_path / "ok.npy", np.full((3, 8, 8), 16, dtype=np.uint8))
    assert (prepare_scoring_data(tmp_path / "ok.npy", ds.preprocessor) == 1).all()
    np.save(tmp_path / "big.npy", np.zeros((3, 28, 28), dtype=np.uint8))
    with pytest.raises(DataError, match="shape 28x28.*trained on 8x8"):
        prepare_scoring_data(tmp_path / "big.npy", ds.preprocessor)


# ---------------------------------------------------------------- property test
_names = st.text(alphabet=string.ascii_letters + string.digits + "_ ", min_size=1, max_size=6)
_cells = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.sampled_from(["", "x", "nan", "1e400", "-", "NA", "3,5", '"']),
)


@st.composite
def _tables(draw):
    cols = draw(st.lists(_names, min_size=1, max_size=4))
    n = draw(st.integers(0, 40))
    lines = [",".join(cols)]
    for _ in range(n):
        lines.append(",".join(str(draw(_cells)) for _ in cols))
    return "\n".join(lines) + draw(st.sampled_from(["", "\n"]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=st.one_of(st.binary(max_size=300), _tables()), missing=st.sampled_from(["error", "drop", "impute"]))
def test_random_csv_loads_or_raises_data_error(tmp_path, content, missing):
    path = tmp_path / "r.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    try:
        ds = load_dataset(DataSpec(str(path), missing=missing))
    except DataError as e:
        assert "\n" not in str(e)
        return
    for t in (ds.train, ds.val, ds.test):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()


def test_digits_are_read_without_importing_sklearn_and_equal_load_digits():
    """The bundled digits file is read directly (importing scikit-learn costs seconds
    of every `fvnce train --data digits`): same values as load_digits()."""
    import subprocess
    import sys

    code = ("import sys; from fvnce.data.builtin import _digits_arrays; X, y = _digits_arrays(); "
            "print('sklearn' in sys.modules, X.shape, y.dtype.kind)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "False" and "(1797, 64)" in out
    from sklearn.datasets import load_digits

    from fvnce.data.builtin import _digits_arrays
    X, y = _digits_arrays()
    d = load_digits()
    assert np.array_equal(X, d.data) and np.array_equal(y, d.target) and X.dtype == d.data.dtype


# -- dequantisation of integer-valued columns ------------------------------------------------
def test_dequantize_jitters_integer_columns_only():
    from fvnce.data.load import dequantize, integer_columns

    rng = np.random.default_rng(0)
    X = np.column_stack([rng.integers(1, 11, 500).astype(float),    # grades 1-10
                         rng.normal(size=500),                       # continuous
                         np.full(500, 3.0),                          # constant
                         rng.integers(0, 2, 500).astype(float)])     # 0/1 in a mixed table
    X[7, 0] = np.nan
    cols = integer_columns(X)
    assert cols == [0, 3]
    out = dequantize(X, cols, seed=3, stream=0)
    d = out - X
    assert np.isnan(out[7, 0]) and np.array_equal(out[:, [1, 2]], X[:, [1, 2]])
    jitter = d[:, [0, 3]][np.isfinite(d[:, [0, 3]])]
    assert jitter.min() >= -0.5 and jitter.max() < 0.5 and abs(jitter.mean()) < 0.05 and jitter.std() > 0.25
    assert np.array_equal(np.round(out[np.isfinite(out[:, 0]), 0]), X[np.isfinite(X[:, 0]), 0])
    assert np.array_equal(dequantize(X, cols, 3, 0), out, equal_nan=True)
    for other in (dequantize(X, cols, 4, 0), dequantize(X, cols, 3, 1)):
        assert not np.array_equal(other, out, equal_nan=True)
    assert np.array_equal(dequantize(X, [], 3, 0), X, equal_nan=True)


def test_only_training_rows_are_dequantized(tmp_path):
    rng = np.random.default_rng(1)
    n = 300
    path = tmp_path / "grades.csv"
    with open(path, "w") as fh:
        fh.write("a,b,c\n")
        for i in range(n):
            fh.write(f"{rng.integers(1, 11)},{rng.integers(0, 50)},{rng.normal():.6f}\n")
    ds = load_dataset(DataSpec(source=str(path), seed=2))
    assert any("dequantised 2 integer-valued column(s) of the training rows (a, b)" in n for n in ds.notes)
    raw = np.loadtxt(path, delimiter=",", skiprows=1)
    grid = ds.preprocessor.transform(raw).astype(np.float64)

    def nearest(rows):  # distance of each row to the closest row of the file, transformed
        return np.abs(rows.numpy().astype(np.float64)[:, None, :] - grid[None]).max(-1).min(-1)

    assert nearest(ds.val).max() < 1e-6 and nearest(ds.test).max() < 1e-6
    assert nearest(ds.train).min() > 1e-4
    # the same rows dequantised, for log-likelihoods: close to their own values, not on them
    for rows, jittered in ((ds.val, ds.val_dequantized), (ds.test, ds.test_dequantized)):
        assert jittered.shape == rows.shape and nearest(jittered).min() > 1e-4
        assert np.allclose(jittered[:, 2].numpy(), rows[:, 2].numpy())  # the continuous column is kept
    plain = load_dataset(DataSpec(source=str(path), seed=2, dequantize="none"))
    assert not any("dequantised" in n for n in plain.notes)
    assert plain.val_dequantized is None and plain.test_dequantized is None
    with pytest.raises(ConfigError, match="dequantize: unknown value"):
        DataSpec(source=str(path), dequantize="yes")


def test_runs_saved_before_dequantization_reload_without_it(tmp_path):
    from fvnce.runs.files import CONFIG_NAME, read_config

    run = tmp_path / "old"
    run.mkdir()
    (run / CONFIG_NAME).write_text(json.dumps({"fvnce_version": "0.2.0", "run": {"data": {"source": "x.csv"}}}))
    assert read_config(run)["run"]["data"]["dequantize"] == "none"
