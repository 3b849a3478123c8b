"""The CLIP ResNet image tower as a detectron2 backbone: ToyCLIP's weights, its own input normalisation, freezing."""
import pytest
import torch
from detectron2.modeling import build_backbone

import zegseg  # noqa: F401  (registers the backbone)
from zegseg.engine.setup_config import load_config
from zegseg.modeling.clip import load_clip
from zegseg.modeling.clip.region_encoder import normalize_for_clip


def _cfg(*opts):
    return load_config(
        "configs/toy/zegformer.yaml",
        ["MODEL.DEVICE", "cpu", "MODEL.BACKBONE.NAME", "build_clip_resnet_backbone", *opts],
    )


def _tower_features(tower, x):
    """res2..res5 of a CLIP ModifiedResNet on CLIP-normalised RGB images ``x`` (B, 3, H, W)."""
    x = tower.relu1(tower.bn1(tower.conv1(x)))
    x = tower.relu2(tower.bn2(tower.conv2(x)))
    x = tower.avgpool(tower.relu3(tower.bn3(tower.conv3(x))))
    out = {}
    for name, layer in zip(("res2", "res3", "res4", "res5"), (tower.layer1, tower.layer2, tower.layer3, tower.layer4)):
        x = out[name] = layer(x)
    return out


@pytest.mark.parametrize("input_format", ["BGR", "RGB"])
def test_backbone_is_toy_clip_tower_on_segmentor_inputs(input_format):
    cfg = _cfg("INPUT.FORMAT", input_format, "MODEL.RESNETS.NORM", "FrozenBN")
    backbone = build_backbone(cfg).eval()
    torch.manual_seed(0)
    image = torch.rand(3, 64, 96) * 255  # in INPUT.FORMAT order, 0-255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in (cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD))
    features = backbone(((image - mean) / std)[None])
    tower = load_clip("ToyCLIP").visual
    with torch.no_grad():
        expected = _tower_features(tower, normalize_for_clip(image, input_format)[None])
    assert list(features) == ["res2", "res3", "res4", "res5"]
    for name, shape in backbone.output_shape().items():
        assert features[name].shape[1] == shape.channels and 64 // features[name].shape[2] == shape.stride
        torch.testing.assert_close(features[name], expected[name], atol=1e-4, rtol=1e-4)


def test_freeze_and_batch_norm():
    backbone = build_backbone(_cfg("MODEL.BACKBONE.FREEZE_AT", "2", "MODEL.RESNETS.NORM", "BN"))
    frozen = {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad}
    trainable = {n.split(".")[0] for n, p in backbone.named_parameters() if p.requires_grad}
    assert frozen == {"stem", "res2"} and trainable == {"res3", "res4", "res5"}
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in backbone.res3.modules())
    # the frozen CLIP classifier is another copy: training the backbone cannot change it
    clip_conv = load_clip("ToyCLIP").visual.layer3[0].conv1.weight
    assert backbone.res4[0].conv1.weight.data_ptr() != clip_conv.data_ptr()


def test_vit_clip_and_bad_norm_are_refused(tiny_clip_path):
    with pytest.raises(ValueError, match="needs a ResNet CLIP"):
        build_backbone(_cfg("MODEL.BACKBONE.CLIP_WEIGHTS", str(tiny_clip_path)))
    with pytest.raises(ValueError, match="BN or FrozenBN"):
        build_backbone(_cfg("MODEL.RESNETS.NORM", "GN"))
