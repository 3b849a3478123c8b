"""Drawing label maps: a colour per class, an overlay on the image, and a legend panel (PIL, no GUI).

All images here are (H, W, 3) uint8 in RGB order, like the palette.

Legend text is drawn with the first font that has a glyph for every character of the row: ``$ZEGSEG_FONT`` (a
``.ttf``/``.otf``/``.ttc`` file) if set, DejaVu Sans (from the system or matplotlib), then common CJK and
wide-coverage fonts when installed (e.g. Debian's ``fonts-noto-cjk``). A class name no font can draw (emoji; CJK
without a CJK font) is never drawn as boxes: its row shows ``#<index>`` and the drawable rest of the name (each
undrawable run as "?"), and a warning names the class once.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from functools import cache, lru_cache
from itertools import groupby
from pathlib import Path
from typing import FrozenSet, List, Optional, Sequence, Tuple

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

logger = logging.getLogger(__name__)

UNKNOWN_COLOR: Tuple[int, int, int] = (128, 128, 128)  # legend swatch of unknown pixels (drawn desaturated)

_BACKGROUND = (32, 32, 32)
_TEXT = (235, 235, 235)
_MAX_NAME_CHARS = 40

Entry = Tuple[str, Optional[Tuple[int, int, int]]]

# Fonts tried after $ZEGSEG_FONT and DejaVu Sans, in order, when installed: CJK and wide-coverage fonts.
_FALLBACK_FONTS: Tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",  # Debian/Ubuntu fonts-noto-cjk
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",  # Arch, Fedora
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",  # fonts-wqy-microhei
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/truetype/droid/DroidSansFallbackFull.ttf",  # fonts-droid-fallback
    "/usr/share/fonts/truetype/noto/NotoSans-Regular.ttf",  # fonts-noto-core
    "/Library/Fonts/Arial Unicode.ttf",  # macOS
    "/System/Library/Fonts/Supplemental/Arial Unicode.ttf",
    "C:/Windows/Fonts/msyh.ttc",  # Windows
    "C:/Windows/Fonts/seguisym.ttf",
)
_LATIN1: FrozenSet[int] = frozenset(range(32, 127)) | frozenset(range(160, 256))


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
        (f"{_legend_name(k, vocabulary[k])}  {100 * fractions[k]:.1f}%", tuple(int(c) for c in palette[k]))
        for k in present
    ]
    if unknown_fraction > 0:
        rows.append((f"unknown  {100 * unknown_fraction:.1f}%", UNKNOWN_COLOR))
    return rows


def legend_width(names: Sequence[str], font_size: int) -> int:
    """Width in pixels of a legend panel wide enough for any of ``names`` with a "100.0%" suffix."""
    texts = [f"{_legend_name(k, n)}  100.0%" for k, n in enumerate(names)] + ["unknown  100.0%"]
    return _swatch_offset(font_size) + max(_text_width(t, font_size) for t in texts) + _pad(font_size)


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
    pad, row = _pad(size), _row_height(size)
    rows = list(entries)
    if panel_width is None:
        panel_width = legend_width([], size) if not rows else _swatch_offset(size) + pad + max(
            _text_width(text, size) for text, _ in rows
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
        text, font = _drawable(text, size)
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


def _legend_name(index: int, name: str) -> str:
    """The name as the legend shows it: shortened, or ``#index`` plus its drawable part when no font has a glyph
    for every character of it (warned once per name)."""
    short = _shorten(name)
    path, drawable = _font_plan(short)
    if drawable == short:
        return short
    label = f"#{index} {drawable}"
    _warn_undrawable(name, "".join(dict.fromkeys(c for c in short if ord(c) not in _coverage(path))), label)
    return label


@cache
def _warn_undrawable(name: str, missing: str, label: str) -> None:
    logger.warning(
        "class name %r has characters no legend font can draw (%r): the legend shows %r. Install a font that has "
        "them (e.g. Debian's fonts-noto-cjk for CJK) or set $ZEGSEG_FONT to its file. "
        "Label maps and JSON keep the full name",
        name, missing, label,
    )


@lru_cache(maxsize=4096)  # legend rows ("name  12.3%") of video frames are many: bounded
def _font_plan(text: str) -> Tuple[str, str]:
    """The font file to draw ``text`` with (``""``: Pillow's built-in font) and the text to draw: ``text`` itself
    when one font has all its characters, else, in the font that has most of them, ``text`` with each run of
    characters it lacks replaced by "?"."""
    files = _font_files() or ("",)
    codes = {ord(c) for c in text}
    for path in files:
        if codes <= _coverage(path):
            return path, text
    best = max(files, key=lambda path: len(codes & _coverage(path)))  # the first of equals
    coverage = _coverage(best)
    runs = groupby(text, key=lambda c: ord(c) in coverage)
    return best, "".join("".join(chars) if ok else "?" for ok, chars in runs)


def _drawable(text: str, size: int) -> Tuple[str, ImageFont.ImageFont]:
    """The text to draw (undrawable runs as "?") and the font to draw it with."""
    path, drawable = _font_plan(text)
    return drawable, _font(size, path)


def _text_width(text: str, size: int) -> int:
    text, font = _drawable(text, size)
    return int(np.ceil(font.getlength(text)))


@cache
def _font_files() -> Tuple[str, ...]:
    """Existing candidate font files, in order of preference."""
    candidates = []
    if os.environ.get("ZEGSEG_FONT"):
        candidates.append(os.path.expanduser(os.environ["ZEGSEG_FONT"]))
        if not os.path.isfile(candidates[-1]):
            logger.warning("$ZEGSEG_FONT=%s is not a file: ignored", candidates[-1])
    candidates.append("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    spec = importlib.util.find_spec("matplotlib")
    if spec is not None and spec.submodule_search_locations:
        mpl = Path(next(iter(spec.submodule_search_locations)))
        candidates.append(str(mpl / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"))
    candidates += _FALLBACK_FONTS
    return tuple(p for p in dict.fromkeys(candidates) if os.path.isfile(p) and _cmap(p))


@cache
def _cmap(path: str) -> FrozenSet[int]:
    """The code points a font file has glyphs for (its first face for a collection); empty if unreadable."""
    try:
        from fontTools.ttLib import TTFont  # a dependency of matplotlib

        with TTFont(path, fontNumber=0, lazy=True) as face:
            return frozenset(face.getBestCmap() or ())
    except Exception as e:  # a corrupt or unsupported file: skip it
        logger.warning("cannot read the font %s (%s): not used for legends", path, e)
        return frozenset()


def _coverage(path: str) -> FrozenSet[int]:
    """Code points a font file has glyphs for; for ``""`` (Pillow's built-in font) printable Latin-1."""
    return _cmap(path) if path else _LATIN1


@cache
def _font(size: int, path: Optional[str] = None) -> ImageFont.ImageFont:
    """A font file at ``size`` px; without one (``""``), Pillow's built-in font (scalable with FreeType)."""
    if path:
        return ImageFont.truetype(path, size)
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()
