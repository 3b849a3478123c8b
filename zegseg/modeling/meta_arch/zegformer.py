"""ZegFormer: decoupled zero-shot semantic segmentation (Ding et al., CVPR 2022)."""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor

from ..inference import calibrate, ensemble_probs, semantic_inference
from .mask_classification import MaskClassificationSegmentor

__all__ = ["ZegFormer"]


@META_ARCH_REGISTRY.register()
class ZegFormer(MaskClassificationSegmentor):
    """Segment-level zero-shot segmentation.

    A pixel decoder and a DETR-style transformer decoder turn N queries into N segment embeddings. Each gives
    (a) a mask embedding, dotted with the per-pixel mask features into a class-agnostic mask, and (b) a semantic
    embedding, classified by cosine similarity / temperature against the CLIP text embeddings of the vocabulary
    plus a learnable "no object" embedding. At inference, (c) optionally the frozen CLIP image encoder scores
    each segment's masked crop, and the two class distributions are ensembled with weight lambda (seen classes
    trust the segment classifier, unseen classes trust CLIP), seen scores are calibrated by gamma, and the
    per-query distributions are assembled into a per-pixel semantic map.
    """

    @configurable
    def __init__(
        self,
        *,
        ensemble_lambda: float = 2.0 / 3.0,
        ensemble_mode: str = "seen_unseen",
        mean_seen_clip: bool = True,
        calibration_gamma: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            ensemble_lambda: weight of the ensemble (see :func:`zegseg.modeling.inference.ensemble_probs`).
            ensemble_mode: "seen_unseen" (the paper's rule) or "all" (lambda towards CLIP for every class).
            mean_seen_clip: replace CLIP's seen-class probabilities by their mean (ZegFormer's reference code).
            calibration_gamma: subtracted from seen-class scores of the semantic map at inference.
            kwargs: see :class:`MaskClassificationSegmentor` (the segment embedding is one linear layer here;
                ``region_classifier=None`` disables the CLIP image branch) and :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        self.ensemble_lambda = ensemble_lambda
        self.ensemble_mode = ensemble_mode
        self.mean_seen_clip = mean_seen_clip
        self.calibration_gamma = calibration_gamma

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        zf = cfg.MODEL.ZEGFORMER
        return {
            **cls.network_config(
                cfg, temperature=zf.TEMPERATURE, normalize_no_object=False, clip_image_branch=zf.CLIP_IMAGE_BRANCH
            ),
            "ensemble_lambda": zf.ENSEMBLE_LAMBDA,
            "ensemble_mode": zf.ENSEMBLE_MODE,
            "mean_seen_clip": zf.MEAN_SEEN_CLIP,
            "calibration_gamma": zf.CALIBRATION_GAMMA,
        }

    def segment_image(self, image: Tensor, logits: Tensor, masks: Tensor, image_size: Sequence[int]) -> Tensor:
        """Per-pixel class scores of one image.

        Args:
            image: (3, H, W) the unnormalised input image (for CLIP crops).
            logits: (Q, K + 1) segment-classification logits.
            masks: (Q, h, w) mask logits over the padded image at the mask-feature stride.
            image_size: (H, W) of the image inside the padding.
        Returns:
            (K, H_pad, W_pad) scores at the padded input resolution.
        """
        probs = logits.softmax(-1)[:, :-1]  # (Q, K)
        if self.region_classifier is not None:
            keep, source = self.choose_clip_queries(probs, masks, image_size)
            if keep is not None:
                probs, masks = probs[keep], masks[keep]
            masks = self.upsample_masks(masks)
            clip_logits, valid = self.region_clip_logits(image, masks, image_size, source)
            probs = ensemble_probs(
                probs,
                clip_logits.softmax(-1),
                self.test_unseen_mask,
                self.ensemble_lambda,
                mode=self.ensemble_mode,
                mean_seen_clip=self.mean_seen_clip,
                clip_valid=valid,
            )
        else:
            masks = self.upsample_masks(masks)
        scores = semantic_inference(probs, masks, cls_probs=True)
        return calibrate(scores, ~self.test_unseen_mask, self.calibration_gamma)

    def clip_weight_bound(self, probs: Tensor) -> Tensor:
        """(Q, K) → (Q,): the ensemble with CLIP probabilities 1, maximised over classes (see the base class)."""
        ones = torch.ones_like(probs)
        return ensemble_probs(
            probs, ones, self.test_unseen_mask, self.ensemble_lambda, mode=self.ensemble_mode
        ).amax(dim=-1)
