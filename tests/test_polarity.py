"""Ink polarity: measured per domain on training images, and renders written inverted by prepare only
when the two domains clearly disagree (light ink on dark against dark ink on light)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import deep_update
from pipeline.config import ConfigError, parse_params
from pipeline.data.images import load_image
from pipeline.data.manifest import write_label_origin
from pipeline.data.polarity import ink_sign, invert, opposite, polarity, renders_inverted
from pipeline.data.prepare import prepare
from pipeline.gan.export import export_generator
from pipeline.gan.networks import ResnetGenerator
from pipeline.gan.translate import translate_folder

CLASSES = ["bar", "box"]


def glyph(label: int, seed: int, light_ink: bool, size: int = 16) -> np.ndarray:
    """A bar (class 0) or a hollow box (class 1) of ink on a plain background, grey uint8 (size, size)."""
    rng = np.random.default_rng(seed)
    paper, ink = (int(rng.integers(0, 40)), int(rng.integers(190, 256)))
    if not light_ink:
        paper, ink = 255 - paper, 255 - ink
    image = np.full((size, size), paper, np.uint8)
    lo, hi = size // 4, 3 * size // 4
    if label == 0:
        image[lo:hi, size // 2 - 1:size // 2 + 1] = ink
    else:
        image[lo:hi, lo] = image[lo:hi, hi - 1] = image[lo, lo:hi] = image[hi - 1, lo:hi] = ink
    return image


def write_domain(root, light_ink: bool, per_class: int = 6, seed: int = 0):
    for label, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(glyph(label, seed + 100 * label + i, light_ink)).save(root / name / f"{i}.png")
    return root


def test_ink_sign_reads_light_and_dark_ink_and_a_plain_image():
    light = glyph(1, 0, light_ink=True)
    assert ink_sign(light) == 1
    assert ink_sign(invert(light)) == -1
    assert ink_sign(np.full((12, 12, 3), 77, np.uint8)) == 0
    assert ink_sign(np.repeat(light[:, :, None], 3, axis=2)) == 1     # RGB: the mean over channels


def test_polarity_is_the_mean_sign_and_opposite_needs_two_clear_domains():
    images = [glyph(i % 2, i, light_ink=i % 4 != 0) for i in range(8)]   # 6 light, 2 dark
    assert polarity(images) == pytest.approx(0.5)
    assert polarity([]) == 0.0
    assert opposite(1.0, -1.0) and opposite(-0.6, 0.75)
    assert not opposite(1.0, 1.0)
    assert not opposite(1.0, 0.17)     # a target without one polarity (digits blended into photos)
    assert not opposite(0.4, -1.0)


def _params(default_raw, tmp_path, source_light: bool, target_light: bool, mode: str = "match"):
    source = write_domain(tmp_path / "sim", source_light)
    target = write_domain(tmp_path / "real", target_light, per_class=8, seed=7)
    raw = deep_update(default_raw, {"data": {
        "image_size": 16, "channels": 1, "classes": CLASSES, "polarity": mode,
        "source": {"format": "imagefolder", "root": str(source)},
        "target": {"format": "imagefolder", "root": str(target), "test_fraction": 0.25}}})
    return parse_params(raw)


def _images(folder):
    return [load_image(path, 1, 16) for path in sorted((folder / "images").glob("*.png"))]


def test_prepare_inverts_the_renders_when_the_real_ink_is_the_other_way(default_raw, tmp_path):
    params = _params(default_raw, tmp_path, source_light=True, target_light=False)
    stats, _ = prepare(params, tmp_path / "out")
    assert stats["polarity"] == {"mode": "match", "source": 1.0, "target": -1.0, "inverted_source": True}
    assert renders_inverted(tmp_path / "out")          # the record the GAN's export reads
    for split in ("source/train", "source/val"):
        assert all(ink_sign(im) == -1 for im in _images(tmp_path / "out" / split)), split
    for split in ("target/train", "target/test"):      # real images are written as they are
        assert all(ink_sign(im) == -1 for im in _images(tmp_path / "out" / split)), split
    originals = sorted(load_image(p, 1, 16).tobytes() for p in (tmp_path / "sim").rglob("*.png"))
    written = sorted(invert(im).tobytes() for s in ("source/train", "source/val") for im in _images(tmp_path / "out" / s))
    assert written == originals       # the exact negatives, every render once


@pytest.mark.parametrize("source_light,target_light,mode", [(True, True, "match"), (True, False, "keep")])
def test_prepare_leaves_the_renders_alone_when_polarities_agree_or_keep_is_set(default_raw, tmp_path, source_light,
                                                                              target_light, mode):
    params = _params(default_raw, tmp_path, source_light, target_light, mode)
    stats, _ = prepare(params, tmp_path / "out")
    assert stats["polarity"]["inverted_source"] is False and not renders_inverted(tmp_path / "out")
    assert all(ink_sign(im) == 1 for im in _images(tmp_path / "out" / "source/train"))


def test_a_bad_polarity_setting_is_named(default_raw):
    with pytest.raises(ConfigError, match="data.polarity"):
        parse_params(deep_update(default_raw, {"data": {"polarity": "auto"}}))


def test_translate_inverts_raw_renders_for_a_generator_that_learnt_inverted_ones(tmp_path):
    torch.manual_seed(0)
    generator = ResnetGenerator(1, 1, width=4, blocks=1, downsamplings=2)
    for name, flag in (("inverted.pt", True), ("plain.pt", False)):
        export_generator(tmp_path / name, generator, {"image_size": 16, "channels": 1, "classes": CLASSES,
                                                      "source_inverted": flag})
    for i in range(3):
        image = glyph(i % 2, i, light_ink=True)
        for folder, pixels in (("raw", image), ("negatives", invert(image))):
            (tmp_path / folder).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(tmp_path / folder / f"{i}.png")
    raw = translate_folder(tmp_path / "inverted.pt", tmp_path / "raw", tmp_path / "a", device="cpu")
    by_hand = translate_folder(tmp_path / "plain.pt", tmp_path / "negatives", tmp_path / "b", device="cpu")
    assert raw["inputs_inverted"] and not by_hand["inputs_inverted"]
    for i in range(3):
        assert (tmp_path / "a" / f"{i}.png").read_bytes() == (tmp_path / "b" / f"{i}.png").read_bytes()
    write_label_origin(tmp_path / "raw", "synthetic")     # now a prepared split: prepare already inverted it
    again = translate_folder(tmp_path / "inverted.pt", tmp_path / "raw", tmp_path / "c", device="cpu")
    assert not again["inputs_inverted"]
