"""Every YAML under configs/ merges into a zegseg config, and every model config builds on CPU."""
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import zegseg  # noqa: F401
from zegseg.engine.setup_config import load_config

CONFIGS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


def test_there_are_configs():
    assert any("toy" in c for c in CONFIGS) and any("coco_stuff" in c for c in CONFIGS)


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda p: str(Path(p).relative_to(Path(p).parents[1])))
def test_config_merges_and_builds(config_file, tiny_clip_path):
    # the tiny test CLIP has a 16-token context: fewer learned-prompt tokens than the real configs use
    opts = ["MODEL.DEVICE", "cpu", "MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.CLIP.PROMPT_LEARNER.N_CTX", "4"]
    cfg = load_config(config_file, opts)
    assert cfg.MODEL.CLIP.NAME == str(tiny_clip_path)
    if not cfg.MODEL.META_ARCHITECTURE or cfg.MODEL.META_ARCHITECTURE == "GeneralizedRCNN":
        return  # a base file: merged, nothing to build
    torch.manual_seed(0)
    model = build_model(cfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    needs_training = getattr(model, "needs_trained_weights", True)
    assert bool(trainable) == needs_training, "trainable parameters iff the model needs training"
    assert all(not p.requires_grad for p in model.clip_model.parameters())
    assert not any(k.startswith("clip_model.") for k in model.state_dict())
