"""`augforge prepare` on the public polyp layouts as distributed, from folders and from archives.

Each tree below is tiny and synthetic but uses the real folder and file names of the distribution
(looked up: Kvasir-SEG images/ masks/ jpg; CVC-ClinicDB Original/ "Ground Truth/" 1.tif..612.tif;
ETIS-LaribPolypDB ETIS-LaribPolypDB/ GroundTruth/ p<n>.tif; CVC-ColonDB <n>.bmp with p<n>/s<n>/c<n>.bmp
in one folder; PolypGen data_C<k>/images_C<k>/ masks_C<k>/<stem>_mask.jpg; PraNet TestDataset/<set>/
images/ masks/).
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile

from augforge.data.dataset import read_dataset
from augforge.data.layouts import detect, open_source

H, W = 24, 32


def _pair(i: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[4 + i % 8: 14 + i % 8, 6:20] = 255
    return image, mask


def _encode(array: np.ndarray, name: str) -> bytes:
    ok, buf = cv2.imencode(Path(name).suffix, array)
    assert ok
    return buf.tobytes()


def build(root: Path, files: dict[str, str]) -> Path:
    """Write {relative path: 'image i' | 'mask i' | text} under root."""
    for rel, what in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        kind, _, i = what.partition(" ")
        if kind in ("image", "mask"):
            image, mask = _pair(int(i))
            path.write_bytes(_encode(image if kind == "image" else mask, rel))
        else:
            path.write_text(what)
    return root


def kvasir(n=4):
    return {**{f"Kvasir-SEG/images/cju{i}.jpg": f"image {i}" for i in range(n)},
            **{f"Kvasir-SEG/masks/cju{i}.jpg": f"mask {i}" for i in range(n)},
            "Kvasir-SEG/kavsir_bboxes.json": "{}"}


def clinicdb(n=4):
    return {**{f"CVC-ClinicDB/Original/{i}.tif": f"image {i}" for i in range(1, n + 1)},
            **{f"CVC-ClinicDB/Ground Truth/{i}.tif": f"mask {i}" for i in range(1, n + 1)}}


def etis(n=4):
    return {**{f"ETIS-LaribPolypDB/ETIS-LaribPolypDB/{i}.tif": f"image {i}" for i in range(1, n + 1)},
            **{f"ETIS-LaribPolypDB/GroundTruth/p{i}.tif": f"mask {i}" for i in range(1, n + 1)}}


def colondb(n=4):
    files = {}
    for i in range(1, n + 1):
        files.update({f"CVC-ColonDB/{i}.bmp": f"image {i}", f"CVC-ColonDB/p{i}.bmp": f"mask {i}",
                      f"CVC-ColonDB/s{i}.bmp": f"mask {i + 1}", f"CVC-ColonDB/c{i}.bmp": f"mask {i + 2}"})
    return files


def polypgen(centres=(1, 2), n=3):
    files = {"PolypGen2021_MultiCenterData_v3/readme.md": "PolypGen"}
    for k in centres:
        base = f"PolypGen2021_MultiCenterData_v3/data_C{k}"
        for i in range(n):
            stem = f"C{k}_EndoCV2021_{i:05d}"
            files.update({f"{base}/images_C{k}/{stem}.jpg": f"image {i}", f"{base}/masks_C{k}/{stem}_mask.jpg": f"mask {i}",
                          f"{base}/bbox_C{k}/{stem}.txt": "polyp 1 2 3 4"})
    # video sequences are skipped (see docs/datasets.md)
    files["PolypGen2021_MultiCenterData_v3/sequenceData/positive/seq1/images_seq1/a.jpg"] = "image 0"
    files["PolypGen2021_MultiCenterData_v3/sequenceData/positive/seq1/masks_seq1/a_mask.jpg"] = "mask 0"
    return files


def pranet_test(sets=("CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"), n=3):
    files = {}
    for j, name in enumerate(sets):
        for i in range(n):
            files[f"TestDataset/{name}/images/{j}{i}.png"] = f"image {i}"
            files[f"TestDataset/{name}/masks/{j}{i}.png"] = f"mask {i}"
    return files


def pranet_train(n=4):
    return {**{f"TrainDataset/image/{i}.png": f"image {i}" for i in range(n)},
            **{f"TrainDataset/mask/{i}.png": f"mask {i}" for i in range(n)}}


def zip_of(root: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for p in sorted(root.rglob("*")):
            zf.write(p, p.relative_to(root).as_posix())
    return path


def tar_of(root: Path, path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for p in sorted(root.iterdir()):
            tf.add(p, p.name)
    return path


# --------------------------------------------------------------------------- every layout

@pytest.mark.parametrize("tree, layout, pairs", [
    (kvasir, "Kvasir-SEG", 4), (clinicdb, "CVC-ClinicDB", 4), (etis, "ETIS-LaribPolypDB", 4),
    (colondb, "CVC-ColonDB", 4), (pranet_train, "PraNet", 4),
])
@pytest.mark.parametrize("container", ["folder", "zip", "tar.gz"])
def test_single_set_layouts(tmp_path, cli, tree, layout, pairs, container):
    src = build(tmp_path / "src", tree())
    if container == "zip":
        src = zip_of(src, tmp_path / "src.zip")
    elif container == "tar.gz":
        src = tar_of(src, tmp_path / "src.tar.gz")
    r = cli("prepare", src, tmp_path / "out", "--size", 16, "--split", "0.5,0.25,0.25", "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["count"] == pairs and layout in summary["layout"]
    ds = read_dataset(tmp_path / "out", require_complete=True)
    assert ds.info["layout"] == summary["layout"]
    ids = sorted(row["id"] for row in ds.rows)
    # the pair of image <stem> is the mask made for it: the mask file read back equals the source mask resized
    row = ds.rows[0]
    mask = cv2.imread(str(tmp_path / "out" / row["mask"]), cv2.IMREAD_GRAYSCALE)
    assert mask.shape == (16, 16) and set(np.unique(mask)) <= {0, 255}
    assert len(ids) == pairs


def test_colondb_pairs_numbered_frames_with_p_masks_only(tmp_path):
    subsets = detect(open_source(build(tmp_path / "src", colondb(3))))
    assert [s.layout.split(" (")[0] for s in subsets] == ["CVC-ColonDB"]
    assert subsets[0].pairs == {str(i): (f"CVC-ColonDB/{i}.bmp", f"CVC-ColonDB/p{i}.bmp") for i in (1, 2, 3)}


def test_etis_pairs_image_n_with_mask_pn(tmp_path):
    (subset,) = detect(open_source(build(tmp_path / "src", etis(2))))
    assert subset.pairs["2"] == ("ETIS-LaribPolypDB/ETIS-LaribPolypDB/2.tif", "ETIS-LaribPolypDB/GroundTruth/p2.tif")


def test_clinicdb_distribution_gives_612_pairs(tmp_path, cli):
    """The CVC-ClinicDB archive as shipped: Original/ and Ground Truth/ with 1.tif .. 612.tif (tiny frames here)."""
    src = build(tmp_path / "src", clinicdb(612))
    r = cli("prepare", zip_of(src, tmp_path / "CVC-ClinicDB.zip"), tmp_path / "out", "--size", 16, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["splits"] == {"train": 490, "val": 61, "test": 61}
    ds = read_dataset(tmp_path / "out", require_complete=True)
    assert ds.info["count"] == 612 and {r["id"] for r in ds.rows} == {str(i) for i in range(1, 613)}


def test_clinicdb_tiff_decoded_like_the_source(tmp_path, cli):
    """TIFF frames read through OpenCV: the prepared image equals the source resized."""
    src = build(tmp_path / "src", clinicdb(2))
    assert cli("prepare", src, tmp_path / "out", "--size", 16, "--split", "0.5,0,0.5").exit_code == 0
    image, _ = _pair(1)
    expected = cv2.resize(image, (16, 16), interpolation=cv2.INTER_AREA)  # BGR as written, BGR as read back
    got = cv2.imread(str(tmp_path / "out" / "images" / "1.png"))
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_pranet_test_dataset_gives_one_dataset_per_set(tmp_path, cli):
    src = build(tmp_path / "src", pranet_test())
    r = cli("prepare", src, tmp_path / "out", "--size", 16, "--split", "all-test", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    names = [row["dataset"] for row in result["tables"]["prepared datasets"]]
    assert names == ["CVC-300", "CVC-ClinicDB", "CVC-ColonDB", "ETIS-LaribPolypDB", "Kvasir"]
    for name in names:
        ds = read_dataset(tmp_path / "out" / name, require_complete=True)
        assert ds.info["splits"] == {"train": 0, "val": 0, "test": 3}
        assert ds.info["made_by"]["options"]["subset"] == name


def test_polypgen_one_dataset_per_centre_and_sequences_skipped(tmp_path, cli):
    src = build(tmp_path / "src", polypgen())
    r = cli("prepare", tar_of(src, tmp_path / "polypgen.tar.gz"), tmp_path / "out", "--size", 16,
            "--split", "all-test", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["tables"]["prepared datasets"]
    assert [(row["dataset"], row["pairs"]) for row in rows] == [("data_C1", 3), ("data_C2", 3)]
    ds = read_dataset(tmp_path / "out" / "data_C2")
    assert sorted(r["id"] for r in ds.rows) == [f"C2_EndoCV2021_{i:05d}" for i in range(3)]
    assert "PolypGen" in ds.info["layout"]


def test_polypgen_single_centre_folder(tmp_path, cli):
    src = build(tmp_path / "src", polypgen(centres=(3,)))
    r = cli("prepare", src / "PolypGen2021_MultiCenterData_v3" / "data_C3", tmp_path / "out", "--size", 16,
            "--split", "all-test", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["count"] == 3


def test_explicit_folders_and_mask_pattern(tmp_path, cli):
    files = {**{f"frames/f{i}.png": f"image {i}" for i in range(4)},
             **{f"labels/f{i}_mask.png": f"mask {i}" for i in range(4)}, "labels/notes.txt": "x"}
    src = build(tmp_path / "src", files)
    r = cli("prepare", src, tmp_path / "out", "--size", 16, "--images", "frames", "--masks", "labels",
            "--mask-pattern", "{stem}_mask.png", "--split", "0.5,0.25,0.25", "--json")
    assert r.exit_code == 0, r.output
    assert sorted(r["id"] for r in read_dataset(tmp_path / "out").rows) == ["f0", "f1", "f2", "f3"]
    # one folder for both: the files named like the pattern are the masks
    same = build(tmp_path / "same", {**{f"f{i}.png": f"image {i}" for i in range(4)},
                                     **{f"f{i}_gt.png": f"mask {i}" for i in range(4)}})
    r = cli("prepare", same, tmp_path / "out2", "--size", 16, "--images", ".", "--masks", ".",
            "--mask-pattern", "{stem}_gt", "--split", "0.5,0.25,0.25", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["count"] == 4


def test_kvasir_zip_equals_kvasir_folder(tmp_path, cli):
    src = build(tmp_path / "src", kvasir(10))
    assert cli("prepare", src, tmp_path / "a", "--size", 16).exit_code == 0
    assert cli("prepare", zip_of(src, tmp_path / "k.zip"), tmp_path / "b", "--size", 16).exit_code == 0
    for sub in ("images", "masks"):
        for p in (tmp_path / "a" / sub).iterdir():
            assert p.read_bytes() == (tmp_path / "b" / sub / p.name).read_bytes()


# --------------------------------------------------------------------------- bad inputs: one line, nothing half-done

def _one_line_error(r, expected: str) -> None:
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_unrecognised_folder_says_what_it_found_and_what_helps(tmp_path, cli):
    src = build(tmp_path / "src", {"data/pics/a.png": "image 0", "data/gt/a.png": "mask 0", "data/x.png": "image 1"})
    r = cli("prepare", src, tmp_path / "out")
    _one_line_error(r, "no known dataset layout")
    assert "in data/: gt/, pics/, 1 image file(s)" in r.output
    assert "--images DIR --masks DIR" in r.output and "Original/+Ground Truth/" in r.output
    assert not (tmp_path / "out").exists()


def test_mixed_layouts_in_one_folder(tmp_path, cli):
    src = build(tmp_path / "src", {**kvasir(2), **{k.replace("CVC-ClinicDB", "Kvasir-SEG"): v
                                                   for k, v in clinicdb(2).items()}})
    _one_line_error(cli("prepare", src, tmp_path / "out"), "mixed layouts")
    assert not (tmp_path / "out").exists()


def test_mixed_layouts_side_by_side(tmp_path, cli):
    src = build(tmp_path / "src", {**kvasir(2), **clinicdb(2)})
    r = cli("prepare", src, tmp_path / "out")
    _one_line_error(r, "mixed layouts")
    assert "prepare each folder on its own" in r.output


def test_two_copies_of_one_set(tmp_path, cli):
    files = {f"CVC-ClinicDB/{fmt}/{sub}/{i}.{ext}": f"{kind} {i}" for fmt, ext in (("PNG", "png"), ("TIF", "tif"))
             for sub, kind in (("Original", "image"), ("Ground Truth", "mask")) for i in (1, 2)}
    _one_line_error(cli("prepare", build(tmp_path / "src", files), tmp_path / "out"), "PNG/ and TIF/ hold the same 2 pairs")


def test_mask_without_image_inside_an_archive(tmp_path, cli):
    files = kvasir(3)
    files["Kvasir-SEG/masks/orphan.jpg"] = "mask 7"
    src = zip_of(build(tmp_path / "src", files), tmp_path / "k.zip")
    _one_line_error(cli("prepare", src, tmp_path / "out"), "1 mask without an image: " + str(src) + ":Kvasir-SEG/masks/orphan.jpg")
    assert not (tmp_path / "out").exists()


def test_corrupt_archives(tmp_path, cli):
    (tmp_path / "bad.zip").write_bytes(b"PK\x03\x04 this is not a zip archive")
    _one_line_error(cli("prepare", tmp_path / "bad.zip", tmp_path / "out"), "not a readable .zip archive")
    good = tar_of(build(tmp_path / "src", kvasir(3)), tmp_path / "k.tar.gz")
    (tmp_path / "cut.tar.gz").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _one_line_error(cli("prepare", tmp_path / "cut.tar.gz", tmp_path / "out"), "cut.tar.gz")
    (tmp_path / "x.rar").write_bytes(b"Rar!")
    _one_line_error(cli("prepare", tmp_path / "x.rar", tmp_path / "out"), "unpack it")
    assert not (tmp_path / "out").exists()


def test_corrupt_member_of_a_zip(tmp_path, cli):
    src = zip_of(build(tmp_path / "src", kvasir(3)), tmp_path / "k.zip")
    data = bytearray(src.read_bytes())
    with zipfile.ZipFile(src) as zf:
        info = zf.getinfo("Kvasir-SEG/images/cju1.jpg")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data[start + 100] ^= 0xFF  # a flipped byte inside the member: its CRC no longer matches
    src.write_bytes(bytes(data))
    _one_line_error(cli("prepare", src, tmp_path / "out", "--size", 16, "--split", "all-test"),
                    "Kvasir-SEG/images/cju1.jpg")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("container", ["folder", "tar.gz"])
def test_unreadable_tiff_writes_nothing(tmp_path, cli, container):
    files = clinicdb(6)
    src = build(tmp_path / "src", files)
    (src / "CVC-ClinicDB" / "Original" / "5.tif").write_bytes(b"II*\x00 truncated tiff")
    if container == "tar.gz":
        src = tar_of(src, tmp_path / "c.tar.gz")
    r = cli("prepare", src, tmp_path / "out", "--size", 16)
    _one_line_error(r, "Original/5.tif: unreadable or corrupt image file")
    assert not (tmp_path / "out").exists()


def test_failed_rerun_keeps_what_an_earlier_run_wrote(tmp_path, cli):
    """Only a dataset this run started is removed; an interrupted earlier run's pairs stay."""
    src = build(tmp_path / "src", kvasir(4))
    out = tmp_path / "out"
    assert cli("prepare", src, out, "--size", 16, "--split", "all-test").exit_code == 0
    (src / "Kvasir-SEG" / "images" / "cju0.jpg").write_bytes(b"junk")
    (out / "manifest.jsonl").write_text("".join(line + "\n" for line in (out / "manifest.jsonl").read_text().splitlines()
                                                if '"cju0"' not in line))
    r = cli("prepare", src, out, "--size", 16, "--split", "all-test")
    _one_line_error(r, "cju0.jpg: unreadable or corrupt image file")
    assert len(read_dataset(out).rows) == 3


@pytest.mark.parametrize("args, expected", [
    (["--images", "Kvasir-SEG/images"], "--images and --masks go together"),
    (["--mask-pattern", "{stem}_m.png"], "--mask-pattern needs --images"),
    (["--images", "nope", "--masks", "Kvasir-SEG/masks"], "--images nope: no such folder"),
    (["--images", "Kvasir-SEG/images", "--masks", "Kvasir-SEG/masks", "--mask-pattern", "mask"], "holding {stem} once"),
    (["--images", "Kvasir-SEG/images", "--masks", "Kvasir-SEG/masks", "--mask-pattern", "{stem}_m"],
     "not named like '{stem}_m'"),
    (["--split", "all-tests"], "--split"),
])
def test_bad_explicit_options(tmp_path, cli, args, expected):
    src = build(tmp_path / "src", kvasir(2))
    _one_line_error(cli("prepare", src, tmp_path / "out", *args), expected)


def test_source_listing_skips_macos_and_hidden_entries(tmp_path):
    files = {**kvasir(2), "__MACOSX/Kvasir-SEG/images/._cju0.jpg": "x"}
    src = zip_of(build(tmp_path / "src", files), tmp_path / "k.zip")
    source = open_source(src)
    assert not any("__MACOSX" in f for f in source.files)
    assert len(detect(source)[0].pairs) == 2


def test_archive_is_not_unpacked_to_disk(tmp_path, cli, monkeypatch):
    """Members are read into memory: nothing is extracted next to the archive or into the temp dir."""
    import tempfile

    src = tar_of(build(tmp_path / "src", kvasir(3)), tmp_path / "k.tar.gz")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmpdir"))
    (tmp_path / "tmpdir").mkdir()
    before = {p for p in tmp_path.iterdir()}
    assert cli("prepare", src, tmp_path / "out", "--size", 16, "--split", "all-test").exit_code == 0
    assert {p for p in tmp_path.iterdir()} - before == {tmp_path / "out"}
    assert not any((tmp_path / "tmpdir").iterdir())


# --------------------------------------------------------------------------- TIFF and BMP as the sets ship them

def _tiff(array: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, array, **kwargs)
    return buf.getvalue()


def _distributed_tiff(rgb: np.ndarray) -> bytes:
    """Like CVC-ClinicDB's Original/*.tif: one page, 3 samples per pixel, photometric MINISBLACK.
    (Without planarconfig='contig' tifffile would write H pages of W x 3 grey instead.)"""
    return _tiff(rgb, photometric="minisblack", planarconfig="contig")


def _lzw_minisblack(rgb: np.ndarray) -> bytes:
    """The same with LZW compression, which tifffile cannot decode without imagecodecs: OpenCV writes an
    LZW RGB TIFF and its photometric tag is then set to MINISBLACK."""
    data = bytearray(cv2.imencode(".tif", rgb[..., ::-1])[1].tobytes())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        tag = tif.pages[0].tags["PhotometricInterpretation"]
        assert tif.pages[0].compression == 5 and tif.byteorder == "<"
        data[tag.valueoffset:tag.valueoffset + 2] = (1).to_bytes(2, "little")
    return bytes(data)


def _colour(i: int) -> np.ndarray:
    """A reddish frame like a colonoscopy one: R, G and B means far apart."""
    from augforge.data.synthetic import synthetic_pair

    return np.ascontiguousarray(synthetic_pair(i, size=W, seed=3)[0][:H])


RGB = _colour(0)
_PALETTE = np.stack([np.arange(256) * 257, np.zeros(256), (255 - np.arange(256)) * 257]).astype(np.uint16)


@pytest.mark.parametrize("name, data, expected", [
    ("minisblack 3 samples (CVC-ClinicDB)", _distributed_tiff(RGB), RGB),
    ("minisblack 3 samples, planar separate", _tiff(np.moveaxis(RGB, -1, 0), photometric="minisblack",
                                                    planarconfig="separate"), RGB),
    ("minisblack 3 samples, LZW", _lzw_minisblack(RGB), RGB),
    ("RGB", _tiff(RGB, photometric="rgb"), RGB),
    ("RGB, planar separate", _tiff(np.moveaxis(RGB, -1, 0), photometric="rgb", planarconfig="separate"), RGB),
    ("RGB, LZW (OpenCV's own)", cv2.imencode(".tif", RGB[..., ::-1])[1].tobytes(), RGB),
    ("RGB 16-bit", _tiff(RGB.astype(np.uint16) * 257, photometric="rgb"), RGB),
    ("RGB + alpha", _tiff(np.dstack([RGB, RGB[..., :1]]), photometric="rgb", extrasamples=["unassalpha"]), RGB),
    ("minisblack 4 samples", _tiff(np.dstack([RGB, RGB[..., :1]]), photometric="minisblack", planarconfig="contig"),
     RGB),
    ("multi-page: the first", _tiff(np.stack([RGB, 255 - RGB]), photometric="rgb"), RGB),
    ("grey", _tiff(RGB[..., 1], photometric="minisblack"), np.repeat(RGB[..., 1:2], 3, axis=2)),
    ("grey 16-bit", _tiff(RGB[..., 1].astype(np.uint16) * 257, photometric="minisblack"),
     np.repeat(RGB[..., 1:2], 3, axis=2)),
    ("palette", _tiff(RGB[..., 0], photometric="palette", colormap=_PALETTE),
     np.dstack([RGB[..., 0], np.zeros_like(RGB[..., 0]), 255 - RGB[..., 0]])),
    ("BMP (CVC-ColonDB)", cv2.imencode(".bmp", RGB[..., ::-1])[1].tobytes(), RGB),
])
def test_image_files_decode_to_their_rgb(name, data, expected, capfd):
    from augforge.data.dataset import decode_image

    got = decode_image(data, name)
    assert got.shape == (H, W, 3) and got.dtype == np.uint8
    assert np.array_equal(got, expected), name
    assert capfd.readouterr().err == ""  # no per-file warnings of a decoder


_M = _pair(0)[1]


@pytest.mark.parametrize("name, data", [
    ("grey 0/255", _tiff(_M, photometric="minisblack")),
    ("0/1 labels", _tiff(_M // 255, photometric="minisblack")),
    ("16-bit", _tiff(_M.astype(np.uint16) * 257, photometric="minisblack")),
    ("bilevel", _tiff(_M > 0, photometric="minisblack")),
    ("bilevel, min-is-white", _tiff(_M == 0, photometric="miniswhite")),
    ("RGB", _tiff(np.dstack([_M] * 3), photometric="rgb")),
    ("3 samples minisblack", _distributed_tiff(np.dstack([_M] * 3))),
    ("palette", _tiff(_M // 255, photometric="palette", colormap=np.stack([np.arange(256) * 257] * 3).astype(np.uint16))),
    ("LZW (OpenCV's own)", cv2.imencode(".tif", _M)[1].tobytes()),
])
def test_tiff_masks_decode_to_0_255(name, data, capfd):
    from augforge.data.dataset import decode_mask

    assert np.array_equal(decode_mask(data, name), _M), name
    assert capfd.readouterr().err == ""


def _write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def _channel_means(out: Path) -> np.ndarray:
    from augforge.data.dataset import load_pairs

    images, _ = load_pairs(read_dataset(out, require_complete=True))
    return images.float().mean(dim=(0, 2, 3)).numpy()


@pytest.mark.parametrize("container", ["folder", "zip"])
def test_clinicdb_minisblack_tiffs_prepare_in_colour(tmp_path, cli, capfd, container):
    """Acceptance (issue 23.1): CVC-ClinicDB's Original/*.tif (3 samples, MINISBLACK) and Ground Truth/*.tif
    give RGB pairs whose channel means differ, equal to the source resized, with nothing on stderr."""
    files = {}
    for i in range(1, 5):
        files[f"CVC-ClinicDB/Original/{i}.tif"] = _distributed_tiff(_colour(i))
        files[f"CVC-ClinicDB/Ground Truth/{i}.tif"] = _tiff(_pair(i)[1], photometric="minisblack")
    src = _write_tree(tmp_path / "src", files)
    if container == "zip":
        src = zip_of(src, tmp_path / "CVC-ClinicDB.zip")
    r = cli("prepare", src, tmp_path / "out", "--size", 16, "--split", "0.5,0.25,0.25", "--json")
    assert r.exit_code == 0, r.output
    r_mean, g_mean, b_mean = _channel_means(tmp_path / "out")
    assert r_mean - g_mean > 10 and g_mean - b_mean > 5, (r_mean, g_mean, b_mean)
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "images" / "1.png")), cv2.COLOR_BGR2RGB)
    expected = cv2.resize(_colour(1), (16, 16), interpolation=cv2.INTER_AREA)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
    mask = cv2.imread(str(tmp_path / "out" / "masks" / "1.png"), cv2.IMREAD_GRAYSCALE)
    assert mask.max() == 255 and mask.min() == 0
    assert "grey" not in r.output
    assert capfd.readouterr().err == ""


def test_etis_tiffs_and_colondb_bmps_prepare_in_colour(tmp_path, cli):
    etis = {}
    colondb = {}
    for i in range(1, 5):
        etis[f"ETIS-LaribPolypDB/ETIS-LaribPolypDB/{i}.tif"] = _distributed_tiff(_colour(i))
        etis[f"ETIS-LaribPolypDB/GroundTruth/p{i}.tif"] = _tiff(_pair(i)[1], photometric="minisblack")
        colondb[f"CVC-ColonDB/{i}.bmp"] = cv2.imencode(".bmp", _colour(i)[..., ::-1])[1].tobytes()
        colondb[f"CVC-ColonDB/p{i}.bmp"] = cv2.imencode(".bmp", _pair(i)[1])[1].tobytes()
    for name, files in (("etis", etis), ("colondb", colondb)):
        src = _write_tree(tmp_path / name, files)
        r = cli("prepare", src, tmp_path / f"out-{name}", "--size", 16, "--split", "all-test")
        assert r.exit_code == 0, r.output
        r_mean, g_mean, b_mean = _channel_means(tmp_path / f"out-{name}")
        assert r_mean - g_mean > 10 and g_mean - b_mean > 5, (name, r_mean, g_mean, b_mean)


def test_prepare_says_in_one_line_when_every_image_is_grey(tmp_path, cli):
    files = {}
    for i in range(1, 4):
        files[f"CVC-ClinicDB/Original/{i}.tif"] = _tiff(_colour(i)[..., 0], photometric="minisblack")
        files[f"CVC-ClinicDB/Ground Truth/{i}.tif"] = _tiff(_pair(i)[1], photometric="minisblack")
    src = _write_tree(tmp_path / "src", files)
    r = cli("prepare", src, tmp_path / "out", "--size", 16, "--split", "all-test", "--json")
    assert r.exit_code == 0, r.output
    lines = [line for line in r.stderr.splitlines() if "grey" in line]
    assert len(lines) == 1 and "all 3 images are grey (equal R, G, B)" in lines[0]
    assert json.loads(r.stdout)["count"] == 3
    # one colour image is enough to say nothing
    (src / "CVC-ClinicDB" / "Original" / "2.tif").write_bytes(_distributed_tiff(_colour(2)))
    r = cli("prepare", src, tmp_path / "out2", "--size", 16, "--split", "all-test", "--json")
    assert r.exit_code == 0 and "grey" not in r.stderr
