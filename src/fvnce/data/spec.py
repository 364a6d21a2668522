"""Plain-data description of a data set (:class:`DataSpec`) and what loading returns."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from fvnce.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from fvnce.data.preprocess import Preprocessor

__all__ = ["CELL_TYPES", "DataSpec", "Dataset", "RawTable", "TRANSFORMS", "MISSING_MODES", "normal_rows"]

TRANSFORMS = ("auto", "standardize", "yeo-johnson", "none")
MISSING_MODES = ("error", "drop", "impute")
DEQUANTIZE_MODES = ("auto", "none")
CELL_TYPES = ("all", "mono", "poly")
MAX_IMAGE_SIZE = 4096


@dataclass
class DataSpec:
    """What to load and how to prepare it; saved as plain data in run directories.

    ``source`` is a built-in name (see :data:`fvnce.data.BUILTIN`), a path to a
    ``.csv``, ``.npy`` or ``.parquet`` file, or a folder of images in the MVTec AD layout
    (:mod:`fvnce.data.images`: train/good, test/good, test/<kind>; there the test set is
    test/, ``val_fraction`` of train/good and of each test/ folder validates, and
    ``test_fraction`` is not used). ``normal`` is compared as a string with the
    label column: rows with another label are anomalies (kept out of training, split
    between validation and test; with ``contaminated=True`` split like the normal rows,
    so that training sees them too, as it would unlabelled production data, while
    validation and test keep their labels). ``binarize=None`` uses the data set's default (True
    for the image sets). ``missing``: what to do with NaN/inf values ("error", "drop"
    the rows, or "impute" the training median). ``dequantize="auto"``: integer-valued
    columns of continuous tables get uniform noise on [-0.5, 0.5] in the training rows
    (:func:`fvnce.data.load.dequantize`); "none" keeps them as they are.
    ``image_size``: resize every image to N x N (image folders and ``elpv`` only; elpv
    defaults to 64, a folder to its images' own size, which must then be the same for
    all).  ``cell_type``: the ELPV cells to use, "mono", "poly" or "all".
    """

    source: str = "digits"
    features: list[str] | None = None
    label: str | None = None
    normal: str | None = None
    binarize: bool | None = None
    transform: str = "auto"
    missing: str = "error"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    seed: int = 0
    max_rows: int | None = None
    contaminated: bool = False
    dequantize: str = "auto"
    image_size: int | None = None
    cell_type: str = "all"

    def __post_init__(self) -> None:
        self.source = str(self.source)
        if self.features is not None:
            if isinstance(self.features, str):
                self.features = [self.features]
            self.features = [str(f) for f in self.features]
            if not self.features:
                raise ConfigError("features: empty list; leave it unset to use all numeric columns")
        if self.label is not None:
            self.label = str(self.label)
        if self.normal is not None:
            self.normal = str(self.normal)
        if self.transform not in TRANSFORMS:
            raise ConfigError(
                f"transform: unknown value {self.transform!r}; choose one of {', '.join(TRANSFORMS)}"
            )
        if self.dequantize not in DEQUANTIZE_MODES:
            raise ConfigError(
                f"dequantize: unknown value {self.dequantize!r}; choose one of {', '.join(DEQUANTIZE_MODES)}"
            )
        if self.missing not in MISSING_MODES:
            raise ConfigError(
                f"missing: unknown value {self.missing!r}; choose one of {', '.join(MISSING_MODES)}"
            )
        for name in ("val_fraction", "test_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= float(v) < 1.0:
                raise ConfigError(f"{name}: must be a number in [0, 1), got {v!r}")
            setattr(self, name, float(v))
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ConfigError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g}; "
                "must be below 0.9 to leave rows for training"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigError(f"seed: must be an integer, got {self.seed!r}")
        self.seed = int(self.seed)
        if self.max_rows is not None:
            if isinstance(self.max_rows, bool) or not isinstance(self.max_rows, (int, np.integer)) or self.max_rows < 1:
                raise ConfigError(f"max_rows: must be a positive integer, got {self.max_rows!r}")
            self.max_rows = int(self.max_rows)
        if not isinstance(self.contaminated, (bool, np.bool_)):
            raise ConfigError(f"contaminated: must be true or false, got {self.contaminated!r}")
        self.contaminated = bool(self.contaminated)
        if self.image_size is not None:
            v = self.image_size
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= MAX_IMAGE_SIZE:
                raise ConfigError(f"image_size: must be an integer from 1 to {MAX_IMAGE_SIZE}, got {v!r}")
            self.image_size = int(v)
        if self.cell_type not in CELL_TYPES:
            raise ConfigError(f"cell_type: unknown value {self.cell_type!r}; choose one of {', '.join(CELL_TYPES)}")
        if self.binarize is not None and not isinstance(self.binarize, (bool, np.bool_)):
            raise ConfigError(f"binarize: must be true, false or unset, got {self.binarize!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["features"] is not None:
            d["features"] = list(d["features"])
        if d["binarize"] is not None:
            d["binarize"] = bool(d["binarize"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataSpec:
        if not isinstance(d, dict):
            raise ConfigError(f"data spec: expected a mapping, got {type(d).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(
                f"data spec: unknown key(s) {', '.join(unknown)}; known keys are {', '.join(sorted(known))}"
            )
        return cls(**d)


@dataclass
class Dataset:
    """What training and evaluation consume. All tensors are float32 of shape (N, D).

    ``train`` holds normal rows only (every row without labels; normal and anomalous rows
    with ``spec.contaminated``, ``train_labels`` then telling which); ``val`` and ``test``
    hold normal and (where the data has labels) anomalous rows, with
    ``val_labels``/``test_labels`` 1 = anomaly, 0 = normal (None when the data has no labels).
    With integer-valued columns dequantised (``spec.dequantize``), ``train`` holds the
    dequantised rows and ``val_dequantized``/``test_dequantized`` the same rows as
    ``val``/``test`` dequantised (for log-likelihoods; anomaly scores use ``val``/``test``).
    """

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    val_labels: torch.Tensor | None
    test_labels: torch.Tensor | None
    feature_names: list[str]
    image_shape: tuple[int, ...] | None
    binary: bool
    preprocessor: Preprocessor
    spec: DataSpec
    notes: list[str] = field(default_factory=list)
    train_labels: torch.Tensor | None = None
    val_dequantized: torch.Tensor | None = None
    test_dequantized: torch.Tensor | None = None
    train_paths: list[str] | None = None
    val_paths: list[str] | None = None
    test_paths: list[str] | None = None
    train_kinds: list[str] | None = None
    val_kinds: list[str] | None = None
    test_kinds: list[str] | None = None
    held_out: torch.Tensor | None = None
    held_out_paths: list[str] | None = None
    held_out_kinds: list[str] | None = None
    held_out_note: str | None = None

    @property
    def dim(self) -> int:
        return int(self.train.shape[1])

    def summary(self) -> str:
        def n_anom(lab):
            return 0 if lab is None else int(lab.sum().item())

        return (
            f"{self.spec.source}: {self.dim} features, train {len(self.train)}"
            + (f" ({n_anom(self.train_labels)} anomalies)" if self.train_labels is not None else "") + ", "
            f"val {len(self.val)} ({n_anom(self.val_labels)} anomalies), "
            f"test {len(self.test)} ({n_anom(self.test_labels)} anomalies)"
            + (", binary" if self.binary else "")
            + (f", {len(self.held_out)} held out ({self.held_out_note})" if self.held_out is not None else "")
        )


@dataclass
class RawTable:
    """Internal: raw rows as read from a file or a built-in set, before any preparation."""

    X: np.ndarray  # (N, D); float64 for tables, may be uint8 for image sets
    names: list[str]
    labels: np.ndarray | None = None  # (N,) array of str
    label_name: str | None = None
    source: str = ""  # for messages: the path or the built-in name
    image_shape: tuple[int, ...] | None = None
    scale: float = 1.0  # raw values are divided by this before anything else
    default_binarize: bool = False
    binarize_threshold: float = 0.5  # in scaled units; value > threshold -> 1
    default_normal: str | None = None
    normal_aliases: dict[str, str] = field(default_factory=dict)  # e.g. class name -> "0"
    notes: list[str] = field(default_factory=list)
    # image files (fvnce.data.images): per-row path and kind, the reading record
    # (preprocess.json's "image"), the transform "auto" stands for, a fixed test part
    # (an image folder's test/) and rows held out of every split (ELPV's uncertain cells)
    paths: np.ndarray | None = None
    kinds: np.ndarray | None = None
    image: dict | None = None
    default_transform: str | None = None
    fixed_test: np.ndarray | None = None
    held_out: np.ndarray | None = None
    held_out_note: str | None = None


def normal_rows(x, labels):
    """The rows of ``x`` labelled normal (label 0; all rows when ``labels`` is None): what a
    validation loss or an alarm threshold is measured on, the anomalies being no part of the
    data distribution."""
    return x if labels is None else x[labels == 0]
