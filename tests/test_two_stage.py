"""The two-stage CLIP classifier and its prompt learning, on tiny CPU models."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Instances
from torch import nn
from torch.nn import functional as F

import zegseg  # noqa: F401
from zegseg.data.datasets.register_toy import register_all_toy
from zegseg.data.toy.generate import generate_toy_world
from zegseg.engine import ZegsegTrainer
from zegseg.engine.setup_config import load_config
from zegseg.modeling.clip import load_clip
from zegseg.modeling.clip.baseline_crops import simple_baseline_crops
from zegseg.modeling.clip.image_encoder import encode_image
from zegseg.modeling.clip.prompt_learner import PromptLearner
from zegseg.modeling.clip.prompts import get_templates
from zegseg.modeling.clip.region_encoder import CLIP_PIXEL_MEAN, normalize_for_clip
from zegseg.modeling.clip.text_encoder import TextEmbedder
from zegseg.modeling.mlp import MLP

from .helpers import train_steps
from .test_zegformer import TINY, synthetic_batch


def tiny_two_stage(clip_path, *opts):
    opts = TINY + ["MODEL.CLIP.NAME", str(clip_path), "MODEL.TWO_STAGE.EMBED_HIDDEN_DIM", "48", *opts]
    cfg = load_config("configs/toy/two_stage.yaml", opts)
    torch.manual_seed(0)
    return build_model(cfg)


def tiny_prompt_learner_model(clip_path, *opts):
    opts = ["MODEL.DEVICE", "cpu", "MODEL.CLIP.NAME", str(clip_path), "MODEL.CLIP.PROMPT_LEARNER.N_CTX", "4", *opts]
    cfg = load_config("configs/toy/two_stage_prompt_learning.yaml", opts)
    torch.manual_seed(0)
    return build_model(cfg)


@pytest.fixture(scope="module")
def learned_prompts(tiny_clip_path, tmp_path_factory):
    """A file holding 4 (random) learned context vectors for the tiny CLIP."""
    torch.manual_seed(1)
    learner = PromptLearner(clip_model=load_clip(str(tiny_clip_path)), n_ctx=4, init_std=0.5)
    path = tmp_path_factory.mktemp("prompts") / "ctx.pth"
    torch.save(learner.state_dict(), path)
    return path


def test_inference_shapes_config_and_cpu_fp32(tiny_clip_path):
    model = tiny_two_stage(
        tiny_clip_path, "MODEL.CLIP.MASK_THRESHOLD", "0.8", "MODEL.CLIP.CROP_EXPAND_RATIO", "1.2"
    ).eval()
    assert (model.region_classifier.mask_threshold, model.region_classifier.expand_ratio) == (0.8, 1.2)
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 192}])
    assert out[0]["sem_seg"].shape == (35, 128, 192)  # toy val: 35 classes, resized to the original size
    assert out[0]["sem_seg"].dtype == torch.float32 and torch.isfinite(out[0]["sem_seg"]).all()


def test_proposal_embedding_mlp_and_classifier(tiny_clip_path):
    model = tiny_two_stage(tiny_clip_path)
    assert isinstance(model.semantic_proj, MLP)
    assert [(la.in_features, la.out_features) for la in model.semantic_proj.layers] == [(32, 48), (48, 32)]
    assert model.text_classifier.normalize_no_object
    assert float(model.text_classifier.logit_scale) == pytest.approx(100.0)
    emb = F.normalize(torch.randn(2, 5, 32), dim=-1)
    text = model.train_text_embeddings
    logits = model.text_classifier(emb, text)
    bg = F.normalize(model.text_classifier.no_object_embedding.detach(), dim=0)
    torch.testing.assert_close(logits, 100 * torch.cat([emb @ text.T, (emb @ bg)[..., None]], dim=-1))


def test_linear_proposal_embedding_option_and_toy_config(tiny_clip_path):
    model = tiny_two_stage(tiny_clip_path, "MODEL.TWO_STAGE.EMBED_HIDDEN_DIM", "0")
    assert type(model.semantic_proj) is nn.Linear  # ZegFormer's projection (zegseg option)
    assert (model.semantic_proj.in_features, model.semantic_proj.out_features) == (32, 32)
    emb = model.semantic_proj(torch.randn(2, 5, 32))
    assert emb.shape == (2, 5, 32)
    # the toy config uses it; the reference config keeps the paper's MLP (test_reference_configs_two_stage.py)
    assert load_config("configs/toy/two_stage.yaml").MODEL.TWO_STAGE.EMBED_HIDDEN_DIM == 0


def test_vocabulary_swap_changes_output_channels(tiny_clip_path):
    model = tiny_two_stage(tiny_clip_path).eval()
    image = {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}
    model.set_vocabulary(["red circle", "sky", "a purple dragon"], unseen_classes=["a purple dragon"])
    with torch.no_grad():
        out = model([image])[0]["sem_seg"]
    assert out.shape == (3, 64, 64)
    assert model.test_unseen_mask.tolist() == [False, False, True]
    model.set_vocabulary(["sky", "grass"])
    with torch.no_grad():
        assert model([image])[0]["sem_seg"].shape == (2, 64, 64)


@pytest.mark.parametrize("weight, mode", [(0.8, "seen_unseen"), (0.3, "seen_unseen"), (0.0, "seen_unseen"),
                                          (-1.0, "seen_unseen"), (0.6, "all")])
def test_ensemble_matches_hand_computation(tiny_clip_path, weight, mode):
    model = tiny_two_stage(
        tiny_clip_path, "MODEL.TWO_STAGE.ENSEMBLE_WEIGHT", str(weight), "MODEL.TWO_STAGE.ENSEMBLE_MODE", mode
    ).eval()
    model.set_vocabulary(["sky", "grass", "red star"], unseen_classes=["red star"])
    g = torch.Generator().manual_seed(3)
    logits, masks = torch.randn(6, 4, generator=g), torch.randn(6, 12, 16, generator=g)
    clip_logits = 3 * torch.randn(6, 3, generator=g)
    valid = torch.tensor([True, True, False, True, True, True])
    seen_by_clip = []

    def fake_region_classifier(clip_model, image, region_masks, text):
        seen_by_clip.append(tuple(region_masks.shape))
        return clip_logits, valid

    model.region_classifier.forward = fake_region_classifier
    got = model.segment_image(torch.zeros(3, 40, 60), logits, masks, (40, 60))

    assert seen_by_clip == [(6, 40, 60)]  # CLIP sees the masks at the image size, padding removed
    p_mf = logits.softmax(-1)[:, :3]
    p_clip = clip_logits.softmax(-1)
    w = weight
    if w > 0:
        p_clip[~valid] = 1.0  # an empty mask: CLIP abstains
        seen_w = w if mode == "seen_unseen" else 1 - w  # "all": every class as unseen, CLIP gets weight w
        sky = p_mf[:, 0] ** seen_w * p_clip[:, 0] ** (1 - seen_w)  # seen: the proposal classifier gets seen_w
        grass = p_mf[:, 1] ** seen_w * p_clip[:, 1] ** (1 - seen_w)
        red_star = p_mf[:, 2] ** (1 - w) * p_clip[:, 2] ** w  # unseen: CLIP gets weight w
        expected_p = torch.stack([sky, grass, red_star], dim=1)
    else:
        expected_p = p_clip * valid[:, None]  # CLIP only; the empty mask does not vote
    up = F.interpolate(masks[None], size=(48, 64), mode="bilinear", align_corners=False)[0, :, :40, :60].sigmoid()
    torch.testing.assert_close(got, torch.einsum("qk,qhw->khw", expected_p, up))  # padding cropped off


@pytest.mark.parametrize("procedure", ["roi_align", "simple_baseline"])
def test_empty_masks_are_not_cropped_and_do_not_vote(tiny_clip_path, monkeypatch, procedure):
    model = tiny_two_stage(
        tiny_clip_path, "MODEL.TWO_STAGE.ENSEMBLE_WEIGHT", "0.0", "MODEL.CLIP.CROP_PROCEDURE", procedure
    ).eval()
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(6, len(model.test_class_names) + 1, generator=g)
    masks = torch.randn(6, 16, 16, generator=g)
    masks[[1, 4]] = -20.0  # nothing above the threshold
    image = torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8, generator=g)
    crops = []
    encode_image = model.clip_model.encode_image
    monkeypatch.setattr(model.clip_model, "encode_image", lambda x: crops.append(len(x)) or encode_image(x))

    with torch.no_grad():
        got = model.segment_image(image, logits, masks, (64, 64))
        keep = [0, 2, 3, 5]
        without_empty = model.segment_image(image, logits[keep], masks[keep], (64, 64))
        masks[:] = -20.0
        all_empty = model.segment_image(image, logits, masks, (64, 64))

    assert crops == [4, 4]  # only the four non-empty masks were cropped and encoded; all-empty: CLIP never ran
    torch.testing.assert_close(got, without_empty)
    assert torch.equal(all_empty, torch.zeros_like(all_empty))  # CLIP-only, no mask: no vote at all


def test_simple_baseline_crop_procedure_feeds_clip_the_official_crops(tiny_clip_path, monkeypatch):
    model = tiny_two_stage(tiny_clip_path, "MODEL.CLIP.CROP_PROCEDURE", "simple_baseline").eval()
    g = torch.Generator().manual_seed(5)
    image = torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8, generator=g)
    logits = torch.randn(5, 40, 56, generator=g) * 4
    logits[2] = -9.0  # empty
    seen = []
    encode_image = model.clip_model.encode_image
    monkeypatch.setattr(model.clip_model, "encode_image", lambda x: seen.append(x) or encode_image(x))
    with torch.no_grad():
        clip_logits, valid = model.region_classifier(model.clip_model, image, logits, model.text_embeddings)
    masks = logits.sigmoid() > 0.5
    res = int(model.clip_model.visual.input_resolution)
    expected, expected_valid = simple_baseline_crops(
        normalize_for_clip(image, model.region_classifier.input_format), masks, out_size=res
    )
    assert valid.tolist() == expected_valid.tolist() == [True, True, False, True, True]
    torch.testing.assert_close(torch.cat(seen), expected[valid], rtol=0, atol=0)
    assert torch.equal(clip_logits[2], torch.zeros_like(clip_logits[2]))
    with pytest.raises(ValueError, match="cropmask"):
        tiny_two_stage(tiny_clip_path, "MODEL.CLIP.CROP_PROCEDURE", "simple_baseline", "MODEL.CLIP.CROP_STYLE", "mask")
    with pytest.raises(ValueError, match="abstain"):
        tiny_two_stage(tiny_clip_path, "MODEL.CLIP.CROP_PROCEDURE", "zegformer")


def test_unknown_ensemble_mode_is_refused_at_build(tiny_clip_path):
    with pytest.raises(ValueError, match="unknown ensemble mode 'clip'; known: seen_unseen, all"):
        tiny_two_stage(tiny_clip_path, "MODEL.TWO_STAGE.ENSEMBLE_MODE", "clip")


def test_checkpoint_excludes_clip_and_round_trips(tiny_clip_path):
    model = tiny_two_stage(tiny_clip_path)
    state = model.state_dict()
    assert state and not any(k.startswith("clip_model.") for k in state)
    other = tiny_two_stage(tiny_clip_path, "SEED", "1")
    other.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), other.state_dict().values()))


def test_losses_and_twenty_iterations_lower_them(tiny_clip_path):
    model = tiny_two_stage(tiny_clip_path).train()
    batch = synthetic_batch(len(model.train_class_names), n=2, seed=1)
    losses = model(batch)
    assert {"loss_ce", "loss_mask", "loss_dice", "loss_ce_0", "loss_mask_0", "loss_dice_0"} <= set(losses)
    totals = train_steps(model, batch)
    assert all(p.grad is None for p in model.clip_model.parameters())
    assert sum(totals[-3:]) / 3 < 0.7 * sum(totals[:3]) / 3


def test_learned_prompts_replace_templates_and_embed_new_names(tiny_clip_path, learned_prompts, tmp_path):
    cache = ["MODEL.CLIP.EMBED_CACHE_DIR", str(tmp_path)]
    templated = tiny_two_stage(tiny_clip_path, *cache).eval()
    learned = tiny_two_stage(tiny_clip_path, *cache, "MODEL.CLIP.PROMPT_LEARNER.WEIGHTS", str(learned_prompts)).eval()
    clip_model = learned.clip_model
    learner = PromptLearner(clip_model=clip_model, n_ctx=4)
    learner.load_state_dict(torch.load(learned_prompts))

    with torch.no_grad():
        assert (learned.test_text_embeddings - templated.test_text_embeddings).norm(dim=-1).min() > 1e-3
        torch.testing.assert_close(learned.test_text_embeddings, learner(clip_model, learned.test_class_names))
        torch.testing.assert_close(learned.train_text_embeddings, learner(clip_model, learned.train_class_names))
        names = ["a purple dragon", "sky"]  # the first was never a training class
        learned.set_vocabulary(names)
        torch.testing.assert_close(learned.test_text_embeddings, learner(clip_model, names))
        plain = TextEmbedder(clip_model, get_templates("photo"), disk_cache=False)(names)
        assert (learned.test_text_embeddings - plain).norm(dim=-1).min() > 1e-3
        out = learned([{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}])[0]["sem_seg"]
    assert out.shape == (2, 64, 64) and torch.isfinite(out).all()
    assert not any("ctx" in k for k in learned.state_dict())  # the prompts are not the segmenter's parameters


def test_missing_learned_prompt_file_is_named(tiny_clip_path, tmp_path):
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        tiny_two_stage(tiny_clip_path, "MODEL.CLIP.PROMPT_LEARNER.WEIGHTS", str(missing))


def test_prompt_learning_trains_only_the_context(tiny_clip_path):
    model = tiny_prompt_learner_model(tiny_clip_path).train()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["prompt_learner.ctx"]
    assert list(model.state_dict()) == ["prompt_learner.ctx"]
    assert not model.clip_model.training
    losses = model(synthetic_batch(len(model.train_class_names)))
    assert set(losses) == {"loss_prompt"} and torch.isfinite(losses["loss_prompt"])
    losses["loss_prompt"].backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip_model.parameters())


def segment_samples(num_classes, n=3, size=(40, 32), seed=0):
    """Segment samples as the segment_crop mapper gives them: a crop, one mask, one class."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        image = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=g)
        mask = torch.rand(size, generator=g) > 0.4
        inst = Instances(size)
        inst.gt_classes = torch.randint(0, num_classes, (1,), generator=g)
        inst.gt_masks = mask[None]
        batch.append({"image": image, "instances": inst, "segment_sample": True})
    return batch


@pytest.mark.parametrize("fill", ["mean", "normalized_mean"])
def test_prompt_learning_on_segment_samples(tiny_clip_path, fill):
    model = tiny_prompt_learner_model(tiny_clip_path, "MODEL.CLIP.PROMPT_LEARNER.MASK_FILL", fill).train()
    batch = segment_samples(len(model.train_class_names))  # 40 x 32: not the tiny CLIP's 32 x 32
    loss = model(batch)["loss_prompt"]
    images = normalize_for_clip(torch.stack([x["image"] for x in batch]), model.input_format)
    masks = torch.stack([x["instances"].gt_masks[0] for x in batch])[:, None]
    value = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1) if fill == "normalized_mean" else torch.zeros(1, 3, 1, 1)
    with torch.no_grad():
        feats = F.normalize(encode_image(model.clip_model, torch.where(masks, images, value)), dim=-1)
    logits = 100 * feats @ model.prompt_learner(model.clip_model, model.train_class_names).T
    labels = torch.cat([x["instances"].gt_classes for x in batch])
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))
    loss.backward()
    assert model.prompt_learner.ctx.grad.abs().sum() > 0


def test_prompt_learning_rejects_mixed_or_unequal_batches(tiny_clip_path):
    model = tiny_prompt_learner_model(tiny_clip_path).train()
    k = len(model.train_class_names)
    with pytest.raises(ValueError, match="mixes"):
        model(segment_samples(k, n=1) + synthetic_batch(k, n=1))
    with pytest.raises(ValueError, match="share their size"):
        model(segment_samples(k, n=1) + segment_samples(k, n=1, size=(32, 32)))
    with pytest.raises(ValueError, match="mask fill"):
        tiny_prompt_learner_model(tiny_clip_path, "MODEL.CLIP.PROMPT_LEARNER.MASK_FILL", "zero")


@pytest.mark.parametrize("inputs", ["whole_images", "segment_samples"])
def test_prompt_learning_lowers_the_loss(tiny_clip_path, inputs):
    model = tiny_prompt_learner_model(tiny_clip_path).train()
    k = len(model.train_class_names)
    batch = synthetic_batch(k, n=4, seed=2) if inputs == "whole_images" else segment_samples(k, n=6, seed=2)
    opt = torch.optim.SGD(model.prompt_learner.parameters(), lr=2e-4, momentum=0.9)
    totals = []
    for _ in range(15):
        loss = model(batch)["loss_prompt"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        totals.append(float(loss.detach()))
    assert totals[-1] < 0.7 * totals[0], totals


def test_prompt_learning_inference_classifies_ground_truth_segments(tiny_clip_path):
    model = tiny_prompt_learner_model(tiny_clip_path).eval()
    model.set_vocabulary(["sky", "grass", "a purple dragon"])
    sem_seg = torch.full((40, 48), 255)
    sem_seg[:20] = 7
    sem_seg[25:, 10:] = 2
    x = {"image": torch.randint(0, 255, (3, 40, 48), dtype=torch.uint8), "sem_seg": sem_seg}
    with torch.no_grad():
        out = model([x])[0]["sem_seg"]
        emb, _ = model.encode_segments(x["image"], torch.stack([sem_seg == 2, sem_seg == 7]))
        expected = (100 * emb @ model.prompt_learner(model.clip_model, model.test_class_names).T).softmax(-1)
    assert out.shape == (3, 40, 48)
    torch.testing.assert_close(out[:, 0, 0], expected[1])  # the segment labelled 7
    torch.testing.assert_close(out[:, 30, 20], expected[0])  # the segment labelled 2
    assert torch.equal(out[:, 22, 5], torch.zeros(3))  # unlabelled pixels get no score
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": x["image"]}])


@pytest.mark.parametrize("mapper", ["segment_crop", "mask_former_semantic"])
def test_prompt_training_run_saves_prompts_that_two_stage_loads(tiny_clip_path, tmp_path, monkeypatch, mapper):
    monkeypatch.setenv("ZEGSEG_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "datasets"
    generate_toy_world(root, counts={"train": 4, "val": 2}, size=64, workers=1)
    register_all_toy(root, prefix=f"ts_mini_{mapper}_")
    out = tmp_path / "prompts"
    cfg = load_config(
        "configs/toy/two_stage_prompt_learning.yaml",
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.CLIP.NAME", str(tiny_clip_path),
            "MODEL.CLIP.PROMPT_LEARNER.N_CTX", "4",
            "DATASETS.TRAIN", f"('ts_mini_{mapper}_toy_train_seen_sem_seg',)",
            "DATASETS.TEST", f"('ts_mini_{mapper}_toy_val_all_sem_seg',)",
            "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MIN_SIZE_TEST", "64",
            "INPUT.DATASET_MAPPER_NAME", mapper,
            "INPUT.SEGMENT_CROP.SIZE", "(40, 32)",  # not the tiny CLIP's 32 x 32: its positional grid is resized
            "DATASETS.SAMPLE_PER_CLASS", "2",
            "SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.WARMUP_ITERS", "1",
            "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(out),
        ],
    )
    if mapper == "segment_crop":
        batch = next(iter(ZegsegTrainer.build_train_loader(cfg)))
        assert all(x["segment_sample"] and x["image"].shape == (3, 40, 32) for x in batch)
    trainer = ZegsegTrainer(cfg)
    initial = trainer.model.prompt_learner.ctx.detach().clone()
    trainer.resume_or_load(resume=False)
    trainer.train()
    trained = trainer.model.prompt_learner
    assert not torch.equal(trained.ctx.detach(), initial)
    results = ZegsegTrainer.test(cfg, trainer.model)["sem_seg"]
    assert 0.0 <= results["mIoU"] <= 100.0  # evaluated on ground-truth segments (2 images: unseen may be absent)

    model = tiny_two_stage(tiny_clip_path, "MODEL.CLIP.PROMPT_LEARNER.WEIGHTS", str(out / "model_final.pth")).eval()
    with torch.no_grad():
        expected = trained(model.clip_model, model.test_class_names)
    torch.testing.assert_close(model.test_text_embeddings, expected)
