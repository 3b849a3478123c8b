"""zegseg's meta-architectures, registered in detectron2's META_ARCH_REGISTRY on import."""
from ..mask_classification import MaskClassificationSegmentor
from .base import OpenVocabSegmentor
from .cagnet import CaGNet
from .maskclip import MaskCLIP
from .pixel_level import PixelLevelZS
from .prompt_learning import PromptLearnerCLIP
from .tcl import TCL
from .two_stage import TwoStageCLIP
from .zegformer import ZegFormer
from .zs3net import ZS3Net

__all__ = [
    "CaGNet",
    "MaskCLIP",
    "MaskClassificationSegmentor",
    "OpenVocabSegmentor",
    "PixelLevelZS",
    "PromptLearnerCLIP",
    "TCL",
    "TwoStageCLIP",
    "ZS3Net",
    "ZegFormer",
]
