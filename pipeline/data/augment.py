"""Training augmentations: the ``augment`` list of params.yaml as one albumentations pipeline.

Each step ``{name, params}`` becomes ``getattr(albumentations, name)(**params, strict=True)``, so an
unknown transform, an unknown argument or a bad value is a :class:`ConfigError` naming
``augment[i].name`` or ``augment[i].params`` before any training starts.

Albumentations 2.x draws from its own generator, not from NumPy's global one, so a run is only
reproducible (and resumable) when that generator is seeded: :meth:`Augment.reseed` is called at
the start of every epoch with a seed derived from the run seed and the epoch.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from pipeline.config import AugmentStep, ConfigError

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


class Augment:
    """``(H, W, C)`` uint8 -> augmented ``(H, W, C)`` uint8 (the channel axis is kept for C = 1)."""

    def __init__(self, compose):
        self.compose = compose

    def __call__(self, image: np.ndarray) -> np.ndarray:
        out = self.compose(image=image)["image"]
        if out.ndim == 2:  # some OpenCV-backed transforms drop a single channel axis
            out = out[:, :, None]
        if out.shape != image.shape or out.dtype != np.uint8:
            raise ValueError(f"augment: expected the output to keep shape {image.shape} and dtype uint8, "
                             f"got {out.shape} {out.dtype}; use shape-preserving transforms")
        return out

    def reseed(self, seed: int) -> None:
        """Reset albumentations' generator: the same seed gives the same sequence of augmentations."""
        self.compose.set_random_seed(int(seed) % 2**32)

    def __repr__(self) -> str:
        return f"Augment({[type(t).__name__ for t in self.compose.transforms]})"


def _build_step(i: int, step: AugmentStep, key: str = "augment"):
    import albumentations as A

    cls = getattr(A, step.name, None)
    if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
        raise ConfigError(f"{key}[{i}].name: {step.name!r} is not an albumentations transform "
                          "(expected a class name such as Affine, GaussianBlur, RandomBrightnessContrast)")
    try:
        return cls(**step.params, strict=True)
    except Exception as exc:  # pydantic ValidationError, TypeError, ValueError ...
        raise ConfigError(f"{key}[{i}].params: bad arguments {step.params!r} for {step.name} "
                          f"({exc.__class__.__name__}: {exc})") from None


def build_augment(steps: Sequence[AugmentStep], seed: int = 0, key: str = "augment") -> Augment | None:
    """Compose the steps in order; ``None`` when there are none (no augmentation). Errors name
    ``<key>[i]`` (``augment.strong[2].params``)."""
    if not steps:
        return None
    import albumentations as A

    transforms = [_build_step(i, step, key) for i, step in enumerate(steps)]
    return Augment(A.Compose(transforms, seed=int(seed) % 2**32))
