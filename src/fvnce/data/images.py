"""Images as data: folders in the MVTec AD layout and the built-in ELPV solar-cell set.

Every image becomes one row of 8-bit intensities, flattened channel by channel (C*H*W,
``image_shape = (C, H, W)``); the preprocessing divides them by 255, so that a model sees
continuous intensities in [0, 1] per channel, and records that scaling (and the channel
mode and size) in the run's ``preprocess.json``, where scoring finds it again.

Reading (Pillow; PNG, JPEG, BMP, TIFF):

* only 8-bit images are read (modes 1, L, LA, P, RGB, RGBA, CMYK, YCbCr and the like);
  16-bit and floating-point images are refused with the file named;
* an image is grayscale when its mode has one channel, or when its red, green and blue
  channels are equal at every pixel; an alpha channel is dropped (not composited);
* grayscale or colour is decided by the data: all grayscale -> one channel, any colour
  image -> three channels (RGB), the grayscale ones then repeated in each channel;
* with ``image_size = N`` every image is resized to N x N (Pillow's bilinear filter,
  which averages over the source pixels when it shrinks; the aspect ratio is not kept);
  without it every image must have the same size, else the first one that differs is
  named.

The folder layout (as in MVTec AD and anomalib's ``Folder`` data set)::

    DIR/train/good/*      normal images, for training (and validation)
    DIR/test/good/*       normal images, for testing
    DIR/test/<kind>/*     anomalous images, one folder per kind of defect

Other entries directly in DIR (MVTec's ``ground_truth/``, a licence file) are ignored;
files in a class folder that are not images (by extension) or are hidden are skipped and
counted in the notes.

ELPV (``--data elpv``): the electroluminescence images of solar cells of Buerhop-Lutz et
al., "A benchmark for visual identification of defective solar cells in
electroluminescence imagery", European PV Solar Energy Conference and Exhibition
(EU PVSEC) 2018, and Deitsch et al., "Automatic classification of defective photovoltaic
module cells in electroluminescence imagery", Solar Energy 185 (2019) 455-468; 2,624
cells of 300 x 300 pixels, 8-bit grayscale, each with a defect probability (0, 1/3, 2/3,
1) and a cell type (mono, poly).  The images are licensed CC BY-NC-SA 4.0: they are read
from the installed PyPI package ``elpv-dataset`` (``pip install 'fvnce[images]'``) and
never copied or cached anywhere.  Normal = probability 0, anomaly = probability 1; the
uncertain cells (1/3, 2/3) are kept out of training, validation and test and returned as
the data set's held-out group, with their probabilities.  Default size 64 x 64.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fvnce.data.spec import DataSpec, RawTable
from fvnce.errors import DataError

__all__ = [
    "ELPV_DEFAULT_SIZE",
    "IMAGE_EXTENSIONS",
    "INSTALL_IMAGES",
    "elpv",
    "image_files",
    "is_image_input",
    "read_folder",
    "read_images_for_scoring",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
INSTALL_IMAGES = "pip install 'fvnce[images]'"
ELPV_DEFAULT_SIZE = 64
#: what the preprocessing does to the intensities (recorded in preprocess.json)
INTENSITY = "8-bit values divided by 255: continuous intensities in [0, 1] per channel"
NORMAL_KIND = "good"
_RGB_MODES = ("RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV")
_GRAY_MODES = ("L", "LA", "1", "La")


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise DataError(f"reading images needs Pillow: {INSTALL_IMAGES}") from None
    return Image


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


def read_image(path: Path, size: int | None, where: str | None = None) -> np.ndarray:
    """One image file as uint8: (H, W) when grayscale, (H, W, 3) when colour, resized to
    ``size`` x ``size`` when given.  Any failure is a DataError naming the file."""
    Image = _pil()
    where = where or str(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in _GRAY_MODES:
                img = img.convert("L")
            elif mode in _RGB_MODES:
                img = img.convert("RGB")
            else:
                raise DataError(f"{where}: image mode {mode!r} (16-bit or floating-point values) is not read; "
                                "only 8-bit grayscale or colour images are: convert it to 8-bit")
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # Pillow: UnidentifiedImageError, truncated data, decoder errors of every kind
        text = " ".join(str(e).split()) or type(e).__name__
        raise DataError(f"cannot read image {where}: {text[:160]}") from None
    if arr.ndim == 3 and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all():
        arr = np.ascontiguousarray(arr[..., 0])  # colour file, grayscale content
    return arr


def _stack(arrays: list[np.ndarray], names: list[str], size: int | None, what: str) -> tuple[np.ndarray, dict]:
    """Rows (N, C*H*W) uint8 and the image record of ``arrays`` (as :func:`read_image`
    returns them); one channel unless some image has colour.  Mixed sizes without
    ``size`` raise a DataError naming the first image that differs."""
    first = arrays[0].shape[:2]
    for a, name in zip(arrays, names):
        if a.shape[:2] != first:
            raise DataError(
                f"{name} is {a.shape[1]}x{a.shape[0]} pixels but {names[0]} is {first[1]}x{first[0]}: images of "
                f"{what} differ in size; give --image-size N to resize every image to NxN"
            )
    colour = any(a.ndim == 3 for a in arrays)
    c = 3 if colour else 1
    h, w = first
    X = np.empty((len(arrays), c, h, w), dtype=np.uint8)
    for i, a in enumerate(arrays):
        if a.ndim == 3:
            X[i] = a.transpose(2, 0, 1)
        else:
            X[i] = a[None, :, :]
    record = {"mode": "RGB" if colour else "L", "channels": c, "height": int(h), "width": int(w),
              "resize": None if size is None else "bilinear", "intensity": INTENSITY, "layout": "CHW, flattened"}
    return X.reshape(len(arrays), -1), record


def _image_raw(X: np.ndarray, record: dict, source: str, labels, label_name, paths, kinds, notes,
               default_normal=None, normal_aliases=None, **extra) -> RawTable:
    c, h, w = record["channels"], record["height"], record["width"]
    return RawTable(
        X=X, names=[f"pixel{i}" for i in range(X.shape[1])], labels=labels, label_name=label_name,
        source=source, image_shape=(c, h, w), scale=255.0, default_binarize=False, binarize_threshold=0.5,
        default_normal=default_normal, normal_aliases=dict(normal_aliases or {}), notes=notes,
        paths=np.asarray(paths, dtype=object), kinds=np.asarray(kinds, dtype=object), image=record,
        default_transform="none", **extra,
    )


def _describe(record: dict, sizes_from: str) -> str:
    c = record["channels"]
    what = "1 channel (every image grayscale)" if c == 1 else "3 channels (RGB: some images have colour)"
    return (f"images: {what}, {record['height']}x{record['width']} pixels{sizes_from}; "
            f"{INTENSITY}, flattened as C*H*W = {c * record['height'] * record['width']} values per image")


# ---------------------------------------------------------------------------- folders

def _class_files(folder: Path, root: Path) -> tuple[list[Path], int]:
    """The image files of one class folder (sorted) and the number of other files skipped."""
    files, skipped = [], 0
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            raise DataError(f"{p} is a folder inside the class folder {folder.relative_to(root).as_posix()}/: "
                            "class folders hold image files only")
        if _is_image_name(p):
            files.append(p)
        else:
            skipped += 1
    if not files:
        raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in {folder}: an empty class folder")
    return files, skipped


def _layout_error(root: Path, missing: str) -> DataError:
    return DataError(
        f"{root} is a directory but not an image folder: {missing}; expected {root}/train/good/ (normal training "
        "images), test/good/ (normal test images) and test/<kind>/ (anomalous images, one folder per kind)"
    )


def read_folder(spec: DataSpec) -> RawTable:
    """The images of a folder in the layout above, as a :class:`RawTable`: rows of
    train/good first, then those of test/ (good, then each kind, by name); the row's
    relative path, its kind (``good`` or the defect folder) and whether it comes from
    test/ (``fixed_test``) go with it."""
    root = Path(spec.source).expanduser()
    train_dir, test_dir = root / "train", root / "test"
    for d, name in ((train_dir, "train"), (train_dir / NORMAL_KIND, "train/good"), (test_dir, "test"),
                    (test_dir / NORMAL_KIND, "test/good")):
        if not d.is_dir():
            raise _layout_error(root, f"no folder {name}/" if not d.exists() else f"{d} is not a folder")
    for d in (train_dir, test_dir):
        for p in sorted(d.iterdir()):
            if p.name.startswith("."):
                continue
            if not p.is_dir():
                raise _layout_error(root, f"{p} is a file directly in {d.name}/, outside a class folder")
            if d is train_dir and p.name != NORMAL_KIND:
                raise _layout_error(root, f"{p} is a folder in train/ other than good/ (training images are normal)")
    classes = [("train", NORMAL_KIND)] + [("test", NORMAL_KIND)] + [
        ("test", p.name) for p in sorted(test_dir.iterdir()) if p.is_dir() and not p.name.startswith(".")
        and p.name != NORMAL_KIND]
    files, kinds, in_test, skipped = [], [], [], 0
    for part, kind in classes:
        fs, sk = _class_files(root / part / kind, root)
        files += fs
        kinds += [kind] * len(fs)
        in_test += [part == "test"] * len(fs)
        skipped += sk
    size = spec.image_size
    rel = [f.relative_to(root).as_posix() for f in files]
    arrays = [read_image(f, size) for f in files]
    X, record = _stack(arrays, [str(f) for f in files], size, f"{root}")
    notes = []
    if skipped:
        notes.append(f"skipped {skipped} file(s) in the class folders that are not images "
                     f"({', '.join(IMAGE_EXTENSIONS)})")
    notes.append(_describe(record, f" (resized to {size}x{size}, bilinear)" if size is not None else ""))
    kinds_arr = np.asarray(kinds, dtype=object)
    counts = ", ".join(f"{k} {int((kinds_arr[np.asarray(in_test)] == k).sum())}" for _, k in classes[1:])
    notes.append(f"image folder {root}: train/good {int((~np.asarray(in_test)).sum())} images; test/: {counts}")
    labels = np.where(kinds_arr == NORMAL_KIND, NORMAL_KIND, "anomaly").astype(str)
    return _image_raw(X, record, str(root), labels, "folder", rel, kinds, notes, default_normal=NORMAL_KIND,
                      fixed_test=np.asarray(in_test, dtype=bool))


def folder_split(fixed_test: np.ndarray, kinds: np.ndarray, val_fraction: float, seed: int):
    """(train, val, test) row indices of an image folder, each sorted.

    train/good: ``val_fraction`` of it (rounded, at least one from three images on)
    validates, the rest trains.  test/: ``val_fraction`` of each of its folders
    (rounded; at least one of a folder of two or more) validates too, so that the
    validation rows have anomalies to choose between runs with; the rest is the test set.
    """
    rng = np.random.default_rng([int(seed), 0])
    idx_train = rng.permutation(np.flatnonzero(~fixed_test))
    n_val = int(round(val_fraction * len(idx_train)))
    if len(idx_train) >= 3 and val_fraction > 0:
        n_val = max(n_val, 1)
    val, train, test = [idx_train[:n_val]], idx_train[n_val:], []
    for kind in sorted(set(kinds[fixed_test].tolist())):
        idx = rng.permutation(np.flatnonzero(fixed_test & (kinds == kind)))
        m = len(idx)
        k = int(round(val_fraction * m))
        if m >= 2 and val_fraction > 0:
            k = min(max(k, 1), m - 1)
        val.append(idx[:k])
        test.append(idx[k:])
    return np.sort(train), np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


# ---------------------------------------------------------------------------- ELPV

def _elpv_module():
    try:
        import elpv_dataset.utils as utils
    except ImportError:
        raise DataError(f"--data elpv needs the package elpv-dataset: {INSTALL_IMAGES}") from None
    return utils


def elpv(spec: DataSpec) -> RawTable:
    """The ELPV cells of ``spec.cell_type`` at ``spec.image_size`` (default 64) pixels."""
    utils = _elpv_module()
    _pil()
    labels_csv = Path(utils.__file__).parent / "data" / "labels.csv"
    try:
        images, probs, types = utils.load_dataset(str(labels_csv))
        table = np.genfromtxt(labels_csv, dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
        paths = np.char.decode(table["path"]).astype(object)
    except Exception as e:  # a broken install: files missing or unreadable
        raise DataError(f"cannot read the ELPV images of the installed elpv-dataset ({' '.join(str(e).split())[:160]}); "
                        f"reinstall it: {INSTALL_IMAGES}") from None
    images, probs, types = np.asarray(images), np.asarray(probs, dtype=np.float64), np.asarray(types).astype(str)
    if images.ndim != 3 or len(images) != len(probs) or len(paths) != len(probs) or images.dtype != np.uint8:
        raise DataError(f"unexpected ELPV arrays from elpv-dataset: images {images.shape} {images.dtype}, "
                        f"{len(probs)} probabilities; reinstall it: {INSTALL_IMAGES}")
    if spec.cell_type != "all":
        keep = types == spec.cell_type
        images, probs, types, paths = images[keep], probs[keep], types[keep], paths[keep]
    size = ELPV_DEFAULT_SIZE if spec.image_size is None else spec.image_size
    native = images.shape[1:]
    if native != (size, size):
        Image = _pil()
        out = np.empty((len(images), size, size), dtype=np.uint8)
        for i, a in enumerate(images):
            out[i] = np.asarray(Image.fromarray(a).resize((size, size), Image.Resampling.BILINEAR))
        images = out
    record = {"mode": "L", "channels": 1, "height": size, "width": size,
              "resize": None if native == (size, size) else "bilinear", "intensity": INTENSITY,
              "layout": "CHW, flattened"}
    third = np.isclose(probs, 1 / 3)
    two_thirds = np.isclose(probs, 2 / 3)
    uncertain = third | two_thirds
    prob_text = np.where(third, "1/3", np.where(two_thirds, "2/3", np.where(probs == 0, "0", "1"))).astype(str)
    kinds = np.where(uncertain, "p=" + prob_text, np.where(probs == 0, NORMAL_KIND, "defective")).astype(object)
    which = "all cells" if spec.cell_type == "all" else f"{spec.cell_type} cells"
    n0, n1 = int((probs == 0).sum()), int((probs == 1).sum())
    notes = [
        f"ELPV ({which}, elpv-dataset; Buerhop-Lutz et al. 2018, Deitsch et al., Solar Energy 2019; data CC BY-NC-SA "
        f"4.0): {len(probs)} cells, {n0} functional (p = 0, normal), {n1} defective (p = 1, anomalies), "
        f"{int(uncertain.sum())} uncertain (p = 1/3: {int(third.sum())}, p = 2/3: {int(two_thirds.sum())}) kept out "
        "of training, validation, test and AUROC (the data set's held-out group, scored separately)",
        _describe(record, f" (resized from {native[1]}x{native[0]}, bilinear; default size {ELPV_DEFAULT_SIZE})"
                  if record["resize"] else ""),
    ]
    return _image_raw(images.reshape(len(images), -1), record, "elpv", prob_text, "defect_probability", paths,
                      kinds, notes, default_normal="0", normal_aliases={"functional": "0", "defective": "1"},
                      held_out=uncertain, held_out_note="uncertain cells (defect probability 1/3 or 2/3)")


# ---------------------------------------------------------------------------- scoring

def is_image_input(path) -> bool:
    """Whether ``path`` names a folder or an image file (by extension)."""
    p = Path(str(path)).expanduser()
    return p.is_dir() or p.suffix.lower() in IMAGE_EXTENSIONS


def image_files(path) -> tuple[list[Path], list[str]]:
    """The image files ``path`` names: every image under a folder (recursively, hidden
    entries skipped, sorted by relative path) or one image file; and the name each gets
    in the output (the path relative to the folder, or the file path as given)."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise DataError(f"file not found: {path}")
    if p.is_dir():
        found = sorted((f for f in p.rglob("*") if f.is_file() and _is_image_name(f)
                        and not any(part.startswith(".") for part in f.relative_to(p).parts)),
                       key=lambda f: f.relative_to(p).as_posix())
        if not found:
            raise DataError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {path}")
        return found, [f.relative_to(p).as_posix() for f in found]
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        raise DataError(f"{path} is not an image file ({', '.join(IMAGE_EXTENSIONS)})")
    return [p], [str(path)]


def read_images_for_scoring(path, image: dict) -> tuple[np.ndarray, list[str]]:
    """Rows (N, C*H*W) uint8 of the images ``path`` names, read as the training images
    were (``image``: the record in preprocess.json): resized to the training size when the
    run resized, else each must have it; converted to the training channels (a colour
    image for a grayscale run by Pillow's luma, ITU-R 601-2)."""
    files, names = image_files(path)
    h, w, c = int(image["height"]), int(image["width"]), int(image["channels"])
    size = h if image.get("resize") else None
    X = np.empty((len(files), c, h, w), dtype=np.uint8)
    for i, f in enumerate(files):
        a = read_image(f, size)
        if a.shape[:2] != (h, w):
            raise DataError(f"{f} is {a.shape[1]}x{a.shape[0]} pixels; the model was trained on {w}x{h} images "
                            "(a run trained with --image-size resizes when scoring, others do not)")
        if c == 1 and a.ndim == 3:
            a = np.asarray(_pil().fromarray(a, "RGB").convert("L"), dtype=np.uint8)
        if c == 3:
            X[i] = a.transpose(2, 0, 1) if a.ndim == 3 else a[None]
        else:
            X[i] = a[None]
    return X.reshape(len(files), -1), names
