"""Drawing label maps: a colour per class, an overlay on the image, and a legend panel (PIL, no GUI).

All images here are (H, W, 3) uint8 in RGB order, like the palette.
"""
from __future__ import annotations

from functools import cache
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "UNKNOWN_COLOR",
    "add_legend",
    "class_palette",
    "legend_entries",
    "legend_font_size",
    "legend_width",
    "overlay_labels",
]

UNKNOWN_COLOR: Tuple[int, int, int] = (128, 128, 128)  # legend swatch of unknown pixels (drawn desaturated)

_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_MAX_NAME_CHARS = 40

Entry = Tuple[str, Optional[Tuple[int, int, int]]]


def class_palette(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours: hues spaced by the golden angle, alternating saturation and value.

    Returns:
        (K, 3) uint8 RGB; colour k depends only on k, so a class keeps its colour across images.
    """
    k = np.arange(num_classes)
    hsv = np.stack(
        [
            np.round((k * 0.618033988749895) % 1.0 * 255),
            np.where(k % 2 == 0, 230, 160),
            np.array([250, 200, 160])[(k // 2) % 3],
        ],
        axis=-1,
    ).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB_FULL)[0]


def overlay_labels(
    image: np.ndarray, labels: np.ndarray, palette: np.ndarray, alpha: float = 0.5, boundaries: bool = True
) -> np.ndarray:
    """Blend a colour per class into the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) int class indices into ``palette``; negative = unknown (shown desaturated and dimmed).
        palette: (K, 3) uint8 RGB.
        alpha: weight of the class colour.
        boundaries: darken pixels where the label changes, so that neighbouring regions stay apart.
    Returns:
        (H, W, 3) uint8 RGB.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image {image.shape[:2]} and labels {labels.shape} differ in size")
    base = image.astype(np.float32)
    colors = palette[np.clip(labels, 0, None)].astype(np.float32)
    known = (labels >= 0)[..., None]
    tinted = (1.0 - alpha) * base + alpha * colors
    dimmed = np.broadcast_to(0.6 * base.mean(axis=-1, keepdims=True), base.shape)
    out = np.where(known, tinted, dimmed)
    if boundaries:
        edge = np.zeros(labels.shape, dtype=bool)
        edge[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edge[1:, :] |= labels[1:, :] != labels[:-1, :]
        out[edge] *= 0.35
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def legend_entries(
    vocabulary: Sequence[str],
    present: Sequence[int],
    fractions: Sequence[float],
    palette: np.ndarray,
    unknown_fraction: float = 0.0,
) -> List[Entry]:
    """Legend rows "name  12.3%" with their colours, for the classes in ``present`` (in that order).

    Args:
        vocabulary: K class names.
        present: indices of the classes to list.
        fractions: (K,) pixel fraction of each class.
        palette: (K, 3) uint8 RGB.
        unknown_fraction: listed last as "unknown" when positive.
    """
    rows = [
        (f"{_shorten(vocabulary[k])}  {100 * fractions[k]:.1f}%", tuple(int(c) for c in palette[k])) for k in present
    ]
    if unknown_fraction > 0:
        rows.append((f"unknown  {100 * unknown_fraction:.1f}%", UNKNOWN_COLOR))
    return rows


def legend_width(names: Sequence[str], font_size: int) -> int:
    """Width in pixels of a legend panel wide enough for any of ``names`` with a "100.0%" suffix."""
    font = _font(font_size)
    texts = [f"{_shorten(n)}  100.0%" for n in names] + ["unknown  100.0%"]
    return _swatch_offset(font_size) + max(int(np.ceil(font.getlength(t))) for t in texts) + _pad(font_size)


def legend_font_size(image_height: int) -> int:
    """Font size for an image of this height: 1/20 of it, between 11 and 24 px."""
    return int(np.clip(round(image_height / 20), 11, 24))


def add_legend(
    image: np.ndarray, entries: Sequence[Entry], *, panel_width: Optional[int] = None, font_size: Optional[int] = None
) -> np.ndarray:
    """Append a legend panel to the right of the image.

    Args:
        image: (H, W, 3) uint8 RGB.
        entries: (text, RGB colour or ``None`` for no swatch) rows, e.g. from :func:`legend_entries`.
        panel_width: fixed panel width (e.g. :func:`legend_width` of the whole vocabulary, for video frames of a
            constant size); rows that do not fit the image height are then summarised as "+N more". ``None``: the
            panel is as wide as its texts and the canvas grows downwards when the rows need more height.
        font_size: text height in pixels; ``None`` → :func:`legend_font_size`.
    Returns:
        (H', W + panel, 3) uint8 RGB, H' = H when ``panel_width`` is given, else max(H, legend height).
    """
    height, width = image.shape[:2]
    size = font_size or legend_font_size(height)
    font, pad, row = _font(size), _pad(size), _row_height(size)
    rows = list(entries)
    if panel_width is None:
        panel_width = legend_width([], size) if not rows else _swatch_offset(size) + pad + max(
            int(np.ceil(font.getlength(text))) for text, _ in rows
        )
        canvas_height = max(height, 2 * pad + row * len(rows))
    else:
        canvas_height = height
        fit = max((height - 2 * pad) // row, 1)
        if len(rows) > fit:
            rows = rows[: fit - 1] + [(f"+{len(rows) - fit + 1} more", None)]
    panel = Image.new("RGB", (panel_width, canvas_height), _BACKGROUND)
    draw = ImageDraw.Draw(panel)
    for i, (text, color) in enumerate(rows):
        top = pad + i * row
        if color is not None:
            draw.rectangle([pad, top, pad + size, top + size], fill=tuple(color), outline=_TEXT)
        left, upper, _, lower = font.getbbox(text)
        y = top + (size - (lower - upper)) / 2 - upper
        draw.text((_swatch_offset(size) - left, y), text, font=font, fill=_TEXT)
    canvas = np.full((canvas_height, width + panel_width, 3), _BACKGROUND, dtype=np.uint8)
    canvas[:height, :width] = image
    canvas[:, width:] = np.asarray(panel)
    return canvas


def _shorten(name: str) -> str:
    return name if len(name) <= _MAX_NAME_CHARS else name[: _MAX_NAME_CHARS - 3] + "..."


def _pad(font_size: int) -> int:
    return max(font_size // 2, 4)


def _row_height(font_size: int) -> int:
    return font_size + max(font_size // 2, 3)


def _swatch_offset(font_size: int) -> int:
    """x of the text: padding, swatch, gap."""
    return _pad(font_size) + font_size + max(font_size // 2, 4)


@cache
def _font(size: int) -> ImageFont.ImageFont:
    """Pillow's built-in font at ``size`` px (scalable with FreeType; the fixed bitmap font otherwise)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()
