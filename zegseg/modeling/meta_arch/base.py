"""What every zegseg meta-architecture shares: input normalisation, a frozen CLIP, and a vocabulary of class
names that can be changed at run time."""
from __future__ import annotations

import logging
from typing import Callable, ClassVar, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_backbone
from detectron2.structures import ImageList
from torch import Tensor, nn
from torch.nn import functional as F

from ..clip import load_clip
from ..clip.prompt_learner import load_prompt_learner
from ..clip.prompts import get_templates
from ..clip.text_encoder import TextEmbedder
from ..vocabulary import check_vocabulary, dataset_vocabulary

__all__ = [
    "OpenVocabSegmentor",
    "build_clip_and_text_embedders",
    "default_vocabularies",
    "keep_clip_out_of_checkpoints",
]

logger = logging.getLogger(__name__)


def build_clip_and_text_embedders(cfg: CfgNode) -> Tuple[nn.Module, Dict[str, Optional[TextEmbedder]]]:
    """The frozen CLIP named by MODEL.CLIP.NAME and cached text embedders.

    Returns ``(clip_model, {"text_embedder": ..., "test_text_embedder": ..., "region_text_embedder": ...})``: the
    first puts class names into the prompt templates MODEL.CLIP.TEMPLATES (the training vocabulary's, and every
    vocabulary's unless overridden); the second into MODEL.CLIP.TEST_TEMPLATES (the inference vocabulary's), the
    third into MODEL.CLIP.REGION_TEMPLATES (the CLIP image branch's text side). An override left empty, or naming
    the same set, gives ``None``: the embeddings are then shared. When MODEL.CLIP.PROMPT_LEARNER.WEIGHTS names a
    file, the learned context vectors stored there serve every vocabulary (any class name works: the context is
    shared by all classes).
    """
    clip_model = load_clip(
        cfg.MODEL.CLIP.NAME,
        device=cfg.MODEL.DEVICE,
        weights_dir=cfg.MODEL.CLIP.WEIGHTS_DIR or None,
        half_on_gpu=cfg.MODEL.CLIP.HALF_ON_GPU,
    )
    cache_dir = cfg.MODEL.CLIP.EMBED_CACHE_DIR or None
    if cfg.MODEL.CLIP.PROMPT_LEARNER.WEIGHTS:
        learner = load_prompt_learner(cfg.MODEL.CLIP.PROMPT_LEARNER.WEIGHTS, clip_model)
        embedder = learner.text_embedder(clip_model, cache_dir=cache_dir)
        return clip_model, {"text_embedder": embedder, "test_text_embedder": None, "region_text_embedder": None}

    def embedder_for(name: str) -> TextEmbedder:
        templates = get_templates(name, custom=cfg.MODEL.CLIP.CUSTOM_TEMPLATES)
        return TextEmbedder(clip_model, templates, cache_dir=cache_dir)

    train_set = cfg.MODEL.CLIP.TEMPLATES
    test_set = cfg.MODEL.CLIP.TEST_TEMPLATES or train_set
    region_set = cfg.MODEL.CLIP.REGION_TEMPLATES or test_set
    return clip_model, {
        "text_embedder": embedder_for(train_set),
        "test_text_embedder": embedder_for(test_set) if test_set != train_set else None,
        "region_text_embedder": embedder_for(region_set) if region_set != test_set else None,
    }


def open_vocab_config(cfg: CfgNode) -> Dict[str, object]:
    """``from_config`` arguments every :class:`OpenVocabSegmentor` shares: backbone, frozen CLIP, cached text
    embedder, vocabularies and input normalisation.

    Inputs are padded to a multiple of 32 (the coarsest backbone stride) or of the backbone's own requirement;
    training crops may additionally be padded by the mapper (INPUT.SIZE_DIVISIBILITY), never test images.
    """
    backbone = build_backbone(cfg)
    clip_model, text_embedders = build_clip_and_text_embedders(cfg)
    return {
        "backbone": backbone,
        "clip_model": clip_model,
        **text_embedders,
        **default_vocabularies(cfg),
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
        "size_divisibility": max(backbone.size_divisibility, 32),
        "input_format": cfg.INPUT.FORMAT,
    }


def default_vocabularies(cfg: CfgNode) -> Dict[str, object]:
    """Training vocabulary (DATASETS.TRAIN[0]) and inference vocabulary (TEST.VOCABULARY or DATASETS.TEST[0])."""
    train_names = list(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).stuff_classes) if cfg.DATASETS.TRAIN else []
    if cfg.TEST.VOCABULARY:
        test_names, test_unseen = check_vocabulary(cfg.TEST.VOCABULARY, cfg.TEST.UNSEEN_CLASSES or None)
    elif cfg.DATASETS.TEST:
        test_names, test_unseen = dataset_vocabulary(cfg.DATASETS.TEST[0])
    else:
        test_names, test_unseen = train_names, [False] * len(train_names)
    return {"train_class_names": train_names, "test_class_names": test_names, "test_unseen": test_unseen}


class OpenVocabSegmentor(nn.Module):
    """Base of zegseg's meta-architectures.

    Holds the backbone, the pixel normalisation, a frozen CLIP model (excluded from checkpoints: it is loaded
    from its own file) and two vocabularies: the training one (seen classes) and the inference one, whose
    text embeddings are buffers computed once per vocabulary by a cached :class:`TextEmbedder`.

    Subclasses implement ``forward``. A subclass that needs no trained weights (a training-free model, all of whose
    parameters are CLIP's) sets :attr:`needs_trained_weights` to False: evaluation then runs without MODEL.WEIGHTS.
    """

    needs_trained_weights: ClassVar[bool] = True
    """False for training-free models: ``--eval-only`` and the checkpointer accept an empty MODEL.WEIGHTS."""

    def __init__(
        self,
        *,
        backbone: Optional[nn.Module],
        clip_model: nn.Module,
        text_embedder: Callable[[Sequence[str]], Tensor],
        test_text_embedder: Optional[Callable[[Sequence[str]], Tensor]] = None,
        region_text_embedder: Optional[Callable[[Sequence[str]], Tensor]] = None,
        train_class_names: Sequence[str],
        test_class_names: Sequence[str],
        test_unseen: Optional[Sequence[bool]] = None,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        size_divisibility: int = 32,
        input_format: str = "BGR",
    ):
        """
        Args:
            backbone: a detectron2 backbone (``None``: the model's only image encoder is the frozen CLIP).
            clip_model: frozen OpenAI-format CLIP (its image tower is used by subclasses with a CLIP image branch).
            text_embedder: maps class names to (K, D) L2-normalised text embeddings (cached).
            test_text_embedder: the same for the inference vocabulary (``None``: ``text_embedder``).
            region_text_embedder: the same for the CLIP image branch's text side (``None``: as the inference
                vocabulary's segment classifier).
            train_class_names: vocabulary during training (seen classes); may be empty for inference-only models.
            test_class_names: vocabulary at inference.
            test_unseen: (K,) which inference classes are unseen; ``None`` → all unseen.
            pixel_mean, pixel_std: per-channel normalisation of the input images (in ``input_format`` order).
            size_divisibility: pad inputs to a multiple of this.
            input_format: channel order of the input images, "BGR" or "RGB".
        """
        super().__init__()
        self.backbone = backbone
        self.clip_model = clip_model
        self.text_embedder = text_embedder
        self.test_text_embedder = test_text_embedder or text_embedder
        self.region_text_embedder = region_text_embedder
        self.size_divisibility = size_divisibility
        self.input_format = input_format
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), persistent=False)
        keep_clip_out_of_checkpoints(self)

        self.train_class_names: List[str] = list(train_class_names)
        self.register_buffer("train_text_embeddings", self._embed(self.train_class_names), persistent=False)
        self.register_buffer("test_text_embeddings", torch.empty(0), persistent=False)
        self.register_buffer("test_region_text_embeddings", torch.empty(0), persistent=False)
        self.register_buffer("test_unseen_mask", torch.empty(0, dtype=torch.bool), persistent=False)
        self.set_vocabulary(test_class_names, test_unseen=test_unseen)

    # ----------------------------------------------------------------------------------------------- vocabulary
    @torch.no_grad()
    def _embed(self, names: Sequence[str], embedder: Optional[Callable[[Sequence[str]], Tensor]] = None) -> Tensor:
        if not names:
            return torch.empty(0)
        return (embedder or self.text_embedder)(list(names)).float().to(self.pixel_mean.device)

    def set_vocabulary(
        self,
        class_names: Sequence[str],
        unseen_classes: Optional[Sequence[str]] = None,
        *,
        test_unseen: Optional[Sequence[bool]] = None,
    ) -> None:
        """Change the inference vocabulary without rebuilding the model.

        Args:
            class_names: the classes to segment; synonyms joined by ", ".
            unseen_classes: which of them count as unseen for the seen/unseen ensemble; ``None`` → all unseen
                (the right choice for names no training set covered).
            test_unseen: alternatively, a per-class boolean list (used by ``from_config``).
        Raises:
            ValueError: empty vocabulary, empty/duplicate names, or unseen names outside the vocabulary.
        """
        names, unseen = check_vocabulary(class_names, unseen_classes)
        if test_unseen is not None:
            if len(test_unseen) != len(names):
                raise ValueError(f"test_unseen has {len(test_unseen)} entries for {len(names)} classes")
            unseen = [bool(u) for u in test_unseen]
        self.test_class_names = names
        self.test_text_embeddings = self._embed(names, self.test_text_embedder)
        if self.region_text_embedder is not None:
            self.test_region_text_embeddings = self._embed(names, self.region_text_embedder)
        self.test_unseen_mask = torch.tensor(unseen, dtype=torch.bool, device=self.pixel_mean.device)
        logger.info("Vocabulary: %d classes (%d unseen)", len(names), sum(unseen))

    @property
    def class_names(self) -> List[str]:
        """The vocabulary in use: training classes in training mode, inference classes otherwise."""
        return self.train_class_names if self.training else self.test_class_names

    @property
    def text_embeddings(self) -> Tensor:
        """(K, D) L2-normalised text embeddings of :attr:`class_names`."""
        return self.train_text_embeddings if self.training else self.test_text_embeddings

    @property
    def region_text_embeddings(self) -> Tensor:
        """(K, D) text embeddings the CLIP image branch compares crops with (inference vocabulary)."""
        if self.region_text_embedder is None:
            return self.test_text_embeddings
        return self.test_region_text_embeddings

    # ------------------------------------------------------------------------------------------------ plumbing
    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def train(self, mode: bool = True) -> OpenVocabSegmentor:
        """Switch mode; the frozen CLIP always stays in eval mode."""
        super().train(mode)
        self.clip_model.eval()
        return self

    def preprocess_images(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalise and pad the batch: returns an ImageList of (B, 3, H', W') float tensors."""
        images = [(x["image"].to(self.device) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        return ImageList.from_tensors(images, self.size_divisibility)

    def prepare_targets(self, batched_inputs: List[Dict], padded_size: Tuple[int, int]) -> List[Dict[str, Tensor]]:
        """Per image ``{"labels": (G,), "masks": (G, H', W') float, "labeled": (H', W') bool}``, masks zero-padded to
        the batch size; ``labeled`` is the union of the masks (False on ignored pixels, e.g. unseen classes, and on
        padding)."""
        targets = []
        for x in batched_inputs:
            inst = x["instances"].to(self.device)
            masks = inst.gt_masks.tensor if hasattr(inst.gt_masks, "tensor") else inst.gt_masks
            h, w = masks.shape[-2:]
            padded = F.pad(masks.float(), (0, padded_size[1] - w, 0, padded_size[0] - h))
            targets.append({"labels": inst.gt_classes, "masks": padded, "labeled": padded.sum(0) > 0})
        return targets

    @staticmethod
    def resize_to_output(scores: Tensor, image_size: Tuple[int, int], height: int, width: int) -> Tensor:
        """Crop padded (C, H', W') maps (scores or mask logits) to the network input size, then resize them to
        the original (C, H, W)."""
        scores = scores[:, : image_size[0], : image_size[1]]
        if tuple(scores.shape[-2:]) == (height, width):
            return scores
        return F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0]


def keep_clip_out_of_checkpoints(module: nn.Module) -> None:
    """Freeze ``module.clip_model`` and keep it out of ``module``'s state dict (it is reloaded from its own file);
    loading a state dict without CLIP's weights then takes them from the already-loaded CLIP."""
    module.clip_model.requires_grad_(False)
    module._register_state_dict_hook(_drop_clip_weights)
    module._register_load_state_dict_pre_hook(_restore_clip_weights, with_module=True)


def _drop_clip_weights(module: nn.Module, state_dict: Dict, prefix: str, local_metadata) -> None:
    """Keep CLIP out of checkpoints: it is frozen and reloaded from MODEL.CLIP.NAME."""
    for key in [k for k in state_dict if k.startswith(prefix + "clip_model.")]:
        del state_dict[key]


def _restore_clip_weights(module: nn.Module, state_dict: Dict, prefix: str, *args) -> None:
    """When loading a zegseg checkpoint, take CLIP's weights from the already-loaded CLIP."""
    for key, value in module.clip_model.state_dict().items():
        state_dict.setdefault(f"{prefix}clip_model.{key}", value)
