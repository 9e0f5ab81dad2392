"""Decode any image file (L, RGB, RGBA, P, 16-bit, ...) into a uint8 array of the configured shape."""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")

# The default of ``data.max_image_pixels`` (pipeline/config/schema.py): 40 megapixels, far above any training
# image and far below what would exhaust memory when decoded.
DEFAULT_MAX_PIXELS = 40_000_000

# EXIF orientations that turn the stored pixels a quarter turn (width and height swap when shown upright).
QUARTER_TURN_ORIENTATIONS = (5, 6, 7, 8)


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


def upright(img: Image.Image) -> Image.Image:
    """``img`` (loaded) turned in place as its EXIF orientation tag says, so its pixels are what a viewer
    shows: a phone stores a portrait photo sideways with a tag rather than turning the pixels."""
    ImageOps.exif_transpose(img, in_place=True)
    return img


def upright_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of the image at ``path`` as shown upright (what :func:`load_image` decodes):
    the stored size, swapped when the EXIF orientation tag turns the image a quarter turn."""
    with Image.open(path) as img:
        width, height = img.size
        turned = img.getexif().get(ExifTags.Base.Orientation, 1) in QUARTER_TURN_ORIENTATIONS
    return (height, width) if turned else (width, height)


def too_many_pixels(path: Path, size: tuple[int, int], max_pixels: int) -> Optional[str]:
    """The refusal message when an image of ``size`` (width, height) exceeds ``max_pixels``, else None."""
    width, height = size
    if width * height <= max_pixels:
        return None
    return (f"{path}: image is {width}x{height} = {width * height} pixels, more than data.max_image_pixels = "
            f"{max_pixels}; refusing to decode it (decompression bomb guard)")


@contextlib.contextmanager
def pil_pixel_limit(max_pixels: Optional[int]) -> Iterator[None]:
    """Inside: PIL's own bomb limit is ``max_pixels`` (None: off) and its bomb warning is an error.

    PIL's module-wide ``Image.MAX_IMAGE_PIXELS`` and the warning filters are restored on exit, so no
    global state outlives the call (inside, they hold for the whole process: the pipeline decodes in
    one thread per process, DataLoader workers being processes).
    """
    previous = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = max_pixels
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def load_image(path: str | Path, channels: int, size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read ``path`` as ``(size, size, channels)`` uint8, or raise :class:`BadImageError` naming it.

    An image of more than ``max_pixels`` pixels (width x height, read from the header) is refused
    before any pixel data is decoded; so is a frame or tile that PIL finds larger while decoding.
    An EXIF orientation tag is applied before converting and resizing (see :func:`upright`).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"{path}: empty (zero-byte) file, expected an image")
        with pil_pixel_limit(None):  # header only: our check below decides, naming the size
            img = Image.open(path)
        with img, pil_pixel_limit(max_pixels):
            refusal = too_many_pixels(path, img.size, max_pixels)
            if refusal is not None:
                raise BadImageError(refusal)
            img.load()
            return convert_image(upright(img), channels, size)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(f"{path}: file not found") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImageError(f"{path}: part of the image is larger than data.max_image_pixels = {max_pixels} "
                            f"({exc}); refusing to decode it (decompression bomb guard)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImageError(f"{path}: not a readable image ({exc.__class__.__name__}: {exc})") from None
