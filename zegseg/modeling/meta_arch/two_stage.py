"""The two-stage CLIP classifier: "A Simple Baseline for Open-Vocabulary Semantic Segmentation with Pre-trained
Vision-language Model" (Xu et al., ECCV 2022)."""
from __future__ import annotations

from typing import Dict

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor

from ..inference import check_ensemble_mode, ensemble_probs
from ..mask_classification import MaskClassificationSegmentor

__all__ = ["TwoStageCLIP"]


@META_ARCH_REGISTRY.register()
class TwoStageCLIP(MaskClassificationSegmentor):
    """Mask proposals, then a frozen CLIP classifies each proposal's crop.

    Stage 1 (trained on seen classes): a MaskFormer-style network proposes N class-agnostic masks; each query
    embedding passes a two-layer MLP (hidden width MODEL.TWO_STAGE.EMBED_HIDDEN_DIM; 0: one linear layer, as
    ZegFormer's, a zegseg option) into CLIP's space and is classified by ``logit_scale · cos`` against the
    text embeddings of the vocabulary plus a learnable, L2-normalised "no object" embedding (CE + focal + dice,
    Hungarian matching). Stage 2 (inference only): each proposal's mask (``sigmoid > MODEL.CLIP.MASK_THRESHOLD``)
    gives a box (scaled by MODEL.CLIP.CROP_EXPAND_RATIO), the crop's outside-mask pixels take CLIP's mean colour,
    and the frozen CLIP image encoder classifies it (``MODEL.CLIP.LOGIT_SCALE · cos``, 100 in the paper, against
    the same text embeddings, softmax over the K classes). The crop procedure (MODEL.CLIP.CROP_PROCEDURE) is the
    official code's ``simple_baseline`` (integer boxes, bicubic resize) or zegseg's ``roi_align``; both skip
    empty masks, on which CLIP abstains. The two distributions are ensembled with weight w: seen classes
    ``p_mf^w · p_clip^(1-w)``, unseen classes ``p_mf^(1-w) · p_clip^w`` (zegseg option MODEL.TWO_STAGE.ENSEMBLE_MODE
    "all": the unseen-class rule for every class); with ``w <= 0`` CLIP's distribution is used alone. The
    per-proposal distributions are assembled into a per-pixel semantic map.

    Text embeddings come from prompt templates (MODEL.CLIP.TEMPLATES) or learned prompts (file named by
    MODEL.CLIP.PROMPT_LEARNER.WEIGHTS, trained by :class:`~zegseg.modeling.meta_arch.PromptLearnerCLIP`).
    """

    @configurable
    def __init__(self, *, ensemble_weight: float = 0.8, ensemble_mode: str = "seen_unseen", **kwargs):
        """
        Args:
            ensemble_weight: w in [0, 1] (see above; the λ of :func:`zegseg.modeling.inference.ensemble_probs`);
                ``w <= 0`` → CLIP's probabilities only. A proposal whose mask is empty gets CLIP probability 1
                for every class in the ensemble and weight 0 in CLIP-only mode: it does not vote.
            ensemble_mode: "seen_unseen" (the paper's rule) or "all" (w towards CLIP for every class).
            kwargs: see :class:`MaskClassificationSegmentor` (``region_classifier`` is required here) and
                :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        if self.region_classifier is None:
            raise ValueError("TwoStageCLIP needs a region_classifier (its second stage)")
        if ensemble_weight > 1.0:
            raise ValueError(f"ensemble weight must be <= 1 (<= 0: CLIP only), got {ensemble_weight}")
        self.ensemble_weight = ensemble_weight
        self.ensemble_mode = check_ensemble_mode(ensemble_mode)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        ts = cfg.MODEL.TWO_STAGE
        if ts.LOGIT_SCALE <= 0:
            raise ValueError(f"MODEL.TWO_STAGE.LOGIT_SCALE must be positive, got {ts.LOGIT_SCALE}")
        if cfg.MODEL.CLIP.CROP_PROCEDURE == "zegformer":
            raise ValueError(
                "TwoStageCLIP needs MODEL.CLIP.CROP_PROCEDURE simple_baseline (the paper's) or roi_align: the "
                "zegformer procedure gives empty proposals a blank crop, where the two-stage model lets CLIP abstain"
            )
        return {
            **cls.network_config(
                cfg, temperature=1.0 / ts.LOGIT_SCALE, normalize_no_object=True, clip_image_branch=True
            ),
            "semantic_hidden_dim": ts.EMBED_HIDDEN_DIM,
            "ensemble_weight": ts.ENSEMBLE_WEIGHT,
            "ensemble_mode": ts.ENSEMBLE_MODE,
        }

    @property
    def clip_only(self) -> bool:
        """Whether inference ignores the proposal classifier (``ensemble_weight <= 0``)."""
        return self.ensemble_weight <= 0

    def combine_with_clip(self, logits: Tensor, clip_logits: Tensor, valid: Tensor) -> Tensor:
        """Ensemble of the proposal classifier and CLIP.

        Args:
            logits: (Q, K + 1) proposal-classifier logits, last column "no object".
            clip_logits: (Q, K) CLIP logits of the proposals' crops.
            valid: (Q,) bool, False for empty masks (their ``clip_logits`` rows are meaningless).
        Returns:
            (Q, K) class scores per proposal (not renormalised), for :func:`semantic_inference`.
        """
        p_clip = clip_logits.softmax(-1)
        if self.clip_only:
            return p_clip * valid[:, None].to(p_clip)
        p_mf = logits.softmax(-1)[:, :-1]
        return ensemble_probs(
            p_mf, p_clip, self.test_unseen_mask, self.ensemble_weight, mode=self.ensemble_mode, clip_valid=valid
        )

    def class_prob_bound(self, logits: Tensor) -> Tensor:
        """(Q, K + 1) → (Q, K): the ensemble with CLIP probabilities 1 (CLIP only: 1)."""
        probs = logits.softmax(-1)[:, :-1]
        if self.clip_only:
            return torch.ones_like(probs)
        return ensemble_probs(
            probs, torch.ones_like(probs), self.test_unseen_mask, self.ensemble_weight, mode=self.ensemble_mode
        )
