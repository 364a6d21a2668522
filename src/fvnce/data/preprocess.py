"""Preprocessing fitted on training rows only, stored as plain (JSON-able) data.

Chain, per column: missing values (error / impute with the training median) -> divide by
``scale`` (255 or 16 for images, else 1) -> either binarise (``value > threshold``; image
sets) or, for continuous data, an optional Yeo-Johnson power transform (lambdas fitted by
scikit-learn's ``PowerTransformer``; the forward map is re-implemented in numpy, equal to
scikit-learn's) followed by standardisation. Under ``transform="auto"`` a column gets
Yeo-Johnson when the training rows are skewed (|skewness| > 1) or heavy-tailed (excess
kurtosis > 3); the reason is recorded per column.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from fvnce.errors import CheckpointError, DataError

__all__ = [
    "Preprocessor",
    "yeo_johnson",
    "fit_yeo_johnson_lambda",
    "SKEW_THRESHOLD",
    "KURTOSIS_THRESHOLD",
    "CLIP",
]

SKEW_THRESHOLD = 1.0
KURTOSIS_THRESHOLD = 3.0  # excess kurtosis (0 for a Gaussian)
CLIP = 1e6  # prepared continuous values are clipped to [-CLIP, CLIP] (keeps float32 finite)
_FORMAT = "fvnce.preprocessor/1"


def yeo_johnson(x: np.ndarray, lmbda: float) -> np.ndarray:
    """Yeo-Johnson transform of ``x`` with parameter ``lmbda``, as scipy/scikit-learn compute it."""
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    pos = x >= 0
    eps = np.finfo(np.float64).eps
    with np.errstate(over="ignore", invalid="ignore"):
        if abs(lmbda) < eps:
            out[pos] = np.log1p(x[pos])
        else:
            out[pos] = np.expm1(lmbda * np.log1p(x[pos])) / lmbda
        if abs(lmbda - 2) > eps:
            out[~pos] = -np.expm1((2 - lmbda) * np.log1p(-x[~pos])) / (2 - lmbda)
        else:
            out[~pos] = -np.log1p(-x[~pos])
    return out


def fit_yeo_johnson_lambda(x: np.ndarray) -> float:
    """Maximum-likelihood lambda of one column, via ``sklearn.preprocessing.PowerTransformer``."""
    from sklearn.preprocessing import PowerTransformer

    pt = PowerTransformer(method="yeo-johnson", standardize=False)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        pt.fit(np.asarray(x, dtype=np.float64).reshape(-1, 1))
    return float(pt.lambdas_[0])


def _fit_lambdas(X: np.ndarray) -> list[float | None]:
    """Lambdas of several columns in one PowerTransformer fit; per column on failure."""
    from sklearn.preprocessing import PowerTransformer

    pt = PowerTransformer(method="yeo-johnson", standardize=False)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            pt.fit(X)
        return [float(v) for v in pt.lambdas_]
    except Exception:  # optimiser failure on a pathological column: isolate it
        out: list[float | None] = []
        for j in range(X.shape[1]):
            try:
                out.append(fit_yeo_johnson_lambda(X[:, j]))
            except Exception:
                out.append(None)
        return out


def _moments(x: np.ndarray) -> tuple[float, float]:
    """Sample skewness and excess kurtosis (biased, as scipy.stats defaults)."""
    with np.errstate(all="ignore"):
        m = x.mean()
        d = x - m
        m2 = np.mean(d * d)
        if not np.isfinite(m2) or m2 <= 0:
            return float("nan"), float("nan")
        s = np.sqrt(m2)
        z = d / s
        skew = float(np.mean(z**3))
        kurt = float(np.mean(z**4) - 3.0)
    return skew, kurt


def nonfinite_message(X: np.ndarray, names: list[str], where: str, advice: str) -> str:
    parts = []
    for j in np.flatnonzero(~np.isfinite(X).all(axis=0)):
        col = X[:, j]
        n_nan = int(np.isnan(col).sum())
        n_inf = int(np.isinf(col).sum())
        first = int(np.flatnonzero(~np.isfinite(col))[0]) + 1
        kinds = ", ".join(k for k in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if k)
        parts.append(f"{names[j]!r} ({kinds}, first at row {first})")
    shown = "; ".join(parts[:10]) + (f"; ... ({len(parts)} columns in all)" if len(parts) > 10 else "")
    n_rows = int((~np.isfinite(X).all(axis=1)).sum())
    return f"missing or non-finite values in {where}: {n_rows} row(s) affected, column(s) {shown}; {advice}"


MISSING_ADVICE = "use missing='drop' or missing='impute' (CLI: --drop-missing / --impute)"


class Preprocessor:
    """Fitted preprocessing; build with :meth:`fit`, save with :meth:`state`, restore with :meth:`from_state`."""

    def __init__(self, state: dict[str, Any]):
        self._state = self._validate(state)
        s = self._state
        self.feature_names: list[str] = list(s["feature_names"])
        self.image_shape = None if s["image_shape"] is None else tuple(int(v) for v in s["image_shape"])
        self.label: str | None = s["label"]
        self.scale = float(s["scale"])
        self.binary = bool(s["binary"])
        self.threshold = None if s["binarize_threshold"] is None else float(s["binarize_threshold"])
        self.missing: str = s["missing"]
        self.transform_name: str = s["transform"]
        self._impute = None if s["impute_values"] is None else np.asarray(s["impute_values"], dtype=np.float64)
        self._yj = np.asarray(s["yeo_johnson"], dtype=bool)
        self._lambdas = [None if v is None else float(v) for v in s["lambdas"]]
        self._mean = None if s["mean"] is None else np.asarray(s["mean"], dtype=np.float64)
        self._std = None if s["std"] is None else np.asarray(s["std"], dtype=np.float64)
        self.reasons: list[str] = list(s["reasons"])
        self.notes: list[str] = list(s["notes"])
        #: how image files were read (fvnce.data.images): mode, channels, size, resize, intensity
        self.image: dict | None = s.get("image")

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(
        cls,
        X: np.ndarray,
        feature_names: list[str],
        *,
        transform: str = "auto",
        missing: str = "error",
        scale: float = 1.0,
        binarize: bool = False,
        threshold: float = 0.5,
        image_shape: tuple[int, ...] | None = None,
        label: str | None = None,
        where: str = "the training rows",
        image: dict | None = None,
    ) -> Preprocessor:
        """Fit on the training rows ``X`` (raw values, (N, D)); ``image`` records how image
        files were read (kept in the state, for scoring new image files alike)."""
        X = np.asarray(X)
        names = [str(n) for n in feature_names]
        if X.ndim != 2 or X.shape[1] != len(names):
            raise DataError(f"preprocessing: expected {len(names)} columns, got array of shape {X.shape}")
        if X.shape[0] == 0:
            raise DataError(f"preprocessing: no training rows in {where}")
        d = len(names)
        notes: list[str] = []
        Xf = X if (binarize and X.dtype.kind in "biu") else X.astype(np.float64)
        finite = np.isfinite(Xf)
        impute = None
        if not finite.all():
            if missing != "impute":
                raise DataError(nonfinite_message(Xf, names, where, MISSING_ADVICE))
            empty = [names[j] for j in range(d) if not finite[:, j].any()]
            if empty:
                raise DataError(f"column(s) {empty[:10]} have no finite values in {where}; cannot impute a median")
        if missing == "impute" or not binarize:  # medians kept so scoring can impute
            if finite.all():
                impute = np.median(Xf, axis=0).astype(np.float64)
            else:
                impute = np.empty(d)
                for j in range(d):
                    col = Xf[finite[:, j], j]
                    impute[j] = float(np.median(col))
            n_imp = int((~finite).sum())
        if missing == "impute":
            if n_imp:
                notes.append(f"imputed {n_imp} missing value(s) in the training rows with the training median")
            Xf = np.where(finite, Xf, impute[None, :])

        yj = [False] * d
        lambdas: list[float | None] = [None] * d
        reasons = [""] * d
        mean = std = None
        if binarize:
            reasons = [f"binarised: value > {threshold:g}"] * d
        else:
            Xf = Xf / float(scale)
            with np.errstate(all="ignore"):
                mu = Xf.mean(axis=0)
                ptp = Xf.max(axis=0) - Xf.min(axis=0)
            if not np.isfinite(mu).all() or not np.isfinite(ptp).all():
                bad = [names[j] for j in range(d) if not (np.isfinite(mu[j]) and np.isfinite(ptp[j]))]
                raise DataError(f"column(s) {bad[:10]} in {where} have values too large to use (overflow)")
            constant = [j for j in range(d) if ptp[j] == 0]
            constant_set = set(constant)
            for j in constant:
                reasons[j] = f"constant (value {Xf[0, j]:g}): kept, std floored to 1"
            if constant:
                cn = [names[j] for j in constant]
                shown = ", ".join(repr(c) for c in cn[:10]) + (f", ... ({len(cn)} in all)" if len(cn) > 10 else "")
                notes.append(f"column(s) {shown} constant on the training rows: kept, std floored to 1")
            candidates: list[tuple[int, str, str]] = []
            for j in range(d):
                if j in constant_set or transform in ("none", "standardize"):
                    if not reasons[j]:
                        reasons[j] = "no power transform (transform=" + transform + ")"
                    continue
                col = Xf[:, j]
                skew, kurt = _moments(col)
                stats = f"skewness {skew:.2f}, excess kurtosis {kurt:.2f}"
                if transform == "auto":
                    n_distinct = len(np.unique(col[: min(len(col), 100000)]))
                    if n_distinct < 3:
                        reasons[j] = f"only {n_distinct} distinct values: no power transform"
                        continue
                    if abs(skew) > SKEW_THRESHOLD:
                        why = f"Yeo-Johnson: |skewness| = {abs(skew):.2f} > {SKEW_THRESHOLD:g}"
                    elif kurt > KURTOSIS_THRESHOLD:
                        why = f"Yeo-Johnson: heavy tails, excess kurtosis {kurt:.2f} > {KURTOSIS_THRESHOLD:g}"
                    else:
                        reasons[j] = f"{stats}: no power transform"
                        continue
                else:
                    why = f"Yeo-Johnson (transform=yeo-johnson; {stats})"
                candidates.append((j, why, stats))
            fitted = _fit_lambdas(Xf[:, [j for j, _, _ in candidates]]) if candidates else []
            for (j, why, stats), lam in zip(candidates, fitted):
                ok = lam is not None and math.isfinite(lam) and bool(np.isfinite(yeo_johnson(Xf[:, j], lam)).all())
                if not ok:
                    reasons[j] = f"{stats}: Yeo-Johnson fit failed, left as is"
                    continue
                yj[j], lambdas[j] = True, float(lam)
                reasons[j] = f"{why}, lambda {lam:.3f}"
            Xt = Xf.copy()
            for j in range(d):
                if yj[j]:
                    Xt[:, j] = yeo_johnson(Xt[:, j], lambdas[j])
            if transform == "none":
                mean, std = None, None
            else:
                with np.errstate(all="ignore"):
                    mean = Xt.mean(axis=0)
                    std = Xt.std(axis=0)
                if not (np.isfinite(mean).all() and np.isfinite(std).all()):
                    bad = [names[j] for j in range(d) if not (np.isfinite(mean[j]) and np.isfinite(std[j]))]
                    raise DataError(f"column(s) {bad[:10]} in {where} have values too large to use (overflow)")
                tiny = std <= 1e-12 * np.maximum(1.0, np.abs(mean))
                std = np.where(tiny, 1.0, std)
                mean, std = mean.tolist(), std.tolist()
            n_yj = sum(yj)
            if transform == "auto" and n_yj:
                notes.append(f"Yeo-Johnson applied to {n_yj} of {d} column(s) judged skewed or heavy-tailed")
        state = {
            "format": _FORMAT,
            "feature_names": names,
            "image_shape": None if image_shape is None else [int(v) for v in image_shape],
            "label": label,
            "scale": float(scale),
            "binary": bool(binarize),
            "binarize_threshold": float(threshold) if binarize else None,
            "missing": missing,
            "impute_values": None if impute is None else [float(v) for v in impute],
            "transform": "none" if binarize else transform,
            "yeo_johnson": yj,
            "lambdas": lambdas,
            "reasons": reasons,
            "mean": mean,
            "std": std,
            "notes": notes,
        }
        if image is not None:
            state["image"] = dict(image)
        return cls(state)

    # ------------------------------------------------------------------ applying
    def transform(self, X: np.ndarray, *, where: str = "the data", missing: str | None = None) -> np.ndarray:
        """Apply the fitted chain to raw rows (N, D); returns float32 (N, D), row order kept.

        ``missing`` overrides the recorded mode: "impute" fills non-finite values with
        the training medians (always recorded for continuous data); anything else raises
        DataError on non-finite values (rows are never dropped here, to keep row order).
        """
        X = np.asarray(X)
        d = len(self.feature_names)
        if X.ndim != 2 or X.shape[1] != d:
            raise DataError(f"{where}: expected {d} columns, got array of shape {tuple(X.shape)}")
        if X.dtype.kind not in "biuf":
            raise DataError(f"{where}: expected numbers, got {X.dtype} values")
        mode = self.missing if missing is None else missing
        if X.dtype.kind == "f" and not np.isfinite(X).all():
            if mode != "impute" or self._impute is None:
                advice = (
                    "impute them (missing='impute', CLI --impute); rows are not dropped when scoring"
                    if self._impute is not None
                    else MISSING_ADVICE
                )
                raise DataError(nonfinite_message(X.astype(np.float64), self.feature_names, where, advice))
            X = np.where(np.isfinite(X), X, self._impute[None, :])
        if self.binary:
            return (X > self.threshold * self.scale).astype(np.float32)
        Xf = X.astype(np.float64) / self.scale
        for j in np.flatnonzero(self._yj):
            Xf[:, j] = yeo_johnson(Xf[:, j], self._lambdas[j])
        if self._mean is not None:
            with np.errstate(all="ignore"):
                Xf = (Xf - self._mean) / self._std
        Xf = np.nan_to_num(Xf, nan=0.0, posinf=CLIP, neginf=-CLIP)
        return np.clip(Xf, -CLIP, CLIP).astype(np.float32)

    __call__ = transform

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Plain data (lists, floats, str, bool, None): JSON-able."""
        import copy

        return copy.deepcopy(self._state)

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Preprocessor:
        return cls(state)

    @property
    def yeo_johnson_columns(self) -> list[str]:
        return [n for n, f in zip(self.feature_names, self._yj) if f]

    @property
    def lambdas(self) -> dict[str, float]:
        return {n: lam for n, lam, f in zip(self.feature_names, self._lambdas, self._yj) if f}

    @property
    def mean(self) -> np.ndarray | None:
        return None if self._mean is None else self._mean.copy()

    @property
    def std(self) -> np.ndarray | None:
        return None if self._std is None else self._std.copy()

    def describe(self) -> list[str]:
        """One line per column: the decision and why (for reports)."""
        return [f"{n}: {r}" for n, r in zip(self.feature_names, self.reasons)]

    def __repr__(self) -> str:
        kind = "binary" if self.binary else self.transform_name
        return f"Preprocessor({len(self.feature_names)} columns, {kind}, {sum(self._yj)} Yeo-Johnson)"

    @staticmethod
    def _validate(state: Any) -> dict[str, Any]:
        keys = (
            "feature_names image_shape label scale binary binarize_threshold missing impute_values "
            "transform yeo_johnson lambdas reasons mean std notes"
        ).split()
        if not isinstance(state, dict):
            raise CheckpointError(f"preprocessor state: expected a mapping, got {type(state).__name__}")
        if state.get("format") != _FORMAT:
            raise CheckpointError(f"preprocessor state: unknown format {state.get('format')!r} (expected {_FORMAT!r})")
        missing = [k for k in keys if k not in state]
        if missing:
            raise CheckpointError(f"preprocessor state: missing key(s) {', '.join(missing)}")
        d = len(state["feature_names"])
        for k in ("yeo_johnson", "lambdas", "reasons") + tuple(
            k for k in ("mean", "std", "impute_values") if state[k] is not None
        ):
            if len(state[k]) != d:
                raise CheckpointError(f"preprocessor state: {k} has {len(state[k])} entries for {d} features")
        return state
