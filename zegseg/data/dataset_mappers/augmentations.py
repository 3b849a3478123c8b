"""Training augmentations that detectron2 does not provide."""
from __future__ import annotations

import cv2
import numpy as np
from detectron2.data import transforms as T

__all__ = ["ColorAugSSD", "ColorAugSSDTransform"]


class ColorAugSSDTransform(T.Transform):
    """SSD-style photometric distortion with fixed, already sampled parameters; geometry and labels unchanged.

    Order: brightness, then contrast (before or after the HSV steps), saturation, hue. A parameter equal to
    its identity value (delta 0, factor 1) skips that step.
    """

    def __init__(
        self,
        *,
        img_format: str,
        brightness_delta: float,
        contrast_alpha: float,
        contrast_first: bool,
        saturation_alpha: float,
        hue_delta: int,
    ):
        super().__init__()
        if img_format not in ("BGR", "RGB"):
            raise ValueError(f"ColorAugSSD supports BGR or RGB images, not {img_format!r}")
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 image in ``img_format`` → distorted (H, W, 3) uint8 image."""
        bgr = img[..., ::-1] if self.img_format == "RGB" else img
        out = bgr.astype(np.float32) + self.brightness_delta
        if self.contrast_first:
            out *= self.contrast_alpha
        if self.saturation_alpha != 1.0 or self.hue_delta != 0:
            hsv = cv2.cvtColor(np.clip(out, 0, 255).astype(np.uint8), cv2.COLOR_BGR2HSV).astype(np.int32)
            hsv[..., 0] = (hsv[..., 0] + self.hue_delta) % 180  # OpenCV's 8-bit hue range is [0, 180)
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation_alpha, 0, 255)
            out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR).astype(np.float32)
        if not self.contrast_first:
            out *= self.contrast_alpha
        out = np.clip(out, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(out[..., ::-1] if self.img_format == "RGB" else out)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        return coords

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return segmentation

    def inverse(self) -> T.Transform:
        return T.NoOpTransform()


class ColorAugSSD(T.Augmentation):
    """Random SSD photometric distortion: each of brightness (±``brightness_delta``), contrast
    ([``contrast_low``, ``contrast_high``]), saturation (same range) and hue (±``hue_delta`` OpenCV hue units)
    is applied with probability 0.5; contrast goes first or last with equal probability.
    """

    def __init__(
        self,
        img_format: str,
        brightness_delta: float = 32.0,
        contrast_low: float = 0.5,
        contrast_high: float = 1.5,
        saturation_low: float = 0.5,
        saturation_high: float = 1.5,
        hue_delta: int = 18,
    ):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> ColorAugSSDTransform:
        def maybe(sample, identity):
            return sample() if np.random.rand() < 0.5 else identity

        return ColorAugSSDTransform(
            img_format=self.img_format,
            brightness_delta=maybe(lambda: np.random.uniform(-self.brightness_delta, self.brightness_delta), 0.0),
            contrast_alpha=maybe(lambda: np.random.uniform(self.contrast_low, self.contrast_high), 1.0),
            contrast_first=bool(np.random.rand() < 0.5),
            saturation_alpha=maybe(lambda: np.random.uniform(self.saturation_low, self.saturation_high), 1.0),
            hue_delta=int(maybe(lambda: np.random.randint(-self.hue_delta, self.hue_delta + 1), 0)),
        )
