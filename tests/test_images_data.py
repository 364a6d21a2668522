"""Images as data: folders in the MVTec AD layout, ELPV, scoring image files.

Every image here is generated into tmp_path (no image is committed); the ELPV tests use a
small stand-in of the elpv-dataset package, and one test reads the installed package.
"""

import sys
import types

import numpy as np
import pytest

from fvnce.cli import main
from fvnce.data import DataSpec, load_dataset, prepare_scoring_data
from fvnce.errors import ConfigError, DataError

Image = pytest.importorskip("PIL.Image")


def _save(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)
    return path


def _gray(rng, h=12, w=10, lo=60, hi=120):
    return rng.integers(lo, hi, size=(h, w), dtype=np.uint8)


def make_folder(root, rng, n_train=20, n_good=4, kinds=(("crack", 3), ("hole", 2)), h=12, w=10):
    """A folder in the layout; returns {relative path: uint8 array as written}."""
    arrays = {}
    for i in range(n_train):
        arrays[f"train/good/{i:03d}.png"] = _gray(rng, h, w)
    for i in range(n_good):
        arrays[f"test/good/{i:03d}.png"] = _gray(rng, h, w)
    for kind, n in kinds:
        for i in range(n):
            arrays[f"test/{kind}/{i:03d}.png"] = _gray(rng, h, w, 0, 256)
    for rel, a in arrays.items():
        _save(root / rel, a)
    return arrays


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "parts"
    return root, make_folder(root, np.random.default_rng(0))


# ---------------------------------------------------------------------------- folders

def test_folder_rows_are_the_pixels_over_255_with_their_paths_and_kinds(folder):
    root, arrays = folder
    ds = load_dataset(DataSpec(source=str(root), seed=3))
    assert ds.image_shape == (1, 12, 10) and ds.dim == 120 and not ds.binary
    for x, paths in ((ds.train, ds.train_paths), (ds.val, ds.val_paths), (ds.test, ds.test_paths)):
        want = np.stack([arrays[p].reshape(-1) / 255.0 for p in paths]).astype(np.float32)
        np.testing.assert_array_equal(x.numpy(), want)
    # every image exactly once; training images from train/good only, test images from test/ only
    assert sorted(ds.train_paths + ds.val_paths + ds.test_paths) == sorted(arrays)
    assert all(p.startswith("train/good/") for p in ds.train_paths)
    assert all(p.startswith("test/") for p in ds.test_paths)
    for paths, kinds, labels in ((ds.val_paths, ds.val_kinds, ds.val_labels),
                                 (ds.test_paths, ds.test_kinds, ds.test_labels)):
        assert kinds == [p.split("/")[1] for p in paths]
        assert labels.tolist() == [float(k != "good") for k in kinds]
    assert set(ds.train_kinds) == {"good"}
    # validation: 15 % of train/good (3 of 20) and of each test/ folder (round, at least 1, test keeps 1)
    assert sum(p.startswith("train/") for p in ds.val_paths) == 3 and len(ds.train) == 17
    assert sorted(ds.val_kinds) == ["crack", "good", "good", "good", "good", "hole"]
    assert sorted(ds.test_kinds) == ["crack", "crack", "good", "good", "good", "hole"]
    assert any("split:" in n and "test/" in n for n in ds.notes)
    # the scaling and the reading are recorded for scoring
    state = ds.preprocessor.state()
    assert state["scale"] == 255.0 and state["transform"] == "none" and state["mean"] is None
    assert state["image"] == {"mode": "L", "channels": 1, "height": 12, "width": 10, "resize": None,
                              "intensity": state["image"]["intensity"], "layout": "CHW, flattened"}
    assert "[0, 1]" in state["image"]["intensity"]


def test_folder_split_is_reproducible_and_moves_with_the_seed(folder):
    root, _ = folder
    a, b = (load_dataset(DataSpec(source=str(root), seed=s)) for s in (1, 1))
    c = load_dataset(DataSpec(source=str(root), seed=2))
    assert a.val_paths == b.val_paths and a.test_paths == b.test_paths
    assert a.val_paths != c.val_paths


def test_colour_is_decided_by_the_data(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "c"
    arrays = make_folder(root, rng, n_train=12, n_good=2, kinds=(("stain", 2),), h=6, w=5)
    # an RGB file whose three channels are equal is grayscale content: still one channel
    grey_rgb = np.repeat(arrays["train/good/000.png"][:, :, None], 3, axis=2)
    _save(root / "train/good/000.png", grey_rgb)
    assert load_dataset(DataSpec(source=str(root))).image_shape == (1, 6, 5)
    # one colour image: three channels for every image, the grayscale ones repeated
    colour = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
    _save(root / "test/stain/000.png", colour)
    ds = load_dataset(DataSpec(source=str(root)))
    assert ds.image_shape == (3, 6, 5) and ds.preprocessor.image["mode"] == "RGB"
    rows = dict(zip(ds.train_paths + ds.val_paths + ds.test_paths,
                    np.concatenate([ds.train.numpy(), ds.val.numpy(), ds.test.numpy()])))
    np.testing.assert_array_equal(rows["test/stain/000.png"],
                                  (colour.transpose(2, 0, 1).reshape(-1) / 255.0).astype(np.float32))
    g = arrays["train/good/001.png"]
    np.testing.assert_array_equal(rows["train/good/001.png"], (np.tile(g.reshape(-1), 3) / 255.0).astype(np.float32))


def test_jpeg_bmp_tiff_and_alpha_are_read(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "f"
    make_folder(root, rng, n_train=11, n_good=1, kinds=(("dent", 1),), h=8, w=8)
    flat = np.full((8, 8), 77, dtype=np.uint8)
    _save(root / "train/good/a.bmp", flat)
    _save(root / "train/good/b.tif", flat)
    _save(root / "train/good/c.jpg", flat)  # JPEG keeps a flat image exactly
    rgba = np.dstack([flat, flat, flat, np.full((8, 8), 9, dtype=np.uint8)])
    _save(root / "train/good/d.png", rgba)  # alpha dropped, grayscale content
    ds = load_dataset(DataSpec(source=str(root), val_fraction=0.0))
    rows = dict(zip(ds.train_paths, ds.train.numpy()))
    for name in ("a.bmp", "b.tif", "c.jpg", "d.png"):
        np.testing.assert_array_equal(rows[f"train/good/{name}"], np.float32(77 / 255))
    assert ds.image_shape == (1, 8, 8)


def test_image_size_resizes_every_image_and_mixed_sizes_need_it(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "m"
    make_folder(root, rng, n_train=12, n_good=2, kinds=(("cut", 2),), h=12, w=10)
    _save(root / "train/good/big.png", np.full((30, 20), 200, dtype=np.uint8))
    with pytest.raises(DataError, match=r"big\.png is 20x30 pixels.*--image-size"):
        load_dataset(DataSpec(source=str(root)))
    ds = load_dataset(DataSpec(source=str(root), image_size=4, val_fraction=0.0))
    assert ds.image_shape == (1, 4, 4) and ds.preprocessor.image["resize"] == "bilinear"
    rows = dict(zip(ds.train_paths, ds.train.numpy()))
    np.testing.assert_array_equal(rows["train/good/big.png"], np.float32(200 / 255))  # a flat image stays flat


@pytest.mark.parametrize("breakage,fragment", [
    ("no_train_good", "no folder train/good/"),
    ("no_test_good", "no folder test/good/"),
    ("empty_class", "empty class folder"),
    ("file_in_test", "outside a class folder"),
    ("other_train_class", "other than good/"),
    ("nested_folder", "class folders hold image files only"),
    ("corrupt", "cannot read image"),
    ("truncated", "cannot read image"),
    ("sixteen_bit", "only 8-bit"),
    ("mixed_sizes", "differ in size"),
])
def test_bad_folder_is_one_line_naming_the_file_exit_2_nothing_written(breakage, fragment, tmp_path, capsys):
    rng = np.random.default_rng(4)
    root = tmp_path / "bad"
    make_folder(root, rng, n_train=12, n_good=2, kinds=(("cut", 2),), h=12, w=10)
    named = None
    if breakage == "no_train_good":
        for f in (root / "train/good").iterdir():
            f.unlink()
        (root / "train/good").rmdir()
    elif breakage == "no_test_good":
        for f in (root / "test/good").iterdir():
            f.unlink()
        (root / "test/good").rmdir()
    elif breakage == "empty_class":
        (root / "test/scratch").mkdir()
        (root / "test/scratch/notes.txt").write_text("not an image")
        named = "test/scratch"
    elif breakage == "file_in_test":
        named = _save(root / "test/loose.png", _gray(rng)).name
    elif breakage == "other_train_class":
        named = "train/cut"
        _save(root / "train/cut/0.png", _gray(rng))
    elif breakage == "nested_folder":
        named = "sub"
        _save(root / "test/cut/sub/0.png", _gray(rng))
    elif breakage == "corrupt":
        named = "test/cut/001.png"
        (root / named).write_bytes(b"not a png at all")
    elif breakage == "truncated":
        named = "train/good/005.png"
        data = (root / named).read_bytes()
        (root / named).write_bytes(data[: len(data) // 2])
    elif breakage == "sixteen_bit":
        named = "test/good/001.png"
        Image.fromarray(np.full((12, 10), 4000, dtype=np.uint16)).save(root / named)
    elif breakage == "mixed_sizes":
        named = "test/cut/000.png"
        _save(root / named, _gray(rng, 11, 10))
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), "--steps", "5", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fvnce: error:") and fragment in err, err
    if named is not None:
        assert named in err
    assert not out.exists()


@pytest.mark.parametrize("argv,fragment", [
    (["--label", "x"], "leave out --label"),
    (["--contaminated"], "trains on train/good only"),
    (["--cell-type", "mono"], "--cell-type applies to --data elpv only"),
])
def test_folder_refuses_options_that_do_not_apply(argv, fragment, folder, tmp_path, capsys):
    root, _ = folder
    out = tmp_path / "run"
    assert main(["train", "--data", str(root), *argv, "--steps", "5", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
    assert not out.exists()


def test_image_size_only_for_image_data(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--image-size", "8", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    assert "--image-size applies to image folders" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="image_size"):
        DataSpec(source="elpv", image_size=0)
    with pytest.raises(ConfigError, match="cell_type"):
        DataSpec(source="elpv", cell_type="thin-film")


# ---------------------------------------------------------------------------- scoring

def test_scoring_reads_an_image_as_training_read_it(folder):
    root, _ = folder
    ds = load_dataset(DataSpec(source=str(root), seed=0))
    for x, path in zip(ds.test, ds.test_paths):
        np.testing.assert_array_equal(prepare_scoring_data(root / path, ds.preprocessor), x.numpy()[None])
    whole = prepare_scoring_data(root / "test", ds.preprocessor)  # a folder: sorted relative paths
    assert whole.shape == (len(ds.test) + len(ds.val) - 3, 120)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("imgrun")
    root = base / "parts"
    arrays = make_folder(root, np.random.default_rng(5), n_train=30, n_good=4, h=20, w=24)
    run = base / "run"
    assert main(["train", "--data", str(root), "--image-size", "16", "--steps", "20", "--out", str(run),
                 "--quiet"]) == 0
    return root, arrays, run


def test_train_and_score_an_image_folder_end_to_end(image_run, tmp_path):
    root, arrays, run = image_run
    import json

    cfg = json.loads((run / "config.json").read_text())
    assert cfg["image_shape"] == [1, 16, 16] and cfg["data"]["image_size"] == 16
    out = tmp_path / "scores.csv"
    assert main(["score", str(run), "--data", str(root), "--out", str(out), "--quiet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[0] == "path,score,alarm" and len(lines) == len(arrays) + 1
    paths = [line.split(",")[0] for line in lines[1:]]
    assert paths == sorted(arrays)
    assert all(np.isfinite(float(line.split(",")[1])) and line.split(",")[2] in "01" for line in lines[1:])
    one = tmp_path / "one.csv"
    image = root / "test/crack/000.png"
    assert main(["score", str(run), "--data", str(image), "--out", str(one), "--quiet"]) == 0
    rows = one.read_text().splitlines()
    assert rows[0] == "path,score,alarm" and len(rows) == 2 and rows[1].split(",")[0] == str(image)


def test_scoring_resizes_an_image_of_another_size_when_the_run_resized(image_run, tmp_path):
    _, _, run = image_run
    path = _save(tmp_path / "odd,name.png", np.full((40, 33), 90, dtype=np.uint8))
    out = tmp_path / "s.csv"
    assert main(["score", str(run), "--data", str(tmp_path), "--out", str(out), "--quiet"]) == 0
    lines = out.read_text().splitlines()
    assert lines[1].startswith('"odd,name.png",') and path.exists()


@pytest.mark.parametrize("what,fragment", [
    ("empty_dir", "no image files"),
    ("corrupt", "cannot read image"),
    ("not_an_image", "trained on images: give a folder of images or an image file"),
])
def test_bad_scoring_input_one_line_exit_2_nothing_written(what, fragment, image_run, tmp_path, capsys):
    _, _, run = image_run
    data = tmp_path / "in"
    data.mkdir()
    if what == "corrupt":
        _save(data / "a.png", np.zeros((16, 16), dtype=np.uint8))
        (data / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    elif what == "not_an_image":
        data = tmp_path / "x.txt"
        data.write_text("hello")
    out = tmp_path / "s.csv"
    assert main(["score", str(run), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fragment in err
    if what == "corrupt":
        assert "b.png" in err
    assert not out.exists()


def test_scoring_without_resize_needs_the_training_size(folder, tmp_path, capsys):
    root, _ = folder
    run = tmp_path / "run"
    assert main(["train", "--data", str(root), "--steps", "3", "--out", str(run), "--quiet", "--no-eval"]) == 0
    _save(tmp_path / "in/w.png", np.zeros((13, 10), dtype=np.uint8))
    out = tmp_path / "s.csv"
    assert main(["score", str(run), "--data", str(tmp_path / "in"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "w.png is 10x13 pixels; the model was trained on 10x12" in err and not out.exists()


def test_image_files_for_a_run_trained_on_a_table(tmp_path, capsys):
    table = tmp_path / "t.csv"
    rng = np.random.default_rng(0)
    table.write_text("a,b\n" + "\n".join(f"{u:.4f},{v:.4f}" for u, v in rng.normal(size=(60, 2))) + "\n")
    run = tmp_path / "run"
    assert main(["train", "--data", str(table), "--steps", "3", "--out", str(run), "--quiet", "--no-eval"]) == 0
    _save(tmp_path / "in/w.png", np.zeros((4, 4), dtype=np.uint8))
    out = tmp_path / "s.csv"
    assert main(["score", str(run), "--data", str(tmp_path / "in"), "--out", str(out)]) == 2
    assert "trained on a table" in capsys.readouterr().err and not out.exists()


# ---------------------------------------------------------------------------- ELPV

@pytest.fixture
def fake_elpv(tmp_path, monkeypatch):
    """A stand-in for the elpv-dataset package: 48 cells of 30x30 pixels, each flat at a
    known value, with the probabilities and types below (paths under its data folder)."""
    pkg = tmp_path / "elpv_dataset"
    (pkg / "data").mkdir(parents=True)
    probs = np.tile([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1 / 3, 2 / 3, 1 / 3, 0, 0, 1], 2)
    cell_types = np.array(["mono", "poly"] * 24)
    values = np.arange(48, dtype=np.uint8) * 5
    names = [f"images/cell{i:04d}.png" for i in range(48)]
    (pkg / "data" / "labels.csv").write_text(
        "".join(f"{n}  {p:.17g}  {t}\n" for n, p, t in zip(names, probs, cell_types)))

    def load_dataset(fname=None):
        return np.stack([np.full((30, 30), v, dtype=np.uint8) for v in values]), probs.copy(), cell_types.copy()

    utils = types.ModuleType("elpv_dataset.utils")
    utils.__file__ = str(pkg / "utils.py")
    utils.load_dataset = load_dataset
    parent = types.ModuleType("elpv_dataset")
    parent.utils = utils
    monkeypatch.setitem(sys.modules, "elpv_dataset", parent)
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", utils)
    return probs, cell_types, values, names


def test_elpv_holds_out_the_uncertain_cells(fake_elpv):
    probs, cell_types, values, names = fake_elpv
    ds = load_dataset(DataSpec(source="elpv", image_size=5, val_fraction=0.2, test_fraction=0.2))
    assert ds.image_shape == (1, 5, 5) and ds.preprocessor.image["resize"] == "bilinear"
    value_of = dict(zip(names, values))
    for x, paths in ((ds.train, ds.train_paths), (ds.val, ds.val_paths), (ds.test, ds.test_paths),
                     (ds.held_out, ds.held_out_paths)):
        np.testing.assert_array_equal(x.numpy(), np.stack(
            [np.full(25, value_of[p] / 255.0, dtype=np.float32) for p in paths]))
    prob_of = dict(zip(names, probs))
    assert sorted(ds.held_out_paths) == [n for n in names if prob_of[n] not in (0, 1)]
    assert ds.held_out_kinds == ["p=1/3", "p=2/3", "p=1/3"] * 2
    assert all(prob_of[p] == 0 for p in ds.train_paths)
    for paths, labels, kinds in ((ds.val_paths, ds.val_labels, ds.val_kinds),
                                 (ds.test_paths, ds.test_labels, ds.test_kinds)):
        assert labels.tolist() == [prob_of[p] for p in paths]
        assert kinds == ["defective" if prob_of[p] == 1 else "good" for p in paths]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 42
    assert any("6 uncertain (p = 1/3: 4, p = 2/3: 2)" in n for n in ds.notes)


def test_elpv_cell_type_and_default_size(fake_elpv):
    _, cell_types, _, names = fake_elpv
    mono = {n for n, t in zip(names, cell_types) if t == "mono"}
    ds = load_dataset(DataSpec(source="elpv", cell_type="mono"))
    assert ds.image_shape == (1, 64, 64)
    seen = ds.train_paths + ds.val_paths + ds.test_paths + ds.held_out_paths
    assert sorted(seen) == sorted(mono)


def test_elpv_without_the_package_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "elpv_dataset", None)
    monkeypatch.setitem(sys.modules, "elpv_dataset.utils", None)
    assert main(["train", "--data", "elpv", "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'fvnce[images]'" in err
    assert not (tmp_path / "r").exists()


def test_elpv_from_the_installed_package():
    pytest.importorskip("elpv_dataset")
    ds = load_dataset(DataSpec(source="elpv"))
    assert ds.image_shape == (1, 64, 64)
    n_normal = len(ds.train) + int((ds.val_labels == 0).sum()) + int((ds.test_labels == 0).sum())
    n_anom = int(ds.val_labels.sum() + ds.test_labels.sum())
    assert (n_normal, n_anom, len(ds.held_out)) == (1508, 715, 401)
    assert 0.0 <= float(ds.train.min()) and float(ds.train.max()) <= 1.0


def test_sample_grid_of_a_grayscale_image_run(image_run, tmp_path):
    _, _, run = image_run
    out = tmp_path / "grid.png"
    assert main(["sample", str(run), "--n", "9", "--out", str(out), "--quiet"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
