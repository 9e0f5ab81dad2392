"""The built-in ``digits`` scenario: a procedural digit renderer (the simulator) and real scans.

*Synthetic*: OpenCV's Hershey vector fonts (every face, optionally italic) drawn with random scale,
rotation, translation, stroke thickness, ink and paper grey levels, and optional Gaussian blur,
Gaussian noise and background clutter. Every image has its own seed derived from
``(seed, split, index)``, so a set is deterministic and independent of how it is consumed.

*Real*: scikit-learn's bundled ``load_digits`` (1,797 real 8x8 scans, 16 grey levels), no download.
"""

from __future__ import annotations

from typing import Iterator

import cv2
import numpy as np

from pipeline.config import RenderParams

HERSHEY_FACES = (
    cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_PLAIN, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_COMPLEX,
    cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL, cv2.FONT_HERSHEY_SCRIPT_SIMPLEX,
    cv2.FONT_HERSHEY_SCRIPT_COMPLEX,
)
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def _fit_channels(gray: np.ndarray, channels: int) -> np.ndarray:
    return gray[:, :, None] if channels == 1 else np.repeat(gray[:, :, None], 3, axis=2)


def render_digit(digit: int, rng: np.random.Generator, rp: RenderParams) -> np.ndarray:
    """One ``canvas x canvas`` uint8 grey image of ``digit`` drawn with randomly sampled pose and style."""
    c = rp.canvas
    face = int(HERSHEY_FACES[rng.integers(len(HERSHEY_FACES))])
    if rng.random() < rp.italic_prob:
        face |= cv2.FONT_ITALIC
    thickness = int(rng.integers(rp.thickness[0], rp.thickness[1] + 1))
    ink = int(rng.integers(rp.foreground[0], rp.foreground[1] + 1))
    paper = int(rng.integers(rp.background[0], rp.background[1] + 1))

    # Size the glyph: scale its height (at font scale 1) to the sampled fraction of the canvas.
    text = str(digit)
    (w1, h1), _ = cv2.getTextSize(text, face, 1.0, thickness)
    font_scale = rng.uniform(*rp.scale) * c / max(h1, 1)
    (w, h), base = cv2.getTextSize(text, face, font_scale, thickness)
    big = 2 * c
    glyph = np.full((big, big), paper, np.uint8)
    origin = ((big - w) // 2, (big + h) // 2)
    cv2.putText(glyph, text, origin, face, font_scale, ink, thickness, cv2.LINE_AA)

    if rng.random() < rp.clutter_prob:
        for _ in range(int(rng.integers(1, 4))):
            level = int(rng.integers(paper, max(paper + 1, ink // 2)))
            p1, p2 = rng.integers(0, big, size=2), rng.integers(0, big, size=2)
            if rng.random() < 0.5:
                cv2.line(glyph, tuple(int(v) for v in p1), tuple(int(v) for v in p2), level, 1, cv2.LINE_AA)
            else:
                cv2.circle(glyph, tuple(int(v) for v in p1), int(rng.integers(2, c // 3)), level, 1, cv2.LINE_AA)

    angle = rng.uniform(-rp.rotation_deg, rp.rotation_deg)
    shift = rng.uniform(-rp.translate, rp.translate, size=2) * c
    m = cv2.getRotationMatrix2D((big / 2, big / 2), angle, 1.0)
    m[:, 2] += shift - (big - c) / 2  # rotate about the centre, then crop the central canvas
    img = cv2.warpAffine(glyph, m, (c, c), flags=cv2.INTER_LINEAR, borderValue=paper)

    if rng.random() < rp.blur_prob:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*rp.blur_sigma))
    if rng.random() < rp.noise_prob:
        noise = rng.normal(0.0, rng.uniform(*rp.noise_std) * 255.0, size=img.shape)
        img = np.clip(img.astype(np.float64) + noise, 0, 255).astype(np.uint8)
    return img


def rendered_digits(count: int, seed: int, split: str, rp: RenderParams, size: int,
                    channels: int) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``count`` ``(image (size, size, channels) uint8, label)`` pairs, classes balanced.

    Labels cycle through 0..9 in a seeded order; image ``i`` depends only on ``(seed, split, i)``.
    """
    order = np.random.default_rng([seed, SPLIT_IDS[split], 99]).permutation(count) % 10
    for i in range(count):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], i])
        label = int(order[i])
        img = render_digit(label, rng, rp)
        img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        yield _fit_channels(img, channels), label


def real_digits(size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 real 8x8 digit scans as ``(N, size, size, channels)`` uint8 and labels."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.clip(bunch.images * (255.0 / 16.0), 0, 255).astype(np.uint8)
    resized = np.stack([cv2.resize(im, (size, size), interpolation=cv2.INTER_LINEAR) for im in images])
    return np.stack([_fit_channels(im, channels) for im in resized]), bunch.target.astype(np.int64)
