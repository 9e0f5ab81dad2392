"""Hostile and broken input: decompression bombs and pickles that would run code are refused in one line."""

from __future__ import annotations

import ast
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from conftest import REPO, deep_update
from pipeline.checkpoint import CheckpointError, load_weights_only
from pipeline.config import ConfigError, parse_params
from pipeline.data.images import BadImageError, load_image
from pipeline.data.prepare import prepare
from pipeline.gan.export import export_generator, load_generator
from pipeline.gan.networks import ResnetGenerator
from pipeline.gan.translate import main as translate_main
from pipeline.task.export import load_task_model

CLASSES = ["cat", "dog"]


# ------------------------------------------------------------------------------------------------
# Decompression bombs
# ------------------------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int) -> bytes:
    """A few-dozen-byte PNG whose header claims ``width x height`` 8-bit grey pixels (IDAT: one short row)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 17)  # filter byte + the first 16 pixels of row 0, nothing more
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels) + _chunk(b"IEND", b"")


def bomb_message(path: Path, width: int, height: int, limit: int) -> str:
    return (f"{path}: image is {width}x{height} = {width * height} pixels, more than data.max_image_pixels = "
            f"{limit}; refusing to decode it (decompression bomb guard)")


@pytest.fixture
def bomb(tmp_path) -> Path:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(20000, 20000))
    return path


def test_crafted_header_really_claims_400_megapixels(bomb, monkeypatch):
    assert bomb.stat().st_size < 200
    with pytest.raises(Image.DecompressionBombError):  # what a bare PIL call gives: its traceback, its limit
        Image.open(bomb)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    with Image.open(bomb) as img:
        assert img.size == (20000, 20000)


def test_load_image_refuses_a_bomb_from_its_header_in_one_line(bomb):
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BadImageError) as err:
            load_image(bomb, 1, 16)
    assert str(err.value) == bomb_message(bomb, 20000, 20000, 40_000_000)
    assert err.value.__cause__ is None and (err.value.__context__ is None or err.value.__suppress_context__)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    assert Image.MAX_IMAGE_PIXELS == pil_limit                             # PIL's global left as it was


def test_our_limit_decides_not_pils(tmp_path):
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path)  # 30x20 = 600 pixels: PIL would decode it
    with pytest.raises(BadImageError) as err:
        load_image(path, 1, 16, max_pixels=599)
    assert str(err.value) == bomb_message(path, 30, 20, 599)
    assert load_image(path, 1, 16, max_pixels=600).shape == (16, 16, 1)  # the limit itself is allowed


@pytest.mark.parametrize("found", [(40, 30), (100, 100)])  # PIL warns above the limit, errors above twice it
def test_a_larger_frame_found_while_decoding_is_refused_in_one_line(tmp_path, monkeypatch, found):
    """Some formats (GIF, TIFF tiles, ICO) learn a bigger size only while decoding: PIL's check, at our limit."""
    path = tmp_path / "small.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path)
    decode = ImageFile.ImageFile.load

    def load_finding_a_bigger_frame(img):
        Image._decompression_bomb_check(found)
        return decode(img)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load_finding_a_bigger_frame)
    pil_limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(BadImageError) as err:
            load_image(path, 1, 16, max_pixels=1000)
    message = str(err.value)
    assert message.startswith(f"{path}: part of the image is larger than data.max_image_pixels = 1000 (")
    assert message.endswith("refusing to decode it (decompression bomb guard)") and "\n" not in message
    assert not caught and Image.MAX_IMAGE_PIXELS == pil_limit


def test_the_default_limit_is_the_same_everywhere(default_raw):
    from pipeline.config import DataParams
    from pipeline.data.images import DEFAULT_MAX_PIXELS

    assert DataParams.__dataclass_fields__["max_image_pixels"].default == DEFAULT_MAX_PIXELS == 40_000_000
    assert default_raw["data"]["max_image_pixels"] == DEFAULT_MAX_PIXELS


def _imagefolder(root: Path, per_class: int = 4, shade: int = 0) -> Path:
    """Flat grey images, all different; folders of different ``shade`` share none (prepare refuses a
    test image copied into training)."""
    for k, c in enumerate(CLASSES):
        for i in range(per_class):
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8 + i, 10 + i), 40 * i + 5 * k + shade, np.uint8)).save(root / c / f"{i}.png")
    return root


def _user_params(default_raw: dict, src: Path, tgt: Path, **data):
    return parse_params(deep_update(default_raw, {"data": {
        "image_size": 16, "channels": 1, "classes": CLASSES, **data,
        "source": {"format": "imagefolder", "root": str(src)},
        "target": {"format": "imagefolder", "root": str(tgt)}}}))


def test_prepare_refuses_a_bomb_and_keeps_the_previous_output(default_raw, tmp_path):
    src, tgt = _imagefolder(tmp_path / "sim"), _imagefolder(tmp_path / "real", shade=20)
    culprit = src / "dog" / "huge.png"
    culprit.write_bytes(png_claiming(20000, 20000))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")

    with pytest.raises(BadImageError) as err:
        prepare(_user_params(default_raw, src, tgt), out)
    message = str(err.value)
    assert "\n" not in message and message.startswith(bomb_message(culprit.resolve(), 20000, 20000, 40_000_000))
    assert "data.skip_bad_images" in message
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]

    stats, _ = prepare(_user_params(default_raw, src, tgt, skip_bad_images=True), out)
    assert stats["skipped_bad_images"] == 1 and stats["splits"]["source/train"]["count"] + \
        stats["splits"]["source/val"]["count"] == 8


def test_prepare_takes_the_limit_from_params(default_raw, tmp_path):
    src, tgt = _imagefolder(tmp_path / "sim"), _imagefolder(tmp_path / "real", shade=20)  # 10x8 ... 13x11 pixels
    with pytest.raises(BadImageError, match=r"= \d+ pixels, more than data\.max_image_pixels = 90;"):
        prepare(_user_params(default_raw, src, tgt, max_image_pixels=90), tmp_path / "out")


@pytest.mark.parametrize("value", [0, -5])
def test_max_image_pixels_must_be_positive(default_raw, tmp_path, value):
    with pytest.raises(ConfigError, match=r"data\.max_image_pixels: expected a positive integer"):
        _user_params(default_raw, tmp_path, tmp_path, max_image_pixels=value)


# ------------------------------------------------------------------------------------------------
# Pickles that would run code
# ------------------------------------------------------------------------------------------------


class RunsCode:
    """Unpickling this touches ``marker``: any loader that lets it through runs the attacker's code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


REFUSED = ": refused to load: the file holds pickled Python objects other than tensors and plain containers"


@pytest.fixture(params=["zip", "legacy"])
def evil(request, tmp_path) -> tuple[Path, Path]:
    """A file shaped like an exported model whose ``config`` runs code when unpickled, and its marker."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    blob = {"config": RunsCode(marker), "state_dict": {}, "meta": {"image_size": 16, "channels": 1,
                                                                   "classes": ["0", "1"]}}
    torch.save(blob, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, marker


def test_the_evil_file_really_runs_code_when_loaded_unsafely(evil):
    path, marker = evil
    torch.load(path, weights_only=False)  # what a careless loader would do
    assert marker.exists()


@pytest.mark.parametrize("loader", [load_weights_only, load_task_model, load_generator])
def test_loaders_refuse_code_in_one_line(evil, loader):
    path, marker = evil
    with pytest.raises(CheckpointError) as err:
        loader(path)
    message = str(err.value)
    assert message.startswith(f"{path}{REFUSED}") and "written by this pipeline" in message
    assert "\n" not in message and "\x1b" not in message
    assert not marker.exists()


def test_translate_cli_refuses_an_evil_generator_with_exit_2(evil, tmp_path, capsys):
    path, marker = evil
    images = tmp_path / "renders"
    images.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "a.png")
    with pytest.raises(SystemExit) as exit_info:
        translate_main(["--generator", str(path), "--input", str(images), "--output", str(tmp_path / "out"),
                        "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {path}{REFUSED}") and "\n" not in err
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.fixture
def generator_file(tmp_path) -> Path:
    path = tmp_path / "generator.pt"
    export_generator(path, ResnetGenerator(1, 1, width=4, blocks=1, downsamplings=2),
                     {"image_size": 16, "channels": 1, "classes": ["0", "1"]})
    return path


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_file_gets_its_own_one_line_message(generator_file, damage):
    data = generator_file.read_bytes()
    generator_file.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"hello, not a model" * 10,
                                "empty": b""}[damage])
    with pytest.raises(CheckpointError) as err:
        load_generator(generator_file)
    message = str(err.value)
    assert message.startswith(f"{generator_file}: not a readable sim2real checkpoint: the file is truncated, "
                              f"corrupt or not written by torch.save (")
    assert "\n" not in message and "refused to load" not in message


def test_intact_generator_still_loads(generator_file):
    generator, meta = load_generator(generator_file)
    assert meta["image_size"] == 16 and not generator.training


UNSAFE_LOADERS = {"torch.load", "torch.jit.load", "pickle.load", "pickle.loads", "pickle.Unpickler",
                  "joblib.load", "dill.load", "dill.loads", "cloudpickle.load", "cloudpickle.loads",
                  "mlflow.pytorch.load_model", "mlflow.pyfunc.load_model"}


def _loader_calls(source: str) -> list[str]:
    """Dotted names of calls that can unpickle, plus ``np.load(..., allow_pickle=True)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        pickles = any(k.arg == "allow_pickle" for k in node.keywords) and name in ("np.load", "numpy.load")
        if name in UNSAFE_LOADERS or name.endswith(".load_model") or pickles:
            found.append(name)
    return found


def test_only_the_safe_loader_unpickles():
    calls = {
        str(path.relative_to(REPO)): _loader_calls(path.read_text())
        for folder in ("pipeline", "stages") for path in sorted((REPO / folder).rglob("*.py"))
    }
    assert calls.pop("pipeline/checkpoint.py") == ["torch.load"]   # load_weights_only, weights_only=True
    assert {name: found for name, found in calls.items() if found} == {}
