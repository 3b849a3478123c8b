"""Class names → CLIP text embeddings, with prompt ensembles, synonyms and a two-level cache.

A class name may list synonyms joined by ", " (``"tv, monitor"``). Every synonym is put into every template;
each prompt embedding is L2-normalised, all prompts of a class (synonyms × templates) are averaged, and the mean is
normalised again. All prompts of a vocabulary go through the text encoder together, in chunks.

The encoder is pluggable: :class:`TextEmbedder` and :func:`embed_class_names` take an ``encode_fn`` mapping a
list of prompt strings to (N, D) features. The default, :func:`clip_text_encoder`, tokenises and runs CLIP's text
tower; :class:`zegseg.modeling.clip.prompt_learner.PromptLearner` supplies one with learned context tokens.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple, Union

import torch
from clip import tokenize
from clip.simple_tokenizer import SimpleTokenizer
from torch import Tensor, nn
from torch.nn import functional as F

from .loader import checkpoint_fingerprint

__all__ = [
    "EncodeFn",
    "TextEmbedder",
    "clip_text_encoder",
    "default_cache_dir",
    "embed_class_names",
    "split_synonyms",
    "truncated_classes",
]

logger = logging.getLogger(__name__)

EncodeFn = Callable[[List[str]], Tensor]
"""Maps N prompt strings to (N, D) text features (any norm) on one device."""

_CACHE_FORMAT = 1  # bump when the stored embeddings change meaning


def default_cache_dir() -> Path:
    """On-disk text-embedding cache: ``$ZEGSEG_CACHE_DIR/text_embeddings`` or ``~/.cache/zegseg/text_embeddings``."""
    root = os.environ.get("ZEGSEG_CACHE_DIR", Path.home() / ".cache" / "zegseg")
    return Path(root).expanduser() / "text_embeddings"


def split_synonyms(name: str) -> List[str]:
    """``"tv, monitor"`` → ``["tv", "monitor"]``; a name without ", " is its own single synonym."""
    parts = [p.strip() for p in name.split(", ")]
    parts = [p for p in parts if p]
    if not parts:
        raise ValueError(f"class name {name!r} has no text to embed")
    return parts


@cache
def _bpe() -> SimpleTokenizer:
    return SimpleTokenizer()


def truncated_classes(
    class_names: Sequence[str], templates: Sequence[str], context_length: int, reserved_tokens: int = 0
) -> Tuple[Dict[str, Tuple[str, str]], Dict[str, FrozenSet[Tuple[int, ...]]]]:
    """Which class names CLIP cuts off, as ``clip.tokenize(..., truncate=True)`` does, and what it reads of each.

    Args:
        class_names: K names, synonyms joined by ", ".
        templates: prompt templates, each with one ``{}``.
        context_length: CLIP's context (77 for OpenAI's models), start and end tokens included.
        reserved_tokens: context positions taken before the prompt (e.g. learned context vectors).
    Returns:
        ``{name: (template, text CLIP reads of that prompt)}`` for every name (or synonym) that does not fit in a
        prompt (the first such template; a cut after the name is not reported), and ``{name: read}``: the token
        sequences CLIP reads of all prompts of each name (two names with the same ``read`` get one embedding).
    """
    limit = max(context_length - 2 - reserved_tokens, 0)  # BPE tokens between the start and end tokens
    cut: Dict[str, Tuple[str, str]] = {}
    read: Dict[str, FrozenSet[Tuple[int, ...]]] = {}
    for name in class_names:
        prompts = []
        for synonym in split_synonyms(name):
            for template in templates:
                ids = _bpe().encode(template.format(synonym))
                prompts.append(tuple(ids[:limit]))
                name_end = len(_bpe().encode(template[: template.index("{}")] + synonym))  # tokens up to its end
                if name_end > limit and name not in cut:
                    cut[name] = (template, _bpe().decode(ids[:limit]).strip())
        read[name] = frozenset(prompts)
    return cut, read


def clip_text_encoder(clip_model: nn.Module, chunk_size: int = 256) -> EncodeFn:
    """An :data:`EncodeFn` running CLIP's text tower without gradients.

    Args:
        clip_model: an OpenAI-format ``clip.model.CLIP``.
        chunk_size: prompts per forward pass (bounds memory).
    Returns:
        a function ``texts -> (N, D)`` float32 unnormalised features on the model's device.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    @torch.no_grad()
    def encode(texts: List[str]) -> Tensor:
        device = clip_model.text_projection.device
        tokens = tokenize(list(texts), context_length=clip_model.context_length, truncate=True)
        feats = [clip_model.encode_text(chunk.to(device)).float() for chunk in tokens.split(chunk_size)]
        return torch.cat(feats)

    return encode


def embed_class_names(encode_fn: EncodeFn, class_names: Sequence[str], templates: Sequence[str]) -> Tensor:
    """Embed class names through prompt templates; differentiable when ``encode_fn`` is.

    Args:
        encode_fn: prompt strings → (N, D) features.
        class_names: K names, synonyms joined by ", ".
        templates: T templates, each with one ``{}``.
    Returns:
        (K, D) float32, L2-normalised: for each class, the normalised mean of its S_k × T normalised prompt
        embeddings (S_k synonyms).
    """
    if not templates:
        raise ValueError("no prompt templates given")
    synonyms = [split_synonyms(name) for name in class_names]
    flat = [s for syns in synonyms for s in syns]
    texts = [t.format(s) for s in flat for t in templates]
    feats = F.normalize(encode_fn(texts).float(), dim=-1)  # (S * T, D)
    per_synonym = feats.view(len(flat), len(templates), -1).sum(dim=1)  # (S, D)
    owner = torch.repeat_interleave(
        torch.arange(len(synonyms), device=feats.device),
        torch.tensor([len(s) for s in synonyms], device=feats.device),
    )
    per_class = feats.new_zeros(len(synonyms), feats.shape[-1]).index_add(0, owner, per_synonym)
    return F.normalize(per_class, dim=-1)


class TextEmbedder:
    """Cached map from class names to frozen (K, D) text embeddings.

    Call it with a list of names. Embeddings are computed once: names already embedded come from an in-memory
    dict; a vocabulary embedded in an earlier run comes from a ``.pt`` file under ``cache_dir`` whose name is the
    SHA-256 of (checkpoint fingerprint, encoder tag, text tower dtype, templates, names). Files are written atomically.

    Not an ``nn.Module``: it holds no trainable state, so a model may keep it as a plain attribute.
    """

    def __init__(
        self,
        clip_model: nn.Module,
        templates: Sequence[str],
        *,
        cache_dir: Optional[Union[str, Path]] = None,
        disk_cache: bool = True,
        fingerprint: Optional[str] = None,
        chunk_size: int = 256,
        encode_fn: Optional[EncodeFn] = None,
        encoder_tag: str = "",
        reserved_tokens: int = 0,
    ):
        """
        Args:
            clip_model: the frozen CLIP whose text tower embeds the prompts; fixes D and the output device.
            templates: prompt templates (see :func:`zegseg.modeling.clip.prompts.get_templates`).
            cache_dir: folder of the on-disk cache; ``None`` → :func:`default_cache_dir`.
            disk_cache: whether to read and write the on-disk cache at all.
            fingerprint: identifies the CLIP weights in cache keys; ``None`` → the SHA of
                ``clip_model.checkpoint_path`` (set by ``load_clip``). Without either, only the memory cache is used.
            chunk_size: prompts per text-encoder pass for the default encoder.
            encode_fn: replaces the CLIP text encoder (e.g. learned prompts); must be deterministic.
            encoder_tag: identifies ``encode_fn``'s state (e.g. a hash of learned prompts) in cache keys.
            reserved_tokens: CLIP context positions ``encode_fn`` puts before each prompt (learned context
                vectors); with CLIP's ``context_length``, decides which names are too long (they get a warning).
        """
        if not templates:
            raise ValueError("TextEmbedder needs at least one prompt template")
        self.templates: List[str] = list(templates)
        self.embed_dim: int = int(clip_model.text_projection.shape[1])
        self.encode_fn: EncodeFn = encode_fn or clip_text_encoder(clip_model, chunk_size)
        self.encoder_tag = encoder_tag
        self.reserved_tokens = int(reserved_tokens)
        self._clip_model = clip_model
        if fingerprint is None and getattr(clip_model, "checkpoint_path", None):
            fingerprint = checkpoint_fingerprint(clip_model.checkpoint_path)
        self.fingerprint = fingerprint
        self.cache_dir: Optional[Path] = None
        if disk_cache and fingerprint is not None:
            self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
        elif disk_cache:
            logger.info(
                "CLIP model has no checkpoint_path and no fingerprint was given: text embeddings cached in memory only"
            )
        self._memory: Dict[str, Tensor] = {}

    @property
    def device(self) -> torch.device:
        return self._clip_model.text_projection.device

    def cache_key(self, class_names: Sequence[str]) -> str:
        """Hex SHA-256 naming the disk-cache file of this vocabulary."""
        dtype = str(self._clip_model.text_projection.dtype)  # fp16 and fp32 text towers give different embeddings
        payload = json.dumps(
            [_CACHE_FORMAT, self.fingerprint, self.encoder_tag, dtype, self.templates, list(class_names)],
            ensure_ascii=False,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def __call__(self, class_names: Sequence[str]) -> Tensor:
        """
        Args:
            class_names: K names, synonyms joined by ", ".
        Returns:
            (K, D) float32 L2-normalised embeddings on the CLIP model's device (no gradient).
        """
        names = [str(n) for n in class_names]
        if not names:
            return torch.empty(0, self.embed_dim, device=self.device)
        missing = list(dict.fromkeys(n for n in names if n not in self._memory))
        if missing:
            self._warn_truncated(names, missing)
            loaded = self._load(names)
            if loaded is None:
                self._store_in_memory(missing, self._encode(missing))
                self._save(names)
            else:
                self._store_in_memory(names, loaded.to(self.device))
        return torch.stack([self._memory[n] for n in names]).to(self.device)

    def _warn_truncated(self, names: List[str], new: List[str]) -> None:
        """Warn about each new name CLIP cuts off, and about names it cuts to the same text as another."""
        context_length = getattr(self._clip_model, "context_length", None)
        if context_length is None:
            return
        cut, read = truncated_classes(names, self.templates, int(context_length), self.reserved_tokens)
        new_set = set(new)
        for name in new:
            if name in cut:
                template, text = cut[name]
                logger.warning(
                    "class name %r is too long for CLIP's %d-token context: of the prompt %r it reads only %r; "
                    "the rest of the name is ignored (shorten it)",
                    name, int(context_length), template, text,
                )
        owner: Dict[FrozenSet[Tuple[int, ...]], str] = {}
        for name in names:
            other = owner.setdefault(read[name], name)
            if other != name and (name in cut or other in cut) and (name in new_set or other in new_set):
                logger.warning(
                    "class names %r and %r are cut to the same text by CLIP's %d-token context: they get one "
                    "embedding and %r can never be predicted; make them differ near the start",
                    other, name, int(context_length), name,
                )

    @torch.no_grad()
    def _encode(self, names: List[str]) -> Tensor:
        logger.info("Embedding %d class names with %d prompt templates", len(names), len(self.templates))
        return embed_class_names(self.encode_fn, names, self.templates).to(self.device)

    def _store_in_memory(self, names: Sequence[str], embeddings: Tensor) -> None:
        self._memory.update(zip(names, embeddings.detach().float()))

    def _path(self, names: Sequence[str]) -> Optional[Path]:
        return None if self.cache_dir is None else self.cache_dir / f"{self.cache_key(names)}.pt"

    def _load(self, names: List[str]) -> Optional[Tensor]:
        path = self._path(names)
        if path is None or not path.is_file():
            return None
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            emb = data["embeddings"]
            ok = (
                data["names"] == names
                and data["templates"] == self.templates
                and emb.shape == (len(names), self.embed_dim)
            )
        except Exception as e:  # a truncated or foreign file: recompute and overwrite it
            logger.warning("Ignoring unreadable text-embedding cache %s (%s)", path, e)
            return None
        if not ok:
            logger.warning("Ignoring text-embedding cache %s: it holds another vocabulary", path)
            return None
        logger.info("Loaded %d text embeddings from %s", len(names), path)
        return emb.float()

    def _save(self, names: List[str]) -> None:
        path = self._path(names)
        if path is None:
            return
        data = {
            "names": names,
            "templates": self.templates,
            "fingerprint": self.fingerprint,
            "encoder_tag": self.encoder_tag,
            "embeddings": torch.stack([self._memory[n] for n in names]).cpu(),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    torch.save(data, f)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except OSError as e:
            logger.warning("Could not write the text-embedding cache %s (%s); set MODEL.CLIP.EMBED_CACHE_DIR", path, e)
