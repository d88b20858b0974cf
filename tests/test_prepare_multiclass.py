"""`augforge prepare` of K-class masks as distributed (issue 32.1): label PNGs, palette PNGs, colour-coded masks with
--class-map, one mask folder per structure; --channels; bad inputs in one line; the Parquet round trip."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from augforge.data.dataset import load_pairs, read_dataset
from augforge.data.synthetic import FUNDUS_CLASSES, FUNDUS_COLOURS, synthetic_fundus_pairs, write_fundus_source

N, SIZE = 8, 48
GENERIC = ("background", "class1", "class2")


@pytest.fixture(scope="module")
def fundus():
    return synthetic_fundus_pairs(N, SIZE, seed=0)


def _prepare(cli, src, out, *args):
    r = cli("prepare", src, out, "--size", SIZE, "--split", "0.5,0.25,0.25", "--json", *args)
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def _pairs(out):
    ds = read_dataset(out, require_complete=True)
    images, masks = load_pairs(ds)
    return ds, images[:, 0].numpy(), masks[:, 0].numpy()


def _one_line_nothing_written(r, out, *expected):
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.output, r.output
    for text in expected:
        assert text in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("layout, classes", [
    ("palette", GENERIC), ("labels", FUNDUS_CLASSES), ("structures", FUNDUS_CLASSES), ("colour", FUNDUS_CLASSES)])
def test_every_format_prepares_to_the_same_3_class_grey_pairs(cli, tmp_path, fundus, layout, classes):
    src = write_fundus_source(tmp_path / "src", layout, n=N, size=SIZE, seed=0)
    summary = _prepare(cli, src["root"], tmp_path / "out", *src["options"])
    ds, images, labels = _pairs(tmp_path / "out")
    assert ds.classes == classes and ds.num_classes == 3 and ds.channels == 1
    assert ds.info["classes"] == list(classes) and ds.info["channels"] == 1
    order = [int(r["id"][3:]) for r in ds.rows]
    assert np.array_equal(images, fundus[0][order]) and np.array_equal(labels, fundus[1][order])
    assert set(summary["class_area_fraction"]) == set(classes)
    assert summary["class_area_fraction"][classes[2]]["mean"] > 0.005
    files = cv2.imread(str(tmp_path / "out" / ds.rows[0]["mask"]), cv2.IMREAD_UNCHANGED)
    assert files.ndim == 2 and set(np.unique(files)) <= {0, 1, 2}  # the class index itself on disk


def test_palette_masks_that_were_a_silent_union_now_keep_their_classes(cli, tmp_path, fundus):
    """The report of issue 32: 0/1/2 palette PNGs prepared into binary masks of their union, losing the cup."""
    src = write_fundus_source(tmp_path / "src", "palette", n=N, size=SIZE)
    _prepare(cli, src["root"], tmp_path / "out", "--classes", "background,disc,cup")
    ds, _, labels = _pairs(tmp_path / "out")
    assert ds.classes == FUNDUS_CLASSES and set(np.unique(labels)) == {0, 1, 2}
    # the index is read, not the palette's colour: the disc's dark red (128, 0, 0) would be background at 128
    assert (labels == 1).sum() == (fundus[1] == 1).sum()


def test_structure_order_decides_nesting_and_folders_without_an_order_are_one_line(cli, tmp_path, fundus):
    src = write_fundus_source(tmp_path / "src", "structures", n=N, size=SIZE)["root"]
    r = cli("prepare", src, tmp_path / "no-order", "--size", SIZE)
    _one_line_nothing_written(r, tmp_path / "no-order", "one folder of masks per structure", "--structures cup,disc")
    _prepare(cli, src, tmp_path / "out", "--structures", "cup,disc")  # disc painted over the cup: no cup left
    ds, _, labels = _pairs(tmp_path / "out")
    assert ds.classes == ("background", "cup", "disc")
    assert (labels == 1).sum() == 0 and (labels == 2).sum() == (fundus[1] > 0).sum()
    r = cli("prepare", src, tmp_path / "x", "--structures", "disc,rim")
    _one_line_nothing_written(r, tmp_path / "x", "no folder rim/", "cup/, disc/")


def test_a_missing_structure_mask_is_one_line(cli, tmp_path):
    src = write_fundus_source(tmp_path / "src", "structures", n=N, size=SIZE)["root"]
    (src / "masks" / "cup" / "eye003.png").unlink()
    r = cli("prepare", src, tmp_path / "out", "--structures", "disc,cup")
    _one_line_nothing_written(r, tmp_path / "out", "image without a mask", "eye003")


def _soft_colour_masks(src, fundus, *, jpeg: bool):
    """Colour masks as painting tools save them: drawn at 4x, area-resized (anti-aliased edges), or JPEG."""
    colours = np.array(list(FUNDUS_COLOURS.values()), np.uint8)
    for i in range(N):
        big = np.roll(cv2.resize(fundus[1][i], (4 * SIZE, 4 * SIZE), interpolation=cv2.INTER_NEAREST), (1, 2), (0, 1))
        rgb = cv2.resize(colours[big], (SIZE, SIZE), interpolation=cv2.INTER_AREA)
        path = src / "masks" / (f"eye{i:03d}.jpg" if jpeg else f"eye{i:03d}.png")
        (src / "masks" / f"eye{i:03d}.png").unlink(missing_ok=True)
        cv2.imwrite(str(path), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90] if jpeg else [])
    return colours


@pytest.mark.parametrize("jpeg", [False, True])
def test_colour_masks_with_blended_edges_take_the_nearest_class(cli, tmp_path, fundus, jpeg):
    src = write_fundus_source(tmp_path / "src", "colour", n=N, size=SIZE)
    blends = _soft_colour_masks(src["root"], fundus, jpeg=jpeg)
    raw = cv2.imread(str(sorted((src["root"] / "masks").iterdir())[0]))[..., ::-1].reshape(-1, 3)
    assert not all((raw[:, None] == blends[None]).all(-1).any(-1))  # there are colours between the class colours
    _prepare(cli, src["root"], tmp_path / "out", *src["options"])
    ds, _, labels = _pairs(tmp_path / "out")
    order = [int(r["id"][3:]) for r in ds.rows]
    agree = (labels == fundus[1][order]).mean()
    assert ds.classes == FUNDUS_CLASSES and agree > (0.95 if jpeg else 0.98), agree
    for k in (1, 2):
        assert (labels == k).mean() > 0.5 * (fundus[1] == k).mean()


def test_text_class_map_and_grey_levels(cli, tmp_path, fundus):
    """A grey-coded set (REFUGE's style: background 255, disc 128, cup 0) read with a text class map."""
    src = write_fundus_source(tmp_path / "src", "labels", n=N, size=SIZE)["root"]
    for i in range(N):
        cv2.imwrite(str(src / "masks" / f"eye{i:03d}.png"), np.array([255, 128, 0], np.uint8)[fundus[1][i]])
    (tmp_path / "map.txt").write_text("# REFUGE\nbackground 255\ndisc: 128\ncup 0\n")
    _prepare(cli, src, tmp_path / "out", "--class-map", tmp_path / "map.txt")
    ds, _, labels = _pairs(tmp_path / "out")
    order = [int(r["id"][3:]) for r in ds.rows]
    assert ds.classes == FUNDUS_CLASSES and np.array_equal(labels, fundus[1][order])
    # auto never makes these binary: the grey levels are refused with the option to use
    r = cli("prepare", src, tmp_path / "auto", "--size", SIZE)
    _one_line_nothing_written(r, tmp_path / "auto", "grey levels", "--class-map")


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_a_colour_outside_the_class_map_is_one_line_naming_file_and_value(cli, tmp_path, ext):
    src = write_fundus_source(tmp_path / "src", "colour", n=N, size=SIZE)
    path = src["root"] / "masks" / "eye002.png"
    mask = cv2.imread(str(path))
    mask[2:14, 2:14] = (0, 255, 0)  # BGR green: no class
    path.unlink()
    cv2.imwrite(str(path.with_suffix(ext)), mask)
    r = cli("prepare", src["root"], tmp_path / "out", "--size", SIZE, *src["options"])
    value = "colour (0, 255, 0)" if ext == ".png" else "colour ("  # JPEG: near green
    _one_line_nothing_written(r, tmp_path / "out", f"eye002{ext}", value, "not in the class map")


def test_a_class_map_that_does_not_cover_the_masks_is_one_line(cli, tmp_path):
    src = write_fundus_source(tmp_path / "src", "colour", n=N, size=SIZE)
    (tmp_path / "map.json").write_text(json.dumps({"background": [0, 0, 0], "disc": [255, 0, 0]}))
    r = cli("prepare", src["root"], tmp_path / "out", "--size", SIZE, "--class-map", tmp_path / "map.json")
    _one_line_nothing_written(r, tmp_path / "out", "colour (0, 0, 255)", "not in the class map", "disc (255, 0, 0)")


def test_a_label_value_outside_the_classes_is_one_line(cli, tmp_path):
    src = write_fundus_source(tmp_path / "src", "labels", n=N, size=SIZE)
    path = src["root"] / "masks" / "eye005.png"
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    mask[:3, :3] = 7
    cv2.imwrite(str(path), mask)
    r = cli("prepare", src["root"], tmp_path / "out", "--size", SIZE, *src["options"])
    _one_line_nothing_written(r, tmp_path / "out", "eye005.png", "value 7", "outside the 3 classes")


@pytest.mark.parametrize("args, expected", [
    (["--channels", "2"], "--channels"), (["--classes", "background"], "--classes"),
    (["--class-map", "nope.json"], "no such file"), (["--structures", "disc,cup", "--class-map", "m.json"], "together"),
    (["--structures", "disc,cup", "--classes", "a,b"], "--classes names 2 classes"),
])
def test_bad_class_options_are_one_line(cli, tmp_path, args, expected):
    src = write_fundus_source(tmp_path / "src", "structures", n=N, size=SIZE)["root"]
    (tmp_path / "m.json").write_text("{}")
    r = cli("prepare", src, tmp_path / "out", *[a.replace("m.json", str(tmp_path / "m.json")) for a in args])
    _one_line_nothing_written(r, tmp_path / "out", expected)


def test_bad_class_map_files_are_one_line(cli, tmp_path):
    src = write_fundus_source(tmp_path / "src", "colour", n=N, size=SIZE)["root"]
    for text, expected in (("{", "not valid JSON"), ('{"background": [0, 0, 0]}', "at least two classes"),
                           ('{"a": [0, 0, 0], "b": [0, 0, 0]}', "names two classes"),
                           ('{"a": 0, "b": [300, 0, 0]}', "grey level 0-255"), ("background zero\n", "line 1")):
        (tmp_path / "map.json").write_text(text)
        r = cli("prepare", src, tmp_path / "out", "--class-map", tmp_path / "map.json")
        _one_line_nothing_written(r, tmp_path / "out", expected)


def _colour_pairs(root, n=4):
    """Two colour-coded foreground classes on black: red and blue blobs (what auto must not union)."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        cv2.imwrite(str(root / "images" / f"p{i}.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        mask = np.zeros((SIZE, SIZE, 3), np.uint8)
        mask[5:20, 5:20] = (0, 0, 255)  # BGR red
        mask[25:40, 25:40] = (255, 0, 0)  # BGR blue
        cv2.imwrite(str(root / "masks" / f"p{i}.png"), mask)
    return root


def test_colour_coded_masks_are_never_a_silent_union(cli, tmp_path):
    src = _colour_pairs(tmp_path / "src")
    r = cli("prepare", src, tmp_path / "out", "--size", SIZE, "--split", "0.5,0.25,0.25")
    _one_line_nothing_written(r, tmp_path / "out", "colour-coded", "(255, 0, 0)", "(0, 0, 255)", "--class-map")
    # said in words: --classes binary keeps today's union at 128
    _prepare(cli, src, tmp_path / "union", "--classes", "binary")
    ds, _, labels = _pairs(tmp_path / "union")
    assert ds.classes == ("background", "foreground") and "classes" not in ds.info and labels.sum() == 4 * 2 * 15 * 15


def test_binary_palette_pngs_stay_binary(cli, tmp_path):
    from PIL import Image

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        cv2.imwrite(str(src / "images" / f"p{i}.png"), rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
        labels = np.zeros((SIZE, SIZE), np.uint8)
        labels[4:30, 10:40] = 1
        im = Image.fromarray(labels, mode="P")
        im.putpalette([0, 0, 0, 255, 255, 255])
        im.save(src / "masks" / f"p{i}.png")
    summary = _prepare(cli, src, tmp_path / "out")
    ds, _, labels = _pairs(tmp_path / "out")
    assert ds.classes == ("background", "foreground") and ds.channels == 3
    assert "classes" not in ds.info and "class_area_fraction" not in summary
    assert labels.sum() == 4 * 26 * 30


def _grey_source(root, ext, colour_one=False):
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        grey = cv2.GaussianBlur(rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8), (5, 5), 2)
        image = np.dstack([grey] * 3) if i % 2 else grey  # a 3-channel file with R = G = B is grey too
        if colour_one and i == 3:
            image = rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / f"p{i}{ext}"), image)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[10:30, 10:30] = 255
        cv2.imwrite(str(root / "masks" / f"p{i}.png"), mask)
    return root


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_channels_auto_makes_grey_sets_one_channel(cli, tmp_path, ext):
    src = _grey_source(tmp_path / "src", ext)
    r = cli("prepare", src, tmp_path / "out", "--size", 32, "--split", "0.5,0.25,0.25")
    assert r.exit_code == 0, r.output
    notes = [line for line in r.stderr.splitlines() if "grey" in line]
    assert len(notes) == 1 and "all 4 images are grey (equal R, G, B)" in notes[0] and "1 channel" in notes[0]
    ds, images, labels = _pairs(tmp_path / "out")
    assert ds.channels == 1 and ds.info["channels"] == 1 and "classes" not in ds.info
    assert set(np.unique(labels)) == {0, 1}
    stored = cv2.imread(str(tmp_path / "out" / ds.rows[0]["image"]), cv2.IMREAD_UNCHANGED)
    assert stored.ndim == 2
    # --channels 3 keeps three equal channels (and warns as before); one colour image makes auto 3
    _prepare(cli, src, tmp_path / "three", "--channels", "3")
    assert read_dataset(tmp_path / "three").channels == 3 and "channels" not in read_dataset(tmp_path / "three").info
    colour = _grey_source(tmp_path / "colour", ext, colour_one=True)
    r = cli("prepare", colour, tmp_path / "c", "--size", 32, "--split", "0.5,0.25,0.25")
    assert r.exit_code == 0 and "grey" not in r.stderr and read_dataset(tmp_path / "c").channels == 3


def test_channels_1_turns_colour_images_into_their_luma(cli, tmp_path):
    src = _grey_source(tmp_path / "src", ".png", colour_one=True)
    _prepare(cli, src, tmp_path / "out", "--channels", "1")
    ds, images, _ = _pairs(tmp_path / "out")
    source = cv2.imread(str(src / "images" / "p3.png"))
    row = next(k for k, r in enumerate(ds.rows) if r["id"] == "p3")
    assert ds.channels == 1 and np.array_equal(images[row], cv2.cvtColor(source, cv2.COLOR_BGR2GRAY))


def test_k_class_masks_resize_by_the_largest_class_share(cli, tmp_path, fundus):
    src = write_fundus_source(tmp_path / "src", "palette", n=N, size=SIZE)
    r = cli("prepare", src["root"], tmp_path / "out", "--size", 24, "--split", "0.5,0.25,0.25")
    assert r.exit_code == 0, r.output
    ds, images, labels = _pairs(tmp_path / "out")
    assert labels.shape == (N, 24, 24) and set(np.unique(labels)) == {0, 1, 2}
    for k in (1, 2):  # each class keeps its area within a boundary's worth
        assert abs((labels == k).mean() - (fundus[1] == k).mean()) < 0.02


def test_a_rerun_continues_and_an_old_binary_record_is_not_resumed_as_k_class(cli, tmp_path):
    src = write_fundus_source(tmp_path / "src", "palette", n=N, size=SIZE)["root"]
    out = tmp_path / "out"
    _prepare(cli, src, out)
    before = (out / "manifest.jsonl").read_text()
    _prepare(cli, src, out)
    assert (out / "manifest.jsonl").read_text() == before
    info = json.loads((out / "dataset.json").read_text())
    for key in ("mask_classes", "image_channels"):  # as a run of the binary-only prepare recorded it
        del info["made_by"]["options"][key]
    (out / "dataset.json").write_text(json.dumps(info))
    r = cli("prepare", src, out, "--size", SIZE, "--split", "0.5,0.25,0.25")
    assert r.exit_code == 2 and "different run" in r.output


def test_k_class_grey_dataset_round_trips_through_parquet(cli, tmp_path):
    pytest.importorskip("datasets")
    data = tmp_path / "data"
    r = cli("synthesize", data, "--kind", "fundus", "-n", 10, "--size", 32, "--json")
    assert r.exit_code == 0, r.output
    assert cli("export-dataset", data, tmp_path / "table").exit_code == 0
    assert "3 classes (background, disc, cup)" in (tmp_path / "table" / "README.md").read_text()
    r = cli("prepare", tmp_path / "table", tmp_path / "back", "--size", 32, "--json")
    assert r.exit_code == 0, r.output
    a, b = read_dataset(data), read_dataset(tmp_path / "back")
    assert b.classes == a.classes == FUNDUS_CLASSES and b.channels == a.channels == 1
    assert [r["split"] for r in a.rows] == [r["split"] for r in b.rows]
    for (x, y) in zip(load_pairs(a), load_pairs(b)):
        assert x.equal(y)
    shutil.rmtree(tmp_path / "table")


def test_a_dataset_augforge_wrote_prepares_again_with_its_own_class_names(cli, tmp_path):
    """A synthesize (or prepare) output given to prepare as a source keeps the class names and channels its
    dataset.json records, where --classes auto would name them class1, class2; a binary one stays binary."""
    data = tmp_path / "data"
    assert cli("synthesize", data, "--kind", "fundus", "-n", 10, "--size", 32).exit_code == 0
    _prepare(cli, data, tmp_path / "again")
    a, b = read_dataset(data), read_dataset(tmp_path / "again")
    assert b.classes == a.classes == FUNDUS_CLASSES and b.channels == 1
    assert load_pairs(b)[1].unique().tolist() == [0, 1, 2]
    _prepare(cli, data, tmp_path / "named", "--classes", "background,rim,core")  # the option still decides
    assert read_dataset(tmp_path / "named").classes == ("background", "rim", "core")
    assert cli("synthesize", tmp_path / "polyps", "-n", 10, "--size", 32).exit_code == 0
    _prepare(cli, tmp_path / "polyps", tmp_path / "polyps-again")
    assert read_dataset(tmp_path / "polyps-again").num_classes == 2
