"""Leftover regions (MODEL.CLIP.LEFTOVER_MIN_AREA): unclaimed pixels become CLIP-classified segments."""
import torch

from zegseg.modeling.mask_classification.leftover import claim_map, leftover_regions

from .test_zegformer import tiny_zegformer


def test_claim_map_by_hand():
    masks = torch.stack([torch.full((2, 2), 3.0), torch.full((2, 2), -1.0)])
    masks[1, 0, 0] = 9.0
    expected = torch.sigmoid(torch.tensor([[9.0, 3.0], [3.0, 3.0]]))
    assert torch.allclose(claim_map(masks), expected)
    assert torch.equal(claim_map(masks[:0]), torch.zeros(2, 2))


def test_a_no_object_segment_keeps_its_pixels_out_of_the_leftover_region(tiny_clip_path):
    """An unseen thing is "no object" to the seen-class classifier, but its mask is right: the region around it
    (unseen stuff no segment claims) must not include it, or CLIP names the region after the thing in its crop."""
    model = tiny_zegformer(tiny_clip_path, "MODEL.CLIP.LEFTOVER_MIN_AREA", "0.05").eval()
    model.set_vocabulary(["sky", "grass", "red star"], unseen_classes=["grass", "red star"])
    q = model.transformer_decoder.num_queries
    logits = torch.full((q, 4), -5.0)
    logits[:, 3] = 5.0  # every query "no object"; query 0's mask is a star in the middle of unseen grass
    masks = torch.full((q, 16, 16), -10.0)
    masks[0, 6:10, 6:10] = 10.0
    region_crops = []

    def fake_clip(clip_model, image, m, text):  # CLIP: "red star" for any crop showing the star, else "grass"
        star = m[:, 24:40, 24:40].flatten(1).amax(1) > 0
        region_crops.append(star[1:].tolist())
        out = torch.zeros(m.shape[0], 3)
        out[star, 2] = 10.0
        out[~star, 1] = 10.0
        return out, torch.ones(m.shape[0], dtype=torch.bool)

    model.region_classifier.forward = fake_clip
    labels = model.segment_image(torch.zeros(3, 64, 64), logits, masks, (64, 64)).argmax(0)
    assert region_crops == [[False] * (q - 1) + [False]]  # the one leftover region leaves the star out
    assert (labels[26:38, 26:38] == 2).all()  # the star, from query 0's segment and CLIP
    assert (labels[:20] == 1).all() and (labels[44:] == 1).all()  # the grass around it, from the region


def test_leftover_regions_keep_large_unclaimed_components_inside_the_image():
    claim = torch.ones(8, 10)
    claim[:, :3] = 0.2  # an unclaimed strip, 6 x 3 inside the image (0.3 of it)
    claim[0, 8] = 0.1  # a 1-pixel unclaimed spot
    claim[6:, :] = 0.0  # padding rows (image is 6 x 10): never part of a region
    regions, weights = leftover_regions(claim, (6, 10), min_area=0.1)
    assert regions.shape == (1, 8, 10)
    expected = torch.zeros(8, 10, dtype=torch.bool)
    expected[:6, :3] = True
    assert torch.equal(regions[0], expected)
    assert torch.allclose(weights[0], expected * 0.8)
    regions, _ = leftover_regions(claim, (6, 10), min_area=0.01)
    assert regions.shape[0] == 2  # the spot counts when small regions are allowed
    assert leftover_regions(torch.ones(4, 4), (4, 4), 0.0)[0].shape == (0, 4, 4)


def test_unclaimed_pixels_take_clips_class_of_their_region(tiny_clip_path):
    model = tiny_zegformer(tiny_clip_path, "MODEL.CLIP.LEFTOVER_MIN_AREA", "0.05").eval()
    model.set_vocabulary(["sky", "grass", "red star"], unseen_classes=["red star"])
    q = model.transformer_decoder.num_queries
    logits = torch.full((q, 4), -5.0)
    logits[:, 3] = 5.0  # every query "no object" ...
    logits[0] = torch.tensor([5.0, 0.0, 0.0, -5.0])  # ... but query 0: "sky" on the left half
    masks = torch.full((q, 16, 16), -10.0)
    masks[0, :, :8] = 10.0
    calls = []

    def fake_clip(clip_model, image, m, text):  # CLIP says "sky" for the queries and "red star" for regions
        calls.append(m.shape[0])
        out = torch.zeros(m.shape[0], 3)
        out[:q, 0] = 10.0
        out[q:, 2] = 10.0
        return out, torch.ones(m.shape[0], dtype=torch.bool)

    model.region_classifier.forward = fake_clip
    scores = model.segment_image(torch.zeros(3, 64, 64), logits, masks, (64, 64))
    labels = scores.argmax(0)
    assert calls == [q + 1]  # one CLIP call: the queries, then the single leftover region (the right half)
    assert (labels[:, :28] == 0).all() and (labels[:, 36:] == 2).all()

    model.leftover_min_area = 0.0
    calls.clear()
    labels_off = model.segment_image(torch.zeros(3, 64, 64), logits, masks, (64, 64)).argmax(0)
    assert calls == [q] and not (labels_off[:, 36:] == 2).any()


def test_options_belong_to_the_clip_image_branch(tiny_clip_path):
    opts = ["MODEL.CLIP.LEFTOVER_MIN_AREA", "0.01", "MODEL.CLIP.COMPONENT_MIN_AREA", "0.01"]
    with_branch = tiny_zegformer(tiny_clip_path, *opts)
    assert with_branch.leftover_min_area == 0.01 and with_branch.component_min_area == 0.01
    without = tiny_zegformer(tiny_clip_path, *opts, "MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH", "False")
    assert without.leftover_min_area == 0.0 and without.component_min_area == 0.0


def test_components_and_leftover_run_with_fast_mode(tiny_clip_path):
    model = tiny_zegformer(
        tiny_clip_path,
        "MODEL.CLIP.COMPONENT_MIN_AREA", "0.01", "MODEL.CLIP.LEFTOVER_MIN_AREA", "0.01",
        "MODEL.CLIP.FAST_MODE.ENABLED", "True", "MODEL.CLIP.FAST_MODE.MAX_QUERIES", "2",
    ).eval()
    with torch.no_grad():
        out = model([{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}])
    assert out[0]["sem_seg"].shape == (35, 64, 64) and torch.isfinite(out[0]["sem_seg"]).all()


# ------------------------------------------------------------------------------ components (COMPONENT_MIN_AREA)
def test_split_components_by_hand():
    from zegseg.modeling.mask_classification.components import OFF_MASK_LOGIT, split_components

    masks = torch.full((3, 6, 8), -4.0)
    masks[0, :2, :2] = 3.0  # query 0: two parts, 4 px and 6 px
    masks[0, 3:5, 5:8] = 2.0
    masks[1, 5, 0] = 5.0  # query 1: a single pixel
    masks[2, :, 7] = 1.0  # query 2: a column, partly in the padding (visible: 5 x 8)
    source, segs = split_components(masks, (5, 8), min_area=4 / 40)
    assert source.tolist() == [0, 0, 2]
    first = torch.full((6, 8), OFF_MASK_LOGIT)  # the component and a one-pixel margin keep the query's logits
    first[:3, :3] = -4.0
    first[:2, :2] = 3.0
    assert torch.equal(segs[0], first)
    assert (segs[1, 3:5, 5:8] == 2.0).all() and (segs[1] == 2.0).sum() == 6 and (segs[1, :2] == OFF_MASK_LOGIT).all()
    assert (segs[2, :5, 7] == 1.0).all() and (segs[2, :, :6] == OFF_MASK_LOGIT).all()
    source, segs = split_components(masks, (5, 8), min_area=0.0)
    assert source.tolist() == [0, 0, 2]  # query 1's pixel lies in the padding row
    source, segs = split_components(masks, (5, 8), min_area=0.9)
    assert source.shape == (0,) and segs.shape == (0, 6, 8)


def test_components_get_their_own_clip_crops(tiny_clip_path):
    model = tiny_zegformer(tiny_clip_path, "MODEL.CLIP.COMPONENT_MIN_AREA", "0.01").eval()
    model.set_vocabulary(["sky", "grass", "red star"], unseen_classes=["red star"])
    q = model.transformer_decoder.num_queries
    logits = torch.full((q, 4), -5.0)
    logits[:, 3] = 5.0
    logits[0] = torch.tensor([0.0, 0.0, 3.0, -5.0])  # query 0: "red star", over two separate squares
    masks = torch.full((q, 16, 16), -10.0)
    masks[0, 2:6, 2:6] = 10.0
    masks[0, 10:14, 10:14] = 10.0
    seen_crops = []

    def fake_clip(clip_model, image, m, text):  # CLIP: "red star" for the top-left crop, "sky" for the other
        seen_crops.append(m.shape[0])
        out = torch.zeros(m.shape[0], 3)
        top_left = m[:, :32, :32].flatten(1).amax(1) > 0
        out[top_left, 2] = 10.0
        out[~top_left, 0] = 10.0
        return out, torch.ones(m.shape[0], dtype=torch.bool)

    model.region_classifier.forward = fake_clip
    labels = model.segment_image(torch.zeros(3, 64, 64), logits, masks, (64, 64)).argmax(0)
    assert seen_crops == [2]  # one crop per component; the empty queries have none
    assert (labels[10:22, 10:22] == 2).all() and (labels[42:54, 42:54] == 0).all()


def test_an_image_without_any_mask_part_is_one_leftover_region(tiny_clip_path):
    """No query's mask reaches the component size: no segment at all, and the whole image is a leftover region."""
    model = tiny_zegformer(
        tiny_clip_path, "MODEL.CLIP.COMPONENT_MIN_AREA", "0.01", "MODEL.CLIP.LEFTOVER_MIN_AREA", "0.01"
    ).eval()
    model.set_vocabulary(["sky", "grass", "red star"], unseen_classes=["red star"])
    q = model.transformer_decoder.num_queries
    logits = torch.zeros(q, 4)
    masks = torch.full((q, 16, 16), -10.0)
    calls = []

    def fake_clip(clip_model, image, m, text):
        calls.append(m.shape[0])
        return torch.tensor([[0.0, 10.0, 0.0]]).expand(m.shape[0], -1), torch.ones(m.shape[0], dtype=torch.bool)

    model.region_classifier.forward = fake_clip
    labels = model.segment_image(torch.zeros(3, 64, 64), logits, masks, (64, 64)).argmax(0)
    assert calls == [1] and (labels == 1).all()
