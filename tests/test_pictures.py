"""Pictures of image runs in the reports (report/pictures.py) and ``fvnce score --maps``.

One small run is trained on a folder of 8x8 images generated into tmp_path (no image is
committed); the counts, lists and maps the reports show are checked against what the
run's evaluation.json, its data and its model give when worked out here.
"""

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fvnce.cli import main
from fvnce.data import DataSpec, load_dataset
from fvnce.report import build_report
from fvnce.report import pictures as pic
from fvnce.runs.loading import load_run

Image = pytest.importorskip("PIL.Image")
sys.path.insert(0, str(Path(__file__).parent))
from test_report import write_run  # noqa: E402  (the report tests' fake run folders)

SIZE = 8


def _write_folder(root: Path, rng) -> dict:
    """train/good 36 flat-ish images, test/good 12, test/spot 10 with a 3x3 patch (bright in 7)."""
    arrays = {}

    def good():
        return np.clip(rng.normal(100, 6, (SIZE, SIZE)), 0, 255).astype(np.uint8)

    for i in range(36):
        arrays[f"train/good/{i:03d}.png"] = good()
    for i in range(12):
        arrays[f"test/good/{i:03d}.png"] = good()
    for i in range(10):
        a = good()
        r, c = rng.integers(0, SIZE - 3, 2)
        a[r:r + 3, c:c + 3] = 250 if i >= 3 else 100  # three spots the eye and the model can hardly see
        arrays[f"test/spot/{i:03d}.png"] = a
    for rel, a in arrays.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / rel)
    return arrays


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("pictures")
    root = base / "parts"
    arrays = _write_folder(root, np.random.default_rng(3))
    run = base / "run"
    assert main(["train", "--data", str(root), "--objective", "elbo", "--steps", "3", "--eval-k", "4",
                 "--out", str(run), "--quiet"]) == 0
    return root, arrays, run


def _expected(run: Path, root: Path):
    """Test paths, labels and scores in the units of the threshold, worked out from
    evaluation.json and the data read here; and the threshold."""
    ev = json.loads((run / "evaluation.json").read_text())
    ds = load_dataset(DataSpec(source=str(root), seed=0))
    labels = ds.test_labels.numpy().astype(bool)
    normal, anomaly = iter(ev["scores"]["normal"]), iter(ev["scores"]["anomaly"])
    scores = np.array([next(anomaly) if y else next(normal) for y in labels])
    assert ev["log_likelihood_kind"] == "iwae_bound"  # a VAE: the stored scores are the alarm scores
    return ds.test_paths, labels, scores, ev["alarm"]["threshold"], ev


def _section(text: str) -> str:
    i = text.find('<section id="pictures">')
    assert i >= 0
    return text[i:text.find("</section>", i)]


def _listed(section: str, group: str) -> list[str]:
    m = re.search(rf'data-group="{group}">.*?<figcaption class="small">(.*?)</figcaption>', section)
    if m is None:
        return []
    return [item.rsplit(" (", 1)[0] for item in m.group(1).split("; and ")[0].split("; ")]


def _check_section(section: str, run: Path, root: Path) -> None:
    paths, labels, scores, thr, ev = _expected(run, root)
    alarm = scores > thr
    missed = [i for i in np.argsort(scores, kind="stable") if labels[i] and not alarm[i]]
    false_alarms = [i for i in np.argsort(-scores, kind="stable") if not labels[i] and alarm[i]]
    n_anom, n_norm = int(labels.sum()), int((~labels).sum())
    # the counts, as the evaluation itself counted them at the threshold
    op = ev["operating_point"]
    assert len(missed) == op["n_anomaly"] - op["detected"] and len(false_alarms) == op["false_alarms"]
    assert f"{len(missed)} of {n_anom} anomalies missed" in section
    assert f"{len(false_alarms)} of {n_norm} normal images raised a false alarm" in section
    order = np.argsort(-scores, kind="stable")
    assert _listed(section, "most") == [paths[i] for i in order[:pic.N_EXTREME]]
    assert _listed(section, "least") == [paths[i] for i in order[::-1][:pic.N_EXTREME]]
    assert _listed(section, "missed") == [paths[i] for i in missed[:pic.N_LISTED]]
    assert _listed(section, "false-alarms") == [paths[i] for i in false_alarms[:pic.N_LISTED]]
    n_figs = 2 + bool(missed) + bool(false_alarms)
    assert section.count("<img ") == n_figs


def test_run_report_shows_the_pictures_with_the_counts_at_the_threshold(image_run, tmp_path):
    root, _, run = image_run
    text = build_report(run, out=tmp_path / "r.html").read_text()
    _check_section(_section(text), run, root)
    # one-channel (1, H, W) samples are drawn by the samples section
    assert 'alt="Samples of run"' in text


def test_counts_follow_the_threshold(image_run, tmp_path):
    """A threshold in the middle of the test scores: misses and false alarms both
    counted, as the evaluation would count them there."""
    root, _, run = image_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    _, labels, scores, _, ev = _expected(run, root)
    ev["alarm"]["threshold"] = float(np.median(scores))
    alarm = scores > ev["alarm"]["threshold"]
    assert (labels & ~alarm).any() and (~labels & alarm).any()  # both kinds of error at this threshold
    ev["operating_point"].update(detected=int(alarm[labels].sum()), false_alarms=int(alarm[~labels].sum()))
    (copy / "evaluation.json").write_text(json.dumps(ev))
    _check_section(_section(build_report(copy).read_text()), copy, root)


def test_poc_report_shows_the_recommended_runs_pictures(image_run, tmp_path):
    root, _, run = image_run
    poc = tmp_path / "poc"
    shutil.copytree(run, poc / "runs" / "best")
    ev = json.loads((run / "evaluation.json").read_text())
    metrics = {k: ev.get(k) for k in ("auroc", "auprc", "fpr_at_95_tpr", "log_likelihood", "noise_accuracy")}
    summary = {"data": {"source": str(root), "image_shape": [1, SIZE, SIZE], "dim": SIZE * SIZE, "has_labels": True},
               "runs": [{"name": "best", "objective": "elbo", "run_dir": "runs/best", "status": "ok",
                         "metrics": metrics, "val_metrics": metrics}],
               "baselines": [], "recommended": {"run": "best", "criterion": "highest validation AUROC"}}
    (poc / "summary.json").write_text(json.dumps(summary))
    text = build_report(poc).read_text()
    section = _section(text)
    assert "the recommended model (best)" in section
    _check_section(section, run, root)


def test_maps_in_the_report_are_the_decoders_terms(image_run, float64):
    """The maps the report draws: each pixel's -log p(x_d | z) averaged over MAP_K draws
    of q(z | x) (seeded by the run's seed), summing over the pixels to the reconstruction
    term with the same draws."""
    root, _, run = image_run
    p = pic.collect(run)
    rows = sorted(p.images)
    assert rows and set(rows) == {i for g in p.groups for i in g.rows}
    loaded = load_run(run)
    x = load_dataset(loaded.config.data).test[rows].to(next(loaded.model.parameters()).dtype)  # float64 here
    torch.manual_seed(loaded.config.train.seed + pic.MAP_SEED_OFFSET)
    with torch.no_grad():
        z = loaded.encoder(x).sample((pic.MAP_K,))
        px = loaded.model.decode(z)
        per_pixel = -px.base_dist.log_prob(x).mean(0).reshape(-1, SIZE, SIZE)
        recon = -px.log_prob(x).mean(0)
    for j, i in enumerate(rows):
        np.testing.assert_allclose(p.maps[i], per_pixel[j].numpy(), rtol=1e-12, atol=1e-12)
        assert abs(p.maps[i].sum() - float(recon[j])) < 1e-9 * max(1.0, abs(float(recon[j])))
        np.testing.assert_array_equal(p.images[i][0], x[j].double().numpy().reshape(SIZE, SIZE))


def test_alarm_scores_take_log_z_off_as_the_evaluation_does():
    """For an unnormalised model evaluation.json keeps -log p~(x) + log Z; the threshold
    is in units without log Z, taken off in float32 as the evaluation's tensor did."""
    rng = np.random.default_rng(0)
    s32 = torch.tensor(rng.normal(300, 5, 9), dtype=torch.float32)
    log_z = 778.5552364423
    labels = np.array([0, 1, 0, 0, 1, 1, 0, 1, 0], dtype=bool)
    ev = {"log_likelihood_kind": "estimate", "log_z": {"log_z": log_z},
          "scores": {"normal": s32[~torch.tensor(labels)].tolist(), "anomaly": s32[torch.tensor(labels)].tolist()}}
    want = (s32 - log_z).double().numpy()
    np.testing.assert_array_equal(pic.test_alarm_scores(ev, labels), want)
    ev["log_likelihood_kind"] = "iwae_bound"
    np.testing.assert_array_equal(pic.test_alarm_scores(ev, labels), s32.double().numpy())
    with pytest.raises(ValueError, match="3 anomalous test images"):
        pic.test_alarm_scores(ev, labels[:-2])


def test_overlay_leaves_cool_pixels_alone_and_colours_hot_ones():
    from matplotlib import colormaps

    rng = np.random.default_rng(1)
    image = rng.random((3, 4, 5))
    m = np.zeros((4, 5))
    m[1, 2], m[3, 4] = 10.0, 5.0
    out = pic.overlay(image, m, 0.0, 10.0)
    gray = np.repeat(image.mean(0)[:, :, None], 3, axis=2)  # a colour image goes gray under its map
    cool = m == 0
    np.testing.assert_allclose(out[cool], gray[cool])
    hot = colormaps["YlOrRd"](1.0)[:3]
    np.testing.assert_allclose(out[1, 2], 0.25 * gray[1, 2] + 0.75 * np.asarray(hot))
    half = colormaps["YlOrRd"](0.5)[:3]
    np.testing.assert_allclose(out[3, 4], 0.625 * gray[3, 4] + 0.375 * np.asarray(half))
    one = rng.random((1, 4, 5))  # a one-channel image as it is
    np.testing.assert_allclose(pic.overlay(one, m, 0.0, 10.0)[cool], np.repeat(one[0][:, :, None], 3, 2)[cool])


def test_no_pictures_for_tabular_data_and_a_note_when_they_cannot_be_made(tmp_path):
    write_run(tmp_path / "table", dim=5)
    text = build_report(tmp_path / "table").read_text()
    assert 'id="pictures"' not in text and "per-pixel" not in text
    # image data whose run cannot be rebuilt (a folder of report files only): the section says why
    write_run(tmp_path / "img", dim=64, image_shape=[8, 8])
    section = _section(build_report(tmp_path / "img").read_text())
    assert "could not be made" in section and "<img " not in section


# ---------------------------------------------------------------------------- score --maps


def test_score_writes_one_map_per_image(image_run, tmp_path):
    root, arrays, run = image_run
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert main(["score", str(run), "--data", str(root / "test"), "--out", str(out), "--maps", str(maps),
                 "--quiet"]) == 0
    names = [line.split(",")[0] for line in out.read_text().splitlines()[1:]]
    tests = sorted(p for p in arrays if p.startswith("test/"))
    assert names == [p[len("test/"):] for p in tests]
    written = sorted(p.relative_to(maps).as_posix() for p in maps.rglob("*") if p.is_file())
    assert written == names  # the image's path, suffix .png
    lo_hi = None
    for name in names:
        with Image.open(maps / name) as im:
            assert im.size == (SIZE, SIZE) and im.mode == "RGB"
            assert im.text["fvnce-image"] == name
            lo_hi = lo_hi or im.text["fvnce-scale"]
            assert im.text["fvnce-scale"] == lo_hi  # one scale for every map of the call
    assert not list(tmp_path.glob(".*"))  # no working folder left
    # one image file: its map is named after the file; into an existing empty folder
    one, empty = tmp_path / "one.csv", tmp_path / "empty"
    empty.mkdir()
    assert main(["score", str(run), "--data", str(root / "test/spot/003.png"), "--out", str(one), "--maps",
                 str(empty), "--quiet"]) == 0
    assert [p.name for p in empty.iterdir()] == ["003.png"]


def test_map_names_keep_two_images_of_one_stem_apart():
    from fvnce.runs.scoring import map_names

    assert map_names(["a/x.png", "a/x.jpg", "b/y.bmp"], single=False) == ["a/x.png.png", "a/x.jpg.png", "b/y.png"]
    assert map_names(["/data/in/z.tif"], single=True) == ["z.png"]


@pytest.fixture(scope="module")
def table_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("table")
    table = base / "t.csv"
    rng = np.random.default_rng(0)
    table.write_text("a,b\n" + "\n".join(f"{u:.4f},{v:.4f}" for u, v in rng.normal(size=(60, 2))) + "\n")
    run = base / "run"
    assert main(["train", "--data", str(table), "--steps", "3", "--out", str(run), "--quiet", "--no-eval"]) == 0
    return table, run


@pytest.mark.parametrize("case,fragment", [
    ("table_run", "--maps needs a run trained on images"),
    ("table_input", "give a folder of images or an image file"),
    ("not_empty", "exists and is not empty"),
    ("a_file", "exists and is not a folder"),
    ("no_parent", "does not exist"),
    ("parent_is_file", "is a file, not a folder"),
    ("unwritable", "maps"),
])
def test_bad_maps_one_line_exit_2_nothing_written(case, fragment, image_run, table_run, tmp_path, capsys):
    root, _, run = image_run
    data, maps = str(root / "test"), tmp_path / "maps"
    if case == "table_run":
        run = table_run[1]
        data = str(table_run[0])
    elif case == "table_input":
        data = str(table_run[0])
    elif case == "not_empty":
        maps.mkdir()
        (maps / "keep.txt").write_text("mine")
    elif case == "a_file":
        maps.write_text("x")
    elif case == "no_parent":
        maps = tmp_path / "nowhere" / "maps"
    elif case == "parent_is_file":
        (tmp_path / "f").write_text("x")
        maps = tmp_path / "f" / "maps"
    elif case == "unwritable":
        if not Path("/proc/self").is_dir():
            pytest.skip("needs /proc, a folder that even root cannot write into")
        maps = Path("/proc/fvnce-test-maps")
    before = sorted(p.name for p in tmp_path.iterdir())
    out = tmp_path / "s.csv"
    assert main(["score", str(run), "--data", data, "--out", str(out), "--maps", str(maps)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fvnce: error: ") and fragment in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == before
    if case == "not_empty":
        assert [p.name for p in maps.iterdir()] == ["keep.txt"]


def test_a_failed_csv_write_takes_the_maps_back(image_run, tmp_path, monkeypatch, capsys):
    """Nothing half-written: when the CSV cannot be written after the maps were renamed
    in, the maps go too."""
    import fvnce.runs.scoring as scoring

    root, _, run = image_run

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(scoring, "atomic_write_text", fail)
    out, maps = tmp_path / "s.csv", tmp_path / "maps"
    assert main(["score", str(run), "--data", str(root / "test"), "--out", str(out), "--maps", str(maps)]) == 2
    assert "disk full" in capsys.readouterr().err
    assert not out.exists() and not maps.exists() and list(tmp_path.iterdir()) == []
