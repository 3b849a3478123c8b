"""ZegFormer: decoupled zero-shot semantic segmentation (Ding et al., CVPR 2022)."""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor

from ..inference import calibrate, check_ensemble_mode, ensemble_logits, ensemble_probs
from ..mask_classification import MaskClassificationSegmentor

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
        clip_no_object: bool = True,
        **kwargs,
    ):
        """
        Args:
            ensemble_lambda: weight of the ensemble (see :func:`zegseg.modeling.inference.ensemble_probs`).
            ensemble_mode: "seen_unseen" (the paper's rule) or "all" (lambda towards CLIP for every class).
            mean_seen_clip: replace CLIP's seen-class probabilities by their mean (ZegFormer's reference code).
            calibration_gamma: subtracted from seen-class scores of the semantic map at inference.
            clip_no_object: append the segment's "no object" logit to CLIP's logits before their softmax and drop
                it after (the official code: a query that is probably "no object" gets small CLIP probabilities);
                False: CLIP's softmax over the K classes only.
            kwargs: see :class:`MaskClassificationSegmentor` (the segment embedding is one linear layer here;
                ``region_classifier=None`` disables the CLIP image branch) and :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        self.ensemble_lambda = ensemble_lambda
        self.ensemble_mode = check_ensemble_mode(ensemble_mode)
        self.mean_seen_clip = mean_seen_clip
        self.calibration_gamma = calibration_gamma
        self.clip_no_object = clip_no_object

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
            "clip_no_object": zf.CLIP_NO_OBJECT,
        }

    def combine_with_clip(self, logits: Tensor, clip_logits: Tensor, valid: Tensor) -> Tensor:
        """(M, K + 1), (M, K), (M,) → (M, K): segment-classifier and CLIP probabilities ensembled with λ (see
        :func:`~zegseg.modeling.inference.ensemble_logits`; CLIP abstains where ``valid`` is False, which only the
        "roi_align" crop procedure produces, for empty masks)."""
        return ensemble_logits(
            logits,
            clip_logits,
            self.test_unseen_mask,
            self.ensemble_lambda,
            mode=self.ensemble_mode,
            mean_seen_clip=self.mean_seen_clip,
            clip_valid=valid,
            clip_no_object=self.clip_no_object,
        )

    def calibrate_scores(self, scores: Tensor) -> Tensor:
        """(K, H, W) → (K, H, W): γ subtracted from the seen classes' scores (in place: ``scores`` is the fresh map
        of :meth:`segment_image`)."""
        return calibrate(scores, ~self.test_unseen_mask, self.calibration_gamma, inplace=True)

    def class_prob_bound(self, logits: Tensor) -> Tensor:
        """(Q, K + 1) → (Q, K): the ensemble with the largest probabilities CLIP could give.

        With the "no object" logit ``n`` in CLIP's softmax and CLIP's logits ``scale · cos <= scale``, CLIP's
        probability of any class is at most ``e^scale / (e^scale + e^n) = sigmoid(scale - n)``; without it, 1. A mean
        over the seen classes (``mean_seen_clip``) is also at most ``1 / #seen``, CLIP's probabilities summing to at
        most 1. Under the "roi_align" crop procedure an empty mask gets CLIP probability 1 (CLIP abstains), so
        there the bound is the ensemble with 1.
        """
        probs = logits.softmax(-1)[:, :-1]
        clip_max = torch.ones_like(probs)
        always_seen = self.region_classifier is not None and self.region_classifier.crops_padded_input
        if always_seen and self.clip_no_object:
            scale = self.region_classifier.scale(self.clip_model) * (1 + 1e-6)  # cos may round a hair above 1
            clip_max = (scale - logits[:, -1:].float()).sigmoid().expand_as(probs)
        seen = ~self.test_unseen_mask.to(probs.device)
        if always_seen and self.mean_seen_clip and self.ensemble_mode == "seen_unseen" and bool(seen.any()):
            clip_max = torch.where(seen, clip_max.clamp(max=1.0 / int(seen.sum())), clip_max)
        return ensemble_probs(probs, clip_max, self.test_unseen_mask, self.ensemble_lambda, mode=self.ensemble_mode)
