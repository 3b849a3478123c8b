"""The simple baseline's crop procedure (vectorised) against a plain per-mask implementation of the official steps."""
import pytest
import torch
from torch.nn import functional as F

from zegseg.modeling.clip import baseline_crops
from zegseg.modeling.clip.baseline_crops import bicubic_taps, simple_baseline_boxes, simple_baseline_crops
from zegseg.modeling.clip.region_encoder import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD, normalize_for_clip


def reference_crops(image, masks, size=224, ratio=1.0):
    """The official steps, one mask at a time: box → float32 expansion → int → clamp → fill the mean colour on the
    0-255 image → normalise → bicubic resize. Returns the crops of the non-empty masks, in order."""
    image = image.float()
    mean = torch.tensor(CLIP_PIXEL_MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(CLIP_PIXEL_STD).view(1, 3, 1, 1) * 255.0
    fill = [255.0 * c for c in CLIP_PIXEL_MEAN]
    out = []
    for mask in masks:
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys) == 0:
            continue
        x1, y1 = torch.tensor(float(xs.min())), torch.tensor(float(ys.min()))
        x2, y2 = torch.tensor(float(xs.max() + 1)), torch.tensor(float(ys.max() + 1))
        cx, cy = 0.5 * (x1 + x2), 0.5 * (y1 + y2)
        bw, bh = (x2 - x1) * ratio, (y2 - y1) * ratio
        left, top, right, bottom = (int(v) for v in (cx - 0.5 * bw, cy - 0.5 * bh, cx + 0.5 * bw, cy + 0.5 * bh))
        left, top = max(left, 0), max(top, 0)
        right, bottom = min(right, image.shape[2]), min(bottom, image.shape[1])
        right, bottom = max(right, left + 1), max(bottom, top + 1)  # where the official code would fail (ratio < 1)
        m = mask[top:bottom, left:right].float()[None]
        background = torch.stack([torch.full(m.shape[1:], v) for v in fill])
        region = image[:, top:bottom, left:right] * m + (1 - m) * background
        region = (region[None] - mean) / std
        out.append(F.interpolate(region, size=(size, size), mode="bicubic"))
    return torch.cat(out) if out else torch.zeros(0, 3, size, size)


def smooth_image(h, w, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 8 + 2, w // 8 + 2, generator=g)
    image = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)[0] * 255
    noise = torch.randint(-20, 21, (3, h, w), generator=g)
    return (image + noise).clamp(0, 255).round().to(torch.uint8)


def synthetic_masks(h, w, seed):
    """Blobs of many sizes, plus the edge cases: touching each border, a corner pixel, a single pixel, a single
    row, a single column, the whole image, an empty mask, a mask with two distant parts."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    masks = []
    for _ in range(10):
        cy, cx, ry, rx = (
            int(torch.randint(0, n, (1,), generator=g)) for n in (h, w, h // 2 + 2, w // 2 + 2)
        )
        ry, rx = max(ry, 1), max(rx, 1)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        masks.append(blob & (torch.rand(h, w, generator=g) > 0.15))
    edge = torch.zeros(12, h, w, dtype=torch.bool)
    edge[0, : h // 3, : w // 4] = True  # top-left corner region
    edge[1, h // 2 :, w - 5 :] = True  # right border
    edge[2, h - 3 :, 3 : w // 2] = True  # bottom border
    edge[3, h - 1, w - 1] = True  # bottom-right corner pixel
    edge[4, h // 2, w // 3] = True  # one pixel
    edge[5, 7, :] = True  # one full row
    edge[6, :, 11] = True  # one full column
    edge[7] = True  # the whole image
    # edge[8] stays empty
    edge[9, 1:4, 2:5] = True
    edge[9, h - 6 : h - 2, w - 7 : w - 3] = True  # two distant parts
    edge[10, 0, 0] = True  # top-left corner pixel
    edge[11, 3 : h - 3, 0] = True  # left border column
    return torch.cat([torch.stack(masks), edge])


@pytest.mark.parametrize("h,w,seed", [(96, 128, 0), (61, 43, 1), (300, 250, 2)])
def test_crops_equal_the_per_mask_procedure(h, w, seed):
    image = smooth_image(h, w, seed)
    masks = synthetic_masks(h, w, seed)
    expected = reference_crops(image, masks)
    per_box, valid = simple_baseline_crops(normalize_for_clip(image, "RGB"), masks, batched=False)
    batched, valid_batched = simple_baseline_crops(normalize_for_clip(image, "RGB"), masks, batched=True)
    assert valid.tolist() == valid_batched.tolist() == [bool(m.any()) for m in masks]
    assert per_box.shape == batched.shape == (len(masks), 3, 224, 224)
    assert torch.equal(per_box[valid], expected)  # the official arithmetic, bit for bit
    assert (batched[valid] - expected).abs().max() < 1e-5  # CLIP's normalised space spans about [-1.8, 2.2]
    assert torch.equal(batched[~valid], torch.zeros_like(batched[~valid]))
    assert torch.equal(per_box[~valid], torch.zeros_like(per_box[~valid]))


@pytest.mark.parametrize("ratio", [1.5, 0.7, 2.25])
def test_expanded_boxes_equal_the_per_mask_procedure(ratio):
    image = smooth_image(80, 112, 3)
    masks = synthetic_masks(80, 112, 3)
    expected = reference_crops(image, masks, size=64, ratio=ratio)
    for batched in (False, True):
        crops, valid = simple_baseline_crops(
            normalize_for_clip(image, "RGB"), masks, expand_ratio=ratio, out_size=64, batched=batched
        )
        assert (crops[valid] - expected).abs().max() < 1e-5


def test_batched_chunks_cover_every_mask(monkeypatch):
    # a tiny gather budget forces one mask per chunk: the result must not depend on the chunking
    image = normalize_for_clip(smooth_image(64, 72, 6), "RGB")
    masks = synthetic_masks(64, 72, 6)
    whole, _ = simple_baseline_crops(image, masks, out_size=40, batched=True)
    monkeypatch.setattr(baseline_crops, "_MAX_GATHERED", 1)
    chunked, _ = simple_baseline_crops(image, masks, out_size=40, batched=True)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=0)


def test_bgr_input_and_other_sizes():
    image = smooth_image(50, 70, 4)
    masks = synthetic_masks(50, 70, 4)
    rgb, _ = simple_baseline_crops(normalize_for_clip(image, "RGB"), masks, out_size=32)
    bgr, _ = simple_baseline_crops(normalize_for_clip(image.flip(0), "BGR"), masks, out_size=32)
    torch.testing.assert_close(rgb, bgr, rtol=0, atol=0)
    assert torch.equal(rgb[masks.any(dim=(1, 2))], reference_crops(image, masks, size=32))


def test_boxes_are_integer_exclusive_and_clamped():
    masks = torch.zeros(4, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:7] = True
    masks[1, 9, 11] = True
    masks[2, 4, 5] = True
    boxes, valid = simple_baseline_boxes(masks)
    assert boxes.tolist() == [[3, 2, 7, 5], [11, 9, 12, 10], [5, 4, 6, 5], [0, 0, 12, 10]]
    assert valid.tolist() == [True, True, True, False]
    wide, _ = simple_baseline_boxes(masks, expand_ratio=3.0)
    # centre (5, 3.5), half sizes (6, 4.5): int() truncates towards zero, then clamps to the image
    assert wide[0].tolist() == [0, 0, 11, 8]
    thin, _ = simple_baseline_boxes(masks, expand_ratio=0.1)
    assert thin[2].tolist() == [5, 4, 6, 5]  # a box expansion would empty keeps one pixel


def test_taps_match_pytorch_bicubic_weights():
    sizes = torch.tensor([1, 2, 5, 224, 300])
    index, weight = bicubic_taps(sizes, 50)
    for k, n in enumerate(sizes.tolist()):
        basis = torch.eye(n).view(n, 1, 1, n)
        expected = F.interpolate(basis, size=(1, 50), mode="bicubic")[:, 0, 0].T  # (50, n) weights per input
        got = torch.zeros(50, n).scatter_add_(1, index[k], weight[k])
        torch.testing.assert_close(got, expected, rtol=0, atol=2e-6)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="bool"):
        simple_baseline_boxes(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="share H, W"):
        simple_baseline_crops(torch.zeros(3, 4, 4), torch.zeros(2, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="expand ratio"):
        simple_baseline_boxes(torch.zeros(2, 4, 4, dtype=torch.bool), expand_ratio=0.0)
