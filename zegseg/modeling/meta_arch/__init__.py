"""zegseg's meta-architectures, registered in detectron2's META_ARCH_REGISTRY on import."""
from .base import OpenVocabSegmentor
from .zegformer import ZegFormer

__all__ = ["OpenVocabSegmentor", "ZegFormer"]
