"""ZegFormer: decoupled zero-shot semantic segmentation (Ding et al., CVPR 2022)."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from torch import Tensor, nn
from torch.nn import functional as F

from ..clip.region_encoder import RegionCLIPClassifier
from ..criterion import SetCriterion
from ..inference import calibrate, ensemble_probs, semantic_inference
from ..mlp import MLP
from ..pixel_decoder import build_pixel_decoder
from ..text_classifier import TextEmbeddingClassifier
from ..transformer_decoder import TransformerDecoder
from .base import OpenVocabSegmentor, build_clip_and_text_embedder, default_vocabularies

__all__ = ["ZegFormer"]


@META_ARCH_REGISTRY.register()
class ZegFormer(OpenVocabSegmentor):
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
        pixel_decoder: nn.Module,
        transformer_decoder: TransformerDecoder,
        mask_dim: int,
        text_classifier: TextEmbeddingClassifier,
        criterion: SetCriterion,
        region_classifier: Optional[RegionCLIPClassifier] = None,
        ensemble_lambda: float = 2.0 / 3.0,
        ensemble_mode: str = "seen_unseen",
        mean_seen_clip: bool = True,
        calibration_gamma: float = 0.0,
        amp: bool = True,
        **kwargs,
    ):
        """
        Args:
            pixel_decoder: backbone features → mask features + the transformer decoder's input feature.
            transformer_decoder: gives (L, B, Q, hidden) segment embeddings.
            mask_dim: channels of the mask features (and of the mask embeddings).
            text_classifier: segment embeddings → (.., K + 1) logits against the text embeddings.
            criterion: Hungarian-matched CE + focal + dice losses with deep supervision.
            region_classifier: the CLIP image branch used at inference; ``None`` disables it.
            ensemble_lambda: weight of the ensemble (see :func:`zegseg.modeling.inference.ensemble_probs`).
            ensemble_mode: "seen_unseen" (the paper's rule) or "all" (lambda towards CLIP for every class).
            mean_seen_clip: replace CLIP's seen-class probabilities by their mean (ZegFormer's reference code).
            calibration_gamma: subtracted from seen-class scores of the semantic map at inference.
            amp: autocast the segmentation network at inference on CUDA.
            kwargs: see :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        hidden = transformer_decoder.hidden_dim
        embed_dim = int(self.clip_model.text_projection.shape[1])
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.mask_embed = MLP(hidden, hidden, mask_dim, 3)
        self.semantic_proj = nn.Linear(hidden, embed_dim)
        self.text_classifier = text_classifier
        self.criterion = criterion
        self.region_classifier = region_classifier
        self.ensemble_lambda = ensemble_lambda
        self.ensemble_mode = ensemble_mode
        self.mean_seen_clip = mean_seen_clip
        self.calibration_gamma = calibration_gamma
        self.amp = amp

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        backbone = build_backbone(cfg)
        pixel_decoder = build_pixel_decoder(cfg, backbone.output_shape())
        clip_model, text_embedder = build_clip_and_text_embedder(cfg)
        zf = cfg.MODEL.ZEGFORMER
        return {
            "backbone": backbone,
            "pixel_decoder": pixel_decoder,
            "transformer_decoder": TransformerDecoder(cfg, pixel_decoder.transformer_in_channels),
            "mask_dim": cfg.MODEL.PIXEL_DECODER.MASK_DIM,
            "text_classifier": TextEmbeddingClassifier(
                embed_dim=int(clip_model.text_projection.shape[1]),
                temperature=zf.TEMPERATURE,
                normalize_no_object=False,
            ),
            "criterion": SetCriterion(cfg),
            "region_classifier": RegionCLIPClassifier(cfg) if zf.CLIP_IMAGE_BRANCH else None,
            "ensemble_lambda": zf.ENSEMBLE_LAMBDA,
            "ensemble_mode": zf.ENSEMBLE_MODE,
            "mean_seen_clip": zf.MEAN_SEEN_CLIP,
            "calibration_gamma": zf.CALIBRATION_GAMMA,
            "amp": cfg.TEST.AMP,
            "clip_model": clip_model,
            "text_embedder": text_embedder,
            **default_vocabularies(cfg),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "size_divisibility": max(cfg.INPUT.SIZE_DIVISIBILITY, backbone.size_divisibility, 1),
            "input_format": cfg.INPUT.FORMAT,
        }

    def predict(self, images: Tensor) -> Dict[str, Tensor]:
        """Run the segmentation network.

        Args:
            images: (B, 3, H, W) normalised, padded images.
        Returns:
            "pred_logits": (B, Q, K + 1) logits of the last layer (last column "no object"),
            "pred_masks": (B, Q, H/4, W/4) mask logits of the last layer,
            "aux_outputs": the same for the L - 1 earlier layers.
        """
        features = self.backbone(images)
        decoded = self.pixel_decoder(features)
        hs = self.transformer_decoder(decoded.transformer_features)  # (L, B, Q, hidden)
        masks = torch.einsum("lbqc,bchw->lbqhw", self.mask_embed(hs), decoded.mask_features)
        logits = self.text_classifier(F.normalize(self.semantic_proj(hs), dim=-1), self.text_embeddings)
        aux = [{"pred_logits": lg, "pred_masks": m} for lg, m in zip(logits[:-1], masks[:-1])]
        return {"pred_logits": logits[-1], "pred_masks": masks[-1], "aux_outputs": aux}

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]] | Dict[str, Tensor]:
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) and, in training, "instances"
                (gt_classes, gt_masks over the training vocabulary); optional "height"/"width" at inference.
        Returns:
            training: a dict of weighted losses; inference: per image ``{"sem_seg": (K, height, width)}`` scores.
        """
        images = self.preprocess_images(batched_inputs)
        if self.training:
            outputs = self.predict(images.tensor)
            targets = self.prepare_targets(batched_inputs, tuple(images.tensor.shape[-2:]))
            return self.criterion(outputs, targets)
        amp = self.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, enabled=amp):
            outputs = self.predict(images.tensor)
        results = []
        for i, x in enumerate(batched_inputs):
            height, width = x.get("height", images.image_sizes[i][0]), x.get("width", images.image_sizes[i][1])
            sem_seg = self.segment_image(
                x["image"], outputs["pred_logits"][i].float(), outputs["pred_masks"][i].float(), images.image_sizes[i]
            )
            results.append({"sem_seg": self.resize_to_output(sem_seg, images.image_sizes[i], height, width)})
        return results

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
        padded = (masks.shape[-2] * self._mask_stride(), masks.shape[-1] * self._mask_stride())
        masks = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
        probs = logits.softmax(-1)[:, :-1]  # (Q, K)
        if self.region_classifier is not None:
            h, w = image_size
            clip_logits, valid = self.region_classifier(
                self.clip_model, image.to(self.device), masks[:, :h, :w], self.text_embeddings
            )
            probs = ensemble_probs(
                probs,
                clip_logits.softmax(-1),
                self.test_unseen_mask,
                self.ensemble_lambda,
                mode=self.ensemble_mode,
                mean_seen_clip=self.mean_seen_clip,
                clip_valid=valid,
            )
        scores = semantic_inference(probs, masks, cls_probs=True)
        return calibrate(scores, ~self.test_unseen_mask, self.calibration_gamma)

    def _mask_stride(self) -> int:
        return self.pixel_decoder.mask_stride
