"""CLIP-side building blocks: prompt sets, cached text embeddings, learned prompts, region crops, the text
classifier and the inference arithmetic."""

import copy
import math

import pytest
import torch
from clip import tokenize
from torch.nn import functional as F
from torchvision.ops import roi_align

from zegseg.modeling.clip import load_clip
from zegseg.modeling.clip.prompt_learner import PromptLearner, load_prompt_learner
from zegseg.modeling.clip.prompts import TEMPLATE_SETS, get_templates
from zegseg.modeling.clip.region_encoder import (
    RegionCLIPClassifier,
    expand_boxes,
    make_region_crops,
    make_zegformer_crops,
    masks_to_boxes,
    normalize_for_clip,
    zegformer_boxes,
)
from zegseg.modeling.clip.text_encoder import TextEmbedder, clip_text_encoder, embed_class_names
from zegseg.modeling.inference import calibrate, ensemble_logits, ensemble_probs, semantic_inference
from zegseg.modeling.text_classifier import TextEmbeddingClassifier

TEMPLATES = ["a photo of a {}.", "a drawing of the {}."]


@pytest.fixture(scope="module")
def clip_model(tiny_clip_path):
    return load_clip(str(tiny_clip_path))


class CountingEncoder:
    """Wraps an encode_fn and records how many prompts each call received."""

    def __init__(self, encode_fn):
        self.encode_fn = encode_fn
        self.calls = []

    def __call__(self, texts):
        self.calls.append(len(texts))
        return self.encode_fn(texts)


def _manual_prompt_embeddings(clip_model, texts):
    with torch.no_grad():
        feats = clip_model.encode_text(tokenize(texts, context_length=clip_model.context_length, truncate=True))
    return F.normalize(feats.float(), dim=-1)


# ------------------------------------------------------------------------------------------------------ prompts
def test_template_set_sizes():
    assert len(get_templates("imagenet80")) == 80
    assert len(set(get_templates("imagenet80"))) == 80
    assert len(get_templates("vild")) == 14
    assert len(get_templates("selected8")) == 8
    assert get_templates("single") == ["A photo of a {} in the scene"]
    assert len(get_templates("zegformer_region")) == 32
    for templates in TEMPLATE_SETS.values():
        assert all(t.count("{}") == 1 for t in templates)


def test_get_templates_errors_and_custom():
    with pytest.raises(ValueError, match="unknown prompt set 'nope'"):
        get_templates("nope")
    with pytest.raises(ValueError, match="CUSTOM_TEMPLATES"):
        get_templates("custom", custom=[])
    with pytest.raises(ValueError, match="exactly one"):
        get_templates("custom", custom=["no placeholder"])
    assert get_templates("custom", custom=["a {} here."]) == ["a {} here."]
    templates = get_templates("vild")
    templates.append("x {}")
    assert len(get_templates("vild")) == 14  # callers get a copy


# ------------------------------------------------------------------------------------------------- text encoder
def test_text_embedder_shapes_and_norms(clip_model):
    embedder = TextEmbedder(clip_model, TEMPLATES, disk_cache=False)
    emb = embedder(["cat", "dog", "tv, monitor"])
    assert emb.shape == (3, clip_model.text_projection.shape[1])
    assert emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert embedder([]).shape == (0, emb.shape[1])


def test_synonyms_and_templates_average_like_manual_computation(clip_model):
    embedder = TextEmbedder(clip_model, TEMPLATES, disk_cache=False)
    emb = embedder(["cat", "tv, monitor"])
    cat = _manual_prompt_embeddings(clip_model, [t.format("cat") for t in TEMPLATES]).mean(0)
    tv = _manual_prompt_embeddings(clip_model, [t.format(s) for s in ("tv", "monitor") for t in TEMPLATES]).mean(0)
    torch.testing.assert_close(emb[0], F.normalize(cat, dim=0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(emb[1], F.normalize(tv, dim=0), atol=1e-5, rtol=1e-5)
    # the synonym average is not the embedding of either synonym alone
    single = embedder(["tv", "monitor"])
    assert not torch.allclose(emb[1], single[0], atol=1e-4)
    assert not torch.allclose(emb[1], single[1], atol=1e-4)


def test_memory_cache_encodes_each_name_once(clip_model):
    counter = CountingEncoder(clip_text_encoder(clip_model, chunk_size=3))
    embedder = TextEmbedder(clip_model, TEMPLATES, disk_cache=False, encode_fn=counter)
    first = embedder(["cat", "dog"])
    second = embedder(["dog", "cat"])
    assert counter.calls == [4]
    torch.testing.assert_close(second, first.flip(0))
    embedder(["cat", "bird"])
    assert counter.calls == [4, 2]  # only the new name was encoded


def test_disk_cache_hit_in_fresh_embedder(clip_model, tmp_path):
    names = ["cat", "tv, monitor"]
    first = TextEmbedder(clip_model, TEMPLATES, cache_dir=tmp_path)
    emb = first(names)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [f"{first.cache_key(names)}.pt"]  # no temporary file left behind

    counter = CountingEncoder(clip_text_encoder(clip_model))
    fresh = TextEmbedder(clip_model, TEMPLATES, cache_dir=tmp_path, encode_fn=counter)
    torch.testing.assert_close(fresh(names), emb)
    assert counter.calls == []


def test_cache_key_depends_on_templates_names_and_weights(clip_model, tmp_path):
    base = TextEmbedder(clip_model, TEMPLATES, cache_dir=tmp_path)
    assert base.fingerprint is not None  # from load_clip's checkpoint_path
    key = base.cache_key(["cat", "dog"])
    assert key == TextEmbedder(clip_model, TEMPLATES, cache_dir=tmp_path).cache_key(["cat", "dog"])
    assert key != base.cache_key(["dog", "cat"])
    assert key != base.cache_key(["cat"])
    assert key != TextEmbedder(clip_model, TEMPLATES[:1], cache_dir=tmp_path).cache_key(["cat", "dog"])
    assert key != TextEmbedder(clip_model, TEMPLATES, cache_dir=tmp_path, fingerprint="other").cache_key(["cat", "dog"])


def test_unreadable_disk_cache_is_recomputed(clip_model, tmp_path):
    embedder = TextEmbedder(clip_model, TEMPLATES, cache_dir=tmp_path)
    (tmp_path / f"{embedder.cache_key(['cat'])}.pt").write_bytes(b"not a checkpoint")
    emb = embedder(["cat"])
    fresh_counter = CountingEncoder(clip_text_encoder(clip_model))
    fresh = TextEmbedder(clip_model, TEMPLATES, cache_dir=tmp_path, encode_fn=fresh_counter)
    torch.testing.assert_close(fresh(["cat"]), emb)
    assert fresh_counter.calls == []


def test_embed_class_names_is_differentiable():
    weight = torch.randn(5, 4, requires_grad=True)
    vocab = {w: i for i, w in enumerate(["a", "b", "c", "x", "y"])}

    def encode(texts):
        return weight[[vocab[t.split()[-1]] for t in texts]]

    out = embed_class_names(encode, ["a", "b, c"], ["{}", "the {}"])
    assert out.shape == (2, 4)
    out.sum().backward()
    assert weight.grad is not None and weight.grad[3:].abs().sum() == 0


# ------------------------------------------------------------------------------------------------ prompt learner
def test_prompt_learner_matches_clip_when_context_is_placeholder_tokens(clip_model):
    learner = PromptLearner(clip_model=clip_model, n_ctx=4)
    x_id = tokenize(["X"])[0, 1]
    with torch.no_grad():
        learner.ctx.copy_(clip_model.token_embedding.weight[x_id].expand(4, -1))
    feats = learner.encode_prompts(clip_model, ["cat.", "tv."])
    ref = clip_model.encode_text(tokenize(["X X X X cat.", "X X X X tv."], context_length=clip_model.context_length))
    torch.testing.assert_close(feats, ref, atol=1e-5, rtol=1e-5)


def test_prompt_learner_gradients_only_into_context(clip_model):
    torch.manual_seed(0)
    learner = PromptLearner(clip_model=clip_model, n_ctx=3)
    emb = learner(clip_model, ["cat", "tv, monitor"])
    assert emb.shape == (2, clip_model.text_projection.shape[1])
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2))
    emb[:, 0].sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in clip_model.parameters())
    assert list(learner.state_dict()) == ["ctx"]


def test_prompt_learner_rejects_oversized_context(clip_model):
    with pytest.raises(ValueError, match="do not fit"):
        PromptLearner(clip_model=clip_model, n_ctx=clip_model.context_length)


def test_prompt_learner_text_embedder_and_loading(clip_model, tmp_path):
    torch.manual_seed(1)
    learner = PromptLearner(clip_model=clip_model, n_ctx=2)
    expected = learner(clip_model, ["cat", "dog"]).detach()
    embedder = learner.text_embedder(clip_model, cache_dir=tmp_path)
    torch.testing.assert_close(embedder(["cat", "dog"]), expected, atol=1e-5, rtol=1e-5)
    other = PromptLearner(clip_model=clip_model, n_ctx=2)
    assert other.text_embedder(clip_model).cache_key(["cat"]) != embedder.cache_key(["cat"])

    path = tmp_path / "prompts.pth"
    torch.save({"model": {"prompt_learner.ctx": learner.ctx.detach()}}, path)
    loaded = load_prompt_learner(path, clip_model)
    torch.testing.assert_close(loaded.ctx, learner.ctx)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_prompt_learner(tmp_path / "missing.pth", clip_model)
    torch.save({"model": {"other": torch.zeros(1)}}, path)
    with pytest.raises(ValueError, match="expected 1"):
        load_prompt_learner(path, clip_model)


# --------------------------------------------------------------------------------------------------- region crops
def _l_shaped_mask(size=32):
    """Square rows/cols 8..23 without its top-left quadrant (rows/cols 8..15)."""
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[8:24, 8:24] = True
    mask[8:16, 8:16] = False
    return mask


def test_masks_to_boxes_and_expansion():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 9, 11] = True
    boxes, valid = masks_to_boxes(masks)
    torch.testing.assert_close(boxes, torch.tensor([[3.0, 2, 7, 5], [11, 9, 12, 10], [0, 0, 12, 10]]))
    assert valid.tolist() == [True, True, False]
    expanded = expand_boxes(boxes, 2.0, height=10, width=12)
    torch.testing.assert_close(expanded[0], torch.tensor([1.0, 0.5, 9.0, 6.5]))
    torch.testing.assert_close(expanded[1], torch.tensor([10.5, 8.5, 12.0, 10.0]))  # clamped to the image


def test_cropmask_crop_and_mask_styles():
    size, out = 32, 16
    image = (torch.arange(size).float() / 10).expand(3, size, size).clone()  # value = x / 10
    masks = torch.stack([_l_shaped_mask(size), torch.zeros(size, size, dtype=torch.bool)])
    col = (8 + torch.arange(out).float()) / 10  # the box is x in [8, 24): one input pixel per output pixel

    crops, valid = make_region_crops(image, masks, style="cropmask", out_size=out)
    assert crops.shape == (2, 3, out, out) and valid.tolist() == [True, False]
    assert crops[0, :, :7, :7].abs().max() == 0  # the quadrant outside the mask is CLIP's mean colour
    torch.testing.assert_close(crops[0, :, 9:15, 9:15], col[9:15].expand(3, 6, 6))
    assert crops[1].abs().max() == 0  # empty mask: whole-image box, nothing kept

    crops, _ = make_region_crops(image, masks, style="crop", out_size=out)
    torch.testing.assert_close(crops[0], col.expand(3, out, out))  # box crop, nothing blanked
    torch.testing.assert_close(crops[1], ((2 * torch.arange(out).float() + 0.5) / 10).expand(3, out, out))

    crops, _ = make_region_crops(image, masks, style="mask", out_size=out)
    whole = (2 * torch.arange(out).float() + 0.5) / 10  # the whole image at half resolution
    assert crops[0, :, :3].abs().max() == 0 and crops[0, :, :, 13:].abs().max() == 0
    torch.testing.assert_close(crops[0, :, 9:11, 9:11], whole[9:11].expand(3, 2, 2))

    crops, _ = make_region_crops(image, masks[:1], style="crop", out_size=24, expand_ratio=1.5)
    torch.testing.assert_close(crops[0], ((4 + torch.arange(24).float()) / 10).expand(3, 24, 24))  # box x in [4, 28)


def test_make_region_crops_rejects_bad_input():
    image, masks = torch.zeros(3, 8, 8), torch.zeros(1, 8, 8, dtype=torch.bool)
    with pytest.raises(ValueError, match="unknown crop style 'box'"):
        make_region_crops(image, masks, style="box", out_size=4)
    with pytest.raises(ValueError, match="must be bool"):
        make_region_crops(image, masks.float(), out_size=4)
    with pytest.raises(ValueError, match="share H, W"):
        make_region_crops(image, torch.zeros(1, 4, 8, dtype=torch.bool), out_size=4)


def test_normalize_for_clip_channel_order():
    rgb = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    torch.testing.assert_close(normalize_for_clip(rgb.flip(0), "BGR"), normalize_for_clip(rgb, "RGB"))
    mean_colour = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(3, 1, 1) * 255
    torch.testing.assert_close(normalize_for_clip(mean_colour.expand(3, 2, 2), "RGB"), torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="unknown input format"):
        normalize_for_clip(rgb, "YUV")


def test_region_classifier_encodes_valid_masks_in_chunks(clip_model):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 40, 48), dtype=torch.uint8)
    masks = torch.zeros(3, 40, 48, dtype=torch.bool)
    masks[0, 5:20, 10:30] = True
    masks[2, 25:, :] = True
    seen_inputs = []
    hook = clip_model.visual.register_forward_hook(lambda m, args, out: seen_inputs.append(tuple(args[0].shape)))
    try:
        classifier = RegionCLIPClassifier(
            procedure="roi_align", style="cropmask", chunk_size=1, input_format="BGR", logit_scale=50.0
        )
        emb, valid = classifier.encode(clip_model, image, masks)
    finally:
        hook.remove()
    res = clip_model.visual.input_resolution
    assert seen_inputs == [(1, 3, res, res)] * 2  # only the 2 non-empty masks, one chunk each
    assert valid.tolist() == [True, False, True]
    assert emb.shape == (3, clip_model.text_projection.shape[1])
    torch.testing.assert_close(emb.norm(dim=-1), torch.tensor([1.0, 0.0, 1.0]))

    crops, _ = make_region_crops(normalize_for_clip(image, "BGR"), masks[valid], style="cropmask", out_size=res)
    with torch.no_grad():
        ref = F.normalize(clip_model.encode_image(crops).float(), dim=-1)
    torch.testing.assert_close(emb[valid], ref, atol=1e-5, rtol=1e-5)

    logits_masks = torch.where(masks, 10.0, -10.0)[:, ::2, ::2]  # float logits at half resolution are resized
    emb2, valid2 = classifier.encode(clip_model, image, torch.where(masks, 10.0, -10.0))
    torch.testing.assert_close(emb2, emb)
    assert classifier.binarize(logits_masks, (40, 48)).shape == (3, 40, 48)

    text = F.normalize(torch.randn(4, emb.shape[1]), dim=-1)
    logits, valid3 = classifier(clip_model, image, masks, text)
    assert logits.shape == (3, 4) and valid3.tolist() == valid.tolist()
    torch.testing.assert_close(logits, 50.0 * emb @ text.T)


def test_region_classifier_all_empty_and_bad_options(clip_model):
    classifier = RegionCLIPClassifier(procedure="roi_align")
    emb, valid = classifier.encode(clip_model, torch.zeros(3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.bool))
    assert not valid.any() and emb.abs().sum() == 0
    with pytest.raises(ValueError, match="do not match the image size"):
        classifier.encode(clip_model, torch.zeros(3, 8, 8), torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="unknown crop style"):
        RegionCLIPClassifier(style="nope")
    with pytest.raises(ValueError, match="unknown crop procedure"):
        RegionCLIPClassifier(procedure="nope")
    with pytest.raises(ValueError, match="does not expand boxes"):
        RegionCLIPClassifier(procedure="zegformer", expand_ratio=1.2)


def _official_zegformer_box(mask):
    """The official ZegFormer box of one mask, written out as its code does it: cumulative sums per axis, the
    max's first index as the end, the first non-zero as the start, and the whole image for a box without area."""
    h, w = mask.shape
    cum_x = mask.sum(dim=0).cumsum(0).float()
    cum_y = mask.sum(dim=1).cumsum(0).float()
    x2, y2 = int(cum_x.argmax()), int(cum_y.argmax())
    cum_x[cum_x == 0], cum_y[cum_y == 0] = float("inf"), float("inf")
    x1, y1 = int(cum_x.argmin()), int(cum_y.argmin())
    if (y2 - y1) * (x2 - x1) == 0:
        return [0.0, 0.0, float(w), float(h)]
    return [float(x1), float(y1), float(x2), float(y2)]


def test_zegformer_crops_follow_the_official_procedure():
    torch.manual_seed(0)
    h, w, out = 30, 36, 12
    image = torch.randn(3, h, w)
    masks = torch.zeros(6, h, w, dtype=torch.bool)
    masks[0, 4:20, 7:30] = True
    masks[1, 10:11, 3:20] = True  # one row: no area, whole image
    masks[3, 29, 35] = True  # a single pixel in the corner: whole image
    masks[4] = torch.rand(h, w) > 0.7  # scattered
    masks[5, 20:, 30:] = True  # touches the bottom-right border
    boxes = zegformer_boxes(masks)
    assert boxes.tolist() == [_official_zegformer_box(m) for m in masks]

    crops = make_zegformer_crops(image, masks, style="cropmask", out_size=out)
    for q in range(len(masks)):  # one roi_align per masked image, as the official code does
        box = boxes[q : q + 1]
        ref = roi_align((image * masks[q])[None], [box], out, aligned=True)[0]
        torch.testing.assert_close(crops[q], ref)
    assert crops[2].abs().sum() == 0  # empty mask: a blank (mean-colour) whole-image crop, still sent
    crop_only = make_zegformer_crops(image, masks, style="crop", out_size=out)
    torch.testing.assert_close(crop_only[0], roi_align(image[None], [boxes[:1]], out, aligned=True)[0])
    logits = torch.where(masks, 4.0, -4.0)
    torch.testing.assert_close(make_zegformer_crops(image, logits, style="cropmask", out_size=out), crops)
    whole = make_zegformer_crops(image, logits, style="mask", out_size=out)
    small = F.interpolate(image[None], size=(out, out), mode="bilinear", align_corners=False)
    keep = F.interpolate(logits[:, None], size=(out, out), mode="bilinear", align_corners=False).sigmoid() > 0.5
    torch.testing.assert_close(whole, small * keep)


def test_zegformer_procedure_encodes_the_shared_blank_crop_once(clip_model):
    """Empty masks all give the same blank crop: CLIP sees it once, and every empty mask gets its embedding."""
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    logits = torch.full((4, 32, 32), -3.0)
    logits[1, 2:12, 3:15] = 3.0
    sizes = []
    hook = clip_model.visual.register_forward_hook(lambda m, args, out: sizes.append(args[0].shape[0]))
    try:
        emb, valid = RegionCLIPClassifier(procedure="zegformer").encode(clip_model, image, logits)
    finally:
        hook.remove()
    assert sizes == [2] and valid.all()  # one real crop and one blank crop instead of four crops
    padded = F.pad(normalize_for_clip(image, "BGR"), (0, 8, 0, 8))
    res = clip_model.visual.input_resolution
    with torch.no_grad():
        ref = F.normalize(clip_model.encode_image(make_zegformer_crops(padded, logits > 0, out_size=res)), dim=-1)
    torch.testing.assert_close(emb, ref.float(), atol=1e-5, rtol=1e-5)
    assert torch.equal(emb[0], emb[2]) and torch.equal(emb[0], emb[3])


def test_zegformer_procedure_crops_the_padded_input_and_uses_clips_scale(clip_model):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 20, 26), dtype=torch.uint8)
    logits = torch.full((2, 32, 32), -5.0)  # over the input padded to 32 x 32
    logits[0, 18:30, 20:31] = 5.0  # reaches into the padding
    classifier = RegionCLIPClassifier(procedure="zegformer", input_format="RGB")
    emb, valid = classifier.encode(clip_model, image, logits)
    assert valid.tolist() == [True, True]  # the empty mask is sent too (blank crop)
    padded = F.pad(normalize_for_clip(image, "RGB"), (0, 6, 0, 12))
    res = clip_model.visual.input_resolution
    with torch.no_grad():
        ref = F.normalize(clip_model.encode_image(make_zegformer_crops(padded, logits > 0, out_size=res)), dim=-1)
    torch.testing.assert_close(emb, ref.float(), atol=1e-5, rtol=1e-5)
    text = F.normalize(torch.randn(3, emb.shape[1]), dim=-1)
    scores, _ = classifier(clip_model, image, logits, text)
    torch.testing.assert_close(scores, clip_model.logit_scale.exp().float() * emb @ text.T)


def test_region_classifier_from_config():
    from detectron2.config import get_cfg

    from zegseg.config import add_zegseg_config

    cfg = get_cfg()
    add_zegseg_config(cfg)
    cfg.MODEL.CLIP.CROP_STYLE = "crop"
    cfg.INPUT.FORMAT = "RGB"
    classifier = RegionCLIPClassifier(cfg)
    assert classifier.style == "crop" and classifier.input_format == "RGB" and classifier.chunk_size == 32
    assert classifier.procedure == "zegformer" and classifier.logit_scale == 0.0  # the official defaults


# ---------------------------------------------------------------------------------------------- text classifier
def test_text_classifier_logits_shape_temperature_and_no_object():
    torch.manual_seed(0)
    text = torch.randn(5, 8) * 3
    x = torch.randn(2, 4, 8)
    clf = TextEmbeddingClassifier(embed_dim=8, temperature=0.01)
    clf.set_text_embeddings(text)
    torch.testing.assert_close(clf.text_embeddings.norm(dim=-1), torch.ones(5))
    logits = clf(x)
    assert logits.shape == (2, 4, 6)
    cos = F.normalize(x, dim=-1) @ F.normalize(text, dim=-1).T
    torch.testing.assert_close(logits[..., :5], cos / 0.01)
    torch.testing.assert_close(logits[..., 5], F.normalize(x, dim=-1) @ clf.no_object_embedding / 0.01)
    torch.testing.assert_close(clf(3 * x), logits)  # inputs are normalised

    warm = TextEmbeddingClassifier(embed_dim=8, temperature=0.1)
    warm.set_text_embeddings(text)
    warm.no_object_embedding.data.copy_(clf.no_object_embedding.data)
    torch.testing.assert_close(warm(x) * 10, logits)

    normed = TextEmbeddingClassifier(embed_dim=8, temperature=0.01, normalize_no_object=True)
    normed.no_object_embedding.data.copy_(clf.no_object_embedding.data * 7)
    bg = F.normalize(x, dim=-1) @ F.normalize(clf.no_object_embedding, dim=0) / 0.01
    torch.testing.assert_close(normed(x, text_embeddings=text)[..., 5], bg)

    logits.sum().backward()
    assert clf.no_object_embedding.grad is not None
    assert set(clf.state_dict()) == {"no_object_embedding"}  # text embeddings and fixed scale are not saved


def test_text_classifier_pixel_level_and_errors():
    torch.manual_seed(0)
    text = torch.randn(3, 6)
    pixels = torch.randn(2, 6, 4, 5)
    clf = TextEmbeddingClassifier(embed_dim=6, temperature=0.07, pixel_level=True, learn_temperature=True)
    clf.set_text_embeddings(text)
    out = clf(pixels)
    assert out.shape == (2, 3, 4, 5) and clf.no_object_embedding is None
    ref = torch.einsum("bdhw,kd->bkhw", F.normalize(pixels, dim=1), F.normalize(text, dim=-1)) / 0.07
    torch.testing.assert_close(out, ref)
    assert isinstance(clf.log_logit_scale, torch.nn.Parameter)
    assert math.isclose(clf.logit_scale.item(), 1 / 0.07, rel_tol=1e-6)
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        clf(torch.randn(2, 4, 6))
    with pytest.raises(RuntimeError, match="set_text_embeddings"):
        TextEmbeddingClassifier(embed_dim=6)(torch.randn(1, 2, 6))
    with pytest.raises(ValueError, match=r"\(K, 6\)"):
        clf.set_text_embeddings(torch.randn(3, 5))


@pytest.mark.parametrize("pixel_level", [False, True])
def test_text_classifier_runs_in_float32_under_bfloat16_autocast(pixel_level):
    """Logits of 1 / τ = 100 in bfloat16 would be rounded to 0.25 steps; the head keeps float32 under autocast."""
    torch.manual_seed(0)
    clf = TextEmbeddingClassifier(embed_dim=16, temperature=0.01, pixel_level=pixel_level)
    clf.set_text_embeddings(torch.randn(7, 16))
    proj = torch.nn.Conv2d(16, 16, 1) if pixel_level else torch.nn.Linear(16, 16)
    x = torch.randn(2, 16, 3, 4) if pixel_level else torch.randn(2, 5, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = proj(x)
        logits = clf(emb)
    assert emb.dtype == torch.bfloat16 and logits.dtype == torch.float32
    exact = clf(emb.float())  # the same bfloat16 embeddings, classified outside autocast
    torch.testing.assert_close(logits, exact, rtol=0, atol=1e-4)
    logits.sum().backward()
    assert proj.weight.grad is not None
    if not pixel_level:
        assert clf.no_object_embedding.grad is not None


# ------------------------------------------------------------------------------------------------------ inference
def test_semantic_inference_matches_hand_computation():
    torch.manual_seed(0)
    cls_logits = torch.randn(3, 3)  # Q = 3, K = 2 (+ no object)
    mask_logits = torch.randn(3, 2, 2)
    out = semantic_inference(cls_logits, mask_logits)
    probs = cls_logits.exp() / cls_logits.exp().sum(-1, keepdim=True)
    expected = torch.zeros(2, 2, 2)
    for q in range(3):
        for c in range(2):
            expected[c] += probs[q, c] / (1 + torch.exp(-mask_logits[q]))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(semantic_inference(probs[:, :2], mask_logits, cls_probs=True), expected)
    batched = semantic_inference(cls_logits.expand(2, 3, 3), mask_logits.expand(2, 3, 2, 2))
    torch.testing.assert_close(batched, expected.expand(2, 2, 2, 2))


def test_ensemble_seen_unseen_and_all_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    q = torch.tensor([[0.2, 0.2, 0.6], [0.7, 0.1, 0.2]])
    unseen = torch.tensor([False, True, False])
    lam = 2 / 3
    out = ensemble_probs(p, q, unseen, lam)
    for i in range(2):
        for c in range(3):
            if unseen[c]:
                expected = p[i, c] ** (1 - lam) * q[i, c] ** lam
            else:
                expected = p[i, c] ** lam * q[i, c] ** (1 - lam)
            assert math.isclose(out[i, c].item(), expected.item(), rel_tol=1e-5)

    out_all = ensemble_probs(p, q, unseen, lam, mode="all")
    torch.testing.assert_close(out_all, p ** (1 - lam) * q**lam)

    out_mean = ensemble_probs(p, q, unseen, lam, mean_seen_clip=True)
    seen_mean = torch.tensor([(0.2 + 0.6) / 2, (0.7 + 0.2) / 2])
    torch.testing.assert_close(out_mean[:, 0], p[:, 0] ** lam * seen_mean ** (1 - lam))
    torch.testing.assert_close(out_mean[:, 2], p[:, 2] ** lam * seen_mean ** (1 - lam))
    torch.testing.assert_close(out_mean[:, 1], out[:, 1])

    neutral = ensemble_probs(p, q, unseen, lam, clip_valid=torch.tensor([True, False]))
    torch.testing.assert_close(neutral[0], out[0])
    torch.testing.assert_close(neutral[1], torch.where(unseen, p[1] ** (1 - lam), p[1] ** lam))

    with pytest.raises(ValueError, match="unknown ensemble mode"):
        ensemble_probs(p, q, unseen, lam, mode="seen")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        ensemble_probs(p, q, unseen, 1.5)


def test_ensemble_logits_softmaxes_both_branches():
    torch.manual_seed(0)
    seg = torch.randn(4, 4)  # K = 3 + no object
    clip_logits = torch.randn(4, 3) * 5
    unseen = torch.tensor([True, False, True])
    out = ensemble_logits(seg, clip_logits, unseen, 0.8)
    expected = ensemble_probs(F.softmax(seg, -1)[:, :3], F.softmax(clip_logits, -1), unseen, 0.8)
    torch.testing.assert_close(out, expected)
    with_bg = ensemble_logits(seg, clip_logits, unseen, 0.8, clip_no_object=True)
    p_clip = F.softmax(torch.cat([clip_logits, seg[:, 3:]], dim=1), -1)[:, :3]
    torch.testing.assert_close(with_bg, ensemble_probs(F.softmax(seg, -1)[:, :3], p_clip, unseen, 0.8))


def test_calibrate_seen_classes():
    scores = torch.ones(3, 2, 2)
    seen = torch.tensor([True, False, True])
    out = calibrate(scores, seen, 0.1)
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([0.9, 1.0, 0.9]))
    per_query = calibrate(torch.zeros(4, 3), seen, 0.5, dim=-1)
    torch.testing.assert_close(per_query, torch.tensor([-0.5, 0.0, -0.5]).expand(4, 3))
    assert calibrate(scores, seen, 0.0) is scores
    assert torch.equal(scores, torch.ones(3, 2, 2))  # not in place by default
    assert calibrate(scores, seen, 0.1, inplace=True) is scores
    torch.testing.assert_close(scores, out)
    with pytest.raises(ValueError, match="seen has shape"):
        calibrate(scores, torch.tensor([True]), 0.1)


def test_load_clip_keeps_fp32_when_asked(tiny_clip_path):
    """fp32 on CPU always; ``half_on_gpu=False`` keeps fp32 on CUDA too (the simple baseline's precision)."""
    assert load_clip(str(tiny_clip_path)).text_projection.dtype == torch.float32
    assert load_clip(str(tiny_clip_path), half_on_gpu=False).text_projection.dtype == torch.float32
    if torch.cuda.is_available():
        assert load_clip(str(tiny_clip_path), device="cuda").text_projection.dtype == torch.float16
        kept = load_clip(str(tiny_clip_path), device="cuda", half_on_gpu=False)
        assert kept.text_projection.dtype == torch.float32


def test_cache_key_depends_on_the_text_towers_dtype(clip_model, tmp_path):
    key = TextEmbedder(clip_model, ["a photo of a {}."], cache_dir=tmp_path, fingerprint="f").cache_key(["cat"])
    half = TextEmbedder(copy.deepcopy(clip_model).half(), ["a photo of a {}."], cache_dir=tmp_path, fingerprint="f")
    assert half.cache_key(["cat"]) != key
