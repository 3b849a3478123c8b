"""The feature-generation family (ZS3Net, CaGNet): the DeepLab feature head, generators, CaGNet's contextual
module and discriminator/classifier, random label maps, the semantic embeddings and the losses."""
from .contextual import ContextualModule, ContextualOutput
from .discriminator import DiscriminatorClassifier
from .embeddings import load_class_embeddings, read_embedding_file
from .generators import GMMNGenerator, PixelFeatureGenerator
from .head import build_deeplab_feature_head
from .losses import adversarial_l1, classwise_mmd, kl_divergence, mmd
from .sampling import class_prior, sample_label_maps, sample_pixels_per_class
from .segmentor import (
    GenerativeSegmentor,
    current_iteration,
    frozen,
    generation_vocabulary,
    with_frozen_parameters,
)

__all__ = [
    "ContextualModule",
    "ContextualOutput",
    "DiscriminatorClassifier",
    "GMMNGenerator",
    "GenerativeSegmentor",
    "PixelFeatureGenerator",
    "adversarial_l1",
    "build_deeplab_feature_head",
    "class_prior",
    "classwise_mmd",
    "current_iteration",
    "frozen",
    "generation_vocabulary",
    "kl_divergence",
    "load_class_embeddings",
    "mmd",
    "read_embedding_file",
    "sample_label_maps",
    "sample_pixels_per_class",
    "with_frozen_parameters",
]
