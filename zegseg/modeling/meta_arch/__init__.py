"""zegseg's meta-architectures, registered in detectron2's META_ARCH_REGISTRY on import."""
from ..mask_classification import MaskClassificationSegmentor
from .base import OpenVocabSegmentor
from .pixel_level import PixelLevelZS
from .prompt_learning import PromptLearnerCLIP
from .two_stage import TwoStageCLIP
from .zegformer import ZegFormer

__all__ = [
    "MaskClassificationSegmentor",
    "OpenVocabSegmentor",
    "PixelLevelZS",
    "PromptLearnerCLIP",
    "TwoStageCLIP",
    "ZegFormer",
]
