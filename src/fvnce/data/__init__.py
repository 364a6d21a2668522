"""Data: built-in sets, file loaders (.csv, .npy, .parquet, image folders), preprocessing and splits.

``load_dataset(DataSpec(...))`` gives a :class:`Dataset` of float32 tensors: ``train``
(normal rows only), ``val``/``test`` (normal and, where labels exist, anomalous rows with
0/1 labels), the fitted :class:`Preprocessor` (plain-data ``state()``, saved in run
directories) and human-readable ``notes``. ``prepare_scoring_data`` re-applies the recorded
preprocessing to a new file at scoring time; ``dataset_from_array`` prepares an in-memory
array as a file would be, and ``dataset_from_split`` one whose train/validation/test split the
caller fixes (a published protocol's). User-input problems raise
:class:`fvnce.errors.DataError` with a one-line message.
"""

from fvnce.data.builtin import BUILTIN, FASHION_MNIST_DIR, fashion_mnist_arrays
from fvnce.data.files import SUPPORTED_EXTENSIONS, read_table
from fvnce.data.images import ELPV_DEFAULT_SIZE, IMAGE_EXTENSIONS, image_files, is_image_input
from fvnce.data.load import (MIN_TRAIN_ROWS, SPLIT_PARTS, dataset_from_array, dataset_from_split, load_dataset,
                             split_indices)
from fvnce.data.scoring import prepare_scoring_data
from fvnce.data.preprocess import Preprocessor, yeo_johnson
from fvnce.data.spec import MISSING_MODES, TRANSFORMS, DataSpec, Dataset, normal_rows

__all__ = [
    "BUILTIN",
    "ELPV_DEFAULT_SIZE",
    "IMAGE_EXTENSIONS",
    "FASHION_MNIST_DIR",
    "MIN_TRAIN_ROWS",
    "MISSING_MODES",
    "SPLIT_PARTS",
    "SUPPORTED_EXTENSIONS",
    "TRANSFORMS",
    "DataSpec",
    "Dataset",
    "Preprocessor",
    "dataset_from_array",
    "dataset_from_split",
    "fashion_mnist_arrays",
    "image_files",
    "is_image_input",
    "load_dataset",
    "normal_rows",
    "prepare_scoring_data",
    "read_table",
    "split_indices",
    "yeo_johnson",
]
