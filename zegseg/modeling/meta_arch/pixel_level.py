"""A pixel-level zero-shot baseline: every pixel is classified against the text embeddings (LSeg / SPNet-FPN style).

LSeg (Li et al., ICLR 2022) and SPNet (Xian et al., CVPR 2019) embed each pixel into the space of the class-name
embeddings and classify it by similarity; unseen classes are segmented by swapping the vocabulary. This is the
baseline the segment-level models (ZegFormer, the two-stage model) are compared against.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from ..inference import calibrate
from ..pixel_decoder import build_pixel_decoder
from ..text_classifier import TextEmbeddingClassifier
from .base import OpenVocabSegmentor, open_vocab_config

__all__ = [
    "SPATIAL_ACTIVATIONS",
    "SPATIAL_BLOCKS",
    "PixelLevelZS",
    "SpatialRegularizationBlock",
    "build_spatial_blocks",
]

SPATIAL_BLOCKS = ("none", "depthwise", "bottleneck")
SPATIAL_ACTIVATIONS = {"lrelu": nn.LeakyReLU, "tanh": nn.Tanh, "relu": nn.ReLU}


class SpatialRegularizationBlock(nn.Module):
    """One of LSeg's spatial regularisation blocks on per-pixel class logits.

    Both kinds convolve every class map with the same single-channel 3x3 kernel ("depthwise" with one shared
    filter), so they hold no per-class weights: they work for any vocabulary size, and permuting the classes of
    the input permutes the output identically.

    - "depthwise": ``y_k = conv(x_k)``.
    - "bottleneck": ``y_k = conv(x_k) + max_j x_j``, a term shared by all classes that pools over the class
      dimension (LSeg's BottleneckBlock).

    An optional non-linearity follows (LSeg applies it after every block but the last). The kernel starts as the
    identity (a centred 1, no bias), so an untrained block leaves the classifier's logits unchanged.
    """

    def __init__(self, *, kind: str, activation: str = "", kernel_size: int = 3):
        """
        Args:
            kind: "depthwise" or "bottleneck".
            activation: a key of :data:`SPATIAL_ACTIVATIONS`, or "" for none.
            kernel_size: odd spatial size of the shared kernel.
        Raises:
            ValueError: an unknown kind or activation, or an even kernel size.
        """
        super().__init__()
        if kind not in SPATIAL_BLOCKS[1:]:
            raise ValueError(f"unknown spatial block {kind!r}; known: {', '.join(SPATIAL_BLOCKS[1:])}")
        if activation and activation not in SPATIAL_ACTIVATIONS:
            raise ValueError(f"unknown spatial activation {activation!r}; known: {', '.join(SPATIAL_ACTIVATIONS)}")
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kind = kind
        self.conv = nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2)
        nn.init.dirac_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.activation = SPATIAL_ACTIVATIONS[activation]() if activation else nn.Identity()

    def forward(self, logits: Tensor) -> Tensor:
        """
        Args:
            logits: (B, K, H, W) per-pixel class logits.
        Returns:
            (B, K, H, W) regularised logits.
        """
        b, k, h, w = logits.shape
        out = self.conv(logits.reshape(b * k, 1, h, w)).view(b, k, h, w)
        if self.kind == "bottleneck":
            out = out + logits.amax(dim=1, keepdim=True)
        return self.activation(out)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"


def build_spatial_blocks(kind: str, num_blocks: int, activation: str = "lrelu") -> nn.Sequential:
    """``num_blocks`` spatial regularisation blocks of one kind, the activation after all but the last.

    Args:
        kind: "none" (an empty, identity sequence), "depthwise" or "bottleneck".
        num_blocks: how many blocks (each with its own kernel); ignored for "none".
        activation: a key of :data:`SPATIAL_ACTIVATIONS`.
    Raises:
        ValueError: an unknown kind or activation, or fewer than one block of a real kind.
    """
    if kind not in SPATIAL_BLOCKS:
        raise ValueError(f"unknown spatial block {kind!r}; known: {', '.join(SPATIAL_BLOCKS)}")
    if activation not in SPATIAL_ACTIVATIONS:
        raise ValueError(f"unknown spatial activation {activation!r}; known: {', '.join(SPATIAL_ACTIVATIONS)}")
    if kind == "none":
        return nn.Sequential()
    if num_blocks < 1:
        raise ValueError(f"spatial block {kind!r} needs NUM_SPATIAL_BLOCKS >= 1, got {num_blocks}")
    return nn.Sequential(
        *(
            SpatialRegularizationBlock(kind=kind, activation=activation if i < num_blocks - 1 else "")
            for i in range(num_blocks)
        )
    )


@META_ARCH_REGISTRY.register()
class PixelLevelZS(OpenVocabSegmentor):
    """Pixel-level zero-shot segmentation.

    The backbone and pixel decoder give per-pixel features at the mask-feature stride (4); a 1x1 convolution
    projects them to the CLIP embedding width, and each pixel is classified by ``cos(pixel, T_c) / temperature``
    against the frozen CLIP text embeddings of the vocabulary (no "no object" class). Optional LSeg spatial
    regularisation blocks refine the logit maps. Training: the logits, upsampled (bilinear) to the input size, get
    a per-pixel cross-entropy over the seen classes, ignoring pixels labelled ``ignore_value`` (unseen classes and
    padding). Inference: softmax over the vocabulary at the input size, optionally minus gamma on seen classes.
    """

    @configurable
    def __init__(
        self,
        *,
        pixel_decoder: nn.Module,
        mask_dim: int,
        text_classifier: TextEmbeddingClassifier,
        spatial_blocks: nn.Module,
        ignore_value: int = 255,
        calibration_gamma: float = 0.0,
        amp: bool = True,
        **kwargs,
    ):
        """
        Args:
            pixel_decoder: backbone features → :class:`PixelDecoderOutput` whose ``mask_features``
                (B, mask_dim, H / s, W / s) are the per-pixel features.
            mask_dim: channels of the mask features.
            text_classifier: a ``pixel_level`` :class:`TextEmbeddingClassifier` (cosine / temperature).
            spatial_blocks: (B, K, h, w) logits → (B, K, h, w) logits, class-order independent (e.g. from
                :func:`build_spatial_blocks`; an empty ``nn.Sequential`` for none).
            ignore_value: label of pixels without a training class (unseen classes, padding).
            calibration_gamma: subtracted from seen-class probabilities at inference.
            amp: autocast the network at inference on CUDA.
            kwargs: see :class:`OpenVocabSegmentor`.
        Raises:
            ValueError: ``text_classifier`` is not pixel-level.
        """
        super().__init__(**kwargs)
        if not text_classifier.pixel_level:
            raise ValueError("PixelLevelZS needs a TextEmbeddingClassifier built with pixel_level=True")
        embed_dim = int(self.clip_model.text_projection.shape[1])
        self.pixel_decoder = pixel_decoder
        self.pixel_proj = nn.Conv2d(mask_dim, embed_dim, kernel_size=1)
        self.text_classifier = text_classifier
        self.spatial_blocks = spatial_blocks
        self.ignore_value = ignore_value
        self.calibration_gamma = calibration_gamma
        self.amp = amp

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        shared = open_vocab_config(cfg)
        clip_model = shared["clip_model"]
        pl = cfg.MODEL.PIXEL_LEVEL
        return {
            **shared,
            "pixel_decoder": build_pixel_decoder(cfg, shared["backbone"].output_shape()),
            "mask_dim": cfg.MODEL.PIXEL_DECODER.MASK_DIM,
            "text_classifier": TextEmbeddingClassifier(
                embed_dim=int(clip_model.text_projection.shape[1]),
                temperature=pl.TEMPERATURE,
                no_object=False,
                pixel_level=True,
            ),
            "spatial_blocks": build_spatial_blocks(pl.SPATIAL_BLOCK, pl.NUM_SPATIAL_BLOCKS, pl.SPATIAL_ACTIVATION),
            "ignore_value": int(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).ignore_label) if cfg.DATASETS.TRAIN else 255,
            "calibration_gamma": pl.CALIBRATION_GAMMA,
            "amp": cfg.TEST.AMP,
        }

    def predict(self, images: Tensor) -> Tensor:
        """Per-pixel class logits.

        Args:
            images: (B, 3, H, W) normalised, padded images.
        Returns:
            (B, K, H / s, W / s) logits over :attr:`class_names` at the mask-feature stride s.
        """
        features = self.backbone(images)
        pixels = self.pixel_proj(self.pixel_decoder(features).mask_features)  # (B, D, h, w)
        logits = self.text_classifier(pixels, self.text_embeddings)
        return self.spatial_blocks(logits)

    def losses(self, logits: Tensor, targets: Tensor) -> Dict[str, Tensor]:
        """Per-pixel cross-entropy at the label resolution.

        Args:
            logits: (B, K, h, w) logits; upsampled (bilinear) to the targets' size.
            targets: (B, H, W) long class ids, ``ignore_value`` where no training class applies.
        Returns:
            {"loss_sem_seg": scalar}: mean over the labelled pixels; 0 (with zero gradients) when none is.
        """
        logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
        valid = targets != self.ignore_value
        if not valid.any():
            return {"loss_sem_seg": logits.sum() * 0.0}
        return {"loss_sem_seg": F.cross_entropy(logits, targets, ignore_index=self.ignore_value)}

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]] | Dict[str, Tensor]:
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) and, in training, "sem_seg" (H, W) long ids
                over the training vocabulary; optional "height"/"width" at inference.
        Returns:
            training: {"loss_sem_seg"}; inference: per image ``{"sem_seg": (K, height, width)}`` class
            probabilities (minus gamma on seen classes when calibrating).
        Raises:
            ValueError: a training input without "sem_seg".
        """
        images = self.preprocess_images(batched_inputs)
        if self.training:
            if any("sem_seg" not in x for x in batched_inputs):
                raise ValueError("PixelLevelZS trains on per-pixel labels: every input needs 'sem_seg' (H, W)")
            targets = ImageList.from_tensors(
                [x["sem_seg"].to(self.device) for x in batched_inputs],
                self.size_divisibility,
                pad_value=self.ignore_value,
            ).tensor
            return self.losses(self.predict(images.tensor), targets)
        amp = self.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, enabled=amp):
            logits = self.predict(images.tensor)
        results = []
        for i, x in enumerate(batched_inputs):
            height, width = x.get("height", images.image_sizes[i][0]), x.get("width", images.image_sizes[i][1])
            probs = self.segment_image(logits[i].float(), tuple(images.tensor.shape[-2:]))
            results.append({"sem_seg": self.resize_to_output(probs, images.image_sizes[i], height, width)})
        return results

    def segment_image(self, logits: Tensor, padded_size: Sequence[int]) -> Tensor:
        """Per-pixel class scores of one image.

        Args:
            logits: (K, h, w) logits at the mask-feature stride.
            padded_size: (H_pad, W_pad) of the padded input.
        Returns:
            (K, H_pad, W_pad) probabilities, calibrated by gamma on seen classes.
        """
        logits = F.interpolate(logits[None], size=tuple(padded_size), mode="bilinear", align_corners=False)[0]
        return calibrate(logits.softmax(0), ~self.test_unseen_mask, self.calibration_gamma)
