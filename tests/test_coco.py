"""Detection data: COCO files in and out, the DetectionSet of a prepared split, box-aware augmentation."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.config import AugmentStep, ConfigError
from pipeline.data.coco import (ANNOTATIONS_NAME, CocoError, is_labelled, read_coco, resize_boxes,
                                write_detection_split)
from pipeline.data.detection_set import BoxAugment, DetectionSet, build_box_augment, collate_detection
from pipeline.data.manifest import HELDOUT_MARKER, HeldOutLabelsError, ImageSet
from pipeline.io import save_png

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("a", "b")
SIZE = 32
BOXES = [np.array([[2.25, 3.5, 14.75, 20.0], [16.0, 1.0, 31.0, 9.5]], np.float32),
         np.zeros((0, 4), np.float32),
         np.array([[0.0, 0.0, 32.0, 32.0]], np.float32)]
LABELS = [np.array([0, 1]), np.array([], np.int64), np.array([1])]


def canvas(channels: int = 1, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (SIZE, SIZE, channels), dtype=np.uint8)


def write_split(folder: Path, channels: int = 1, labelled: bool = True, heldout: bool = False) -> Path:
    items = [(f"img{i}", canvas(channels, i), BOXES[i], LABELS[i]) for i in range(len(BOXES))]
    assert write_detection_split(folder, items, CLASSES, labelled=labelled) == len(BOXES)
    if heldout:
        (folder / HELDOUT_MARKER).write_text("held-out test split\n")
    return folder


def one_image_coco(folder: Path, bbox=(4, 4, 10, 8), **overrides) -> Path:
    """A hand-written COCO file: one 32x32 image ``a.png`` with one annotation (id 1) of class ``b``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_png(canvas(), folder / "a.png")
    data = {"images": [{"id": 1, "file_name": "a.png", "width": SIZE, "height": SIZE}],
            "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 2, "bbox": list(bbox), "iscrowd": 0}]}
    data.update(overrides)
    path = folder / ANNOTATIONS_NAME
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------------------------------------
# COCO in and out
# ------------------------------------------------------------------------------------------------


def test_written_split_reads_back_the_same_boxes_labels_and_images(tmp_path):
    folder = write_split(tmp_path / "train", channels=3)
    records = read_coco(folder / ANNOTATIONS_NAME, CLASSES)
    assert [r.path for r in records] == [(folder / f"img{i}.png").resolve() for i in range(3)]
    for record, boxes, labels in zip(records, BOXES, LABELS):
        assert (record.width, record.height) == (SIZE, SIZE)
        assert record.boxes.dtype == np.float32 and record.boxes.shape == boxes.shape
        np.testing.assert_allclose(record.boxes, boxes, atol=0.01)
        assert record.labels.dtype == np.int64 and record.labels.tolist() == labels.tolist()
    data = json.loads((folder / ANNOTATIONS_NAME).read_text())
    assert [c["name"] for c in data["categories"]] == list(CLASSES) and data["categories"][0]["id"] == 1
    assert data["annotations"][0]["bbox"] == [2.25, 3.5, 12.5, 16.5]
    assert is_labelled(folder)
    images = ImageSet(folder, CLASSES, 3, SIZE, labels=False)  # the manifest serves image-only code
    assert len(images) == 3 and np.array_equal(images.image(0), canvas(3, 0))


def test_unlabelled_split_holds_no_boxes_and_reads_only_without_labels(tmp_path):
    folder = write_split(tmp_path / "real", labelled=False)
    assert not is_labelled(folder) and not is_labelled(tmp_path)
    assert json.loads((folder / ANNOTATIONS_NAME).read_text())["annotations"] == []
    with pytest.raises(CocoError, match="no annotations; expected a labelled COCO file"):
        read_coco(folder / ANNOTATIONS_NAME, CLASSES)
    records = read_coco(folder / ANNOTATIONS_NAME, CLASSES, labels=False)
    assert len(records) == 3 and all(r.boxes.shape == (0, 4) and r.labels.shape == (0,) for r in records)


def test_unlabelled_read_needs_neither_annotations_nor_categories(tmp_path):
    path = one_image_coco(tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({"images": data["images"]}))
    assert read_coco(path, CLASSES, labels=False)[0].boxes.shape == (0, 4)


def test_resize_boxes_scales_x_by_width_and_y_by_height():
    boxes = np.array([[10, 5, 60, 45]], np.float32)  # in a 100 x 50 image
    resized = resize_boxes(boxes, width=100, height=50, size=32)
    assert resized.dtype == np.float32
    np.testing.assert_allclose(resized, [[3.2, 3.2, 19.2, 28.8]], rtol=1e-6)


def _invalid_json(path: Path) -> None:
    path.write_text("{not json")


def _drop_key(key: str):
    def mutate(path: Path) -> None:
        data = json.loads(path.read_text())
        del data[key]
        path.write_text(json.dumps(data))
    return mutate


BAD_FILES = {
    "box outside the image": ({"bbox": (20, 4, 20, 8)}, ["annotation id 1", "'a.png'", "[20, 4, 20, 8]", "32x32",
                                                         "outside"]),
    "zero width": ({"bbox": (4, 4, 0, 8)}, ["annotation id 1", "[4, 4, 0, 8]", "non-positive size"]),
    "negative height": ({"bbox": (4, 4, 5, -1)}, ["annotation id 1", "non-positive size"]),
    "bbox of three numbers": ({"bbox": (4, 4, 5)}, ["annotation id 1", "4 finite numbers"]),
    "unknown category name": ({"categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "zebra"}]},
                              ["category id 2", "'zebra'", "['a', 'b']"]),
    "unknown category id": ({"categories": [{"id": 1, "name": "a"}]}, ["annotation id 1", "category_id 2"]),
    "missing image file": ({"images": [{"id": 1, "file_name": "gone.png", "width": 32, "height": 32}]},
                           ["'gone.png'", "image id 1", "not found"]),
    "image escaping the folder": ({"images": [{"id": 1, "file_name": "../a.png", "width": 32, "height": 32}]},
                                  ["'../a.png'", "escapes"]),
    "image without a size": ({"images": [{"id": 1, "file_name": "a.png"}]}, ["images[0]", "width and height"]),
    "duplicate image id": ({"images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}] * 2},
                           ["images[1]", "duplicate image id 1"]),
    "unknown image id": ({"annotations": [{"id": 5, "image_id": 7, "category_id": 1, "bbox": [1, 1, 2, 2]}]},
                         ["annotation id 5", "image_id 7"]),
    "empty annotations": ({"annotations": []}, ["no annotations; expected a labelled COCO file"]),
    "invalid JSON": (_invalid_json, ["not a readable JSON file"]),
    "no categories key": (_drop_key("categories"), ["missing top-level key", "categories"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_coco_file_is_refused_naming_the_file_and_the_entry(tmp_path, case):
    change, expected = BAD_FILES[case]
    if callable(change):
        path = one_image_coco(tmp_path)
        change(path)
    elif "bbox" in change:
        path = one_image_coco(tmp_path, bbox=change["bbox"])
    else:
        path = one_image_coco(tmp_path, **change)
    with pytest.raises(CocoError) as info:
        read_coco(path, CLASSES)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_box_within_half_a_pixel_of_the_image_is_clipped(tmp_path):
    path = one_image_coco(tmp_path, bbox=(-0.4, -0.3, 32.7, 10))  # x: -0.4 .. 32.3 in a 32 px wide image
    (record,) = read_coco(path, CLASSES)
    np.testing.assert_allclose(record.boxes, [[0.0, 0.0, 32.0, 9.7]], atol=1e-5)
    assert record.labels.tolist() == [1]
    path = one_image_coco(tmp_path, bbox=(-0.4, 0, 32.95, 10))  # to 32.55: beyond the half pixel
    with pytest.raises(CocoError, match="outside its image"):
        read_coco(path, CLASSES)


def test_crowd_annotations_are_skipped_with_a_counted_warning(tmp_path, caplog):
    crowd = {"id": 2, "image_id": 1, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 1}
    path = one_image_coco(tmp_path)
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "annotations": data["annotations"] + [crowd]}))
    with caplog.at_level(logging.WARNING, logger="pipeline.data.coco"):
        (record,) = read_coco(path, CLASSES)
    assert record.labels.tolist() == [1]
    assert "skipped 1 iscrowd annotation" in caplog.text


def test_heldout_split_refuses_boxes_but_gives_images_without_labels(tmp_path):
    folder = write_split(tmp_path / "test", heldout=True)
    path = folder / ANNOTATIONS_NAME
    with pytest.raises(HeldOutLabelsError, match="held-out test split"):
        read_coco(path, CLASSES)
    link = tmp_path / "elsewhere" / ANNOTATIONS_NAME
    link.parent.mkdir()
    link.symlink_to(path)
    with pytest.raises(HeldOutLabelsError):
        read_coco(link, CLASSES, images_root=folder)
    with pytest.raises(HeldOutLabelsError):
        DetectionSet(folder, CLASSES, 1, SIZE)
    assert all(r.boxes.shape == (0, 4) for r in read_coco(path, CLASSES, labels=False))
    unlabelled = DetectionSet(folder, CLASSES, 1, SIZE, labels=False)
    assert unlabelled[0][1]["boxes"].shape == (0, 4)
    with pytest.raises(HeldOutLabelsError, match="opened without labels"):
        unlabelled.boxes(0)
    assert read_coco(path, CLASSES, _allow_heldout=True)[0].labels.tolist() == [0, 1]


# ------------------------------------------------------------------------------------------------
# DetectionSet
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_detection_set_items_have_the_documented_shapes_and_dtypes(tmp_path, channels):
    data = DetectionSet(write_split(tmp_path / "train", channels), CLASSES, channels, SIZE)
    assert len(data) == 3 and data.nbytes() == 3 * SIZE * SIZE * channels
    image, target = data[0]
    assert image.shape == (channels, SIZE, SIZE) and image.dtype == torch.float32
    assert image.min() >= -1 and image.max() <= 1
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (2, 4)
    assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [0, 1]
    assert data[1][1]["boxes"].shape == (0, 4) and data[1][1]["labels"].shape == (0,)
    boxes, labels = data.boxes(0)
    np.testing.assert_allclose(boxes, BOXES[0], atol=0.01)
    assert data.image(0).shape == (SIZE, SIZE, channels)


def test_preloaded_detection_set_gives_identical_items(tmp_path):
    folder = write_split(tmp_path / "train")
    streamed, preloaded = DetectionSet(folder, CLASSES, 1, SIZE), DetectionSet(folder, CLASSES, 1, SIZE)
    assert not preloaded.preload(max_bytes=10) and preloaded.preload(max_bytes=10**6)
    for i in range(len(streamed)):
        (a, ta), (b, tb) = streamed[i], preloaded[i]
        assert torch.equal(a, b) and torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])


def test_detection_set_of_another_image_size_is_refused_naming_the_folder(tmp_path):
    folder = write_split(tmp_path / "train")
    with pytest.raises(CocoError, match=f"{folder}.*declared 32x32.*data.image_size is 64"):
        DetectionSet(folder, CLASSES, 1, 64)


def test_collate_detection_stacks_images_and_keeps_targets_apart(tmp_path):
    data = DetectionSet(write_split(tmp_path / "train", 3), CLASSES, 3, SIZE)
    loader = torch.utils.data.DataLoader(data, batch_size=3, collate_fn=collate_detection)
    images, targets = next(iter(loader))
    assert images.shape == (3, 3, SIZE, SIZE)
    assert [t["boxes"].shape[0] for t in targets] == [2, 0, 1]
    assert [t["labels"].tolist() for t in targets] == [[0, 1], [], [1]]


# ------------------------------------------------------------------------------------------------
# Box-aware augmentation
# ------------------------------------------------------------------------------------------------


def steps(*specs: tuple[str, dict]) -> list[AugmentStep]:
    return [AugmentStep(name, params) for name, params in specs]


def white_rectangle(channels: int) -> tuple[np.ndarray, np.ndarray]:
    image = np.zeros((SIZE, SIZE, channels), np.uint8)
    image[8:18, 10:22] = 255
    return image, np.array([[10, 8, 22, 18]], np.float32)


def test_affine_moves_the_box_with_the_pixels():
    augment = build_box_augment(steps(("Affine", {"rotate": [-20, 20], "scale": [0.8, 1.2],
                                                  "translate_percent": [-0.15, 0.15], "p": 1.0})), seed=3)
    image, box = white_rectangle(1)
    moved = 0
    for _ in range(8):
        out, boxes, labels = augment(image, box, np.array([1]))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert boxes.dtype == np.float32 and labels.dtype == np.int64 and labels.tolist() == [1]
        ys, xs = np.nonzero(out[:, :, 0] > 127)
        white = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)  # pixel edges
        np.testing.assert_allclose(boxes[0], white, atol=1.5)  # encloses the white pixels, and tightly
        moved += not np.allclose(boxes, box)
    assert moved > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_horizontal_flip_mirrors_the_box_exactly(channels):
    augment = build_box_augment(steps(("HorizontalFlip", {"p": 1.0})))
    assert isinstance(augment, BoxAugment)
    image, box = white_rectangle(channels)
    out, boxes, labels = augment(image, box, np.array([0]))
    np.testing.assert_allclose(boxes, [[SIZE - 22, 8, SIZE - 10, 18]], atol=1e-4)
    assert np.array_equal(out, image[:, ::-1]) and labels.tolist() == [0]


def test_transform_without_box_support_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"augment\.strong\[1\]\.name: OverlayElements does not support bounding"):
        build_box_augment(steps(("Affine", {}), ("OverlayElements", {})), key="augment.strong")
    with pytest.raises(ConfigError, match=r"augment\[0\]\.name: 'NoSuchTransform'"):
        build_box_augment(steps(("NoSuchTransform", {})))
    with pytest.raises(ConfigError, match=r"augment\[0\]\.params"):
        build_box_augment(steps(("Affine", {"no_such_argument": 1})))
    assert build_box_augment([]) is None


def test_reseed_repeats_the_same_augmentations():
    augment = build_box_augment(steps(("Affine", {"rotate": [-30, 30], "translate_percent": [-0.2, 0.2], "p": 1.0}),
                                      ("GaussNoise", {"p": 1.0})))
    image, box = white_rectangle(3)

    def run(seed: int) -> list:
        augment.reseed(seed)
        return [augment(image, box, np.array([1])) for _ in range(3)]

    first, again, other = run(7), run(7), run(8)
    for (a, ba, _), (b, bb, _) in zip(first, again):
        assert np.array_equal(a, b) and np.array_equal(ba, bb)
    assert any(not np.array_equal(a, c) for (a, _, _), (c, _, _) in zip(first, other))


@pytest.mark.parametrize("pipeline", ["default", "strong"])
@pytest.mark.parametrize("channels", [1, 3])
def test_the_project_pipelines_augment_images_with_boxes(pipeline, channels):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())["augment"][pipeline]
    augment = build_box_augment([AugmentStep(s["name"], s.get("params", {})) for s in raw], seed=1,
                                key=f"augment.{pipeline}")
    image, box = white_rectangle(channels)
    for _ in range(6):
        out, boxes, labels = augment(image, box, np.array([1]))
        assert out.shape == image.shape and out.dtype == np.uint8
        assert boxes.shape == (len(labels), 4) and labels.dtype == np.int64
        assert np.all(boxes >= 0) and np.all(boxes <= SIZE) and np.all(boxes[:, 2:] > boxes[:, :2])
