"""Helpers around inference: reading user images, drawing label maps."""
from .image_io import IMAGE_EXTENSIONS, ImageReadError, read_image
from .visualize import add_legend, class_palette, legend_entries, legend_width, overlay_labels

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageReadError",
    "add_legend",
    "class_palette",
    "legend_entries",
    "legend_width",
    "overlay_labels",
    "read_image",
]
