"""A CLIP ResNet image tower as a detectron2 backbone (initialised from the CLIP checkpoint's weights).

Every real open-vocabulary segmentation configuration starts from pretrained weights (ImageNet or CLIP); this
gives the toy world the same: ToyCLIP's ModifiedResNet (``zegseg/model_zoo/toy_clip.pt``), trained contrastively
on image–caption pairs only, becomes the segmentation backbone. Its attention pool is dropped; the four residual
stages give ``res2``..``res5`` at strides 4, 8, 16, 32 (OpenAI's stem: two convolutions at stride 2 and an average
pool). Select it with ``MODEL.BACKBONE.NAME "build_clip_resnet_backbone"``; the weights come from the CLIP named by
MODEL.BACKBONE.CLIP_WEIGHTS.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Sequence

import torch
from clip.model import ModifiedResNet
from detectron2.config import CfgNode
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import Tensor, nn

from .loader import load_clip
from .region_encoder import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD

__all__ = ["ClipResNetBackbone", "build_clip_resnet_backbone"]

_STAGES = ("res2", "res3", "res4", "res5")


class ClipResNetBackbone(Backbone):
    """The stem and residual stages of a CLIP ModifiedResNet, re-normalising detectron2's inputs for them.

    The segmentor normalises images with MODEL.PIXEL_MEAN / PIXEL_STD in INPUT.FORMAT order; the tower was
    trained on RGB images normalised with CLIP's mean and std. A fixed per-channel affine map (and channel flip
    for BGR) turns the one into the other, so any PIXEL_MEAN / PIXEL_STD / FORMAT gives the tower its own input.
    """

    def __init__(
        self,
        tower: ModifiedResNet,
        *,
        out_features: Sequence[str],
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        input_format: str = "BGR",
        freeze_at: int = 0,
        frozen_bn: bool = True,
    ):
        """
        Args:
            tower: a CLIP ModifiedResNet (its ``attnpool`` is not used and is dropped).
            out_features: which of res2..res5 to return.
            pixel_mean, pixel_std: the segmentor's input normalisation (0-255 scale, INPUT.FORMAT order).
            input_format: "BGR" or "RGB", the channel order of the segmentor's images.
            freeze_at: 0 trains everything; 1 freezes the stem; k > 1 also freezes res2..res{k} (detectron2's rule).
            frozen_bn: replace the BatchNorm layers by FrozenBatchNorm2d with the pretrained statistics.
        Raises:
            ValueError: an unknown feature name or input format.
        """
        super().__init__()
        unknown = [f for f in out_features if f not in _STAGES]
        if unknown or not out_features:
            raise ValueError(f"MODEL.RESNETS.OUT_FEATURES {list(out_features)} must be a non-empty subset of {_STAGES}")
        if input_format not in ("BGR", "RGB"):
            raise ValueError(f"unknown input format {input_format!r}; known: BGR, RGB")
        order = [2, 1, 0] if input_format == "BGR" else [0, 1, 2]
        mean = torch.tensor(pixel_mean, dtype=torch.float32)[order]
        std = torch.tensor(pixel_std, dtype=torch.float32)[order]
        clip_mean = torch.tensor(CLIP_PIXEL_MEAN) * 255.0
        clip_std = torch.tensor(CLIP_PIXEL_STD) * 255.0
        # x_clip = (x * std + mean - clip_mean) / clip_std, per RGB channel
        self.register_buffer("in_order", torch.tensor(order), persistent=False)
        self.register_buffer("in_scale", (std / clip_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("in_shift", ((mean - clip_mean) / clip_std).view(1, 3, 1, 1), persistent=False)

        stem = ("conv1", "bn1", "relu1", "conv2", "bn2", "relu2", "conv3", "bn3", "relu3", "avgpool")
        self.stem = nn.Sequential(OrderedDict((name, getattr(tower, name)) for name in stem))
        last = max(_STAGES.index(f) for f in out_features)
        self.stage_names: List[str] = list(_STAGES[: last + 1])
        layers = [tower.layer1, tower.layer2, tower.layer3, tower.layer4]
        for name, layer in zip(self.stage_names, layers):
            self.add_module(name, layer)
        self._out_features = list(out_features)
        self._out_feature_strides = {name: 4 * 2**i for i, name in enumerate(self.stage_names)}
        self._out_feature_channels = {name: layers[i][-1].bn3.num_features for i, name in enumerate(self.stage_names)}
        if frozen_bn:
            FrozenBatchNorm2d.convert_frozen_batchnorm(self)
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        """Stop gradients of the stem (``freeze_at >= 1``) and of res2..res{freeze_at} (``freeze_at >= 2``)."""
        modules = [self.stem] + [getattr(self, n) for n in self.stage_names]
        for module in modules[: max(freeze_at, 0)]:
            module.requires_grad_(False)
            FrozenBatchNorm2d.convert_frozen_batchnorm(module)

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """
        Args:
            x: (B, 3, H, W) images normalised with the segmentor's PIXEL_MEAN / PIXEL_STD, H and W multiples of 32.
        Returns:
            {name: (B, C_name, H / s, W / s)} for each of ``out_features`` (s: 4, 8, 16, 32 for res2..res5).
        """
        x = self.stem(x[:, self.in_order] * self.in_scale + self.in_shift)
        out = {}
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in self._out_features:
                out[name] = x
        return out

    @property
    def size_divisibility(self) -> int:
        return 32


@BACKBONE_REGISTRY.register()
def build_clip_resnet_backbone(cfg: CfgNode, input_shape: ShapeSpec) -> ClipResNetBackbone:
    """The image tower of the ResNet CLIP named by MODEL.BACKBONE.CLIP_WEIGHTS, as a trainable backbone (its own
    fp32 copy; the frozen CLIP of MODEL.CLIP.NAME is untouched).

    Reads MODEL.RESNETS.OUT_FEATURES, MODEL.BACKBONE.FREEZE_AT, MODEL.RESNETS.NORM ("FrozenBN": pretrained
    statistics kept; "BN": trainable batch norm), MODEL.PIXEL_MEAN / PIXEL_STD and INPUT.FORMAT.

    Raises:
        ValueError: the CLIP has a ViT image tower, or MODEL.RESNETS.NORM is neither "BN" nor "FrozenBN".
    """
    if input_shape.channels != 3:
        raise ValueError(f"build_clip_resnet_backbone takes RGB images, got {input_shape.channels} channels")
    norm = cfg.MODEL.RESNETS.NORM
    if norm not in ("BN", "FrozenBN"):
        raise ValueError(
            f"build_clip_resnet_backbone keeps CLIP's batch norm: MODEL.RESNETS.NORM must be BN or FrozenBN, "
            f"got {norm!r}"
        )
    name = cfg.MODEL.BACKBONE.CLIP_WEIGHTS
    tower = load_clip(name, device="cpu", weights_dir=cfg.MODEL.CLIP.WEIGHTS_DIR or None).visual
    if not isinstance(tower, ModifiedResNet):
        raise ValueError(
            f"build_clip_resnet_backbone needs a ResNet CLIP; MODEL.BACKBONE.CLIP_WEIGHTS {name!r} has a "
            f"{type(tower).__name__} image tower"
        )
    tower.requires_grad_(True)
    return ClipResNetBackbone(
        tower.train(),
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        input_format=cfg.INPUT.FORMAT,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        frozen_bn=norm == "FrozenBN",
    )
