"""The ZegFormer reference config holds the official code's hyper-parameters.

Each value below is a fact of dingjiansw101/ZegFormer (configs/coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff.yaml,
its _gzss_eval.yaml, Base-COCOStuff-171.yaml, mask_former/config.py and mask_former_model.py). A config edit that
departs from the paper fails here; change a value only together with the test, and say why in the commit.
"""
import pytest

import zegseg  # noqa: F401
from zegseg.engine.setup_config import load_config
from zegseg.modeling.clip.prompts import get_templates

ZEGFORMER = "configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml"


@pytest.fixture(scope="module")
def cfg():
    return load_config(ZEGFORMER, ["MODEL.DEVICE", "cpu"])


def test_zegformer_network(cfg):
    assert cfg.MODEL.META_ARCHITECTURE == "ZegFormer"
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone" and cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.MODEL.RESNETS.STRIDE_IN_1X1 is False and cfg.MODEL.RESNETS.STEM_OUT_CHANNELS == 64
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert tuple(cfg.MODEL.PIXEL_MEAN) == (123.675, 116.280, 103.530) and cfg.INPUT.FORMAT == "RGB"
    assert tuple(cfg.MODEL.PIXEL_STD) == (58.395, 57.120, 57.375)
    assert cfg.MODEL.PIXEL_DECODER.CONVS_DIM == 256 and cfg.MODEL.PIXEL_DECODER.MASK_DIM == 256
    assert cfg.MODEL.PIXEL_DECODER.NORM == "GN"
    dec = cfg.MODEL.TRANSFORMER_DECODER
    assert (dec.IN_FEATURE, dec.NUM_QUERIES, dec.HIDDEN_DIM, dec.NHEADS) == ("res5", 100, 256, 8)
    assert (dec.DIM_FEEDFORWARD, dec.DEC_LAYERS, dec.DROPOUT, dec.PRE_NORM) == (2048, 6, 0.1, False)
    assert cfg.MODEL.CLIP.NAME == "ViT-B/16"
    assert cfg.MODEL.ZEGFORMER.TEMPERATURE == 0.01  # logit scale 100 of the segment classifier


def test_zegformer_losses(cfg):
    crit = cfg.MODEL.CRITERION
    assert crit.DEEP_SUPERVISION is True and crit.NO_OBJECT_WEIGHT == 0.1
    assert (crit.CLASS_WEIGHT, crit.MASK_WEIGHT, crit.DICE_WEIGHT) == (1.0, 20.0, 1.0)


def test_zegformer_training_recipe(cfg):
    assert cfg.DATASETS.TRAIN == ("coco_stuff_train_seen_sem_seg",)
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == tuple(int(x * 0.1 * 640) for x in range(5, 16))
    assert cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "choice" and cfg.INPUT.MAX_SIZE_TRAIN == 2560
    assert cfg.INPUT.CROP.ENABLED and cfg.INPUT.CROP.TYPE == "absolute" and tuple(cfg.INPUT.CROP.SIZE) == (640, 640)
    assert cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA == 1.0 and cfg.INPUT.COLOR_AUG_SSD is True
    assert cfg.INPUT.SIZE_DIVISIBILITY == 640
    sol = cfg.SOLVER
    assert (sol.OPTIMIZER, sol.BASE_LR, sol.WEIGHT_DECAY, sol.BACKBONE_MULTIPLIER) == ("ADAMW", 1e-4, 1e-4, 0.1)
    assert sol.WEIGHT_DECAY_EMBED == 0.0
    assert (sol.IMS_PER_BATCH, sol.MAX_ITER, sol.LR_SCHEDULER_NAME) == (32, 60000, "WarmupPolyLR")
    assert (sol.WARMUP_ITERS, sol.WARMUP_FACTOR, sol.POLY_LR_POWER) == (0, 1.0, 0.9)
    clipping = sol.CLIP_GRADIENTS
    assert clipping.ENABLED and clipping.CLIP_TYPE == "full_model" and clipping.CLIP_VALUE == 0.01
    assert clipping.NORM_TYPE == 2.0
    assert sol.AMP.ENABLED is True  # the official training configs enable AMP
    assert get_templates(cfg.MODEL.CLIP.TEMPLATES) == [
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
        "A photo of a {} in the scene",
    ]


def test_zegformer_inference(cfg):
    assert cfg.DATASETS.TEST == ("coco_stuff_val_all_sem_seg",)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (640, 2560)
    assert get_templates(cfg.MODEL.CLIP.TEST_TEMPLATES) == ["A photo of a {} in the scene"]  # _gzss_eval.yaml
    region = get_templates(cfg.MODEL.CLIP.REGION_TEMPLATES)
    assert len(region) == 32 and region[0] == "a bad photo of the {}."
    assert region[-1] == "This is one masked {} in the scene"
    zf = cfg.MODEL.ZEGFORMER
    assert zf.CLIP_IMAGE_BRANCH and zf.ENSEMBLE_MODE == "seen_unseen"
    assert zf.ENSEMBLE_LAMBDA == pytest.approx(2 / 3, abs=1e-12)
    assert zf.MEAN_SEEN_CLIP is True and zf.CLIP_NO_OBJECT is True and zf.CALIBRATION_GAMMA == 0.1
    clip = cfg.MODEL.CLIP
    assert (clip.CROP_PROCEDURE, clip.CROP_STYLE, clip.MASK_THRESHOLD) == ("zegformer", "cropmask", 0.5)
    assert clip.LOGIT_SCALE <= 0  # CLIP's own logit_scale.exp()
    assert clip.HALF_ON_GPU is True and clip.AMP is True  # the official clip.load(jit=False) gives fp16 on a GPU
    assert clip.FAST_MODE.ENABLED is False and clip.PROMPT_LEARNER.WEIGHTS == ""
    assert cfg.TEST.AMP is False and cfg.TEST.RESIZE_MASKS_FIRST is False
    assert cfg.TEST.VOCABULARY == [] and cfg.TEST.UNSEEN_CLASSES == []
