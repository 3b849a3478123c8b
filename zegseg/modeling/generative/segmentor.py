"""What ZS3Net and CaGNet share: a DeepLab-style segmentation network over a detectron2 backbone, a fixed
vocabulary of seen + unseen classes with their semantic embeddings, seen-only training labels, and inference."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.structures import ImageList
from detectron2.utils.events import get_event_storage
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn import functional as F

from ..meta_arch.base import OpenVocabSegmentor, default_vocabularies, open_vocab_config
from .embeddings import load_class_embeddings
from .head import build_deeplab_feature_head

__all__ = ["GenerativeSegmentor", "current_iteration", "frozen", "generation_vocabulary", "with_frozen_parameters"]


def generation_vocabulary(cfg: CfgNode) -> List[str]:
    """The classes a feature-generation model's classifier covers: the training classes (DATASETS.TRAIN[0]),
    then the inference vocabulary's unseen classes (TEST.VOCABULARY / TEST.UNSEEN_CLASSES, else DATASETS.TEST[0]'s
    ``unseen_classes``), whose features are generated from their embeddings."""
    vocab = default_vocabularies(cfg)
    train = vocab["train_class_names"]
    unseen = [n for n, u in zip(vocab["test_class_names"], vocab["test_unseen"]) if u and n not in train]
    return train + unseen


def current_iteration() -> int:
    """The trainer's iteration (detectron2's event storage), which selects the training stage.

    Raises:
        RuntimeError: called outside an ``EventStorage`` (the trainer opens one; a hand-written loop must too).
    """
    try:
        return get_event_storage().iter
    except AssertionError:
        raise RuntimeError(
            "feature-generation models pick their training stage from the iteration: train them inside "
            "detectron2's EventStorage (train_net.py does; by hand: `with EventStorage(start_iter): ...`)"
        ) from None


@contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` in eval mode without gradients (a trained stage, used as a fixed feature extractor)."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def with_frozen_parameters(module: nn.Module, *args: Tensor):
    """``module(*args)`` with its parameters detached: gradients reach the inputs but not ``module``.

    This lets one backward pass over a sum of losses update each network only with its own loss (e.g. the
    generator's adversarial loss does not train the discriminator).
    """
    params = {name: p.detach() for name, p in module.named_parameters()}
    return functional_call(module, params, args)


class GenerativeSegmentor(OpenVocabSegmentor):
    """Base of the feature-generation models.

    The classifier is trained for a fixed vocabulary: the training (seen) classes followed by the unseen classes
    whose features are generated from their embeddings (``generation_class_names``). Training labels must be
    seen-class ids or ``ignore_value``; unseen-class pixel labels are never read. At inference the vocabulary may
    be any subset (in any order) of ``generation_class_names``.

    Subclasses implement :meth:`predict_logits` and :meth:`training_losses`.
    """

    def __init__(
        self,
        *,
        head: nn.Module,
        class_embeddings: Tensor,
        generation_class_names: Sequence[str],
        ignore_value: int = 255,
        **kwargs,
    ):
        """
        Args:
            head: backbone features → (B, D, H / s, W / s) pixel features, with the stride s as its
                ``common_stride`` attribute (e.g. :func:`~zegseg.modeling.generative.head.build_deeplab_feature_head`).
            class_embeddings: (K, E) semantic embeddings of ``generation_class_names``.
            generation_class_names: the K classes of the classifier: ``train_class_names`` then the unseen ones.
            ignore_value: label of pixels without a seen class (unseen classes, unlabelled, padding).
            kwargs: see :class:`OpenVocabSegmentor`.
        Raises:
            ValueError: the names do not start with the training classes, or the embeddings do not match them.
        """
        self.generation_class_names: List[str] = list(generation_class_names)  # read by set_vocabulary
        super().__init__(**kwargs)
        num_seen = len(self.train_class_names)
        if self.generation_class_names[:num_seen] != self.train_class_names:
            raise ValueError("generation_class_names must start with the training classes, in their order")
        if class_embeddings.dim() != 2 or class_embeddings.shape[0] != len(self.generation_class_names):
            raise ValueError(
                f"class_embeddings {tuple(class_embeddings.shape)} must be (K, E) for the "
                f"{len(self.generation_class_names)} classes"
            )
        self.head = head
        self.num_seen = num_seen
        self.ignore_value = ignore_value
        self.register_buffer("class_embeddings", class_embeddings.float(), persistent=False)

    @classmethod
    def generative_config(cls, cfg: CfgNode) -> Dict:
        """``from_config`` arguments shared by the feature-generation models (reads MODEL.GENERATIVE)."""
        shared = open_vocab_config(cfg)
        names = generation_vocabulary(cfg)
        g = cfg.MODEL.GENERATIVE
        head = build_deeplab_feature_head(
            shared["backbone"].output_shape(),
            in_features=g.IN_FEATURES,
            project_channels=g.PROJECT_CHANNELS,
            aspp_channels=g.ASPP_CHANNELS,
            aspp_dilations=g.ASPP_DILATIONS,
            aspp_dropout=g.ASPP_DROPOUT,
            feature_dim=g.HEAD_DIM,
            norm=g.NORM,
        )
        return {
            **shared,
            "head": head,
            "class_embeddings": load_class_embeddings(g.EMBEDDINGS, names, shared["text_embedder"]).cpu(),
            "generation_class_names": names,
            "ignore_value": int(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).ignore_label) if cfg.DATASETS.TRAIN else 255,
        }

    # ----------------------------------------------------------------------------------------------- vocabulary
    @property
    def num_classes(self) -> int:
        """K, the classes of the classifier (seen then unseen)."""
        return len(self.generation_class_names)

    def set_vocabulary(
        self,
        class_names: Sequence[str],
        unseen_classes: Optional[Sequence[str]] = None,
        *,
        test_unseen: Optional[Sequence[bool]] = None,
    ) -> None:
        """As :meth:`OpenVocabSegmentor.set_vocabulary`, restricted to the classes the classifier was trained for.

        Raises:
            ValueError: also for names outside ``generation_class_names``.
        """
        unknown = [n for n in class_names if n not in self.generation_class_names]
        if unknown:
            raise ValueError(
                f"{type(self).__name__} classifies only the classes it generated features for in training; "
                f"not among them: {', '.join(unknown)}"
            )
        super().set_vocabulary(class_names, unseen_classes, test_unseen=test_unseen)
        self.test_columns = [self.generation_class_names.index(n) for n in self.test_class_names]

    # ------------------------------------------------------------------------------------------------ training
    def features(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images → (B, D, H / s, W / s) pixel features of the segmentation network."""
        return self.head(self.backbone(images))

    def training_labels(self, batched_inputs: List[Dict]) -> Tensor:
        """The seen-class labels of the batch, padded like the images.

        Returns:
            (B, H', W') long: ids in [0, S) or ``ignore_value``.
        Raises:
            ValueError: an input without "sem_seg", or a label that is neither a seen class nor ignored (an
                unseen-class label would leak into training: train on a ``*_train_seen_*`` dataset).
        """
        if any("sem_seg" not in x for x in batched_inputs):
            raise ValueError(f"{type(self).__name__} trains on per-pixel labels: every input needs 'sem_seg' (H, W)")
        labels = ImageList.from_tensors(
            [x["sem_seg"].to(self.device) for x in batched_inputs], self.size_divisibility, pad_value=self.ignore_value
        ).tensor
        bad = (labels != self.ignore_value) & ((labels < 0) | (labels >= self.num_seen))
        if bool(bad.any()):
            raise ValueError(
                f"training label {int(labels[bad][0])} is not one of the {self.num_seen} seen classes: "
                "feature-generation models train on seen-class labels only (a *_train_seen_* dataset)"
            )
        return labels

    @staticmethod
    def resize_labels(labels: Tensor, size: Sequence[int]) -> Tensor:
        """(B, H, W) → (B, h, w) by nearest neighbour (the feature grid)."""
        return F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()

    def embedding_map(self, labels: Tensor) -> Tensor:
        """(B, h, w) class ids (any of the K, or ``ignore_value``) → (B, E, h, w) their embeddings, 0 where ignored."""
        valid = (labels >= 0) & (labels < self.num_classes)
        emb = self.class_embeddings[labels.clamp(0, self.num_classes - 1)] * valid[..., None]
        return emb.permute(0, 3, 1, 2)

    def training_losses(self, images: Tensor, labels: Tensor) -> Dict[str, Tensor]:
        """(B, 3, H, W) images and (B, H, W) seen labels → the losses of the current stage."""
        raise NotImplementedError

    def predict_logits(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) images → (B, K, h, w) logits over ``generation_class_names``."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------------- forward
    def forward(self, batched_inputs: List[Dict]) -> List[Dict[str, Tensor]] | Dict[str, Tensor]:
        """
        Args:
            batched_inputs: detectron2 dicts with "image" (3, H, W) and, in training, "sem_seg" (H, W) long ids
                over the training (seen) vocabulary; optional "height"/"width" at inference.
        Returns:
            training: the current stage's losses; inference: per image ``{"sem_seg": (K', height, width)}``
            probabilities over the inference vocabulary.
        """
        images = self.preprocess_images(batched_inputs)
        if self.training:
            return self.training_losses(images.tensor, self.training_labels(batched_inputs))
        logits = self.predict_logits(images.tensor)[:, self.test_columns]
        padded = tuple(images.tensor.shape[-2:])
        results = []
        for i, x in enumerate(batched_inputs):
            height, width = x.get("height", images.image_sizes[i][0]), x.get("width", images.image_sizes[i][1])
            probs = F.interpolate(logits[i : i + 1].float(), size=padded, mode="bilinear", align_corners=False)[0]
            results.append({"sem_seg": self.resize_to_output(probs.softmax(0), images.image_sizes[i], height, width)})
        return results
