"""The segmentation network's head: DeepLabv3+ (ASPP on a coarse backbone feature, fused with a fine one)."""
from __future__ import annotations

from typing import Dict, Sequence

from detectron2.layers import ShapeSpec
from detectron2.projects.deeplab.semantic_seg import DeepLabV3PlusHead
from torch import nn

__all__ = ["build_deeplab_feature_head"]


def build_deeplab_feature_head(
    input_shape: Dict[str, ShapeSpec],
    *,
    in_features: Sequence[str],
    project_channels: int,
    aspp_channels: int,
    aspp_dilations: Sequence[int],
    aspp_dropout: float,
    feature_dim: int,
    norm: str,
) -> nn.Module:
    """detectron2's DeepLabV3PlusHead without a predictor: backbone features → (B, feature_dim, H / s, W / s)
    pixel features at the stride s of the finest input feature (ZS3Net's "forward before class prediction").

    Args:
        input_shape: the backbone's output shapes.
        in_features: two backbone features, e.g. ("res2", "res5"): ASPP runs on the coarser, the finer is
            projected to ``project_channels`` and fused (two 3x3 convolutions to ``feature_dim``).
        project_channels: width of the projected fine feature (DeepLabv3+: 48).
        aspp_channels: width of the ASPP branches and output (DeepLabv3+: 256).
        aspp_dilations: the three dilations of ASPP (DeepLabv3+ at stride 16: 6, 12, 18).
        aspp_dropout: dropout after ASPP.
        feature_dim: width of the output pixel features.
        norm: normalisation of every convolution ("BN", "GN", "SyncBN", "").
    Raises:
        ValueError: not exactly two known features, or not three dilations.
    """
    unknown = [f for f in in_features if f not in input_shape]
    if len(in_features) != 2 or unknown:
        raise ValueError(
            f"the DeepLab head takes two backbone features (fine, coarse), got {list(in_features)}; "
            f"the backbone gives {sorted(input_shape)}"
        )
    if len(aspp_dilations) != 3:
        raise ValueError(f"ASPP takes three dilations, got {list(aspp_dilations)}")
    return DeepLabV3PlusHead(
        {f: input_shape[f] for f in in_features},
        project_channels=[project_channels],
        aspp_dilations=list(aspp_dilations),
        aspp_dropout=aspp_dropout,
        decoder_channels=[feature_dim, aspp_channels],
        common_stride=min(input_shape[f].stride for f in in_features),
        norm=norm,
        train_size=None,
        num_classes=None,
    )
