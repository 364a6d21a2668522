"""Pictures for image data, where people look rather than read: the test images the model
finds most and least anomalous, the anomalies it missed and the false alarms it raised at
the run's alarm threshold, each beside its per-pixel anomaly map (:mod:`fvnce.maps`)
overlaid as a heat map; and, for colour images, samples from the model.

Where the figures come from.  Scores and threshold are read from the run folder:
``evaluation.json`` keeps the test scores of the normal and of the anomalous rows, each in
test order, and the alarm threshold in the units of ``fvnce score`` (for an unnormalised
model the score less the estimated ``log Z``, which the file also keeps).  The images and
their maps need the data and the model: the run is rebuilt from its folder
(:func:`fvnce.runs.loading.load_run`, nothing is trained), its data read again with its
stored settings (:func:`fvnce.data.load_dataset`; the split is fixed by its seed), and
the maps of the images shown, a few dozen at most, computed when the report is built,
``MAP_K`` draws of ``q(z | x)`` each under a fixed seed.  So a report can be rebuilt with
other choices without evaluating again, at the price of needing the data where the run
found it; when the model or the data cannot be read again (a moved folder, a damaged
run), the section says so and the rest of the report stands.

Non-image data have no such section.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .html import DASH, esc, img
from .load import RunFiles, finite

__all__ = ["MAP_K", "Pictures", "collect", "image_chw", "map_png", "map_scale", "pictures_section",
           "poc_pictures", "run_pictures", "samples_shape", "test_alarm_scores"]

#: draws of q(z | x) per map in the report (``fvnce score --maps`` uses MAPS_K of runs/scoring.py)
MAP_K = 8
#: how many of the most and of the least anomalous test images are shown
N_EXTREME = 6
#: at most this many missed anomalies and false alarms are shown (all are counted)
N_LISTED = 8
#: seed offset of the maps' draws (the run's seed + this): evaluation uses + 1, scoring + 2, sampling + 3
MAP_SEED_OFFSET = 4
#: display size of one image panel, inches (100 dpi)
_PANEL_IN = 0.8
_CAPTION_IN = 0.36
_DPI = 100
_ITEMS_PER_ROW = 6
_HEAT = "YlOrRd"


def _d(obj: Any) -> dict:
    return obj if isinstance(obj, dict) else {}


def image_chw(shape: Any) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of an image shape given as ``(H, W)`` or ``(C, H, W)`` (positive
    integers, C 1 or 3); None for anything else (non-image data)."""
    if not isinstance(shape, (list, tuple)) or len(shape) not in (2, 3):
        return None
    vals = [finite(v) for v in shape]
    if any(v is None or v < 1 or v != int(v) for v in vals):
        return None
    c, h, w = (1, *vals) if len(vals) == 2 else vals
    return (int(c), int(h), int(w)) if int(c) in (1, 3) else None


def samples_shape(shape: Any) -> Any:
    """The shape the samples section draws a grid of: ``(H, W)`` for a one-channel
    ``(1, H, W)`` (image folders, ELPV), else ``shape`` as it is."""
    chw = image_chw(shape)
    if chw is not None and len(shape) == 3 and chw[0] == 1:
        return [chw[1], chw[2]]
    return shape


def test_alarm_scores(evaluation: dict, labels: np.ndarray) -> np.ndarray:
    """The test rows' anomaly scores in the units of the alarm threshold (those of
    ``fvnce score``), in test order, from ``evaluation.json``: its ``scores`` hold the
    normal and the anomalous rows' scores (each in test order) with ``log Z`` in them; for
    an unnormalised model (``log_likelihood_kind == "estimate"``) the stored ``log Z`` is
    taken off, in the precision the evaluation did it in (float32 when every stored score
    is a float32 value), so that the alarms are the evaluation's.  ``labels``: 1/True =
    anomaly.  ValueError when the counts do not match."""
    y = np.asarray(labels).astype(bool).reshape(-1)
    sc = _d(evaluation.get("scores"))
    normal = np.asarray(sc.get("normal") or [], dtype=np.float64)
    anomaly = np.asarray(sc.get("anomaly") or [], dtype=np.float64)
    if len(normal) != int((~y).sum()) or len(anomaly) != int(y.sum()):
        raise ValueError(f"evaluation.json has {len(normal)} normal and {len(anomaly)} anomalous test scores, but the "
                         f"data read again have {int((~y).sum())} normal and {int(y.sum())} anomalous test images")
    s = np.empty(len(y), dtype=np.float64)
    s[~y], s[y] = normal, anomaly
    log_z = finite(_d(evaluation.get("log_z")).get("log_z"))
    if evaluation.get("log_likelihood_kind") == "estimate" and log_z is not None:
        if np.array_equal(s.astype(np.float32).astype(np.float64), s):
            s = (s.astype(np.float32) - np.float32(log_z)).astype(np.float64)
        else:
            s = s - log_z
    return s


@dataclass
class Group:
    key: str
    title: str
    rows: list[int]  # test rows shown, in the order shown
    sentence: str = ""


@dataclass
class Pictures:
    """What the section shows, for one run (see :func:`collect`)."""

    image_shape: tuple[int, int, int]
    scores: np.ndarray  # alarm units, test order
    labels: np.ndarray | None  # bool, test order
    paths: list[str]
    kinds: list[str] | None
    threshold: float | None
    groups: list[Group]
    images: dict[int, np.ndarray]  # test row -> (C, H, W) in [0, 1]
    maps: dict[int, np.ndarray] | None  # test row -> (H, W), nats
    n_normal: int = 0
    n_anomaly: int = 0
    missed: list[int] = field(default_factory=list)  # every missed anomaly, most hidden first
    false_alarms: list[int] = field(default_factory=list)  # every false alarm, highest score first
    map_note: str | None = None
    k: int = MAP_K
    seconds: float = 0.0


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def collect(run_dir: str | Path, evaluation: dict | None = None, *, k: int = MAP_K, n_extreme: int = N_EXTREME,
            n_listed: int = N_LISTED, dataset=None) -> Pictures:
    """The pictures of the run in ``run_dir`` (module docstring): scores and threshold from
    ``evaluation`` (default: its ``evaluation.json``), images from its data read again, maps
    of the images shown from its model, ``k`` draws each.  The most anomalous ``n_extreme``
    test images (highest score first), the least anomalous (lowest first); every missed
    anomaly (score at or below the threshold) and every false alarm (a normal image above
    it), of which the ``n_listed`` most hidden anomalies (lowest scores) and most alarming
    normal images (highest) are shown.  Raises (any exception) when the run or its data
    cannot be used; a model without per-pixel terms gives ``maps = None`` and a note."""
    import json

    import torch

    from ..data import load_dataset
    from ..errors import FvnceError
    from ..maps import pixel_anomaly_maps
    from ..runs.loading import load_run as load_model_run

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    if evaluation is None:
        evaluation = json.loads((run_dir / "evaluation.json").read_text(encoding="utf-8"))
    run = load_model_run(run_dir, dataset=dataset)
    shape = image_chw(run.image_shape)
    if shape is None:
        raise ValueError("the run's data are not images")
    if dataset is None:
        dataset = load_dataset(run.config.data)
    x = dataset.test
    n = len(x)
    paths = list(dataset.test_paths) if dataset.test_paths is not None else [f"test image {i}" for i in range(n)]
    kinds = list(dataset.test_kinds) if dataset.test_kinds is not None else None
    labels = None if dataset.test_labels is None else dataset.test_labels.numpy().astype(bool)
    if labels is None:
        raise ValueError("the test images have no labels, so evaluation.json keeps no test scores")
    if not evaluation.get("scores"):
        raise ValueError("evaluation.json keeps no test scores (the run was evaluated on another file, or without "
                         "labels)")
    scores = test_alarm_scores(evaluation, labels)
    threshold = finite(_d(evaluation.get("alarm")).get("threshold"))
    order = np.argsort(-scores, kind="stable")
    groups = [Group("most", "The most anomalous test images", [int(i) for i in order[:n_extreme]]),
              Group("least", "The least anomalous test images", [int(i) for i in order[::-1][:n_extreme]])]
    n_normal, n_anomaly = int((~labels).sum()), int(labels.sum())
    missed, false_alarms = [], []
    if threshold is not None:
        alarm = scores > threshold
        missed = [int(i) for i in order[::-1] if labels[i] and not alarm[i]]
        false_alarms = [int(i) for i in order if not labels[i] and alarm[i]]
        groups.append(Group("missed", "Missed anomalies", missed[:n_listed],
                            f"{len(missed):,} of {_count(n_anomaly, 'anomaly', 'anomalies')} missed"))
        groups.append(Group("false-alarms", "False alarms", false_alarms[:n_listed],
                            f"{len(false_alarms):,} of {_count(n_normal, 'normal image', 'normal images')} raised a "
                            "false alarm"))
    rows = sorted({i for g in groups for i in g.rows})
    c, h, w = shape
    images = {i: np.clip(x[i].double().numpy().reshape(c, h, w), 0.0, 1.0) for i in rows}
    maps, note = None, None
    if rows:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(run.config.train.seed + MAP_SEED_OFFSET)
            try:
                m = pixel_anomaly_maps(run.model, run.encoder, x[rows], shape, k=k)
                maps = {i: m[j].double().numpy() for j, i in enumerate(rows)}
            except FvnceError as exc:
                note = f"No per-pixel maps: {exc}"
    return Pictures(image_shape=shape, scores=scores, labels=labels, paths=paths, kinds=kinds, threshold=threshold,
                    groups=groups, images=images, maps=maps, n_normal=n_normal, n_anomaly=n_anomaly, missed=missed,
                    false_alarms=false_alarms, map_note=note, k=k, seconds=time.perf_counter() - t0)


# --------------------------------------------------------------------------- drawing


def map_scale(maps: Sequence[np.ndarray]) -> tuple[float, float]:
    """The heat scale shared by the maps shown together: from the median pixel (no colour)
    to the 99.5th percentile (full colour), in nats per pixel."""
    vals = np.concatenate([np.asarray(m, dtype=np.float64).reshape(-1) for m in maps]) if maps else np.zeros(1)
    vals = vals[np.isfinite(vals)]
    if not vals.size:
        return 0.0, 1.0
    lo, hi = float(np.median(vals)), float(np.percentile(vals, 99.5))
    if not hi > lo:
        hi = lo + 1.0
    return lo, hi


def _rgb(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) in [0, 1] of a (C, H, W) image."""
    a = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float64)), 0.0, 1.0)
    return np.repeat(a[0][:, :, None], 3, axis=2) if a.shape[0] == 1 else a.transpose(1, 2, 0)[:, :, :3]


def _heat(m: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Colour (H, W, 3) and strength (H, W) in [0, 1] of a map on the scale lo..hi."""
    from matplotlib import colormaps

    t = np.clip((np.nan_to_num(np.asarray(m, dtype=np.float64), nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return colormaps[_HEAT](t)[..., :3], t


def overlay(image: np.ndarray, m: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The image (C, H, W) in gray (a colour image by its mean over the channels, so that
    its own colours do not hide the heat) with its map laid over it: no colour where the
    map is at or below ``lo``, the heat colour at 75 % opacity at ``hi`` and above."""
    base = _rgb(np.asarray(image, dtype=np.float64).mean(0, keepdims=True))
    colour, t = _heat(m, lo, hi)
    a = 0.75 * t[:, :, None]
    return (1.0 - a) * base + a * colour


def map_png(m: np.ndarray, lo: float, hi: float, text: dict[str, str] | None = None) -> bytes:
    """The map (H, W) as an H x W colour PNG on the scale lo..hi (the heat colours;
    white at or below ``lo``), with ``text`` as PNG text chunks."""
    from PIL import Image, PngImagePlugin

    colour, t = _heat(m, lo, hi)
    rgb = (1.0 - t[:, :, None]) * 1.0 + t[:, :, None] * colour
    arr = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def _short(text: str, limit: int = 22) -> str:
    text = str(text).replace("\n", " ").replace("$", r"\$")
    return text if len(text) <= limit else "…" + text[-(limit - 1):]


def _mosaic_png(items: list[tuple[list[np.ndarray], list[str], bool]], h: int, w: int) -> bytes:
    """One PNG of ``items`` = (panels (H, W, 3) side by side, caption lines, alarm), at
    most ``_ITEMS_PER_ROW`` to a row, each caption under its item (red for an alarm)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    per = max(len(p) for p, _, _ in items)
    size = max(h, w)
    inch = _PANEL_IN / size  # inches per image pixel
    g_in, g_out = max(1, size // 16), max(2, size // 4)
    cap = int(math.ceil(_CAPTION_IN / inch)) if any(lines for _, lines, _ in items) else g_out
    cols = min(len(items), _ITEMS_PER_ROW)
    rows = math.ceil(len(items) / cols)
    item_w = per * w + (per - 1) * g_in
    width, height = cols * item_w + (cols - 1) * g_out, rows * (h + cap)
    mosaic = np.ones((height, width, 3))
    for n, (panels, _, _) in enumerate(items):
        r, q = divmod(n, cols)
        y0, x0 = r * (h + cap), q * (item_w + g_out)
        for j, p in enumerate(panels):
            xs = x0 + j * (w + g_in)
            mosaic[y0:y0 + h, xs:xs + w] = p
    fig = Figure(figsize=(width * inch, height * inch), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest", extent=(0, width, height, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    for n, (_, lines, alarm) in enumerate(items):
        r, q = divmod(n, cols)
        ax.text(q * (item_w + g_out) + item_w / 2, r * (h + cap) + h + cap * 0.06, "\n".join(lines), ha="center",
                va="top", fontsize=6.5, color="#b00020" if alarm else "#1d2430", linespacing=1.15)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _caption(p: Pictures, i: int) -> list[str]:
    name = Path(str(p.paths[i])).name
    kind = p.kinds[i] if p.kinds is not None else ("anomaly" if p.labels is not None and p.labels[i] else "normal")
    return [f"{_short(kind, 14)} · score {p.scores[i]:.4g}", _short(name)]


def _group_png(p: Pictures, g: Group, scale: tuple[float, float]) -> bytes | None:
    if not g.rows:
        return None
    c, h, w = p.image_shape
    items = []
    for i in g.rows:
        panels = [_rgb(p.images[i])]
        if p.maps is not None:
            panels.append(overlay(p.images[i], p.maps[i], *scale))
        alarm = p.threshold is not None and p.scores[i] > p.threshold
        items.append((panels, _caption(p, i), alarm))
    return _mosaic_png(items, h, w)


def _samples_png(samples: np.ndarray, shape: tuple[int, int, int], max_images: int = 16) -> bytes | None:
    c, h, w = shape
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != c * h * w or not len(s):
        return None
    panels = [_rgb(r.reshape(c, h, w)) for r in s[:max_images]]
    return _mosaic_png([([pnl], [], False) for pnl in panels], h, w)


def _fmt(v: Any) -> str:
    x = finite(v)
    return DASH if x is None else f"{x:.4g}"


def pictures_section(run_dir: Path, evaluation: dict | None, image_shape: Any, who: str,
                     samples: Sequence[tuple[str, np.ndarray | None]] = ()) -> str:
    """The section (HTML) for the run in ``run_dir`` (``who`` names it in the text); empty
    for non-image data.  ``samples``: (name, samples.npy rows) drawn here for colour
    images (the samples section draws one-channel images)."""
    shape = image_chw(image_shape)
    if shape is None:
        return ""
    explain = (f"Test images of {esc(who)}, as the model sees them (left), and where in each the model finds it "
               "unlikely (right): each pixel's share of its anomaly score, &minus;log p(pixel | z) under the "
               f"decoder averaged over {MAP_K} draws of the encoder's q(z | x), laid over the image as a heat map "
               "(for an energy-tilted model, its base decoder's: the tilt is one number per image). Scores are those "
               "of <code>fvnce score</code>: higher is more anomalous; red captions raised an alarm.")
    try:
        p = collect(run_dir, evaluation)
    except Exception as exc:  # noqa: BLE001 - a report never fails for want of pictures
        text = " ".join(str(exc).split()) or type(exc).__name__
        body = (f'<p class="note">The pictures need the run&rsquo;s model and its data read again; they could not be '
                f"made: {esc(text[:300])}.</p>")
        return _wrap(explain, body + _samples_html(samples, shape))
    scale = map_scale([p.maps[i] for i in p.images]) if p.maps else None
    parts = []
    if p.threshold is not None:
        missed, fa = p.groups[2], p.groups[3]
        parts.append(f'<p class="verdict"><b>{esc(missed.sentence)}</b>; <b>{esc(fa.sentence)}</b>, at the alarm '
                     f"threshold {esc(_fmt(p.threshold))}.</p>")
    else:
        parts.append('<p class="note">The run has no alarm threshold: missed anomalies and false alarms are not '
                     "shown.</p>")
    for g in p.groups:
        png = _group_png(p, g, scale or (0.0, 1.0))
        head = g.title + (f" ({g.sentence})" if g.sentence else "")
        if png is None:
            parts.append(f'<h3>{esc(head)}</h3><p class="small">None.</p>')
            continue
        more = len(p.missed if g.key == "missed" else p.false_alarms) - len(g.rows) if g.key in (
            "missed", "false-alarms") else 0
        listing = "; ".join(f"{esc(p.paths[i])} ({esc(_fmt(p.scores[i]))})" for i in g.rows)
        parts.append(f'<h3>{esc(head)}</h3><figure class="pictures" data-group="{esc(g.key)}">'
                     f"{img(png, g.title)}<figcaption class=\"small\">{listing}"
                     + (f"; and {more:,} more" if more > 0 else "") + "</figcaption></figure>")
    if p.map_note:
        parts.append(f'<p class="note">{esc(p.map_note)}</p>')
    elif scale is not None:
        parts.append(f'<p class="small">Heat scale, shared by every map above: no colour at {esc(_fmt(scale[0]))} '
                     f"nats per pixel (the median pixel shown) and below, full colour at {esc(_fmt(scale[1]))} and "
                     f"above. Made in {p.seconds:.1f} s when this report was built.</p>")
    return _wrap(explain, "".join(parts) + _samples_html(samples, shape))


def _samples_html(samples: Sequence[tuple[str, np.ndarray | None]], shape: tuple[int, int, int]) -> str:
    if shape[0] == 1:
        return ""
    figs = []
    for name, s in samples:
        png = None if s is None else _samples_png(s, shape)
        if png is not None:
            figs.append(f"<figure>{img(png, f'Samples of {name}')}<figcaption class=\"small\">Samples of "
                        f"{esc(name)}</figcaption></figure>")
    return ("<h3>Samples from the model</h3>" + f'<div class="grid">{"".join(figs)}</div>') if figs else ""


def _wrap(explain: str, body: str) -> str:
    return (f'<section id="pictures"><h2>{esc("Pictures: what the model flags")}</h2>'
            f'<p class="explain">{explain}</p>{body}</section>')


def run_pictures(run: RunFiles) -> str:
    """The section of a run report (empty for non-image data or without evaluation)."""
    cfg = _d(run.config)
    if image_chw(cfg.get("image_shape")) is None or run.evaluation is None:
        return ""
    return pictures_section(run.path, run.evaluation, cfg.get("image_shape"), "this run",
                            [(run.path.resolve().name, run.samples)])


def poc_pictures(summary: dict, runs: list[dict], files: dict[str, RunFiles], vae: dict | None) -> str:
    """The section of a poc report, for its recommended run (not for a union of runs; the
    VAE's samples beside the recommended run's for colour images)."""
    shape = _d(summary.get("data")).get("image_shape")
    rec = _d(summary.get("recommended"))
    name = rec.get("run")
    if image_chw(shape) is None or rec.get("union") or name is None:
        return ""
    run = files.get(name)
    if run is None or run.evaluation is None:
        return ""
    samples = [(str(name), run.samples)]
    if vae is not None and vae.get("name") != name and files.get(vae.get("name")) is not None:
        samples.append((str(vae.get("name")), files[vae.get("name")].samples))
    return pictures_section(run.path, run.evaluation, shape, f"the recommended model ({name})", samples)
