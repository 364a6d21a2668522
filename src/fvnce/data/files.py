"""Reading user files (.csv, .npy, .parquet) into numeric arrays with precise errors.

Every failure is a :class:`fvnce.errors.DataError` with a one-line message; parser
exceptions from pandas/numpy/pyarrow are wrapped. Row numbers in messages count data
rows from 1 (the first row after a CSV header is row 1).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fvnce.data.spec import RawTable
from fvnce.errors import DataError

__all__ = ["SUPPORTED_EXTENSIONS", "read_table", "read_raw"]

SUPPORTED_EXTENSIONS = (".csv", ".npy", ".parquet")
_MAX_LIST = 20


def _one_line(text: object, limit: int = 160) -> str:
    s = " ".join(str(text).split())
    return s if len(s) <= limit else s[: limit - 3] + "..."


def list_names(names: list[str], limit: int = _MAX_LIST) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    if len(names) > limit:
        shown += f", ... ({len(names)} in all)"
    return shown


def _pandas(ext: str):
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - pandas is installed in the test env
        raise DataError(
            f"reading {ext} files needs pandas (and pyarrow for .parquet): pip install 'fvnce[files]'"
        ) from None
    return pd


def read_table(path, features=None, label=None):
    """Read a ``.csv``, ``.npy`` or ``.parquet`` file.

    Returns ``(X, names, labels)``: X float64 (N, D) (NaN/inf kept as they are: missing
    values are handled later), the feature column names, and the label column as an
    array of strings (None without ``label``). ``features`` defaults to every numeric
    column other than the label (entirely non-numeric columns such as ids are skipped).
    For ``.npy`` files columns are named ``x0`` ... ``x{D-1}`` (a label or feature may
    also be given by index, e.g. ``"3"``); 3-D arrays (N, H, W) are flattened.
    """
    raw = read_raw(path, features=features, label=label)
    return np.asarray(raw.X, dtype=np.float64), list(raw.names), raw.labels


def check_path(path) -> tuple[Path, str]:
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise DataError(f"file not found: {path}")
    if p.is_dir():
        raise DataError(f"{path} is a directory, not a data file")
    ext = p.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise DataError(
            f"unsupported file type {ext or '(no extension)'!r} for {path}; "
            f"supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    try:
        size = p.stat().st_size
    except OSError as e:
        raise DataError(f"cannot read {path}: {_one_line(e)}") from None
    if size == 0:
        raise DataError(f"empty file: {path}")
    return p, ext


def read_raw(path, features=None, label=None) -> RawTable:
    """Like :func:`read_table` but returns a :class:`RawTable` (with notes, image shape)."""
    p, ext = check_path(path)
    features = None if features is None else [str(f) for f in features]
    label = None if label is None else str(label)
    if ext == ".npy":
        return _read_npy(p, str(path), features, label)
    df = read_frame(p, ext, str(path))
    return from_frame(df, str(path), features, label)


def read_frame(p: Path, ext: str, where: str):
    """Read a .csv or .parquet file into a DataFrame, wrapping every parser error."""
    pd = _pandas(ext)
    try:
        if ext == ".csv":
            return pd.read_csv(p, low_memory=False)
        return pd.read_parquet(p)
    except pd.errors.EmptyDataError:
        raise DataError(f"empty file: {where} (no header or data)") from None
    except UnicodeDecodeError:
        raise DataError(f"cannot read {where}: not UTF-8 text") from None
    except MemoryError:
        raise DataError(f"cannot read {where}: not enough memory") from None
    except Exception as e:  # parser errors of every kind (pandas, pyarrow, csv module)
        kind = "CSV" if ext == ".csv" else "Parquet"
        raise DataError(f"cannot parse {where} as {kind}: {_one_line(e)}") from None


def _label_strings(values: np.ndarray) -> np.ndarray:
    """Label values as strings; integral floats print as integers ("1.0" -> "1")."""
    out = []
    for v in values:
        if isinstance(v, (float, np.floating)) and np.isfinite(v) and float(v).is_integer():
            out.append(str(int(v)))
        elif isinstance(v, (bytes, np.bytes_)):
            out.append(v.decode("utf-8", "replace").strip())
        else:
            out.append(str(v).strip())
    return np.asarray(out, dtype=object).astype(str)


def from_frame(df, where: str, features, label) -> RawTable:
    pd = _pandas(".csv")
    columns = [str(c) for c in df.columns]
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise DataError(f"duplicate column name(s) in {where}: {list_names(dup)}")
    df = df.copy()
    df.columns = columns
    if len(columns) == 0:
        raise DataError(f"{where} has no columns")
    if len(df) == 0:
        raise DataError(f"{where} has a header but no data rows (0 rows)")
    labels = None
    if label is not None:
        if label not in columns:
            raise DataError(f"label column {label!r} not found in {where}; columns are: {list_names(columns)}")
        col = df[label]
        miss = col.isna().to_numpy()
        if miss.any():
            first = int(np.flatnonzero(miss)[0]) + 1
            raise DataError(
                f"label column {label!r} in {where} has {int(miss.sum())} missing value(s) (first at row {first})"
            )
        labels = _label_strings(col.to_numpy(dtype=object))
    notes: list[str] = []
    if features is not None:
        missing = [f for f in features if f not in columns]
        if missing:
            raise DataError(
                f"feature column(s) {list_names(missing)} not found in {where}; columns are: {list_names(columns)}"
            )
        if label is not None and label in features:
            raise DataError(f"column {label!r} is given both as the label and as a feature")
        if len(set(features)) != len(features):
            raise DataError(f"feature columns listed twice: {list_names(sorted({f for f in features if features.count(f) > 1}))}")
        candidates, explicit = list(features), True
    else:
        candidates, explicit = [c for c in columns if c != label], False
    names: list[str] = []
    arrays: list[np.ndarray] = []
    skipped: list[str] = []
    for c in candidates:
        col = df[c]
        if pd.api.types.is_datetime64_any_dtype(col.dtype) or pd.api.types.is_timedelta64_dtype(col.dtype):
            if explicit:
                raise DataError(f"column {c!r} in {where} holds dates/times ({col.dtype}), not numbers")
            skipped.append(c)
            continue
        if pd.api.types.is_bool_dtype(col.dtype):
            arrays.append(col.astype("float64").to_numpy())
            names.append(c)
            continue
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_complex_dtype(col.dtype):
            arr = col.to_numpy(dtype=np.float64, na_value=np.nan)
            arrays.append(arr)
            names.append(c)
            continue
        # object / string / datetime / categorical ...: parse what parses, report the rest
        obj = col.astype(object)
        present = obj.notna().to_numpy()
        try:
            num = pd.to_numeric(obj.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce")
            num = num.to_numpy(dtype=np.float64, na_value=np.nan)
        except Exception:
            num = np.full(len(obj), np.nan)
        bad = present & np.isnan(num)
        # strings such as "nan" / "NaN" parse to NaN on purpose: count them as missing, not bad
        if bad.any():
            as_str = obj.astype(str).str.strip().str.lower().to_numpy()
            bad &= ~np.isin(as_str, ["nan", "na", "n/a", "null", "none", ""])
        if not bad.any():
            arrays.append(num)
            names.append(c)
            continue
        if not explicit and (present & ~np.isnan(num)).sum() == 0:
            skipped.append(c)  # an id / text column: not a feature unless asked for
            continue
        i = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"column {c!r} in {where} is not numeric: value {_one_line(obj.iloc[i], 40)!r} at row {i + 1}"
            f" ({int(bad.sum())} non-numeric value(s)); choose numeric columns with --features"
        )
    if skipped:
        notes.append(f"skipped non-numeric column(s) {list_names(skipped)}")
    if not names:
        raise DataError(
            f"no numeric feature columns in {where}"
            + (f" (non-numeric: {list_names(skipped)})" if skipped else "")
            + f"; columns are: {list_names(columns)}"
        )
    X = np.column_stack(arrays).astype(np.float64, copy=False)
    return RawTable(X=X, names=names, labels=labels, label_name=label, source=where, notes=notes)


def _npy_index(key: str, d: int, what: str, where: str) -> int:
    k = key[1:] if key.startswith("x") else key
    try:
        i = int(k)
    except ValueError:
        i = -1
    if not 0 <= i < d:
        raise DataError(
            f"{what} {key!r} not found in {where}; a .npy file has columns x0 ... x{d - 1} (or indices 0 ... {d - 1})"
        )
    return i


def _read_npy(p: Path, where: str, features, label) -> RawTable:
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise DataError(f"cannot read {where}: it holds Python objects (not a numeric array)") from None
        raise DataError(f"cannot read {where} as .npy: {_one_line(e)}") from None
    except Exception as e:
        raise DataError(f"cannot read {where} as .npy: {_one_line(e)}") from None
    if not isinstance(arr, np.ndarray):  # pragma: no cover - .npz is rejected by the extension check
        raise DataError(f"cannot read {where}: not a single array")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{where} holds a {arr.dtype} array; expected numbers (int, float or bool)")
    image_shape = None
    notes: list[str] = []
    if arr.ndim == 0:
        raise DataError(f"{where} holds a single number, expected a 2-D array (rows, columns)")
    if arr.ndim == 1:
        arr = arr[:, None]
        notes.append(f"{where}: 1-D array read as one column")
    elif arr.ndim == 3:
        image_shape = (int(arr.shape[1]), int(arr.shape[2]))
        arr = arr.reshape(arr.shape[0], int(arr.shape[1]) * int(arr.shape[2]))
    elif arr.ndim > 3:
        raise DataError(
            f"{where} holds a {arr.ndim}-D array of shape {tuple(arr.shape)}; expected (N, D) rows or (N, H, W) images"
        )
    n, d = arr.shape
    if n == 0:
        raise DataError(f"{where} has no rows (array of shape {tuple(arr.shape)})")
    if d == 0:
        raise DataError(f"{where} has no columns (array of shape {tuple(arr.shape)})")
    all_names = [f"x{i}" for i in range(d)]
    labels = None
    label_idx = None
    if label is not None:
        if image_shape is not None:
            raise DataError(f"{where} holds images of shape {image_shape}; a label column cannot be taken from it")
        label_idx = _npy_index(label, d, "label column", where)
        labels = _label_strings(arr[:, label_idx].tolist())
        if arr.dtype.kind == "f" and not np.isfinite(arr[:, label_idx]).all():
            bad = ~np.isfinite(arr[:, label_idx])
            raise DataError(
                f"label column {label!r} in {where} has {int(bad.sum())} missing value(s) "
                f"(first at row {int(np.flatnonzero(bad)[0]) + 1})"
            )
    if features is not None:
        idx = [_npy_index(f, d, "feature column", where) for f in features]
        if label_idx is not None and label_idx in idx:
            raise DataError(f"column {label!r} is given both as the label and as a feature")
        if len(set(idx)) != len(idx):
            raise DataError(f"feature columns listed twice in {list(features)}")
        if image_shape is not None and len(idx) != d:
            image_shape = None
    else:
        idx = [i for i in range(d) if i != label_idx]
    if not idx:
        raise DataError(f"no feature columns left in {where} after taking the label column")
    if arr.dtype == np.uint8 and image_shape is not None and features is None:
        X = np.ascontiguousarray(arr)  # keep images compact; converted later
    else:
        X = arr[:, idx].astype(np.float64)
    return RawTable(
        X=X,
        names=[all_names[i] for i in idx],
        labels=labels,
        label_name=None if label is None else all_names[label_idx],
        source=where,
        image_shape=image_shape,
        notes=notes,
    )
