"""Whether loaded weights cover the model: the rule that tells a complete, a partial and a wrong checkpoint apart.

* Inference, evaluation and resuming need **complete** weights: every parameter and buffer of the model's state
  dict is in the file with its shape, and the file holds nothing else.
* Initialising a training run (MODEL.WEIGHTS without ``--resume``) may load **part** of the model, e.g. an
  ImageNet backbone: missing parameters keep their fresh initialisation, unused ones in the file are ignored
  (both logged); a parameter of another shape is still an error.
* ``partial_ok`` (MODEL.WEIGHTS_PARTIAL_OK) turns those errors into warnings.
* A file that gives the model **no** parameter at all is always an error: it belongs to another model.

Parameters that are legitimately absent never count as missing: the frozen CLIP (kept out of zegseg's state
dicts and reloaded from its own file), non-persistent buffers, BatchNorm's ``num_batches_tracked`` counters,
and parameters shared under several names (detectron2's rule).
"""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

from fvcore.common.checkpoint import _filter_reused_missing_keys
from torch import nn

from .errors import IncompatibleCheckpointError

__all__ = ["check_loaded_keys"]

logger = logging.getLogger(__name__)

PARTIAL_FLAG = "MODEL.WEIGHTS_PARTIAL_OK True"


def _first(keys: Sequence[str]) -> str:
    return f"{keys[0]}" + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")


def check_loaded_keys(
    model: nn.Module,
    path: str,
    missing: Sequence[str],
    unexpected: Sequence[str],
    incorrect_shapes: Sequence[Tuple[str, Tuple[int, ...], Tuple[int, ...]]],
    *,
    initialising: bool,
    partial_ok: bool,
) -> None:
    """Raise when the weights loaded from ``path`` do not fit ``model`` under the rule above.

    Args:
        model: the model the weights went into.
        path: the weights file (named in the message).
        missing: state-dict keys of the model that the file did not provide.
        unexpected: keys of the file that the model does not have.
        incorrect_shapes: (key, shape in the file, shape in the model) of skipped parameters.
        initialising: a training run's initialisation (partial weights allowed).
        partial_ok: warn instead of raising.
    Raises:
        IncompatibleCheckpointError: one line naming the file, the first offending keys and the fix.
    """
    expected = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    missing = [k for k in _filter_reused_missing_keys(model, list(missing)) if not k.endswith("num_batches_tracked")]
    not_loaded = set(missing) | {k for k, _, _ in incorrect_shapes}
    loaded = sum(k not in not_loaded for k in expected)
    if expected and loaded <= 0:
        hint = f"; the file's keys look like {_first(list(unexpected))}" if unexpected else ""
        raise IncompatibleCheckpointError(
            f"weights {path} give this model none of its {len(expected)} parameters: they belong to another model "
            f"(or are not model weights){hint}"
        )
    problems: List[str] = []
    if incorrect_shapes:
        key, in_file, in_model = incorrect_shapes[0]
        more = f" (and {len(incorrect_shapes) - 1} more)" if len(incorrect_shapes) > 1 else ""
        problems.append(f"{key} has shape {tuple(in_file)} in the file but {tuple(in_model)} in the model{more}")
    if not initialising:
        if missing:
            problems.append(f"{len(missing)} of the model's {len(expected)} parameters missing ({_first(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected keys ({_first(list(unexpected))})")
    elif missing or unexpected:
        logger.info(
            "Initialised %d of %d parameters from %s; %d start from scratch, %d keys of the file are unused",
            loaded, len(expected), path, len(missing), len(unexpected),
        )
    if not problems:
        return
    message = f"weights {path} do not fit this model: " + "; ".join(problems)
    if partial_ok:
        logger.warning("%s (loaded anyway: MODEL.WEIGHTS_PARTIAL_OK is set)", message)
        return
    use = "train or pick weights of this config" if not initialising else "pick weights of this architecture"
    raise IncompatibleCheckpointError(f"{message}. {use.capitalize()}, or set {PARTIAL_FLAG} to load them anyway")
