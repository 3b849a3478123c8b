"""The dense-CLIP family (MaskCLIP, TCL): classifiers and decoders on dense CLIP features
(:mod:`zegseg.modeling.clip.dense_features`)."""
from .maskclip_head import MaskCLIPHead, cosine_logits, key_smoothing, prompt_denoising

__all__ = ["MaskCLIPHead", "cosine_logits", "key_smoothing", "prompt_denoising"]
