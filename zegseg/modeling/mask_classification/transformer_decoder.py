"""DETR-style transformer decoder: N learnable segment queries attend to one feature map.

Each of the L layers gives the queries' embeddings (after a shared final LayerNorm), so the caller can predict
masks and classes from every layer (deep supervision). With masked attention (a zegseg option after Mask2Former;
off in MaskFormer / ZegFormer) every layer after the first lets a query attend only to the pixels inside the mask
it predicted after the layer before.
"""
from __future__ import annotations

from typing import Callable, Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import CfgNode, configurable
from detectron2.layers import Conv2d
from torch import Tensor, nn
from torch.nn import functional as F

from .position_encoding import SinePositionEncoding

__all__ = ["TransformerDecoder", "TransformerDecoderLayer"]


class TransformerDecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the feature map, feed-forward; post- or pre-norm."""

    def __init__(self, *, d_model: int, nhead: int, dim_feedforward: int, dropout: float, pre_norm: bool):
        """
        Args:
            d_model: width of queries and memory.
            nhead: attention heads.
            dim_feedforward: hidden width of the feed-forward block.
            dropout: dropout on attention weights and residual branches.
            pre_norm: LayerNorm before each block (else after each residual sum, as in DETR).
        """
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.pre_norm = pre_norm

    def _self_block(self, x: Tensor, query_pos: Tensor) -> Tensor:
        q = x + query_pos
        return self.dropout1(self.self_attn(q, q, x, need_weights=False)[0])

    def _cross_block(
        self,
        x: Tensor,
        memory: Tensor,
        pos: Tensor,
        key_padding_mask: Tensor | None,
        query_pos: Tensor,
        attn_mask: Tensor | None,
    ) -> Tensor:
        out = self.cross_attn(
            x + query_pos,
            memory + pos,
            memory,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            need_weights=False,
        )
        return self.dropout2(out[0])

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x)))))

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        *,
        pos: Tensor,
        query_pos: Tensor,
        memory_key_padding_mask: Tensor | None = None,
        memory_mask: Tensor | None = None,
    ) -> Tensor:
        """
        Args:
            tgt: (B, Q, D) query states.
            memory: (B, HW, D) flattened feature map.
            pos: (B, HW, D) positional encoding of ``memory``.
            query_pos: (B, Q, D) learnable query embeddings (positional part of the queries).
            memory_key_padding_mask: optional (B, HW) bool, True at padded pixels.
            memory_mask: optional (B * nheads, Q, HW) bool, True where a query may not attend (masked attention).
        Returns:
            (B, Q, D) updated query states.
        """
        if self.pre_norm:
            tgt = tgt + self._self_block(self.norm1(tgt), query_pos)
            tgt = tgt + self._cross_block(
                self.norm2(tgt), memory, pos, memory_key_padding_mask, query_pos, memory_mask
            )
            return tgt + self._ff_block(self.norm3(tgt))
        tgt = self.norm1(tgt + self._self_block(tgt, query_pos))
        tgt = self.norm2(tgt + self._cross_block(tgt, memory, pos, memory_key_padding_mask, query_pos, memory_mask))
        return self.norm3(tgt + self._ff_block(tgt))


class TransformerDecoder(nn.Module):
    """Learnable queries decoded against one feature map (MaskFormer's transformer predictor without heads).

    The feature map is projected to ``hidden_dim`` by a 1x1 conv when its channels differ (or always, with
    ``enforce_input_proj``), given a sine positional encoding, and flattened; the queries start from zeros with
    learnable positional embeddings (``query_embed``) and pass L decoder layers. Every layer's output goes
    through the final LayerNorm and is returned, so the last entry is the final prediction and the others are
    auxiliary outputs.
    """

    @configurable
    def __init__(
        self,
        *,
        in_channels: int,
        hidden_dim: int,
        num_queries: int,
        nheads: int,
        dim_feedforward: int,
        dec_layers: int,
        dropout: float = 0.1,
        pre_norm: bool = False,
        enforce_input_proj: bool = False,
        masked_attention: bool = False,
    ):
        """
        Args:
            in_channels: channels of the input feature map.
            hidden_dim: transformer width D.
            num_queries: number of queries Q.
            nheads: attention heads.
            dim_feedforward: hidden width of the feed-forward blocks.
            dec_layers: number of decoder layers L (>= 1).
            dropout: dropout inside the layers.
            pre_norm: pre-norm layers instead of post-norm.
            enforce_input_proj: use a 1x1 input projection even when ``in_channels == hidden_dim``.
            masked_attention: layers 2..L attend only inside the previous layer's predicted masks (needs the
                ``mask_head`` argument of :meth:`forward`).
        """
        super().__init__()
        if dec_layers < 1:
            raise ValueError(f"the transformer decoder needs at least one layer, got dec_layers={dec_layers}")
        if hidden_dim % 2:
            raise ValueError(f"hidden_dim must be even for the sine positional encoding, got {hidden_dim}")
        self.num_queries = num_queries
        self.hidden_dim = hidden_dim
        self.nheads = nheads
        self.masked_attention = masked_attention
        if in_channels != hidden_dim or enforce_input_proj:
            self.input_proj = Conv2d(in_channels, hidden_dim, kernel_size=1)
            weight_init.c2_xavier_fill(self.input_proj)
        else:
            self.input_proj = nn.Identity()
        self.pe_layer = SinePositionEncoding(hidden_dim // 2, normalize=True)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.layers = nn.ModuleList(
            TransformerDecoderLayer(
                d_model=hidden_dim, nhead=nheads, dim_feedforward=dim_feedforward, dropout=dropout, pre_norm=pre_norm
            )
            for _ in range(dec_layers)
        )
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.norm = nn.LayerNorm(hidden_dim)

    @classmethod
    def from_config(cls, cfg: CfgNode, in_channels: int):
        dec = cfg.MODEL.TRANSFORMER_DECODER
        return {
            "in_channels": in_channels,
            "hidden_dim": dec.HIDDEN_DIM,
            "num_queries": dec.NUM_QUERIES,
            "nheads": dec.NHEADS,
            "dim_feedforward": dec.DIM_FEEDFORWARD,
            "dec_layers": dec.DEC_LAYERS,
            "dropout": dec.DROPOUT,
            "pre_norm": dec.PRE_NORM,
            "enforce_input_proj": dec.ENFORCE_INPUT_PROJ,
            "masked_attention": dec.MASKED_ATTENTION,
        }

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def forward(
        self,
        x: Tensor,
        padding_mask: Tensor | None = None,
        mask_head: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> Tensor:
        """
        Args:
            x: (B, C_in, H, W) feature map (e.g. the backbone's res5).
            padding_mask: optional (B, H, W) bool, True at padded pixels (excluded from cross-attention).
            mask_head: with masked attention, maps (B, Q, D) query embeddings (final LayerNorm applied) to
                (B, Q, H, W) mask logits at ``x``'s resolution; a query attends where ``sigmoid >= 0.5`` (everywhere
                when its mask is empty).
        Returns:
            (L, B, Q, D) query embeddings after each decoder layer (final LayerNorm applied); ``[-1]`` is the
            last layer's.
        Raises:
            ValueError: masked attention without ``mask_head``.
        """
        if self.masked_attention and mask_head is None:
            raise ValueError("masked attention needs the mask_head that predicts masks from query embeddings")
        b = x.shape[0]
        pos = self.pe_layer(x, padding_mask).flatten(2).transpose(1, 2)  # (B, HW, D)
        memory = self.input_proj(x).flatten(2).transpose(1, 2)  # (B, HW, D)
        key_padding_mask = padding_mask.flatten(1) if padding_mask is not None else None
        query_pos = self.query_embed.weight.unsqueeze(0).expand(b, -1, -1)  # (B, Q, D)
        tgt = torch.zeros_like(query_pos)
        outputs = []
        attn_mask = None
        for i, layer in enumerate(self.layers):
            tgt = layer(
                tgt,
                memory,
                pos=pos,
                query_pos=query_pos,
                memory_key_padding_mask=key_padding_mask,
                memory_mask=attn_mask,
            )
            outputs.append(self.norm(tgt))
            if self.masked_attention and i + 1 < len(self.layers):
                attn_mask = self._attention_mask(mask_head(outputs[-1]))
        return torch.stack(outputs)

    def _attention_mask(self, mask_logits: Tensor) -> Tensor:
        """(B, Q, H, W) mask logits → (B * nheads, Q, HW) bool, True outside the mask (rows of empty masks all
        False, so that such a query still attends everywhere)."""
        blocked = (mask_logits.detach() < 0).flatten(2)  # sigmoid < 0.5
        blocked = blocked & ~blocked.all(dim=-1, keepdim=True)
        return blocked.repeat_interleave(self.nheads, dim=0)
