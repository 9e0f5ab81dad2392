"""The preprocessing JSON written beside each exported file: what a caller must feed it and gets back.

The facts come from the code that prepares every image of the pipeline and from the model's meta,
never restated by hand: the value range and scale are what :func:`pipeline.data.manifest.to_tensor`
gives for the pixel values 0, 1 and 255; the size, channels and classes are the model's meta; the
outputs are the task kind's (:meth:`~pipeline.task.kind.TaskKind.shipped_outputs`). A caller decodes
an image as :func:`pipeline.data.images.load_image` does (the ``decode`` steps), scales it, lays it out
NCHW (CHW for a per-image detector) as float32, and reads the outputs as ``outputs`` says.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.data.manifest import to_tensor
from pipeline.ship.shippable import Shippable

#: What :func:`pipeline.data.images.load_image` does to a file before it is scaled, in order.
DECODE_STEPS = (
    "turn the image upright as its EXIF orientation tag says",
    "16-bit and 32-bit images: rescale to 8 bits by their full range",
    "composite any alpha channel on black",
    "convert to {color}",
    "resize to {size}x{size} pixels with bilinear interpolation (PIL), stretching: no crop, no padding",
)
COLORS = {1: "grey (PIL mode L: L = R * 299/1000 + G * 587/1000 + B * 114/1000)", 3: "RGB"}


def scaling() -> dict[str, Any]:
    """How :func:`~pipeline.data.manifest.to_tensor` maps a uint8 pixel ``p`` to the network's input
    (a linear map: read from its values at 0 and 255)."""
    low, high = (float(v) for v in to_tensor(np.array([[[0]], [[255]]], np.uint8)).reshape(-1))
    divisor = round(255.0 / (high - low), 6)
    return {"value_range": [low, high], "formula": f"x = p / {divisor:g} - {-low:g}",
            "divisor": divisor, "offset": low}


def input_contract(shippable: Shippable) -> dict[str, Any]:
    """The ``input`` entry: name, shape, layout, dtype, how an image file becomes that tensor."""
    c, s = shippable.channels, shippable.image_size
    shape: list[Any] = [c, s, s] if shippable.per_image else ["batch", c, s, s]
    contract = {"name": input_name(shippable), "shape": shape, "layout": "CHW" if shippable.per_image else "NCHW",
                "dtype": "float32", "image_size": s, "channels": c, "color": COLORS.get(c, f"{c} channels"),
                "decode": [step.format(color=COLORS.get(c, f"{c} channels").split(" (")[0], size=s)
                           for step in DECODE_STEPS],
                "decoded_by": "pipeline/data/images.py:load_image",
                **scaling(), "scaled_by": "pipeline/data/manifest.py:to_tensor"}
    if shippable.meta.get("source_inverted"):
        contract["invert_raw_renders"] = ("the generator learnt from renders prepare inverted to the real images' "
                                          "ink polarity: invert raw renders first (p = 255 - p); images of a "
                                          "prepared split already are")
    return contract


def input_name(shippable: Shippable) -> str:
    """The exported file's input name: ``image`` for a per-image model, else ``images``."""
    return "image" if shippable.per_image else "images"


def preprocessing(shippable: Shippable, fmt: str, file_name: str, check: dict[str, Any]) -> dict[str, Any]:
    """The whole JSON for the exported file ``file_name`` of format ``fmt`` (its ``check`` included)."""
    meta = shippable.meta
    return {
        "file": file_name,
        "format": fmt,
        "what": shippable.what,
        "exported_from": str(shippable.source),
        "variant": meta.get("variant"),
        "classes": list(meta.get("classes", [])),
        "input": input_contract(shippable),
        "outputs": shippable.outputs,
        "check": check,
    }
