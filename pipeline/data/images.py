"""Decode any image file (L, RGB, RGBA, P, 16-bit, ...) into a uint8 array of the configured shape."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


class BadImageError(ValueError):
    """A file that cannot be used as an image; the message names the file."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _to_uint8(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer/float modes are rescaled to 8 bits by their full range."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        if img.mode == "F":
            top = max(float(arr.max(initial=0)), 1.0)
        return Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    return img


def convert_image(img: Image.Image, channels: int, size: int) -> np.ndarray:
    """PIL image -> ``(size, size, channels)`` uint8; alpha is composited on black."""
    img = _to_uint8(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, rgba)
    img = img.convert("L" if channels == 1 else "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if channels == 1 else arr


def load_image(path: str | Path, channels: int, size: int) -> np.ndarray:
    """Read ``path`` as ``(size, size, channels)`` uint8, or raise :class:`BadImageError` naming it."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"{path}: empty (zero-byte) file, expected an image")
        with Image.open(path) as img:
            img.load()
            return convert_image(img, channels, size)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
