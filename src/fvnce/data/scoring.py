"""Data at scoring time: a user's file (or images) re-read and preprocessed as the
training data were."""

from __future__ import annotations

from pathlib import Path

from fvnce.data.files import SUPPORTED_EXTENSIONS, check_path, from_frame, list_names, read_frame, read_raw
from fvnce.data.images import IMAGE_EXTENSIONS, is_image_input, read_images_for_scoring
from fvnce.data.preprocess import Preprocessor
from fvnce.errors import DataError

__all__ = ["prepare_scoring_data"]


def prepare_scoring_data(
    path,
    preprocessor,
    *,
    label: str | None = None,
    missing: str | None = None,
    return_labels: bool = False,
):
    """Re-read a user file at scoring time and apply the recorded preprocessing.

    ``preprocessor`` is a :class:`Preprocessor` or its ``state()`` dict. The file's
    columns must equal the training columns (any order; the training label column and
    ``label`` may also be present); ``.npy`` files have no names and must have the same
    number of columns (or images of the training shape). Row order is kept; rows with
    missing values raise DataError unless ``missing="impute"`` (training medians).
    A folder or an image file (for a run trained on image files) gives the images as
    :func:`fvnce.data.images.read_images_for_scoring` reads them (a folder's in the order
    of their sorted relative paths; no labels).
    Returns float32 (N, D), or ``(X, labels)`` with ``return_labels`` (labels as str or None).
    """
    pre = preprocessor if isinstance(preprocessor, Preprocessor) else Preprocessor.from_state(preprocessor)
    if is_image_input(path):
        X, _ = read_images_for_scoring(path, _image_record(pre, path))
        out = pre.transform(X, where=str(path))
        return (out, None) if return_labels else out
    if pre.image is not None and Path(str(path)).suffix.lower() not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"unsupported file type {Path(str(path)).suffix or '(no extension)'!r} for {path}; the model was trained "
            f"on images: give a folder of images or an image file ({', '.join(IMAGE_EXTENSIONS)}), or a "
            f"{', '.join(SUPPORTED_EXTENSIONS)} file"
        )
    names = pre.feature_names
    d = len(names)
    p, ext = check_path(path)
    where = str(path)
    labels = None
    if ext == ".npy":
        raw = read_raw(path, label=label)
        if raw.image_shape is not None and pre.image_shape is not None and raw.image_shape != pre.image_shape:
            shp = "x".join(map(str, pre.image_shape))
            raise DataError(
                f"{where} holds images of shape {raw.image_shape[0]}x{raw.image_shape[1]}; "
                f"the model was trained on {shp} images (expected (N, {shp.replace('x', ', ')}) or (N, {d}))"
            )
        if raw.X.shape[1] != d:
            what = f"images of shape {'x'.join(map(str, pre.image_shape))}" if pre.image_shape else "rows"
            raise DataError(
                f"{where} has {raw.X.shape[1]} column(s) per row; the model was trained on {d} ({what})"
            )
        X, labels = raw.X, raw.labels
    else:
        df = read_frame(p, ext, where)
        cols = [str(c) for c in df.columns]
        allowed = {c for c in (pre.label, label) if c is not None}
        missing_cols = [n for n in names if n not in cols]
        extra = [c for c in cols if c not in names and c not in allowed]
        if missing_cols or extra:
            parts = []
            if missing_cols:
                parts.append(f"missing {len(missing_cols)} column(s) {list_names(missing_cols, 10)}")
            if extra:
                parts.append(f"{len(extra)} extra column(s) {list_names(extra, 10)}")
            raise DataError(f"columns of {where} do not match the training columns: " + "; ".join(parts))
        use_label = label if label is not None else None
        raw = from_frame(df, where, names, use_label)
        X, labels = raw.X, raw.labels
    out = pre.transform(X, where=where, missing=missing)
    return (out, labels) if return_labels else out


def _image_record(pre: Preprocessor, path) -> dict:
    if pre.image is None:
        what = "images of an .npy file" if pre.image_shape is not None else "a table"
        raise DataError(f"{path} names image files, but the model was trained on {what}; give a "
                        f"{', '.join(SUPPORTED_EXTENSIONS)} file")
    return pre.image
