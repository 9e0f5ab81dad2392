"""Detectors (torchvision FCOS / RetinaNet on the small pyramid backbone): build, losses, features,
frozen task loss, predictions, a tiny training run scored by COCO mAP, and the detections picture."""

from __future__ import annotations

import cv2
import pytest
import torch
from torch import nn

from pipeline.config import DetectorParams
from pipeline.detection.draw import PAD, draw_detections
from pipeline.detection.models import (
    build_detector,
    detection_losses,
    detector_from_config,
    feature_channels,
    feature_maps,
    frozen_detection_loss,
    losses_and_features,
    predict,
)
from pipeline.metrics.detection import coco_map

ARCHITECTURES = ["fcos", "retinanet"]
LOSS_KEYS = {"fcos": {"classification", "bbox_regression", "bbox_ctrness"},
             "retinanet": {"classification", "bbox_regression"}}


def detector(architecture: str, channels: int = 1, size: int = 32, num_classes: int = 3, width: int = 8,
             score_threshold: float = 0.05):
    torch.manual_seed(0)
    params = DetectorParams(architecture=architecture, width=width, score_threshold=score_threshold)
    return build_detector(params, channels, num_classes, size)


def batch(channels: int = 1, size: int = 32, n: int = 3):
    """``n`` random images in [-1, 1]; the last one has no object."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, channels, size, size, generator=g) * 2 - 1
    s = size / 32
    targets = [{"boxes": torch.tensor([[3, 4, 15, 18], [17, 12, 29, 27]], dtype=torch.float32) * s,
                "labels": torch.tensor([0, 2])}
               for _ in range(n - 1)]
    targets.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)})
    return images, targets


def bn_state(model: nn.Module) -> list[torch.Tensor]:
    return [b.clone() for m in model.modules() if isinstance(m, nn.BatchNorm2d)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked)]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [32, 64])
def test_detector_gives_losses_and_in_image_boxes_without_resizing(architecture, channels, size):
    model = detector(architecture, channels, size, score_threshold=0.0).train()   # every box comes out
    images, targets = batch(channels, size)
    losses = detection_losses(model, images, targets)
    assert set(losses) == LOSS_KEYS[architecture]
    assert all(torch.isfinite(v) and v.ndim == 0 for v in losses.values())
    sum(losses.values()).backward()

    batched, _ = model.transform(list(images))
    assert batched.tensors.shape == images.shape and torch.equal(batched.tensors, images)
    assert batched.image_sizes == [(size, size)] * len(images)
    predictions = predict(model, images)
    assert model.training
    assert len(predictions) == len(images)
    for p in predictions:
        assert set(p) == {"boxes", "scores", "labels"} and p["boxes"].device.type == "cpu"
        assert len(p["boxes"]) == model.detections_per_img
        assert ((p["boxes"] >= 0) & (p["boxes"] <= size)).all()


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_an_image_of_another_size_is_refused_not_resized(architecture):
    model = detector(architecture).eval()
    with pytest.raises(ValueError, match="32x32"):
        predict(model, torch.zeros(1, 1, 64, 64))


def test_an_unknown_architecture_is_a_clear_error():
    with pytest.raises(ValueError, match="task.detector.architecture"):
        build_detector(DetectorParams(architecture="yolo"), 1, 3, 32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_detector_from_config_rebuilds_the_same_state_dict_layout(architecture):
    model = detector(architecture, channels=3, size=64)
    rebuilt = detector_from_config(dict(model.sim2real_config))
    assert rebuilt.sim2real_config == model.sim2real_config
    want, got = model.state_dict(), rebuilt.state_dict()
    assert list(got) == list(want)
    assert all(got[k].shape == want[k].shape for k in want)
    rebuilt.load_state_dict(want, strict=True)
    images, _ = batch(3, 64)
    for a, b in zip(predict(model, images), predict(rebuilt, images)):
        assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_losses_and_features_match_detection_losses_from_one_forward(architecture):
    model = detector(architecture).train()
    images, targets = batch()
    plain = detection_losses(model, images, targets)
    losses, maps = losses_and_features(model, images, targets)
    assert set(losses) == set(plain)
    assert all(torch.allclose(losses[k], plain[k]) for k in plain)
    assert maps.shape == (len(images), feature_channels(model), 4, 4)
    assert torch.allclose(maps, feature_maps(model, images))
    maps.square().mean().backward()   # the map is in the graph: a domain loss on it reaches the body
    assert model.backbone.body.stages[0][0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_frozen_detection_loss_reaches_the_images_and_leaves_the_model_alone(architecture):
    model = detector(architecture).train()
    model.backbone.body.stages[0].eval()               # a mixed state, to be restored as it was
    model.head.regression_head.requires_grad_(False)   # so are mixed requires_grad flags
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    params = [p.detach().clone() for p in model.parameters()]
    stats = bn_state(model)
    images, targets = batch()
    images.requires_grad_(True)

    loss = frozen_detection_loss(model, images, targets)
    loss.backward()

    assert loss.ndim == 0 and torch.isfinite(loss)
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(stats, bn_state(model)))
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags


def shapes_canvases(n: int = 24, size: int = 32, seed: int = 0):
    """``n`` black canvases with 1-2 non-overlapping white objects of 9-16 px: class 0 a filled square,
    class 1 a cross."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, 1, size, size), -1.0)
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(1 + int(torch.randint(0, 2, (1,), generator=g))):
            side = int(torch.randint(9, 17, (1,), generator=g))
            x, y = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
            if any(x < b[2] and x + side > b[0] and y < b[3] and y + side > b[1] for b in boxes):
                continue
            label = int(torch.randint(0, 2, (1,), generator=g))
            if label == 0:
                images[i, :, y:y + side, x:x + side] = 1.0
            else:
                mid, half = side // 2, max(1, side // 5)
                images[i, :, y:y + side, x + mid - half:x + mid + half] = 1.0
                images[i, :, y + mid - half:y + mid + half, x:x + side] = 1.0
            boxes.append([x, y, x + side, y + side])
            labels.append(label)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor(labels, dtype=torch.int64)})
    return images, targets


@pytest.mark.slow   # 5-10 s per architecture at one thread
@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_tiny_training_run_learns_to_detect_squares_and_crosses(architecture):
    images, targets = shapes_canvases()
    model = detector(architecture, num_classes=2, width=8).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    history = []
    for _ in range(150):
        loss = sum(detection_losses(model, images, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    assert sum(history[-10:]) / 10 < 0.5 * sum(history[:10]) / 10
    scores = coco_map(predict(model, images), targets, ["square", "cross"])
    assert scores["map50"] >= 0.5, scores


@pytest.mark.parametrize("channels", [1, 3])
def test_draw_detections_writes_a_png_grid_of_the_expected_size(tmp_path, channels):
    n, size, columns = 10, 32, 4
    images = torch.randint(0, 256, (n, size, size, channels), dtype=torch.uint8).numpy()
    _, targets = batch(size=size, n=n)
    predictions = [{"boxes": t["boxes"] + 1, "labels": t["labels"], "scores": torch.full((len(t["labels"]),), 0.8)}
                   for t in targets]
    path = draw_detections(images, predictions, targets, ["a", "b", "c"], tmp_path / "sub" / "det.png",
                           columns=columns)
    picture = cv2.imread(str(path))
    tile = size * 4   # the default scale brings 32 px tiles to 128 px
    assert picture.shape == (3 * (tile + PAD) + PAD, columns * (tile + PAD) + PAD, 3)
    assert (picture[..., 2] > 200).any() and (picture[..., 1] > 150).any()   # red predictions, green truth
