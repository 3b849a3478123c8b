"""Optimizer param groups, gradient clipping and LR schedules of zegseg.solver."""
import math

import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from zegseg.config import add_zegseg_config
from zegseg.solver import build_lr_scheduler, build_optimizer


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.query_embed = nn.Embedding(4, 8)
        self.no_object_embedding = nn.Parameter(torch.randn(1, 8))
        self.proj = nn.Linear(8, 8)
        self.norm = nn.LayerNorm(8)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        self.head = _Head()
        self.clip_model = nn.Linear(8, 8).requires_grad_(False)
        self.tied = self.head.proj  # the same parameters reachable twice


@pytest.fixture
def cfg():
    cfg = get_cfg()
    add_zegseg_config(cfg)
    cfg.SOLVER.BASE_LR = 1e-3
    cfg.SOLVER.WEIGHT_DECAY = 1e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1
    return cfg


def _hyper(optimizer):
    """{parameter: (lr, weight_decay)}, checking that no parameter is in two groups."""
    out = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            assert p not in out
            out[p] = (group["lr"], group["weight_decay"])
    return out


def test_param_groups(cfg):
    torch.manual_seed(0)
    model = _Model()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    hyper = _hyper(optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert set(hyper) == set(trainable)
    assert not any(p in hyper for p in model.clip_model.parameters())  # frozen: excluded
    conv, bn = model.backbone
    head = model.head
    assert hyper[conv.weight] == pytest.approx((1e-4, 1e-4))  # backbone lr x 0.1
    assert hyper[bn.weight] == pytest.approx((1e-4, 0.0))  # backbone norm: lr x 0.1, no decay
    assert hyper[head.proj.weight] == pytest.approx((1e-3, 1e-4))
    assert hyper[head.proj.bias] == pytest.approx((1e-3, 1e-4))
    assert hyper[head.norm.weight] == pytest.approx((1e-3, 0.0))
    assert hyper[head.query_embed.weight] == pytest.approx((1e-3, 0.0))
    assert hyper[head.no_object_embedding] == pytest.approx((1e-3, 1e-4))  # a bare Parameter: decayed (MaskFormer)


def test_embed_and_norm_weight_decay_keys(cfg):
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.3
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.2
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.MOMENTUM = 0.8
    model = _Model()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 for g in optimizer.param_groups)
    hyper = _hyper(optimizer)
    assert hyper[model.head.norm.weight][1] == 0.3
    assert hyper[model.head.query_embed.weight][1] == 0.2
    assert hyper[model.head.no_object_embedding][1] == cfg.SOLVER.WEIGHT_DECAY


def test_optimizer_errors(cfg):
    cfg.SOLVER.OPTIMIZER = "LAMB"
    with pytest.raises(ValueError, match="unknown optimizer 'LAMB'; known: ADAMW, SGD"):
        build_optimizer(cfg, _Model())
    cfg.SOLVER.OPTIMIZER = "ADAMW"
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(cfg, nn.Linear(2, 2).requires_grad_(False))


def _set_large_grads(model):
    torch.manual_seed(1)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.randn_like(p) * 10


def _total_norm(params):
    return torch.norm(torch.stack([p.grad.norm() for p in params])).item()


def test_full_model_gradient_clipping(cfg):
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.01
    model = _Model()
    optimizer = build_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.AdamW)
    params = [p for p in model.parameters() if p.requires_grad]
    _set_large_grads(model)
    before = {p: p.grad.clone() for p in params}
    total_before = _total_norm(params)
    assert total_before > 1.0
    optimizer.step()
    assert _total_norm(params) == pytest.approx(0.01, rel=1e-4)
    # one norm for the whole model: every gradient scaled by the same factor
    scale = 0.01 / total_before
    for p in params:
        assert torch.allclose(p.grad, before[p] * scale, rtol=1e-4, atol=1e-9)


def test_detectron2_value_clipping_still_available(cfg):
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "value"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    model = _Model()
    optimizer = build_optimizer(cfg, model)
    _set_large_grads(model)
    optimizer.step()
    assert all(p.grad.abs().max() <= 0.5 for p in model.parameters() if p.requires_grad)


def _lrs(scheduler, optimizer, iters):
    """LR of the first group at each of ``iters`` (scheduler stepped once per iteration, as detectron2 does)."""
    out = {}
    for it in range(max(iters) + 1):
        if it in iters:
            out[it] = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
    return out


def test_warmup_poly_schedule(cfg):
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.WARMUP_ITERS = 10
    cfg.SOLVER.WARMUP_FACTOR = 0.1
    cfg.SOLVER.WARMUP_METHOD = "linear"
    cfg.SOLVER.POLY_LR_POWER = 0.9
    model = nn.Linear(2, 2)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    lrs = _lrs(scheduler, optimizer, [0, 5, 10, 50, 99])

    def expected(it):
        alpha = min(it / 10, 1.0)
        warmup = 0.1 * (1 - alpha) + alpha
        return warmup * (1 - it / 100) ** 0.9

    for it, lr in lrs.items():
        assert lr == pytest.approx(expected(it), rel=1e-6), it
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.5**0.9)


def test_poly_schedule_constant_ending_and_backbone_group(cfg):
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupPolyLR"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MAX_ITER = 100
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.POLY_LR_POWER = 1.0
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.2
    model = _Model()
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    for _ in range(90):
        optimizer.step()
        scheduler.step()
    lrs = sorted({g["lr"] for g in optimizer.param_groups})
    assert lrs == pytest.approx([0.02, 0.2])  # (1 - 0.9) < 0.2: constant ending, backbone x 0.1


def test_detectron2_schedules_and_unknown_name(cfg):
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupCosineLR"
    cfg.SOLVER.BASE_LR = 1.0
    cfg.SOLVER.MAX_ITER = 10
    cfg.SOLVER.WARMUP_ITERS = 0
    optimizer = build_optimizer(cfg, nn.Linear(2, 2))
    lrs = _lrs(build_lr_scheduler(cfg, optimizer), optimizer, [0, 5])
    assert lrs[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)), rel=1e-6)
    cfg.SOLVER.LR_SCHEDULER_NAME = "WarmupLinearLR"
    with pytest.raises(ValueError, match="unknown LR scheduler 'WarmupLinearLR'; known: .*WarmupPolyLR"):
        build_lr_scheduler(cfg, optimizer)
