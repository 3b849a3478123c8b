"""Classification of embeddings (segments or pixels) against class-name text embeddings."""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["TextEmbeddingClassifier"]


class TextEmbeddingClassifier(nn.Module):
    """Cosine-similarity classifier whose class weights are (frozen) text embeddings.

    ``logits = cos(x, T_c) / temperature`` for every class c, plus, for segment embeddings, a last "no object"
    column ``<x_normalised, T_0> / temperature`` with a learnable T_0 (normalised or not, see ``normalize_no_object``).
    With ``pixel_level=True`` the input is a (B, D, H, W) feature map and the output (B, K, H, W), with no
    "no object" channel (the LSeg-like baseline).

    The text embeddings are a non-persistent buffer set with :meth:`set_text_embeddings` (or passed to
    :meth:`forward`), so changing the vocabulary needs no new module and checkpoints never hold them.
    """

    def __init__(
        self,
        *,
        embed_dim: int,
        temperature: float = 0.01,
        learn_temperature: bool = False,
        no_object: bool = True,
        normalize_no_object: bool = False,
        pixel_level: bool = False,
    ):
        """
        Args:
            embed_dim: D, the text-embedding width.
            temperature: τ; logits are cosines divided by τ (ZegFormer 0.01, the two-stage model's 100 · cos is
                τ = 0.01 too, a pixel-level LSeg-like model ~0.07).
            learn_temperature: make ``log(1 / τ)`` a trainable parameter (initialised from ``temperature``).
            no_object: learn a "no object" embedding, appended as the last logit column for segment inputs.
            normalize_no_object: L2-normalise the "no object" embedding before use (the two-stage model does;
                ZegFormer does not).
            pixel_level: classify (B, D, H, W) pixel embeddings instead of (..., D) segment embeddings; implies
                no "no object" embedding.
        """
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale, persistent=False)
        self.embed_dim = embed_dim
        self.normalize_no_object = normalize_no_object
        self.pixel_level = pixel_level
        if no_object and not pixel_level:
            bound = embed_dim**-0.5
            self.no_object_embedding = nn.Parameter(torch.empty(embed_dim).uniform_(-bound, bound))
        else:
            self.register_parameter("no_object_embedding", None)
        self.register_buffer("text_embeddings", torch.empty(0, embed_dim), persistent=False)

    @property
    def logit_scale(self) -> Tensor:
        """Scalar ``1 / τ``."""
        return self.log_logit_scale.exp()

    @property
    def num_classes(self) -> int:
        return self.text_embeddings.shape[0]

    def set_text_embeddings(self, text_embeddings: Tensor) -> None:
        """Replace the class embeddings.

        Args:
            text_embeddings: (K, D); normalised here, stored (without gradient) on this module's device.
        """
        if text_embeddings.ndim != 2 or text_embeddings.shape[1] != self.embed_dim:
            raise ValueError(f"text embeddings must be (K, {self.embed_dim}), got {tuple(text_embeddings.shape)}")
        self.text_embeddings = F.normalize(text_embeddings.detach().float(), dim=-1).to(self.log_logit_scale.device)

    def forward(self, embeddings: Tensor, text_embeddings: Optional[Tensor] = None) -> Tensor:
        """
        Args:
            embeddings: segment embeddings (B, Q, D) (any (..., D) works, e.g. (L, B, Q, D) for all decoder
                layers), or with ``pixel_level`` pixel embeddings (B, D, H, W); normalised here.
            text_embeddings: (K, D) class embeddings to use instead of the stored ones (normalised here).
        Returns:
            segments: (..., K + 1) logits, last column "no object" ((..., K) without ``no_object``);
            pixels: (B, K, H, W) logits.
            Always float32, computed with autocast off.
        """
        text = self.text_embeddings if text_embeddings is None else F.normalize(text_embeddings.float(), dim=-1)
        if text.shape[0] == 0:
            raise RuntimeError("TextEmbeddingClassifier has no text embeddings: call set_text_embeddings first")
        if self.pixel_level and embeddings.ndim != 4:
            raise ValueError(f"pixel-level input must be (B, D, H, W), got {tuple(embeddings.shape)}")
        # float32 even under autocast: cosines times 1 / τ = 100 in bfloat16 (8-bit mantissa) would be rounded to
        # steps of 0.25 above 32, so logits, softmax and the cross-entropy gradient would carry that noise.
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self._logits(embeddings.float(), text.to(embeddings.device))

    def _logits(self, embeddings: Tensor, text: Tensor) -> Tensor:
        """float32 logits of float32 ``embeddings`` against normalised ``text`` (K, D); shapes as :meth:`forward`."""
        scale = self.logit_scale
        if self.pixel_level:
            pixels = F.normalize(embeddings, dim=1)
            return scale * torch.einsum("bdhw,kd->bkhw", pixels, text)
        x = F.normalize(embeddings, dim=-1)
        logits = x @ text.T
        if self.no_object_embedding is not None:
            bg = self.no_object_embedding
            if self.normalize_no_object:
                bg = F.normalize(bg, dim=0)
            logits = torch.cat([logits, (x @ bg)[..., None]], dim=-1)
        return scale * logits

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_classes={self.num_classes}, "
            f"no_object={self.no_object_embedding is not None}, normalize_no_object={self.normalize_no_object}, "
            f"pixel_level={self.pixel_level}"
        )
