"""prepare on data as users have it: spreadsheet manifests, sideways phone photos, a test image copied
into training, and the LABEL_ORIGIN mark of every prepared split (classification and detection)."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import deep_update
from pipeline.config import parse_params
from pipeline.data.coco import CocoError, read_coco
from pipeline.data.images import load_image
from pipeline.data.manifest import LABEL_ORIGIN_FILE, ManifestError, label_origin, read_manifest
from pipeline.data.prepare import PrepareError, prepare
from pipeline.data.prepare_detection import prepare_detection

CLASSES = ["cat", "dog"]
SPLITS = ("source/train", "source/val", "target/train", "target/test", "target/labelled", "target/pick")


def _pixels(path: Path, size: tuple[int, int] = (14, 10)) -> np.ndarray:
    """Random RGB pixels seeded by the file's path: every file made here is different."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    return rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _img(path: Path, size: tuple[int, int] = (14, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_pixels(path, size)).save(path)
    return path


def _imagefolder(root: Path, per_class: int = 4) -> Path:
    for c in CLASSES:
        for i in range(per_class):
            _img(root / c / f"{i}.png")
    return root


def _flat(root: Path, count: int = 4) -> Path:
    for i in range(count):
        _img(root / f"IMG_{i:03d}.png")
    return root


def _params(default_raw: dict, source: dict, target: dict, drop_oracle: bool = False):
    raw = deep_update(default_raw, {"data": {"image_size": 16, "channels": 3, "classes": CLASSES,
                                             "source": source, "target": target}})
    if drop_oracle:  # unlabelled real training images: no target_oracle (as the README says)
        del raw["variants"]["target_oracle"]
    return parse_params(raw)


def _spreadsheet_csv(path: Path, rows: list[str], header: str = "path,label") -> Path:
    """A CSV as a spreadsheet exports it: UTF-8 with a byte-order mark, CRLF line ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("\ufeff".encode() + "\r\n".join([header, *rows, ""]).encode())
    return path


def _origins(out: Path) -> dict[str, str | None]:
    return {split: label_origin(out / split) for split in SPLITS[:4]}   # the optional labelled splits: tests/test_few_labels.py


# ------------------------------------------------------------------------------------------------
# Spreadsheet manifests and COCO files with a byte-order mark
# ------------------------------------------------------------------------------------------------


def test_spreadsheet_manifests_with_bom_and_crlf_are_prepared(default_raw, tmp_path):
    """A BOM + CRLF manifest works as the source and as the target (header with spaces too)."""
    sim, real = tmp_path / "sim", tmp_path / "real"
    sim_rows = [f"img/{i}.png,{CLASSES[i % 2]}" for i in range(8)]
    real_rows = [f"photos/{i}.png , {CLASSES[i % 2]} " for i in range(8)]
    for i in range(8):
        _img(sim / "img" / f"{i}.png")
        _img(real / "photos" / f"{i}.png")
    source = _spreadsheet_csv(sim / "labels.csv", sim_rows)
    target = _spreadsheet_csv(real / "labels.csv", real_rows, header=" path , label ")
    assert source.read_bytes().startswith(b"\xef\xbb\xbfpath,label\r\n")
    params = _params(default_raw, {"format": "manifest", "root": str(source), "val_fraction": 0.25},
                     {"format": "manifest", "root": str(target), "test_fraction": 0.25})
    stats, _ = prepare(params, tmp_path / "out")
    s = stats["splits"]
    assert s["source/train"]["count"] + s["source/val"]["count"] == 8
    assert s["target/train"]["per_class"] == {"cat": 3, "dog": 3} and s["target/test"]["count"] == 2
    entries = read_manifest(source, CLASSES)
    assert [e.label for e in entries] == [0, 1] * 4 and entries[0].path == (sim / "img/0.png").resolve()


def test_spreadsheet_test_manifest_goes_through_the_stage(default_raw, tmp_path):
    """``python -m stages.prepare`` with a BOM + CRLF manifest as the labelled real test set."""
    from stages.prepare import main

    src, flat = _imagefolder(tmp_path / "sim"), _flat(tmp_path / "real")
    test = tmp_path / "real_test"
    for i in range(4):
        _img(test / f"t{i}.png")
    manifest = _spreadsheet_csv(test / "labels.csv", [f"t{i}.png,{CLASSES[i % 2]}" for i in range(4)])
    raw = deep_update(default_raw, {"data": {"image_size": 16, "channels": 3, "classes": CLASSES,
                                             "source": {"format": "imagefolder", "root": str(src)},
                                             "target": {"format": "folder", "root": str(flat),
                                                        "test_root": str(manifest)}}})
    del raw["variants"]["target_oracle"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "out"),
          "--reports", str(tmp_path / "rep")])
    stats = json.loads((tmp_path / "rep/stats.json").read_text())
    assert stats["splits"]["target/test"]["per_class"] == {"cat": 2, "dog": 2}
    assert stats["heldout_duplicates"] == 0


def test_a_manifest_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("path,label\r\nimg/caf\xe9.png,cat\r\n".encode("latin-1"))
    with pytest.raises(ManifestError, match=r"labels\.csv: not UTF-8 text .*save the CSV as UTF-8"):
        read_manifest(path, CLASSES)


def test_coco_json_with_a_byte_order_mark_is_read(tmp_path):
    _img(tmp_path / "a.png", (20, 10))
    blob = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 5, 5]}],
            "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}
    path = tmp_path / "ann.json"
    path.write_bytes("\ufeff".encode() + json.dumps(blob).encode())
    [image] = read_coco(path, CLASSES)
    assert image.labels.tolist() == [0] and image.boxes.tolist() == [[2, 2, 7, 7]]


# ------------------------------------------------------------------------------------------------
# EXIF orientation
# ------------------------------------------------------------------------------------------------

# How an upright image is stored by a camera that writes each orientation tag instead of turning pixels.
STORED_AS = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _sideways(upright: Image.Image, path: Path, orientation: int, **save) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    upright.transpose(STORED_AS[orientation]).save(path, exif=exif, **save)
    return path


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied_before_resizing(tmp_path, orientation):
    upright = Image.fromarray(_pixels(tmp_path / "upright.png", (20, 12)))  # wider than tall, no symmetry
    upright.save(tmp_path / "upright.png")
    stored = _sideways(upright, tmp_path / "phone.png", orientation)
    with Image.open(stored) as img:  # what a viewer that ignores the tag would show
        assert img.getexif()[0x0112] == orientation
        assert img.size == ((12, 20) if orientation in (6, 8) else (20, 12))
    for channels, size in ((3, 16), (1, 8)):
        expected = load_image(tmp_path / "upright.png", channels, size)
        np.testing.assert_array_equal(load_image(stored, channels, size), expected)


def test_a_sideways_jpeg_from_a_phone_comes_out_upright(tmp_path):
    y, x = np.mgrid[0:48, 0:64]
    upright = Image.fromarray(np.stack([x * 4, y * 5, 0 * x], axis=2).astype(np.uint8))  # red grows to the right
    stored = _sideways(upright, tmp_path / "IMG_0001.jpg", 6, quality=95)
    decoded = load_image(stored, 3, 16).astype(int)
    expected = np.asarray(upright.resize((16, 16), Image.Resampling.BILINEAR)).astype(int)
    assert np.abs(decoded - expected).mean() < 4
    assert decoded[:, -1, 0].mean() > decoded[:, 0, 0].mean() + 150  # red grows to the right, as shot


# ------------------------------------------------------------------------------------------------
# A held-out test image copied into training
# ------------------------------------------------------------------------------------------------


def _folder_target(tmp_path: Path) -> tuple[Path, Path, Path]:
    return _imagefolder(tmp_path / "sim"), _flat(tmp_path / "real"), _imagefolder(tmp_path / "real_test", 2)


@pytest.mark.parametrize("into", ["real/IMG_renamed.png", "sim/dog/render_99.bmp"])
def test_a_test_image_copied_into_training_is_refused_naming_both_files(default_raw, tmp_path, into):
    src, flat, test = _folder_target(tmp_path)
    copy = tmp_path / into
    Image.open(test / "dog" / "1.png").save(copy)  # renamed (and re-saved losslessly as another format)
    params = _params(default_raw, {"format": "imagefolder", "root": str(src)},
                     {"format": "folder", "root": str(flat), "test_root": str(test)}, drop_oracle=True)
    out = tmp_path / "out"
    with pytest.raises(PrepareError) as err:
        prepare(params, out)
    message = str(err.value)
    assert message.startswith("1 training image(s) are pixel-identical to held-out test images")
    assert f"{copy.resolve()} (in " in message and f"test image {(test / 'dog' / '1.png').resolve()}" in message
    assert "remove the copies from the training data" in message and "\n" not in message
    assert not out.exists()


def _inked(path: Path, light_ink: bool) -> Path:
    """A 16x16 image with a square of ink in the middle, light on dark or dark on light, with noise
    seeded by its path (every file different)."""
    rng = np.random.default_rng(zlib.crc32(str(path).encode()))
    ink, paper = (220, 30) if light_ink else (30, 220)
    pixels = np.full((16, 16, 3), paper, np.int16)
    pixels[4:12, 4:12] = ink
    pixels += rng.integers(-20, 21, pixels.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
    return path


def test_a_test_image_among_renders_that_prepare_inverts_is_still_refused(default_raw, tmp_path):
    """prepare writes the renders inverted when the real images have the other ink polarity; the copy
    check reads the images as decoded, so a test image copied among the renders is still found."""
    for c in CLASSES:
        for i in range(4):
            _inked(tmp_path / "sim" / c / f"{i}.png", light_ink=True)
            _inked(tmp_path / "real_test" / c / f"{i}.png", light_ink=False)
        _inked(tmp_path / "real" / f"IMG_{c}.png", light_ink=False)
    copy = tmp_path / "sim" / "dog" / "render_99.bmp"
    Image.open(tmp_path / "real_test" / "dog" / "1.png").save(copy)
    params = _params(default_raw, {"format": "imagefolder", "root": str(tmp_path / "sim")},
                     {"format": "folder", "root": str(tmp_path / "real"), "test_root": str(tmp_path / "real_test")},
                     drop_oracle=True)
    with pytest.raises(PrepareError, match=r"^1 training image\(s\) are pixel-identical .*render_99\.bmp \(in source/"):
        prepare(params, tmp_path / "out")
    copy.unlink()   # without the copy the same data prepares, with the renders inverted
    stats, _ = prepare(params, tmp_path / "out")
    assert stats["polarity"]["inverted_source"] and stats["heldout_duplicates"] == 0


def test_copies_within_a_labelled_target_that_is_split_are_counted(default_raw, tmp_path):
    src, real = _imagefolder(tmp_path / "sim"), _imagefolder(tmp_path / "real", per_class=6)
    for i in range(6):  # every cat photo twice, under another name: each pair is split apart or not
        shutil.copy(real / "cat" / f"{i}.png", real / "cat" / f"copy_{i}.png")
    params = _params(default_raw, {"format": "imagefolder", "root": str(src)},
                     {"format": "imagefolder", "root": str(real), "test_fraction": 0.5})
    with pytest.raises(PrepareError, match=r"^[1-6] training image\(s\) are pixel-identical .*real/cat/"):
        prepare(params, tmp_path / "out")


def test_without_copies_prepare_passes_and_counts_none(default_raw, tmp_path):
    src, flat, test = _folder_target(tmp_path)
    params = _params(default_raw, {"format": "imagefolder", "root": str(src)},
                     {"format": "folder", "root": str(flat), "test_root": str(test)}, drop_oracle=True)
    stats, _ = prepare(params, tmp_path / "out")
    assert stats["heldout_duplicates"] == 0
    assert list(stats["splits"]) == list(SPLITS)  # the test split is decoded first, reported in order


# ------------------------------------------------------------------------------------------------
# LABEL_ORIGIN of every prepared split
# ------------------------------------------------------------------------------------------------


def test_label_origin_of_the_builtin_scenario(tiny_raw, tmp_path):
    prepare(parse_params(tiny_raw), tmp_path / "out")
    assert _origins(tmp_path / "out") == {"source/train": "synthetic", "source/val": "synthetic",
                                          "target/train": "real", "target/test": "real"}


def test_label_origin_of_labelled_and_flat_user_folders(default_raw, tmp_path):
    src, real = _imagefolder(tmp_path / "sim"), _imagefolder(tmp_path / "real")
    prepare(_params(default_raw, {"format": "imagefolder", "root": str(src)},
                    {"format": "imagefolder", "root": str(real)}), tmp_path / "labelled")
    assert _origins(tmp_path / "labelled") == {"source/train": "synthetic", "source/val": "synthetic",
                                               "target/train": "real", "target/test": "real"}
    flat, test = _flat(tmp_path / "flat"), _imagefolder(tmp_path / "flat_test", 2)
    prepare(_params(default_raw, {"format": "imagefolder", "root": str(src)},
                    {"format": "folder", "root": str(flat), "test_root": str(test)}, drop_oracle=True),
            tmp_path / "flat_out")
    assert _origins(tmp_path / "flat_out") == {"source/train": "synthetic", "source/val": "synthetic",
                                               "target/train": "none", "target/test": "real"}
    assert (tmp_path / "flat_out/target/train" / LABEL_ORIGIN_FILE).read_text() == "none\n"


def test_an_unlabelled_target_manifest_is_marked_none(default_raw, tmp_path):
    src, test = _imagefolder(tmp_path / "sim"), _imagefolder(tmp_path / "real_test", 2)
    real = tmp_path / "real"
    for i in range(4):
        _img(real / "photos" / f"{i}.png")
    rows = [f"photos/{i}.png," for i in range(4)]
    manifest = _spreadsheet_csv(real / "unlabelled.csv", rows)
    target = {"format": "manifest", "root": str(manifest), "test_root": str(test)}
    stats, _ = prepare(_params(default_raw, {"format": "imagefolder", "root": str(src)}, target, drop_oracle=True),
                       tmp_path / "out")
    assert stats["splits"]["target/train"]["per_class"] == {"<unlabelled>": 4}
    assert _origins(tmp_path / "out")["target/train"] == "none"

    with pytest.raises(PrepareError, match=r"variants\.target_oracle\.train: .*no labels here"):
        prepare(_params(default_raw, {"format": "imagefolder", "root": str(src)}, target), tmp_path / "oracle")
    _spreadsheet_csv(manifest, [*rows[:3], "photos/3.png,dog"])
    with pytest.raises(PrepareError, match=r"unlabelled\.csv: 1 of 4 rows have a label"):
        prepare(_params(default_raw, {"format": "imagefolder", "root": str(src)}, target, drop_oracle=True),
                tmp_path / "partly")


# ------------------------------------------------------------------------------------------------
# Detection: LABEL_ORIGIN, test copies, sideways photos
# ------------------------------------------------------------------------------------------------

DETECTION_CLASSES = ["car", "person"]


def _coco(root: Path, name: str, sizes: list[tuple[int, int]]) -> Path:
    """A COCO file of ``len(sizes)`` distinct random images, one box each."""
    root.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, (w, h) in enumerate(sizes, start=1):
        _img(root / f"{name}_{i}.png", (w, h))
        images.append({"id": i, "file_name": f"{name}_{i}.png", "width": w, "height": h})
        annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": [1, 1, w // 2, h // 2]})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": k + 1, "name": c} for k, c in enumerate(DETECTION_CLASSES)]}))
    return path


def _detection_params(default_raw: dict, source: Path, target: dict):
    raw = deep_update(default_raw, {"task": {"kind": "detection"}, "data": {
        "image_size": 16, "channels": 3, "classes": DETECTION_CLASSES,
        "source": {"format": "coco", "root": str(source), "val_fraction": 0.25}, "target": target}})
    raw["variants"] = {"source_only": {"method": "supervised", "train": "data/prepared/source/train"}}
    return parse_params(raw)


def test_detection_label_origins_builtin_and_user(default_raw, tmp_path):
    tiny = deep_update(default_raw, {"task": {"kind": "detection"}, "data": {"image_size": 32, "scene": {
        "train_count": 24, "val_count": 8, "real_train_count": 8, "real_test_count": 8}}})
    stats, _ = prepare_detection(parse_params(tiny), tmp_path / "builtin")
    assert _origins(tmp_path / "builtin") == {"source/train": "synthetic", "source/val": "synthetic",
                                              "target/train": "real", "target/test": "real"}
    assert stats["heldout_duplicates"] == 0

    source = _coco(tmp_path / "sim", "s", [(20, 12)] * 4)
    target = _coco(tmp_path / "real", "r", [(18, 14)] * 4)
    test = _coco(tmp_path / "real_test", "t", [(18, 14)] * 2)
    prepare_detection(_detection_params(default_raw, source, {"format": "coco", "root": str(target),
                                                              "test_root": str(test)}), tmp_path / "boxes")
    assert _origins(tmp_path / "boxes")["target/train"] == "real"
    flat = _flat(tmp_path / "flat")
    prepare_detection(_detection_params(default_raw, source, {"format": "folder", "root": str(flat),
                                                              "test_root": str(test)}), tmp_path / "flat_out")
    assert _origins(tmp_path / "flat_out") == {"source/train": "synthetic", "source/val": "synthetic",
                                               "target/train": "none", "target/test": "real"}


def test_detection_refuses_a_test_image_copied_into_training(default_raw, tmp_path):
    source = _coco(tmp_path / "sim", "s", [(20, 12)] * 4)
    test = _coco(tmp_path / "real_test", "t", [(18, 14)] * 2)
    flat = _flat(tmp_path / "flat")
    shutil.copy(tmp_path / "real_test/t_2.png", flat / "holiday.png")
    params = _detection_params(default_raw, source, {"format": "folder", "root": str(flat), "test_root": str(test)})
    with pytest.raises(PrepareError, match=r"^1 training image.*/holiday\.png \(in target/train\) .*/t_2\.png"):
        prepare_detection(params, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_detection_reads_a_sideways_photo_with_its_upright_size(default_raw, tmp_path):
    source = _coco(tmp_path / "sim", "s", [(20, 12)] * 4)
    test = _coco(tmp_path / "real_test", "t", [(12, 20)] * 2)  # declared upright: 12 wide, 20 tall
    for i in (1, 2):
        path = tmp_path / "real_test" / f"t_{i}.png"
        with Image.open(path) as img:
            upright = img.copy()
        _sideways(upright, path, 6)                             # stored 20x12, turned upright by its tag
    params = _detection_params(default_raw, source, {"format": "folder", "root": str(_flat(tmp_path / "flat")),
                                                     "test_root": str(test)})
    stats, _ = prepare_detection(params, tmp_path / "out")
    assert stats["splits"]["target/test"]["count"] == 2

    blob = json.loads(test.read_text())
    for entry in blob["images"]:                                # declared as stored, sideways
        entry["width"], entry["height"] = 20, 12
    test.write_text(json.dumps(blob))
    with pytest.raises(CocoError, match=r"t_1\.png: .*declare 20x12 .* 12x20 once turned upright by its EXIF"):
        prepare_detection(params, tmp_path / "out2")
