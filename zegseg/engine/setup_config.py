"""Building a frozen zegseg config from command-line arguments."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Optional, Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup

from ..config import add_zegseg_config

__all__ = ["get_zegseg_cfg", "resolve_device", "setup_cfg"]

logger = logging.getLogger(__name__)


def get_zegseg_cfg() -> CfgNode:
    """detectron2's default config plus every zegseg key."""
    cfg = get_cfg()
    add_zegseg_config(cfg)
    return cfg


def resolve_device(cfg: CfgNode) -> None:
    """Run on CPU when the config asks for CUDA on a machine without a GPU (logged, not silent)."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE is %r but no GPU is available: running on CPU", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"


def load_config(config_file: str, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """Merge a YAML file and ``KEY VALUE`` overrides into a fresh zegseg config (not frozen).

    Raises:
        FileNotFoundError: the config file does not exist.
    """
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    cfg = get_zegseg_cfg()
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts or []))
    resolve_device(cfg)
    return cfg


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Config for ``train_net.py``: file + overrides, CPU fallback, frozen, with detectron2's default setup."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg
