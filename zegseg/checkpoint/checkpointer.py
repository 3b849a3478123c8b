"""zegseg's checkpointer: detectron2's, made safe for untrusted files, strict about what it loads, and
robust to being killed while saving.

* Reading never runs code: ``.pth`` files go through ``torch.load(weights_only=True)``, ``.pkl`` files
  (Detectron/Caffe2 and converted torchvision backbones) through a restricted unpickler that allows only numpy
  arrays and plain containers (:mod:`.safe_pickle`).
* Loading checks that the weights fit the model (:mod:`.completeness`): complete for inference, evaluation and
  resuming; partial allowed when MODEL.WEIGHTS initialises a training run.
* Saving writes ``model_*.pth`` and ``last_checkpoint`` atomically (temporary file + rename).
* ``--resume`` falls back to the newest readable checkpoint, with a warning, when the one ``last_checkpoint``
  names cannot be read.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from typing import Any, Dict, List, Mapping, Optional
from urllib.parse import parse_qs

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.utils.file_io import PathManager
from torch import nn

from ..utils.atomic_io import atomic_write
from .completeness import check_loaded_keys
from .errors import MissingWeightsError, UnreadableCheckpointError, UnsafeCheckpointError
from .safe_pickle import UnsafePickleError, safe_pickle_load

__all__ = ["ZegsegCheckpointer", "read_weights_file"]

logger = logging.getLogger(__name__)


def _unreadable(path: str, reason: Any) -> UnreadableCheckpointError:
    if isinstance(reason, BaseException):
        reason = str(reason) or type(reason).__name__
    reason = str(reason).splitlines()[0].split(". ")[0]  # torch's messages go on for several sentences
    return UnreadableCheckpointError(f"cannot read weights {path} (truncated or corrupt?): {reason}")


def _torch_load(path: str) -> Any:
    """``torch.load`` that only rebuilds tensors and plain data (never ``weights_only=False``)."""
    try:
        with PathManager.open(path, "rb") as f:
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"GLOBAL ([\w.]+)", str(e))  # torch names the function or class it refused
        if named is None:
            raise _unreadable(path, "not a torch checkpoint") from None
        raise UnsafeCheckpointError(
            f"refusing weights {path}: it needs {named.group(1)}, which could run code; only files of tensors and "
            "plain data are loaded (nothing was run)"
        ) from None
    except RuntimeError as e:
        if "TorchScript" in str(e):
            raise UnreadableCheckpointError(
                f"weights {path} are a TorchScript archive (e.g. an OpenAI CLIP file), not model weights; CLIP "
                "files go to MODEL.CLIP.NAME"
            ) from None
        raise _unreadable(path, str(e).splitlines()[0]) from None
    except (EOFError, zipfile.BadZipFile, ValueError) as e:
        raise _unreadable(path, e) from None


def _read_pickle(path: str) -> Dict[str, Any]:
    """A ``.pkl`` weights file (Detectron2 model zoo, Detectron/Caffe2, converted torchvision), read safely."""
    try:
        with PathManager.open(path, "rb") as f:
            data = safe_pickle_load(f, encoding="latin1")
    except UnsafePickleError as e:
        raise UnsafeCheckpointError(f"refusing weights {path}: {e} (nothing was run)") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError) as e:
        raise _unreadable(path, e) from None
    if not isinstance(data, dict):
        raise UnreadableCheckpointError(f"weights {path} hold a {type(data).__name__}, not a dict of weights")
    if "model" in data and "__author__" in data:  # detectron2 model-zoo format
        return data
    if "blobs" in data:  # Detectron/Caffe2 detection models; ImageNet models have their weights at the top level
        data = data["blobs"]
    data = {k: v for k, v in data.items() if not str(k).endswith("_momentum")}
    return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}


def read_weights_file(path: str) -> Dict[str, Any]:
    """Read a weights file without running code: ``{"model": {name: tensor or array}, ...}``.

    ``.pkl``: restricted unpickler (numpy arrays and plain containers); ``.pyth`` (pycls) and everything else:
    ``torch.load(weights_only=True)``. A file holding a bare state dict is wrapped as ``{"model": ...}``.

    Raises:
        UnsafeCheckpointError: the file needs code to be unpickled (nothing was run).
        UnreadableCheckpointError: truncated, corrupt, or not a dict of tensors/arrays.
    """
    if path.endswith(".pkl"):
        data = _read_pickle(path)
    else:
        data = _torch_load(path)
        if not isinstance(data, dict):
            raise UnreadableCheckpointError(f"weights {path} hold a {type(data).__name__}, not a dict of weights")
        if path.endswith(".pyth"):  # pycls
            if "model_state" not in data:
                raise UnreadableCheckpointError(f"pycls weights {path} have no 'model_state'")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            data = {"model": state, "__author__": "pycls", "matching_heuristics": True}
        elif "model" not in data:
            data = {"model": data}
    state = data["model"]
    if not isinstance(state, Mapping):
        raise UnreadableCheckpointError(f"weights {path}: 'model' is a {type(state).__name__}, not a state dict")
    bad = [k for k, v in state.items() if not isinstance(v, (torch.Tensor, np.ndarray))]
    if bad:
        raise UnreadableCheckpointError(
            f"weights {path}: {bad[0]!r} is a {type(state[bad[0]]).__name__}, not a tensor (not a weights file?)"
        )
    return data


class ZegsegCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` that reads safely, checks completeness, saves atomically and
    resumes from the newest readable checkpoint.

    Args:
        model, save_dir, save_to_disk, checkpointables: as for ``DetectionCheckpointer``.
        for_training: MODEL.WEIGHTS initialises a training run (:meth:`resume_or_load` without a checkpoint to
            resume, or :meth:`load`): it may cover part of the model. Otherwise every load must be complete.
        partial_ok: MODEL.WEIGHTS_PARTIAL_OK: warn instead of failing on incomplete or mismatched weights.
    """

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        for_training: bool = False,
        partial_ok: bool = False,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.for_training = for_training
        self.partial_ok = partial_ok
        self._initialising = for_training

    # ------------------------------------------------------------------------------------------------ loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """Load ``path`` into the model (and the checkpointables); see the class docstring for the rules.

        Raises:
            MissingWeightsError: ``path`` is empty and the weights must be complete (unless ``partial_ok``, or the
                model is training-free: its ``needs_trained_weights`` is False).
            UnsafeCheckpointError, UnreadableCheckpointError, IncompatibleCheckpointError: one-line messages.
        """
        if not path:
            if self._initialising:
                logger.info("No MODEL.WEIGHTS: training from scratch")
                return {}
            if not getattr(self.model, "needs_trained_weights", True):
                logger.info("No MODEL.WEIGHTS: %s is training-free", type(self.model).__name__)
                return {}
            if not self.partial_ok:
                raise MissingWeightsError(
                    "no weights to load (MODEL.WEIGHTS is empty): set MODEL.WEIGHTS to a trained checkpoint, or "
                    "MODEL.WEIGHTS_PARTIAL_OK True to use the untrained model on purpose"
                )
            logger.warning("MODEL.WEIGHTS is empty: the model is untrained (MODEL.WEIGHTS_PARTIAL_OK is set)")
            return {}
        try:
            return super().load(path, checkpointables)
        finally:
            self._parsed_url_during_load = None  # detectron2 resets it only when loading succeeds

    def _load_file(self, filename: str) -> Dict[str, Any]:
        data = read_weights_file(filename)
        parsed = self._parsed_url_during_load
        queries = parse_qs(parsed.query) if parsed is not None else {}
        if queries.pop("matching_heuristics", "False") == ["True"]:
            data["matching_heuristics"] = True
        if queries:
            raise UnreadableCheckpointError(f"weights {filename}: unsupported URL query {queries}")
        return data

    def _load_model(self, checkpoint: Dict[str, Any]):
        path = self._loading_path
        incompatible = super()._load_model(checkpoint)
        check_loaded_keys(
            self.model,
            path,
            incompatible.missing_keys,
            incompatible.unexpected_keys,
            incompatible.incorrect_shapes,
            initialising=self._initialising,
            partial_ok=self.partial_ok,
        )
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        if self._initialising or self.partial_ok:  # complete loads were checked: nothing left to report
            super()._log_incompatible_keys(incompatible)

    @property
    def _loading_path(self) -> str:
        parsed = self._parsed_url_during_load
        return parsed.geturl() if parsed is not None else "<weights>"

    def resume_or_load(self, path: str, *, resume: bool = True) -> Dict[str, Any]:
        """Resume from the newest readable checkpoint of ``save_dir`` (``resume`` and ``last_checkpoint``
        exists), else load ``path`` (weights only: a training run's initialisation when ``for_training``)."""
        if resume and self.has_checkpoint():
            return self._resume()
        self._initialising = self.for_training
        return self.load(path, checkpointables=[])

    def _resume(self) -> Dict[str, Any]:
        tagged = self.get_checkpoint_file()
        others = [f for f in self.get_all_checkpoint_files() if os.path.abspath(f) != os.path.abspath(tagged)]
        candidates = [tagged] + sorted(others, key=os.path.getmtime, reverse=True)
        self._initialising = False  # a checkpoint of this run must fit the model completely
        try:
            for path in candidates:
                if not os.path.isfile(path):
                    logger.warning("last_checkpoint names %s, which does not exist", path)
                    continue
                try:
                    data = self.load(path)
                except UnreadableCheckpointError as e:
                    logger.warning("cannot resume from %s: %s", path, e)
                    continue
                if path != tagged:
                    logger.warning("resumed from %s, the newest readable checkpoint, instead of %s", path, tagged)
                return data
        finally:
            self._initialising = self.for_training
        raise UnreadableCheckpointError(
            f"cannot resume: no readable checkpoint in {self.save_dir} (last_checkpoint names {tagged}); "
            "train without --resume or into a new OUTPUT_DIR"
        )

    # ------------------------------------------------------------------------------------------------- saving
    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically, then point ``last_checkpoint`` at it (atomically too)."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"checkpoint name {name!r} must not contain a folder")
        logger.info("Saving checkpoint to %s", save_file)
        with atomic_write(save_file, "wb", fsync=True) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Point ``<save_dir>/last_checkpoint`` at ``last_filename_basename``, atomically."""
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w", encoding="utf-8") as f:
            f.write(last_filename_basename)
