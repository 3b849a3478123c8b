"""The two-stage ("simple baseline") reference configs hold the official code's hyper-parameters.

Each value below is a fact of MendelXu/zsseg.baseline: configs/coco-stuff-164k-171/Base-COCOStuff164K-171.yaml,
maskformer_R50_bs32_60k.yaml, configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_vild_prompt_bs32_60k.yaml
(and its R50 base), zero_shot_proposal_classification_learn_prompt_bs32_10k.yaml, mask_former/config.py
(add_our_config defaults), mask_former/modeling/clip_adapter/{adapter.py, utils.py}, mask_former/data/build.py,
mask_former/data/augmentations.py and train_net.py. A config edit that departs from the paper fails here; change a
value only together with the test, and say why in the commit.
"""
import pytest
import torch
from detectron2.modeling import build_backbone

import zegseg  # noqa: F401
from zegseg.engine.setup_config import load_config
from zegseg.modeling.clip.prompts import get_templates

TWO_STAGE = "configs/coco_stuff/two_stage_R101_vit16.yaml"
PROMPTS = "configs/coco_stuff/two_stage_prompt_learning_vit16.yaml"
VILD = [
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
]


@pytest.fixture(scope="module")
def cfg():
    return load_config(TWO_STAGE, ["MODEL.DEVICE", "cpu"])


@pytest.fixture(scope="module")
def prompt_cfg():
    return load_config(PROMPTS, ["MODEL.DEVICE", "cpu"])


def test_backbone_is_r101c(cfg):
    res = cfg.MODEL.RESNETS
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_deeplab_backbone" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert (res.DEPTH, res.STEM_TYPE, res.STEM_OUT_CHANNELS, res.STRIDE_IN_1X1) == (101, "deeplab", 128, False)
    assert list(res.RES5_MULTI_GRID) == [1, 2, 4] and (res.RES4_DILATION, res.RES5_DILATION) == (1, 1)
    assert res.NORM == "FrozenBN" and list(res.OUT_FEATURES) == ["res2", "res3", "res4", "res5"]
    assert (res.NUM_GROUPS, res.WIDTH_PER_GROUP, res.RES2_OUT_CHANNELS) == (1, 64, 256)
    assert tuple(cfg.MODEL.PIXEL_MEAN) == (123.675, 116.280, 103.530) and cfg.INPUT.FORMAT == "RGB"
    assert tuple(cfg.MODEL.PIXEL_STD) == (58.395, 57.120, 57.375)


def test_backbone_builds_the_deeplab_stem(cfg):
    torch.manual_seed(0)
    backbone = build_backbone(cfg)
    stem = backbone.stem
    assert [type(m).__name__ for m in (stem.conv1, stem.conv2, stem.conv3)] == ["Conv2d"] * 3
    assert (stem.conv1.out_channels, stem.conv2.out_channels, stem.conv3.out_channels) == (64, 64, 128)
    assert [block.conv2.dilation for block in backbone.res5] == [(1, 1), (2, 2), (4, 4)]
    assert {k: v.stride for k, v in backbone.output_shape().items()} == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


def test_two_stage_network_and_losses(cfg):
    assert cfg.MODEL.META_ARCHITECTURE == "TwoStageCLIP"
    assert cfg.MODEL.PIXEL_DECODER.CONVS_DIM == 256 and cfg.MODEL.PIXEL_DECODER.MASK_DIM == 256
    assert cfg.MODEL.PIXEL_DECODER.NORM == "GN"
    dec = cfg.MODEL.TRANSFORMER_DECODER
    assert (dec.IN_FEATURE, dec.NUM_QUERIES, dec.HIDDEN_DIM, dec.NHEADS) == ("res5", 100, 256, 8)
    assert (dec.DIM_FEEDFORWARD, dec.DEC_LAYERS, dec.DROPOUT, dec.PRE_NORM) == (2048, 6, 0.1, False)
    ts = cfg.MODEL.TWO_STAGE
    assert (ts.LOGIT_SCALE, ts.EMBED_HIDDEN_DIM) == (100.0, 1024)  # MLP 256 -> 1024 -> 512, 100 · cos
    crit = cfg.MODEL.CRITERION
    assert crit.DEEP_SUPERVISION is True and crit.NO_OBJECT_WEIGHT == 0.1
    assert (crit.CLASS_WEIGHT, crit.MASK_WEIGHT, crit.DICE_WEIGHT) == (1.0, 20.0, 1.0)


def test_two_stage_training_recipe(cfg):
    assert cfg.DATASETS.TRAIN == ("coco_stuff_train_seen_sem_seg",)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(int(x * 0.1 * 640) for x in range(5, 16))
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and cfg.INPUT.MAX_SIZE_TRAIN == 2560
    assert cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute" and tuple(cfg.INPUT.CROP.SIZE) == (640, 640)
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0 and cfg.INPUT.COLOR_AUG_SSD is True
    assert cfg.INPUT.SIZE_DIVISIBILITY == 640 and cfg.INPUT.DATASET_MAPPER_NAME == "mask_former_semantic"
    sol = cfg.SOLVER
    assert (sol.OPTIMIZER, sol.BASE_LR, sol.WEIGHT_DECAY, sol.BACKBONE_MULTIPLIER) == ("ADAMW", 1e-4, 1e-4, 0.1)
    assert (sol.WEIGHT_DECAY_EMBED, sol.WEIGHT_DECAY_NORM) == (0.0, 0.0)
    assert (sol.IMS_PER_BATCH, sol.MAX_ITER, sol.LR_SCHEDULER_NAME) == (32, 60000, "WarmupPolyLR")
    assert (sol.WARMUP_ITERS, sol.WARMUP_FACTOR, sol.POLY_LR_POWER, sol.POLY_LR_CONSTANT_ENDING) == (0, 1.0, 0.9, 0.0)
    clipping = sol.CLIP_GRADIENTS
    assert clipping.ENABLED is True
    assert (clipping.CLIP_TYPE, clipping.CLIP_VALUE, clipping.NORM_TYPE) == ("full_model", 0.01, 2.0)
    assert sol.AMP.ENABLED is False  # zsseg.baseline never enables mixed precision


def test_two_stage_inference(cfg):
    assert cfg.DATASETS.TEST == ("coco_stuff_val_all_sem_seg",)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (640, 2560)
    clip = cfg.MODEL.CLIP
    assert clip.NAME == "ViT-B/16"
    # one prompt set (one adapter) for the proposal classifier and CLIP, at training and at inference
    assert get_templates(clip.TEMPLATES) == VILD
    assert clip.TEST_TEMPLATES in ("", clip.TEMPLATES) and clip.REGION_TEMPLATES in ("", clip.TEMPLATES)
    assert clip.PROMPT_LEARNER.WEIGHTS == ""
    assert (clip.CROP_PROCEDURE, clip.CROP_STYLE, clip.MASK_THRESHOLD, clip.CROP_EXPAND_RATIO) == (
        "simple_baseline", "cropmask", 0.5, 1.0
    )
    assert clip.LOGIT_SCALE == 100.0  # get_sim_logits(temperature=100), not CLIP's learned scale
    assert clip.AMP is False and cfg.TEST.AMP is False  # fp32 (the official loader casts CLIP to fp32)
    assert clip.HALF_ON_GPU is False
    assert cfg.MODEL.TWO_STAGE.ENSEMBLE_WEIGHT == 0.8  # CLIP_ENSEMBLE_WEIGHT (add_our_config default)
    assert cfg.MODEL.TWO_STAGE.ENSEMBLE_MODE == "seen_unseen"  # trained (seen) classes get w, the others 1 - w
    assert cfg.TEST.RESIZE_MASKS_FIRST is False  # the class map is built, then resized to the output
    assert clip.FAST_MODE.ENABLED is False
    assert cfg.TEST.VOCABULARY == [] and cfg.TEST.UNSEEN_CLASSES == []


def test_prompt_learning_recipe(prompt_cfg):
    cfg = prompt_cfg
    assert cfg.MODEL.META_ARCHITECTURE == "PromptLearnerCLIP" and cfg.MODEL.WEIGHTS == ""
    clip = cfg.MODEL.CLIP
    assert clip.NAME == "ViT-B/16" and clip.PROMPT_LEARNER.N_CTX == 16  # PROMPT_SHAPE (16, 0)
    assert clip.PROMPT_LEARNER.MASK_FILL == "normalized_mean" and clip.LOGIT_SCALE == 100.0
    assert clip.CROP_EXPAND_RATIO == 1.0 and clip.AMP is False and clip.HALF_ON_GPU is False
    assert cfg.DATASETS.TRAIN == ("coco_stuff_train_seen_sem_seg",)
    assert (cfg.DATASETS.SAMPLE_PER_CLASS, cfg.DATASETS.SAMPLE_SEED) == (32, 0)
    assert cfg.INPUT.DATASET_MAPPER_NAME == "segment_crop" and cfg.INPUT.FORMAT == "RGB"
    seg = cfg.INPUT.SEGMENT_CROP
    assert tuple(seg.SIZE) == (244, 224)  # RandomResizedCrop((224, 244)) resizes to new_h=244, new_w=224
    assert tuple(seg.SCALE) == (0.08, 1.0) and seg.RATIO[0] == 0.75 and seg.RATIO[1] == pytest.approx(4 / 3)
    assert cfg.INPUT.RANDOM_FLIP == "horizontal"
    sol = cfg.SOLVER
    assert (sol.OPTIMIZER, sol.BASE_LR, sol.MOMENTUM, sol.NESTEROV, sol.WEIGHT_DECAY) == ("SGD", 0.02, 0.9, False, 5e-4)
    assert (sol.IMS_PER_BATCH, sol.MAX_ITER, sol.LR_SCHEDULER_NAME) == (32, 16000, "WarmupCosineLR")
    assert (sol.WARMUP_METHOD, sol.WARMUP_FACTOR, sol.WARMUP_ITERS) == ("constant", 0.005, 100)
    clipping = sol.CLIP_GRADIENTS  # inherited from the official base config
    assert clipping.ENABLED is True
    assert (clipping.CLIP_TYPE, clipping.CLIP_VALUE, clipping.NORM_TYPE) == ("full_model", 0.01, 2.0)
    assert sol.AMP.ENABLED is False
