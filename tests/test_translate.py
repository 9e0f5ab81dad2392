"""Translating folders with an exported generator: labels kept, any image folder, atomic output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data.images import BadImageError, load_image
from pipeline.data.manifest import HELDOUT_MARKER, HeldOutLabelsError, to_tensor, to_uint8, write_manifest
from pipeline.gan.export import export_generator, load_generator
from pipeline.gan.networks import ResnetGenerator
from pipeline.gan.translate import main, translate_folder

SIZE = 16
CLASSES = [str(i) for i in range(10)]


@pytest.fixture
def generator_file(tmp_path) -> Path:
    torch.manual_seed(0)
    generator = ResnetGenerator(1, 1, width=4, blocks=1, downsamplings=2)
    path = tmp_path / "generator.pt"
    export_generator(path, generator, {"image_size": SIZE, "channels": 1, "classes": CLASSES})
    return path


def save_rgb(path: Path, seed: int, size: int = 20, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format=fmt)


def labelled_folder(root: Path, labels: list[str]) -> Path:
    for i in range(len(labels)):
        save_rgb(root / "images" / f"{i:03d}.png", i)
    write_manifest(root, [(f"images/{i:03d}.png", label) for i, label in enumerate(labels)])
    return root


def read_rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "manifest.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_labelled_folder_keeps_labels_in_order_and_converts_images(tmp_path, generator_file):
    labels = ["3", "1", "4", "1", "5"]
    source = labelled_folder(tmp_path / "in", labels)
    summary = translate_folder(generator_file, source, tmp_path / "out", batch_size=2, device="cpu",
                               provenance={"stage": "test"})

    rows = read_rows(tmp_path / "out")
    assert [r["label"] for r in rows] == labels
    assert [r["source"] for r in rows] == [f"images/{i:03d}.png" for i in range(5)]
    assert summary["images"] == 5 and summary["labelled"]
    generator, _ = load_generator(generator_file)
    for i, row in enumerate(rows):
        out = np.asarray(Image.open(tmp_path / "out" / row["path"]))
        assert out.shape == (SIZE, SIZE)  # RGB 20x20 in, the generator's grey 16x16 out
        with torch.no_grad():
            expected = to_uint8(generator(to_tensor(load_image(source / row["source"], 1, SIZE))[None]))[0, :, :, 0]
        assert np.array_equal(out, expected)
    assert json.loads((tmp_path / "out/provenance.json").read_text())["translation"]["images"] == 5


def test_cli_translates_a_flat_folder_without_manifest(tmp_path, generator_file):
    renders = tmp_path / "renders"
    save_rgb(renders / "b.png", 0)
    save_rgb(renders / "a.jpg", 1, fmt="JPEG")
    save_rgb(renders / "sub" / "c.png", 2, size=40)
    (renders / "notes.txt").write_text("not an image")
    main(["--generator", str(generator_file), "--input", str(renders), "--output", str(tmp_path / "out"),
          "--batch-size", "2", "--device", "cpu"])

    rows = read_rows(tmp_path / "out")
    assert [(r["path"], r["label"], r["source"]) for r in rows] == [
        ("a.png", "", "a.jpg"), ("b.png", "", "b.png"), ("sub/c.png", "", "sub/c.png")]
    assert all(Image.open(tmp_path / "out" / r["path"]).size == (SIZE, SIZE) for r in rows)


def test_interrupted_translation_leaves_no_output(tmp_path, generator_file):
    source = labelled_folder(tmp_path / "in", ["0", "1", "2", "3", "4"])
    (source / "images" / "003.png").write_bytes(b"")  # a bad image in the second batch
    with pytest.raises(BadImageError, match="003.png"):
        translate_folder(generator_file, source, tmp_path / "out", batch_size=2, device="cpu")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "in"]

    (source / "images" / "003.png").unlink()
    write_manifest(source, [(f"images/{i:03d}.png", str(i)) for i in (0, 1, 2, 4)])
    translate_folder(generator_file, source, tmp_path / "out", device="cpu")  # the previous result
    before = snapshot(tmp_path / "out")
    (source / "images" / "004.png").write_bytes(b"")  # breaks the rerun, in its second batch
    with pytest.raises(SystemExit) as exit_info:
        main(["--generator", str(generator_file), "--input", str(source), "--output", str(tmp_path / "out"),
              "--batch-size", "2", "--device", "cpu"])
    assert exit_info.value.code == 2
    assert snapshot(tmp_path / "out") == before  # the earlier translation is left exactly as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generator.pt", "in", "out"]  # no temporary folder


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` with its bytes: equal snapshots mean nothing was touched."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_replaces_its_own_earlier_output(tmp_path, generator_file):
    source = labelled_folder(tmp_path / "in", ["0", "1", "2"])
    translate_folder(generator_file, source, tmp_path / "out", device="cpu")
    marker = json.loads((tmp_path / "out" / "translation.json").read_text())
    assert marker["written_by"] == "sim2real-translate" and marker["images"] == 3

    (source / "images" / "002.png").unlink()
    write_manifest(source, [("images/000.png", "0"), ("images/001.png", "1")])
    translate_folder(generator_file, source, tmp_path / "out", device="cpu")
    assert sorted(snapshot(tmp_path / "out")) == ["images/000.png", "images/001.png", "manifest.csv",
                                                  "translation.json"]  # nothing stale is kept


def test_rerun_replaces_an_output_written_before_the_marker_existed(tmp_path, generator_file):
    source = labelled_folder(tmp_path / "in", ["0", "1"])
    translate_folder(generator_file, source, tmp_path / "out", device="cpu", provenance={"stage": "old"})
    (tmp_path / "out" / "translation.json").unlink()  # what earlier versions of the tool left
    translate_folder(generator_file, source, tmp_path / "out", device="cpu", provenance={"stage": "new"})
    assert json.loads((tmp_path / "out" / "provenance.json").read_text())["stage"] == "new"


def test_heldout_split_is_refused(tmp_path, generator_file):
    source = labelled_folder(tmp_path / "test", ["0", "1"])
    (source / HELDOUT_MARKER).write_text("")
    with pytest.raises(HeldOutLabelsError):
        translate_folder(generator_file, source, tmp_path / "out", device="cpu")
