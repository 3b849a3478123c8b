"""Checks of a training/evaluation command line before any process starts: user mistakes end in one line.

Each check names the file, config key or dataset at fault and the fix; what passes here is what the run will use:
the config file (safe YAML, known keys) and overrides, MODEL.WEIGHTS (present, readable without running code,
not empty for ``--eval-only`` unless the model is training-free, which only ``--eval-only`` runs), the CLIP
checkpoint and learned prompts (present and readable), and every dataset of DATASETS.TRAIN / DATASETS.TEST
(registered and prepared). Whether MODEL.WEIGHTS fits the model is
checked when it is loaded (:mod:`zegseg.checkpoint.completeness`).
"""
from __future__ import annotations

import argparse
import difflib
import pickle
import zipfile
from pathlib import Path
from typing import Iterator, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from ..checkpoint import CheckpointError, read_weights_file
from ..data.datasets.common import LayoutError, dataset_root
from ..modeling.clip import ClipWeightsNotFoundError, load_clip
from ..modeling.generative import generation_vocabulary, load_class_embeddings
from .setup_config import ConfigError, load_config

__all__ = ["preflight"]

_CLIP_MODELS = ("ZegFormer", "TwoStageCLIP", "PromptLearnerCLIP", "PixelLevelZS", "MaskCLIP", "ZS3Net", "CaGNet")


def _fail(message: str) -> SystemExit:
    return SystemExit(f"error: {message}")


def _needs_trained_weights(cfg: CfgNode) -> bool:
    """False for training-free meta-architectures (``needs_trained_weights = False`` on the class)."""
    try:
        arch = META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE)
    except KeyError:
        raise _fail(f"unknown MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r}") from None
    return bool(getattr(arch, "needs_trained_weights", True))


def _check_weights(cfg: CfgNode, eval_only: bool, resuming: bool) -> None:
    weights = cfg.MODEL.WEIGHTS
    if not _needs_trained_weights(cfg):
        if not eval_only:
            raise _fail(f"{cfg.MODEL.META_ARCHITECTURE} is training-free: evaluate it with --eval-only")
        if not weights:  # nothing to load
            return
    if resuming:  # the checkpoint in OUTPUT_DIR is used, not MODEL.WEIGHTS
        return
    if not weights:
        if eval_only and not cfg.MODEL.WEIGHTS_PARTIAL_OK:
            raise _fail(
                "--eval-only needs trained weights: set MODEL.WEIGHTS (or MODEL.WEIGHTS_PARTIAL_OK True to "
                "evaluate the untrained model on purpose)"
            )
        return
    if "://" in weights:
        return
    path = Path(weights).expanduser()
    if not path.is_file():
        raise _fail(f"MODEL.WEIGHTS file not found: {weights}")
    try:
        read_weights_file(str(path))
    except CheckpointError as e:
        raise _fail(f"MODEL.WEIGHTS: {e}") from None


def _check_clip(cfg: CfgNode) -> None:
    if cfg.MODEL.META_ARCHITECTURE not in _CLIP_MODELS:
        return
    try:
        load_clip(cfg.MODEL.CLIP.NAME, device="cpu", weights_dir=cfg.MODEL.CLIP.WEIGHTS_DIR or None)
    except ClipWeightsNotFoundError as e:
        raise _fail(str(e)) from None
    except (ValueError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0].split(". ")[0] if str(e) else type(e).__name__
        if "weights only load failed" in reason.lower():
            reason = "it needs Python objects beyond tensors, which could run code (refused, nothing was run)"
        raise _fail(
            f"cannot read the CLIP checkpoint {cfg.MODEL.CLIP.NAME!r} (MODEL.CLIP.NAME): {reason}; "
            "it must be an OpenAI CLIP file (TorchScript or state dict)"
        ) from None
    prompts = cfg.MODEL.CLIP.PROMPT_LEARNER.WEIGHTS
    if prompts:
        if not Path(prompts).expanduser().is_file():
            raise _fail(f"MODEL.CLIP.PROMPT_LEARNER.WEIGHTS file not found: {prompts}")
        try:
            read_weights_file(str(Path(prompts).expanduser()))
        except CheckpointError as e:
            raise _fail(f"MODEL.CLIP.PROMPT_LEARNER.WEIGHTS: {e}") from None


def _check_class_embeddings(cfg: CfgNode) -> None:
    """A feature-generation model's MODEL.GENERATIVE.EMBEDDINGS file: readable, one vector per class."""
    source = cfg.MODEL.GENERATIVE.EMBEDDINGS
    if cfg.MODEL.META_ARCHITECTURE not in ("ZS3Net", "CaGNet") or source == "clip":
        return
    try:
        load_class_embeddings(source, generation_vocabulary(cfg), text_embedder=None)
    except ValueError as e:
        raise _fail(f"MODEL.GENERATIVE.EMBEDDINGS: {e}") from None


def _datasets(cfg: CfgNode, eval_only: bool) -> Iterator[Tuple[str, str]]:
    keys = ("DATASETS.TEST",) if eval_only else ("DATASETS.TRAIN", "DATASETS.TEST")
    for key in keys:
        section, field = key.split(".")
        for name in cfg[section][field]:
            yield key, name


def _check_datasets(cfg: CfgNode, eval_only: bool) -> None:
    registered = DatasetCatalog.list()
    for key, name in _datasets(cfg, eval_only):
        if name not in registered:
            close = difflib.get_close_matches(name, registered, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]!r}?" if close else "see the dataset list in datasets/README.md"
            raise _fail(f"{key}: unknown dataset {name!r}; {hint}")
        try:
            records = DatasetCatalog.get(name)
        except (FileNotFoundError, LayoutError) as e:
            raise _fail(
                f"{key}: dataset {name!r} is not prepared: {e} (datasets are looked up under "
                f"$DETECTRON2_DATASETS, now {dataset_root()!r})"
            ) from None
        if not records:
            raise _fail(f"{key}: dataset {name!r} has no images")


def preflight(args: argparse.Namespace) -> CfgNode:
    """Validate ``--config-file`` and its overrides, MODEL.WEIGHTS, the CLIP checkpoint and the datasets.

    Args:
        args: detectron2's parsed arguments (``config_file``, ``opts``, ``resume``, ``eval_only``).
    Returns:
        the merged (unfrozen) config.
    Raises:
        SystemExit: with a one-line ``error: ...`` message naming the bad file, key or dataset.
    """
    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, ConfigError) as e:
        raise _fail(str(e)) from None
    eval_only = bool(getattr(args, "eval_only", False))
    resuming = bool(args.resume) and Path(cfg.OUTPUT_DIR, "last_checkpoint").exists()
    _check_weights(cfg, eval_only, resuming)
    _check_clip(cfg)
    _check_datasets(cfg, eval_only)
    _check_class_embeddings(cfg)
    return cfg
