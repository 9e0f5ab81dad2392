"""The built-in detection scenario (pipeline/data/scenes.py): shapes, boxes, balance, determinism,
ink inside its boxes, and the held-out honesty of the real side (scan pools and photo rows)."""

from __future__ import annotations

import dataclasses
import itertools
from pathlib import Path

import cv2
import numpy as np
import pytest

from pipeline.config import RenderParams, SceneParams
from pipeline.data import scenes
from pipeline.data.scenes import photo_rows, real_scene_sources, real_scenes, rendered_scenes, scan_pools

RP, SP = RenderParams(), SceneParams()
CLEAN_RP = dataclasses.replace(RP, noise_prob=0.0, clutter_prob=0.0)
SIDES = {"rendered": ("train", "val"), "real": ("train", "test")}


def _scenes(kind: str, count: int, seed: int = 0, split: str = "train", size: int = 32, channels: int = 1,
            rp: RenderParams = RP, sp: SceneParams = SP) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    if kind == "rendered":
        return list(rendered_scenes(count, seed, split, rp, sp, size, channels))
    return list(real_scenes(count, seed, split, sp, size, channels))


def _outside_boxes(shape: tuple[int, ...], boxes: np.ndarray) -> np.ndarray:
    mask = np.ones(shape[:2], bool)
    for x0, y0, x1, y1 in boxes.astype(int):
        mask[y0:y1, x0:x1] = False
    return mask


@pytest.mark.parametrize("kind", ["rendered", "real"])
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_scenes_have_the_promised_shapes_and_dtypes(kind, size, channels):
    items = _scenes(kind, 6, size=size, channels=channels)
    assert len(items) == 6
    for image, boxes, labels in items:
        assert image.shape == (size, size, channels) and image.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4
        assert labels.dtype == np.int64 and labels.shape == (len(boxes),)


def test_rgb_rendered_scenes_are_grey_and_grey_real_scenes_are_the_luminance_of_the_rgb_ones():
    for (grey, _, _), (rgb, _, _) in zip(_scenes("rendered", 4), _scenes("rendered", 4, channels=3)):
        assert all(np.array_equal(rgb[..., c], grey[..., 0]) for c in range(3))
    for (grey, gb, gl), (rgb, cb, cl) in zip(_scenes("real", 4), _scenes("real", 4, channels=3)):
        assert np.array_equal(grey[..., 0], cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
        assert np.array_equal(gb, cb) and np.array_equal(gl, cl)
        assert not np.array_equal(rgb[..., 0], rgb[..., 1])   # real photos are in colour


@pytest.mark.parametrize("kind", ["rendered", "real"])
@pytest.mark.parametrize("size, sp", [(32, SP), (48, SceneParams(objects=(2, 6), object_size=(0.2, 0.5)))])
def test_boxes_are_inside_the_canvas_positive_and_never_overlap(kind, size, sp):
    for image, boxes, labels in _scenes(kind, 150, size=size, sp=sp):
        assert 1 <= len(boxes) <= sp.objects[1]        # fewer than objects[0] only when a digit found no room
        assert np.array_equal(boxes, np.round(boxes))                   # pixel-edge coordinates
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= size).all()
        assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()
        for a, b in itertools.combinations(boxes, 2):                  # at least one pixel apart
            assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (a, b)


@pytest.mark.parametrize("kind", ["rendered", "real"])
def test_object_counts_stay_within_scene_objects_and_a_crowded_canvas_keeps_at_least_one(kind):
    counts = [len(b) for _, b, _ in _scenes(kind, 200)]
    assert min(counts) >= SP.objects[0] and max(counts) <= SP.objects[1]
    assert set(counts) == set(range(SP.objects[0], SP.objects[1] + 1))
    crowded = SceneParams(objects=(8, 8), object_size=(0.5, 0.55))   # eight half-canvas digits cannot fit
    counts = [len(b) for _, b, _ in _scenes(kind, 30, sp=crowded)]
    assert 1 <= min(counts) and max(counts) < 8


@pytest.mark.parametrize("kind", ["rendered", "real"])
def test_labels_are_digits_and_classes_are_balanced(kind):
    labels = np.concatenate([lab for _, _, lab in _scenes(kind, 300)])
    assert labels.min() >= 0 and labels.max() <= 9
    counts = np.bincount(labels, minlength=10)
    assert counts.min() >= 0.8 * counts.mean(), counts


@pytest.mark.parametrize("kind", ["rendered", "real"])
def test_scenes_are_deterministic_and_independent_of_how_many_are_drawn(kind):
    split = SIDES[kind][1]
    few, many, again = _scenes(kind, 5, 3, split), _scenes(kind, 50, 3, split), _scenes(kind, 5, 3, split)
    for a, b, c in zip(few, many, again):
        assert all(np.array_equal(x, y) and np.array_equal(x, z) for x, y, z in zip(a, b, c))
    other_seed, other_split = _scenes(kind, 5, 4, split), _scenes(kind, 5, 3, "train")
    assert all(not np.array_equal(a[0], b[0]) for a, b in zip(few, other_seed))
    assert all(not np.array_equal(a[0], b[0]) for a, b in zip(few, other_split))


def test_rendered_and_real_scenes_of_one_seed_have_different_layouts():
    rendered, real = _scenes("rendered", 20), _scenes("real", 20)
    assert sum(np.array_equal(a[1], b[1]) for a, b in zip(rendered, real)) <= 2


def test_rendered_ink_lies_inside_its_boxes():
    """Clean paper (no noise or clutter) is untouched outside the boxes; every box holds strong ink."""
    for image, boxes, _ in _scenes("rendered", 200, rp=CLEAN_RP):
        im = image[..., 0].astype(int)
        outside = im[_outside_boxes(im.shape, boxes)]
        paper = outside[0]
        assert RP.background[0] <= paper <= RP.background[1] and (outside == paper).all()
        for x0, y0, x1, y1 in boxes.astype(int):
            box = np.abs(im[y0:y1, x0:x1] - paper)
            assert box.max() >= 100                                   # ink >= 190 on paper <= 40
            assert box[0].max() > 0 and box[-1].max() > 0 and box[:, 0].max() > 0 and box[:, -1].max() > 0


def test_rendered_background_with_noise_and_clutter_stays_close_to_the_paper():
    far = []
    for image, boxes, _ in _scenes("rendered", 200):
        outside = image[..., 0][_outside_boxes(image.shape, boxes)].astype(int)
        far.append(np.mean(np.abs(outside - np.median(outside)) > 40))
    assert np.mean(far) < 0.02


def test_real_ink_lies_inside_its_boxes_on_an_untouched_photo_crop():
    """Outside the boxes a real scene is exactly its photo crop; inside, the ink changes it strongly."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    photos = {Path(f).name: im for f, im in zip(bunch.filenames, bunch.images)}
    items = _scenes("real", 100, channels=3, split="test")
    for (image, boxes, _), source in zip(items, real_scene_sources(100, 0, "test", SP, 32)):
        row, col, side = source.window
        crop = photos[source.photo][row:row + side, col:col + side]
        crop = cv2.resize(crop[:, ::-1] if source.flipped else crop, (32, 32), interpolation=cv2.INTER_AREA)
        outside = _outside_boxes(image.shape, boxes)
        assert np.array_equal(image[outside], crop[outside])
        grey_image, grey_crop = (cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY).astype(int)
                                 for x in (image, crop))
        for x0, y0, x1, y1 in boxes.astype(int):
            assert np.abs(grey_image - grey_crop)[y0:y1, x0:x1].max() >= 50


def test_scan_pools_are_disjoint_stratified_and_fixed_whatever_the_seed():
    from sklearn.datasets import load_digits

    labels = load_digits().target
    pools = scan_pools()
    assert not set(pools["train"]) & set(pools["test"])
    assert sorted(np.concatenate([pools["train"], pools["test"]]).tolist()) == list(range(len(labels)))
    for c in range(10):
        share = np.isin(np.flatnonzero(labels == c), pools["test"]).mean()
        assert 0.27 <= share <= 0.33
    scan_pools.cache_clear()
    np.random.seed(123)   # no global random state is involved
    assert all(np.array_equal(pools[s], scan_pools()[s]) for s in ("train", "test"))
    for seed, split in itertools.product((0, 7), ("train", "test")):
        used = {s for source in real_scene_sources(60, seed, split, SP, 32) for s in source.scans}
        assert used <= set(pools[split].tolist())


def test_train_and_test_photo_regions_are_disjoint():
    first_train, last_train = photo_rows("train", 427)
    first_test, last_test = photo_rows("test", 427)
    assert first_train == 0 and last_train == first_test and last_test == 427
    for split, (first, last) in (("train", (first_train, last_train)), ("test", (first_test, last_test))):
        windows = [source.window for source in real_scene_sources(150, 5, split, SP, 32)]
        assert all(first <= row and row + side <= last and col + side <= 640 for row, col, side in windows)
        assert {source.photo for source in real_scene_sources(20, 5, split, SP, 32)} == {"china.jpg", "flower.jpg"}


def test_unknown_splits_are_refused():
    with pytest.raises(ValueError, match="split"):
        next(rendered_scenes(1, 0, "test", RP, SP, 32, 1))
    with pytest.raises(ValueError, match="split"):
        next(real_scenes(1, 0, "val", SP, 32, 1))


def test_describe_names_what_is_real():
    text = scenes.describe()
    assert "load_digits" in text and "china.jpg" in text and "composited" in text
