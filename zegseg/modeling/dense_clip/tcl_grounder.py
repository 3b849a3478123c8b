"""TCL's grounder: text-grounded soft masks from a frozen CLIP's penultimate features.

TCL (Cha et al., CVPR 2023) turns a caption (or a class prompt) into a mask over the image:

1. a trainable copy of CLIP's last stage (run on the frozen tower's penultimate features, a ViT's last block by
   its value path: MaskCLIP's trick; :mod:`zegseg.modeling.clip.dense_features`);
2. a decoder of gated residual upsampling stages (:class:`GatedUpsampler`), from the tower's stride to stride 4.
   Each stage upsamples ×2 (nearest) and adds two pre-activation residual branches, LayerNorm → GELU → 3x3
   convolution → ``tanh(gate)``, the gates initialised to 0: the untrained decoder is plain nearest upsampling;
3. a trainable copy of CLIP's projection into the joint space (:class:`~zegseg.modeling.clip.dense_features.
   DenseProjection`), so that training starts from MaskCLIP's dense features, upsampled;
4. :class:`Sim2Mask`: ``sigmoid(w · cos(pixel, text) + b)`` with learnable ``w`` (init 10) and ``b`` (init -2.5);
   in training the hard mask is a straight-through Gumbel-sigmoid sample (:func:`gumbel_sigmoid`).

The official decoder runs at the stage's width, before the projection. ``decoder_dim`` (zegseg's addition, for
CPU budgets) runs its stages at a lower width between a 1x1 reduction and a zero-initialised 1x1 expansion added
to the nearest-upsampled input, so the untrained decoder is still plain nearest upsampling.
"""
from __future__ import annotations

import copy
import math
from typing import Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..clip.dense_features import DenseProjection, dense_stride, last_stage, run_last_stage

__all__ = ["GatedResidualConv", "GatedUpsampler", "Sim2Mask", "TCLGrounder", "gumbel_sigmoid"]


def gumbel_sigmoid(logits: Tensor, tau: float = 1.0, hard: bool = True) -> Tensor:
    """A sample of the Gumbel-sigmoid (binary Concrete) relaxation of ``Bernoulli(sigmoid(logits))``.

    ``sigmoid((logits + L) / tau)`` with ``L ~ Logistic(0, 1)`` (the difference of two Gumbel(0, 1) variables).
    With ``hard`` the result is that sample thresholded at 0.5, with the relaxed sample's gradient
    (straight-through): forward values in {0, 1}, ``P(1) = sigmoid(logits)`` for any ``tau``.

    Args:
        logits: any shape.
        tau: temperature (> 0).
        hard: return the thresholded, straight-through sample.
    Returns:
        a tensor of the shape of ``logits``.
    """
    if tau <= 0:
        raise ValueError(f"Gumbel-sigmoid temperature must be positive, got {tau}")
    u = torch.rand_like(logits).clamp_(torch.finfo(logits.dtype).tiny, 1.0 - torch.finfo(logits.dtype).eps)
    soft = ((logits + torch.log(u) - torch.log1p(-u)) / tau).sigmoid()
    if not hard:
        return soft
    return (soft > 0.5).to(soft.dtype) - soft.detach() + soft


class Sim2Mask(nn.Module):
    """Cosine similarity to mask: ``sigmoid(w · sim + b)`` with learnable scalars ``w`` and ``b``."""

    def __init__(self, init_w: float = 10.0, init_b: float = -2.5, gumbel_tau: float = 1.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))
        self.gumbel_tau = gumbel_tau

    def forward(self, sim: Tensor, sample: bool = False) -> Tuple[Tensor, Tensor]:
        """
        Args:
            sim: (...) cosine similarities.
            sample: draw the hard mask from the Gumbel-sigmoid (training); else threshold the soft mask at 0.5.
        Returns:
            ``(hard, soft)`` masks of the shape of ``sim``; ``hard`` is straight-through when sampled.
        """
        logits = sim * self.w + self.b
        soft = logits.sigmoid()
        hard = gumbel_sigmoid(logits, self.gumbel_tau) if sample else (soft > 0.5).to(soft.dtype)
        return hard, soft


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W) maps."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GatedResidualConv(nn.Module):
    """``x + tanh(g) · conv3x3(GELU(LN(x)))``, the gate ``g`` initialised to 0 (an identity block)."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = LayerNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.gate = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) → (B, C, H, W)."""
        return x + torch.tanh(self.gate) * self.conv(F.gelu(self.norm(x)))


class GatedUpsampler(nn.Module):
    """``num_stages`` × (nearest ×2 upsampling, two :class:`GatedResidualConv`): an identity-initialised decoder.

    With ``hidden_dim`` below ``channels`` the stages run at ``hidden_dim``: ``up(x) + expand(stages(reduce(x)))``
    with 1x1 ``reduce`` / ``expand`` convolutions, ``expand`` zero-initialised.
    """

    def __init__(self, channels: int, num_stages: int, hidden_dim: int = 0):
        """
        Args:
            channels: input and output channels.
            num_stages: ×2 upsampling stages (output stride = input stride / 2 ** num_stages).
            hidden_dim: width of the stages; 0 or ``channels``: the stages run at ``channels`` (official).
        """
        super().__init__()
        if num_stages < 0:
            raise ValueError(f"num_stages must be >= 0, got {num_stages}")
        if hidden_dim < 0 or hidden_dim > channels:
            raise ValueError(f"decoder width must be in 0..{channels}, got {hidden_dim}")
        self.num_stages = num_stages
        width = hidden_dim or channels
        self.stages = nn.ModuleList(
            nn.Sequential(GatedResidualConv(width), GatedResidualConv(width)) for _ in range(num_stages)
        )
        if width == channels:
            self.reduce = self.expand = None
        else:
            self.reduce = nn.Conv2d(channels, width, 1)
            self.expand = nn.Conv2d(width, channels, 1)
            nn.init.zeros_(self.expand.weight)
            nn.init.zeros_(self.expand.bias)

    def _run_stages(self, x: Tensor) -> Tensor:
        for stage in self.stages:
            x = stage(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) → (B, C, h · 2^n, w · 2^n)."""
        if self.reduce is None:
            return self._run_stages(x)
        up = F.interpolate(x, scale_factor=float(2**self.num_stages), mode="nearest")
        return up + self.expand(self._run_stages(self.reduce(x)))


class TCLGrounder(nn.Module):
    """TCL's masker: trainable last stage → gated upsampling decoder → trainable projection → Sim2Mask.

    The official order is kept: the decoder works at the last stage's width, the projection follows it.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        *,
        out_stride: int = 4,
        decoder_dim: int = 0,
        init_w: float = 10.0,
        init_b: float = -2.5,
        gumbel_tau: float = 1.0,
    ):
        """
        Args:
            clip_model: the frozen CLIP; its last stage and projection are copied (not kept).
            out_stride: stride of the masks; the tower's stride divided by a power of two.
            decoder_dim: width of the decoder stages (0: the last stage's width, as the official decoder).
            init_w, init_b: initial scale and bias of :class:`Sim2Mask`.
            gumbel_tau: temperature of the training masks' Gumbel-sigmoid.
        """
        super().__init__()
        stride = dense_stride(clip_model)
        num_stages = round(math.log2(stride / out_stride)) if 0 < out_stride <= stride else 0
        if stride != out_stride * 2**num_stages:
            raise ValueError(f"mask stride {out_stride} must be CLIP's stride {stride} divided by a power of two")
        self.stride = stride
        self.out_stride = out_stride
        self.last_stage = copy.deepcopy(last_stage(clip_model))
        self.proj = DenseProjection(clip_model)
        width = int(self.proj.pre.weight.shape[-1])  # the last stage's width (ln_post's or v_proj's input)
        self.decoder = GatedUpsampler(width, num_stages, decoder_dim)
        self.sim2mask = Sim2Mask(init_w, init_b, gumbel_tau)
        self.requires_grad_(True)
        self.float()  # copies of an fp16 CLIP (on GPU) train in fp32

    def train(self, mode: bool = True) -> TCLGrounder:
        """Switch mode; batch norms of a copied ResNet stage keep CLIP's statistics (always eval)."""
        super().train(mode)
        for m in self.last_stage.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def embed(self, clip_model: nn.Module, penultimate: Tensor, freeze_stage: bool = False) -> Tensor:
        """Dense embeddings at the mask stride.

        Args:
            clip_model: the frozen CLIP the grounder was built from (gives the tower's kind).
            penultimate: (B, C', h', w') the frozen tower's penultimate features
                (:func:`~zegseg.modeling.clip.dense_features.dense_clip_features`).
            freeze_stage: run the copied last stage without gradients (TCL's decoder-only first phase).
        Returns:
            (B, D, H / out_stride, W / out_stride) unnormalised joint-space embeddings.
        """
        with torch.set_grad_enabled(torch.is_grad_enabled() and not freeze_stage):
            x = run_last_stage(clip_model, penultimate.float(), stage=self.last_stage)
        return self.proj(self.decoder(x))

    def forward(self, embeddings: Tensor, text: Tensor, sample: bool = False) -> Tuple[Tensor, Tensor]:
        """Masks of every text on every image.

        Args:
            embeddings: (B, D, h, w) from :meth:`embed`.
            text: (N, D) text embeddings.
            sample: Gumbel-sigmoid hard masks (training).
        Returns:
            ``(hard, soft)``, each (B, N, h, w).
        """
        sim = torch.einsum("bdhw,nd->bnhw", F.normalize(embeddings, dim=1), F.normalize(text, dim=-1))
        return self.sim2mask(sim, sample=sample)
