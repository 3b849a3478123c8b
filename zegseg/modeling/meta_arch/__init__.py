"""zegseg's meta-architectures, registered in detectron2's META_ARCH_REGISTRY on import."""
from .base import OpenVocabSegmentor
from .pixel_level import PixelLevelZS
from .zegformer import ZegFormer

__all__ = ["OpenVocabSegmentor", "PixelLevelZS", "ZegFormer"]
