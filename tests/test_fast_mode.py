"""Fast mode (mask_classification.query_selection): which queries go to CLIP, and what it does to the output."""
import pytest
import torch
from detectron2.modeling import build_model

import zegseg  # noqa: F401
from zegseg.engine.setup_config import load_config
from zegseg.modeling.mask_classification.query_selection import QuerySelector

from .helpers import TINY_INFERENCE_OPTS

FAST_OFF_CUTOFFS = [
    "MODEL.CLIP.FAST_MODE.ENABLED", "True",
    "MODEL.CLIP.FAST_MODE.MIN_CONTRIBUTION", "0.0",
    "MODEL.CLIP.FAST_MODE.MIN_MASK_AREA", "0.0",
    "MODEL.CLIP.FAST_MODE.MAX_QUERIES", "0",
    "MODEL.CLIP.FAST_MODE.DUPLICATE_IOU", "0.0",
]


def tiny_model(config, clip_path, *opts, queries=8):
    overrides = TINY_INFERENCE_OPTS + ["MODEL.TRANSFORMER_DECODER.NUM_QUERIES", str(queries)]
    cfg = load_config(config, overrides + ["MODEL.CLIP.NAME", str(clip_path), *opts])
    torch.manual_seed(0)
    return build_model(cfg).eval()


def images(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 255, (3, 64, 96), generator=g, dtype=torch.uint8)} for _ in range(n)]


def outputs(model, batch):
    with torch.no_grad():
        return [r["sem_seg"] for r in model(batch)]


class Recorder:
    """Wraps a selector and keeps its inputs and outputs."""

    def __init__(self, selector):
        self.selector, self.calls = selector, []

    def __call__(self, bound, masks):
        keep, source = self.selector(bound, masks)
        self.calls.append((bound, masks, keep, source))
        return keep, source

    def __getattr__(self, name):  # the selector's options
        return getattr(self.selector, name)


# ------------------------------------------------------------------------------------------------ the selector
def square_masks(boxes, size=20):
    """(Q, size, size) logits: +10 inside each (y1, y2, x1, x2) box, -10 outside."""
    masks = torch.full((len(boxes), size, size), -10.0)
    for m, (y1, y2, x1, x2) in zip(masks, boxes):
        m[y1:y2, x1:x2] = 10.0
    return masks


def test_disabled_cutoffs_keep_every_query_with_its_own_crop():
    masks = square_masks([(0, 5, 0, 5), (0, 5, 0, 5), (10, 20, 10, 20), (0, 0, 0, 0)])
    keep, source = QuerySelector()(torch.tensor([0.9, 0.0, 0.1, 0.5]), masks)
    assert keep.tolist() == [0, 1, 2, 3]
    assert source is None  # every query uses its own crop
    assert QuerySelector(duplicate_iou=1.0)(torch.tensor([0.9, 0.0, 0.1, 0.5]), masks)[1].tolist() == [0, 0, 2, 3]


def test_contribution_cutoff_uses_bound_times_mask_peak():
    masks = square_masks([(0, 5, 0, 5), (0, 5, 0, 5), (0, 5, 0, 5)])
    masks[2] = -2.0  # peak sigmoid 0.12
    keep, _ = QuerySelector(min_contribution=0.1)(torch.tensor([0.5, 0.05, 0.5]), masks)
    assert keep.tolist() == [0]
    keep, _ = QuerySelector(min_contribution=0.05)(torch.tensor([0.5, 0.05, 0.5]), masks)
    assert keep.tolist() == [0, 2]  # 0.5 * 0.12 = 0.06 >= 0.05; 0.05 * ~1 < 0.05


def test_area_cutoff_cap_and_best_query_always_kept():
    masks = square_masks([(0, 2, 0, 2), (0, 10, 0, 10), (0, 20, 0, 20), (0, 4, 0, 5)])  # areas 1 %, 25 %, 100 %, 5 %
    bound = torch.tensor([0.1, 0.2, 0.3, 0.9])
    assert QuerySelector(min_mask_area=0.04)(bound, masks)[0].tolist() == [1, 2, 3]
    assert QuerySelector(max_queries=2)(bound, masks)[0].tolist() == [2, 3]
    bound = torch.tensor([0.9, 0.2, 0.3, 0.4])
    assert QuerySelector(min_mask_area=0.5)(bound, masks)[0].tolist() == [0, 2]  # 0 has the largest bound


def test_near_duplicates_borrow_the_crop_of_the_best_query():
    # 0 and 2 identical; 1 overlaps 0 with IoU 80/100 = 0.8; 3 elsewhere.
    masks = square_masks([(0, 10, 0, 10), (0, 8, 0, 10), (0, 10, 0, 10), (12, 20, 12, 20)])
    bound = torch.tensor([0.5, 0.9, 0.7, 0.3])
    keep, source = QuerySelector(duplicate_iou=1.0)(bound, masks)
    assert source.tolist() == [2, 1, 2, 3]
    keep, source = QuerySelector(duplicate_iou=0.75)(bound, masks)
    assert source.tolist() == [1, 1, 1, 3]
    keep, source = QuerySelector(duplicate_iou=0.75, min_contribution=0.8)(bound, masks)
    assert keep.tolist() == [1] and source.tolist() == [0]  # positions refer to the kept list


@pytest.mark.parametrize(
    "kwargs",
    [{"min_contribution": -1}, {"min_mask_area": 1.5}, {"max_queries": -2}, {"duplicate_iou": 1.2}],
)
def test_bad_cutoffs_are_rejected(kwargs):
    with pytest.raises(ValueError):
        QuerySelector(**kwargs)


# ------------------------------------------------------------------------------------------------ the models
@pytest.mark.parametrize("config", ["configs/toy/zegformer.yaml", "configs/toy/two_stage.yaml"])
def test_fast_mode_with_cutoffs_disabled_is_exactly_exact_mode(config, tiny_clip_path):
    exact = tiny_model(config, tiny_clip_path)
    fast = tiny_model(config, tiny_clip_path, *FAST_OFF_CUTOFFS)
    fast.load_state_dict(exact.state_dict())
    assert exact.query_selector is None and isinstance(fast.query_selector, QuerySelector)
    fast.query_selector = Recorder(fast.query_selector)
    batch = images()
    for a, b in zip(outputs(exact, batch), outputs(fast, batch)):
        assert torch.equal(a, b)
    assert len(fast.query_selector.calls) == len(batch)  # the selection really ran


@pytest.mark.parametrize("config", ["configs/toy/zegformer.yaml", "configs/toy/two_stage.yaml"])
def test_dropped_queries_move_scores_by_at_most_their_bound(config, tiny_clip_path):
    exact = tiny_model(config, tiny_clip_path, "MODEL.TWO_STAGE.ENSEMBLE_WEIGHT", "0.6")
    fast = tiny_model(config, tiny_clip_path, *FAST_OFF_CUTOFFS, "MODEL.TWO_STAGE.ENSEMBLE_WEIGHT", "0.6")
    fast.load_state_dict(exact.state_dict())
    batch = images(n=1)
    recorder = Recorder(fast.query_selector)
    fast.query_selector = recorder
    outputs(fast, batch)
    bound, masks, _, _ = recorder.calls[0]
    contribution = bound * masks.flatten(1).sigmoid().amax(1)
    cutoff = float(contribution.median())
    recorder.selector = QuerySelector(min_contribution=cutoff)
    recorder.calls.clear()
    (a,), (b,) = outputs(exact, batch), outputs(fast, batch)
    _, _, keep, source = recorder.calls[0]
    dropped = torch.ones(len(bound), dtype=torch.bool)
    dropped[keep] = False
    assert 0 < int(dropped.sum()) < len(bound)
    assert source is None
    assert (a - b).abs().max() <= float(contribution[dropped].sum()) + 1e-5
    assert not torch.equal(a, b)


def test_merged_duplicates_receive_their_sources_clip_logits(tiny_clip_path):
    model = tiny_model("configs/toy/zegformer.yaml", tiny_clip_path)
    image = images(n=1)[0]["image"]
    masks = square_masks([(0, 30, 0, 40), (0, 30, 0, 40), (32, 64, 50, 96), (10, 50, 20, 60)], size=64)
    masks = torch.cat([masks, masks[:, :, :32]], dim=2)  # (4, 64, 96)
    with torch.no_grad():
        ref_logits, ref_valid = model.region_clip_logits(image, masks, (64, 96))
        logits, valid = model.region_clip_logits(image, masks, (64, 96), torch.tensor([1, 1, 2, 1]))
    assert torch.allclose(logits[[0, 1, 3]], ref_logits[1].expand(3, -1), atol=1e-5)
    assert torch.allclose(logits[2], ref_logits[2], atol=1e-5)
    assert valid.all() and ref_valid.all()


def test_fast_mode_key_builds_the_selector_and_is_absent_without_clip_branch(tiny_clip_path):
    fast = tiny_model("configs/toy/zegformer.yaml", tiny_clip_path, "MODEL.CLIP.FAST_MODE.ENABLED", "True",
                      "MODEL.CLIP.FAST_MODE.MAX_QUERIES", "3")
    assert fast.query_selector.max_queries == 3
    no_branch = tiny_model("configs/toy/zegformer.yaml", tiny_clip_path, "MODEL.CLIP.FAST_MODE.ENABLED", "True",
                           "MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH", "False")
    assert no_branch.query_selector is None
    out = outputs(fast, images(n=1))[0]
    assert out.shape == (35, 64, 96) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ the bound
OFFICIAL_CROPS = ["MODEL.CLIP.CROP_PROCEDURE", "zegformer"]  # CLIP always sees a crop (never abstains)


@pytest.mark.parametrize("opts", [
    ["MODEL.ZEGFORMER.CLIP_NO_OBJECT", "True", "MODEL.ZEGFORMER.MEAN_SEEN_CLIP", "True", *OFFICIAL_CROPS],
    ["MODEL.ZEGFORMER.CLIP_NO_OBJECT", "True", "MODEL.ZEGFORMER.MEAN_SEEN_CLIP", "False", *OFFICIAL_CROPS],
    ["MODEL.ZEGFORMER.CLIP_NO_OBJECT", "False", "MODEL.ZEGFORMER.ENSEMBLE_MODE", "all", *OFFICIAL_CROPS],
    ["MODEL.CLIP.CROP_PROCEDURE", "roi_align"],
    ["MODEL.META_ARCHITECTURE", "TwoStageCLIP", "MODEL.CLIP.CROP_PROCEDURE", "roi_align"],
    ["MODEL.META_ARCHITECTURE", "TwoStageCLIP", "MODEL.CLIP.CROP_PROCEDURE", "roi_align",
     "MODEL.TWO_STAGE.ENSEMBLE_MODE", "all"],
    ["MODEL.META_ARCHITECTURE", "TwoStageCLIP", "MODEL.CLIP.CROP_PROCEDURE", "simple_baseline",
     "MODEL.TWO_STAGE.ENSEMBLE_WEIGHT", "0.0"],
])
def test_class_prob_bound_holds_for_any_clip_output(opts, tiny_clip_path):
    model = tiny_model("configs/toy/zegformer.yaml", tiny_clip_path, *opts, queries=6)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 36, generator=g) * 20
    logits[:3, -1] = 40.0  # confident "no object" queries: the no-object bound is far below 1 there
    bound = model.class_prob_bound(logits)
    scale = model.region_classifier.scale(model.clip_model)
    worst = torch.full((35, 35), -scale).fill_diagonal_(scale)  # CLIP sure of one class, each class in turn
    trials = torch.cat([worst, (torch.rand(200, 35, generator=g) * 2 - 1) * scale])
    for clip_logits in trials:
        clip = clip_logits.expand(6, -1)
        for valid in (torch.ones(6, dtype=torch.bool), torch.tensor([True, False] * 3)):
            if model.region_classifier.crops_padded_input and not valid.all():
                continue  # the official procedure always crops
            assert (model.combine_with_clip(logits, clip, valid) <= bound * (1 + 1e-5) + 1e-12).all()
    if "TwoStageCLIP" not in opts and "roi_align" not in opts and opts[1] == "True":
        assert bound[:3].max() < 1e-3  # the no-object column makes the bound tight where CLIP cannot win
