"""Write one scenario of the suite as user folders: a labelled source and a labelled real set, each
a *different* kind of sim-to-real shift, built offline from what ships with our dependencies.

    .venv/bin/python scripts/make_scenario.py fonts /tmp/fonts      # prints the params.yaml data section

Scenarios are data, not code paths: each is plugged in as the README's "Your own data" says
(``imagefolder`` folders and a ``data`` section; every other default kept), except ``builtin``,
which is the project's own default scenario (the renderer and scikit-learn's scans, no folders).
The real side is always labelled; prepare holds ``data.target.test_fraction`` of it out for
evaluate. Sizes, counts and class names differ from the built-in scenario on purpose.

``builtin``     the default scenario of params.yaml (Hershey renders -> scikit-learn's 8x8 scans), 32 px.
``grey``        polarity: thin-stroke renders (light on dark) -> the scans inverted (dark ink on light
                paper), 24 px, 4,000 renders, classes "d0" ... "d9".
``photo``       MNIST-M style, RGB: grey renders -> the scans blended into crops of scikit-learn's two
                sample photographs (|photo - digit| per channel), 28 px, 3,000 renders, classes "zero" ...
``fonts``       another simulator's look: TrueType digits (the DejaVu, Computer Modern and STIX faces
                that ship with matplotlib; thin strokes, varied size and pose) -> the scans, 28 px,
                2,500 renders.
``camera``      a camera-like degradation: renders -> the scans through blur, a low-resolution sensor,
                exposure gain, noise and JPEG, 20 px.
``imbalanced``  a class-imbalanced real set: the scans thinned to a long tail (the most frequent class
                about 12x the rarest, in a seeded class order), 24 px.
``small``       a small real set: 400 scans in all (280 unlabelled for training), 28 px, 2,000 renders.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from pipeline.config import RenderParams
from pipeline.data.digits import real_digits, render_digit
from pipeline.io import save_png

WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGITS = [str(k) for k in range(10)]
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
              "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf",
              "cmti10.ttf", "STIXGeneral.ttf", "STIXGeneralItalic.ttf")


def _write(folder: Path, images, labels, names) -> None:
    for i, (image, label) in enumerate(zip(images, labels)):
        save_png(image, folder / names[int(label)] / f"{i:05d}.png")


def _renders(out: Path, count: int, seed: int, rp: RenderParams, names) -> None:
    """``count`` class-balanced Hershey renders (the project's renderer, other settings) in ``out/sim``."""
    labels = np.random.default_rng(seed).permutation(count) % 10
    _write(out / "sim", (render_digit(int(k), np.random.default_rng([seed, i]), rp) for i, k in enumerate(labels)),
           labels, names)


def _data(out: Path, size: int, channels: int, names) -> dict:
    return {"data": {"image_size": size, "channels": channels, "classes": list(names),
                     "source": {"format": "imagefolder", "root": str(out / "sim")},
                     "target": {"format": "imagefolder", "root": str(out / "real")}}}


def builtin(out: Path, seed: int = 0) -> dict:
    return {}


def grey(out: Path, seed: int = 0) -> dict:
    names = [f"d{k}" for k in range(10)]
    _renders(out, 4000, seed, RenderParams(canvas=48, thickness=(1, 2)), names)
    digits, targets = real_digits(24, 1)
    _write(out / "real", (255 - d[:, :, 0] for d in digits), targets, names)
    return _data(out, 24, 1, names)


def _photos() -> list[np.ndarray]:
    from sklearn.datasets import load_sample_images

    return [np.asarray(im) for im in load_sample_images().images]


def photo(out: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    _renders(out, 3000, seed, RenderParams(canvas=40), WORDS)
    photos = _photos()
    digits, targets = real_digits(28, 1)

    def blend(d: np.ndarray) -> np.ndarray:
        p = photos[rng.integers(len(photos))]
        y, x = rng.integers(0, p.shape[0] - 28), rng.integers(0, p.shape[1] - 28)
        crop = p[y:y + 28, x:x + 28].astype(np.int16)
        return np.abs(crop - d.astype(np.int16)).astype(np.uint8)

    _write(out / "real", (blend(d) for d in digits), targets, WORDS)
    return _data(out, 28, 3, WORDS)


def font_paths() -> list[Path]:
    """The TrueType faces of :data:`FONT_FILES` that ship with matplotlib."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / name for name in FONT_FILES if (folder / name).is_file()]
    if len(paths) < 4:
        raise FileNotFoundError(f"{folder}: expected matplotlib's TrueType fonts {', '.join(FONT_FILES)}")
    return paths


def render_truetype(digit: int, rng: np.random.Generator, fonts: list[Path], canvas: int = 56) -> np.ndarray:
    """One ``canvas x canvas`` grey image of ``digit`` in a random TrueType face: light ink on dark
    paper, glyph height 45-85% of the canvas, rotation +-12 degrees, shift +-10%, sometimes blurred."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(canvas * rng.uniform(0.5, 0.95)))
    ink, paper = int(rng.integers(170, 256)), int(rng.integers(0, 50))
    image = Image.new("L", (2 * canvas, 2 * canvas), paper)
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), str(digit), font=font)
    draw.text((canvas - (left + right) / 2, canvas - (top + bottom) / 2), str(digit), fill=ink, font=font)
    angle, (dx, dy) = rng.uniform(-12, 12), rng.uniform(-0.1, 0.1, size=2) * canvas
    m = cv2.getRotationMatrix2D((canvas, canvas), angle, 1.0)
    m[:, 2] += (dx - canvas / 2, dy - canvas / 2)
    img = cv2.warpAffine(np.asarray(image), m, (canvas, canvas), flags=cv2.INTER_LINEAR, borderValue=paper)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.5))
    return img


def fonts(out: Path, seed: int = 0) -> dict:
    faces = font_paths()
    labels = np.random.default_rng(seed).permutation(2500) % 10
    _write(out / "sim", (render_truetype(int(k), np.random.default_rng([seed, i]), faces) for i, k in enumerate(labels)),
           labels, DIGITS)
    digits, targets = real_digits(28, 1)
    _write(out / "real", (d[:, :, 0] for d in digits), targets, DIGITS)
    return _data(out, 28, 1, DIGITS)


def degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera's view of a grey scan: optical blur, a 10-14 px sensor, exposure gain and offset,
    Gaussian read noise and JPEG compression (quality 10-40), back at the input size."""
    size = image.shape[0]
    img = cv2.GaussianBlur(image.astype(np.float32), (0, 0), rng.uniform(0.6, 1.6))
    low = int(rng.integers(10, 15))
    img = cv2.resize(cv2.resize(img, (low, low), interpolation=cv2.INTER_AREA), (size, size),
                     interpolation=cv2.INTER_LINEAR)
    img = img * rng.uniform(0.5, 0.9) + rng.uniform(20, 70) + rng.normal(0, rng.uniform(6, 16), img.shape)
    ok, jpeg = cv2.imencode(".jpg", np.clip(img, 0, 255).astype(np.uint8),
                            [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(10, 41))])
    return cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)


def camera(out: Path, seed: int = 0) -> dict:
    rng = np.random.default_rng([seed, 7])
    _renders(out, 3000, seed, RenderParams(canvas=40), DIGITS)
    digits, targets = real_digits(32, 1)
    _write(out / "real", (cv2.resize(degrade(d[:, :, 0], rng), (20, 20), interpolation=cv2.INTER_AREA)
                          for d in digits), targets, DIGITS)
    return _data(out, 20, 1, DIGITS)


def long_tail(labels: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """Indices keeping class ``c`` at rank ``r`` (a seeded order of the classes) with probability
    ``ratio ** (-r / (K - 1))``: the first class whole, the last about ``1 / ratio`` of it."""
    rng = np.random.default_rng([seed, 11])
    classes = rng.permutation(np.unique(labels))
    keep = {int(c): ratio ** (-r / (len(classes) - 1)) for r, c in enumerate(classes)}
    return np.flatnonzero(rng.random(len(labels)) < np.array([keep[int(y)] for y in labels]))


def imbalanced(out: Path, seed: int = 0) -> dict:
    _renders(out, 3500, seed, RenderParams(canvas=48, thickness=(2, 6)), DIGITS)
    digits, targets = real_digits(24, 1)
    kept = long_tail(targets, 12.0, seed)
    _write(out / "real", (digits[i][:, :, 0] for i in kept), targets[kept], DIGITS)
    return _data(out, 24, 1, DIGITS)


def small(out: Path, seed: int = 0) -> dict:
    _renders(out, 2000, seed, RenderParams(canvas=56, scale=(0.6, 0.95)), DIGITS)
    digits, targets = real_digits(28, 1)
    kept = np.sort(np.random.default_rng([seed, 13]).choice(len(targets), 400, replace=False))
    _write(out / "real", (digits[i][:, :, 0] for i in kept), targets[kept], DIGITS)
    return _data(out, 28, 1, DIGITS)


SCENARIOS: dict[str, Callable[[Path, int], dict]] = {
    "builtin": builtin, "grey": grey, "photo": photo, "fonts": fonts, "camera": camera,
    "imbalanced": imbalanced, "small": small}


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
