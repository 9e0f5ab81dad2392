"""The ``sim2real`` command's defaults, importable without torch (so ``sim2real --help`` is instant)."""

from __future__ import annotations

from pathlib import Path

FORMAT_NAMES = ("torchscript", "onnx")                  # what --format accepts (pipeline.ship.formats.FORMATS)
TOLERANCE = 1e-4                                        # the largest |exported - PyTorch| an export may show
CHECK_IMAGES = Path("data/prepared/target/train")       # real images to check an export on (labels unread)
CHECK_COUNT = 16                                        # how many of them, the first ones
BATCH_SIZE = 256                                        # predict's batches, as the evaluate stage's
