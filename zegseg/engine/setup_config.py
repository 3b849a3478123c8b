"""Building a frozen zegseg config from command-line arguments."""
from __future__ import annotations

import argparse
import difflib
import logging
from pathlib import Path
from typing import List, Optional, Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_zegseg_config

__all__ = ["ConfigError", "get_zegseg_cfg", "load_config", "resolve_device", "setup_cfg"]

logger = logging.getLogger(__name__)


def get_zegseg_cfg() -> CfgNode:
    """detectron2's default config plus every zegseg key."""
    cfg = get_cfg()
    add_zegseg_config(cfg)
    return cfg


_warned_devices: set = set()  # CUDA devices asked for without a GPU, warned about once per process


def resolve_device(cfg: CfgNode) -> None:
    """Set MODEL.DEVICE to a device that exists: "auto" → "cuda" when a GPU is available, else "cpu" (silently);
    "cuda..." on a machine without a GPU → "cpu", with a warning (once per process)."""
    device = cfg.MODEL.DEVICE
    if device == "auto":
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    elif device.startswith("cuda") and not torch.cuda.is_available():
        if device not in _warned_devices:
            _warned_devices.add(device)
            logger.warning("MODEL.DEVICE is %r but no GPU is available: running on CPU", device)
        cfg.MODEL.DEVICE = "cpu"


class ConfigError(ValueError):
    """A config file or ``KEY VALUE`` override that cannot be used; the message is one line naming the file or key."""


def _all_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, CfgNode):
            keys += _all_keys(v, f"{prefix}{k}.")
    return keys


def _yaml_error(config_file: str, e: yaml.YAMLError) -> ConfigError:
    mark = getattr(e, "problem_mark", None)
    where = f"{mark.name}, line {mark.line + 1}" if mark is not None else config_file
    if isinstance(e, yaml.constructor.ConstructorError) and "tag" in str(e.problem):
        tag = str(e.problem).split("tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        return ConfigError(
            f"{where}: refusing the YAML tag {tag}: configs are read with yaml.safe_load, which never runs code "
            "(write plain values instead)"
        )
    return ConfigError(f"{where}: not valid YAML ({e.problem})")


def _merge_file(cfg: CfgNode, config_file: str) -> None:
    """``cfg.merge_from_file`` with safe YAML only (``_BASE_`` files too); every failure becomes a ConfigError."""
    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except yaml.YAMLError as e:
        raise _yaml_error(config_file, e) from None
    except FileNotFoundError as e:  # a _BASE_ file
        raise ConfigError(f"{config_file}: cannot read a _BASE_ config: {e.filename or e}") from None
    except KeyError as e:
        message = e.args[0] if e.args else str(e)
        key = str(message).rsplit(":", 1)[-1].strip()
        close = difflib.get_close_matches(key, _all_keys(cfg), n=1, cutoff=0.8)
        hint = f"; did you mean {close[0]}?" if close else "; remove it or check its spelling"
        raise ConfigError(f"{config_file}: unknown config key {key}{hint}") from None
    except (TypeError, AttributeError):  # an empty file or a top level that is not a mapping
        raise ConfigError(
            f"{config_file}: not a config; it (and each _BASE_ file) must be a YAML mapping of KEY: value"
        ) from None
    except (ValueError, AssertionError) as e:
        raise ConfigError(f"{config_file}: {e}") from None


def load_config(config_file: str, opts: Optional[Sequence[str]] = None) -> CfgNode:
    """Merge a YAML file and ``KEY VALUE`` overrides into a fresh zegseg config (not frozen).

    The file and its ``_BASE_`` chain are parsed with ``yaml.safe_load``: a config that needs Python tags
    (``!!python/...``, which detectron2's default unsafe loading would execute) is refused.

    Raises:
        FileNotFoundError: the config file does not exist.
        ConfigError: the file is not valid (safe) YAML, names an unknown key or a value of the wrong type, or an
            override is bad; the message is one line naming the file or the override.
    """
    if not Path(config_file).is_file():
        raise FileNotFoundError(f"config file not found: {config_file}")
    cfg = get_zegseg_cfg()
    _merge_file(cfg, config_file)
    try:
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError, ValueError, TypeError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise ConfigError(f"bad config override in {list(opts or [])}: {message}") from None
    resolve_device(cfg)
    return cfg


def setup_cfg(args: argparse.Namespace) -> CfgNode:
    """Config for ``train_net.py``: file + overrides, CPU fallback, frozen, with detectron2's default setup."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="zegseg")  # zegseg's lines in log.txt too
    return cfg
