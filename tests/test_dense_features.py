"""Dense CLIP features (MaskCLIP's trick) against hand computations on tiny random CLIP models."""
import copy

import clip.model
import pytest
import torch
from torch.nn import functional as F

from zegseg.modeling.clip.dense_features import (
    DenseProjection,
    dense_clip_features,
    dense_stride,
    encode_dense,
    last_stage,
    run_last_stage,
)


def _tiny_clip(vision_layers, **kw) -> clip.model.CLIP:
    torch.manual_seed(0)
    model = clip.model.CLIP(
        embed_dim=16,
        image_resolution=kw.pop("image_resolution", 32),
        vision_layers=vision_layers,
        vision_width=kw.pop("vision_width", 32),
        vision_patch_size=kw.pop("vision_patch_size", 8),
        context_length=8,
        vocab_size=100,
        transformer_width=16,
        transformer_heads=1,
        transformer_layers=1,
    ).eval()
    for m in model.modules():  # non-trivial normalisation statistics, so a wrong BN/LN path would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, torch.nn.LayerNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.requires_grad_(False)
    return model


@pytest.fixture(scope="module")
def vit():
    return _tiny_clip(2, vision_width=128)  # 2 blocks, width 128 (2 heads), patch 8, 32 px: 4 x 4 grid


@pytest.fixture(scope="module")
def resnet():
    return _tiny_clip((1, 1, 1, 1), vision_width=16, image_resolution=64)  # 64 px, width 16: 2 x 2 grid


def _vit_manual(model, images, grid=(4, 4)):
    """The ViT by hand: blocks but the last as CLIP runs them, the last one with attention restricted to the diagonal
    (nn.MultiheadAttention's own code with an attention mask), then ln_post and proj on the patch tokens."""
    v = model.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([v.class_embedding.expand(len(x), 1, -1), x], 1) + v.positional_embedding
    x = v.transformer.resblocks[:-1](v.ln_pre(x).permute(1, 0, 2))
    block = v.transformer.resblocks[-1]
    n = x.shape[0]
    diagonal = torch.full((n, n), float("-inf")).fill_diagonal_(0.0)
    y = block.ln_1(x)
    x = x + block.attn(y, y, y, need_weights=False, attn_mask=diagonal)[0]
    x = x + block.mlp(block.ln_2(x))
    x = v.ln_post(x.permute(1, 0, 2)[:, 1:]) @ v.proj  # (B, L, D)
    return x.transpose(1, 2).reshape(len(images), -1, *grid)


def test_vit_dense_equals_self_attending_last_block(vit):
    images = torch.randn(2, 3, 32, 32)
    dense = encode_dense(vit, images)
    assert dense.shape == (2, 16, 4, 4)
    torch.testing.assert_close(dense, _vit_manual(vit, images), rtol=1e-4, atol=1e-5)
    assert dense_stride(vit) == 8


def test_vit_keys_are_out_projected_keys(vit):
    images = torch.randn(1, 3, 32, 32)
    out = dense_clip_features(vit, images)
    block = vit.visual.transformer.resblocks[-1]
    tokens = out.penultimate.flatten(2).transpose(1, 2)  # (1, 16, 128)
    w_k, b_k = block.attn.in_proj_weight[128:256], block.attn.in_proj_bias[128:256]
    keys = block.attn.out_proj(block.ln_1(tokens) @ w_k.T + b_k)
    torch.testing.assert_close(out.keys, keys.transpose(1, 2).reshape(1, 128, 4, 4), rtol=1e-4, atol=1e-5)


def test_vit_one_token_image_is_clip_pooled_embedding(vit):
    """A 1x1 grid whose class token equals its patch token (same embedding, zero positional embeddings): the two
    tokens are identical throughout, so full attention mixes nothing and the dense feature is CLIP's own
    encode_image."""
    model = copy.deepcopy(vit)
    model.visual.input_resolution = 8
    image = torch.randn(1, 3, 8, 8)
    model.visual.class_embedding.data = model.visual.conv1(image).flatten(1)[0].clone()
    model.visual.positional_embedding = torch.nn.Parameter(torch.zeros(2, 128))
    dense = encode_dense(model, image)
    assert dense.shape == (1, 16, 1, 1)
    torch.testing.assert_close(dense[:, :, 0, 0], model.encode_image(image), rtol=1e-4, atol=1e-5)


def test_vit_positional_embedding_interpolated_to_input_grid(vit):
    """A 48 x 32 input (6 x 4 grid) runs with the positional embedding's grid resized bicubically."""
    images = torch.randn(1, 3, 48, 32)
    dense = encode_dense(vit, images)
    assert dense.shape == (1, 16, 6, 4)
    model = copy.deepcopy(vit)
    pos = model.visual.positional_embedding.detach()
    grid = pos[1:].T.reshape(1, 128, 4, 4)
    grid = F.interpolate(grid, size=(6, 4), mode="bicubic", align_corners=False).reshape(128, 24).T
    model.visual.positional_embedding = torch.nn.Parameter(torch.cat([pos[:1], grid]))
    torch.testing.assert_close(dense, _vit_manual(model, images, (6, 4)), rtol=1e-4, atol=1e-5)


def _layer4_output(model, images):
    seen = []
    handle = model.visual.layer4.register_forward_hook(lambda m, i, o: seen.append(o))
    pooled = model.encode_image(images)
    handle.remove()
    return seen[0], pooled


def test_resnet_dense_is_value_and_output_projection_per_position(resnet):
    images = torch.randn(2, 3, 64, 64)
    out = dense_clip_features(resnet, images)
    x, _ = _layer4_output(resnet, images)  # (2, 512, 2, 2)
    pool = resnet.visual.attnpool
    per_pixel = x.permute(0, 2, 3, 1)
    expected = pool.c_proj(pool.v_proj(per_pixel)).permute(0, 3, 1, 2)
    assert out.features.shape == (2, 16, 2, 2) and dense_stride(resnet) == 32
    torch.testing.assert_close(out.features, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.keys, pool.k_proj(per_pixel).permute(0, 3, 1, 2), rtol=1e-4, atol=1e-5)
    assert out.penultimate.shape == (2, 256, 4, 4)


def test_resnet_one_cell_is_clip_pooled_embedding_without_positional_embedding():
    """1x1 grid, attention pool's positional embedding zero: its two tokens (mean and the one position) are equal,
    attention averages equal values, and the pooled embedding is c_proj(v_proj(x)), the dense feature."""
    model = _tiny_clip((1, 1, 1, 1), vision_width=16, image_resolution=32)
    image = torch.randn(1, 3, 32, 32)
    with_pos = encode_dense(model, image)[:, :, 0, 0]
    assert not torch.allclose(with_pos, model.encode_image(image), atol=1e-3)  # the positional embedding mixes in
    model.visual.attnpool.positional_embedding.data.zero_()
    torch.testing.assert_close(encode_dense(model, image)[:, :, 0, 0], model.encode_image(image), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["vit", "resnet"])
def test_penultimate_round_trip_and_trainable_copies(arch, request):
    """DenseProjection(run_last_stage(penultimate)) gives the features again; copies of the stage and of the
    projection get gradients while CLIP stays frozen."""
    model = request.getfixturevalue(arch)
    size = 32 if arch == "vit" else 64
    images = torch.randn(1, 3, size, size)
    features, penultimate = encode_dense(model, images, return_penultimate=True)
    projection = DenseProjection(model)
    torch.testing.assert_close(projection(run_last_stage(model, penultimate)), features, rtol=1e-4, atol=1e-5)
    stage = copy.deepcopy(last_stage(model)).requires_grad_(True)
    projection(run_last_stage(model, penultimate, stage)).square().sum().backward()
    assert all(p.grad is not None for p in projection.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in stage.parameters())
    assert all(p.grad is None for p in model.parameters())


def test_rejects_bad_inputs(vit, resnet):
    with pytest.raises(ValueError, match="smaller than CLIP's 8-pixel output cell"):
        encode_dense(vit, torch.randn(1, 3, 4, 4))
    with pytest.raises(ValueError, match="smaller than CLIP's 32-pixel output cell"):
        encode_dense(resnet, torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encode_dense(vit, torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="image tower"):
        encode_dense(torch.nn.Linear(2, 2), torch.randn(1, 3, 32, 32))
