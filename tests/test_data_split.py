"""fvnce.data.dataset_from_split: a Dataset with the caller's train/validation/test split."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

from fvnce.data import SPLIT_PARTS, DataSpec, dataset_from_split, fashion_mnist_arrays
from fvnce.errors import DataError

ROOT = Path(__file__).resolve().parents[1]


def _parts(n=40, seed=0):
    """A shuffled split of ``n`` rows: 24 train, 6 val, 10 test."""
    part = np.array(["train"] * 24 + ["val"] * 6 + ["test"] * (n - 30), dtype=object)
    return np.random.default_rng(seed).permutation(part)


def test_rows_go_exactly_where_the_split_says_in_their_order():
    n = 40
    X = np.arange(n * 3, dtype=np.float64).reshape(n, 3)  # row i holds 3i, 3i+1, 3i+2
    part = _parts(n)
    labels = np.zeros(n, int)
    labels[(part != "train") & (np.arange(n) % 3 == 0)] = 1
    ds = dataset_from_split(X, part, labels, DataSpec(source="grid", transform="none", dequantize="none"))
    for name, tensor in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        assert tensor.dtype == torch.float32 and tensor.shape == ((part == name).sum(), 3)
        np.testing.assert_array_equal(tensor.numpy(), X[part == name])  # exact rows, original order
    np.testing.assert_array_equal(ds.val_labels.numpy(), labels[part == "val"].astype(np.float32))
    np.testing.assert_array_equal(ds.test_labels.numpy(), labels[part == "test"].astype(np.float32))
    assert ds.train_labels is None and ds.feature_names == ["x0", "x1", "x2"] and ds.image_shape is None
    assert "split: the caller's: train 24, validation 6, test 10" in ds.notes
    assert SPLIT_PARTS == ("train", "val", "test")


def test_without_labels_there_are_none_and_the_fractions_are_ignored():
    X = np.random.default_rng(1).normal(size=(40, 2))
    part = _parts()
    ds = dataset_from_split(X, part, spec=DataSpec(source="noisy", val_fraction=0.5, test_fraction=0.3,
                                                    transform="none"), names=["u", "v"])
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 10)
    assert ds.val_labels is None and ds.test_labels is None and ds.feature_names == ["u", "v"]
    np.testing.assert_allclose(ds.test.numpy(), X[part == "test"], rtol=1e-6)


def test_preprocessing_is_fitted_on_the_training_rows_only():
    rng = np.random.default_rng(2)
    X = rng.normal(3.0, 2.0, size=(40, 2))
    part = _parts()
    X[part == "test"] += 100.0  # far-off test rows must not move the fitted mean
    ds = dataset_from_split(X, part, spec=DataSpec(source="shifted", transform="standardize"))
    tr = X[part == "train"]
    mu, sd = tr.mean(axis=0), tr.std(axis=0)
    np.testing.assert_allclose(ds.test.numpy(), (X[part == "test"] - mu) / sd, rtol=1e-5)
    np.testing.assert_allclose(ds.train.numpy().mean(axis=0), 0.0, atol=1e-6)


def test_images_are_8_bit_intensities_recorded_for_scoring():
    rng = np.random.default_rng(3)
    X = rng.integers(0, 256, size=(40, 12), dtype=np.uint8)  # 40 grey 3x4 images
    ds = dataset_from_split(X, _parts(), spec=DataSpec(source="tiny-images", binarize=False),
                            image_shape=(1, 3, 4), scale=255)
    assert ds.image_shape == (1, 3, 4) and not ds.binary
    np.testing.assert_allclose(ds.val.numpy(), X[_parts() == "val"] / 255.0, rtol=0, atol=1e-7)  # not standardised
    image = ds.preprocessor.image
    assert (image["mode"], image["channels"], image["height"], image["width"]) == ("L", 1, 3, 4)


def test_contaminated_training_rows_keep_their_labels():
    X = np.random.default_rng(4).normal(size=(40, 2))
    part = _parts()
    labels = (np.arange(40) % 4 == 0).astype(int)
    ds = dataset_from_split(X, part, labels, DataSpec(source="mixed", contaminated=True))
    np.testing.assert_array_equal(ds.train_labels.numpy(), labels[part == "train"].astype(np.float32))


def test_dropping_rows_with_missing_values_keeps_each_row_in_its_part():
    n = 40
    X = np.arange(n * 2, dtype=np.float64).reshape(n, 2)
    part = _parts(n)
    X[[1, 7, 20], 1] = np.nan
    ok = np.isfinite(X).all(axis=1)
    ds = dataset_from_split(X, part, spec=DataSpec(source="holes", missing="drop", transform="none",
                                                           dequantize="none"))
    for name, tensor in (("train", ds.train), ("val", ds.val), ("test", ds.test)):
        np.testing.assert_array_equal(tensor.numpy(), X[(part == name) & ok])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(split=["train"] * 39), r"split: expected one part per row \(40\), got shape \(39,\)"),
        (dict(split=np.where(_parts() == "val", "valid", _parts())), r"split: unknown part\(s\) 'valid'; use train"),
        (dict(split=np.where(_parts() == "test", "val", _parts())), r"split: no row in test"),
        (dict(labels=np.full(40, 2)), r"labels: expected one 0 \(normal\) or 1 \(anomaly\) per row \(40\)"),
        (dict(labels=np.zeros(39)), r"labels: expected one 0"),
        (dict(labels=np.ones(40, int)), r"labels: 24 training row\(s\) are anomalies"),
        (dict(image_shape=(1, 2, 2)), r"image_shape: expected \(C, H, W\), C 1 or 3, C\*H\*W = 3; got \(1, 2, 2\)"),
        (dict(scale=0), r"scale: must be a positive number, got 0"),
        (dict(spec=DataSpec(source="a", max_rows=10)), r"leave max_rows and normal unset"),
        (dict(spec=DataSpec(source="a", normal="0")), r"leave max_rows and normal unset"),
        (dict(spec=DataSpec(source="a", label="y")), r"leave label and features unset"),
        (dict(spec=DataSpec(source="digits")), r"is a built-in set's name"),
        (dict(X=np.zeros(40)), r"expected a non-empty 2-D array"),
    ],
)
def test_bad_input_is_a_value_error_that_says_what_is_wrong(kwargs, message):
    args = dict(X=np.random.default_rng(5).normal(size=(40, 3)), split=_parts(), labels=None, spec=None)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message) as info:
        dataset_from_split(**args)
    assert isinstance(info.value, DataError) and "\n" not in str(info.value)


def test_the_image_benchmark_needs_no_private_name_of_fvnce():
    tree = ast.parse((ROOT / "benchmarks" / "images.py").read_text(encoding="utf-8"))
    private = [f"{node.module}.{a.name}" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
               and (node.module or "").startswith("fvnce") for a in node.names if a.name.startswith("_")]
    assert private == [], private


def test_fashion_mnist_arrays_are_the_standard_split():
    arrays = fashion_mnist_arrays()
    if arrays is None:
        pytest.skip("Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
    x_tr, y_tr, x_te, y_te = arrays
    assert x_tr.shape == (60000, 784) and x_te.shape == (10000, 784) and x_tr.dtype == np.uint8
    assert np.bincount(y_tr).tolist() == [6000] * 10 and np.bincount(y_te).tolist() == [1000] * 10
