"""Detection through the shared stages, in process on tiny data: prepare (built-in scenes and a user's
COCO files), the one training loop with each method, the GAN's detection task loss, evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import deep_update, tiny_budget
from pipeline.config import ConfigError, parse_params
from pipeline.data.coco import CocoError
from pipeline.data.prepare_detection import prepare_detection
from pipeline.distributed import Runtime
from pipeline.tracking import NullTracker

TINY = {
    "data": {"image_size": 32, "scene": {"train_count": 24, "val_count": 8, "real_train_count": 16,
                                         "real_test_count": 8}},
    "task": {"kind": "detection", "steps": 4, "eval_every": 2, "batch_size": 8, "detector": {"width": 4}},
    "variants": {"randomized_st": {"params": {"ramp": 0.0, "box_threshold": 0.01}}},
}


@pytest.fixture
def detection_raw(default_raw):
    return tiny_budget(default_raw, TINY)


@pytest.fixture
def prepared(tmp_path, detection_raw, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = parse_params(detection_raw)
    stats, preview = prepare_detection(params, "data/prepared")
    return params, stats, preview


def test_prepare_writes_four_coco_splits_with_valid_boxes(prepared):
    params, stats, preview = prepared
    assert {s: v["count"] for s, v in stats["splits"].items()} == {
        "source/train": 24, "source/val": 8, "target/train": 16, "target/test": 8}
    for split in stats["splits"]:
        coco = json.loads(Path(f"data/prepared/{split}/annotations.json").read_text())
        assert len(coco["images"]) == stats["splits"][split]["count"]
        assert [c["name"] for c in coco["categories"]] == list(params.data.classes)
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and w > 0 and h > 0 and x + w <= 32 and y + h <= 32
    assert Path("data/prepared/target/test/HELDOUT").exists()
    assert preview.ndim == 3 and preview.shape[2] == 3


def test_self_training_is_offered_for_detection_and_bad_formats_are_refused(detection_raw):
    parse_params(detection_raw)                       # every default variant, self-training included
    bad = deep_update(detection_raw, {"data": {"source": {"format": "imagefolder", "root": "."}}})
    with pytest.raises(ConfigError, match="data.source.format"):
        parse_params(bad)


def _user_coco(root: Path, sizes: list[tuple[int, int]], boxes: list[list[float]], name: str) -> Path:
    images, annotations = [], []
    for i, ((w, h), box) in enumerate(zip(sizes, boxes), start=1):
        arr = np.random.default_rng([i, ord(name[0])]).integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{name}_{i}.png")
        images.append({"id": i, "file_name": f"{name}_{i}.png", "width": w, "height": h})
        annotations.append({"id": i, "image_id": i, "category_id": 1 + i % 2, "bbox": box, "iscrowd": 0})
    path = root / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "car"}, {"id": 2, "name": "person"}]}))
    return path


def _user_params(default_raw, source: Path, target: Path, test: Path) -> dict:
    raw = deep_update(default_raw, {"task": {"kind": "detection"}, "data": {
        "image_size": 32, "channels": 3, "classes": ["car", "person"],
        "source": {"format": "coco", "root": str(source), "val_fraction": 0.25},
        "target": {"format": "folder", "root": str(target), "test_root": str(test)}}})
    raw["variants"] = {"source_only": {"method": "supervised", "train": "data/prepared/source/train"}}
    return raw


def test_prepare_scales_user_coco_boxes_with_their_images(tmp_path, default_raw, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sim").mkdir()
    (tmp_path / "real").mkdir()
    sizes = [(64, 32), (40, 80), (64, 32), (32, 32)]
    source = _user_coco(tmp_path / "sim", sizes, [[8, 4, 16, 8], [4, 8, 20, 40], [0, 0, 64, 32], [1, 1, 2, 2]], "s")
    test = _user_coco(tmp_path / "real", sizes[:2], [[8, 4, 16, 8], [4, 8, 20, 40]], "t")
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30), 40 * i, np.uint8)).save(flat / f"real_{i}.jpg")
    params = parse_params(_user_params(default_raw, source, flat, test))
    stats, _ = prepare_detection(params, "data/prepared")
    assert stats["splits"]["target/train"] == {"count": 3, "objects": 0, "per_class": {}, "labelled": False}
    coco = json.loads(Path("data/prepared/target/test/annotations.json").read_text())
    assert coco["annotations"][0]["bbox"] == pytest.approx([4, 4, 8, 8])           # 64x32 -> 32x32
    assert coco["annotations"][1]["bbox"] == pytest.approx([3.2, 3.2, 16, 16])     # 40x80 -> 32x32


def test_prepare_names_a_box_outside_its_image_and_a_size_that_lies(tmp_path, default_raw, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sim").mkdir()
    sizes = [(64, 32), (40, 80), (64, 32)]
    source = _user_coco(tmp_path / "sim", sizes, [[8, 4, 16, 8], [30, 8, 20, 40], [0, 0, 8, 8]], "s")
    raw = _user_params(default_raw, source, tmp_path / "sim", source)
    with pytest.raises(CocoError, match=r"annotation.*2|s_2\.png"):
        prepare_detection(parse_params(raw), "data/prepared")
    blob = json.loads(source.read_text())
    blob["annotations"][1]["bbox"] = [4, 8, 20, 40]
    blob["images"][0]["width"] = 65                                 # the file is 64 wide
    source.write_text(json.dumps(blob))
    with pytest.raises(CocoError, match="s_1.png.*65x32"):
        prepare_detection(parse_params(raw), "data/prepared")
    assert not Path("data/prepared").exists()                        # nothing half-written


@pytest.mark.parametrize("variant", ["source_only", "dann", "randomized_st"])
def test_every_default_method_trains_a_detector(prepared, tmp_path, variant):
    from pipeline.task.train import train_task_model

    params, _, _ = prepared
    result = train_task_model(params, variant, Runtime(torch.device("cpu")), NullTracker(),
                              checkpoint_dir=tmp_path / "ck" / variant, reports_dir=tmp_path / "rep" / variant)
    assert [row["step"] for row in result.history] == [2, 4]
    assert all(0.0 <= row["source_val_map50"] <= 1.0 for row in result.history)
    assert all(np.isfinite(v) for row in result.history for k, v in row.items() if k.startswith("loss/"))
    assert set(result.metrics["label_free"]) == {"source_val_map50", "target_confidence", "target_detections"}
    if variant == "dann":
        assert "loss/domain" in result.history[-1] and "domain_acc" in result.history[-1]
    if variant == "randomized_st":                  # pseudo-boxes were found and trained on
        assert result.history[-1]["mask_rate"] > 0 and result.history[-1]["loss/unlabelled"] > 0
        assert params.variant(variant).target_head and result.metrics["target_head"] is False   # skipped


def test_gan_task_loss_of_a_detector_reaches_the_generator(prepared):
    from pipeline.data.detection_set import DetectionSet, collate_detection
    from pipeline.gan.networks import ResnetGenerator
    from pipeline.task.kinds import KINDS

    params, _, _ = prepared
    kind = KINDS["detection"]
    detector = kind.build_model(params)
    data = DetectionSet("data/prepared/source/train", params.data.classes, 1, 32)
    x, targets = collate_detection([data[i] for i in range(4)])
    G = ResnetGenerator(1, 1, width=4, blocks=1, downsamplings=1)
    before = {k: v.clone() for k, v in detector.state_dict().items()}
    loss = kind.gan_task_loss(detector, x, G(x), targets)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert all(p.grad is not None for p in G.parameters())
    assert all(torch.equal(before[k], v) for k, v in detector.state_dict().items())   # T stays frozen
    assert all(p.grad is None for p in detector.parameters())


def test_evaluate_writes_map_confusion_and_boxes(prepared, tmp_path):
    from pipeline.task.evaluate import evaluate_variant
    from pipeline.task.export import save_task_model
    from pipeline.task.kinds import KINDS

    params, _, _ = prepared
    model = KINDS["detection"].build_model(params)
    meta = {"kind": "detection", "classes": list(params.data.classes), "image_size": 32, "channels": 1,
            "variant": "source_only", "uses_target_labels": False}
    save_task_model(tmp_path / "models/source_only/model.pt", model, meta)
    metrics = evaluate_variant(params, "source_only", tmp_path / "models/source_only", tmp_path / "eval",
                               NullTracker(), test_dir="data/prepared/target/test")
    assert 0.0 <= metrics["map"] <= metrics["map50"] <= 1.0 and metrics["n"] == 8
    rows = (tmp_path / "eval/predictions.csv").read_text().splitlines()
    assert rows[0] == "actual,predicted" and len(rows) > 1
    for name in ("confusion.png", "detections.png"):
        assert (tmp_path / "eval" / name).read_bytes().startswith(b"\x89PNG")
    with pytest.raises(Exception, match="kind"):
        other = parse_params(deep_update(yaml.safe_load(yaml.safe_dump(params.raw)), {"task": {"kind": "classification"}}))
        evaluate_variant(other, "source_only", tmp_path / "models/source_only", tmp_path / "eval2", NullTracker(),
                         test_dir="data/prepared/target/test")
