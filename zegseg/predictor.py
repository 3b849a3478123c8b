"""Segment your own images with your own class names: no dataset registration, no training loop.

Example::

    from zegseg import Predictor
    from zegseg.engine.setup_config import load_config

    cfg = load_config("configs/toy/zegformer.yaml")  # no MODEL.WEIGHTS: the shipped toy ZegFormer
    predictor = Predictor(cfg).set_vocabulary(["sky", "grass", "red circle", "tv, monitor"])
    result = predictor(cv2.imread("photo.jpg"))          # BGR, as OpenCV reads it
    result.labels        # (H, W) int32 indices into result.vocabulary; -1 where unknown
    result.confidence    # (H, W) float32 score of the winning class
    result.fractions     # {"sky": 0.41, ...}; with result.unknown_fraction they sum to 1
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch import Tensor
from torch.nn import functional as F

from .checkpoint import ZegsegCheckpointer
from .engine.setup_config import load_config, resolve_device
from .model_zoo import inference_weights
from .modeling.mask_classification import QuerySelector
from .modeling.meta_arch.base import OpenVocabSegmentor
from .modeling.vocabulary import Names, check_vocabulary

__all__ = ["Predictor", "SegmentationResult", "upsample_argmax"]

logger = logging.getLogger(__name__)

IMAGE_FORMATS = ("BGR", "RGB")

# Largest K * rows * W block of upsampled scores held at once when mapping scores back to a large original image.
_MAX_UPSAMPLE_ELEMENTS = 1 << 25


@dataclass(eq=False)
class SegmentationResult:
    """The segmentation of one image at its original size.

    Attributes:
        labels: (H, W) int32 index into :attr:`vocabulary`; ``-1`` marks unknown pixels (confidence below the
            predictor's ``confidence_threshold``).
        confidence: (H, W) float32 score of the winning class, on the model's own scale (for ZegFormer's
            mask-classification assembly, ``sum_q p(class | q) * sigmoid(mask_q)``, mostly in [0, 1]).
        vocabulary: the K class names the labels index.
    """

    labels: np.ndarray
    confidence: np.ndarray
    vocabulary: List[str]
    _counts: np.ndarray = field(init=False, repr=False)

    def __post_init__(self):
        # counts[0] counts unknown pixels (label -1), counts[k + 1] class k
        self._counts = np.bincount(self.labels.ravel() + 1, minlength=len(self.vocabulary) + 1)

    @property
    def fractions(self) -> Dict[str, float]:
        """Fraction of the image's pixels labelled with each class, for every class of the vocabulary."""
        total = max(int(self.labels.size), 1)
        return {name: float(c) / total for name, c in zip(self.vocabulary, self._counts[1:])}

    @property
    def unknown_fraction(self) -> float:
        """Fraction of pixels labelled unknown; ``sum(fractions.values()) + unknown_fraction == 1``."""
        return float(self._counts[0]) / max(int(self.labels.size), 1)

    def present_classes(self) -> List[int]:
        """Indices of the classes that label at least one pixel, most frequent first."""
        counts = self._counts[1:]
        order = np.argsort(-counts, kind="stable")
        return [int(k) for k in order if counts[k] > 0]

    def label_image(self) -> np.ndarray:
        """The label map as stored in a PNG: uint8 with unknown = 255 when the vocabulary has at most 255
        classes, otherwise uint16 with unknown = 65535."""
        dtype = np.uint8 if len(self.vocabulary) <= 255 else np.uint16
        unknown = np.iinfo(dtype).max
        return np.where(self.labels < 0, unknown, self.labels).astype(dtype)

    def to_dict(self) -> Dict[str, object]:
        """JSON-ready summary: size, vocabulary, per-class pixel fractions and the unknown fraction."""
        return {
            "height": int(self.labels.shape[0]),
            "width": int(self.labels.shape[1]),
            "vocabulary": list(self.vocabulary),
            "fractions": self.fractions,
            "unknown_fraction": self.unknown_fraction,
        }


def upsample_argmax(
    scores: Tensor, height: int, width: int, max_elements: int = _MAX_UPSAMPLE_ELEMENTS
) -> Tuple[Tensor, Tensor]:
    """Bilinearly upsample class scores to (height, width) and take the per-pixel arg-max, in row bands.

    Equal to ``F.interpolate(scores[None], (height, width), mode="bilinear", align_corners=False)[0].max(0)``,
    but never holds more than about ``max_elements`` upsampled scores at once, so a large image with a large
    vocabulary does not need a (K, H, W) tensor.

    Args:
        scores: (K, h, w) per-class scores.
        height, width: output size.
        max_elements: bound on K * rows * width per band.
    Returns:
        (height, width) float max score and (height, width) long arg-max class.
    """
    scores = scores.float()
    k, h, w = scores.shape
    if (h, w) == (height, width):
        return scores.max(dim=0)
    rows = max(1, max_elements // max(k * width, 1))
    if rows >= height:
        return F.interpolate(scores[None], size=(height, width), mode="bilinear", align_corners=False)[0].max(dim=0)
    # grid_sample with align_corners=False and border padding samples exactly where F.interpolate does.
    xs = (2 * torch.arange(width, device=scores.device, dtype=torch.float32) + 1) / width - 1
    ys = (2 * torch.arange(height, device=scores.device, dtype=torch.float32) + 1) / height - 1
    best = scores.new_empty(height, width)
    label = torch.empty(height, width, dtype=torch.long, device=scores.device)
    for r0 in range(0, height, rows):
        y = ys[r0 : r0 + rows]
        grid = torch.stack(torch.broadcast_tensors(xs[None, :], y[:, None]), dim=-1)  # (rows, W, 2) as (x, y)
        band = F.grid_sample(scores[None], grid[None], mode="bilinear", padding_mode="border", align_corners=False)
        best[r0 : r0 + rows], label[r0 : r0 + rows] = band[0].max(dim=0)
    return best, label


class Predictor:
    """Build a zegseg model from a config, load its weights, and segment numpy images.

    Like detectron2's ``DefaultPredictor``: the model is built from ``cfg`` in eval mode on ``cfg.MODEL.DEVICE``
    (CPU when no GPU is present), ``cfg.MODEL.WEIGHTS`` is loaded (when empty, ``cfg.MODEL.DEFAULT_WEIGHTS``: the
    toy ZegFormer config names the model shipped in ``zegseg/model_zoo/``), images are resized with
    ``ResizeShortestEdge`` (``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``) and results come back at the
    original size. Mixed precision on GPU follows the model's own ``TEST.AMP`` setting. Unlike it, the vocabulary
    can be changed at any time (:meth:`set_vocabulary`), several images go through one forward pass
    (:meth:`predict_batch`), and the result is a label map with confidences instead of raw scores.

    The model must subclass :class:`~zegseg.modeling.meta_arch.base.OpenVocabSegmentor` and follow detectron2's
    eval-mode I/O (``[{"sem_seg": (K, H, W)}]``).
    """

    def __init__(
        self,
        cfg: CfgNode,
        *,
        vocabulary: Optional[Names] = None,
        unseen_classes: Optional[Names] = None,
        confidence_threshold: float = 0.0,
    ):
        """
        Args:
            cfg: a zegseg config (see :func:`zegseg.engine.setup_config.load_config`); not modified.
            vocabulary: class names to segment (synonyms joined by ", "), or one string read like the demo's
                ``--vocabulary`` (``"sky; tv, monitor"`` → 2 classes, see
                :func:`~zegseg.modeling.vocabulary.parse_vocabulary`); ``None`` → the config's inference
                vocabulary (``TEST.VOCABULARY``, else the classes of ``DATASETS.TEST[0]``).
            unseen_classes: names of ``vocabulary`` the model did not see in training (a list or one string);
                ``None`` → all of them (the right choice for names of your own).
            confidence_threshold: pixels whose winning score is below this are labelled unknown (-1).
        Raises:
            FileNotFoundError: ``MODEL.WEIGHTS`` (or ``MODEL.DEFAULT_WEIGHTS``) names a file that does not exist
                (or CLIP weights are missing:
                :class:`~zegseg.modeling.clip.loader.ClipWeightsNotFoundError`).
            VocabularyError: a bad vocabulary (a ``ValueError``; see
                :func:`~zegseg.modeling.vocabulary.check_vocabulary`).
            ValueError: a config input format other than BGR/RGB.
            TypeError: the meta-architecture is not an open-vocabulary segmentor.
            zegseg.checkpoint.CheckpointError: ``MODEL.WEIGHTS`` is unsafe, unreadable, or does not fit the model
                (unless ``MODEL.WEIGHTS_PARTIAL_OK``).
        """
        cfg = cfg.clone()
        cfg.defrost()
        resolve_device(cfg)
        unseen_names: Optional[List[str]] = None
        if vocabulary is not None:
            # built with the vocabulary directly, so that the config's default one is never embedded
            names, is_unseen = check_vocabulary(vocabulary, unseen_classes)
            unseen_names = None if unseen_classes is None else [n for n, u in zip(names, is_unseen) if u]
            cfg.TEST.VOCABULARY = names
            cfg.TEST.UNSEEN_CLASSES = unseen_names or []
        cfg.freeze()
        if cfg.INPUT.FORMAT not in IMAGE_FORMATS:
            raise ValueError(f"unknown INPUT.FORMAT {cfg.INPUT.FORMAT!r}; known: {', '.join(IMAGE_FORMATS)}")
        weights = inference_weights(cfg)  # MODEL.WEIGHTS, else the config's shipped MODEL.DEFAULT_WEIGHTS
        if weights and "://" not in weights and not Path(weights).expanduser().is_file():
            raise FileNotFoundError(f"model weights not found: {weights} (MODEL.WEIGHTS)")

        self.model = build_model(cfg)
        if not isinstance(self.model, OpenVocabSegmentor):
            raise TypeError(
                f"{cfg.MODEL.META_ARCHITECTURE} is not an open-vocabulary segmentor (OpenVocabSegmentor subclass)"
            )
        if unseen_names == []:
            self.model.set_vocabulary(names, unseen_classes=[])  # explicitly "no unseen class"; embeddings cached
        self.model.eval()
        if weights:
            path = str(Path(weights).expanduser()) if "://" not in weights else weights
            ZegsegCheckpointer(self.model, partial_ok=cfg.MODEL.WEIGHTS_PARTIAL_OK).load(path)
        elif getattr(self.model, "needs_trained_weights", True):  # training-free models (MaskCLIP) need none
            logger.warning("MODEL.WEIGHTS is empty: the model is untrained and its predictions are meaningless")
        # fast mode's selector, built from MODEL.CLIP.FAST_MODE even when the config starts in exact mode, so that
        # set_fast_mode can switch without rebuilding; None: the model sends no region crops to CLIP
        has_crops = getattr(self.model, "region_classifier", None) is not None
        self._fast_selector = QuerySelector(cfg) if has_crops and hasattr(self.model, "query_selector") else None
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format: str = cfg.INPUT.FORMAT
        self.confidence_threshold = float(confidence_threshold)

    @classmethod
    def from_config_file(cls, config_file: str, opts: Optional[Sequence[str]] = None, **kwargs) -> Predictor:
        """Build from a YAML file and ``KEY VALUE`` overrides; ``kwargs`` go to the constructor."""
        return cls(load_config(config_file, opts), **kwargs)

    @property
    def vocabulary(self) -> List[str]:
        """The class names the label maps index."""
        return list(self.model.test_class_names)

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_vocabulary(self, class_names: Names, unseen_classes: Optional[Names] = None) -> Predictor:
        """Segment these classes from now on (text embeddings are computed once per vocabulary, and cached).

        Args:
            class_names: K names; synonyms of one class joined by ", " (e.g. "tv, monitor"). One string is read
                like the demo's ``--vocabulary``: ``"sky"`` → ``["sky"]``, ``"sky; tv, monitor"`` → 2 classes.
            unseen_classes: which of them the model did not see in training (a list or one string); ``None`` → all.
        Returns:
            self, so that calls chain.
        Raises:
            VocabularyError: (a ``ValueError``) an empty vocabulary, a name that is not text, an empty name, names
                that are equal ignoring case and spacing, or unseen names outside the vocabulary.
        """
        self.model.set_vocabulary(class_names, unseen_classes=unseen_classes)
        return self

    @property
    def supports_fast_mode(self) -> bool:
        """Whether the model has a fast mode (a mask-classification model that sends region crops to CLIP)."""
        return self._fast_selector is not None

    @property
    def fast_mode(self) -> bool:
        """Whether fast mode (``MODEL.CLIP.FAST_MODE``: fewer region crops go to CLIP) is on."""
        return self.supports_fast_mode and self.model.query_selector is not None

    def set_fast_mode(self, enabled: bool) -> Predictor:
        """Switch fast mode on or off (its cut-offs are the config's ``MODEL.CLIP.FAST_MODE`` values); the model
        is not rebuilt.

        Raises:
            ValueError: turning it on for a model without fast mode (see :attr:`supports_fast_mode`).
        """
        if not self.supports_fast_mode:
            if enabled:
                raise ValueError(f"{type(self.model).__name__} has no fast mode (it sends no region crops to CLIP)")
            return self
        self.model.query_selector = self._fast_selector if enabled else None
        return self

    def __call__(self, image: np.ndarray, image_format: str = "BGR") -> SegmentationResult:
        """Segment one (H, W, 3) uint8 image given in ``image_format`` ("BGR", as OpenCV reads, or "RGB")."""
        return self.predict_batch([image], image_format=image_format)[0]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[np.ndarray], image_format: str = "BGR") -> List[SegmentationResult]:
        """Segment several images (any sizes) in one forward pass.

        Args:
            images: (H_i, W_i, 3) uint8 arrays in ``image_format`` channel order.
            image_format: "BGR" or "RGB".
        Returns:
            one :class:`SegmentationResult` per image, at the image's original size.
        Raises:
            ValueError: an image that is not (H, W, 3) uint8, an empty image, or an unknown ``image_format``.
        """
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {image_format!r}; known: {', '.join(IMAGE_FORMATS)}")
        if not images:
            return []
        inputs = [self._prepare(image, image_format) for image in images]
        outputs = self.model(inputs)
        return [self._postprocess(out["sem_seg"], image.shape[:2]) for out, image in zip(outputs, images)]

    def _prepare(self, image: np.ndarray, image_format: str) -> Dict[str, object]:
        """Channel order, ResizeShortestEdge, (3, h, w) uint8 tensor; asks the model for scores at (h, w)."""
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            desc = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image)
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {desc}")
        if image.size == 0:
            raise ValueError(f"the image is empty ({image.shape[0]} x {image.shape[1]} pixels)")
        if image_format != self.input_format:
            image = image[:, :, ::-1]
        resized = self.resize.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))
        # scores come back at the network's input size; _postprocess maps them to the original size in bands
        return {"image": tensor, "height": resized.shape[0], "width": resized.shape[1]}

    def _postprocess(self, scores: Tensor, size: Tuple[int, int]) -> SegmentationResult:
        """(K, h, w) scores → labels and confidences at the original (H, W)."""
        confidence, labels = upsample_argmax(scores, int(size[0]), int(size[1]))
        labels = labels.to(torch.int32)
        if self.confidence_threshold > 0:
            labels[confidence < self.confidence_threshold] = -1
        return SegmentationResult(
            labels=labels.cpu().numpy(), confidence=confidence.cpu().numpy(), vocabulary=self.vocabulary
        )
