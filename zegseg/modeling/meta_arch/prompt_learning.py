"""Learning CoOp prompts for the two-stage CLIP classifier on crops of ground-truth segments.

Training: the frozen CLIP image encoder embeds crops of ground-truth segments, and the crops are classified by
``logit_scale · cos`` against the embeddings of the training classes' learned prompts
(:class:`~zegseg.modeling.clip.prompt_learner.PromptLearner`: shared context vectors + the class name); the
cross-entropy trains the context vectors only. The crops come in one of two forms, set by the training mapper:

* segment samples (mapper ``segment_crop``, the simple baseline's recipe): each input is already one segment's
  crop (box crop, random resized crop, flip; see :mod:`zegseg.data.dataset_mappers.segment_crop`) with its mask;
  the pixels outside the mask are filled (``mask_fill``) and the whole input goes to CLIP at its own size
  (:func:`~zegseg.modeling.clip.image_encoder.encode_image`);
* whole images (mapper ``mask_former_semantic``): every ground-truth segment of each image becomes a masked crop
  built by the region classifier, as the two-stage model's second stage builds them from proposals.

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
from ..clip.image_encoder import encode_image
from ..clip.prompt_learner import PromptLearner, load_prompt_learner
from ..clip.region_encoder import CLIP_PIXEL_MEAN, RegionCLIPClassifier, normalize_for_clip
from ..vocabulary import check_vocabulary
from .base import OpenVocabSegmentor, default_vocabularies, keep_clip_out_of_checkpoints

__all__ = ["MASK_FILLS", "PromptLearnerCLIP"]

logger = logging.getLogger(__name__)

MASK_FILLS = ("mean", "normalized_mean")
"""How segment samples' outside-mask pixels are filled: ``mean``, CLIP's mean colour (0 after normalisation, as in
the region crops at inference); ``normalized_mean``, the mean's values written into the normalised image (the
official prompt-learning code; a light grey, about (156, 150, 133) on the 0-255 scale)."""


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
        mask_fill: str = "mean",
        input_format: str = "BGR",
    ):
        """
        Args:
            clip_model: frozen OpenAI-format CLIP (kept out of checkpoints).
            prompt_learner: the context vectors to train.
            region_classifier: builds the masked crops of whole images and holds the logit scale (its mask
                threshold is unused: ground-truth masks are binary).
            train_class_names: the classes of the training labels (seen classes).
            test_class_names: the inference vocabulary.
            ignore_label: label of unlabelled pixels in the inference inputs' "sem_seg".
            mask_fill: outside-mask fill of segment samples, one of :data:`MASK_FILLS`.
            input_format: channel order of the 0-255 input images, "BGR" or "RGB".
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
        if mask_fill not in MASK_FILLS:
            raise ValueError(f"unknown mask fill {mask_fill!r}; known: {', '.join(MASK_FILLS)}")
        self.mask_fill = mask_fill
        self.input_format = input_format
        self._test_cache: Optional[Tuple[tuple, Tensor]] = None
        self.set_vocabulary(test_class_names)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        clip_cfg = cfg.MODEL.CLIP
        clip_model = load_clip(
            clip_cfg.NAME,
            device=cfg.MODEL.DEVICE,
            weights_dir=clip_cfg.WEIGHTS_DIR or None,
            half_on_gpu=clip_cfg.HALF_ON_GPU,
        )
        weights = clip_cfg.PROMPT_LEARNER.WEIGHTS
        learner = load_prompt_learner(weights, clip_model) if weights else PromptLearner(cfg, clip_model)
        vocabularies = default_vocabularies(cfg)
        return {
            "clip_model": clip_model,
            "prompt_learner": learner,
            "region_classifier": RegionCLIPClassifier(cfg),
            "train_class_names": vocabularies["train_class_names"],
            "test_class_names": vocabularies["test_class_names"],
            "mask_fill": clip_cfg.PROMPT_LEARNER.MASK_FILL,
            "input_format": cfg.INPUT.FORMAT,
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

    @property
    def logit_scale(self) -> float:
        """Multiplier of crop-text cosines (MODEL.CLIP.LOGIT_SCALE, or CLIP's own when that is <= 0)."""
        return self.region_classifier.scale(self.clip_model)

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

    @torch.no_grad()
    def encode_samples(self, images: Tensor, masks: Tensor) -> Tensor:
        """CLIP embeddings of segment samples (no gradient).

        Args:
            images: (B, 3, h, w) 0-255 crops in the input format.
            masks: (B, h, w) bool, each sample's segment.
        Returns:
            (B, D) L2-normalised embeddings.
        """
        images = normalize_for_clip(images.to(self.device), self.input_format)
        if self.mask_fill == "normalized_mean":
            fill = torch.tensor(CLIP_PIXEL_MEAN, device=self.device).view(1, 3, 1, 1)
        else:
            fill = images.new_zeros(1, 3, 1, 1)
        images = torch.where(masks.to(self.device)[:, None], images, fill)
        return F.normalize(encode_image(self.clip_model, images).float(), dim=-1)

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]] | Dict[str, Tensor]:
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) and, in training, "instances" (gt_classes
                over the training vocabulary, gt_masks (G, H, W)) and, for segment samples, "segment_sample" True
                (G = 1, the image is the segment's crop); at inference "sem_seg" (H, W) ground-truth labels (any
                class list: only its segments are used) and optional "height"/"width".
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
            probs = (self.logit_scale * emb @ text.T).softmax(-1) * valid[:, None]
            scores = torch.einsum("gk,ghw->khw", probs, masks.float())
            height, width = x.get("height", sem_seg.shape[0]), x.get("width", sem_seg.shape[1])
            results.append({"sem_seg": OpenVocabSegmentor.resize_to_output(scores, sem_seg.shape, height, width)})
        return results

    def losses(self, batched_inputs: List[Dict]) -> Tensor:
        """Cross-entropy of the batch's segments against the training classes' prompts (segment samples, or all
        ground-truth segments of whole images; see the module docstring)."""
        samples = [bool(x.get("segment_sample", False)) for x in batched_inputs]
        if any(samples) and not all(samples):
            raise ValueError("a training batch mixes segment samples and whole images")
        feats, labels = [], []
        if all(samples):
            sizes = {tuple(x["image"].shape[-2:]) for x in batched_inputs}
            if len(sizes) != 1:
                raise ValueError(f"segment samples of one batch must share their size, got {sorted(sizes)}")
            masks = torch.stack([_gt_masks(x)[0] for x in batched_inputs])
            feats.append(self.encode_samples(torch.stack([x["image"] for x in batched_inputs]), masks))
            labels.append(torch.cat([x["instances"].gt_classes[:1] for x in batched_inputs]).to(self.device))
        else:
            for x in batched_inputs:
                emb, valid = self.encode_segments(x["image"], _gt_masks(x).to(self.device))
                feats.append(emb[valid])
                labels.append(x["instances"].gt_classes.to(self.device)[valid])
        text = self.text_embeddings(self.train_class_names)
        feats, labels = torch.cat(feats), torch.cat(labels)
        if labels.numel() == 0:  # no segment in the batch: a zero loss that still reaches the context
            return text.sum() * 0.0
        logits = self.logit_scale * feats @ text.T
        return F.cross_entropy(logits, labels)


def _gt_masks(x: Dict) -> Tensor:
    """(G, H, W) bool ground-truth masks of a training input (BitMasks or a tensor)."""
    masks = x["instances"].gt_masks
    return (masks.tensor if hasattr(masks, "tensor") else masks).bool()
