"""The mask-classification family (ZegFormer, the two-stage CLIP model): the shared segmentor network, its
transformer decoder, the Hungarian matcher and set criterion, and fast mode's query selection."""
from .criterion import SetCriterion
from .matcher import HungarianMatcher
from .query_selection import QuerySelector, build_query_selector
from .segmentor import MaskClassificationSegmentor
from .transformer_decoder import TransformerDecoder

__all__ = [
    "HungarianMatcher",
    "MaskClassificationSegmentor",
    "QuerySelector",
    "SetCriterion",
    "TransformerDecoder",
    "build_query_selector",
]
