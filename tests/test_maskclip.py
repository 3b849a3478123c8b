"""MaskCLIP: the dense classifier and its refinements on hand-built inputs; the training-free model end to end."""
import argparse

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from zegseg.checkpoint import ZegsegCheckpointer
from zegseg.engine import preflight
from zegseg.engine.setup_config import load_config
from zegseg.modeling.clip.dense_features import encode_dense
from zegseg.modeling.clip.region_encoder import normalize_for_clip
from zegseg.modeling.dense_clip import MaskCLIPHead, cosine_logits, key_smoothing, prompt_denoising

CONFIG = "configs/toy/maskclip.yaml"


def test_cosine_logits_are_raw_cosines():
    features = torch.tensor([[3.0, 4.0], [0.0, -2.0]]).T.reshape(1, 2, 1, 2)  # positions (3, 4) and (0, -2)
    text = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    expected = torch.tensor([[0.6, 0.0], [0.8, -1.0]]).reshape(1, 2, 1, 2)  # (class, position)
    torch.testing.assert_close(cosine_logits(features, text), expected)


def test_prompt_denoising_drops_classes_no_position_is_sure_of():
    # softmax(100 · logits): class 0 is sure at position 0 (about 1); at position 1 classes 1 and 2 nearly tie, their
    # peaks are sigmoid(±0.01) = 0.5025 and 0.4975
    logits = torch.tensor([[0.9, 0.1], [0.1, 0.5], [0.2, 0.4999]]).reshape(1, 3, 1, 2)
    out = prompt_denoising(logits, 0.5)
    assert out[0, 2].eq(-100).all()
    torch.testing.assert_close(out[0, :2], logits[0, :2])
    out = prompt_denoising(logits, 0.6)
    assert out[0, 1:].eq(-100).all()
    torch.testing.assert_close(out[0, 0], logits[0, 0])


def test_key_smoothing_matches_the_official_formula():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 2, 2) * 0.05
    keys = torch.randn(1, 4, 2, 2)
    out = key_smoothing(logits, keys, threshold=0.9)
    probs = (100 * logits).softmax(1).reshape(3, 4).T  # (HW, K)
    k = keys.reshape(4, 4).T  # (HW, C)
    k = k / k.norm(dim=0, keepdim=True)  # the official F.normalize(k) on (N, HW, C): unit norm over positions
    smoothed = (k @ k.T) @ probs
    for p in range(4):  # position by position, as the official masked assignment
        expected = smoothed[p] if probs[p].max() < 0.9 else probs[p]
        torch.testing.assert_close(out[0, :, p // 2, p % 2], expected)
    assert not torch.allclose(out, (100 * logits).softmax(1))  # something was smoothed


def test_head_options_and_errors():
    head = MaskCLIPHead(key_smoothing_threshold=0.0, prompt_denoising_threshold=0.0)
    features, keys, text = torch.randn(2, 8, 3, 3), torch.randn(2, 5, 3, 3), torch.randn(4, 8)
    torch.testing.assert_close(head(features, keys, text), cosine_logits(features, text))
    both = MaskCLIPHead(key_smoothing_threshold=1.0, prompt_denoising_threshold=0.5)(features, keys, text)
    torch.testing.assert_close(both, key_smoothing(prompt_denoising(cosine_logits(features, text), 0.5), keys, 1.0))
    with pytest.raises(ValueError, match="key smoothing threshold"):
        MaskCLIPHead(key_smoothing_threshold=1.5)


@pytest.fixture(scope="module")
def maskclip_cfg(tiny_clip_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("emb")
    return load_config(CONFIG, ["MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.DEVICE", "cpu",
                                "MODEL.CLIP.EMBED_CACHE_DIR", str(cache)])


def test_maskclip_end_to_end_equals_dense_cosine(maskclip_cfg):
    """The tiny ViT CLIP (patch 8) on a 36 x 44 image: padded to 40 x 48 with CLIP's mean colour, a 5 x 6 grid of
    cosines, resized to the padded input, cropped, resized to the requested output."""
    from detectron2.modeling import build_model

    model = build_model(maskclip_cfg).eval()
    assert type(model).__name__ == "MaskCLIP" and len(model.test_class_names) == 35
    assert not model.state_dict()  # nothing to save: CLIP is reloaded from its own file
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 36, 44), dtype=torch.uint8)
    out = model([{"image": image, "height": 18, "width": 22}])[0]["sem_seg"]
    assert out.shape == (35, 18, 22)

    x = F.pad(normalize_for_clip(image, "BGR"), (0, 4, 0, 4))[None]
    scores = cosine_logits(encode_dense(model.clip_model, x), model.test_text_embeddings)
    assert scores.shape == (1, 35, 5, 6)
    full = F.interpolate(scores, size=(40, 48), mode="bilinear", align_corners=False)[:, :, :36, :44]
    expected = F.interpolate(full, size=(18, 22), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)

    model.train()
    with pytest.raises(RuntimeError, match="training-free"):
        model([{"image": image}])


def test_maskclip_needs_no_weights_but_refuses_training(maskclip_cfg, tiny_clip_path):
    from detectron2.modeling import build_model

    model = build_model(maskclip_cfg)
    assert ZegsegCheckpointer(model).load("") == {}  # a trained model would raise MissingWeightsError here
    opts = ["MODEL.CLIP.NAME", str(tiny_clip_path)]
    args = argparse.Namespace(config_file=CONFIG, opts=opts, resume=False, eval_only=True)
    assert preflight(args).MODEL.META_ARCHITECTURE == "MaskCLIP"
    args.eval_only = False
    with pytest.raises(SystemExit, match="MaskCLIP is training-free: evaluate it with --eval-only"):
        preflight(args)


def test_coco_stuff_config_pins_the_official_inference():
    from zegseg.modeling.clip.prompts import get_templates

    cfg = load_config("configs/coco_stuff/maskclip_vit16.yaml")
    assert cfg.MODEL.META_ARCHITECTURE == "MaskCLIP" and cfg.MODEL.WEIGHTS == "" and cfg.DATASETS.TRAIN == ()
    assert cfg.MODEL.CLIP.NAME == "ViT-B/16" and cfg.MODEL.CLIP.TEMPLATES == "maskclip85"
    templates = get_templates("maskclip85")
    assert len(set(templates)) == 85 and templates[-1] == "this is one {} in the scene."
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.MODEL.MASKCLIP.KEY_SMOOTHING_THRESH) == (512, 0.0)
    assert cfg.MODEL.MASKCLIP.PROMPT_DENOISING_THRESH == 0.0


def test_predictor_runs_maskclip_without_weights_and_without_the_untrained_warning(maskclip_cfg, caplog):
    from zegseg import Predictor

    with caplog.at_level("WARNING", logger="zegseg.predictor"):
        predictor = Predictor(maskclip_cfg, vocabulary=["a", "b"])
    assert "untrained" not in caplog.text
    assert predictor(np.zeros((20, 24, 3), dtype=np.uint8)).labels.shape == (20, 24)
