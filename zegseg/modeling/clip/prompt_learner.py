"""Learned prompts (CoOp): learnable context vectors placed before the class-name tokens.

The prompt for a name is ``[SOT] ctx_1 … ctx_n <name tokens> . [EOT]``: the n context vectors replace the token
embeddings of n placeholder words and run, with the name's tokens, through CLIP's frozen text tower (positional
embedding, transformer, final layer norm, pooling at the EOT token, text projection). Only the context vectors
are trainable.

The frozen CLIP is passed to the methods rather than stored, so it never enters this module's state dict.
"""

from __future__ import annotations

import hashlib
import logging
from functools import partial
from pathlib import Path
from typing import List, Sequence, Union

import torch
from clip import tokenize
from detectron2.config import configurable
from torch import Tensor, nn

from .text_encoder import TextEmbedder, embed_class_names

__all__ = ["PromptLearner", "load_prompt_learner"]

logger = logging.getLogger(__name__)

_PLACEHOLDER = "X"


class PromptLearner(nn.Module):
    """CoOp context vectors shared by all classes."""

    templates = ("{}.",)
    """How a class name (or synonym) follows the learned context: the name and a full stop."""

    @configurable
    def __init__(self, *, clip_model: nn.Module, n_ctx: int = 16, init_std: float = 0.02):
        """
        Args:
            clip_model: the frozen CLIP the prompts are for (sets the width and the context length; not stored).
            n_ctx: number of learnable context vectors.
            init_std: standard deviation of their normal initialisation.
        """
        super().__init__()
        context_length = int(clip_model.context_length)
        if not 1 <= n_ctx <= context_length - 3:
            raise ValueError(
                f"n_ctx={n_ctx} context vectors do not fit CLIP's context of {context_length} tokens "
                f"(start, at least one name token and end need 3): use 1..{context_length - 3}"
            )
        width = int(clip_model.token_embedding.weight.shape[1])
        self.n_ctx = n_ctx
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * init_std)

    @classmethod
    def from_config(cls, cfg, clip_model: nn.Module):
        return {"clip_model": clip_model, "n_ctx": cfg.MODEL.CLIP.PROMPT_LEARNER.N_CTX}

    def encode_prompts(self, clip_model: nn.Module, texts: Sequence[str]) -> Tensor:
        """Run "<learned context> text" through CLIP's text tower; differentiable w.r.t. :attr:`ctx`.

        Args:
            clip_model: the frozen CLIP.
            texts: N strings placed after the context (e.g. "cat.").
        Returns:
            (N, D) unnormalised text features in the CLIP model's dtype.
        """
        device, dtype = clip_model.text_projection.device, clip_model.text_projection.dtype
        prefix = " ".join([_PLACEHOLDER] * self.n_ctx)
        tokens = tokenize([f"{prefix} {t}" for t in texts], context_length=clip_model.context_length, truncate=True)
        tokens = tokens.to(device)
        with torch.no_grad():
            words = clip_model.token_embedding(tokens).to(dtype)  # (N, L, W)
        ctx = self.ctx.to(device=device, dtype=dtype).unsqueeze(0).expand(len(texts), -1, -1)
        x = torch.cat([words[:, :1], ctx, words[:, 1 + self.n_ctx :]], dim=1)
        x = x + clip_model.positional_embedding.to(dtype)
        x = clip_model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        x = clip_model.ln_final(x).to(dtype)
        eot = tokens.argmax(dim=-1)  # the end token has the largest id
        return x[torch.arange(x.shape[0], device=device), eot] @ clip_model.text_projection

    def forward(self, clip_model: nn.Module, class_names: Sequence[str]) -> Tensor:
        """
        Args:
            clip_model: the frozen CLIP.
            class_names: K names, synonyms joined by ", " (averaged as in :func:`embed_class_names`).
        Returns:
            (K, D) float32 L2-normalised embeddings, with gradients into :attr:`ctx`.
        """
        return embed_class_names(partial(self.encode_prompts, clip_model), class_names, self.templates)

    def fingerprint(self) -> str:
        """Short SHA-256 of the context vectors: tags cached embeddings of these prompts."""
        data = self.ctx.detach().float().cpu().contiguous().numpy().tobytes()
        return hashlib.sha256(data).hexdigest()[:16]

    def text_embedder(self, clip_model: nn.Module, chunk_size: int = 256, **kwargs) -> TextEmbedder:
        """A cached :class:`TextEmbedder` over the current context vectors, for inference.

        The embedder's cache is keyed by :meth:`fingerprint`, so call this again after the context changes.
        ``kwargs`` go to :class:`TextEmbedder` (``cache_dir``, ``disk_cache``, ``fingerprint``).
        """

        @torch.no_grad()
        def encode(texts: List[str]) -> Tensor:
            return torch.cat(
                [
                    self.encode_prompts(clip_model, texts[i : i + chunk_size]).float()
                    for i in range(0, len(texts), chunk_size)
                ]
            )

        return TextEmbedder(
            clip_model,
            self.templates,
            encode_fn=encode,
            encoder_tag=f"coop-{self.n_ctx}-{self.fingerprint()}",
            reserved_tokens=self.n_ctx,
            **kwargs,
        )

    def extra_repr(self) -> str:
        return f"n_ctx={self.n_ctx}, width={self.ctx.shape[1]}"


def load_prompt_learner(path: Union[str, Path], clip_model: nn.Module) -> PromptLearner:
    """Load learned context vectors.

    Args:
        path: a file holding ``{"ctx": (n_ctx, W)}`` (a :class:`PromptLearner` state dict), or a detectron2
            checkpoint ``{"model": {...}}`` with exactly one key ending in ``"ctx"`` of a prompt learner.
        clip_model: the CLIP the prompts were trained with.
    Raises:
        FileNotFoundError / ValueError: naming the file when it is missing or holds no (single) context tensor.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"learned-prompt checkpoint {str(path)!r} does not exist")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    keys = [k for k in state if k == "ctx" or k.endswith("prompt_learner.ctx")] if isinstance(state, dict) else []
    if len(keys) != 1:
        raise ValueError(
            f"{path} holds {len(keys)} learned-prompt tensors ('ctx' or '*prompt_learner.ctx'); expected 1"
        )
    ctx = state[keys[0]]
    if ctx.ndim != 2 or ctx.shape[1] != clip_model.token_embedding.weight.shape[1]:
        raise ValueError(
            f"{path}: context of shape {tuple(ctx.shape)} does not fit this CLIP (width "
            f"{clip_model.token_embedding.weight.shape[1]})"
        )
    learner = PromptLearner(clip_model=clip_model, n_ctx=ctx.shape[0])
    learner.load_state_dict({"ctx": ctx})
    logger.info("Loaded %d learned context vectors from %s", ctx.shape[0], path)
    return learner.to(clip_model.text_projection.device)
