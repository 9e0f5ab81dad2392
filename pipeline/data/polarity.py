"""Ink polarity: whether a domain draws light objects on a dark background or dark ones on a light one.

A simulator often renders light ink on black (or the reverse of what the camera sees: dark ink on
white paper). No feature-level adaptation undoes a sign flip of every pixel: on the suite's ``grey``
scenario (light renders, dark-ink scans) every variant stayed near chance (pick 0.104, oracle 0.994).
prepare measures each side's polarity on a sample of *training* images (labels never read; the test
split never opened) and, when they are clearly opposite, writes the renders inverted, so every stage
downstream sees the polarity of the real images and the shipped model reads real images unchanged.

Per image, with ``g`` its grey levels in [0, 1] and ``b`` those of its border (the outer ring of
``max(1, size // 8)`` pixels, where a centred object rarely reaches):

    s(image)  = sign(mean(g) - median(b))       +1: lighter ink than background, -1: darker
    polarity  = mean of s over the sample       in [-1, 1]

Two domains are *opposite* when their polarities have opposite signs and both are at least
``AGREEMENT`` in size (``0.5``: three images in four agree). A domain without one polarity, such as
digits blended into photos where the ink is the inverted photo (MNIST-M), scores near 0, and nothing
is inverted.

prepare records what it measured and did in ``<prepared>/polarity.json``; the GAN's exported
generator carries ``source_inverted`` in its meta, so ``sim2real-translate`` inverts a folder of raw
renders the same way before translating it (a prepared split is already inverted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

AGREEMENT = 0.5       # |polarity| from which a domain is taken to have one ink polarity
SAMPLE = 256          # images per side measured
POLARITY_FILE = "polarity.json"   # prepare's record in the prepared folder: what it measured and did


def ink_sign(image: np.ndarray) -> int:
    """``+1`` when the image's mean is lighter than its border's median (light ink on a dark
    background), ``-1`` when darker, ``0`` when equal (an image of one grey level)."""
    grey = image.astype(np.float32).mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    ring = max(1, min(grey.shape) // 8)
    border = np.concatenate([grey[:ring].ravel(), grey[-ring:].ravel(),
                             grey[ring:-ring, :ring].ravel(), grey[ring:-ring, -ring:].ravel()])
    return int(np.sign(grey.mean() - np.median(border)))


def polarity(images: Iterable[np.ndarray]) -> float:
    """The mean of :func:`ink_sign` over ``images`` (0.0 for none)."""
    signs = [ink_sign(image) for image in images]
    return float(np.mean(signs)) if signs else 0.0


def opposite(source: float, target: float, agreement: float = AGREEMENT) -> bool:
    """True when both domains have a clear polarity and the two differ."""
    return min(abs(source), abs(target)) >= agreement and source * target < 0


def invert(image: np.ndarray) -> np.ndarray:
    """The image's negative, ``255 - image`` (uint8)."""
    return (255 - image.astype(np.int16)).astype(np.uint8)


def renders_inverted(prepared: str | Path) -> bool:
    """Whether prepare wrote the renders of the ``prepared`` folder inverted (False when it left no
    record: a folder prepared before the record existed, or for detection)."""
    path = Path(prepared) / POLARITY_FILE
    return path.is_file() and bool(json.loads(path.read_text()).get("inverted_source", False))
