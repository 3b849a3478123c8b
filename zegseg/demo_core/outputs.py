"""Outputs of the demos: the overlay with its legend, the label-map PNG and the JSON report, written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image

from ..predictor import SegmentationResult
from ..utils.atomic_io import atomic_write
from ..utils.visualize import add_legend, legend_entries, overlay_labels

__all__ = [
    "LABELS_SUFFIX",
    "OVERLAY_SUFFIX",
    "VIDEO_SUFFIX",
    "area_rows",
    "image_report",
    "remove_files",
    "render_result",
    "result_is_complete",
    "write_image_outputs",
    "write_json",
    "write_png",
]

OVERLAY_SUFFIX = "_overlay.png"
LABELS_SUFFIX = "_labels.png"
VIDEO_SUFFIX = "_overlay.mp4"


def result_is_complete(files: Sequence[Path], report: Path) -> bool:
    """Whether an earlier run finished this result: its JSON report, always written last, is complete and every
    other file exists (each file is written atomically, so an existing file is whole)."""
    try:
        json.loads(report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return all(p.is_file() for p in files)


def write_png(path: Path, array: np.ndarray) -> None:
    """(H, W) or (H, W, 3) uint8/uint16 array as a PNG, atomically."""
    with atomic_write(path) as f:
        Image.fromarray(array).save(f, format="PNG")


def write_json(path: Path, data: Dict[str, object]) -> None:
    """Indented UTF-8 JSON, atomically."""
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def remove_files(paths: Sequence[Path]) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


def render_result(
    image_rgb: np.ndarray, result: SegmentationResult, palette: np.ndarray, alpha: float, **legend
) -> np.ndarray:
    """Overlay and legend of the classes present, as (H', W', 3) uint8 RGB.

    Args:
        image_rgb: (H, W, 3) uint8 RGB, the segmented image.
        palette: (K, 3) uint8 RGB, one colour per vocabulary class.
        alpha: opacity of the class colours.
        legend: ``panel_width`` / ``font_size`` for :func:`~zegseg.utils.visualize.add_legend`.
    """
    fractions = np.array(list(result.fractions.values()))
    entries = legend_entries(result.vocabulary, result.present_classes(), fractions, palette, result.unknown_fraction)
    return add_legend(overlay_labels(image_rgb, result.labels, palette, alpha), entries, **legend)


def area_rows(result: SegmentationResult) -> List[Tuple[str, float, int]]:
    """(class, percentage of the image, pixels) of each class present, most frequent first, then ("unknown", ...)
    when some pixels are unknown."""
    size = int(result.labels.size)
    fractions = list(result.fractions.values())
    present = [(result.vocabulary[k], fractions[k]) for k in result.present_classes()]
    if result.unknown_fraction > 0:
        present.append(("unknown", result.unknown_fraction))
    return [(name, round(100 * f, 2), int(round(f * size))) for name, f in present]


def image_report(
    input_name: str,
    result: SegmentationResult,
    labels: np.ndarray,
    confidence_threshold: float,
    targets: Dict[str, Path],
) -> Dict[str, object]:
    """The JSON report of one image: the result's summary, the threshold, and the names of its label map
    (``labels``, as :meth:`SegmentationResult.label_image` returns it) and overlay files."""
    return {
        "input": input_name,
        **result.to_dict(),
        "confidence_threshold": confidence_threshold,
        "label_map": targets["labels"].name,
        "label_dtype": str(labels.dtype),
        "unknown_label": int(np.iinfo(labels.dtype).max),
        "overlay": targets["overlay"].name,
    }


def write_image_outputs(
    path: Path,
    image_rgb: np.ndarray,
    result: SegmentationResult,
    targets: Dict[str, Path],
    *,
    alpha: float,
    confidence_threshold: float,
    palette: np.ndarray,
) -> None:
    """Overlay PNG, label-map PNG and, last, the JSON report of one image (``targets``: "overlay", "labels",
    "json" paths); each file written atomically."""
    write_png(targets["overlay"], render_result(image_rgb, result, palette, alpha))
    labels = result.label_image()
    write_png(targets["labels"], labels)
    write_json(targets["json"], image_report(str(path), result, labels, confidence_threshold, targets))
