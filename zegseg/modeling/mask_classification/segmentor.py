"""The mask-classification network that ZegFormer and the two-stage CLIP model share.

backbone → pixel decoder → DETR-style transformer decoder → per query (a) a mask embedding, dotted with the
per-pixel mask features into a class-agnostic mask, and (b) a segment embedding, classified by cosine similarity
against the CLIP text embeddings of the vocabulary plus a learnable "no object" embedding. Training uses the
Hungarian-matched set criterion. At inference the meta-architectures give each query a class distribution
(:meth:`classify_segments`: ensembles with the frozen CLIP image encoder); :meth:`segment_image` then assembles
the K-class map at the padded input size and crops and resizes it to the output, as the official MaskFormer,
ZegFormer and simple-baseline code do. ``TEST.RESIZE_MASKS_FIRST`` instead resizes the Q mask logits to the output
first and builds the map once, at the output size (zegseg's faster order for large vocabularies; the two differ
by bilinear interpolation of a sigmoid versus a sigmoid of interpolated logits).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from ..clip.region_encoder import RegionCLIPClassifier
from ..inference import semantic_inference
from ..meta_arch.base import OpenVocabSegmentor, open_vocab_config
from ..mlp import MLP
from ..pixel_decoder import build_pixel_decoder
from ..text_classifier import TextEmbeddingClassifier
from .components import OFF_MASK_LOGIT, split_components
from .criterion import SetCriterion
from .leftover import claim_map, leftover_regions
from .query_selection import QuerySelector, build_query_selector
from .transformer_decoder import TransformerDecoder

__all__ = ["MaskClassificationSegmentor"]


class MaskClassificationSegmentor(OpenVocabSegmentor):
    """N queries → N (mask, class distribution) pairs; subclasses turn them into per-pixel scores.

    Not registered: :class:`~zegseg.modeling.meta_arch.zegformer.ZegFormer` and
    :class:`~zegseg.modeling.meta_arch.two_stage.TwoStageCLIP` are. Subclasses implement
    :meth:`combine_with_clip` and :meth:`class_prob_bound` (and may override :meth:`calibrate_scores`).
    """

    def __init__(
        self,
        *,
        pixel_decoder: nn.Module,
        transformer_decoder: TransformerDecoder,
        mask_dim: int,
        semantic_hidden_dim: int = 0,
        text_classifier: TextEmbeddingClassifier,
        criterion: SetCriterion,
        region_classifier: Optional[RegionCLIPClassifier] = None,
        query_selector: Optional[QuerySelector] = None,
        amp: bool = True,
        resize_masks_first: bool = False,
        leftover_min_area: float = 0.0,
        component_min_area: float = 0.0,
        **kwargs,
    ):
        """
        Args:
            pixel_decoder: backbone features → mask features + the transformer decoder's input feature.
            transformer_decoder: gives (L, B, Q, hidden) query embeddings.
            mask_dim: channels of the mask features (and of the mask embeddings).
            semantic_hidden_dim: how query embeddings become segment embeddings in CLIP's space: 0 → one linear
                layer (ZegFormer); > 0 → a two-layer MLP with this hidden width (the two-stage model's 1024).
            text_classifier: segment embeddings → (.., K + 1) logits against the text embeddings.
            criterion: Hungarian-matched CE + focal + dice losses with deep supervision.
            region_classifier: the frozen-CLIP image branch used at inference (``None``: none).
            query_selector: fast mode, which queries go to CLIP (``None``: exact mode, all of them).
            amp: autocast the segmentation network at inference on CUDA.
            resize_masks_first: resize the mask logits to the output before assembling the K-class map (see the
                module docstring); False: the official order.
            leftover_min_area: > 0: regions that no query claims, of at least this fraction of the image, become
                extra segments classified by CLIP alone (:mod:`.leftover`); 0: off. Parts of the CLIP image
                branch: ``from_config`` passes 0 for a model without ``region_classifier``.
            component_min_area: > 0: every connected component of a query's mask, of at least this fraction of the
                image, is a segment of its own with its own CLIP crop (:mod:`.components`); 0: off (as above).
            kwargs: see :class:`OpenVocabSegmentor`.
        """
        super().__init__(**kwargs)
        hidden = transformer_decoder.hidden_dim
        embed_dim = int(self.clip_model.text_projection.shape[1])
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.mask_embed = MLP(hidden, hidden, mask_dim, 3)
        if semantic_hidden_dim > 0:
            self.semantic_proj = MLP(hidden, semantic_hidden_dim, embed_dim, 2)
        else:
            self.semantic_proj = nn.Linear(hidden, embed_dim)
        self.text_classifier = text_classifier
        self.criterion = criterion
        self.region_classifier = region_classifier
        self.query_selector = query_selector
        self.amp = amp
        self.resize_masks_first = resize_masks_first
        self.leftover_min_area = leftover_min_area
        self.component_min_area = component_min_area

    @classmethod
    def network_config(
        cls, cfg: CfgNode, *, temperature: float, normalize_no_object: bool, clip_image_branch: bool
    ) -> Dict:
        """The keyword arguments shared by the subclasses' ``from_config``.

        Args:
            cfg: the config.
            temperature: τ of the segment classifier (logits are ``cos / τ``).
            normalize_no_object: L2-normalise the learnable "no object" embedding.
            clip_image_branch: build a :class:`RegionCLIPClassifier` from MODEL.CLIP.
        Raises:
            ValueError: fast mode with MODEL.CLIP.REGION_MODE dense (fast mode saves crops; dense mode has none).
        """
        if clip_image_branch and cfg.MODEL.CLIP.REGION_MODE == "dense" and cfg.MODEL.CLIP.FAST_MODE.ENABLED:
            raise ValueError(
                "MODEL.CLIP.FAST_MODE sends fewer crops to CLIP, and MODEL.CLIP.REGION_MODE dense sends none (one CLIP "
                "forward per image whatever the queries): enable one of them"
            )
        shared = open_vocab_config(cfg)
        clip_model = shared["clip_model"]
        pixel_decoder = build_pixel_decoder(cfg, shared["backbone"].output_shape())
        return {
            **shared,
            "pixel_decoder": pixel_decoder,
            "transformer_decoder": TransformerDecoder(cfg, pixel_decoder.transformer_in_channels),
            "mask_dim": cfg.MODEL.PIXEL_DECODER.MASK_DIM,
            "text_classifier": TextEmbeddingClassifier(
                embed_dim=int(clip_model.text_projection.shape[1]),
                temperature=temperature,
                normalize_no_object=normalize_no_object,
            ),
            "criterion": SetCriterion(cfg),
            "region_classifier": RegionCLIPClassifier(cfg) if clip_image_branch else None,
            "query_selector": build_query_selector(cfg) if clip_image_branch else None,
            "amp": cfg.TEST.AMP,
            "resize_masks_first": cfg.TEST.RESIZE_MASKS_FIRST,
            "leftover_min_area": cfg.MODEL.CLIP.LEFTOVER_MIN_AREA if clip_image_branch else 0.0,
            "component_min_area": cfg.MODEL.CLIP.COMPONENT_MIN_AREA if clip_image_branch else 0.0,
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
        memory = decoded.transformer_features

        def mask_head(queries: Tensor) -> Tensor:  # (B, Q, hidden) → (B, Q, h_mem, w_mem), for masked attention
            masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(queries), decoded.mask_features)
            return F.interpolate(masks, size=memory.shape[-2:], mode="bilinear", align_corners=False)

        hs = self.transformer_decoder(memory, mask_head=mask_head)  # (L, B, Q, hidden)
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
        return self.inference(batched_inputs, images)

    @torch.inference_mode()
    def inference(self, batched_inputs: List[Dict], images: ImageList) -> List[Dict[str, Tensor]]:
        """Per image ``{"sem_seg": (K, height, width)}`` scores (network under autocast on CUDA only)."""
        amp = self.amp and self.device.type == "cuda"
        with torch.autocast(device_type=self.device.type, enabled=amp):
            outputs = self.predict(images.tensor)
        results = []
        for i, x in enumerate(batched_inputs):
            height, width = x.get("height", images.image_sizes[i][0]), x.get("width", images.image_sizes[i][1])
            sem_seg = self.segment_image(
                x["image"],
                outputs["pred_logits"][i].float(),
                outputs["pred_masks"][i].float(),
                images.image_sizes[i],
                (height, width),
            )
            results.append({"sem_seg": sem_seg})
        return results

    def segment_image(
        self,
        image: Tensor,
        logits: Tensor,
        masks: Tensor,
        image_size: Sequence[int],
        output_size: Optional[Sequence[int]] = None,
    ) -> Tensor:
        """Per-pixel class scores of one image: ``scores[c] = sum_q p(c | q) · sigmoid(mask_q)``.

        The mask logits are upsampled to the padded input; the map is built there and cropped to ``image_size``
        and resized to ``output_size`` (the official order), or, with ``resize_masks_first``, the logits are
        cropped and resized first and the map is built once, at the output size.

        Args:
            image: (3, H, W) the unnormalised input image (for CLIP crops).
            logits: (Q, K + 1) segment-classification logits.
            masks: (Q, h, w) mask logits over the padded image at the mask-feature stride.
            image_size: (H, W) of the image inside the padding.
            output_size: (height, width) of the returned map; default ``image_size``.
        Returns:
            (K, height, width) scores.
        """
        height, width = output_size if output_size is not None else image_size
        stride = self.pixel_decoder.mask_stride
        visible = [math.ceil(s / stride) for s in image_size]  # the image's part of the mask grid
        if self.component_min_area > 0:
            threshold = self.region_classifier.mask_threshold
            source, masks = split_components(masks, visible, self.component_min_area, threshold)
            logits = logits[source]
        regions = self.leftover_region_masks(masks, visible) if self.leftover_min_area > 0 else None
        probs, masks = self.classify_segments(image, logits, masks, image_size, regions)
        if self.resize_masks_first:
            masks = self.resize_to_output(masks, image_size, height, width)
            return self.calibrate_scores(semantic_inference(probs, masks, cls_probs=True))
        scores = semantic_inference(probs, masks, cls_probs=True)
        return self.calibrate_scores(self.resize_to_output(scores, image_size, height, width))

    def classify_segments(
        self,
        image: Tensor,
        logits: Tensor,
        masks: Tensor,
        image_size: Sequence[int],
        regions: Optional[Tensor] = None,
    ) -> Tuple[Tensor, Tensor]:
        """The class distribution of each query that takes part in the semantic map: the segment classifier's,
        combined with CLIP's view of the query's crop (:meth:`combine_with_clip`) when the model has a CLIP
        image branch; and CLIP's alone for each extra region (leftover regions), in the same CLIP call (one dense
        forward per image in MODEL.CLIP.REGION_MODE dense).

        Args:
            image: (3, H, W) the unnormalised input image (for CLIP crops).
            logits: (Q, K + 1) segment-classification logits.
            masks: (Q, h, w) mask logits over the padded image at the mask-feature stride.
            image_size: (H, W) of the image inside the padding.
            regions: optional (R, H_pad, W_pad) mask logits at the padded input size of regions classified by CLIP
                alone (:meth:`leftover_region_masks`; needs the CLIP image branch).
        Returns:
            probs: (M + R, K) class probabilities of the M queries kept (M = Q except in fast mode), then of the R
                regions (CLIP's softmax over the vocabulary, 0 for a region CLIP did not see).
            masks: (M + R, H_pad, W_pad) their mask logits at the padded input size (see :meth:`upsample_masks`).
        """
        if self.region_classifier is None:
            if regions is not None:
                raise ValueError("regions classified by CLIP alone need the CLIP image branch")
            return logits.softmax(-1)[:, :-1], self.upsample_masks(masks)
        keep, source = self.choose_clip_queries(logits, masks, image_size) if masks.shape[0] else (None, None)
        if keep is not None:
            logits, masks = logits[keep], masks[keep]
        masks = self.upsample_masks(masks)
        n = masks.shape[0]
        if regions is not None:
            if source is not None:
                source = torch.cat([source, torch.arange(n, n + regions.shape[0], device=source.device)])
            masks = torch.cat([masks, regions.to(masks.dtype)])
        if masks.shape[0] == 0:
            return logits.softmax(-1)[:, :-1], masks
        clip_logits, valid = self.region_clip_logits(image, masks, image_size, source)
        probs = self.combine_with_clip(logits, clip_logits[:n], valid[:n]) if n else logits.softmax(-1)[:, :-1]
        if regions is None:
            return probs, masks
        region_probs = clip_logits[n:].softmax(-1) * valid[n:, None]
        return torch.cat([probs, region_probs.to(probs.dtype)]), masks

    def leftover_region_masks(self, masks: Tensor, visible: Sequence[int]) -> Optional[Tensor]:
        """The regions no segment claims, as segments for CLIP alone (:mod:`.leftover`).

        Regions are found on the mask-feature grid (thin unclaimed seams between segments, finer than a grid cell,
        do not form regions) and upsampled like the segments' masks.

        Args:
            masks: (M, h, w) the segments' mask logits at the mask-feature stride.
            visible: (h_v, w_v) the image's part of that grid.
        Returns:
            (R, H_pad, W_pad) the regions' mask logits at the padded input size, ``logit(1 - claim)`` inside them,
            or None when no region is large enough.
        """
        regions, weights = leftover_regions(claim_map(masks), visible, self.leftover_min_area)
        if regions.shape[0] == 0:
            return None
        off = torch.full_like(weights, OFF_MASK_LOGIT)
        region_logits = torch.where(regions, torch.logit(weights.clamp(1e-6, 1.0 - 1e-6)), off)
        return self.upsample_masks(region_logits)

    def combine_with_clip(self, logits: Tensor, clip_logits: Tensor, valid: Tensor) -> Tensor:
        """The inference class distribution of queries whose crops CLIP has seen.

        Args:
            logits: (M, K + 1) segment-classification logits, last column "no object".
            clip_logits: (M, K) CLIP logits of the queries' crops.
            valid: (M,) bool, False for empty masks (CLIP did not see them; their ``clip_logits`` are meaningless).
        Returns:
            (M, K) class scores per query, for :func:`semantic_inference`.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement combine_with_clip")

    def class_prob_bound(self, logits: Tensor) -> Tensor:
        """(Q, K + 1) segment-classification logits → (Q, K) upper bound of :meth:`combine_with_clip` over every
        output CLIP could give the queries' crops. Used by fast mode."""
        raise NotImplementedError(f"{type(self).__name__} must implement class_prob_bound for fast mode")

    def calibrate_scores(self, scores: Tensor) -> Tensor:
        """(K, H, W) semantic scores → the scores the model outputs (identity here; ZegFormer calibrates)."""
        return scores

    def upsample_masks(self, masks: Tensor) -> Tensor:
        """(Q, h, w) mask logits at the mask-feature stride → (Q, H_pad, W_pad) logits at the padded input size."""
        stride = self.pixel_decoder.mask_stride
        size = (masks.shape[-2] * stride, masks.shape[-1] * stride)
        if masks.shape[0] == 0:  # no segment (e.g. no mask part large enough for COMPONENT_MIN_AREA)
            return masks.new_zeros((0, *size))
        return F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0]

    def clip_weight_bound(self, logits: Tensor) -> Tensor:
        """(Q, K + 1) segment-classification logits → (Q,) upper bound, over classes and over CLIP's possible
        outputs, of each query's ensembled class probability. Used by fast mode."""
        return self.class_prob_bound(logits).amax(dim=-1)

    def choose_clip_queries(
        self, logits: Tensor, masks: Tensor, image_size: Sequence[int]
    ) -> Tuple[Optional[Tensor], Optional[Tensor]]:
        """Fast mode's choice of queries (see :mod:`.query_selection`); ``(None, None)`` in exact mode.

        Args:
            logits: (Q, K + 1) segment-classification logits.
            masks: (Q, h, w) mask logits over the padded image at the mask-feature stride.
            image_size: (H, W) of the image inside the padding.
        Returns:
            keep: (M,) indices of the queries that stay in the semantic map, or ``None`` (all).
            source: (M,) for each kept query, the position in ``keep`` of the query whose crop it uses, or ``None``.
        """
        if self.query_selector is None:
            return None, None
        stride = self.pixel_decoder.mask_stride
        h, w = (math.ceil(s / stride) for s in image_size)
        return self.query_selector(self.clip_weight_bound(logits), masks[:, :h, :w])

    def region_clip_logits(
        self, image: Tensor, masks: Tensor, image_size: Sequence[int], source: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        """The frozen CLIP's view of each query's region (needs ``region_classifier``).

        Args:
            image: (3, H, W) the unnormalised input image.
            masks: (Q, H_pad, W_pad) mask logits at the padded input size (see :meth:`upsample_masks`).
            image_size: (H, W) of the image inside the padding.
            source: (Q,) optional; query ``i`` takes the view of query ``source[i]`` and only the distinct sources
                are cropped (fast mode's near-duplicates). ``None``: every query is cropped.
        Returns:
            logits: (Q, K) ``logit_scale · cos(crop, text)`` against the vocabulary's region text embeddings
                (0 where not ``valid``).
            valid: (Q,) bool, False for masks CLIP did not see (see :class:`RegionCLIPClassifier`).
        """
        h, w = image_size
        if not self.region_classifier.crops_padded_input:
            masks = masks[:, :h, :w]
        image = image.to(self.device)
        text = self.region_text_embeddings
        if source is None:
            return self.region_classifier(self.clip_model, image, masks, text)
        cropped, inverse = torch.unique(source, return_inverse=True)
        logits, valid = self.region_classifier(self.clip_model, image, masks[cropped], text)
        return logits[inverse], valid[inverse]
