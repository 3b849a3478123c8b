"""ZS3Net: zero-shot semantic segmentation by generating unseen-class pixel features (Bucher et al., NeurIPS 2019).

Stage 1 trains the DeepLab segmentation network on the seen classes. Stage 2 (from ``generator_start_iter``)
freezes it, trains a GMMN to turn a class embedding plus noise into pixel features whose distribution matches the
real features of each seen class (multi-bandwidth MMD), and trains a new classifier over all K classes on real
seen features and generated unseen ones. Unlike the official stage 2, which generated whole feature maps from
ground-truth layouts containing unseen pixels, nothing here reads an unseen-class label: the unseen features come
from the unseen embeddings and noise only.
"""
from __future__ import annotations

from typing import Dict, Sequence

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from ..generative import (
    GenerativeSegmentor,
    GMMNGenerator,
    classwise_mmd,
    current_iteration,
    frozen,
    sample_pixels_per_class,
)

__all__ = ["ZS3Net"]


@META_ARCH_REGISTRY.register()
class ZS3Net(GenerativeSegmentor):
    """DeepLab segmentation network + GMMN feature generator + classifier retrained on generated unseen features.

    Losses: stage 1 ``loss_sem_seg`` (per-pixel CE over the seen classes, logits upsampled to the labels);
    stage 2 ``loss_mmd`` (generator only) and ``loss_cls`` (new classifier only, on detached features).
    Inference uses the new classifier once a stage-2 step has run, else the seen classifier (unseen classes then
    get probability 0).
    """

    @configurable
    def __init__(
        self,
        *,
        feature_dim: int,
        generator: GMMNGenerator,
        generator_start_iter: int,
        samples_per_class: int = 128,
        mmd_sigmas: Sequence[float] = (2, 5, 10, 20, 40, 80),
        **kwargs,
    ):
        """
        Args:
            feature_dim: D, width of the head's pixel features.
            generator: class embedding (+ noise) → (D,) feature.
            generator_start_iter: first iteration of stage 2.
            samples_per_class: real pixels drawn per present seen class (MMD and classifier), and features
                generated per unseen class, per iteration (official: 128).
            mmd_sigmas: bandwidths of the MMD kernel (official code: 2, 5, 10, 20, 40, 80).
            kwargs: see :class:`GenerativeSegmentor`.
        """
        super().__init__(**kwargs)
        self.seen_classifier = nn.Conv2d(feature_dim, self.num_seen, 1)
        self.generator = generator
        self.classifier = nn.Linear(feature_dim, self.num_classes)
        self.generator_start_iter = generator_start_iter
        self.samples_per_class = samples_per_class
        self.mmd_sigmas = tuple(mmd_sigmas)
        self.register_buffer("classifier_trained", torch.tensor(False))

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        z = cfg.MODEL.ZS3NET
        shared = cls.generative_config(cfg)
        return {
            **shared,
            "feature_dim": cfg.MODEL.GENERATIVE.HEAD_DIM,
            "generator": GMMNGenerator(
                embed_dim=shared["class_embeddings"].shape[1],
                noise_dim=z.NOISE_DIM,
                hidden_dim=z.GENERATOR_HIDDEN_DIM,
                feature_dim=cfg.MODEL.GENERATIVE.HEAD_DIM,
                dropout=z.GENERATOR_DROPOUT,
            ),
            "generator_start_iter": z.GENERATOR_START_ITER,
            "samples_per_class": z.SAMPLES_PER_CLASS,
            "mmd_sigmas": z.MMD_SIGMAS,
        }

    def training_losses(self, images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """(B, 3, H, W) images, (B, H, W) seen labels → stage 1 or stage 2 losses (see the class docstring)."""
        if current_iteration() < self.generator_start_iter:
            logits = self.seen_classifier(self.features(images))
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            if not bool((labels != self.ignore_value).any()):
                return {"loss_sem_seg": logits.sum() * 0.0}
            return {"loss_sem_seg": F.cross_entropy(logits, labels, ignore_index=self.ignore_value)}
        with frozen(self.backbone, self.head):
            feats = self.features(images)  # (B, D, h, w)
        labels = self.resize_labels(labels, feats.shape[-2:]).flatten()
        return self.generation_losses(feats.permute(0, 2, 3, 1).flatten(0, 2), labels)

    def generation_losses(self, pixels: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """Stage 2 on the frozen network's pixel features.

        Args:
            pixels: (N, D) real pixel features.
            labels: (N,) their seen-class ids or ``ignore_value``.
        Returns:
            {"loss_mmd", "loss_cls"}: per-class MMD of generated vs real seen features (trains the generator);
            CE of the new classifier on the sampled real seen features and on ``samples_per_class`` generated
            features per unseen class (trains the classifier).
        """
        n = self.samples_per_class
        classes, index = sample_pixels_per_class(labels, self.num_seen, n)  # (C,), (C, n)
        real = pixels[index]  # (C, n, D)
        fake = self.generator(self.class_embeddings[classes, None].expand(-1, n, -1))
        unseen = torch.arange(self.num_seen, self.num_classes, device=pixels.device)
        with torch.no_grad():
            fake_unseen = self.generator(self.class_embeddings[unseen, None].expand(-1, n, -1))  # (U, n, D)
        x = torch.cat([real.flatten(0, 1), fake_unseen.flatten(0, 1)])
        y = torch.cat([classes, unseen]).repeat_interleave(n)
        self.classifier_trained.fill_(True)
        return {
            "loss_mmd": classwise_mmd(fake, real, self.mmd_sigmas),
            "loss_cls": F.cross_entropy(self.classifier(x), y) if len(y) else self.classifier.weight.sum() * 0.0,
        }

    def predict_logits(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) → (B, K, h, w) logits; before stage 2 the seen classifier's, unseen columns at -1e4
        (probability 0 after the softmax; finite, so that resizing stays finite)."""
        feats = self.features(images)
        if bool(self.classifier_trained):
            return torch.einsum("bdhw,kd->bkhw", feats, self.classifier.weight) + self.classifier.bias[:, None, None]
        seen = self.seen_classifier(feats)
        unseen = seen.new_full((seen.shape[0], self.num_classes - self.num_seen, *seen.shape[2:]), -1e4)
        return torch.cat([seen, unseen], dim=1)
