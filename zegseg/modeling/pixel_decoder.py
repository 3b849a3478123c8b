"""Pixel decoders: backbone features → per-pixel mask features (and the feature the transformer decoder reads).

Pixel decoders are registered in :data:`PIXEL_DECODER_REGISTRY` and built by name (MODEL.PIXEL_DECODER.NAME)
with :func:`build_pixel_decoder`. Their ``forward`` returns a :class:`PixelDecoderOutput`.
"""
from __future__ import annotations

from typing import Dict, List, NamedTuple

import fvcore.nn.weight_init as weight_init
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.utils.registry import Registry
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["PIXEL_DECODER_REGISTRY", "FPNPixelDecoder", "PixelDecoderOutput", "build_pixel_decoder"]

PIXEL_DECODER_REGISTRY = Registry("PIXEL_DECODER")
PIXEL_DECODER_REGISTRY.__doc__ = """
Registry of pixel decoders. A registered class is called as ``cls(cfg, input_shape)`` with ``input_shape`` the
backbone's ``output_shape()``, and returns a :class:`PixelDecoderOutput` from ``forward(features)``. It exposes
``transformer_in_channels`` (channels of ``transformer_features``) and ``mask_stride``.
"""


class PixelDecoderOutput(NamedTuple):
    """What a pixel decoder returns (a named tuple: access by field name).

    Attributes:
        mask_features: (B, MASK_DIM, H / mask_stride, W / mask_stride) per-pixel embeddings that query mask
            embeddings are dotted with (stride 4 with res2 in IN_FEATURES).
        multi_scale_features: {backbone feature name: (B, CONVS_DIM, H / s, W / s)} the decoder's outputs at
            every level of MODEL.PIXEL_DECODER.IN_FEATURES (s: that feature's stride).
        transformer_features: (B, transformer_in_channels, H / s, W / s) the feature the transformer decoder
            attends to: the backbone's MODEL.TRANSFORMER_DECODER.IN_FEATURE, passed through unchanged.
    """

    mask_features: Tensor
    multi_scale_features: Dict[str, Tensor]
    transformer_features: Tensor


def build_pixel_decoder(cfg: CfgNode, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The pixel decoder named by MODEL.PIXEL_DECODER.NAME.

    Args:
        cfg: a zegseg config.
        input_shape: the backbone's ``output_shape()``.
    Raises:
        ValueError: the name is not registered.
    """
    name = cfg.MODEL.PIXEL_DECODER.NAME
    if name not in PIXEL_DECODER_REGISTRY:
        known = ", ".join(sorted(n for n, _ in PIXEL_DECODER_REGISTRY))
        raise ValueError(f"unknown pixel decoder {name!r}; known: {known}")
    return PIXEL_DECODER_REGISTRY.get(name)(cfg, input_shape)


def _check_feature_names(names: List[str], input_shape: Dict[str, ShapeSpec], what: str) -> None:
    missing = [n for n in names if n not in input_shape]
    if missing:
        raise ValueError(f"{what} {missing} not produced by the backbone; it gives: {', '.join(input_shape)}")


@PIXEL_DECODER_REGISTRY.register()
class FPNPixelDecoder(nn.Module):
    """A light FPN (MaskFormer's base pixel decoder).

    Top-down over IN_FEATURES from coarse to fine: the coarsest feature goes through a 3x3 conv; every finer
    feature through a 1x1 lateral conv, is summed with the nearest-upsampled coarser output and goes through a
    3x3 conv (norm + ReLU after each 3x3). A last 3x3 conv on the finest output gives the mask features.
    """

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        in_features: List[str],
        conv_dim: int,
        mask_dim: int,
        norm: str = "GN",
        transformer_in_feature: str = "res5",
    ):
        """
        Args:
            input_shape: the backbone's output shapes (every feature it gives, by name).
            in_features: the backbone features the FPN uses (any order; sorted by stride here).
            conv_dim: channels of the lateral and output convolutions.
            mask_dim: channels of the mask features.
            norm: normalisation after the lateral and output convolutions ("", "GN", "BN", "SyncBN", ...).
            transformer_in_feature: backbone feature returned as ``transformer_features``.
        Raises:
            ValueError: a feature name the backbone does not produce.
        """
        super().__init__()
        _check_feature_names(list(in_features), input_shape, "PIXEL_DECODER.IN_FEATURES")
        _check_feature_names([transformer_in_feature], input_shape, "TRANSFORMER_DECODER.IN_FEATURE")
        if not in_features:
            raise ValueError("PIXEL_DECODER.IN_FEATURES is empty")
        # coarse to fine
        self.in_features = sorted(in_features, key=lambda n: input_shape[n].stride, reverse=True)
        self.transformer_in_feature = transformer_in_feature
        self.transformer_in_channels = input_shape[transformer_in_feature].channels
        self.mask_stride = input_shape[self.in_features[-1]].stride
        use_bias = norm == ""

        self.lateral_convs = nn.ModuleDict()
        self.output_convs = nn.ModuleDict()
        for i, name in enumerate(self.in_features):
            channels = input_shape[name].channels
            if i > 0:
                lateral = Conv2d(channels, conv_dim, kernel_size=1, bias=use_bias, norm=get_norm(norm, conv_dim))
                weight_init.c2_xavier_fill(lateral)
                self.lateral_convs[name] = lateral
            output = Conv2d(
                channels if i == 0 else conv_dim,
                conv_dim,
                kernel_size=3,
                padding=1,
                bias=use_bias,
                norm=get_norm(norm, conv_dim),
                activation=F.relu,
            )
            weight_init.c2_xavier_fill(output)
            self.output_convs[name] = output
        self.mask_features = Conv2d(conv_dim, mask_dim, kernel_size=3, padding=1)
        weight_init.c2_xavier_fill(self.mask_features)

    @classmethod
    def from_config(cls, cfg: CfgNode, input_shape: Dict[str, ShapeSpec]):
        dec = cfg.MODEL.PIXEL_DECODER
        return {
            "input_shape": dict(input_shape),
            "in_features": list(dec.IN_FEATURES),
            "conv_dim": dec.CONVS_DIM,
            "mask_dim": dec.MASK_DIM,
            "norm": dec.NORM,
            "transformer_in_feature": cfg.MODEL.TRANSFORMER_DECODER.IN_FEATURE,
        }

    def forward(self, features: Dict[str, Tensor]) -> PixelDecoderOutput:
        """
        Args:
            features: backbone outputs {name: (B, C_name, H / s, W / s)}; must hold IN_FEATURES and the
                transformer decoder's input feature.
        Returns:
            :class:`PixelDecoderOutput` (mask features at ``mask_stride``).
        """
        multi_scale: Dict[str, Tensor] = {}
        y = None
        for name in self.in_features:
            x = features[name]
            if y is None:
                y = self.output_convs[name](x)
            else:
                lateral = self.lateral_convs[name](x)
                y = self.output_convs[name](lateral + F.interpolate(y, size=lateral.shape[-2:], mode="nearest"))
            multi_scale[name] = y
        return PixelDecoderOutput(
            mask_features=self.mask_features(y),
            multi_scale_features=multi_scale,
            transformer_features=features[self.transformer_in_feature],
        )
