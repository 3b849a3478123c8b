"""Weights shipped with zegseg, and where inference finds its weights when MODEL.WEIGHTS is empty.

- ``toy_clip.pt``: ToyCLIP, the tiny CLIP of the toy world (``MODEL.CLIP.NAME: "ToyCLIP"``; rebuilt by
  ``tools/train_toy_clip.py``).
- ``toy_zegformer.pth`` (+ ``toy_zegformer.json``, its GZS3 numbers): the toy ZegFormer trained with
  configs/toy/zegformer.yaml, weights only; that config's ``MODEL.DEFAULT_WEIGHTS``. Rebuilt by
  ``tools/build_default_model.py``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from detectron2.config import CfgNode

__all__ = ["MODEL_ZOO_DIR", "MissingDefaultWeightsError", "inference_weights"]

logger = logging.getLogger(__name__)

MODEL_ZOO_DIR = Path(__file__).resolve().parent


class MissingDefaultWeightsError(FileNotFoundError):
    """MODEL.DEFAULT_WEIGHTS names a file that does not exist; the message says how to get it back."""


def inference_weights(cfg: CfgNode) -> str:
    """The weights an inference entry point (``Predictor``, the demo, the web app) loads: ``MODEL.WEIGHTS`` when
    set, else ``MODEL.DEFAULT_WEIGHTS`` (a bare file name means a file of this folder), else ``""``.

    Training and ``train_net.py --eval-only`` read ``MODEL.WEIGHTS`` only, so a training run never starts from the
    shipped model by accident.

    Raises:
        MissingDefaultWeightsError: the default weights are used but their file is missing.
    """
    if cfg.MODEL.WEIGHTS:
        return cfg.MODEL.WEIGHTS
    default = cfg.MODEL.DEFAULT_WEIGHTS
    if not default:
        return ""
    path = MODEL_ZOO_DIR / default if Path(default).name == default else Path(default).expanduser()
    if not path.is_file():
        raise MissingDefaultWeightsError(
            f"default weights not found: {path} (MODEL.DEFAULT_WEIGHTS); rebuild them with "
            "`python tools/build_default_model.py`, restore the file from git, or set MODEL.WEIGHTS"
        )
    logger.info("MODEL.WEIGHTS is empty: using the default weights %s (MODEL.DEFAULT_WEIGHTS)", path)
    return str(path)
