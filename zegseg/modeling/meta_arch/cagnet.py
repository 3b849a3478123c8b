"""CaGNet: context-aware feature generation for zero-shot semantic segmentation (Gu et al., ACM MM 2020).

The segmentation network's features h pass through the Contextual Module, which gives a per-pixel latent code z
(mean, log-variance, KL to N(0, 1)) and the real features ``x = sigmoid(h + h * sigmoid(z))``. A generator maps
(class embedding, z) to a feature per pixel; a discriminator sharing its trunk with the K-class classifier tells
real from generated features. Two stages, one command:

- training (iterations before ``finetune_start_iter``): "step 1" only — the discriminator/classifier learns from
  real (and, with weight, generated) seen features, the backbone and contextual module from the classifier's CE
  and the KL, the generator from the adversarial and content losses;
- fine-tuning: the backbone is frozen and blocks of ``cycle_iters`` iterations alternate, step 1 first, with
  "step 2": label maps drawn at random over all K classes (unseen ones favoured by ``unseen_rate``), z ~ N(0, 1),
  and the classifier learns from the generated features — the only place unseen classes reach training.

One backward pass over the summed losses updates every network with its own losses only: each loss sees the
other networks' outputs detached (or their parameters detached, :func:`with_frozen_parameters`).
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import torch
from detectron2.config import CfgNode, configurable
from detectron2.modeling import META_ARCH_REGISTRY
from torch import Tensor, nn
from torch.nn import functional as F

from ..generative import (
    ContextualModule,
    DiscriminatorClassifier,
    GenerativeSegmentor,
    PixelFeatureGenerator,
    adversarial_l1,
    class_prior,
    classwise_mmd,
    current_iteration,
    frozen,
    kl_divergence,
    sample_label_maps,
    sample_pixels_per_class,
    with_frozen_parameters,
)

__all__ = ["CaGNet"]


@META_ARCH_REGISTRY.register()
class CaGNet(GenerativeSegmentor):
    """DeepLab network + Contextual Module + generator + discriminator/classifier (see the module docstring).

    Losses (each key trains one network): ``loss_disc`` (adversarial, discriminator side), ``loss_cls_real`` /
    ``loss_cls_fake`` (classifier on real / generated features), ``loss_kl`` and ``loss_backbone_cls``
    (backbone and contextual module, training stage only), ``loss_gen_adv`` and ``loss_gen_content``
    (generator); in step 2 ``loss_cls_transfer`` (classifier) and ``loss_gen_transfer`` (generator, when its
    weight is not 0).
    """

    @configurable
    def __init__(
        self,
        *,
        head_dim: int,
        feature_dim: int,
        contextual: ContextualModule,
        generator: PixelFeatureGenerator,
        discriminator: DiscriminatorClassifier,
        finetune_start_iter: int,
        cycle_iters: int = 100,
        unseen_rate: float = 9.0,
        kl_weight: float = 100.0,
        backbone_cls_weight: float = 0.5,
        adv_weight: float = 1.0,
        content_weight: float = 50.0,
        train_cls_weights: Tuple[float, float] = (1.0, 0.0),
        finetune_cls_weights: Tuple[float, float] = (0.75, 0.25),
        transfer_cls_weight: float = 0.125,
        transfer_gen_weight: float = 0.0,
        content_samples: int = 128,
        mmd_sigmas: Sequence[float] = (2, 5, 10, 20, 40, 60),
        **kwargs,
    ):
        """
        Args:
            head_dim: width of the DeepLab head's output.
            feature_dim: D, width of h, z and the real / generated features (a 1x1 projection maps the head's
                output to h, the linear "ASPP" output of the official network).
            contextual, generator, discriminator: the three networks (widths D, embedding width E, K classes).
            finetune_start_iter: first fine-tuning iteration (backbone frozen, steps 1 and 2 alternate).
            cycle_iters: length of each step-1 / step-2 block while fine-tuning (official: 100).
            unseen_rate: step 2 draws an unseen class with weight ``1 + unseen_rate``, a seen one with 1.
            kl_weight, backbone_cls_weight: the backbone's loss ``kl_weight * KL + backbone_cls_weight * CE``.
            adv_weight, content_weight: the generator's adversarial and content (MMD) loss weights.
            train_cls_weights: (real, generated) CE weights of the classifier in the training stage.
            finetune_cls_weights: the same in fine-tuning's step 1.
            transfer_cls_weight: classifier's CE weight on step 2's generated features.
            transfer_gen_weight: generator's CE weight through the classifier in step 2 (0: off).
            content_samples: pixels drawn per present class for the content MMD.
            mmd_sigmas: bandwidths of the content MMD (official: 2, 5, 10, 20, 40, 60).
            kwargs: see :class:`GenerativeSegmentor`.
        """
        super().__init__(**kwargs)
        self.feature_proj = nn.Conv2d(head_dim, feature_dim, 1)
        self.contextual = contextual
        self.generator = generator
        self.discriminator = discriminator
        self.feature_dim = feature_dim
        self.finetune_start_iter = finetune_start_iter
        self.cycle_iters = cycle_iters
        self.kl_weight = kl_weight
        self.backbone_cls_weight = backbone_cls_weight
        self.adv_weight = adv_weight
        self.content_weight = content_weight
        self.train_cls_weights = tuple(train_cls_weights)
        self.finetune_cls_weights = tuple(finetune_cls_weights)
        self.transfer_cls_weight = transfer_cls_weight
        self.transfer_gen_weight = transfer_gen_weight
        self.content_samples = content_samples
        self.mmd_sigmas = tuple(mmd_sigmas)
        prior = class_prior(self.num_seen, self.num_classes - self.num_seen, unseen_rate)
        self.register_buffer("label_prior", prior, persistent=False)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict:
        c = cfg.MODEL.CAGNET
        shared = cls.generative_config(cfg)
        dim = c.FEATURE_DIM
        num_classes = len(shared["generation_class_names"])
        return {
            **shared,
            "head_dim": cfg.MODEL.GENERATIVE.HEAD_DIM,
            "feature_dim": dim,
            "contextual": ContextualModule(feature_dim=dim, hidden_dim=c.CONTEXT_DIM, dilations=c.CONTEXT_DILATIONS),
            "generator": PixelFeatureGenerator(
                embed_dim=shared["class_embeddings"].shape[1],
                latent_dim=dim,
                hidden_dims=c.GENERATOR_HIDDEN_DIMS,
                dropouts=c.GENERATOR_DROPOUTS,
                feature_dim=dim,
            ),
            "discriminator": DiscriminatorClassifier(
                feature_dim=dim, hidden_dim=c.DISCRIMINATOR_HIDDEN_DIM, num_classes=num_classes
            ),
            "finetune_start_iter": c.FINETUNE_START_ITER,
            "cycle_iters": c.CYCLE_ITERS,
            "unseen_rate": c.UNSEEN_RATE,
            "kl_weight": c.KL_WEIGHT,
            "backbone_cls_weight": c.BACKBONE_CLS_WEIGHT,
            "adv_weight": c.ADV_WEIGHT,
            "content_weight": c.CONTENT_WEIGHT,
            "train_cls_weights": tuple(c.TRAIN_CLS_WEIGHTS),
            "finetune_cls_weights": tuple(c.FINETUNE_CLS_WEIGHTS),
            "transfer_cls_weight": c.TRANSFER_CLS_WEIGHT,
            "transfer_gen_weight": c.TRANSFER_GEN_WEIGHT,
            "content_samples": c.CONTENT_SAMPLES,
            "mmd_sigmas": c.MMD_SIGMAS,
        }

    # ------------------------------------------------------------------------------------------------- stages
    def stage(self, iteration: int) -> str:
        """"train" before ``finetune_start_iter``; then "step1" / "step2" in alternating blocks, step 1 first."""
        if iteration < self.finetune_start_iter:
            return "train"
        return "step2" if (iteration - self.finetune_start_iter) // self.cycle_iters % 2 else "step1"

    def real_features(self, images: Tensor, sample: bool):
        """(B, 3, H, W) → the Contextual Module's output on h (see :class:`ContextualOutput`)."""
        return self.contextual(self.feature_proj(self.features(images)), sample=sample)

    def training_losses(self, images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """(B, 3, H, W) images, (B, H, W) seen labels → the losses of the current stage (class docstring)."""
        stage = self.stage(current_iteration())
        if stage == "step2":  # no image is needed: the label maps are random, only the feature grid's size
            stride = self.head.common_stride
            return self.transfer_losses(images.shape[0], images.shape[-2] // stride, images.shape[-1] // stride)
        if stage == "train":
            out = self.real_features(images, sample=True)
        else:
            with frozen(self.backbone, self.head, self.feature_proj):
                h = self.feature_proj(self.features(images))
            with torch.no_grad():
                out = self.contextual(h, sample=True)
        labels = self.resize_labels(labels, out.features.shape[-2:])
        return self.step1_losses(out, labels, train_backbone=stage == "train")

    def step1_losses(self, out, labels: Tensor, train_backbone: bool) -> Dict[str, Tensor]:
        """Step 1 on real features and features generated from the same seen labels and latent codes.

        Args:
            out: the Contextual Module's output (:class:`ContextualOutput`, (B, D, h, w) tensors).
            labels: (B, h, w) seen ids or ``ignore_value``.
            train_backbone: add the backbone's KL and CE losses (training stage; fine-tuning freezes it).
        """
        valid = labels != self.ignore_value
        target = labels.masked_fill(~valid, -100)  # cross_entropy's default ignore_index
        real = out.features
        fake = self.generator(self.embedding_map(labels), out.latent.detach())  # (B, D, h, w)
        realness_real, logits_real = self.discriminator(real.detach())
        realness_fake, logits_fake = self.discriminator(fake.detach())
        w_real, w_fake = self.train_cls_weights if train_backbone else self.finetune_cls_weights
        losses = {
            "loss_disc": adversarial_l1(realness_real, 1.0, valid) + adversarial_l1(realness_fake, 0.0, valid),
            "loss_cls_real": w_real * masked_ce(logits_real, target),
            "loss_cls_fake": w_fake * masked_ce(logits_fake, target),
        }
        if train_backbone:
            _, logits = with_frozen_parameters(self.discriminator, real)
            losses["loss_kl"] = self.kl_weight * kl_divergence(out.mu, out.logvar, valid)
            losses["loss_backbone_cls"] = self.backbone_cls_weight * masked_ce(logits, target)
        realness, _ = with_frozen_parameters(self.discriminator, fake)
        classes, index = sample_pixels_per_class(labels.flatten(), self.num_seen, self.content_samples)
        fake_pixels = fake.permute(0, 2, 3, 1).flatten(0, 2)[index]  # (C, n, D)
        real_pixels = real.detach().permute(0, 2, 3, 1).flatten(0, 2)[index]
        losses["loss_gen_adv"] = self.adv_weight * adversarial_l1(realness, 1.0, valid)
        losses["loss_gen_content"] = self.content_weight * classwise_mmd(fake_pixels, real_pixels, self.mmd_sigmas)
        return losses

    def transfer_losses(self, batch: int, height: int, width: int) -> Dict[str, Tensor]:
        """Step 2: features generated from random label maps over all K classes and z ~ N(0, 1).

        Args:
            batch, height, width: the size of the label maps (the feature grid of the batch).
        Returns:
            {"loss_cls_transfer"} (classifier) and, when ``transfer_gen_weight`` is not 0, {"loss_gen_transfer"}.
        """
        labels = sample_label_maps(batch, height, width, self.label_prior)
        latent = torch.randn(batch, self.feature_dim, height, width, device=self.device)
        fake = self.generator(self.embedding_map(labels), latent)
        logits = self.discriminator.classify(fake.detach())
        losses = {"loss_cls_transfer": self.transfer_cls_weight * masked_ce(logits, labels)}
        if self.transfer_gen_weight:
            _, logits = with_frozen_parameters(self.discriminator, fake)
            losses["loss_gen_transfer"] = self.transfer_gen_weight * masked_ce(logits, labels)
        return losses

    def predict_logits(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) → (B, K, h, w) classifier logits on the real features (z = μ)."""
        return self.discriminator.classify(self.real_features(images, sample=False).features)


def masked_ce(logits: Tensor, target: Tensor) -> Tensor:
    """Per-pixel CE of (B, K, h, w) logits against (B, h, w) targets (-100: ignored); 0 (in the graph) if none."""
    if not bool((target != -100).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target)
