"""Tiny prepared data sets, params and a recording tracker shared by the task, evaluate and held-out tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config import parse_params
from pipeline.data.manifest import HELDOUT_MARKER, write_label_origin, write_manifest
from pipeline.io import save_png

CLASSES = ("a", "b")
SIZE = 16


# ------------------------------------------------------------------------------------------------
# Tiny data and params
# ------------------------------------------------------------------------------------------------


def tiny_image(label: int, rng: np.random.Generator, real: bool) -> np.ndarray:
    """Class ``a``: a bright bar in the top half; ``b``: in the bottom half. ``real``: other contrast and noise."""
    background, ink, noise = (60, 160, 25) if real else (10, 240, 8)
    img = rng.normal(background, noise, (SIZE, SIZE))
    row = rng.integers(1, SIZE // 2 - 3) + (SIZE // 2 if label else 0)
    col = rng.integers(0, SIZE // 2)
    img[row:row + 3, col:col + SIZE // 2] = ink
    return np.clip(img, 0, 255).astype(np.uint8)[:, :, None]


def write_split(folder: Path, n: int, seed: int = 0, real: bool = False, labelled: bool = True,
                heldout: bool = False) -> Path:
    """``n`` tiny images (classes alternating) plus manifest.csv and the labels' origin mark (as
    prepare writes them: ``real`` for labelled real images, ``synthetic`` for renders, ``none``),
    optionally marked held-out."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = i % len(CLASSES)
        save_png(tiny_image(label, rng, real), folder / "images" / f"{i:04d}.png")
        rows.append((f"images/{i:04d}.png", CLASSES[label] if labelled else ""))
    write_manifest(folder, rows)
    write_label_origin(folder, ("real" if real else "synthetic") if labelled else "none")
    if heldout:
        (folder / HELDOUT_MARKER).write_text("held-out test split\n")
    return folder


def tiny_prepared(root: Path, n: int = 48) -> Path:
    """``root/data/prepared/{source/train,source/val,target/train,target/test}``."""
    prepared = root / "data" / "prepared"
    write_split(prepared / "source" / "train", n, seed=1)
    write_split(prepared / "source" / "val", 16, seed=2)
    write_split(prepared / "target" / "train", n // 2, seed=3, real=True)
    write_split(prepared / "target" / "test", 20, seed=4, real=True, heldout=True)
    return prepared


def tiny_task_raw(root: Path, prepared: Path, **task) -> dict:
    """Tiny params: 48 labelled images in batches of 8, so ``eval_every: 6`` is one pass per round."""
    return {
        "seed": 0,
        "data": {"image_size": SIZE, "channels": 1, "classes": list(CLASSES),
                 "source": {"format": "imagefolder", "root": str(root)},
                 "target": {"format": "imagefolder", "root": str(root)}},
        "augment": {"default": [{"name": "Affine", "params": {"rotate": [-5, 5], "p": 0.5}}],
                    "strong": [{"name": "Affine", "params": {"rotate": [-10, 10], "scale": [0.9, 1.1], "p": 1.0}},
                               {"name": "GaussianBlur", "params": {"p": 0.5}}]},
        "task": {"model": "small_cnn", "width": 4, "steps": 12, "eval_every": 6, "batch_size": 8,
                 "select": "source_val", "device": "cpu", "optimizer": {"name": "adam", "lr": 0.01}, **task},
        "variants": {
            "source_only": {"method": "supervised", "train": str(prepared / "source" / "train")},
            "dann": {"method": "dann", "train": str(prepared / "source" / "train"), "params": {"hidden": 8}},
            "self_training": {"method": "self_training", "train": str(prepared / "source" / "train"),
                              "augment": "default", "params": {"weak": "default", "strong": "strong"}},
            "target_oracle": {"method": "supervised", "train": str(prepared / "target" / "train")},
        },
    }


def tiny_params(root: Path, prepared: Path, seed: int = 0, **task):
    return parse_params({**tiny_task_raw(root, prepared, **task), "seed": seed})


def train_tiny_variant(root: Path, variant: str = "source_only", **fields):
    """Tiny data under ``root``, then ``variant`` (its entry updated with ``fields``) trained on CPU;
    returns ``(TrainResult, prepared folder)``."""
    import torch

    from pipeline.distributed import Runtime
    from pipeline.task.train import train_task_model

    prepared = tiny_prepared(root)
    raw = tiny_task_raw(root, prepared)
    raw["variants"][variant].update(fields)
    result = train_task_model(parse_params(raw), variant, Runtime(torch.device("cpu")), RecordingTracker(),
                              root / "ckpt", root / "reports", prepared=prepared)
    return result, prepared


class RecordingTracker:
    """Collects what a stage logs (the NullTracker interface, with memory)."""

    run_id = parent_run_id = None

    def __init__(self):
        self.metrics: list[tuple[dict, int | None]] = []
        self.tags: dict = {}
        self.models: list[str] = []

    def log_metrics(self, metrics, step=None, run_id=None):
        self.metrics.append((dict(metrics), step))

    def set_tags(self, tags, run_id=None):
        self.tags.update(tags)

    def log_model(self, model, name, pip_requirements=None):
        self.models.append(name)

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
