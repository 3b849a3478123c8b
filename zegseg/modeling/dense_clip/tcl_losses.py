"""TCL's training losses (Cha et al., CVPR 2023), for a batch of B images, each with its own caption.

With ``masks`` (B, B, h, w) the masks of every caption on every image (image b's own caption on the diagonal):

* **TCL_i** (image level): the frozen CLIP embeds each image multiplied by the hard mask of its own caption;
  symmetric InfoNCE of these embeddings against the caption embeddings.
* **TCL_f** (feature level): the grounder's dense embeddings of image b are averaged under the soft mask of
  caption n, giving ``e[b, n]``; symmetric InfoNCE on ``S[b, n] = cos(e[b, n], t_n)``, rows over captions and
  columns over images.
* **area priors**: ``|mean(soft own-caption masks) - 0.4|`` and ``|mean(soft other-caption masks) - 0|``.
* **total variation**, ``mean |dx| + mean |dy|``, of the dense embeddings and of all soft masks.

Total (official weights): ``0.1 TCL_i + 0.1 TCL_f + 0.4 (area_pos + area_neg) + 1.0 (TV_emb + TV_mask)``. Each
InfoNCE has its own learnable temperature, initialised at 0.07, its inverse clamped to at most 100.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["TCLCriterion", "area_loss", "masked_pool", "symmetric_info_nce", "total_variation"]


def symmetric_info_nce(logits: Tensor) -> Tensor:
    """Mean of the row-wise and column-wise cross-entropies of a (B, B) logit matrix, targets on the diagonal."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"expected a square (B, B) logit matrix, got {tuple(logits.shape)}")
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


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
    ) -> Dict[str, Tensor]:
        """
        Args:
            embeddings: (B, D, h, w) the grounder's dense embeddings.
            soft_masks: (B, B, h, w) soft mask of caption n on image b.
            text: (B, D) caption embeddings.
            masked_image_embeddings: (B, D) frozen CLIP embeddings of each image times its own caption's hard mask.
        Returns:
            weighted losses: ``loss_tcl_image``, ``loss_tcl_feature``, ``loss_area_pos``, ``loss_area_neg``,
            ``loss_tv_embed``, ``loss_tv_mask``. With one image, the negative area term is 0.
        """
        b = soft_masks.shape[0]
        if soft_masks.shape[1] != b or text.shape[0] != b or masked_image_embeddings.shape[0] != b:
            raise ValueError(
                f"TCL needs one caption per image: masks {tuple(soft_masks.shape)}, text {tuple(text.shape)}, "
                f"masked images {tuple(masked_image_embeddings.shape)}"
            )
        text = F.normalize(text, dim=-1)
        image_logits = F.normalize(masked_image_embeddings, dim=-1) @ text.T
        pooled = F.normalize(masked_pool(embeddings, soft_masks), dim=-1)  # (B, B, D)
        feature_logits = torch.einsum("bnd,nd->bn", pooled, text)
        diagonal = torch.eye(b, dtype=torch.bool, device=soft_masks.device)
        positives = soft_masks[diagonal]  # (B, h, w)
        negatives = soft_masks[~diagonal]  # (B * (B - 1), h, w)
        area_neg = area_loss(negatives, 0.0) if negatives.numel() else soft_masks.sum() * 0.0
        return {
            "loss_tcl_image": self.tcl_weight
            * symmetric_info_nce(self._scale(self.logit_scale_image) * image_logits),
            "loss_tcl_feature": self.tcl_weight
            * symmetric_info_nce(self._scale(self.logit_scale_feature) * feature_logits),
            "loss_area_pos": self.area_weight * area_loss(positives, self.pos_area_prior),
            "loss_area_neg": self.area_weight * area_neg,
            "loss_tv_embed": self.tv_weight * total_variation(embeddings),
            "loss_tv_mask": self.tv_weight * total_variation(soft_masks),
        }
