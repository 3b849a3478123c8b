"""TCL's training losses (Cha et al., CVPR 2023), for a batch of B images, each with its own caption.

With ``masks`` (B, B, h, w) the masks of every caption on every image (image b's own caption on the diagonal):

* **TCL_i** (image level): the frozen CLIP embeds each image multiplied by the hard mask of its own caption;
  symmetric InfoNCE of these embeddings against the caption embeddings.
* **TCL_f** (feature level): the grounder's dense embeddings of image b are averaged under the soft mask of
  caption n, giving ``e[b, n]``; symmetric InfoNCE on ``S[b, n] = cos(e[b, n], t_n)``, rows over captions and
  columns over images.
* **area priors**: ``|mean(soft own-caption masks) - 0.4|`` and ``|mean(soft other-caption masks) - 0|``.

The same losses take U texts with several per image (zegseg's ``MODEL.TCL.TEXT_UNITS phrases``: the distinct
phrases of the batch's captions, :mod:`~zegseg.modeling.dense_clip.caption_phrases`): a (B, U) ``positive`` matrix
says which texts belong to which image; TCL_i embeds image b under the hard mask of each of its texts; the
InfoNCE targets spread evenly over a row's (or column's) positives; "own" and "other" masks are the positive and
negative entries. With one caption per image (``positive`` the identity) this is the paper's loss exactly.
* **total variation**, ``mean |dx| + mean |dy|``, of the dense embeddings and of all soft masks.

Total (official weights): ``0.1 TCL_i + 0.1 TCL_f + 0.4 (area_pos + area_neg) + 1.0 (TV_emb + TV_mask)``. Each
InfoNCE has its own learnable temperature, initialised at 0.07, its inverse clamped to at most 100.
"""
from __future__ import annotations

import math
from typing import Dict, Optional

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["TCLCriterion", "area_loss", "masked_pool", "symmetric_info_nce", "total_variation"]


def symmetric_info_nce(logits: Tensor, positive: Optional[Tensor] = None) -> Tensor:
    """Mean of the row-wise and column-wise cross-entropies of a logit matrix.

    Args:
        logits: (R, C).
        positive: (R, C) bool, at least one ``True`` in every row and column; each row's (column's) target spreads
            evenly over its positives. ``None``: the diagonal of a square matrix (one positive each).
    Returns:
        a scalar.
    """
    if positive is None:
        if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
            raise ValueError(f"expected a square (B, B) logit matrix, got {tuple(logits.shape)}")
        positive = torch.eye(logits.shape[0], dtype=torch.bool, device=logits.device)
    if positive.shape != logits.shape or not (positive.any(0).all() and positive.any(1).all()):
        raise ValueError(f"positive must be {tuple(logits.shape)} with a True in every row and column")
    weights = positive.to(logits.dtype)
    rows = -(weights / weights.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    cols = -(weights / weights.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return 0.5 * (rows + cols)


def masked_pool(embeddings: Tensor, masks: Tensor, eps: float = 1e-6) -> Tensor:
    """Average of each image's embeddings under each of its masks.

    Args:
        embeddings: (B, D, h, w).
        masks: (B, N, h, w) soft or hard masks.
    Returns:
        (B, N, D): ``sum(m · e) / (sum(m) + eps)``.
    """
    weights = masks / (masks.sum(dim=(2, 3), keepdim=True) + eps)
    return torch.einsum("bdhw,bnhw->bnd", embeddings, weights)


def area_loss(masks: Tensor, prior: float) -> Tensor:
    """``|mean(masks) - prior|``: the masks' average area pulled towards ``prior``."""
    return (masks.mean() - prior).abs()


def total_variation(x: Tensor) -> Tensor:
    """Anisotropic total variation of (..., H, W) maps: mean |horizontal difference| + mean |vertical difference|."""
    return (x[..., :, 1:] - x[..., :, :-1]).abs().mean() + (x[..., 1:, :] - x[..., :-1, :]).abs().mean()


class TCLCriterion(nn.Module):
    """TCL's weighted losses; holds the two learnable InfoNCE temperatures."""

    def __init__(
        self,
        *,
        tcl_weight: float = 0.1,
        area_weight: float = 0.4,
        tv_weight: float = 1.0,
        pos_area_prior: float = 0.4,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
    ):
        """
        Args:
            tcl_weight: weight of TCL_i and of TCL_f.
            area_weight: weight of each area prior.
            tv_weight: weight of each total-variation term.
            pos_area_prior: target mean area of an image's own-caption mask.
            init_temperature: initial InfoNCE temperature (both losses).
            max_logit_scale: clamp of the inverse temperatures.
        """
        super().__init__()
        self.tcl_weight = tcl_weight
        self.area_weight = area_weight
        self.tv_weight = tv_weight
        self.pos_area_prior = pos_area_prior
        self.max_logit_scale = max_logit_scale
        init = math.log(1.0 / init_temperature)
        self.logit_scale_image = nn.Parameter(torch.tensor(init))
        self.logit_scale_feature = nn.Parameter(torch.tensor(init))

    def _scale(self, log_scale: Tensor) -> Tensor:
        return log_scale.exp().clamp(max=self.max_logit_scale)

    def forward(
        self,
        *,
        embeddings: Tensor,
        soft_masks: Tensor,
        text: Tensor,
        masked_image_embeddings: Tensor,
        positive: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """
        Args:
            embeddings: (B, D, h, w) the grounder's dense embeddings.
            soft_masks: (B, U, h, w) soft mask of text u on image b.
            text: (U, D) text embeddings (U = B captions, or the batch's phrases).
            masked_image_embeddings: (P, D) frozen CLIP embeddings of image b times the hard mask of text u, for the
                P pairs ``positive.nonzero()`` in that (row-major) order.
            positive: (B, U) bool, text u belongs to image b (``None``: the identity, one caption per image).
        Returns:
            weighted losses: ``loss_tcl_image``, ``loss_tcl_feature``, ``loss_area_pos``, ``loss_area_neg``,
            ``loss_tv_embed``, ``loss_tv_mask``. With no negative pair (one image), the negative area term is 0.
        """
        b, u = soft_masks.shape[:2]
        if positive is None:
            positive = torch.eye(b, dtype=torch.bool, device=soft_masks.device)
        pairs = positive.nonzero()
        if positive.shape != (b, u) or text.shape[0] != u or masked_image_embeddings.shape[0] != len(pairs):
            raise ValueError(
                f"TCL: inconsistent shapes: masks {tuple(soft_masks.shape)}, text {tuple(text.shape)}, positive "
                f"{tuple(positive.shape)} with {len(pairs)} pairs, masked images {tuple(masked_image_embeddings.shape)}"
            )
        text = F.normalize(text, dim=-1)
        image_logits = F.normalize(masked_image_embeddings, dim=-1) @ text.T  # (P, U)
        image_positive = F.one_hot(pairs[:, 1], u).bool()
        pooled = F.normalize(masked_pool(embeddings, soft_masks), dim=-1)  # (B, U, D)
        feature_logits = torch.einsum("bnd,nd->bn", pooled, text)
        positives = soft_masks[positive]  # (P, h, w)
        negatives = soft_masks[~positive]  # (B U - P, h, w)
        area_neg = area_loss(negatives, 0.0) if negatives.numel() else soft_masks.sum() * 0.0
        return {
            "loss_tcl_image": self.tcl_weight
            * symmetric_info_nce(self._scale(self.logit_scale_image) * image_logits, image_positive),
            "loss_tcl_feature": self.tcl_weight
            * symmetric_info_nce(self._scale(self.logit_scale_feature) * feature_logits, positive),
            "loss_area_pos": self.area_weight * area_loss(positives, self.pos_area_prior),
            "loss_area_neg": self.area_weight * area_neg,
            "loss_tv_embed": self.tv_weight * total_variation(embeddings),
            "loss_tv_mask": self.tv_weight * total_variation(soft_masks),
        }
