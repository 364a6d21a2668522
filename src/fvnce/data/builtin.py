"""Built-in data sets: bundled scikit-learn sets, Fashion-MNIST from the Debian package,
ELPV solar cells from the PyPI package elpv-dataset (:mod:`fvnce.data.images`), 2-D toys.

Each loader takes the :class:`DataSpec` and returns a :class:`RawTable` (raw values,
before preparation). Nothing here downloads anything.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from fvnce.data.images import elpv
from fvnce.data.spec import DataSpec, RawTable
from fvnce.errors import DataError

__all__ = ["BUILTIN", "FASHION_MNIST_DIR", "FASHION_CLASSES", "fashion_mnist_arrays", "read_idx"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
TOY_ROWS = 2000

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse an idx file (optionally gzip-compressed), the MNIST format."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {' '.join(str(e).split())}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an idx file (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated (idx header)")
    dims = tuple(int(v) for v in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    if len(data) - header < count * dtype.itemsize:
        raise DataError(f"{path} is truncated: expected {count} values of shape {dims}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(dims)


def _sklearn_data_file(name: str) -> Path | None:
    """A data file bundled with scikit-learn, found without importing scikit-learn
    (the import costs 1.5-3 s of every ``fvnce train --data digits``)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "datasets" / "data" / name
        if path.is_file():
            return path
    return None


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits()``'s data and target, read as it reads them (digits.csv.gz:
    64 pixel columns, then the class)."""
    path = _sklearn_data_file("digits.csv.gz")
    if path is None:  # an unusual install: let scikit-learn find its file
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data, d.target
    with gzip.open(path, mode="rt", encoding="utf-8") as f:
        data = np.loadtxt(f, delimiter=",")
    return data[:, :-1], data[:, -1].astype(int, copy=False)


def _digits(spec: DataSpec) -> RawTable:
    data, target = _digits_arrays()
    return RawTable(
        X=np.asarray(data, dtype=np.float64),
        names=[f"pixel{i}" for i in range(64)],
        labels=target.astype(str),
        label_name="digit",
        source="digits",
        image_shape=(8, 8),
        scale=16.0,
        default_binarize=True,
        binarize_threshold=0.5,  # raw value > 8
    )


def _find_fashion_file(stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        p = FASHION_MNIST_DIR / name
        if p.is_file():
            return p
    return None


def fashion_mnist_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Fashion-MNIST's own split as installed: (training images, their labels, test images,
    their labels), the 60,000 and 10,000 images uint8 flattened to 784 values, labels 0-9
    (:data:`FASHION_CLASSES`); None when the files are not installed."""
    out = []
    for split in ("train", "t10k"):
        img, lab = _find_fashion_file(f"{split}-images-idx3-ubyte"), _find_fashion_file(f"{split}-labels-idx1-ubyte")
        if img is None or lab is None:
            return None
        out += [read_idx(img).reshape(-1, 784), read_idx(lab).astype(int)]
    return tuple(out)


def _fashion_mnist(spec: DataSpec) -> RawTable:
    parts = []
    for split in ("train", "t10k"):
        img = _find_fashion_file(f"{split}-images-idx3-ubyte")
        lab = _find_fashion_file(f"{split}-labels-idx1-ubyte")
        if img is None or lab is None:
            continue
        parts.append((img, lab))
    if not parts:
        raise DataError(
            f"Fashion-MNIST files not found in {FASHION_MNIST_DIR}; "
            "install them with: apt-get install dataset-fashion-mnist"
        )
    xs, ys = [], []
    for img, lab in parts:
        x, y = read_idx(img), read_idx(lab)
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.ndim != 1 or len(y) != len(x):
            raise DataError(f"unexpected Fashion-MNIST shapes: {img.name} {x.shape}, {lab.name} {y.shape}")
        xs.append(x)
        ys.append(y)
    X = np.concatenate(xs).reshape(-1, 784)
    y = np.concatenate(ys)
    notes = []
    if spec.max_rows is not None and spec.max_rows < len(X):
        # subsample here already so that 70,000 x 784 never gets converted to float
        rng = np.random.default_rng([spec.seed, 1])
        keep = np.sort(rng.choice(len(X), size=spec.max_rows, replace=False))
        X, y = X[keep], y[keep]
        notes.append(f"subsampled {spec.max_rows} of {len(xs[0]) + sum(len(v) for v in xs[1:])} rows (max_rows)")
    return RawTable(
        X=np.ascontiguousarray(X),
        names=[f"pixel{i}" for i in range(784)],
        labels=y.astype(str),
        label_name="class",
        source="fashion-mnist",
        image_shape=(28, 28),
        scale=255.0,
        default_binarize=True,
        binarize_threshold=0.5,
        normal_aliases={name.lower(): str(i) for i, name in enumerate(FASHION_CLASSES)},
        notes=notes,
    )


def _breast_cancer(spec: DataSpec) -> RawTable:
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    names = [str(n) for n in d.target_names]  # ["malignant", "benign"]
    return RawTable(
        X=np.asarray(d.data, dtype=np.float64),
        names=[str(n) for n in d.feature_names],
        labels=np.asarray([names[t] for t in d.target]),
        label_name="diagnosis",
        source="breast-cancer",
        default_normal="benign",
        normal_aliases={"1": "benign", "0": "malignant"},
    )


def _toy(kind: str):
    def load(spec: DataSpec) -> RawTable:
        rng = np.random.default_rng([spec.seed, 2])
        n = TOY_ROWS
        if kind == "rings":
            radius = rng.choice([1.0, 2.0], size=n)
            angle = rng.uniform(0, 2 * np.pi, size=n)
            r = radius + 0.1 * rng.standard_normal(n)
            X = np.column_stack([r * np.cos(angle), r * np.sin(angle)])
        elif kind == "spirals":
            t = np.sqrt(rng.uniform(0, 1, size=n)) * 3 * np.pi
            arm = rng.integers(0, 2, size=n)
            sign = np.where(arm == 0, 1.0, -1.0)
            X = np.column_stack([sign * t * np.cos(t), sign * t * np.sin(t)]) / 3.0
            X += 0.1 * rng.standard_normal(X.shape)
        else:  # gaussians: 8 on a circle
            k = rng.integers(0, 8, size=n)
            centres = 2.0 * np.column_stack([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)])
            X = centres + 0.2 * rng.standard_normal((n, 2))
        return RawTable(X=X, names=["x", "y"], source=kind)

    load.__name__ = f"_{kind}"
    load.__doc__ = f"2-D toy set {kind!r}: {TOY_ROWS} rows generated from spec.seed, no labels."
    return load


BUILTIN = {
    "digits": _digits,
    "fashion-mnist": _fashion_mnist,
    "breast-cancer": _breast_cancer,
    "elpv": elpv,
    "rings": _toy("rings"),
    "spirals": _toy("spirals"),
    "gaussians": _toy("gaussians"),
}
