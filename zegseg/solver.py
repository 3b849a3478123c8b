"""Optimizer and learning-rate schedule of zegseg models (MaskFormer's recipe on detectron2's solver)."""
from __future__ import annotations

import itertools
import logging
from typing import Any, Dict, List, Set, Type

import torch
from detectron2.config import CfgNode
from detectron2.projects.deeplab import build_lr_scheduler as build_deeplab_lr_scheduler
from detectron2.solver import LRScheduler
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = ["build_lr_scheduler", "build_optimizer", "get_param_groups", "with_full_model_gradient_clipping"]

logger = logging.getLogger(__name__)

_NORM_TYPES = (
    nn.modules.batchnorm._BatchNorm,
    nn.GroupNorm,
    nn.modules.instancenorm._InstanceNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
)
_OPTIMIZERS = ("ADAMW", "SGD")
_LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR", "WarmupPolyLR")


def get_param_groups(
    model: nn.Module,
    *,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_embed: float,
    backbone_multiplier: float,
) -> List[Dict[str, Any]]:
    """Optimizer parameter groups of the trainable parameters of ``model``.

    - parameters with ``requires_grad=False`` (e.g. a frozen CLIP) are left out;
    - parameters under a sub-module named ``backbone`` (any depth) get ``base_lr * backbone_multiplier``;
    - parameters of normalisation layers get ``weight_decay_norm``;
    - weights of ``nn.Embedding`` modules (the queries) get ``weight_decay_embed``; a bare ``nn.Parameter`` such
      as the no-object embedding gets ``weight_decay``, as in the official MaskFormer / ZegFormer optimizer;
    - everything else gets ``base_lr`` and ``weight_decay``.

    Groups with equal hyper-parameters are merged (detectron2's ``reduce_param_groups``).
    """
    groups: List[Dict[str, Any]] = []
    seen: Set[nn.Parameter] = set()
    for module_name, module in model.named_modules():
        in_backbone = "backbone" in module_name.split(".")
        for param in module.parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            lr = base_lr * backbone_multiplier if in_backbone else base_lr
            if isinstance(module, _NORM_TYPES):
                decay = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                decay = weight_decay_embed
            else:
                decay = weight_decay
            groups.append({"params": [param], "lr": lr, "weight_decay": decay})
    return reduce_param_groups(groups)


def with_full_model_gradient_clipping(
    optimizer_type: Type[torch.optim.Optimizer], max_norm: float, norm_type: float = 2.0
) -> Type[torch.optim.Optimizer]:
    """A subclass of ``optimizer_type`` whose ``step`` first clips the norm of all parameters' gradients taken
    together (one norm over the whole model, as in DETR / MaskFormer) to ``max_norm``."""

    class FullModelGradientClipping(optimizer_type):
        def step(self, closure=None):
            params = itertools.chain.from_iterable(group["params"] for group in self.param_groups)
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type=norm_type)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = f"{optimizer_type.__name__}FullModelGradientClipping"
    FullModelGradientClipping.__qualname__ = FullModelGradientClipping.__name__
    return FullModelGradientClipping


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by SOLVER.OPTIMIZER over :func:`get_param_groups`, with gradient clipping.

    With SOLVER.CLIP_GRADIENTS.ENABLED, CLIP_TYPE "full_model" clips the norm of all gradients together to
    CLIP_VALUE; other clip types ("value", "norm": per parameter) are detectron2's.

    Raises:
        ValueError: unknown optimizer, or a model without trainable parameters.
    """
    solver = cfg.SOLVER
    name = solver.OPTIMIZER.upper()
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {solver.OPTIMIZER!r}; known: {', '.join(_OPTIMIZERS)}")
    params = get_param_groups(
        model,
        base_lr=solver.BASE_LR,
        weight_decay=solver.WEIGHT_DECAY,
        weight_decay_norm=solver.WEIGHT_DECAY_NORM,
        weight_decay_embed=solver.WEIGHT_DECAY_EMBED,
        backbone_multiplier=solver.BACKBONE_MULTIPLIER,
    )
    if not params:
        raise ValueError("the model has no trainable parameters (all have requires_grad=False)")
    num_params = sum(p.numel() for g in params for p in g["params"])
    logger.info("Optimizer %s over %d trainable parameters in %d groups", name, num_params, len(params))

    optimizer_type: Type[torch.optim.Optimizer] = torch.optim.AdamW if name == "ADAMW" else torch.optim.SGD
    clip = solver.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        optimizer_type = with_full_model_gradient_clipping(optimizer_type, clip.CLIP_VALUE, clip.NORM_TYPE)
    else:
        optimizer_type = maybe_add_gradient_clipping(cfg, optimizer_type)
    if name == "SGD":
        return optimizer_type(params, lr=solver.BASE_LR, momentum=solver.MOMENTUM, nesterov=solver.NESTEROV)
    return optimizer_type(params, lr=solver.BASE_LR)


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer) -> LRScheduler:
    """detectron2's schedulers plus "WarmupPolyLR" (detectron2's DeepLab project), by SOLVER.LR_SCHEDULER_NAME.

    Raises:
        ValueError: unknown scheduler name.
    """
    name = cfg.SOLVER.LR_SCHEDULER_NAME
    if name not in _LR_SCHEDULERS:
        raise ValueError(f"unknown LR scheduler {name!r}; known: {', '.join(_LR_SCHEDULERS)}")
    return build_deeplab_lr_scheduler(cfg, optimizer)
