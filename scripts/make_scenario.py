"""Write a digits scenario *unlike* the built-in one as user folders, to check that defaults travel.

    .venv/bin/python scripts/make_scenario.py photo /tmp/scenario      # then: see the printed params

Scenarios (everything from what ships offline: the project's renderer, scikit-learn's scans and
its two sample photographs):

``photo``   MNIST-M style, RGB: the source is the renderer's grey digits (3,000 images, 40 px canvas
            resized by prepare); the real side is scikit-learn's scans blended into random crops of
            the sample photographs (|photo - digit| per channel, as MNIST-M does), labelled, in an
            imagefolder. Class names are words ("zero" ... "nine").
``grey``    grey 24 px: source renders with thin strokes only, real scans inverted (dark ink on
            light paper), class names "d0" ... "d9".

Both are plugged in as the README's "Your own data" says: ``imagefolder`` folders and a params
file; ``--params`` prints the ``data``/``variants`` sections to use (everything else default).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from pipeline.config import RenderParams
from pipeline.data.digits import real_digits, render_digit
from pipeline.io import save_png

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]


def _write(folder: Path, images, labels, names) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(image, folder / names[label] / f"{i:05d}.png")


def photo(out: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rp = RenderParams(canvas=40)
    labels = rng.permutation(3000) % 10
    _write(out / "sim", (render_digit(int(k), np.random.default_rng([seed, i]), rp) for i, k in enumerate(labels)),
           labels, WORDS)
    photos = _photos()
    digits, targets = real_digits(28, 1)

    def blend(d: np.ndarray) -> np.ndarray:
        p = photos[rng.integers(len(photos))]
        y, x = rng.integers(0, p.shape[0] - 28), rng.integers(0, p.shape[1] - 28)
        crop = p[y:y + 28, x:x + 28].astype(np.int16)
        return np.abs(crop - d.astype(np.int16)).astype(np.uint8)

    _write(out / "real", (blend(d) for d in digits), targets, WORDS)
    return {"data": {"image_size": 28, "channels": 3, "classes": WORDS,
                     "source": {"format": "imagefolder", "root": str(out / "sim")},
                     "target": {"format": "imagefolder", "root": str(out / "real")}}}


def grey(out: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    rp = RenderParams(canvas=48, thickness=(1, 2))
    names = [f"d{k}" for k in range(10)]
    labels = rng.permutation(4000) % 10
    _write(out / "sim", (render_digit(int(k), np.random.default_rng([seed, i]), rp) for i, k in enumerate(labels)),
           labels, names)
    digits, targets = real_digits(24, 1)
    _write(out / "real", (255 - d[:, :, 0] for d in digits), targets, names)
    return {"data": {"image_size": 24, "channels": 1, "classes": names,
                     "source": {"format": "imagefolder", "root": str(out / "sim")},
                     "target": {"format": "imagefolder", "root": str(out / "real")}}}


SCENARIOS = {"photo": photo, "grey": grey}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario", choices=sorted(SCENARIOS))
    ap.add_argument("out", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    data = SCENARIOS[args.scenario](args.out, args.seed)
    import yaml

    print(yaml.safe_dump(data, sort_keys=False))


if __name__ == "__main__":
    main()
