"""Helpers shared by the model tests: tiny-model config overrides and a plain optimisation loop."""
from typing import Dict, List

import torch

# One CLIP view per query: the toy ZegFormer config's connected-component segments and leftover regions off, for
# tests that count crops or compute the ensemble by hand (both options have tests of their own, test_leftover.py)
ONE_VIEW_PER_QUERY = ["MODEL.CLIP.COMPONENT_MIN_AREA", "0.0", "MODEL.CLIP.LEFTOVER_MIN_AREA", "0.0"]

# A ZegFormer-family model small enough for CPU tests that run inference on real-sized images.
TINY_INFERENCE_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.DEFAULT_WEIGHTS", "",  # untrained: the shipped toy ZegFormer does not fit the tiny model
    # the from-scratch quarter-width ResNet these random-weight tests were written for (the toy ZegFormer itself
    # starts from ToyCLIP's image tower)
    "MODEL.BACKBONE.NAME", "build_resnet_backbone",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.TRANSFORMER_DECODER.NUM_QUERIES", "4",
    "MODEL.TRANSFORMER_DECODER.DEC_LAYERS", "1",
    "MODEL.TRANSFORMER_DECODER.HIDDEN_DIM", "32",
    "MODEL.TRANSFORMER_DECODER.NHEADS", "2",
    "MODEL.TRANSFORMER_DECODER.DIM_FEEDFORWARD", "64",
    "MODEL.PIXEL_DECODER.CONVS_DIM", "32",
    "MODEL.PIXEL_DECODER.MASK_DIM", "32",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "128",
]


def train_steps(model: torch.nn.Module, batch: List[Dict], steps: int = 20, lr: float = 1e-3) -> List[float]:
    """Run ``steps`` AdamW steps of ``model`` (training mode) on one batch; returns the total loss per step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    totals = []
    for _ in range(steps):
        loss = sum(model(batch).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    return totals
