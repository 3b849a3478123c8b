"""Checks of a training/evaluation command line before any process starts: user mistakes end in one message."""
from __future__ import annotations

import argparse
from pathlib import Path

from detectron2.config import CfgNode

from ..modeling.clip import ClipWeightsNotFoundError, resolve_clip_path
from .setup_config import ConfigError, load_config

__all__ = ["preflight"]


def _weights_present(path: str) -> bool:
    return not path or "://" in path or Path(path).expanduser().is_file()


def preflight(args: argparse.Namespace) -> CfgNode:
    """Validate ``--config-file``, the ``KEY VALUE`` overrides, MODEL.WEIGHTS and the CLIP checkpoint.

    Returns:
        the merged (unfrozen) config.
    Raises:
        SystemExit: with a one-line message naming the bad file or option.
    """
    try:
        cfg = load_config(args.config_file, args.opts)
    except (FileNotFoundError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
    resuming = args.resume and Path(cfg.OUTPUT_DIR, "last_checkpoint").exists()
    if not _weights_present(cfg.MODEL.WEIGHTS) and not resuming:
        raise SystemExit(f"error: MODEL.WEIGHTS file not found: {cfg.MODEL.WEIGHTS}")
    if cfg.MODEL.META_ARCHITECTURE in ("ZegFormer", "TwoStageCLIP", "PromptLearnerCLIP", "PixelLevelZS"):
        try:
            resolve_clip_path(cfg.MODEL.CLIP.NAME, cfg.MODEL.CLIP.WEIGHTS_DIR or None)
        except ClipWeightsNotFoundError as e:
            raise SystemExit(f"error: {e}") from None
    return cfg
