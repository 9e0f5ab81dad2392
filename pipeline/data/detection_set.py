"""The Dataset of a prepared detection split, and augmentation that moves the boxes with the pixels.

A prepared detection split is the folder :func:`pipeline.data.coco.write_detection_split` writes: square
``data.image_size`` images, ``annotations.json`` (the boxes) and ``manifest.csv`` (the images alone).
:class:`DetectionSet` decodes the pixels through an unlabelled :class:`~pipeline.data.manifest.ImageSet`
of the same folder (same decoding, preloading and streaming) and reads the boxes with
:func:`~pipeline.data.coco.read_coco`, held-out guard included.

:func:`build_box_augment` turns an ``augment`` pipeline of params.yaml into a :class:`BoxAugment`:
albumentations with ``BboxParams`` (boxes clipped to the image, dropped below 30 % visibility).
A transform that cannot move boxes is refused up front, naming ``augment.<name>[i].name``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from pipeline.config import AugmentStep, ConfigError
from pipeline.data.augment import _build_step
from pipeline.data.coco import ANNOTATIONS_NAME, BoxImage, CocoError, read_coco
from pipeline.data.manifest import HeldOutLabelsError, ImageSet, to_tensor

BoxTransform = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]
Target = dict[str, torch.Tensor]


class DetectionSet(Dataset):
    """A prepared detection split: ``(image tensor (C, H, W) in [-1, 1], {"boxes", "labels"})``.

    ``labels=False`` does not read the boxes (every target is empty): the unlabelled use of a target
    split, which also works on a held-out one. ``transform`` maps ``(image, boxes, labels)`` to the same
    (a :class:`BoxAugment`). Images are decoded at each access, or once for all by :meth:`preload`.
    """

    def __init__(self, folder: str | Path, classes: Sequence[str], channels: int, size: int, labels: bool = True,
                 transform: Optional[BoxTransform] = None, _allow_heldout: bool = False):
        self.folder = Path(folder)
        self.records = read_coco(self.folder / ANNOTATIONS_NAME, classes, labels=labels, _allow_heldout=_allow_heldout)
        self.images = ImageSet(self.folder, classes, channels, size, labels=False)
        self.classes, self.channels, self.size = list(classes), channels, size
        self.labels, self.transform = labels, transform
        _check_split(self.folder, self.records, self.images, size)

    def __len__(self) -> int:
        return len(self.records)

    def nbytes(self) -> int:
        """Memory the decoded split takes: ``len * size * size * channels`` bytes of uint8."""
        return self.images.nbytes()

    def preload(self, max_bytes: int) -> bool:
        """Decode every image once when the split takes at most ``max_bytes``; returns whether it did."""
        return self.images.preload(max_bytes)

    def image(self, i: int) -> np.ndarray:
        """The ``i``-th image as ``(H, W, C)`` uint8, not transformed."""
        return self.images.image(i)

    def boxes(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``i``-th image's ``(K, 4)`` float32 xyxy boxes and ``(K,)`` int64 labels, not transformed."""
        if not self.labels:
            raise HeldOutLabelsError(f"{self.folder}: opened without labels")
        record = self.records[i]
        return record.boxes, record.labels

    def __getitem__(self, i: int) -> tuple[torch.Tensor, Target]:
        image, record = self.image(i), self.records[i]
        boxes, labels = record.boxes, record.labels
        if self.transform is not None:
            image, boxes, labels = self.transform(image, boxes, labels)
        return to_tensor(image), {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                  "labels": torch.tensor(labels, dtype=torch.int64).reshape(-1)}


def _check_split(folder: Path, records: list[BoxImage], images: ImageSet, size: int) -> None:
    """The annotations and the manifest list the same images, each declared ``size`` x ``size``."""
    if [r.path for r in records] != [e.path for e in images.entries]:
        raise CocoError(f"{folder}: {ANNOTATIONS_NAME} and manifest.csv list different images; prepare the split "
                        "again (pipeline.data.coco.write_detection_split writes both)")
    for record in records:
        if (record.width, record.height) != (size, size):
            raise CocoError(f"{folder}: {record.path.name} is declared {record.width}x{record.height} in "
                            f"{ANNOTATIONS_NAME}, but data.image_size is {size}; prepare the split again at this size")


def collate_detection(items: Sequence[tuple[torch.Tensor, Target]]) -> tuple[torch.Tensor, list[Target]]:
    """``(N, C, H, W)`` images and the list of their target dicts (box counts differ between images)."""
    return torch.stack([image for image, _ in items]), [target for _, target in items]


# ------------------------------------------------------------------------------------------------
# Box-aware augmentation
# ------------------------------------------------------------------------------------------------


class BoxAugment:
    """``(image (H, W, C) uint8, boxes (K, 4) xyxy, labels (K,))`` -> the same, augmented together.

    The image keeps its shape (the channel axis too for C = 1); boxes come back clipped to it, and a
    box less than 30 % visible afterwards is dropped with its label.
    """

    def __init__(self, compose):
        self.compose = compose

    def __call__(self, image: np.ndarray, boxes: np.ndarray,
                 labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.compose(image=image, bboxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                           labels=np.asarray(labels, np.int64).reshape(-1))
        result = out["image"][:, :, None] if out["image"].ndim == 2 else out["image"]
        if result.shape != image.shape or result.dtype != np.uint8:
            raise ValueError(f"augment: expected the output to keep shape {image.shape} and dtype uint8, "
                             f"got {result.shape} {result.dtype}; use shape-preserving transforms")
        return (result, np.asarray(out["bboxes"], np.float32).reshape(-1, 4),
                np.asarray(out["labels"], np.int64).reshape(-1))

    def reseed(self, seed: int) -> None:
        """Reset albumentations' generator: the same seed gives the same sequence of augmentations."""
        self.compose.set_random_seed(int(seed) % 2**32)

    def __repr__(self) -> str:
        return f"BoxAugment({[type(t).__name__ for t in self.compose.transforms]})"


def supports_boxes(cls: type) -> bool:
    """Whether the albumentations transform class ``cls`` keeps boxes consistent with the pixels.

    An image-only transform leaves the geometry alone, so boxes pass through it unchanged; a dual
    (geometric) one must list ``Targets.BBOXES`` in ``_targets``, the declaration albumentations 2
    keeps in step with its ``apply_to_bboxes`` implementations (a dual transform without it raises
    NotImplementedError, or silently ignores the boxes, only when called).
    """
    import albumentations as A
    from albumentations.core.type_definitions import Targets

    if issubclass(cls, A.ImageOnlyTransform):
        return True
    targets = getattr(cls, "_targets", ())
    return Targets.BBOXES in (targets if isinstance(targets, tuple) else (targets,))


def _build_box_step(i: int, step: AugmentStep, key: str):
    import albumentations as A

    cls = getattr(A, step.name, None)
    if isinstance(cls, type) and issubclass(cls, A.BasicTransform) and not supports_boxes(cls):
        raise ConfigError(f"{key}[{i}].name: {step.name} does not support bounding boxes, so it cannot augment "
                          "a detection training set (use image-only transforms or geometric ones such as Affine or "
                          "HorizontalFlip)")
    return _build_step(i, step, key)


def build_box_augment(steps: Sequence[AugmentStep], seed: int = 0, key: str = "augment") -> BoxAugment | None:
    """Compose the steps in order with box handling; ``None`` when there are none. Errors name
    ``<key>[i]`` (``augment.strong[2].name``), as :func:`pipeline.data.augment.build_augment` does."""
    if not steps:
        return None
    import albumentations as A

    transforms = [_build_box_step(i, step, key) for i, step in enumerate(steps)]
    bbox_params = A.BboxParams(format="pascal_voc", label_fields=["labels"], min_visibility=0.3, clip=True)
    with warnings.catch_warnings():  # an image-only pipeline is fine: the boxes pass through unchanged
        warnings.filterwarnings("ignore", message="Got processor for bboxes, but no transform to process it")
        compose = A.Compose(transforms, bbox_params=bbox_params, seed=int(seed) % 2**32)
    return BoxAugment(compose)
