"""TCL: Gumbel-sigmoid, the gated decoder, the losses on hand-built masks, PAMR on a hand-built image, the caption
dataset and mapper, inference, and a few training iterations lowering the loss."""
import json
import math

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from torch.nn import functional as F

import zegseg  # noqa: F401
from zegseg.data.dataset_mappers import build_train_mapper
from zegseg.data.datasets.register_captions import load_caption_json, register_caption_dataset
from zegseg.engine.setup_config import load_config
from zegseg.modeling.clip.dense_features import encode_dense
from zegseg.modeling.dense_clip.caption_phrases import batch_phrases, split_caption
from zegseg.modeling.dense_clip.pamr import PAMR
from zegseg.modeling.dense_clip.tcl_grounder import GatedUpsampler, Sim2Mask, TCLGrounder, gumbel_sigmoid
from zegseg.modeling.dense_clip.tcl_losses import (
    TCLCriterion,
    area_loss,
    masked_pool,
    symmetric_info_nce,
    total_variation,
)

from .helpers import train_steps
from .test_dense_features import _tiny_clip


# ------------------------------------------------------------------------------------------------ Gumbel-sigmoid
def test_gumbel_sigmoid_hard_is_binary_with_bernoulli_rate_and_straight_through_gradient():
    torch.manual_seed(0)
    logits = torch.tensor([-2.0, 0.0, 1.5]).repeat(20000, 1).requires_grad_(True)
    hard = gumbel_sigmoid(logits, tau=1.0, hard=True)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(hard.mean(0), torch.sigmoid(logits[0]).detach(), atol=0.015, rtol=0)
    # straight-through: the gradient is the relaxed sample's, sigmoid' / tau, nonzero everywhere
    hard.sum().backward()
    assert (logits.grad > 0).all() and (logits.grad <= 0.25 + 1e-6).all()


def test_gumbel_sigmoid_soft_and_temperature():
    torch.manual_seed(0)
    logits = torch.full((20000,), 0.7)
    soft = gumbel_sigmoid(logits, tau=1.0, hard=False)
    assert ((soft > 0) & (soft < 1)).all()
    cold = gumbel_sigmoid(logits, tau=0.01, hard=False)
    assert ((cold < 0.01) | (cold > 0.99)).float().mean() > 0.95  # low temperature: nearly binary samples
    assert ((soft < 0.01) | (soft > 0.99)).float().mean() < 0.05
    # the hard rate does not depend on tau: P(sample > 0.5) = sigmoid(logit)
    for tau in (0.3, 3.0):
        rate = gumbel_sigmoid(logits, tau=tau, hard=True).mean()
        assert abs(float(rate) - torch.sigmoid(torch.tensor(0.7)).item()) < 0.015
    with pytest.raises(ValueError, match="temperature"):
        gumbel_sigmoid(logits, tau=0.0)


def test_sim2mask_initial_scale_and_deterministic_masks():
    s2m = Sim2Mask()
    sim = torch.tensor([0.0, 0.25, 0.3])
    hard, soft = s2m(sim)
    torch.testing.assert_close(soft, torch.sigmoid(10 * sim - 2.5))
    torch.testing.assert_close(hard, torch.tensor([0.0, 0.0, 1.0]))


# ------------------------------------------------------------------------------------------------ decoder, grounder
@pytest.mark.parametrize("hidden", [0, 4])
def test_gated_upsampler_starts_as_nearest_upsampling_and_learns(hidden):
    torch.manual_seed(0)
    dec = GatedUpsampler(8, num_stages=2, hidden_dim=hidden)
    x = torch.randn(2, 8, 3, 5)
    torch.testing.assert_close(dec(x), F.interpolate(x, scale_factor=4.0, mode="nearest"))
    dec(x).square().sum().backward()
    gates = [p for n, p in dec.named_parameters() if n.endswith("gate")]
    assert len(gates) == 4 and all(g.grad is not None for g in gates)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_untrained_grounder_gives_maskclip_features_upsampled(arch):
    model = _tiny_clip(2, vision_width=128) if arch == "vit" else _tiny_clip((1, 1, 1, 1), vision_width=16,
                                                                              image_resolution=64)
    images = torch.randn(2, 3, 64, 64)
    features, penultimate = encode_dense(model, images, return_penultimate=True)
    grounder = TCLGrounder(model, out_stride=4, decoder_dim=4)
    embeddings = grounder.embed(model, penultimate)
    expected = F.interpolate(features, scale_factor=grounder.stride / 4, mode="nearest")
    torch.testing.assert_close(embeddings, expected, atol=1e-4, rtol=1e-4)
    assert embeddings.shape[-2:] == (16, 16)
    assert all(p.requires_grad for p in grounder.parameters())
    assert not any(p.requires_grad for p in model.parameters())  # the copies are the grounder's own
    with pytest.raises(ValueError, match="power of two"):
        TCLGrounder(model, out_stride=3)


# ------------------------------------------------------------------------------------------------ losses
def test_total_variation_area_and_masked_pool_by_hand():
    x = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]]]])  # (1, 1, 2, 3)
    # |dx|: 1, 2, 0, 0 -> mean 0.75; |dy|: 2, 1, 1 -> mean 4/3
    torch.testing.assert_close(total_variation(x), torch.tensor(0.75 + 4.0 / 3.0))
    masks = torch.zeros(1, 2, 2, 3)
    masks[0, 0, 0, :2] = 1.0  # 2 of 6 pixels
    masks[0, 1] = 0.5
    torch.testing.assert_close(area_loss(masks[:, :1], 0.4), torch.tensor(abs(2 / 6 - 0.4)))
    emb = torch.stack([x[0, 0], -x[0, 0]])[None]  # (1, 2, 2, 3)
    pooled = masked_pool(emb, masks, eps=0.0)
    torch.testing.assert_close(pooled[0, 0], torch.tensor([0.5, -0.5]))  # mean of 0 and 1
    torch.testing.assert_close(pooled[0, 1], torch.tensor([10.0 / 6, -10.0 / 6]))


def test_symmetric_info_nce_by_hand():
    logits = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    rows = 0.5 * (-math.log(math.exp(2) / (math.exp(2) + 1)) - math.log(0.5))
    cols = 0.5 * (-math.log(math.exp(2) / (math.exp(2) + math.exp(1))) - math.log(math.exp(1) / (1 + math.exp(1))))
    torch.testing.assert_close(symmetric_info_nce(logits), torch.tensor(0.5 * (rows + cols)))


def _two_region_batch():
    """Two 4x4 images; in each, the left half's embedding is its own caption's text, the right half the other's."""
    text = torch.eye(2, 3)  # (B=2, D=3)
    emb = torch.zeros(2, 3, 4, 4)
    emb[0, :, :, :2] = text[0, :, None, None]
    emb[0, :, :, 2:] = text[1, :, None, None]
    emb[1, :, :, :2] = text[1, :, None, None]
    emb[1, :, :, 2:] = text[0, :, None, None]
    right = torch.zeros(2, 2, 4, 4)  # mask of caption n on image b: the half whose embedding is t_n
    right[0, 0, :, :2] = right[0, 1, :, 2:] = right[1, 1, :, :2] = right[1, 0, :, 2:] = 1.0
    return emb, text, right


def test_tcl_criterion_on_hand_built_masks():
    emb, text, right = _two_region_batch()
    crit = TCLCriterion()
    scale = 1.0 / 0.07
    good = crit(embeddings=emb, soft_masks=right, text=text, masked_image_embeddings=text)
    # right masks pool each caption's own text: S = [[1, 1], [1, 1]] (every pool matches its text), so TCL_f = log 2
    torch.testing.assert_close(good["loss_tcl_feature"], torch.tensor(0.1 * math.log(2)), atol=1e-4, rtol=0)
    # the masked images embed exactly their captions: diagonal 1, off-diagonal 0
    expected_i = 0.1 * -math.log(math.exp(scale) / (math.exp(scale) + 1))
    torch.testing.assert_close(good["loss_tcl_image"], torch.tensor(expected_i))
    wrong = crit(embeddings=emb, soft_masks=1.0 - right, text=text, masked_image_embeddings=text.flip(0))
    assert wrong["loss_tcl_image"] > 0.1 * 10 and good["loss_tcl_image"] < 1e-3
    # areas: own masks cover half of each image (|0.5 - 0.4|), other captions' masks half as well (|0.5 - 0|)
    torch.testing.assert_close(good["loss_area_pos"], torch.tensor(0.4 * 0.1))
    torch.testing.assert_close(good["loss_area_neg"], torch.tensor(0.4 * 0.5))
    # TV: one vertical edge in each 4x4 map: |dx| mean = 1/3 per unit step; no |dy|
    torch.testing.assert_close(good["loss_tv_mask"], torch.tensor(1.0 / 3.0))
    torch.testing.assert_close(good["loss_tv_embed"], torch.tensor(1.0 / 3.0 * 2.0 / 3.0))
    # TCL_f rewards an image's own caption pooled on its region and penalises other captions' pools that match:
    # other captions' masks on the half that does not match them give S = I, the lowest loss
    own = right.clone()
    own[0, 1], own[1, 0] = right[0, 0], right[1, 1]
    best = crit(embeddings=emb, soft_masks=own, text=text, masked_image_embeddings=text)["loss_tcl_feature"]
    torch.testing.assert_close(best, torch.tensor(expected_i))
    with pytest.raises(ValueError, match="inconsistent shapes"):
        crit(embeddings=emb, soft_masks=right[:, :1], text=text, masked_image_embeddings=text)
    # the identity as an explicit positive matrix is the paper's one-caption-per-image loss
    identity = torch.eye(2) > 0
    explicit = crit(embeddings=emb, soft_masks=right, text=text, masked_image_embeddings=text, positive=identity)
    for name, value in good.items():
        torch.testing.assert_close(explicit[name], value)


def test_symmetric_info_nce_with_several_positives_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
    positive = torch.tensor([[True, False, True], [False, True, False]])
    lp_rows = logits.log_softmax(1)
    lp_cols = logits.log_softmax(0)
    # rows: image 0's target is half text 0, half text 2; image 1's is text 1
    rows = 0.5 * (-(0.5 * lp_rows[0, 0] + 0.5 * lp_rows[0, 2]) - lp_rows[1, 1])
    cols = -(lp_cols[0, 0] + lp_cols[1, 1] + lp_cols[0, 2]) / 3
    torch.testing.assert_close(symmetric_info_nce(logits, positive), 0.5 * (rows + cols))
    with pytest.raises(ValueError, match="every row and column"):
        symmetric_info_nce(logits, torch.tensor([[True, False, False], [False, True, False]]))


def test_tcl_criterion_with_phrases_on_hand_built_masks():
    """Two images, three phrases: image 0 holds phrases 0 and 1 (left / right half), image 1 phrases 1 and 2."""
    text = torch.eye(3, 4)
    emb = torch.zeros(2, 4, 4, 4)
    emb[0, :, :, :2], emb[0, :, :, 2:] = text[0, :, None, None], text[1, :, None, None]
    emb[1, :, :, :2], emb[1, :, :, 2:] = text[1, :, None, None], text[2, :, None, None]
    positive = torch.tensor([[True, True, False], [False, True, True]])
    masks = torch.zeros(2, 3, 4, 4)
    masks[0, 0, :, :2] = masks[0, 1, :, 2:] = masks[1, 1, :, :2] = masks[1, 2, :, 2:] = 1.0  # each on its half
    pairs_text = text[positive.nonzero()[:, 1]]  # masked images embed exactly their phrase: (P=4, D)
    crit = TCLCriterion(pos_area_prior=0.5)
    good = crit(embeddings=emb, soft_masks=masks, text=text, masked_image_embeddings=pairs_text, positive=positive)
    assert good["loss_area_pos"] == 0 and good["loss_area_neg"] == 0  # own phrases half the image, others empty
    # image level: rows one positive each (cos 1 vs 0); column "phrase 1" has two positive pairs (rows 1 and 2)
    scale = 1.0 / 0.07
    logits = scale * (pairs_text @ text.T)
    expected = 0.1 * symmetric_info_nce(logits, torch.nn.functional.one_hot(positive.nonzero()[:, 1], 3) > 0)
    torch.testing.assert_close(good["loss_tcl_image"], expected)
    swapped = masks.clone()
    swapped[0, 0], swapped[0, 1] = masks[0, 1], masks[0, 0]  # image 0's two phrases grounded on the wrong halves
    wrong = crit(embeddings=emb, soft_masks=swapped, text=text, masked_image_embeddings=pairs_text, positive=positive)
    assert wrong["loss_tcl_feature"] > good["loss_tcl_feature"] + 0.05
    with pytest.raises(ValueError, match="inconsistent shapes"):
        crit(embeddings=emb, soft_masks=masks, text=text, masked_image_embeddings=pairs_text[:3], positive=positive)


def test_split_caption_and_batch_phrases():
    assert split_caption("A photo of a green square, a blue star and a red square on tiled floor.") == [
        "green square", "blue star", "red square", "tiled floor"
    ]
    assert split_caption("a yellow star in front of snow and water") == ["yellow star", "snow", "water"]
    assert split_caption("grass and grass") == ["grass"]
    assert split_caption("a photo of") == []
    phrases, positive = batch_phrases(["a red star on grass", "a photo of grass and sky", "a photo of"])
    assert phrases == ["red star", "grass", "sky", "a photo of"]  # a caption with no phrase is its own text
    assert positive.tolist() == [[True, True, False, False], [False, True, True, False], [False, False, False, True]]
    with pytest.raises(ValueError, match="empty caption"):
        batch_phrases(["grass", " "])


# ------------------------------------------------------------------------------------------------ PAMR
def test_pamr_respects_image_edges_and_keeps_constants():
    image = torch.zeros(1, 3, 16, 16)
    image[..., 8:] = 1.0  # left half black, right half white
    pamr = PAMR(num_iter=10, dilations=(1, 2))
    # neighbour weights: uniform inside a flat region, zero across the edge
    weights = pamr.affinity(image)
    assert weights.shape == (1, 16, 16, 16)
    torch.testing.assert_close(weights.sum(1), torch.ones(1, 16, 16))
    torch.testing.assert_close(weights[0, :, 8, 2], torch.full((16,), 1.0 / 16))
    # pixel (8, 7), just left of the edge: its right neighbours (offsets (., +1), (., +2)) lie across it
    across = [i for i, (dy, dx) in enumerate(pamr.neighbours) if dx > 0]
    assert weights[0, across, 8, 7].max() < 1e-6
    # a blurry mask (a ramp across the whole image) becomes flat on each side of the edge
    ramp = torch.linspace(0, 1, 16).expand(1, 1, 16, 16).clone()
    out = pamr(image, ramp)
    left, right = out[0, 0, :, :8], out[0, 0, :, 8:]
    assert left.std() < 0.5 * ramp[0, 0, :, :8].std() and right.std() < 0.5 * ramp[0, 0, :, 8:].std()
    assert left.max() < right.min()  # nothing leaks across the edge
    torch.testing.assert_close(pamr(image, torch.full((1, 2, 4, 4), 0.3)), torch.full((1, 2, 16, 16), 0.3))
    with pytest.raises(ValueError, match="dilations"):
        PAMR(dilations=(0,))


# ------------------------------------------------------------------------------------------------ data
def test_caption_json_formats(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"001": "a red circle", "002.jpg": ["one", "two"]}))
    records = load_caption_json(tmp_path / "a.json", tmp_path / "img", image_ext=".png")
    assert [r["file_name"] for r in records] == [str(tmp_path / "img" / "001.png"), str(tmp_path / "img" / "002.jpg")]
    assert records[1]["captions"] == ["one", "two"]
    coco = {
        "images": [{"id": 7, "file_name": "x.jpg", "height": 4, "width": 5}, {"id": 8, "file_name": "y.jpg"}],
        "annotations": [{"image_id": 7, "caption": "a cat"}, {"image_id": 7, "caption": "a dog"}],
    }
    (tmp_path / "coco.json").write_text(json.dumps(coco))
    records = load_caption_json(tmp_path / "coco.json", tmp_path)
    assert records == [
        {"file_name": str(tmp_path / "x.jpg"), "image_id": 7, "captions": ["a cat", "a dog"], "height": 4, "width": 5}
    ]
    (tmp_path / "bad.json").write_text(json.dumps({"001": ""}))
    with pytest.raises(ValueError, match="non-empty caption"):
        load_caption_json(tmp_path / "bad.json", tmp_path)
    (tmp_path / "list.json").write_text(json.dumps(["a"]))
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_caption_json(tmp_path / "list.json", tmp_path)


def test_caption_mapper_draws_a_caption(tmp_path):
    cv2.imwrite(str(tmp_path / "000.png"), np.full((40, 60, 3), (10, 20, 30), np.uint8))
    (tmp_path / "c.json").write_text(json.dumps({"000": ["first", "second"]}))
    register_caption_dataset("test_tcl_captions", tmp_path / "c.json", tmp_path, image_ext=".png")
    try:
        cfg = load_config("configs/toy/tcl.yaml", ["DATASETS.TRAIN", "('test_tcl_captions',)", "INPUT.MIN_SIZE_TRAIN",
                                                   "(20,)", "INPUT.RANDOM_FLIP", "none"])
        mapper = build_train_mapper(cfg)
        record = DatasetCatalog.get("test_tcl_captions")[0]
        drawn = {mapper(record)["caption"] for _ in range(20)}
        out = mapper(record)
    finally:
        DatasetCatalog.remove("test_tcl_captions")
    assert drawn == {"first", "second"}
    assert out["image"].shape == (3, 20, 30) and out["image"].dtype == torch.uint8
    assert out["image"][:, 5, 5].tolist() == [10, 20, 30]  # BGR, as read
    assert (out["height"], out["width"]) == (40, 60)


# ------------------------------------------------------------------------------------------------ model
TINY = ["MODEL.DEVICE", "cpu", "MODEL.TCL.DECODER_DIM", "8", "MODEL.TCL.PAMR_DILATIONS", "[1, 2]"]


def tiny_tcl(clip_path, *opts):
    cfg = load_config("configs/toy/tcl.yaml", TINY + ["MODEL.CLIP.NAME", str(clip_path), *opts])
    torch.manual_seed(0)
    return build_model(cfg)


def caption_batch(n=4, size=32):
    """Flat-coloured left/right halves; the caption names the two colours."""
    colours = {"red": (0, 0, 255), "green": (0, 255, 0), "blue": (255, 0, 0), "white": (255, 255, 255)}
    names = list(colours)
    batch = []
    for i in range(n):
        a, b = names[i % 4], names[(i + 1) % 4]
        image = torch.zeros(3, size, size, dtype=torch.uint8)
        image[:, :, : size // 2] = torch.tensor(colours[a], dtype=torch.uint8)[:, None, None]
        image[:, :, size // 2 :] = torch.tensor(colours[b], dtype=torch.uint8)[:, None, None]
        batch.append({"image": image, "caption": f"{a} and {b}"})
    return batch


def test_training_iterations_lower_tcl_loss(tiny_clip_path):
    # the paper's whole captions; the whole grounder trains
    model = tiny_tcl(tiny_clip_path, "MODEL.TCL.STAGE_FREEZE_ITERS", "0", "MODEL.TCL.TEXT_UNITS", "caption").train()
    torch.manual_seed(0)
    losses = train_steps(model, caption_batch(), steps=12, lr=3e-3)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert int(model.num_train_steps) == 12
    assert not any(k.startswith("clip_model.") for k in model.state_dict())


def test_training_on_phrases_lowers_tcl_loss(tiny_clip_path):
    model = tiny_tcl(tiny_clip_path, "MODEL.TCL.STAGE_FREEZE_ITERS", "0", "MODEL.TCL.TEXT_UNITS", "phrases").train()
    torch.manual_seed(0)
    losses = train_steps(model, caption_batch(), steps=12, lr=3e-3)
    assert np.mean(losses[-3:]) < 0.8 * np.mean(losses[:3]), losses
    assert set(model._embed_phrases._memory) == {"red", "green", "blue", "white"}  # "x and y": two phrases each
    with pytest.raises(ValueError, match="TEXT_UNITS"):
        tiny_tcl(tiny_clip_path, "MODEL.TCL.TEXT_UNITS", "nouns")


def test_stage_freeze_keeps_the_copied_stage_fixed(tiny_clip_path):
    model = tiny_tcl(tiny_clip_path, "MODEL.TCL.STAGE_FREEZE_ITERS", "2").train()
    before = {k: v.clone() for k, v in model.grounder.last_stage.state_dict().items()}
    train_steps(model, caption_batch(), steps=2)
    assert all(torch.equal(before[k], v) for k, v in model.grounder.last_stage.state_dict().items())
    train_steps(model, caption_batch(), steps=1)
    assert any(not torch.equal(before[k], v) for k, v in model.grounder.last_stage.state_dict().items())


def test_inference_scores_and_background_threshold(tiny_clip_path):
    model = tiny_tcl(tiny_clip_path).eval()
    image = torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 80, "width": 112}, {"image": image[:, :24, :32]}])
    assert out[0]["sem_seg"].shape == (35, 80, 112) and out[1]["sem_seg"].shape == (35, 24, 32)
    assert out[0]["sem_seg"].min() >= 0 and out[0]["sem_seg"].max() <= 1
    with pytest.raises(ValueError, match="caption"):
        model.train()([{"image": image}])

    model = tiny_tcl(tiny_clip_path, "MODEL.TCL.BG_THRESH", "0.4", "TEST.VOCABULARY", "['cat', 'Background']").eval()
    with torch.no_grad():
        scores = model([{"image": image}])[0]["sem_seg"]
    assert torch.equal(scores[1], torch.full_like(scores[1], 0.4))
    with pytest.raises(ValueError, match="background"):
        model.set_vocabulary(["cat", "dog"])
