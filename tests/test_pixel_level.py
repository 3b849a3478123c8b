"""PixelLevelZS on tiny inputs: shapes, vocabulary swap, spatial blocks, ignored pixels, padding, training."""
import pytest
import torch
from detectron2.modeling import build_model
from torch.nn import functional as F

import zegseg  # noqa: F401
from zegseg.engine.setup_config import load_config
from zegseg.modeling.meta_arch.pixel_level import SpatialRegularizationBlock, build_spatial_blocks

from .helpers import train_steps

TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.PIXEL_DECODER.CONVS_DIM", "32",
    "MODEL.PIXEL_DECODER.MASK_DIM", "32",
]


def tiny_model(clip_path, *opts):
    cfg = load_config("configs/toy/pixel_level.yaml", TINY + ["MODEL.CLIP.NAME", str(clip_path), *opts])
    torch.manual_seed(0)
    return build_model(cfg)


def synthetic_batch(num_classes, n=2, size=64, seed=0):
    """Images of two flat-coloured halves; "sem_seg" labels them, with a 255 (unseen) strip in the middle."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        labels = torch.randperm(num_classes, generator=g)[:2]
        split = int(torch.randint(16, size - 16, (1,), generator=g))
        sem_seg = torch.full((size, size), int(labels[1]), dtype=torch.long)
        sem_seg[:, :split] = labels[0]
        image = (sem_seg * 37 % 255).to(torch.uint8)[None].expand(3, -1, -1).clone()
        sem_seg[:, split - 2 : split + 2] = 255
        batch.append({"image": image, "sem_seg": sem_seg, "height": size, "width": size})
    return batch


def randomise(blocks):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in blocks.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return blocks


def test_inference_shapes_probabilities_and_original_size(tiny_clip_path):
    model = tiny_model(tiny_clip_path).eval()
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 192}, {"image": image[:, :48, :40]}])
    assert out[0]["sem_seg"].shape == (35, 128, 192)  # toy val: 35 classes, resized to the original size
    assert out[1]["sem_seg"].shape == (35, 48, 40)  # no height/width: the input size, padding cropped away
    torch.testing.assert_close(out[0]["sem_seg"].sum(0), torch.ones(128, 192))


def test_vocabulary_swap_changes_output_channels(tiny_clip_path):
    model = tiny_model(tiny_clip_path).eval()
    image = {"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)}
    with torch.no_grad():
        before = model([image])[0]["sem_seg"]
        model.set_vocabulary(["red circle", "sky", "a purple dragon"], unseen_classes=["a purple dragon"])
        after = model([image])[0]["sem_seg"]
    assert before.shape[0] == 35 and after.shape == (3, 64, 64)
    assert model.test_unseen_mask.tolist() == [False, False, True]


def test_calibration_lowers_seen_probabilities(tiny_clip_path):
    model = tiny_model(tiny_clip_path, "MODEL.PIXEL_LEVEL.CALIBRATION_GAMMA", "0.1").eval()
    model.set_vocabulary(["sky", "grass", "red star"], unseen_classes=["red star"])
    logits = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(1))
    got = model.segment_image(logits, (16, 16))
    probs = F.interpolate(logits[None], size=(16, 16), mode="bilinear", align_corners=False)[0].softmax(0)
    torch.testing.assert_close(got, probs - 0.1 * torch.tensor([1.0, 1.0, 0.0])[:, None, None])


@pytest.mark.parametrize("kind", ["depthwise", "bottleneck"])
def test_spatial_blocks_are_channel_order_independent(kind):
    blocks = randomise(build_spatial_blocks(kind, 2, "lrelu"))
    g = torch.Generator().manual_seed(0)
    for k in (3, 7):  # the same weights serve any vocabulary size
        logits = torch.randn(2, k, 9, 11, generator=g)
        perm = torch.randperm(k, generator=g)
        out = blocks(logits)
        assert out.shape == logits.shape
        torch.testing.assert_close(blocks(logits[:, perm]), out[:, perm])
    assert not torch.allclose(out, logits)  # random weights: the blocks do something


def test_bottleneck_adds_the_max_over_classes():
    logits = torch.randn(1, 4, 5, 5, generator=torch.Generator().manual_seed(2))
    depthwise = randomise(SpatialRegularizationBlock(kind="depthwise"))
    bottleneck = SpatialRegularizationBlock(kind="bottleneck")
    bottleneck.load_state_dict(depthwise.state_dict())
    torch.testing.assert_close(bottleneck(logits), depthwise(logits) + logits.amax(1, keepdim=True))


def test_untrained_blocks_start_as_identity_and_bad_names_fail():
    logits = torch.randn(2, 5, 6, 6)
    torch.testing.assert_close(build_spatial_blocks("depthwise", 1)(logits), logits)
    assert len(build_spatial_blocks("none", 3)) == 0
    with pytest.raises(ValueError, match="unknown spatial block 'deep'"):
        build_spatial_blocks("deep", 2)
    with pytest.raises(ValueError, match="unknown spatial activation 'gelu'"):
        build_spatial_blocks("bottleneck", 2, "gelu")
    with pytest.raises(ValueError, match="NUM_SPATIAL_BLOCKS"):
        build_spatial_blocks("bottleneck", 0)


def test_ignored_pixels_give_no_loss_and_no_gradient(tiny_clip_path):
    model = tiny_model(tiny_clip_path)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    targets = torch.randint(0, 4, (2, 8, 8), generator=g)
    targets[:, :, :3] = 255
    loss = model.losses(logits, targets)["loss_sem_seg"]
    loss.backward()
    valid = targets != 255
    expected = F.cross_entropy(logits.detach().permute(0, 2, 3, 1)[valid], targets[valid])
    torch.testing.assert_close(loss, expected)
    assert logits.grad[:, :, :, :3].abs().max() == 0 and logits.grad[:, :, :, 3:].abs().max() > 0

    everything_ignored = model.losses(logits, torch.full_like(targets, 255))["loss_sem_seg"]
    assert everything_ignored.item() == 0.0  # not NaN
    logits.grad = None
    everything_ignored.backward()
    assert logits.grad.abs().max() == 0


def test_training_pads_labels_with_ignore_and_reaches_trainable_parameters(tiny_clip_path):
    model = tiny_model(tiny_clip_path).train()
    batch = synthetic_batch(len(model.train_class_names))
    batch[1] = {"image": batch[1]["image"][:, :40, :52], "sem_seg": batch[1]["sem_seg"][:40, :52].clone()}
    seen = []
    original = model.losses
    model.losses = lambda logits, targets: seen.append(targets) or original(logits, targets)
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    assert seen[0].shape == (2, 64, 64)
    assert (seen[0][1, 40:] == 255).all() and (seen[0][1, :, 52:] == 255).all()
    losses["loss_sem_seg"].backward()
    assert all(p.grad is None for p in model.clip_model.parameters())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    with pytest.raises(ValueError, match="sem_seg"):
        model([{"image": batch[0]["image"]}])


def test_checkpoint_excludes_clip_and_round_trips(tiny_clip_path):
    model = tiny_model(tiny_clip_path)
    state = model.state_dict()
    assert state and not any(k.startswith("clip_model.") for k in state)
    assert any(k.startswith("spatial_blocks.") for k in state)
    other = tiny_model(tiny_clip_path, "SEED", "1")
    other.load_state_dict(state, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(state.values(), other.state_dict().values()))


def test_twenty_iterations_lower_the_loss(tiny_clip_path):
    model = tiny_model(tiny_clip_path).train()
    batch = synthetic_batch(len(model.train_class_names), n=2, seed=1)
    totals = train_steps(model, batch)
    assert sum(totals[-3:]) / 3 < 0.7 * sum(totals[:3]) / 3
