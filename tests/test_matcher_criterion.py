"""Hungarian matcher and set criterion on hand-built and small random cases."""
import itertools
import math

import pytest
import torch
from detectron2.config import get_cfg
from fvcore.nn import sigmoid_focal_loss

from zegseg.config import add_zegseg_config
from zegseg.modeling.mask_classification.criterion import SetCriterion, dice_loss
from zegseg.modeling.mask_classification.matcher import (
    HungarianMatcher,
    pairwise_dice_cost,
    pairwise_sigmoid_focal_cost,
)


def _target(labels, masks):
    return {"labels": torch.as_tensor(labels, dtype=torch.int64), "masks": torch.as_tensor(masks, dtype=torch.bool)}


def _random_masks(g, h, w, generator):
    return torch.rand(g, h, w, generator=generator) > 0.5


# ------------------------------------------------------------------------------------------------------ matcher
def test_matcher_finds_optimum_where_greedy_fails():
    # p(c) per query over (class 0, class 1, no object); targets: class 0, class 1.
    probs = torch.tensor([[0.50, 0.45, 0.05], [0.45, 0.05, 0.50], [0.10, 0.10, 0.80]])
    # Greedy takes the best pair (q0, t0) first, then (q2, t1): total p = 0.60.
    # The optimum is (q0, t1) + (q1, t0): total p = 0.90.
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=0.0, cost_dice=0.0)
    masks = torch.zeros(1, 3, 4, 4)
    target = _target([0, 1], torch.zeros(2, 4, 4))
    [(queries, tgts)] = matcher(probs.log()[None], masks, [target])
    assert dict(zip(queries.tolist(), tgts.tolist())) == {0: 1, 1: 0}
    cost = matcher.cost_matrix(probs.log(), masks[0], target["labels"], target["masks"])
    assert torch.allclose(cost, -probs[:, :2])
    assert _greedy(cost) == {0: 0, 2: 1}
    assert queries.dtype == tgts.dtype == torch.int64


def _columns(lo, hi):
    m = torch.zeros(8, 8, dtype=torch.bool)
    m[:, lo:hi] = True
    return m


def _greedy(cost):
    cost = cost.clone()
    pairs = {}
    for _ in range(min(cost.shape)):
        q, g = divmod(int(cost.argmin()), cost.shape[1])
        pairs[q] = g
        cost[q, :] = float("inf")
        cost[:, g] = float("inf")
    return pairs


def test_matcher_masks_only_optimum_where_greedy_fails():
    # Targets A = columns 0-3, B = columns 4-7. Query 0 covers columns 0-5, query 1 columns 2-3.
    # Dice costs ~ [[0.2 (q0,A), 0.6 (q0,B)], [0.33 (q1,A), 1.0 (q1,B)]]: greedy takes (q0, A) then (q1, B),
    # total 1.2; the optimum (q0, B) + (q1, A) costs 0.93.
    targets = [_target([0, 0], torch.stack([_columns(0, 4), _columns(4, 8)]))]
    pred = torch.stack([_columns(0, 6), _columns(2, 4)]).float() * 20 - 10
    matcher = HungarianMatcher(cost_class=0.0, cost_mask=0.0, cost_dice=1.0)
    cost = matcher.cost_matrix(None, pred, targets[0]["labels"], targets[0]["masks"])
    greedy = _greedy(cost)
    assert greedy == {0: 0, 1: 1}
    [(queries, tgts)] = matcher(None, pred[None], targets)
    optimum = dict(zip(queries.tolist(), tgts.tolist()))
    assert optimum == {0: 1, 1: 0}
    assert cost[queries, tgts].sum() < sum(cost[q, g] for q, g in greedy.items()) - 0.2


def _naive_cost(logits, masks, labels, tgt_masks, wc, wm, wd, alpha, gamma):
    """Per-pair loop; target masks downsampled by taking every 2nd pixel (= nearest for a factor 2)."""
    tgt_small = tgt_masks[:, ::2, ::2].float()
    prob = logits.softmax(-1)
    cost = torch.zeros(masks.shape[0], labels.shape[0])
    for q in range(masks.shape[0]):
        for g in range(labels.shape[0]):
            x = masks[q].flatten()
            t = tgt_small[g].flatten()
            focal = sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma, reduction="mean")
            p = x.sigmoid()
            dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
            cost[q, g] = -wc * prob[q, labels[g]] + wm * focal + wd * dice
    return cost


def test_cost_matrix_matches_naive_loop():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=gen)  # K = 3
    masks = torch.randn(5, 6, 7, generator=gen) * 3
    labels = torch.tensor([2, 0, 2])
    tgt_masks = _random_masks(3, 12, 14, gen)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=20.0, cost_dice=0.5, focal_alpha=0.25, focal_gamma=2.0)
    cost = matcher.cost_matrix(logits, masks, labels, tgt_masks)
    expected = _naive_cost(logits, masks, labels, tgt_masks, 2.0, 20.0, 0.5, 0.25, 2.0)
    assert cost.shape == (5, 3)
    assert torch.allclose(cost, expected, atol=1e-5)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)])
def test_pairwise_costs_match_elementwise_losses(alpha, gamma):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, 30, generator=gen) * 2
    t = (torch.rand(3, 30, generator=gen) > 0.3).float()
    focal = pairwise_sigmoid_focal_cost(x, t, alpha, gamma)
    dice = pairwise_dice_cost(x, t)
    for n, m in itertools.product(range(4), range(3)):
        expected = sigmoid_focal_loss(x[n], t[m], alpha=alpha, gamma=gamma, reduction="mean")
        assert torch.isclose(focal[n, m], expected, atol=1e-6)
        assert torch.isclose(dice[n, m], dice_loss(x[n : n + 1], t[m : m + 1])[0], atol=1e-6)


def test_matcher_is_optimal_on_random_case():
    gen = torch.Generator().manual_seed(2)
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    logits = torch.randn(2, 5, 4, generator=gen)
    masks = torch.randn(2, 5, 4, 4, generator=gen)
    targets = [_target([0, 1, 2], _random_masks(3, 8, 8, gen)), _target([1, 1], _random_masks(2, 8, 8, gen))]
    indices = matcher(logits, masks, targets)
    for b, (queries, tgts) in enumerate(indices):
        cost = matcher.cost_matrix(logits[b], masks[b], targets[b]["labels"], targets[b]["masks"])
        g = cost.shape[1]
        assert len(queries) == g and sorted(tgts.tolist()) == list(range(g))
        best = min(sum(cost[q, j] for j, q in enumerate(perm)) for perm in itertools.permutations(range(5), g))
        assert math.isclose(float(cost[queries, tgts].sum()), float(best), rel_tol=1e-6)


def test_matcher_handles_images_without_targets():
    matcher = HungarianMatcher()
    logits = torch.randn(2, 3, 3)
    masks = torch.randn(2, 3, 4, 4)
    targets = [_target([], torch.zeros(0, 8, 8)), _target([1], torch.ones(1, 8, 8))]
    (q0, t0), (q1, t1) = matcher(logits, masks, targets)
    assert q0.numel() == t0.numel() == 0 and q0.dtype == torch.int64
    assert len(q1) == len(t1) == 1


@pytest.mark.parametrize("ignore_unlabeled", [False, True])
def test_batch_costs_equal_per_image_cost_matrices(ignore_unlabeled):
    # images with 3, 0 and 1 targets: one batched computation, padded columns, the same costs as image by image
    gen = torch.Generator().manual_seed(3)
    matcher = HungarianMatcher(cost_class=2.0, cost_mask=20.0, cost_dice=0.5, ignore_unlabeled=ignore_unlabeled)
    logits = torch.randn(3, 5, 4, generator=gen)
    masks = torch.randn(3, 5, 6, 7, generator=gen) * 3
    targets = [_labeled_target([2, 0, 2], _random_masks(3, 12, 14, gen)), _labeled_target([], torch.zeros(0, 12, 14)),
               _labeled_target([1], _random_masks(1, 12, 14, gen))]
    prepared = matcher.prepare_targets(targets, (6, 7), masks.device)
    assert prepared.counts == [3, 0, 1] and prepared.masks.shape == (3, 3, 42) and prepared.labels.shape == (3, 3)
    costs = matcher.batch_costs(logits, masks, prepared)
    assert costs.shape == (3, 5, 3)
    for b, t in enumerate(targets):
        labeled = t["labeled"] if ignore_unlabeled else None
        expected = matcher.cost_matrix(logits[b], masks[b], t["labels"], t["masks"], labeled)
        torch.testing.assert_close(costs[b, :, : len(t["labels"])], expected, rtol=1e-6, atol=1e-6)
    if not ignore_unlabeled:  # the per-image cost against the elementwise losses (test above)
        t = targets[0]
        expected = _naive_cost(logits[0], masks[0], t["labels"], t["masks"], 2.0, 20.0, 0.5, 0.25, 2.0)
        torch.testing.assert_close(costs[0], expected, rtol=1e-5, atol=1e-5)
    assert matcher(logits, masks, targets, prepared)[1][0].numel() == 0
    with pytest.raises(ValueError, match="grid"):
        matcher.batch_costs(logits, masks[..., :5], prepared)


def test_matcher_labelled_pixels_need_labeled_maps():
    matcher = HungarianMatcher(ignore_unlabeled=True)
    with pytest.raises(ValueError, match="'labeled'"):
        matcher(torch.randn(1, 3, 3), torch.randn(1, 3, 4, 4), [_target([0], torch.ones(1, 4, 4))])


def test_matcher_errors():
    matcher = HungarianMatcher()
    masks = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        matcher(torch.randn(1, 3, 3), masks, [_target([2], torch.ones(1, 4, 4))])
    two = [_target([0, 1], torch.ones(2, 4, 4)), _target([-1], torch.ones(1, 4, 4))]  # the second image's label
    with pytest.raises(ValueError, match=r"got labels in \[-1, 1\]"):
        matcher(torch.randn(2, 3, 3), masks.expand(2, -1, -1, -1), two)
    with pytest.raises(ValueError, match="pred_logits"):
        matcher(None, masks, [_target([0], torch.ones(1, 4, 4))])
    with pytest.raises(FloatingPointError):
        matcher(torch.full((1, 3, 3), float("nan")), masks, [_target([0], torch.ones(1, 4, 4))])
    with pytest.raises(ValueError, match="all matching costs are zero"):
        HungarianMatcher(cost_class=0.0, cost_mask=0.0, cost_dice=0.0)


# ---------------------------------------------------------------------------------------------------- criterion
def _criterion(**kwargs):
    args = dict(class_weight=1.0, mask_weight=20.0, dice_weight=1.0, no_object_weight=0.1)
    args.update(kwargs)
    matcher = args.pop("matcher", HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0))
    return SetCriterion(matcher=matcher, **args)


def _outputs(b, q, k, h, w, num_aux, gen):
    def one():
        return {
            "pred_logits": torch.randn(b, q, k + 1, generator=gen).requires_grad_(True),
            "pred_masks": torch.randn(b, q, h, w, generator=gen).requires_grad_(True),
        }

    out = one()
    out["aux_outputs"] = [one() for _ in range(num_aux)]
    return out


def test_criterion_keys_finite_and_gradients():
    gen = torch.Generator().manual_seed(0)
    outputs = _outputs(2, 4, 3, 8, 8, num_aux=2, gen=gen)
    targets = [_target([0, 2], _random_masks(2, 32, 32, gen)), _target([1], _random_masks(1, 32, 32, gen))]
    losses = _criterion()(outputs, targets)
    expected = {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0", "_1")}
    assert set(losses) == expected
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    for out in [outputs, *outputs["aux_outputs"]]:
        assert out["pred_logits"].grad.abs().sum() > 0
        assert out["pred_masks"].grad.abs().sum() > 0


def test_criterion_prepares_targets_once_for_all_layers(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    outputs = _outputs(2, 4, 3, 8, 8, num_aux=2, gen=gen)
    targets = [_target([0, 2], _random_masks(2, 32, 32, gen)), _target([1], _random_masks(1, 32, 32, gen))]
    criterion = _criterion()
    expected = criterion(outputs, targets)
    calls = []
    prepare = criterion.matcher.prepare_targets
    monkeypatch.setattr(criterion.matcher, "prepare_targets", lambda *a, **k: calls.append(a[1]) or prepare(*a, **k))
    losses = criterion(outputs, targets)
    assert calls == [(8, 8)]  # three decoder layers, one grid
    assert all(torch.equal(losses[k], expected[k]) for k in expected)
    outputs["aux_outputs"][0]["pred_masks"] = torch.randn(2, 4, 4, 4, generator=gen)  # a coarser layer
    calls.clear()
    criterion(outputs, targets)
    assert calls == [(8, 8), (4, 4)]


def test_criterion_without_deep_supervision_ignores_aux():
    gen = torch.Generator().manual_seed(0)
    outputs = _outputs(1, 3, 2, 4, 4, num_aux=2, gen=gen)
    losses = _criterion(deep_supervision=False)(outputs, [_target([1], _random_masks(1, 8, 8, gen))])
    assert set(losses) == {"loss_ce", "loss_mask", "loss_dice"}


def test_criterion_class_loss_matches_weighted_ce_by_hand():
    # One target, three queries: loss_ce = (l_matched + w * sum(l_unmatched)) / (1 + 2 w).
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 1.0, 0.5], [0.3, 0.2, 1.0]]])  # K = 2
    target_mask = torch.zeros(1, 4, 4, dtype=torch.bool)
    target_mask[0, :2] = True
    masks = torch.full((1, 3, 4, 4), -5.0)
    masks[0, 0, :2] = 5.0  # query 0 predicts the target mask
    targets = [_target([0], target_mask)]
    ce = -logits[0].log_softmax(-1)
    for w in (0.1, 1.0, 0.0):
        criterion = _criterion(no_object_weight=w, class_weight=2.0)
        loss = criterion({"pred_logits": logits, "pred_masks": masks}, targets)["loss_ce"]
        expected = (ce[0, 0] + w * (ce[1, 2] + ce[2, 2])) / (1 + 2 * w)
        assert torch.isclose(loss, 2.0 * expected, atol=1e-6), w


def test_criterion_mask_losses_by_hand():
    gen = torch.Generator().manual_seed(3)
    tgt = _random_masks(2, 8, 8, gen)
    # predictions at half resolution; each query's logits for its own target after bilinear upsampling
    masks = torch.randn(1, 2, 4, 4, generator=gen)
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
    criterion = _criterion(mask_weight=3.0, dice_weight=0.5, matcher=HungarianMatcher(cost_class=100.0))
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, [_target([0, 1], tgt)])
    up = torch.nn.functional.interpolate(masks, size=(8, 8), mode="bilinear", align_corners=False)[0]
    focal = sum(sigmoid_focal_loss(up[i], tgt[i].float(), alpha=0.25, gamma=2.0, reduction="mean") for i in range(2))
    dice = sum(dice_loss(up[i].flatten()[None], tgt[i].flatten()[None].float())[0] for i in range(2))
    assert torch.isclose(losses["loss_mask"], 3.0 * focal / 2, atol=1e-6)
    assert torch.isclose(losses["loss_dice"], 0.5 * dice / 2, atol=1e-6)


def test_criterion_rewards_correct_masks():
    tgt = torch.zeros(1, 8, 8, dtype=torch.bool)
    tgt[0, 2:6, 2:6] = True
    good = (tgt.float() * 20 - 10)[None]
    bad = -good
    logits = torch.zeros(1, 1, 3)
    criterion = _criterion()
    loss_good = criterion({"pred_logits": logits, "pred_masks": good}, [_target([0], tgt)])
    loss_bad = criterion({"pred_logits": logits, "pred_masks": bad}, [_target([0], tgt)])
    assert loss_good["loss_mask"] < 1e-3 and loss_good["loss_dice"] < 1e-2
    assert loss_bad["loss_mask"] > 1.0 and loss_bad["loss_dice"] > 0.9


def test_criterion_with_images_without_targets():
    gen = torch.Generator().manual_seed(4)
    outputs = _outputs(2, 3, 2, 4, 4, num_aux=1, gen=gen)
    targets = [_target([], torch.zeros(0, 8, 8)), _target([1], _random_masks(1, 8, 8, gen))]
    losses = _criterion()(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    # no targets anywhere: only the class loss is non-zero, and backward still works
    outputs = _outputs(2, 3, 2, 4, 4, num_aux=1, gen=gen)
    empty = [_target([], torch.zeros(0, 8, 8)), _target([], torch.zeros(0, 8, 8))]
    losses = _criterion()(outputs, empty)
    assert losses["loss_mask"] == 0 and losses["loss_dice"] == 0 and losses["loss_ce"] > 0
    sum(losses.values()).backward()
    assert outputs["pred_logits"].grad.abs().sum() > 0
    assert outputs["pred_masks"].grad is not None


def test_criterion_vocabulary_size_changes_between_calls():
    gen = torch.Generator().manual_seed(5)
    criterion = _criterion()
    for k in (2, 7):
        outputs = _outputs(1, 4, k, 4, 4, num_aux=0, gen=gen)
        losses = criterion(outputs, [_target([k - 1], _random_masks(1, 8, 8, gen))])
        assert torch.isfinite(losses["loss_ce"])


def test_criterion_class_agnostic():
    gen = torch.Generator().manual_seed(6)
    cfg = get_cfg()
    add_zegseg_config(cfg)
    criterion = SetCriterion(cfg, class_loss=False)
    assert criterion.matcher.cost_class == 0.0 and not criterion.class_loss
    outputs = {"pred_masks": torch.randn(1, 3, 4, 4, generator=gen, requires_grad=True), "aux_outputs": []}
    losses = criterion(outputs, [_target([0], _random_masks(1, 8, 8, gen))])
    assert set(losses) == {"loss_mask", "loss_dice"}
    losses["loss_mask"].backward()
    assert outputs["pred_masks"].grad.abs().sum() > 0


def test_criterion_from_config():
    cfg = get_cfg()
    add_zegseg_config(cfg)
    criterion = SetCriterion(cfg)
    assert criterion.mask_weight == 20.0 and criterion.no_object_weight == 0.1 and criterion.deep_supervision
    assert criterion.matcher.cost_mask == 20.0 and criterion.matcher.cost_class == 1.0


def test_criterion_rejects_mixed_target_sizes():
    gen = torch.Generator().manual_seed(7)
    outputs = _outputs(2, 3, 2, 4, 4, num_aux=0, gen=gen)
    targets = [_target([0], _random_masks(1, 8, 8, gen)), _target([1], _random_masks(1, 8, 12, gen))]
    with pytest.raises(ValueError, match="share one"):
        _criterion()(outputs, targets)


# -------------------------------------------------------------------------------------- ignore_unlabeled option
def _labeled_target(labels, masks):
    target = _target(labels, masks)
    target["labeled"] = target["masks"].any(0)
    return target


def test_criterion_ignore_unlabeled_equals_losses_on_labelled_pixels_by_hand():
    # Two targets cover the left 5 columns of an 8 x 8 image; the other pixels are unlabeled (an unseen class).
    gen = torch.Generator().manual_seed(5)
    tgt = torch.zeros(2, 8, 8, dtype=torch.bool)
    tgt[0, :4, :5] = True
    tgt[1, 4:, :5] = True
    labeled = tgt.any(0)
    masks = torch.randn(1, 2, 8, 8, generator=gen)
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 5.0, 0.0]]])
    matcher = HungarianMatcher(cost_class=100.0, ignore_unlabeled=True)
    criterion = _criterion(mask_weight=2.0, dice_weight=0.5, matcher=matcher, ignore_unlabeled=True)
    losses = criterion({"pred_logits": logits, "pred_masks": masks}, [_labeled_target([0, 1], tgt)])
    src = masks[0][:, labeled]  # (2, 40): the labelled pixels only
    ref = tgt[:, labeled].float()
    focal = sigmoid_focal_loss(src, ref, alpha=0.25, gamma=2.0, reduction="none").mean(1).sum()
    dice = dice_loss(src, ref).sum()
    assert torch.isclose(losses["loss_mask"], 2.0 * focal / 2, atol=1e-6)
    assert torch.isclose(losses["loss_dice"], 0.5 * dice / 2, atol=1e-6)


def test_criterion_ignore_unlabeled_does_not_punish_masks_on_unlabeled_pixels():
    tgt = torch.zeros(1, 8, 8, dtype=torch.bool)
    tgt[0, :, :4] = True  # right half unlabeled
    inside = (tgt.float() * 20 - 10)[None]  # the mask stops at the labelled region
    spills = torch.full((1, 1, 8, 8), 10.0)  # the mask also covers the unlabeled half
    logits = torch.zeros(1, 1, 3)

    def losses(ignore, pred):
        criterion = _criterion(matcher=HungarianMatcher(ignore_unlabeled=ignore), ignore_unlabeled=ignore)
        out = criterion({"pred_logits": logits, "pred_masks": pred}, [_labeled_target([0], tgt)])
        return out["loss_mask"] + out["loss_dice"]

    assert torch.isclose(losses(True, inside), losses(True, spills), atol=1e-6)
    assert losses(False, spills) > losses(False, inside) + 0.5  # MaskFormer: unlabeled pixels are background


def test_matcher_ignore_unlabeled_costs_equal_costs_on_labelled_pixels():
    gen = torch.Generator().manual_seed(2)
    tgt = _random_masks(3, 6, 6, gen)
    tgt[:, :, 4:] = False  # two unlabeled columns
    labeled = tgt.any(0)
    masks = torch.randn(4, 6, 6, generator=gen)
    logits = torch.randn(4, 4, generator=gen)
    labels = torch.tensor([0, 2, 1])
    matcher = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0, ignore_unlabeled=True)
    cost = matcher.cost_matrix(logits, masks, labels, tgt, labeled)
    flat = HungarianMatcher(cost_class=1.0, cost_mask=20.0, cost_dice=1.0)
    expected = flat.cost_matrix(logits, masks[:, labeled][:, None], labels, tgt[:, labeled][:, None])
    assert torch.allclose(cost, expected, atol=1e-6)
    assert not torch.allclose(cost, flat.cost_matrix(logits, masks, labels, tgt), atol=1e-3)
