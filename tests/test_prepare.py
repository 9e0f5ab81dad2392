"""prepare: every input format, mixed image modes, seeded stratified splits, and every bad input."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, deep_update
from pipeline.config import parse_params
from pipeline.data.images import BadImageError
from pipeline.data.manifest import HELDOUT_MARKER, ImageSet, ManifestError, read_manifest
from pipeline.data.prepare import PrepareError, prepare, stratified_split

CLASSES = ["cat", "dog"]


def _img(path, mode="L", size=(20, 12), value=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(str(path))) % 2**32)
    if mode == "I;16":
        arr = rng.integers(0, 65535, size=size[::-1], dtype=np.uint16)
        Image.fromarray(arr).save(path)  # 16-bit greyscale PNG
        return path
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    arr = rng.integers(0, 255, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr[:, :, 0] if channels == 1 else arr, mode).save(path)
    return path


def _imagefolder(root, per_class=6, modes=("L", "RGB", "RGBA", "I;16"), classes=CLASSES):
    for c in classes:
        for i in range(per_class):
            _img(root / c / f"{i}.png", mode=modes[i % len(modes)], size=(10 + i, 8 + 2 * i))
    return root


def _user_params(default_raw, source, target, **data):
    raw = deep_update(default_raw, {"data": {"image_size": 16, "channels": 3, "classes": CLASSES,
                                             "source": source, "target": target, **data}})
    if target["format"] == "folder":  # unlabelled real images: no target_oracle (as the README says)
        del raw["variants"]["target_oracle"]
    return parse_params(raw)


def _counts(folder):
    return len(read_manifest(folder / "manifest.csv", CLASSES))


def test_builtin_digits_splits_are_stratified_disjoint_and_seeded(tiny_raw, tmp_path):
    stats, preview = prepare(parse_params(tiny_raw), tmp_path / "out")
    s = stats["splits"]
    assert s["source/train"]["count"] == 40 and s["source/val"]["count"] == 20
    assert s["target/train"]["count"] + s["target/test"]["count"] == 1797
    assert abs(s["target/test"]["count"] / 1797 - 0.3) < 0.01
    for c, n in s["target/test"]["per_class"].items():  # every class held out in proportion
        total = n + s["target/train"]["per_class"][c]
        assert abs(n / total - 0.3) < 0.03
    assert (tmp_path / "out/target/test" / HELDOUT_MARKER).exists()
    assert preview.ndim == 3 and preview.dtype == np.uint8
    # the split of the real scans is disjoint and depends on the seed
    from pipeline.data.digits import real_digits

    labels = real_digits(8, 1)[1].tolist()
    kept, held = stratified_split(labels, 0.3, seed=1, what="x")
    assert not set(kept) & set(held) and len(kept) + len(held) == 1797
    assert stratified_split(labels, 0.3, seed=1, what="x") == (kept, held)
    assert stratified_split(labels, 0.3, seed=2, what="x") != (kept, held)


def test_imagefolder_with_mixed_modes_is_converted(default_raw, tmp_path):
    src, tgt = _imagefolder(tmp_path / "sim"), _imagefolder(tmp_path / "real", per_class=5)
    params = _user_params(default_raw, {"format": "imagefolder", "root": str(src), "val_fraction": 0.34},
                          {"format": "imagefolder", "root": str(tgt), "test_fraction": 0.4})
    stats, _ = prepare(params, tmp_path / "out")
    assert stats["splits"]["source/train"]["count"] == 8 and stats["splits"]["source/val"]["count"] == 4
    assert stats["splits"]["target/test"]["per_class"] == {"cat": 2, "dog": 2}
    ds = ImageSet(tmp_path / "out/source/train", CLASSES, channels=3, size=16)
    x, y = ds[0]
    assert x.shape == (3, 16, 16) and -1 <= x.min() and x.max() <= 1 and y in (0, 1)
    for entry in ds.entries:
        with Image.open(entry.path) as im:
            assert im.mode == "RGB" and im.size == (16, 16)


def test_manifest_source_and_flat_unlabelled_target(default_raw, tmp_path):
    sim = tmp_path / "sim"
    rows = ["path,label"]
    for i in range(8):
        _img(sim / "img" / f"{i}.png", mode="RGB")
        rows.append(f"img/{i}.png,{CLASSES[i % 2]}")
    (sim / "labels.csv").write_text("\n".join(rows) + "\n")
    flat = tmp_path / "real"
    for i in range(5):
        _img(flat / f"r{i}.png")
    test = _imagefolder(tmp_path / "real_test", per_class=3)
    params = _user_params(default_raw, {"format": "manifest", "root": str(sim / "labels.csv")},
                          {"format": "folder", "root": str(flat), "test_root": str(test)}, channels=1)
    stats, _ = prepare(params, tmp_path / "out")
    assert stats["splits"]["target/train"]["per_class"] == {"<unlabelled>": 5}
    assert stats["splits"]["target/test"]["count"] == 6
    unlabelled = ImageSet(tmp_path / "out/target/train", CLASSES, 1, 16, labels=False)
    assert [unlabelled[i][1] for i in range(5)] == [-1] * 5


@pytest.mark.parametrize("breakage, culprit", [
    ("corrupt", "dog/bad.png"),
    ("zero", "dog/empty.png"),
    ("text", "dog/notes.txt"),
])
def test_bad_file_is_named_and_nothing_is_written(default_raw, tmp_path, breakage, culprit):
    src, tgt = _imagefolder(tmp_path / "sim"), _imagefolder(tmp_path / "real")
    bad = src / culprit
    if breakage == "corrupt":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif breakage == "zero":
        bad.write_bytes(b"")
    else:
        bad.write_text("not an image")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("earlier result")
    params = _user_params(default_raw, {"format": "imagefolder", "root": str(src)},
                          {"format": "imagefolder", "root": str(tgt)})
    with pytest.raises(BadImageError) as err:
        prepare(params, out)
    assert culprit.split("/")[1] in str(err.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # earlier output untouched
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]  # no temp leftovers

    skipping = _user_params(default_raw, {"format": "imagefolder", "root": str(src)},
                            {"format": "imagefolder", "root": str(tgt)}, skip_bad_images=True)
    stats, _ = prepare(skipping, out)
    assert stats["skipped_bad_images"] == 1


def _expect_prepare_error(params, out, exc, *needles):
    with pytest.raises(exc) as err:
        prepare(params, out)
    for needle in needles:
        assert needle in str(err.value)
    assert not out.exists()


def test_empty_class_empty_folder_unknown_class_escaping_path(default_raw, tmp_path):
    tgt = _imagefolder(tmp_path / "real")
    out = tmp_path / "out"

    src = _imagefolder(tmp_path / "sim_empty_class")
    for f in (src / "dog").iterdir():
        f.unlink()
    p = _user_params(default_raw, {"format": "imagefolder", "root": str(src)}, {"format": "imagefolder", "root": str(tgt)})
    _expect_prepare_error(p, out, PrepareError, "dog", "no images")

    empty = tmp_path / "empty"
    empty.mkdir()
    p = _user_params(default_raw, {"format": "imagefolder", "root": str(empty)}, {"format": "imagefolder", "root": str(tgt)})
    _expect_prepare_error(p, out, PrepareError, str(empty), "no class sub-folders")

    p = _user_params(default_raw, {"format": "imagefolder", "root": str(tgt)}, {"format": "folder", "root": str(empty),
                                                                                  "test_root": str(tgt)})
    _expect_prepare_error(p, out, PrepareError, str(empty), "no images")

    stray = _imagefolder(tmp_path / "real_stray", classes=["cat", "dog", "bird"])
    p = _user_params(default_raw, {"format": "imagefolder", "root": str(tgt)}, {"format": "imagefolder", "root": str(stray)})
    _expect_prepare_error(p, out, PrepareError, "bird", "not in data.classes")

    manifest = tmp_path / "sim_m" / "labels.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,label\n../real/cat/0.png,cat\n")
    p = _user_params(default_raw, {"format": "manifest", "root": str(manifest)}, {"format": "imagefolder", "root": str(tgt)})
    _expect_prepare_error(p, out, ManifestError, "labels.csv:2", "escapes")


def test_target_class_missing_from_source(default_raw, tmp_path):
    src = _imagefolder(tmp_path / "sim", classes=["cat", "dog"])
    tgt = _imagefolder(tmp_path / "real", classes=["cat", "dog", "bird"])
    raw = deep_update(default_raw, {"data": {"image_size": 16, "classes": ["cat", "dog", "bird"],
                                             "source": {"format": "imagefolder", "root": str(src)},
                                             "target": {"format": "imagefolder", "root": str(tgt)}}})
    _expect_prepare_error(parse_params(raw), tmp_path / "out", PrepareError, "'bird'", "source")


def test_stage_exits_non_zero_with_a_one_line_error(default_raw, tmp_path):
    import yaml

    src = _imagefolder(tmp_path / "sim")
    (src / "cat" / "broken.jpg").write_bytes(b"")
    raw = deep_update(default_raw, {"data": {"classes": CLASSES, "source": {"format": "imagefolder", "root": str(src)},
                                             "target": {"format": "imagefolder", "root": str(src)}}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    res = subprocess.run([sys.executable, "-m", "stages.prepare", "--params", str(tmp_path / "params.yaml"),
                          "--out", str(tmp_path / "out"), "--reports", str(tmp_path / "rep")],
                         cwd=REPO, capture_output=True, text=True, env={"SIM2REAL_TRACKING": "off", "PATH": "/usr/bin:/bin",
                                                                         "NO_ALBUMENTATIONS_UPDATE": "1"})
    assert res.returncode == 2
    assert "error:" in res.stderr and "broken.jpg" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "rep").exists()


def test_in_memory_batches_equal_stacked_items(tmp_path):
    """``ImageSet.batch`` (what the samplers use) gives exactly the stacked items, decoded in memory or
    streamed, labelled or not; with a transform it still goes item by item, in the same order."""
    import torch

    from pipeline.data.manifest import ImageSet
    from pipeline.data.sampling import DomainSampler, stack_items
    from tinydata import CLASSES, SIZE, write_split

    folder = write_split(tmp_path / "split", 10)
    picks = [7, 0, 3, 3, 9]
    for labels in (True, False):
        streamed = ImageSet(folder, CLASSES, 1, SIZE, labels=labels)
        in_memory = ImageSet(folder, CLASSES, 1, SIZE, labels=labels)
        assert in_memory.preload(10**6) and not streamed.preload(10)
        expected = stack_items([streamed[i] for i in picks])
        for images in (streamed, in_memory):
            got = images.batch(picks)
            assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
            assert got[0].is_contiguous() and got[0].dtype == torch.float32
        sampler = DomainSampler(in_memory, "s", 5, 1, seed=0)
        idx = sampler.epoch_indices(0)[0]
        assert torch.equal(sampler.load(idx)[0], stack_items([streamed[i] for i in idx.tolist()])[0])

    flips = ImageSet(folder, CLASSES, 1, SIZE, transform=lambda a: a[:, ::-1])
    flips.preload(10**6)
    torch.testing.assert_close(flips.batch(picks)[0], expected[0].flip(-1))
