"""MaskCLIP: training-free open-vocabulary segmentation with a frozen CLIP (Zhou et al., "Extract Free Dense Labels
from CLIP", ECCV 2022)."""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor
from torch.nn import functional as F

from ..clip.dense_features import dense_clip_features, dense_stride
from ..clip.region_encoder import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from ..dense_clip.maskclip_head import MaskCLIPHead
from .base import OpenVocabSegmentor, build_clip_and_text_embedders, default_vocabularies

__all__ = ["MaskCLIP"]


@META_ARCH_REGISTRY.register()
class MaskCLIP(OpenVocabSegmentor):
    """CLIP's dense features classified by cosine similarity with the vocabulary's prompt-ensembled text embeddings.

    Each image is normalised as CLIP expects, padded with CLIP's mean colour to a multiple of the image tower's
    output stride, and encoded once (:func:`~zegseg.modeling.clip.dense_features.dense_clip_features`: the ViT's
    last block by its value path, or the ResNet attention pool's value and output projections per position);
    :class:`~zegseg.modeling.dense_clip.maskclip_head.MaskCLIPHead` scores every position (optional prompt
    denoising and key smoothing), and the (K, h, w) map is resized bilinearly to the padded input, cropped to the
    image and resized to the output. Every class counts as unseen to it: nothing is trained, so MODEL.WEIGHTS stays
    empty. The image size is the test mapper's (INPUT.MIN_SIZE_TEST; the official configs resize the shorter side
    to 512 for ViT-B/16).
    """

    needs_trained_weights = False

    @configurable
    def __init__(self, *, head: MaskCLIPHead, **kwargs):
        """
        Args:
            head: the dense classifier and its refinements.
            kwargs: see :class:`OpenVocabSegmentor` (no backbone; ``pixel_mean``/``pixel_std`` are CLIP's, in
                ``input_format`` order; ``size_divisibility`` the CLIP tower's output stride).
        """
        super().__init__(backbone=None, **kwargs)
        self.head = head

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        clip_model, text_embedders = build_clip_and_text_embedders(cfg)
        order = slice(None, None, -1) if cfg.INPUT.FORMAT == "BGR" else slice(None)
        return {
            "head": MaskCLIPHead(cfg),
            "clip_model": clip_model,
            **text_embedders,
            **default_vocabularies(cfg),
            "pixel_mean": [255.0 * m for m in CLIP_PIXEL_MEAN[order]],
            "pixel_std": [255.0 * s for s in CLIP_PIXEL_STD[order]],
            "size_divisibility": dense_stride(clip_model),
            "input_format": cfg.INPUT.FORMAT,
        }

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]]:
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) 0-255 in ``input_format``; optional
                "height"/"width" of the output.
        Returns:
            per image ``{"sem_seg": (K, height, width)}`` scores (see :meth:`MaskCLIPHead.forward`).
        Raises:
            RuntimeError: in training mode (MaskCLIP has nothing to train).
        """
        if self.training:
            raise RuntimeError("MaskCLIP is training-free: evaluate it with --eval-only (nothing to train)")
        return self.inference(batched_inputs)

    @torch.inference_mode()
    def inference(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]]:
        """Per image ``{"sem_seg": (K, height, width)}`` scores; one CLIP forward for the batch."""
        images = self.preprocess_images(batched_inputs)  # CLIP-normalised, padded with 0 (CLIP's mean colour)
        x = images.tensor.flip(1) if self.input_format == "BGR" else images.tensor
        dense = dense_clip_features(self.clip_model, x)
        scores = self.head(dense.features, dense.keys, self.test_text_embeddings)
        scores = F.interpolate(scores, size=x.shape[-2:], mode="bilinear", align_corners=False)
        results = []
        for i, inp in enumerate(batched_inputs):
            size = images.image_sizes[i]
            height, width = inp.get("height", size[0]), inp.get("width", size[1])
            results.append({"sem_seg": self.resize_to_output(scores[i], size, height, width)})
        return results
