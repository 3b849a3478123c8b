"""Pixel decoder, transformer decoder, positional encoding and MLP on tiny inputs (CPU)."""
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone
from torch import nn

from zegseg.config import add_zegseg_config
from zegseg.modeling.mask_classification.position_encoding import SinePositionEncoding
from zegseg.modeling.mask_classification.transformer_decoder import TransformerDecoder
from zegseg.modeling.mlp import MLP
from zegseg.modeling.pixel_decoder import (
    PIXEL_DECODER_REGISTRY,
    FPNPixelDecoder,
    PixelDecoderOutput,
    build_pixel_decoder,
)


@pytest.fixture
def cfg():
    cfg = get_cfg()
    add_zegseg_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.PIXEL_DECODER.CONVS_DIM = 32
    cfg.MODEL.PIXEL_DECODER.MASK_DIM = 16
    cfg.MODEL.TRANSFORMER_DECODER.HIDDEN_DIM = 32
    cfg.MODEL.TRANSFORMER_DECODER.NUM_QUERIES = 5
    cfg.MODEL.TRANSFORMER_DECODER.NHEADS = 4
    cfg.MODEL.TRANSFORMER_DECODER.DIM_FEEDFORWARD = 64
    cfg.MODEL.TRANSFORMER_DECODER.DEC_LAYERS = 2
    return cfg


@pytest.fixture
def backbone_features(cfg):
    torch.manual_seed(0)
    backbone = build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()
    with torch.no_grad():
        features = backbone(torch.randn(2, 3, 64, 64))
    return backbone.output_shape(), features


def test_fpn_pixel_decoder_shapes(cfg, backbone_features):
    input_shape, features = backbone_features
    decoder = build_pixel_decoder(cfg, input_shape)
    assert isinstance(decoder, FPNPixelDecoder)
    out = decoder(features)
    assert isinstance(out, PixelDecoderOutput)
    assert out.mask_features.shape == (2, 16, 16, 16)  # MASK_DIM at stride 4 of 64 px
    assert decoder.mask_stride == 4
    assert {k: tuple(v.shape) for k, v in out.multi_scale_features.items()} == {
        "res5": (2, 32, 2, 2),
        "res4": (2, 32, 4, 4),
        "res3": (2, 32, 8, 8),
        "res2": (2, 32, 16, 16),
    }
    assert out.transformer_features is features["res5"]
    assert decoder.transformer_in_channels == 512 == out.transformer_features.shape[1]
    assert torch.isfinite(out.mask_features).all()


def test_fpn_pixel_decoder_gradients_reach_every_level(cfg, backbone_features):
    input_shape, features = backbone_features
    features = {k: v.clone().requires_grad_(True) for k, v in features.items()}
    decoder = build_pixel_decoder(cfg, input_shape)
    decoder(features).mask_features.sum().backward()
    for name in cfg.MODEL.PIXEL_DECODER.IN_FEATURES:
        assert features[name].grad is not None and features[name].grad.abs().sum() > 0, name


def test_fpn_pixel_decoder_subset_and_order(cfg, backbone_features):
    input_shape, features = backbone_features
    cfg.MODEL.PIXEL_DECODER.IN_FEATURES = ["res5", "res3"]  # any order; sorted by stride
    cfg.MODEL.PIXEL_DECODER.NORM = ""
    decoder = build_pixel_decoder(cfg, input_shape)
    out = decoder(features)
    assert decoder.in_features == ["res5", "res3"]
    assert decoder.mask_stride == 8
    assert out.mask_features.shape == (2, 16, 8, 8)


def test_pixel_decoder_bad_names(cfg, backbone_features):
    input_shape, _ = backbone_features
    cfg.MODEL.PIXEL_DECODER.NAME = "NoSuchDecoder"
    with pytest.raises(ValueError, match="unknown pixel decoder 'NoSuchDecoder'; known: .*FPNPixelDecoder"):
        build_pixel_decoder(cfg, input_shape)
    assert "FPNPixelDecoder" in PIXEL_DECODER_REGISTRY
    cfg.MODEL.PIXEL_DECODER.NAME = "FPNPixelDecoder"
    cfg.MODEL.PIXEL_DECODER.IN_FEATURES = ["res2", "res6"]
    with pytest.raises(ValueError, match="res6"):
        build_pixel_decoder(cfg, input_shape)
    cfg.MODEL.PIXEL_DECODER.IN_FEATURES = ["res2", "res5"]
    cfg.MODEL.TRANSFORMER_DECODER.IN_FEATURE = "p5"
    with pytest.raises(ValueError, match="p5"):
        build_pixel_decoder(cfg, input_shape)


def test_transformer_decoder_on_backbone_feature(cfg, backbone_features):
    input_shape, features = backbone_features
    torch.manual_seed(0)
    decoder = TransformerDecoder(cfg, in_channels=input_shape["res5"].channels)
    out = decoder(features["res5"])
    assert out.shape == (2, 2, 5, 32)  # (L, B, Q, D)
    assert decoder.num_layers == 2
    assert isinstance(decoder.input_proj, nn.Conv2d)
    # every layer's output went through the final LayerNorm (weight 1, bias 0 at init)
    assert torch.allclose(out.mean(-1), torch.zeros(2, 2, 5), atol=1e-5)
    assert torch.allclose(out.var(-1, unbiased=False), torch.ones(2, 2, 5), atol=1e-3)


@pytest.mark.parametrize("pre_norm", [False, True])
def test_transformer_decoder_is_vectorised_over_the_batch(cfg, pre_norm):
    torch.manual_seed(0)
    cfg.MODEL.TRANSFORMER_DECODER.PRE_NORM = pre_norm
    decoder = TransformerDecoder(cfg, in_channels=32).eval()
    assert isinstance(decoder.input_proj, nn.Identity)
    x = torch.randn(3, 32, 4, 5)
    with torch.no_grad():
        batched = decoder(x)
        single = torch.cat([decoder(x[i : i + 1]) for i in range(3)], dim=1)
    assert batched.shape == (2, 3, 5, 32)
    assert torch.allclose(batched, single, atol=1e-5)
    assert not torch.allclose(batched[:, 0], batched[:, 1])  # outputs depend on the input


def test_transformer_decoder_input_projection_and_gradients(cfg):
    torch.manual_seed(0)
    cfg.MODEL.TRANSFORMER_DECODER.ENFORCE_INPUT_PROJ = True
    decoder = TransformerDecoder(cfg, in_channels=32)
    assert isinstance(decoder.input_proj, nn.Conv2d)
    x = torch.randn(2, 32, 3, 3, requires_grad=True)
    decoder(x)[-1].pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert decoder.query_embed.weight.grad.abs().sum() > 0
    assert decoder.input_proj.weight.grad.abs().sum() > 0


def test_transformer_decoder_ignores_padded_pixels(cfg):
    torch.manual_seed(0)
    decoder = TransformerDecoder(cfg, in_channels=32).eval()
    x = torch.randn(1, 32, 4, 4)
    padding = torch.zeros(1, 4, 4, dtype=torch.bool)
    padding[:, :, 3:] = True
    x_changed = x.clone()
    x_changed[..., 3:] = 100.0
    with torch.no_grad():
        a = decoder(x, padding)
        b = decoder(x_changed, padding)
        c = decoder(x_changed)
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.allclose(a, c, atol=1e-3)


def test_masked_attention_second_layer_sees_only_the_first_layers_masks(cfg):
    """Layer 2 attends only where layer 1's mask is on: pixels outside every mask cannot change layer 2's
    cross-attention, which we check against the layers run by hand with the same attention mask."""
    cfg.MODEL.TRANSFORMER_DECODER.MASKED_ATTENTION = True
    torch.manual_seed(0)
    decoder = TransformerDecoder(cfg, in_channels=32).eval()
    x = torch.randn(1, 32, 4, 4)
    allowed = torch.zeros(1, 5, 4, 4, dtype=torch.bool)
    allowed[:, :3, :2] = True  # queries 0-2: top half; queries 3-4: empty masks (attend everywhere)
    def mask_head(queries):
        return torch.where(allowed, 5.0, -5.0).expand(queries.shape[0], -1, -1, -1)
    with torch.no_grad():
        out = decoder(x, mask_head=mask_head)
        pos = decoder.pe_layer(x, None).flatten(2).transpose(1, 2)
        memory = decoder.input_proj(x).flatten(2).transpose(1, 2)
        query_pos = decoder.query_embed.weight[None]
        tgt = decoder.layers[0](torch.zeros_like(query_pos), memory, pos=pos, query_pos=query_pos)
        blocked = ~allowed.flatten(2)
        blocked[:, 3:] = False
        tgt = decoder.layers[1](
            tgt, memory, pos=pos, query_pos=query_pos, memory_mask=blocked.repeat_interleave(4, dim=0)
        )
        unmasked = TransformerDecoder(cfg, in_channels=32).eval()
        unmasked.load_state_dict(decoder.state_dict())
        unmasked.masked_attention = False
        plain = unmasked(x)
    assert torch.allclose(out[1], decoder.norm(tgt), atol=1e-5)
    assert torch.allclose(out[0], plain[0], atol=1e-6)  # the first layer attends everywhere
    assert not torch.allclose(out[1, :, :3], plain[1, :, :3], atol=1e-3)
    with pytest.raises(ValueError, match="mask_head"):
        decoder(x)


def test_transformer_decoder_rejects_bad_sizes():
    with pytest.raises(ValueError, match="dec_layers"):
        TransformerDecoder(in_channels=8, hidden_dim=8, num_queries=2, nheads=2, dim_feedforward=8, dec_layers=0)
    with pytest.raises(ValueError, match="even"):
        TransformerDecoder(in_channels=8, hidden_dim=9, num_queries=2, nheads=3, dim_feedforward=8, dec_layers=1)


def test_sine_position_encoding():
    pe = SinePositionEncoding(8)
    x = torch.zeros(2, 3, 4, 6)
    pos = pe(x)
    assert pos.shape == (2, 16, 4, 6)
    assert pos.abs().max() <= 1.0
    flat = pos[0].flatten(1).T  # (HW, 16): every position has its own code
    assert torch.cdist(flat, flat).add(torch.eye(24) * 10).min() > 1e-3
    # first half encodes y only, second half x only
    assert torch.allclose(pos[:, :8], pos[:, :8, :, :1].expand(-1, -1, -1, 6))
    assert torch.allclose(pos[:, 8:], pos[:, 8:, :1, :].expand(-1, -1, 4, -1))
    # normalised positions: the valid part of a padded map is encoded like the unpadded map
    padding = torch.zeros(1, 6, 9, dtype=torch.bool)
    padding[:, 4:, :] = True
    padding[:, :, 6:] = True
    padded = pe(torch.zeros(1, 3, 6, 9), padding)
    assert torch.allclose(padded[..., :4, :6], pos[:1], atol=1e-5)
    with pytest.raises(ValueError, match="even"):
        SinePositionEncoding(7)


def test_mlp():
    mlp = MLP(32, 32, 16, 3)
    assert [(m.in_features, m.out_features) for m in mlp.layers] == [(32, 32), (32, 32), (32, 16)]
    assert mlp(torch.randn(2, 2, 5, 32)).shape == (2, 2, 5, 16)
    single = MLP(4, 100, 3, 1)
    x = torch.randn(5, 4)
    assert torch.allclose(single(x), single.layers[0](x))  # no activation after the last layer
    with pytest.raises(ValueError, match="at least one layer"):
        MLP(4, 4, 4, 0)


def test_mask_classification_pipeline_end_to_end(cfg, backbone_features):
    """Backbone features → pixel decoder → transformer decoder → masks per layer → criterion, with gradients."""
    from zegseg.modeling.mask_classification.criterion import SetCriterion

    input_shape, features = backbone_features
    torch.manual_seed(0)
    pixel_decoder = build_pixel_decoder(cfg, input_shape)
    decoder = TransformerDecoder(cfg, in_channels=pixel_decoder.transformer_in_channels)
    mask_embed = MLP(32, 32, cfg.MODEL.PIXEL_DECODER.MASK_DIM, 3)
    classifier = nn.Linear(32, 3 + 1)
    criterion = SetCriterion(cfg)

    pix = pixel_decoder(features)
    queries = decoder(pix.transformer_features)  # (L, B, Q, D)
    masks = torch.einsum("lbqc,bchw->lbqhw", mask_embed(queries), pix.mask_features)
    logits = classifier(queries)
    outputs = {
        "pred_logits": logits[-1],
        "pred_masks": masks[-1],
        "aux_outputs": [{"pred_logits": a, "pred_masks": b} for a, b in zip(logits[:-1], masks[:-1])],
    }
    gt = torch.zeros(2, 64, 64, dtype=torch.bool)
    gt[0, :32] = True
    gt[1, :, 16:] = True
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": torch.stack([gt[0], ~gt[0]])},
        {"labels": torch.tensor([1]), "masks": gt[1:]},
    ]
    losses = criterion(outputs, targets)
    assert set(losses) == {f"loss_{n}{s}" for n in ("ce", "mask", "dice") for s in ("", "_0")}
    sum(losses.values()).backward()
    assert decoder.query_embed.weight.grad.abs().sum() > 0
    assert pixel_decoder.mask_features.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in mask_embed.parameters())
