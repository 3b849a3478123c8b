from .clip import load_clip
from .meta_arch import OpenVocabSegmentor, PixelLevelZS, PromptLearnerCLIP, TwoStageCLIP, ZegFormer
from .pixel_decoder import PIXEL_DECODER_REGISTRY, build_pixel_decoder

__all__ = [
    "PIXEL_DECODER_REGISTRY",
    "OpenVocabSegmentor",
    "PixelLevelZS",
    "PromptLearnerCLIP",
    "TwoStageCLIP",
    "ZegFormer",
    "build_pixel_decoder",
    "load_clip",
]
