"""Reading user images as (H, W, 3) uint8 RGB, whatever their mode, bit depth or EXIF orientation."""
from __future__ import annotations

import logging
import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageReadError", "read_image"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
"""File endings (lower case) picked up when a whole folder is given as input."""

_HIGH_DEPTH_MODES = ("I", "F")  # Pillow modes of 16/32-bit grey images ("I;16", "I;16B", ... start with "I")


class ImageReadError(ValueError):
    """An input file that is missing, not an image, corrupt, or too large to decode; the message says which."""


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """Read an image file as RGB.

    - EXIF orientation is applied (a photo taken in portrait comes back in portrait).
    - Alpha is dropped (no compositing); grey and palette images become 3 identical / looked-up channels.
    - 16-bit (and 32-bit) grey images are scaled to 8 bits over their type's range (value / 257 for 16-bit);
      16-bit colour images are reduced to 8 bits by Pillow.

    Returns:
        (H, W, 3) uint8 RGB.
    Raises:
        ImageReadError: the file is missing, not an image, truncated/corrupt, or above Pillow's
            decompression-bomb limit.
    """
    try:
        with Image.open(path) as image:
            image.load()
            try:
                image = ImageOps.exif_transpose(image)
            except Exception as e:  # a malformed EXIF block: the pixels are still good
                logger.warning("%s: ignoring unreadable EXIF orientation (%s)", path, e)
            return _to_rgb_uint8(image)
    except FileNotFoundError:
        raise ImageReadError("no such file") from None
    except UnidentifiedImageError:
        raise ImageReadError("not an image file, or a format Pillow cannot read") from None
    except Image.DecompressionBombError as e:
        raise ImageReadError(f"too large to decode safely ({e})") from None
    except (OSError, ValueError, SyntaxError) as e:  # Pillow reports corrupt data with these
        raise ImageReadError(f"corrupt or unreadable image ({e})") from None


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    if image.mode.startswith(_HIGH_DEPTH_MODES):
        grey = _scale_to_uint8(np.asarray(image))
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Float images: [0, 1] (or [0, 255] when larger values occur); integer images: [0, 255] when they fit in 8
    bits, else [0, 65535]. Values outside the range are clipped."""
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float32)
    peak = float(values.max()) if values.size else 0.0
    if is_float and peak <= 1.0:
        values = values * 255.0
    elif peak > 255.0:
        values = values * (255.0 / 65535.0)
    return np.clip(np.round(values), 0, 255).astype(np.uint8)
