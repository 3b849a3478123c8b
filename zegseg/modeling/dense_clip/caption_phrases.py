"""Captions split into phrases, for TCL trained with ``MODEL.TCL.TEXT_UNITS phrases`` (a zegseg option).

TCL (the paper) grounds each whole caption. When a caption names every region of its image, as the toy world's do,
the own caption's mask is the whole image and teaches nothing about where each thing is. Like GroupViT's nouns
prompted from captions, this option grounds each phrase of a caption separately: the caption is cut at commas,
at "and", and at a few prepositions of place ("on", "in front of", "next to", ...); a leading framing phrase
("a photo of", "an image of", ...) and leading articles are dropped. It is a rule-based chunker for list-like
captions ("a photo of a red star and a blue circle on grass"), not a parser: free-form captions (COCO's) give
rougher phrases.

Only caption text is used: no class list, no label, no mask.
"""
from __future__ import annotations

import re
from typing import List, Sequence, Tuple

import torch
from torch import Tensor

__all__ = ["batch_phrases", "split_caption"]

_FRAMING = re.compile(r"^(?:(?:a|an|the)\s+)?(?:photo|picture|image|painting|drawing|rendering|close-up)\s+of(?:\s+|$)")
_SEPARATORS = re.compile(
    r"\s*,\s*|\s*;\s*|\s+(?:and|on|in front of|next to|beside|behind|near|under|above|over|with|along|at|in)\s+"
)
_ARTICLE = re.compile(r"^(?:a|an|the|some)\s+")


def split_caption(caption: str) -> List[str]:
    """The phrases of one caption, lower-case, without articles, in order, without repeats.

    ``"a photo of a green square, a blue star and a red square on tiled floor"`` gives
    ``["green square", "blue star", "red square", "tiled floor"]``. A caption with no separator is one phrase;
    one that gives no phrase at all (empty, or only a framing phrase) gives ``[]``.
    """
    text = " ".join(caption.lower().strip().rstrip(".!?").split())
    text = _FRAMING.sub("", text)
    phrases: List[str] = []
    for part in _SEPARATORS.split(" " + text + " "):
        phrase = _ARTICLE.sub("", part.strip(" .,;:!?\"'"))
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


def batch_phrases(captions: Sequence[str]) -> Tuple[List[str], Tensor]:
    """The distinct phrases of a batch of captions and which image each belongs to.

    Args:
        captions: B captions, one per image.
    Returns:
        ``(phrases, positive)``: the U distinct phrases (first-seen order) and a (B, U) bool matrix, ``True`` where
        phrase u is in image b's caption. A caption that gives no phrase counts as one phrase, itself.
    Raises:
        ValueError: an empty caption.
    """
    per_image = []
    for caption in captions:
        if not caption.strip():
            raise ValueError("TCL phrases: an empty caption has no phrase")
        per_image.append(split_caption(caption) or [caption.strip()])
    phrases = list(dict.fromkeys(p for image in per_image for p in image))
    index = {p: i for i, p in enumerate(phrases)}
    positive = torch.zeros(len(captions), len(phrases), dtype=torch.bool)
    for b, image in enumerate(per_image):
        positive[b, [index[p] for p in image]] = True
    return phrases, positive
