"""Figures for the report, each returned as PNG bytes.

Only :class:`matplotlib.figure.Figure` objects are used (rendered by the Agg canvas), so
pyplot's global state and the user's chosen backend are never touched.
"""

from __future__ import annotations

import io
import math
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .html import bounded
from .load import finite

__all__ = [
    "alarm_png",
    "image_grid_png",
    "curve_styles",
    "robust_limits",
    "roc_curve",
    "roc_figure",
    "roc_png",
    "scatter_limits",
    "scatter_png",
    "score_hist_png",
    "training_figure",
    "training_png",
]

_DPI = 100
_MAX_POINTS = 2000
_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def _label(text: str, limit: int = 40) -> str:
    """Plain text for matplotlib: no mathtext (``$``), bounded length."""
    text = str(text).replace("\n", " ")
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _thin(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if len(steps) > _MAX_POINTS:
        idx = np.linspace(0, len(steps) - 1, _MAX_POINTS).round().astype(int)
        return steps[idx], values[idx]
    return steps, values


def _series(records: Sequence[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(finite(r.get("step")), finite(r.get(key))) for r in records if key in r]
    pts = [(s, v) for s, v in pts if s is not None and v is not None]
    if not pts:
        return np.empty(0), np.empty(0)
    arr = np.asarray(pts, dtype=float)
    return _thin(arr[:, 0], arr[:, 1])


def robust_limits(values: np.ndarray, reach: float = 10.0) -> tuple[float, float] | None:
    """Axis limits that keep spikes from flattening a curve, or None when no cut is needed.

    A spike is a value further from the median than ``reach`` times the spread of the middle
    80 % (10 % to 90 % quantiles); the limits span the other values (padded by 5 %).  A loss
    of about 1 with spikes to 4e4 or 2e9 is cut; an ordinary curve keeps its full range, its
    early transient included."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < 10:
        return None
    med = float(np.median(v))
    q10, q90 = (float(x) for x in np.quantile(v, [0.1, 0.9]))
    spread = max(q90 - q10, 1e-9 * max(abs(med), 1.0))
    inside = v[np.abs(v - med) <= reach * spread]
    if inside.size == v.size or not inside.size:
        return None
    lo, hi = float(inside.min()), float(inside.max())
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.05
    return lo - pad, hi + pad


def _mark_clipped(ax, curves: Sequence[tuple], limits: tuple[float, float]) -> None:
    """Triangles on the axis edge for the points beyond ``limits``, and their count."""
    lo, hi = limits
    above = below = 0
    top = bottom = None
    for _, _, color, x, y in curves:
        up, down = y > hi, y < lo
        if up.any():
            ax.plot(x[up], np.full(int(up.sum()), hi), "^", color=color, ms=4, clip_on=False, zorder=4)
            above += int(up.sum())
            top = max(top if top is not None else -np.inf, float(y[up].max()))
        if down.any():
            ax.plot(x[down], np.full(int(down.sum()), lo), "v", color=color, ms=4, clip_on=False, zorder=4)
            below += int(down.sum())
            bottom = min(bottom if bottom is not None else np.inf, float(y[down].min()))
    parts = ([f"{above} point(s) above, up to {top:.3g}"] if above else []) + (
        [f"{below} point(s) below, down to {bottom:.3g}"] if below else [])
    if parts:
        ax.set_ylim(lo, hi)
        ax.text(0.01, 0.02, "axis cut: " + "; ".join(parts) + " (triangles)", transform=ax.transAxes,
                fontsize=6.5, color="#8a1c1c", va="bottom")


def training_png(records: Sequence[dict], title: str) -> bytes | None:
    """:func:`training_figure` as PNG bytes."""
    fig = training_figure(records, title)
    return None if fig is None else _png(fig)


def training_figure(records: Sequence[dict], title: str) -> Figure | None:
    """Loss terms (left) and noise accuracy (right) against step; retries as dotted lines,
    automatic stabilisation changes as dashed lines; a loss axis cut short of spikes
    (:func:`robust_limits`) marks the points beyond it."""
    loss_keys = [("loss", "total loss", "#444444"), ("data_loss", "data term", _COLORS[0]),
                 ("noise_loss", "noise term", _COLORS[1]), ("val_loss", "validation loss", _COLORS[3])]
    curves = [(k, lab, c, *_series(records, k)) for k, lab, c in loss_keys]
    curves = [c for c in curves if len(c[3])]
    acc = _series(records, "accuracy")
    if not curves and not len(acc[0]):
        return None
    retries, stabilised = ({s for r in records if r.get("event") == kind
                            and (s := finite(r.get("step"))) is not None} for kind in ("retry", "stabilise"))
    fig = _figure(8.0, 3.0)
    ax1, ax2 = fig.subplots(1, 2)
    for key, lab, color, x, y in curves:
        style = dict(marker="o", ms=3) if key == "val_loss" else {}
        ax1.plot(x, y, label=lab, color=color, lw=1.2 if key != "loss" else 0.8, **style)
    limits = robust_limits(np.concatenate([c[4] for c in curves])) if curves else None
    if limits is not None:
        _mark_clipped(ax1, curves, limits)
    ax1.set_title("Loss terms (lower is better)", fontsize=9)
    if len(acc[0]):
        ax2.plot(acc[0], acc[1], color=_COLORS[2], lw=1.2, label="noise accuracy")
        ax2.axhline(0.5, color="#999999", lw=0.8, ls="--", label="chance (50%)")
        ax2.set_ylim(-0.02, 1.02)
        ax2.set_title("Noise accuracy (data vs noise)", fontsize=9)
    else:
        ax2.text(0.5, 0.5, "no noise accuracy\nfor this objective", ha="center", va="center",
                 transform=ax2.transAxes, fontsize=9, color="#666666")
        ax2.set_xticks([])
        ax2.set_yticks([])
    for ax in (ax1, ax2):
        for i, s in enumerate(sorted(retries)):
            ax.axvline(s, color=_COLORS[3], ls=":", lw=1.2, label="retry" if i == 0 else None)
        for i, s in enumerate(sorted(stabilised)):
            ax.axvline(s, color=_COLORS[4], ls="--", lw=1.0, label="stabilisation changed" if i == 0 else None)
        ax.set_xlabel("training step", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax, loc in ((ax1, "upper right"), (ax2, "lower right")):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc=loc)
    fig.suptitle(_label(title, 120), fontsize=10)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.16, top=0.8, wspace=0.22)
    return fig


def roc_curve(normal: Sequence[float], anomaly: Sequence[float]) -> tuple[list, list] | None:
    """ROC (fpr, tpr) of scores where higher means more anomalous; None if a class is empty."""
    neg = np.asarray([v for v in normal if finite(v) is not None], dtype=float)
    pos = np.asarray([v for v in anomaly if finite(v) is not None], dtype=float)
    if not len(neg) or not len(pos):
        return None
    thresholds = np.unique(np.concatenate([neg, pos]))[::-1]
    neg_s, pos_s = np.sort(neg), np.sort(pos)
    fpr = 1.0 - np.searchsorted(neg_s, thresholds, side="left") / len(neg)
    tpr = 1.0 - np.searchsorted(pos_s, thresholds, side="left") / len(pos)
    return [0.0, *fpr.tolist()], [0.0, *tpr.tolist()]


_LINESTYLES = ["-", "--", "-.", ":"]


def curve_styles(n: int) -> list[tuple[str, str]]:
    """(colour, line style) of ``n`` curves, all distinct: the ten colours solid, then
    dashed, dash-dotted and dotted (40 pairs), then again with the lines' own markers."""
    return [(_COLORS[i % len(_COLORS)], _LINESTYLES[(i // len(_COLORS)) % len(_LINESTYLES)]) for i in range(n)]


def roc_figure(curves: Sequence[tuple[str, Sequence[float], Sequence[float], bool]]) -> Figure | None:
    """All ROC curves on one plot, ``curves`` = (label, fpr, tpr, bold); the legend below the
    axes keeps every label whole, and no two curves share colour and line style."""
    usable = []
    for label, fpr, tpr, bold in curves:
        pts = [(finite(a), finite(b)) for a, b in zip(fpr or [], tpr or [])]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            usable.append((label, np.asarray(pts), bold))
    if not usable:
        return None
    labels = ["random guessing"] + [_label(label, 200) for label, _, _ in usable]
    ncol = 2 if max(len(t) for t in labels) <= 48 else 1
    rows = math.ceil(len(labels) / ncol)
    plot_h, legend_h, width = 4.4, 0.25 + 0.16 * rows, 7.0
    fig = _figure(width, plot_h + legend_h)
    height = plot_h + legend_h
    ax = fig.add_axes((0.6 / width, (legend_h + 0.5) / height, 1 - 0.8 / width, (plot_h - 0.65) / height))
    ax.plot([0, 1], [0, 1], color="#aaaaaa", ls="--", lw=0.8, label=labels[0])
    styles = curve_styles(len(usable))
    for i, ((_, pts, bold), (color, ls)) in enumerate(zip(usable, styles)):
        marker = None if i < len(_COLORS) * len(_LINESTYLES) else "o"
        ax.plot(pts[:, 0], pts[:, 1], color=color, ls=ls, lw=3.0 if bold else 1.2, label=labels[i + 1],
                zorder=3 if bold else 2, marker=marker, ms=2, markevery=0.1)
    ax.axhline(0.95, color="#cccccc", lw=0.6, ls=":")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_xlabel("false-alarm rate (share of normal items flagged)", fontsize=9)
    ax.set_ylabel("detection rate (share of anomalies caught)", fontsize=9)
    ax.tick_params(labelsize=8)
    handles, texts = ax.get_legend_handles_labels()
    fig.legend(handles, texts, loc="lower left", bbox_to_anchor=(0.02, 0.005), ncol=ncol, fontsize=7,
               frameon=False, handlelength=3.0)
    return fig


def roc_png(curves: Sequence[tuple[str, Sequence[float], Sequence[float], bool]]) -> bytes | None:
    """:func:`roc_figure` as PNG bytes."""
    fig = roc_figure(curves)
    return None if fig is None else _png(fig)


def alarm_png(curve: dict, threshold: float | None, point: dict | None, title: str) -> bytes | None:
    """Detection rate (left axis, %) and false alarms per 1,000 normal items (right axis,
    symmetric-log scale) against the alarm threshold, with the run's threshold and its
    operating point marked; without labels, alarms per 1,000 items.  ``curve`` is the
    ``alarm_curve`` of evaluation.json; None when it holds nothing to draw."""
    if not isinstance(curve, dict):
        return None
    labelled = isinstance(curve.get("false_alarms_per_1000"), list)
    fa_key = "false_alarms_per_1000" if labelled else "alarms_per_1000"
    pts = [(finite(a), finite(b)) for a, b in zip(curve.get("threshold") or [], curve.get(fa_key) or [])]
    pts = [p for p in pts if p[0] is not None and p[1] is not None]
    if len(pts) < 2:
        return None
    arr = np.asarray(pts)
    det = curve.get("detection_rate") if isinstance(curve.get("detection_rate"), list) else None
    fig = _figure(6.4, 3.6)
    ax = fig.subplots()
    ax2 = ax.twinx()
    fa_label = "false alarms per 1,000 normal items" if labelled else "alarms per 1,000 items"
    ax2.plot(arr[:, 0], arr[:, 1], color=_COLORS[1], lw=1.6, label=fa_label)
    ax2.set_yscale("symlog", linthresh=1.0)
    ax2.set_ylim(0, 1000 * 1.15)
    ax2.set_ylabel(fa_label + " (log scale)", fontsize=8, color=_COLORS[1])
    handles = ax2.get_legend_handles_labels()
    if det is not None:
        dpts = [(finite(a), finite(b)) for a, b in zip(curve.get("threshold") or [], det)]
        dpts = np.asarray([p for p in dpts if p[0] is not None and p[1] is not None])
        if len(dpts):
            ax.plot(dpts[:, 0], 100 * dpts[:, 1], color=_COLORS[0], lw=1.6, label="detection rate (%)")
    ax.set_ylim(-2, 102)
    if det is not None:
        ax.set_ylabel("anomalies detected (%)", fontsize=8, color=_COLORS[0])
    else:
        ax.set_yticks([])
    t = finite(threshold)
    if t is not None:
        ax.axvline(t, color="#444444", ls="--", lw=1.0, label="alarm threshold")
        p = point if isinstance(point, dict) else {}
        fa = finite(p.get("false_alarms_per_1000" if labelled else "alarms_per_1000"))
        if fa is not None:
            ax2.plot([t], [fa], "o", color=_COLORS[1], ms=7, zorder=5)
            ax2.annotate(f"{bounded(fa / 1000, 1000.0, 1) if 0 <= fa <= 1000 else f'{fa:.3g}'} per 1,000", (t, fa), textcoords="offset points", xytext=(6, 6), fontsize=7,
                         color=_COLORS[1])
        d = finite(p.get("detection_rate"))
        if d is not None:
            ax.plot([t], [100 * d], "o", color=_COLORS[0], ms=7, zorder=5)
            ax.annotate(f"{bounded(d, 100.0, 1)} % detected", (t, 100 * d), textcoords="offset points", xytext=(6, -12),
                        fontsize=7, color=_COLORS[0])
    # the threshold in the middle: scores of anomalies can reach far beyond where it matters
    lo, hi = np.percentile(arr[:, 0], [0.5, 99.5])
    if t is not None:
        lo = min(lo, t)
        hi = t + (t - lo) if t > lo else max(hi, t + 1.0)
    pad = 0.03 * (hi - lo) if hi > lo else 1.0
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_xlabel("alarm threshold (anomaly score; an alarm when the score is above it)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax2.tick_params(labelsize=7)
    h1, l1 = ax.get_legend_handles_labels()
    ax.legend(h1 + handles[0], l1 + handles[1], fontsize=7, loc="lower left")
    ax.set_title(_label(title, 70), fontsize=9)
    fig.subplots_adjust(left=0.1, right=0.88, bottom=0.14, top=0.9)
    return _png(fig)


def score_hist_png(normal: Sequence[float], anomaly: Sequence[float], title: str) -> bytes | None:
    """Overlaid histograms of anomaly scores for normal and anomalous test items."""
    neg = np.asarray([v for v in normal if finite(v) is not None], dtype=float)
    pos = np.asarray([v for v in anomaly if finite(v) is not None], dtype=float)
    if not len(neg) and not len(pos):
        return None
    both = np.concatenate([neg, pos])
    lo, hi = np.percentile(both, [0.5, 99.5])
    if not hi > lo:
        lo, hi = both.min() - 0.5, both.max() + 0.5
    bins = np.linspace(lo, hi, 41)
    fig = _figure(5.0, 3.2)
    ax = fig.subplots()
    if len(neg):
        ax.hist(np.clip(neg, lo, hi), bins=bins, density=True, alpha=0.55, color=_COLORS[0],
                label=f"normal (n={len(neg)})")
    if len(pos):
        ax.hist(np.clip(pos, lo, hi), bins=bins, density=True, alpha=0.55, color=_COLORS[3],
                label=f"anomalous (n={len(pos)})")
    ax.set_xlabel("anomaly score (higher = more unusual)", fontsize=8)
    ax.set_ylabel("density", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.set_title(_label(title, 60), fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.15, top=0.9)
    return _png(fig)


def image_grid_png(samples: np.ndarray, shape: Sequence[int], title: str,
                   max_images: int = 36) -> bytes | None:
    """Grid of greyscale images (rows of ``samples`` reshaped to ``shape``); None if impossible."""
    h, w = int(shape[0]), int(shape[1])
    if samples.ndim != 2 or samples.shape[1] != h * w or not len(samples):
        return None
    imgs = np.nan_to_num(samples[:max_images].reshape(-1, h, w), nan=0.0, posinf=0.0, neginf=0.0)
    n = len(imgs)
    cols = min(n, max(1, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    lo, hi = float(imgs.min()), float(imgs.max())
    if 0.0 <= lo and hi <= 1.0:
        lo, hi = 0.0, 1.0
    pad = max(1, h // 8)
    mosaic = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), lo + 0.6 * (hi - lo))
    for i, img in enumerate(imgs):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        mosaic[y:y + h, x:x + w] = img
    fig = _figure(3.2, 3.2 * mosaic.shape[0] / mosaic.shape[1] + 0.35)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.35 / fig.get_figheight()))
    ax.imshow(mosaic, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(_label(title, 40), fontsize=9, y=0.995, va="top")
    return _png(fig)


def scatter_png(samples: np.ndarray, title: str, limits: tuple[float, float, float, float] | None
                ) -> bytes | None:
    """Scatter plot of 2-D samples."""
    if samples.ndim != 2 or samples.shape[1] != 2:
        return None
    pts = samples[np.isfinite(samples).all(axis=1)]
    if not len(pts):
        return None
    fig = _figure(3.6, 3.6)
    ax = fig.subplots()
    ax.scatter(pts[:, 0], pts[:, 1], s=7, alpha=0.6, color=_COLORS[0], linewidths=0)
    if limits is not None:
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[2], limits[3])
    ax.set_title(_label(title, 40), fontsize=9)
    ax.tick_params(labelsize=7)
    fig.subplots_adjust(left=0.14, right=0.96, bottom=0.1, top=0.9)
    return _png(fig)


def scatter_limits(arrays: Sequence[np.ndarray]) -> tuple[float, float, float, float] | None:
    """Shared axis limits (robust percentiles) so scatter plots of several runs compare."""
    pts = [a[np.isfinite(a).all(axis=1)] for a in arrays if a.ndim == 2 and a.shape[1] == 2]
    pts = [p for p in pts if len(p)]
    if not pts:
        return None
    allp = np.concatenate(pts)
    lo = np.percentile(allp, 0.5, axis=0)
    hi = np.percentile(allp, 99.5, axis=0)
    span = np.maximum(hi - lo, 1e-6) * 0.08
    return (float(lo[0] - span[0]), float(hi[0] + span[0]), float(lo[1] - span[1]),
            float(hi[1] + span[1]))
