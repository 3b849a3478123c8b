"""zegseg's config keys, added to a detectron2 config by :func:`add_zegseg_config`.

Every key zegseg reads is defined here with its default and a one-line comment. Modules read these keys only
in their ``from_config`` class methods.
"""
from detectron2.config import CfgNode as CN

__all__ = ["add_zegseg_config"]


def add_zegseg_config(cfg: CN) -> None:
    """Add every zegseg key, with defaults, to ``cfg`` in place (idempotent)."""
    if getattr(cfg, "_zegseg_keys_added", False):
        return
    _add_input_config(cfg)
    _add_clip_config(cfg)
    _add_mask_model_config(cfg)
    _add_meta_arch_config(cfg)
    _add_tcl_config(cfg)
    _add_generative_config(cfg)
    _add_solver_config(cfg)
    _add_test_config(cfg)
    cfg.MODEL.WEIGHTS_PARTIAL_OK = False  # load MODEL.WEIGHTS even if it lacks or mismatches parameters (warned)
    # weights that Predictor, the demo and the web app load when MODEL.WEIGHTS is empty (a bare file name: one of
    # zegseg/model_zoo/); training and train_net.py --eval-only never read it
    cfg.MODEL.DEFAULT_WEIGHTS = ""
    cfg.ZEGSEG_VERSION = 1  # version of this config schema; bumped when keys change meaning
    object.__setattr__(cfg, "_zegseg_keys_added", True)


def _add_input_config(cfg: CN) -> None:
    cfg.INPUT.DATASET_MAPPER_NAME = "mask_former_semantic"  # training mapper, a key of zegseg.data.MAPPERS
    cfg.INPUT.COLOR_AUG_SSD = False  # SSD-style photometric distortion during training
    cfg.INPUT.SIZE_DIVISIBILITY = -1  # pad training crops to a multiple of this in the mapper (<= 0: no padding)
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0  # resample a crop when one class covers more than this fraction
    # The "segment_crop" mapper (prompt learning): one ground-truth segment per sample, box crop, random resized crop.
    cfg.INPUT.SEGMENT_CROP = CN()
    cfg.INPUT.SEGMENT_CROP.SIZE = (224, 224)  # (height, width) of the samples
    cfg.INPUT.SEGMENT_CROP.SCALE = (0.08, 1.0)  # area fraction of the segment's box kept by the random resized crop
    cfg.INPUT.SEGMENT_CROP.RATIO = (0.75, 4.0 / 3.0)  # aspect-ratio range (width / height) of that crop
    cfg.DATASETS.SAMPLE_PER_CLASS = -1  # "segment_crop": segments drawn per class, with replacement (<= 0: all)
    cfg.DATASETS.SAMPLE_SEED = 0  # seed of that draw


def _add_clip_config(cfg: CN) -> None:
    cfg.MODEL.CLIP = CN()
    cfg.MODEL.CLIP.NAME = "ViT-B/16"  # an OpenAI CLIP name (looked up in WEIGHTS_DIR), "ToyCLIP", or a file path
    cfg.MODEL.CLIP.WEIGHTS_DIR = ""  # directory holding named CLIP checkpoints ("": $ZEGSEG_CLIP_DIR or ~/.cache/clip)
    cfg.MODEL.CLIP.TEMPLATES = "vild"  # prompt set: a name in zegseg.modeling.clip.prompts.TEMPLATE_SETS, or custom
    cfg.MODEL.CLIP.TEST_TEMPLATES = ""  # prompt set of the inference vocabulary's text embeddings ("": TEMPLATES)
    cfg.MODEL.CLIP.REGION_TEMPLATES = ""  # prompt set of the CLIP image branch's text side ("": as TEST_TEMPLATES)
    cfg.MODEL.CLIP.CUSTOM_TEMPLATES = []  # templates with one "{}" each, used when TEMPLATES is "custom"
    cfg.MODEL.CLIP.EMBED_CACHE_DIR = ""  # on-disk text-embedding cache ("": ~/.cache/zegseg/text_embeddings)
    cfg.MODEL.CLIP.CROP_PROCEDURE = "zegformer"  # mask to CLIP crop: zegformer | simple_baseline (official) | roi_align
    cfg.MODEL.CLIP.REGION_MODE = "crops"  # queries' CLIP view: crops (a forward per crop) | dense (mask-pooled, one)
    cfg.MODEL.CLIP.DENSE_SCALE = 1.0  # REGION_MODE dense: resize the image by this before its CLIP forward
    cfg.MODEL.CLIP.CROP_STYLE = "cropmask"  # region crops for the image branch: cropmask | mask | crop
    cfg.MODEL.CLIP.MASK_THRESHOLD = 0.5  # a query's pixels are those with sigmoid(mask logit) above this
    cfg.MODEL.CLIP.CROP_EXPAND_RATIO = 1.0  # scale each mask's box by this before cropping (not "zegformer")
    # zegseg options of the CLIP image branch, 0 = off (the official ZegFormer / simple baseline): regions no query
    # claims (claim < 0.5), of at least this fraction of the image, are classified by CLIP alone (leftover.py) ...
    cfg.MODEL.CLIP.LEFTOVER_MIN_AREA = 0.0
    # ... and each connected component of a query's mask, of at least this fraction of the image, is a segment with
    # its own CLIP crop (mask_classification/components.py)
    cfg.MODEL.CLIP.COMPONENT_MIN_AREA = 0.0
    cfg.MODEL.CLIP.CHUNK_SIZE = 32  # crops per CLIP image-encoder forward (bounds memory)
    cfg.MODEL.CLIP.LOGIT_SCALE = 0.0  # multiplier of crop-text cosines; <= 0: CLIP's own logit_scale.exp()
    cfg.MODEL.CLIP.HALF_ON_GPU = True  # CLIP's weights in fp16 on GPU (OpenAI's; official ZegFormer); False: fp32
    cfg.MODEL.CLIP.AMP = True  # autocast CLIP's image encoder on GPU (the official ZegFormer runs CLIP in fp16)
    cfg.MODEL.CLIP.FAST_MODE = CN()  # approximate inference: fewer crops to CLIP (query_selection.py)
    cfg.MODEL.CLIP.FAST_MODE.ENABLED = False  # False: exact mode, every query's crop goes to CLIP
    cfg.MODEL.CLIP.FAST_MODE.MIN_CONTRIBUTION = 0.15  # drop queries whose contribution bound is below this (0: off)
    cfg.MODEL.CLIP.FAST_MODE.MIN_MASK_AREA = 0.0  # drop queries whose mask covers less of the image (0: off)
    cfg.MODEL.CLIP.FAST_MODE.MAX_QUERIES = 0  # send at most this many queries to CLIP, by contribution (0: no cap)
    cfg.MODEL.CLIP.FAST_MODE.DUPLICATE_IOU = 0.0  # masks with IoU >= this share one crop (0: off; 1: identical)
    cfg.MODEL.CLIP.PROMPT_LEARNER = CN()
    cfg.MODEL.CLIP.PROMPT_LEARNER.N_CTX = 16  # learnable context tokens before the class name (CoOp)
    cfg.MODEL.CLIP.PROMPT_LEARNER.WEIGHTS = ""  # learned-prompt checkpoint; non-empty replaces TEMPLATES
    cfg.MODEL.CLIP.PROMPT_LEARNER.MASK_FILL = "mean"  # training samples' outside-mask pixels: mean | normalized_mean


def _add_mask_model_config(cfg: CN) -> None:
    # detectron2's DeepLab ResNet (MODEL.BACKBONE.NAME "build_resnet_deeplab_backbone", the two-stage paper's "R-101c")
    # reads three more keys; same names and defaults as detectron2.projects.deeplab's add_deeplab_config.
    cfg.MODEL.RESNETS.STEM_TYPE = "deeplab"  # DeepLab backbone's stem: deeplab (three 3x3 convs) | basic (one 7x7)
    cfg.MODEL.RESNETS.RES4_DILATION = 1  # DeepLab backbone: dilation of res4 (1 or 2)
    cfg.MODEL.RESNETS.RES5_MULTI_GRID = [1, 2, 4]  # DeepLab backbone: res5's per-block dilations, times RES5_DILATION
    # MODEL.BACKBONE.NAME "build_clip_resnet_backbone" (zegseg/modeling/clip/backbone.py): the CLIP (name or path)
    # whose ResNet image tower initialises the backbone; independent of MODEL.CLIP.NAME, the frozen classifier.
    cfg.MODEL.BACKBONE.CLIP_WEIGHTS = "ToyCLIP"

    cfg.MODEL.PIXEL_DECODER = CN()
    cfg.MODEL.PIXEL_DECODER.NAME = "FPNPixelDecoder"  # a name in zegseg.modeling.pixel_decoder.PIXEL_DECODER_REGISTRY
    cfg.MODEL.PIXEL_DECODER.IN_FEATURES = ["res2", "res3", "res4", "res5"]  # FPN inputs; finest sets mask stride
    cfg.MODEL.PIXEL_DECODER.CONVS_DIM = 256  # channels of the FPN lateral/output convolutions
    cfg.MODEL.PIXEL_DECODER.MASK_DIM = 256  # channels of the per-pixel mask features
    cfg.MODEL.PIXEL_DECODER.NORM = "GN"  # normalisation in the pixel decoder ("", "GN", "BN", "SyncBN")

    cfg.MODEL.TRANSFORMER_DECODER = CN()
    cfg.MODEL.TRANSFORMER_DECODER.IN_FEATURE = "res5"  # backbone feature the queries attend to
    cfg.MODEL.TRANSFORMER_DECODER.NUM_QUERIES = 100  # N segment queries
    cfg.MODEL.TRANSFORMER_DECODER.HIDDEN_DIM = 256  # transformer width
    cfg.MODEL.TRANSFORMER_DECODER.NHEADS = 8  # attention heads
    cfg.MODEL.TRANSFORMER_DECODER.DIM_FEEDFORWARD = 2048  # feed-forward width
    cfg.MODEL.TRANSFORMER_DECODER.DEC_LAYERS = 6  # decoder layers (each gives an auxiliary output)
    cfg.MODEL.TRANSFORMER_DECODER.DROPOUT = 0.1  # dropout inside the transformer
    cfg.MODEL.TRANSFORMER_DECODER.PRE_NORM = False  # pre-norm instead of post-norm layers
    cfg.MODEL.TRANSFORMER_DECODER.ENFORCE_INPUT_PROJ = False  # 1x1 projection even when channels already match
    # zegseg option (Mask2Former's masked attention): layers 2..L attend only inside the previous layer's masks;
    # False = MaskFormer / ZegFormer / the simple baseline (every query attends to the whole feature map)
    cfg.MODEL.TRANSFORMER_DECODER.MASKED_ATTENTION = False

    cfg.MODEL.CRITERION = CN()
    cfg.MODEL.CRITERION.DEEP_SUPERVISION = True  # also losses on the auxiliary outputs (earlier decoder layers)
    cfg.MODEL.CRITERION.NO_OBJECT_WEIGHT = 0.1  # CE weight of the "no object" class
    cfg.MODEL.CRITERION.CLASS_WEIGHT = 1.0  # weight of the classification (CE) loss and of the -p(c) matching cost
    cfg.MODEL.CRITERION.MASK_WEIGHT = 20.0  # weight of the sigmoid focal mask loss and matching cost
    cfg.MODEL.CRITERION.DICE_WEIGHT = 1.0  # weight of the dice loss and matching cost
    cfg.MODEL.CRITERION.FOCAL_ALPHA = 0.25  # alpha of the sigmoid focal loss
    cfg.MODEL.CRITERION.FOCAL_GAMMA = 2.0  # gamma of the sigmoid focal loss
    # zegseg option: mask losses and mask matching costs only on labelled pixels (ignored / unseen-class pixels and
    # padding are background of no mask); False = MaskFormer / the official code (background of every mask)
    cfg.MODEL.CRITERION.IGNORE_UNLABELED = False


def _add_meta_arch_config(cfg: CN) -> None:
    cfg.MODEL.ZEGFORMER = CN()
    cfg.MODEL.ZEGFORMER.TEMPERATURE = 0.01  # tau: segment logits are cos(G_q, T_c) / tau
    cfg.MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH = True  # add the frozen CLIP image encoder's score on masked crops
    cfg.MODEL.ZEGFORMER.ENSEMBLE_LAMBDA = 2.0 / 3.0  # lambda of the segment/CLIP geometric ensemble
    cfg.MODEL.ZEGFORMER.ENSEMBLE_MODE = "seen_unseen"  # seen_unseen (paper's rule) | all (every class as unseen)
    cfg.MODEL.ZEGFORMER.MEAN_SEEN_CLIP = True  # replace CLIP's seen-class probabilities by their mean (reference code)
    cfg.MODEL.ZEGFORMER.CALIBRATION_GAMMA = 0.0  # gamma subtracted from seen-class scores at inference
    cfg.MODEL.ZEGFORMER.CLIP_NO_OBJECT = True  # CLIP's softmax includes the segment's no-object logit (official)

    cfg.MODEL.TWO_STAGE = CN()
    cfg.MODEL.TWO_STAGE.LOGIT_SCALE = 100.0  # proposal logits: this times cos(proposal, text) (+ "no object")
    cfg.MODEL.TWO_STAGE.EMBED_HIDDEN_DIM = 1024  # hidden width of the 2-layer MLP, queries to CLIP's space; 0: linear
    cfg.MODEL.TWO_STAGE.ENSEMBLE_WEIGHT = 0.8  # w: seen p_mf^w p_clip^(1-w), unseen p_mf^(1-w) p_clip^w; <=0: CLIP only
    cfg.MODEL.TWO_STAGE.ENSEMBLE_MODE = "seen_unseen"  # seen_unseen (paper's rule) | all (every class as unseen)

    cfg.MODEL.PIXEL_LEVEL = CN()
    cfg.MODEL.PIXEL_LEVEL.TEMPERATURE = 0.07  # per-pixel logits are cos(pixel, text) / temperature (LSeg 0.07)
    cfg.MODEL.PIXEL_LEVEL.SPATIAL_BLOCK = "none"  # LSeg spatial regularisation: none | depthwise | bottleneck
    cfg.MODEL.PIXEL_LEVEL.NUM_SPATIAL_BLOCKS = 2  # spatial regularisation blocks after the classifier (LSeg's depth)
    cfg.MODEL.PIXEL_LEVEL.SPATIAL_ACTIVATION = "lrelu"  # after each spatial block but the last: lrelu | tanh | relu
    cfg.MODEL.PIXEL_LEVEL.CALIBRATION_GAMMA = 0.0  # gamma subtracted from seen-class probabilities at inference (SPNet)

    cfg.MODEL.MASKCLIP = CN()  # MaskCLIP (training-free dense CLIP features)
    cfg.MODEL.MASKCLIP.KEY_SMOOTHING_THRESH = 0.0  # smooth where the top class probability is below this (0: off)
    cfg.MODEL.MASKCLIP.PROMPT_DENOISING_THRESH = 0.0  # drop classes whose peak probability is below this (0: off)


def _add_generative_config(cfg: CN) -> None:
    # The feature-generation family (ZS3Net, CaGNet): DeepLabv3+ head over the backbone, semantic embeddings.
    cfg.MODEL.GENERATIVE = CN()
    cfg.MODEL.GENERATIVE.EMBEDDINGS = "clip"  # class embeddings: "clip" (TEMPLATES' text embeddings) or a .npy/.pt file
    cfg.MODEL.GENERATIVE.IN_FEATURES = ["res2", "res5"]  # DeepLabv3+ head: (fine, coarse) features; ASPP on coarse
    cfg.MODEL.GENERATIVE.ASPP_DILATIONS = [6, 12, 18]  # the three ASPP dilations
    cfg.MODEL.GENERATIVE.ASPP_CHANNELS = 256  # width of the ASPP branches
    cfg.MODEL.GENERATIVE.ASPP_DROPOUT = 0.1  # dropout after ASPP
    cfg.MODEL.GENERATIVE.PROJECT_CHANNELS = 48  # width of the projected fine feature
    cfg.MODEL.GENERATIVE.HEAD_DIM = 256  # width of the head's pixel features (ZS3Net's feature D)
    cfg.MODEL.GENERATIVE.NORM = "BN"  # normalisation in the head ("BN", "GN", "SyncBN", "")

    cfg.MODEL.ZS3NET = CN()
    cfg.MODEL.ZS3NET.GENERATOR_START_ITER = 1000  # stage 2 (GMMN + new classifier, network frozen) from this iteration
    cfg.MODEL.ZS3NET.NOISE_DIM = 300  # width of the GMMN's U[0, 1) noise
    cfg.MODEL.ZS3NET.GENERATOR_HIDDEN_DIM = 256  # GMMN hidden width
    cfg.MODEL.ZS3NET.GENERATOR_DROPOUT = 0.5  # GMMN dropout
    cfg.MODEL.ZS3NET.SAMPLES_PER_CLASS = 128  # real pixels per seen class and generated features per unseen class
    cfg.MODEL.ZS3NET.MMD_SIGMAS = [2.0, 5.0, 10.0, 20.0, 40.0, 80.0]  # MMD kernel bandwidths (official code)

    cfg.MODEL.CAGNET = CN()
    cfg.MODEL.CAGNET.FEATURE_DIM = 600  # width of h, the latent code z and the (real / generated) features
    cfg.MODEL.CAGNET.CONTEXT_DIM = 256  # width of the Contextual Module's dilated convolutions
    cfg.MODEL.CAGNET.CONTEXT_DILATIONS = [1, 2, 5]  # the Contextual Module's serial dilations
    cfg.MODEL.CAGNET.GENERATOR_HIDDEN_DIMS = [1024, 960, 864, 784, 720]  # generator's hidden 1x1 convolutions
    cfg.MODEL.CAGNET.GENERATOR_DROPOUTS = [0.1, 0.1, 0.3, 0.5, 0.5]  # dropout after each hidden layer
    cfg.MODEL.CAGNET.DISCRIMINATOR_HIDDEN_DIM = 1024  # width of the discriminator / classifier trunk
    cfg.MODEL.CAGNET.FINETUNE_START_ITER = 1000  # fine-tuning (backbone frozen, steps 1 / 2 alternate) from here
    cfg.MODEL.CAGNET.CYCLE_ITERS = 100  # length of each step-1 / step-2 block while fine-tuning
    cfg.MODEL.CAGNET.UNSEEN_RATE = 9.0  # step 2's label maps: unseen class weight 1 + this, seen 1 (VOC 9, COCO 59)
    cfg.MODEL.CAGNET.KL_WEIGHT = 100.0  # backbone loss: weight of the latent code's KL
    cfg.MODEL.CAGNET.BACKBONE_CLS_WEIGHT = 0.5  # backbone loss: weight of the classifier's CE on real features
    cfg.MODEL.CAGNET.ADV_WEIGHT = 1.0  # generator: adversarial loss weight
    cfg.MODEL.CAGNET.CONTENT_WEIGHT = 50.0  # generator: content (per-class MMD) loss weight
    cfg.MODEL.CAGNET.TRAIN_CLS_WEIGHTS = [1.0, 0.0]  # classifier CE on (real, generated) features, training stage
    cfg.MODEL.CAGNET.FINETUNE_CLS_WEIGHTS = [0.75, 0.25]  # the same in fine-tuning's step 1
    cfg.MODEL.CAGNET.TRANSFER_CLS_WEIGHT = 0.125  # step 2: classifier CE on features from random maps (COCO 1)
    cfg.MODEL.CAGNET.TRANSFER_GEN_WEIGHT = 0.0  # step 2: generator CE through the classifier (VOC 0, COCO 1)
    cfg.MODEL.CAGNET.CONTENT_SAMPLES = 128  # pixels per present class in the content MMD
    cfg.MODEL.CAGNET.MMD_SIGMAS = [2.0, 5.0, 10.0, 20.0, 40.0, 60.0]  # content MMD bandwidths (official code)


def _add_tcl_config(cfg: CN) -> None:
    cfg.MODEL.TCL = CN()  # TCL (text-grounded contrastive learning), trained on image–caption pairs only
    cfg.MODEL.TCL.OUT_STRIDE = 4  # stride of the grounder's masks (CLIP's stride over a power of two)
    cfg.MODEL.TCL.DECODER_DIM = 0  # width of the gated upsampling decoder (0: the last stage's, as the paper)
    cfg.MODEL.TCL.INIT_W = 10.0  # initial scale w of the masks sigmoid(w * cos + b)
    cfg.MODEL.TCL.INIT_B = -2.5  # initial bias b of the masks
    cfg.MODEL.TCL.GUMBEL_TAU = 1.0  # temperature of the training masks' straight-through Gumbel-sigmoid
    cfg.MODEL.TCL.TCL_WEIGHT = 0.1  # weight of the image-level and of the feature-level TCL losses
    cfg.MODEL.TCL.AREA_WEIGHT = 0.4  # weight of each area prior (own caption's mask, other captions' masks)
    cfg.MODEL.TCL.AREA_PRIOR = 0.4  # target mean area of an image's own-caption mask
    cfg.MODEL.TCL.TV_WEIGHT = 1.0  # weight of each total-variation term (dense embeddings, soft masks)
    cfg.MODEL.TCL.TEXT_UNITS = "caption"  # texts grounded in training: "caption" (the paper) or "phrases" (zegseg)
    cfg.MODEL.TCL.STAGE_FREEZE_ITERS = 0  # train only the decoder (not the copied last stage) for this many iters
    cfg.MODEL.TCL.PAMR_ITERS = 10  # PAMR refinement iterations at inference (0: off)
    cfg.MODEL.TCL.PAMR_DILATIONS = [1, 2, 4, 8, 12, 24]  # PAMR neighbour distances, in mask pixels
    cfg.MODEL.TCL.KP_WEIGHT = 0.3  # weight of the frozen CLIP's (MaskCLIP) mask mixed into the inference masks
    cfg.MODEL.TCL.BG_THRESH = 0.0  # > 0: score of the vocabulary's "background" class (TCL: 0.4 with PAMR)


def _add_solver_config(cfg: CN) -> None:
    # with SOLVER.AMP.ENABLED, train CPU models under bfloat16 autocast too (zegseg; CUDA always uses float16 AMP).
    # Only where oneDNN has bfloat16 kernels (AVX-512; float32 with a warning elsewhere): 1.20-1.24x for the toy
    # ZegFormer on a CPU with AVX512-BF16, no gain on another 2-core machine (bench/README)
    cfg.SOLVER.AMP.CPU_BFLOAT16 = False
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # ADAMW | SGD (SGD uses SOLVER.MOMENTUM and SOLVER.NESTEROV)
    cfg.SOLVER.BACKBONE_MULTIPLIER = 0.1  # learning-rate multiplier of parameters under modules named "backbone"
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0  # weight decay of nn.Embedding weights (the queries; MaskFormer's rule)
    # The two keys below are the ones detectron2.projects.deeplab reads for its WarmupPolyLR; zegseg defines them
    # here (same names and defaults as deeplab's add_deeplab_config, which zegseg does not call).
    cfg.SOLVER.POLY_LR_POWER = 0.9  # power of the poly schedule (LR_SCHEDULER_NAME "WarmupPolyLR")
    cfg.SOLVER.POLY_LR_CONSTANT_ENDING = 0.0  # poly schedule's final constant fraction of BASE_LR
    # SOLVER.CLIP_GRADIENTS.CLIP_TYPE (detectron2's key) also accepts "full_model": one norm over all gradients.


def _add_test_config(cfg: CN) -> None:
    cfg.TEST.VOCABULARY = []  # class names to segment at inference ([]: the classes of DATASETS.TEST[0])
    cfg.TEST.UNSEEN_CLASSES = []  # names in TEST.VOCABULARY treated as unseen (with a custom vocabulary)
    cfg.TEST.AMP = True  # autocast the segmentation network on GPU at inference (CPU always runs fp32)
    cfg.TEST.RESIZE_MASKS_FIRST = False  # resize the Q mask logits, not the K-class map, to the output (faster)
