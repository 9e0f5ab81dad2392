"""The built-in offline detection scenario: several digits per canvas, with exact boxes.

*Synthetic* (:func:`rendered_scenes`, splits ``train`` / ``val``): a paper-grey canvas in the
simulator's style (grey level from ``render.background``, optional clutter and Gaussian noise as in
:func:`~pipeline.data.digits.render_digit`) holding digits drawn by ``render_digit`` itself (its fonts,
italics, stroke, rotation and blur), each cropped to its ink, resized to a random height and
alpha-composited by its ink mask.

*Real* (:func:`real_scenes`, splits ``train`` / ``test``): scikit-learn's real 8x8 handwritten scans
(``load_digits``) on crops of its two bundled real photographs (``load_sample_images``: china.jpg and
flower.jpg), in the style of MNIST-M. The scans are split once into a train and a test pool (a fixed,
class-stratified permutation that does not depend on the seed), and so are the photos' rows (top 60%
for train crops, bottom 40% for test crops): a test scene shares neither a scan nor a photo pixel
with any training scene.

Both sides: ``K`` digits per canvas, uniform in ``scene.objects``; a digit's height is uniform in
``scene.object_size`` times the canvas (aspect kept); positions are uniform, with rejection sampling
so that no two boxes overlap (a digit that finds no place is dropped, never the first one); a box is
the tight extent of the pasted ink, in pixel-edge ``xyxy`` coordinates (``x1 = last ink column + 1``),
as torchvision expects. Labels are balanced: the digits of consecutive scenes take consecutive slots of
a sequence made of seeded permutations of 0..9. Scene ``i`` depends only on ``(seed, split, i)`` (and
the object counts of the scenes before it, which depend only on theirs), never on how many are drawn.
:func:`describe` states what is real and what is composited.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable, Iterator, NamedTuple

import cv2
import numpy as np

from pipeline.config import RenderParams, SceneParams
from pipeline.data.digits import SPLIT_IDS, _fit_channels, render_digit

Scene = tuple[np.ndarray, np.ndarray, np.ndarray]   # image (S, S, C) uint8, boxes (K, 4) float32, labels (K,) int64

SYNTHETIC_SPLITS = ("train", "val")
REAL_SPLITS = ("train", "test")

# Independent random streams: the last element of every ``[seed, split, index or block, stream]`` seed
# sequence (numpy ignores trailing zeros, so none is 0, which would collide with rendered_digits' ``[seed, split, i]``).
_STREAM_RENDERED, _STREAM_RENDERED_COUNT, _STREAM_RENDERED_LABELS = 1, 2, 3
_STREAM_REAL, _STREAM_REAL_COUNT, _STREAM_REAL_LABELS = 4, 5, 6

MIN_OBJECT_PX = 4           # no digit is shorter than this many pixels, whatever the canvas
INK_THRESHOLD = 0.1         # a pixel is ink when its ink opacity exceeds this (tight crop of a glyph or scan)
ALPHA_FLOOR = 0.05          # after resizing, opacity below this fraction of the patch's peak is dropped
MAX_GLYPH_SCALE = 0.8       # render_digit's glyph height cap, so a rotated glyph never touches its canvas edge

SCAN_TEST_FRACTION = 0.3    # of each class's scans, held out for the test scenes
SCAN_SPLIT_SEED = 20_240_917  # fixed: the scan pools never depend on the pipeline's seed
PHOTO_TRAIN_ROWS = 0.6      # top fraction of each photo's rows for train crops; the rest for test crops
PHOTO_CROP_SIDE = (48, 168)  # square crop side in photo pixels (fits the 171 test rows), then resized
INK_PULL = (0.5, 0.8)       # how far the inverted photo is pulled to black / white under the ink (see _real_ink)


class RealSceneSource(NamedTuple):
    """Where a real scene's pixels come from: the photo crop and the ``load_digits`` scan indices."""

    photo: str                  # "china.jpg" or "flower.jpg"
    window: tuple[int, int, int]  # (row, column, side) of the square crop in the photo
    flipped: bool               # crop mirrored left-right
    scans: tuple[int, ...]      # load_digits indices of the placed digits, in box order


# ------------------------------------------------------------------------------------------------
# Shared: labels, sizes, placement, compositing
# ------------------------------------------------------------------------------------------------


def _check(split: str, allowed: tuple[str, ...], sp: SceneParams, size: int, channels: int) -> None:
    """Refuse a split, scene parameters, size or channel count this scenario cannot honour."""
    if split not in allowed:
        raise ValueError(f"split: expected one of {allowed}, got {split!r}")
    lo, hi = sp.objects
    if not 1 <= lo <= hi:
        raise ValueError(f"scene.objects: expected [min, max] with 1 <= min <= max, got {sp.objects!r}")
    if not 0 < sp.object_size[0] <= sp.object_size[1] <= 1:
        raise ValueError(f"scene.object_size: expected [min, max] with 0 < min <= max <= 1, got {sp.object_size!r}")
    if size < 2 * MIN_OBJECT_PX:
        raise ValueError(f"size: expected at least {2 * MIN_OBJECT_PX} pixels, got {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels: expected 1 or 3, got {channels}")


def _balanced_labels(seed: int, split: str, stream: int) -> Iterator[int]:
    """An endless label sequence whose every block of 10 is a seeded permutation of 0..9."""
    for block in itertools.count():
        yield from np.random.default_rng([seed, SPLIT_IDS[split], block, stream]).permutation(10).tolist()


def _scene_labels(rng: np.random.Generator, labels: Iterator[int], sp: SceneParams) -> list[int]:
    """Draw this scene's object count uniformly in ``sp.objects`` and take that many labels."""
    k = int(rng.integers(sp.objects[0], sp.objects[1] + 1))
    return list(itertools.islice(labels, k))


def _resize(patch: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize with area averaging when shrinking, bilinear interpolation when enlarging."""
    shrink = height * width < patch.shape[0] * patch.shape[1]
    return cv2.resize(patch, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _tight(alpha: np.ndarray) -> np.ndarray:
    """Crop an opacity map to the extent of its ink (opacity above INK_THRESHOLD)."""
    rows, cols = np.flatnonzero((alpha > INK_THRESHOLD).any(1)), np.flatnonzero((alpha > INK_THRESHOLD).any(0))
    if len(rows) == 0:
        raise ValueError("a digit without ink")
    return alpha[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _sized(alpha: np.ndarray, rng: np.random.Generator, sp: SceneParams, size: int) -> np.ndarray:
    """The tight ink crop resized to a height drawn from ``sp.object_size * size``, its aspect kept."""
    ink = _tight(alpha)
    height = max(MIN_OBJECT_PX, int(round(rng.uniform(*sp.object_size) * size)))
    width = max(1, int(round(height * ink.shape[1] / ink.shape[0])))
    fit = min(1.0, (size - 1) / height, (size - 1) / width)   # a wide digit at a large height still fits
    height, width = max(1, int(height * fit)), max(1, int(width * fit))
    out = np.clip(_resize(ink, height, width), 0.0, 1.0)
    out[out < ALPHA_FLOOR * out.max()] = 0.0
    return out


def _place(rng: np.random.Generator, shapes: list[tuple[int, int]], size: int) -> list[tuple[int, int] | None]:
    """Top-left corners for patches of ``shapes`` (largest first), at least one pixel apart, or None.

    Rejection sampling without the loop: each patch's corner is drawn uniformly among all the corners
    that keep it inside the canvas and clear of the patches already placed (what rejection sampling with
    unlimited tries would draw). A patch with no such corner is dropped; the first (largest) one always
    fits, being smaller than the canvas, so no scene is left empty.
    """
    corners: list[tuple[int, int] | None] = [None] * len(shapes)
    placed: list[tuple[int, int, int, int]] = []          # y0, x0, y1, x1 (exclusive) of placed patches
    for i in sorted(range(len(shapes)), key=lambda j: -shapes[j][0] * shapes[j][1]):
        h, w = shapes[i]
        free = np.ones((size - h + 1, size - w + 1), bool)
        for y0, x0, y1, x1 in placed:   # a one-pixel gap: touching patches would share a box edge
            free[max(0, y0 - h):y1 + 1, max(0, x0 - w):x1 + 1] = False
        options = np.flatnonzero(free)
        if len(options):
            y, x = divmod(int(options[rng.integers(len(options))]), free.shape[1])
            corners[i] = (y, x)
            placed.append((y, x, y + h, x + w))
    return corners


def _paste(canvas: np.ndarray, alpha: np.ndarray, ink: np.ndarray | float, corner: tuple[int, int]) -> np.ndarray:
    """Alpha-blend ``ink`` into ``canvas`` (float, in place) by ``alpha``; the box of the pasted ink."""
    (y, x), (h, w) = corner, alpha.shape
    region = canvas[y:y + h, x:x + w]
    a = alpha[:, :, None] if canvas.ndim == 3 else alpha
    region += a * (ink - region)
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    return np.array([x + cols[0], y + rows[0], x + cols[-1] + 1, y + rows[-1] + 1], np.float32)


def _compose(canvas: np.ndarray, patches: list[np.ndarray], labels: list[int], rng: np.random.Generator,
             ink_of: Callable[[int, tuple[int, int]], np.ndarray | float]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Place and paste every patch that fits; ``ink_of(i, corner)`` gives patch ``i``'s ink colour.

    Returns boxes (K, 4), labels (K,) and the indices of the patches kept, in input order.
    """
    corners = _place(rng, [p.shape for p in patches], canvas.shape[0])
    kept = [i for i, c in enumerate(corners) if c is not None]
    boxes = [_paste(canvas, patches[i], ink_of(i, corners[i]), corners[i]) for i in kept]
    return np.stack(boxes).astype(np.float32), np.array([labels[i] for i in kept], np.int64), kept


def _to_uint8(canvas: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# Synthetic: render_digit glyphs on simulator paper
# ------------------------------------------------------------------------------------------------


def _glyph_params(rp: RenderParams) -> RenderParams:
    """The simulator's params for one isolated glyph: centred, no larger than MAX_GLYPH_SCALE of its
    canvas (the scene sets its size), no per-glyph noise or clutter (the scene applies them to the canvas)."""
    scale = (min(rp.scale[0], MAX_GLYPH_SCALE), min(rp.scale[1], MAX_GLYPH_SCALE))
    return dataclasses.replace(rp, scale=scale, translate=0.0, noise_prob=0.0, clutter_prob=0.0)


def _glyph(label: int, rng: np.random.Generator, rp: RenderParams) -> tuple[np.ndarray, float]:
    """``render_digit``'s glyph as an ink opacity map in [0, 1] and its ink grey level."""
    img = render_digit(label, rng, rp).astype(np.float32)
    paper = float(np.median([img[0, 0], img[0, -1], img[-1, 0], img[-1, -1]]))
    lo, hi = float(img.min()), float(img.max())
    ink = hi if hi - paper >= paper - lo else lo           # ink lighter or darker than the paper
    if ink == paper:
        raise ValueError(f"render_digit drew no ink for {label}")
    return np.clip((img - paper) / (ink - paper), 0.0, 1.0), ink


def _paper(rng: np.random.Generator, rp: RenderParams, size: int) -> np.ndarray:
    """A ``size x size`` float canvas of simulator paper, with the simulator's clutter at its rate."""
    paper = int(rng.integers(rp.background[0], rp.background[1] + 1))
    canvas = np.full((size, size), paper, np.uint8)
    if rng.random() < rp.clutter_prob:
        ink = int(rng.integers(rp.foreground[0], rp.foreground[1] + 1))
        for _ in range(int(rng.integers(1, 4))):
            level = int(rng.integers(min(paper, ink // 2), max(paper, ink // 2) + 1))   # fainter than ink
            p1, p2 = (tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2))
            if rng.random() < 0.5:
                cv2.line(canvas, p1, p2, level, 1, cv2.LINE_AA)
            else:
                cv2.circle(canvas, p1, int(rng.integers(2, max(3, size // 6))), level, 1, cv2.LINE_AA)
    return canvas.astype(np.float32)


def _rendered_scene(seed: int, split: str, index: int, labels: list[int], rp: RenderParams, sp: SceneParams,
                    size: int) -> Scene:
    """One synthetic grey scene (``(size, size)`` uint8) holding ``labels`` (those that fit)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, _STREAM_RENDERED])
    canvas = _paper(rng, rp, size)
    glyph_rp = _glyph_params(rp)
    glyphs = [_glyph(label, rng, glyph_rp) for label in labels]
    patches = [_sized(alpha, rng, sp, size) for alpha, _ in glyphs]
    boxes, kept_labels, _ = _compose(canvas, patches, labels, rng, lambda i, corner: glyphs[i][1])
    if rng.random() < rp.noise_prob:
        canvas += rng.normal(0.0, rng.uniform(*rp.noise_std) * 255.0, canvas.shape).astype(np.float32)
    return _to_uint8(canvas), boxes, kept_labels


def rendered_scenes(count: int, seed: int, split: str, rp: RenderParams, sp: SceneParams, size: int,
                    channels: int) -> Iterator[Scene]:
    """Yield ``count`` synthetic scenes ``(image (size, size, channels) uint8, boxes (K, 4) float32 xyxy,
    labels (K,) int64)``; ``split`` is ``train`` or ``val``. See the module docstring."""
    _check(split, SYNTHETIC_SPLITS, sp, size, channels)
    labels = _balanced_labels(seed, split, _STREAM_RENDERED_LABELS)
    for i in range(count):
        k_rng = np.random.default_rng([seed, SPLIT_IDS[split], i, _STREAM_RENDERED_COUNT])
        image, boxes, scene_labels = _rendered_scene(seed, split, i, _scene_labels(k_rng, labels, sp), rp, sp, size)
        yield _fit_channels(image, channels), boxes, scene_labels


# ------------------------------------------------------------------------------------------------
# Real: load_digits scans on crops of load_sample_images photos
# ------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _scans() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 scans as ink opacity in [0, 1] (float32) and their labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)
    images.flags.writeable = False
    return images, bunch.target.astype(np.int64)


@functools.lru_cache(maxsize=1)
def scan_pools() -> dict[str, np.ndarray]:
    """``{"train": indices, "test": indices}`` into ``load_digits``: a fixed class-stratified split
    (SCAN_TEST_FRACTION of each class held out for test), the same whatever the pipeline's seed."""
    _, labels = _scans()
    rng = np.random.default_rng(SCAN_SPLIT_SEED)
    test = []
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c))
        test.extend(members[:int(round(SCAN_TEST_FRACTION * len(members)))].tolist())
    is_test = np.zeros(len(labels), bool)
    is_test[test] = True
    pools = {"train": np.flatnonzero(~is_test), "test": np.flatnonzero(is_test)}
    for p in pools.values():
        p.flags.writeable = False
    return pools


@functools.lru_cache(maxsize=1)
def _pools_by_class() -> dict[str, list[np.ndarray]]:
    """Each split's scan pool, by class."""
    _, labels = _scans()
    return {split: [pool[labels[pool] == c] for c in range(10)] for split, pool in scan_pools().items()}


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[tuple[str, np.ndarray], ...]:
    """scikit-learn's two bundled real photographs, ``(name, (427, 640, 3) uint8 RGB)``."""
    from pathlib import Path

    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    return tuple((Path(f).name, im) for f, im in zip(bunch.filenames, bunch.images))


def photo_rows(split: str, height: int) -> tuple[int, int]:
    """The ``[first, last)`` rows of a photo of ``height`` rows that ``split``'s crops may cover."""
    boundary = int(round(PHOTO_TRAIN_ROWS * height))
    return (0, boundary) if split == "train" else (boundary, height)


def _photo_crop(rng: np.random.Generator, split: str, size: int) -> tuple[np.ndarray, str, tuple[int, int, int], bool]:
    """A random square crop of a random photo within ``split``'s rows, resized to ``size``, as float RGB."""
    name, photo = _photos()[int(rng.integers(len(_photos())))]
    first, last = photo_rows(split, photo.shape[0])
    side = int(rng.integers(PHOTO_CROP_SIDE[0], min(PHOTO_CROP_SIDE[1], last - first) + 1))
    row = int(rng.integers(first, last - side + 1))
    col = int(rng.integers(0, photo.shape[1] - side + 1))
    flipped = bool(rng.random() < 0.5)
    crop = photo[row:row + side, col:col + side]
    crop = _resize(crop[:, ::-1] if flipped else crop, size, size)
    return crop.astype(np.float32), name, (row, col, side), flipped


def _real_ink(local: np.ndarray, pull: float) -> np.ndarray:
    """The ink colour over a photo region: the photo inverted (MNIST-M's colour change), then pulled by
    ``pull`` towards black on a bright region or towards white on a dark one (legible in luminance too)."""
    luminance = float((local.reshape(-1, 3) @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
    inverted = 255.0 - local
    target = 0.0 if luminance >= 127.5 else 255.0
    return inverted + pull * (target - inverted)


def _real_scene(seed: int, split: str, index: int, labels: list[int], sp: SceneParams,
                size: int) -> tuple[Scene, RealSceneSource]:
    """One real RGB scene and where its pixels come from."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, _STREAM_REAL])
    canvas, photo, window, flipped = _photo_crop(rng, split, size)
    images, _ = _scans()
    pools = _pools_by_class()[split]
    scan_ids = [int(rng.choice(pools[label])) for label in labels]
    patches = [_sized(images[s], rng, sp, size) for s in scan_ids]
    pulls = rng.uniform(*INK_PULL, len(labels))

    def ink_of(i: int, corner: tuple[int, int]) -> np.ndarray:
        (y, x), (h, w) = corner, patches[i].shape
        return _real_ink(canvas[y:y + h, x:x + w], float(pulls[i]))

    boxes, kept_labels, kept = _compose(canvas, patches, labels, rng, ink_of)
    source = RealSceneSource(photo, window, flipped, tuple(scan_ids[i] for i in kept))
    return (_to_uint8(canvas), boxes, kept_labels), source


def _real_items(count: int, seed: int, split: str, sp: SceneParams, size: int,
                channels: int) -> Iterator[tuple[Scene, RealSceneSource]]:
    """Real scenes in the requested channels, each with its source."""
    _check(split, REAL_SPLITS, sp, size, channels)
    labels = _balanced_labels(seed, split, _STREAM_REAL_LABELS)
    for i in range(count):
        k_rng = np.random.default_rng([seed, SPLIT_IDS[split], i, _STREAM_REAL_COUNT])
        (rgb, boxes, scene_labels), source = _real_scene(seed, split, i, _scene_labels(k_rng, labels, sp), sp, size)
        image = rgb if channels == 3 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[:, :, None]
        yield (image, boxes, scene_labels), source


def real_scenes(count: int, seed: int, split: str, sp: SceneParams, size: int, channels: int) -> Iterator[Scene]:
    """Yield ``count`` real scenes ``(image (size, size, channels) uint8, boxes (K, 4) float32 xyxy,
    labels (K,) int64)``; ``split`` is ``train`` or ``test``; grey output is the composite's luminance."""
    for scene, _ in _real_items(count, seed, split, sp, size, channels):
        yield scene


def real_scene_sources(count: int, seed: int, split: str, sp: SceneParams, size: int) -> Iterator[RealSceneSource]:
    """The sources (photo window, scan indices) of the scenes :func:`real_scenes` yields for the same args."""
    for _, source in _real_items(count, seed, split, sp, size, 3):
        yield source


def describe() -> str:
    """What is real and what is composited in this scenario (quoted by docs/results.md)."""
    pools = scan_pools()
    names = ", ".join(name for name, _ in _photos())
    return (
        "Detection scenario 'digits' (built in, offline).\n"
        "Synthetic scenes: everything is simulated. Digits are drawn by the classification scenario's renderer "
        "(OpenCV Hershey fonts, random stroke, rotation, italics, blur), cropped to their ink, resized and "
        "alpha-composited onto simulator paper (grey level, clutter and noise as the renderer's).\n"
        f"Real scenes: the digit pixels are real handwriting, scikit-learn's load_digits 8x8 scans "
        f"({len(pools['train'])} in the train pool, {len(pools['test'])} held out for test, a fixed class-stratified "
        f"split), and the backgrounds are real photographs ({names}; crops of the top {PHOTO_TRAIN_ROWS:.0%} of rows "
        f"for train, of the rest for test, sides {PHOTO_CROP_SIDE[0]}-{PHOTO_CROP_SIDE[1]} px). The scenes themselves "
        "are composited, not photographed: scans upsampled from 8x8, positions, sizes and object counts drawn at "
        "random, and the ink blended MNIST-M-style (the photo inverted under the ink, pulled towards black on bright "
        "regions or white on dark ones), so real-world effects such as lighting, perspective, occlusion and "
        "camera blur on the digits are absent.\n"
        "Both: digits never overlap; a box is the tight extent of the pasted ink."
    )
