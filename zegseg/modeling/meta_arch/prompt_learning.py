"""Learning CoOp prompts for the two-stage CLIP classifier on crops of ground-truth segments.

Training: every ground-truth segment of a training image becomes a masked crop (as the two-stage model's second
stage builds them from proposals), the frozen CLIP image encoder embeds it, and the crops are classified by
``logit_scale · cos`` against the embeddings of the training classes' learned prompts
(:class:`~zegseg.modeling.clip.prompt_learner.PromptLearner`: shared context vectors + the class name); the
cross-entropy trains the context vectors only.

Inference ("oracle masks"): the ground-truth segments of each image (its "sem_seg", which detectron2's test
mapper provides) are classified the same way against the inference vocabulary, and each segment's pixels get
its class probabilities, so the usual semantic-segmentation evaluation measures the prompts' region
classification on seen and unseen classes.

The learned prompts are the model's only checkpointed tensor (``prompt_learner.ctx``): point
``MODEL.CLIP.PROMPT_LEARNER.WEIGHTS`` of any zegseg model at the trainer's checkpoint (e.g.
``OUTPUT_DIR/model_final.pth``) to use them.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from ..clip import load_clip
from ..clip.prompt_learner import PromptLearner, load_prompt_learner
from ..clip.region_encoder import RegionCLIPClassifier
from ..vocabulary import check_vocabulary
from .base import OpenVocabSegmentor, default_vocabularies, keep_clip_out_of_checkpoints

__all__ = ["PromptLearnerCLIP"]

logger = logging.getLogger(__name__)


@META_ARCH_REGISTRY.register()
class PromptLearnerCLIP(nn.Module):
    """A frozen CLIP and learnable prompt context vectors, trained on ground-truth segment crops."""

    @configurable
    def __init__(
        self,
        *,
        clip_model: nn.Module,
        prompt_learner: PromptLearner,
        region_classifier: RegionCLIPClassifier,
        train_class_names: Sequence[str],
        test_class_names: Sequence[str],
        ignore_label: int = 255,
    ):
        """
        Args:
            clip_model: frozen OpenAI-format CLIP (kept out of checkpoints).
            prompt_learner: the context vectors to train.
            region_classifier: builds the masked crops and holds the logit scale (its mask threshold is unused:
                ground-truth masks are binary).
            train_class_names: the classes of the training labels (seen classes).
            test_class_names: the inference vocabulary.
            ignore_label: label of unlabelled pixels in the inference inputs' "sem_seg".
        """
        super().__init__()
        self.clip_model = clip_model
        keep_clip_out_of_checkpoints(self)
        self.prompt_learner = prompt_learner
        self.region_classifier = region_classifier
        if not train_class_names:
            raise ValueError("PromptLearnerCLIP needs training class names (DATASETS.TRAIN)")
        self.train_class_names: List[str] = list(train_class_names)
        self.ignore_label = ignore_label
        self._test_cache: Optional[Tuple[tuple, Tensor]] = None
        self.set_vocabulary(test_class_names)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        clip_cfg = cfg.MODEL.CLIP
        clip_model = load_clip(clip_cfg.NAME, device=cfg.MODEL.DEVICE, weights_dir=clip_cfg.WEIGHTS_DIR or None)
        weights = clip_cfg.PROMPT_LEARNER.WEIGHTS
        learner = load_prompt_learner(weights, clip_model) if weights else PromptLearner(cfg, clip_model)
        vocabularies = default_vocabularies(cfg)
        return {
            "clip_model": clip_model,
            "prompt_learner": learner,
            "region_classifier": RegionCLIPClassifier(cfg),
            "train_class_names": vocabularies["train_class_names"],
            "test_class_names": vocabularies["test_class_names"],
        }

    @property
    def device(self) -> torch.device:
        return self.prompt_learner.ctx.device

    def train(self, mode: bool = True) -> PromptLearnerCLIP:
        """Switch mode; the frozen CLIP always stays in eval mode."""
        super().train(mode)
        self.clip_model.eval()
        return self

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Change the inference vocabulary (any names: the learned context is shared by all classes).

        Raises:
            ValueError: empty vocabulary, empty or duplicate names.
        """
        self.test_class_names, _ = check_vocabulary(class_names)

    def text_embeddings(self, class_names: Sequence[str]) -> Tensor:
        """(K, D) L2-normalised learned-prompt embeddings of ``class_names``, differentiable w.r.t. the context."""
        return self.prompt_learner(self.clip_model, class_names)

    @torch.no_grad()
    def test_text_embeddings(self) -> Tensor:
        """(K, D) embeddings of the inference vocabulary; recomputed only when the context or the names change."""
        ctx = self.prompt_learner.ctx
        key = (tuple(self.test_class_names), ctx.data_ptr(), ctx._version)
        if self._test_cache is None or self._test_cache[0] != key:
            self._test_cache = (key, self.text_embeddings(self.test_class_names))
        return self._test_cache[1]

    def encode_segments(self, image: Tensor, masks: Tensor) -> Tuple[Tensor, Tensor]:
        """CLIP embeddings of the masked crops of one image's segments (no gradient).

        Args:
            image: (3, H, W) 0-255 image in the input format.
            masks: (G, H, W) bool.
        Returns:
            (G, D) L2-normalised embeddings and (G,) bool ``valid`` (False for empty masks).
        """
        return self.region_classifier.encode(self.clip_model, image, masks)

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]] | Dict[str, Tensor]:
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) and, in training, "instances" (gt_classes
                over the training vocabulary, gt_masks (G, H, W)); at inference "sem_seg" (H, W) ground-truth
                labels (any class list: only its segments are used) and optional "height"/"width".
        Returns:
            training: ``{"loss_prompt": cross-entropy}``; inference: per image ``{"sem_seg": (K, height, width)}``.
        """
        if self.training:
            return {"loss_prompt": self.losses(batched_inputs)}
        text = self.test_text_embeddings()
        results = []
        for x in batched_inputs:
            if "sem_seg" not in x:
                raise ValueError(
                    "PromptLearnerCLIP classifies ground-truth segments at inference: inputs need 'sem_seg'"
                )
            sem_seg = x["sem_seg"].to(self.device)
            labels = sem_seg.unique()
            labels = labels[labels != self.ignore_label]
            masks = sem_seg[None] == labels[:, None, None]  # (G, H, W)
            emb, valid = self.encode_segments(x["image"], masks)
            probs = (self.region_classifier.logit_scale * emb @ text.T).softmax(-1) * valid[:, None]
            scores = torch.einsum("gk,ghw->khw", probs, masks.float())
            height, width = x.get("height", sem_seg.shape[0]), x.get("width", sem_seg.shape[1])
            results.append({"sem_seg": OpenVocabSegmentor.resize_to_output(scores, sem_seg.shape, height, width)})
        return results

    def losses(self, batched_inputs: List[Dict]) -> Tensor:
        """Cross-entropy of all ground-truth segments of the batch against the training classes' prompts."""
        feats, labels = [], []
        for x in batched_inputs:
            inst = x["instances"]
            masks = inst.gt_masks.tensor if hasattr(inst.gt_masks, "tensor") else inst.gt_masks
            emb, valid = self.encode_segments(x["image"], masks.to(self.device).bool())
            feats.append(emb[valid])
            labels.append(inst.gt_classes.to(self.device)[valid])
        text = self.text_embeddings(self.train_class_names)
        feats, labels = torch.cat(feats), torch.cat(labels)
        if labels.numel() == 0:  # no segment in the batch: a zero loss that still reaches the context
            return text.sum() * 0.0
        logits = self.region_classifier.logit_scale * feats @ text.T
        return F.cross_entropy(logits, labels)
