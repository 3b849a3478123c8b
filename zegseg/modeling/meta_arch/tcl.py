"""TCL: text-grounded contrastive learning (Cha et al., CVPR 2023), trained on image–caption pairs only.

A frozen CLIP; a grounder (:class:`~zegseg.modeling.dense_clip.tcl_grounder.TCLGrounder`: trainable copies of
CLIP's last stage and projection, a gated upsampling decoder to stride 4, ``sigmoid(w cos + b)`` masks) learns to
mask the region of an image its caption talks about. No mask annotation and no class label is used: every class
of an evaluation vocabulary is unseen to it.

Training (records from a caption dataset, mapper ``image_caption``): each batch image's caption is embedded by
CLIP's text tower (the whole caption, no template); the grounder gives the masks of every caption on every image;
the losses are TCL's (:class:`~zegseg.modeling.dense_clip.tcl_losses.TCLCriterion`). With
``MODEL.TCL.TEXT_UNITS phrases`` (a zegseg option) the texts are instead the distinct phrases of the batch's
captions (:mod:`~zegseg.modeling.dense_clip.caption_phrases`), each put into the prompt templates
MODEL.CLIP.TEMPLATES like a class name, and every image is grounded on each of its own phrases.

Inference: the soft mask of each class prompt embedding (the vocabulary, MODEL.CLIP.TEST_TEMPLATES) at stride 4,
refined by PAMR (MODEL.TCL.PAMR_ITERS), mixed with the frozen CLIP's own mask
``sigmoid(10 (cos(MaskCLIP feature, text) - 0.25))`` (weight MODEL.TCL.KP_WEIGHT), upsampled bilinearly; a class
named "background" in the vocabulary scores the constant MODEL.TCL.BG_THRESH when that is set. The output
"sem_seg" holds these mask scores; each pixel goes to its highest-scoring class.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor
from torch.nn import functional as F

from ..clip.dense_features import dense_clip_features, dense_stride
from ..clip.image_encoder import encode_image
from ..clip.region_encoder import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from ..clip.text_encoder import TextEmbedder, clip_text_encoder
from ..dense_clip.caption_phrases import batch_phrases
from ..dense_clip.pamr import PAMR
from ..dense_clip.tcl_grounder import TCLGrounder
from ..dense_clip.tcl_losses import TCLCriterion
from .base import OpenVocabSegmentor, build_clip_and_text_embedders, default_vocabularies

__all__ = ["TCL"]

KP_THRESHOLD = 0.25
"""Cosine at which the frozen CLIP's inference mask is 0.5 (TCL's ``kp_branch``)."""
KP_SCALE = 10.0
"""Slope of that mask: ``sigmoid(KP_SCALE (cos - KP_THRESHOLD))``."""
BACKGROUND = "background"
"""The vocabulary class that MODEL.TCL.BG_THRESH scores."""
TEXT_UNITS = ("caption", "phrases")
"""What TCL grounds in training (MODEL.TCL.TEXT_UNITS): whole captions (the paper) or their phrases."""


@META_ARCH_REGISTRY.register()
class TCL(OpenVocabSegmentor):
    """TCL on a frozen CLIP (ResNet or ViT image tower); see the module docstring."""

    @configurable
    def __init__(
        self,
        *,
        grounder: TCLGrounder,
        criterion: TCLCriterion,
        pamr: Optional[PAMR] = None,
        kp_weight: float = 0.3,
        bg_thresh: float = 0.0,
        stage_freeze_iters: int = 0,
        text_units: str = "caption",
        **kwargs,
    ):
        """
        Args:
            grounder: the trainable masker.
            criterion: TCL's losses.
            pamr: refinement of the inference masks (``None``: off).
            kp_weight: weight of the frozen CLIP's mask in the inference masks (0: off).
            bg_thresh: > 0: the score of the vocabulary's "background" class (the vocabulary must have one).
            stage_freeze_iters: training iterations during which the copied last stage gets no gradient.
            text_units: "caption" (one text per image, the paper) or "phrases" (each phrase of each caption).
            kwargs: see :class:`OpenVocabSegmentor` (no backbone: the frozen CLIP is the image encoder).
        """
        if not 0.0 <= kp_weight <= 1.0:
            raise ValueError(f"MODEL.TCL.KP_WEIGHT must be in [0, 1], got {kp_weight}")
        if text_units not in TEXT_UNITS:
            raise ValueError(f"MODEL.TCL.TEXT_UNITS must be one of {TEXT_UNITS}, got {text_units!r}")
        self.bg_thresh = bg_thresh  # before the base constructor, whose set_vocabulary reads it
        super().__init__(**kwargs)
        self.grounder = grounder
        self.criterion = criterion
        self.pamr = pamr
        self.kp_weight = kp_weight
        self.stage_freeze_iters = stage_freeze_iters
        self.register_buffer("num_train_steps", torch.zeros((), dtype=torch.long))
        self.text_units = text_units
        self._encode_captions = clip_text_encoder(self.clip_model)
        # phrases repeat across batches: embedded once each and kept in memory only (a disk file per batch would pile
        # up), 4 D bytes per distinct phrase (2 KiB for ViT-B/16)
        self._embed_phrases = TextEmbedder(
            self.clip_model,
            self.text_embedder.templates,
            encode_fn=self.text_embedder.encode_fn,
            reserved_tokens=self.text_embedder.reserved_tokens,
            disk_cache=False,
        )

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        clip_model, text_embedders = build_clip_and_text_embedders(cfg)
        vocab_cfg = cfg.clone()
        vocab_cfg.defrost()
        vocab_cfg.DATASETS.TRAIN = ()  # caption datasets have no class list: TCL's training vocabulary is empty
        tcl = cfg.MODEL.TCL
        order = slice(None, None, -1) if cfg.INPUT.FORMAT == "BGR" else slice(None)
        return {
            "backbone": None,
            "clip_model": clip_model,
            **text_embedders,
            **default_vocabularies(vocab_cfg),
            "pixel_mean": [255.0 * m for m in CLIP_PIXEL_MEAN[order]],
            "pixel_std": [255.0 * s for s in CLIP_PIXEL_STD[order]],
            "size_divisibility": dense_stride(clip_model),
            "input_format": cfg.INPUT.FORMAT,
            "grounder": TCLGrounder(
                clip_model,
                out_stride=tcl.OUT_STRIDE,
                decoder_dim=tcl.DECODER_DIM,
                init_w=tcl.INIT_W,
                init_b=tcl.INIT_B,
                gumbel_tau=tcl.GUMBEL_TAU,
            ),
            "criterion": TCLCriterion(
                tcl_weight=tcl.TCL_WEIGHT,
                area_weight=tcl.AREA_WEIGHT,
                tv_weight=tcl.TV_WEIGHT,
                pos_area_prior=tcl.AREA_PRIOR,
            ),
            "pamr": PAMR(tcl.PAMR_ITERS, tcl.PAMR_DILATIONS) if tcl.PAMR_ITERS > 0 else None,
            "kp_weight": tcl.KP_WEIGHT,
            "bg_thresh": tcl.BG_THRESH,
            "stage_freeze_iters": tcl.STAGE_FREEZE_ITERS,
            "text_units": tcl.TEXT_UNITS,
        }

    def set_vocabulary(
        self,
        class_names: Sequence[str],
        unseen_classes: Optional[Sequence[str]] = None,
        *,
        test_unseen: Optional[Sequence[bool]] = None,
    ) -> None:
        """As :meth:`OpenVocabSegmentor.set_vocabulary`; with a background threshold, the vocabulary needs a class
        named "background" (any case).

        Raises:
            ValueError: see the base method, or a background threshold without a "background" class.
        """
        names = [n.strip().lower() for n in class_names]
        if self.bg_thresh > 0 and BACKGROUND not in names:
            raise ValueError(
                f"MODEL.TCL.BG_THRESH {self.bg_thresh} scores the class {BACKGROUND!r}, which the vocabulary lacks: "
                "add it or set MODEL.TCL.BG_THRESH 0"
            )
        super().set_vocabulary(class_names, unseen_classes, test_unseen=test_unseen)
        self._background = names.index(BACKGROUND) if self.bg_thresh > 0 else None

    def clip_images(self, batched_inputs: List[Dict]) -> Tuple[Tensor, List[Tuple[int, int]]]:
        """CLIP-normalised RGB images (B, 3, H, W), zero-padded (CLIP's mean colour) to a multiple of CLIP's
        stride, and each image's unpadded size."""
        images = self.preprocess_images(batched_inputs)  # CLIP's mean and std, in the input's channel order
        x = images.tensor.flip(1) if self.input_format == "BGR" else images.tensor
        return x, images.image_sizes

    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]] | Dict[str, Tensor]:
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) 0-255 in INPUT.FORMAT, in training "caption"
                (str); optional "height"/"width" at inference.
        Returns:
            training: TCL's weighted losses; inference: per image ``{"sem_seg": (K, height, width)}`` mask scores.
        Raises:
            ValueError: a training input without "caption".
        """
        if self.training and any(not x.get("caption") for x in batched_inputs):
            raise ValueError("TCL trains on image–caption pairs: every input needs a 'caption' (a caption dataset)")
        images, sizes = self.clip_images(batched_inputs)
        if self.training:
            losses = self.losses(images, [x["caption"] for x in batched_inputs])
            self.num_train_steps += 1
            return losses
        scores = self.segment(images, self.test_text_embeddings)
        results = []
        for i, x in enumerate(batched_inputs):
            size = sizes[i]
            height, width = x.get("height", size[0]), x.get("width", size[1])
            out = self.resize_to_output(scores[i], size, height, width)
            if self._background is not None:
                out[self._background] = self.bg_thresh
            results.append({"sem_seg": out})
        return results

    def losses(self, images: Tensor, captions: Sequence[str]) -> Dict[str, Tensor]:
        """TCL's losses on a batch.

        Args:
            images: (B, 3, H, W) CLIP-normalised, padded images.
            captions: B captions, one per image.
        Returns:
            the weighted losses of :class:`TCLCriterion`.
        """
        with torch.no_grad():
            penultimate = dense_clip_features(self.clip_model, images).penultimate
            if self.text_units == "phrases":
                phrases, positive = batch_phrases(captions)
                positive = positive.to(images.device)
                text = self._embed_phrases(phrases)
            else:  # one caption per image: its own text is the diagonal
                positive = torch.eye(len(captions), dtype=torch.bool, device=images.device)
                text = self._encode_captions(list(captions))
        freeze = int(self.num_train_steps) < self.stage_freeze_iters
        embeddings = self.grounder.embed(self.clip_model, penultimate, freeze_stage=freeze)
        hard, soft = self.grounder(embeddings, text, sample=True)
        own = positive.nonzero().unbind(1)  # (image, text) of every pair
        own_mask = F.interpolate(hard[own][:, None], size=images.shape[-2:], mode="nearest")  # (P, 1, H, W)
        masked = images[own[0]] * own_mask
        res = int(self.clip_model.visual.input_resolution)
        if tuple(masked.shape[-2:]) != (res, res):
            masked = F.interpolate(masked, size=(res, res), mode="bilinear", align_corners=False, antialias=True)
        masked_embeddings = encode_image(self.clip_model, masked).float()
        return self.criterion(
            embeddings=embeddings,
            soft_masks=soft,
            text=text,
            masked_image_embeddings=masked_embeddings,
            positive=positive,
        )

    @torch.no_grad()
    def segment(self, images: Tensor, text: Tensor) -> Tensor:
        """Inference mask scores.

        Args:
            images: (B, 3, H, W) CLIP-normalised, padded images.
            text: (K, D) class embeddings.
        Returns:
            (B, K, H, W) soft mask scores in [0, 1].
        """
        dense = dense_clip_features(self.clip_model, images)
        _, masks = self.grounder(self.grounder.embed(self.clip_model, dense.penultimate), text)
        if self.pamr is not None:
            small = F.interpolate(images, size=masks.shape[-2:], mode="bilinear", align_corners=True)
            masks = self.pamr(small, masks)
        if self.kp_weight > 0:
            features = F.normalize(dense.features.float(), dim=1)
            cos = torch.einsum("bdhw,kd->bkhw", features, F.normalize(text, dim=-1))
            kp = torch.sigmoid((cos - KP_THRESHOLD) * KP_SCALE)
            kp = F.interpolate(kp, size=masks.shape[-2:], mode="bilinear", align_corners=False)
            masks = self.kp_weight * kp + (1.0 - self.kp_weight) * masks
        return F.interpolate(masks, size=images.shape[-2:], mode="bilinear", align_corners=False)
