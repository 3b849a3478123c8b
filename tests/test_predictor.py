"""zegseg.Predictor: custom vocabularies, batching, resizing, original-size results, weights, label encoding."""
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from torch.nn import functional as F

import zegseg
from zegseg.engine.setup_config import load_config
from zegseg.predictor import SegmentationResult, upsample_argmax

from .helpers import TINY_INFERENCE_OPTS

TINY = TINY_INFERENCE_OPTS


@pytest.fixture
def tiny_cfg(tiny_clip_path, tmp_path):
    def make(*opts):
        extra = ["MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.CLIP.EMBED_CACHE_DIR", str(tmp_path / "cache")]
        return load_config("configs/toy/zegformer.yaml", TINY + extra + list(opts))

    return make


def build(cfg, seed=0, **kwargs):
    torch.manual_seed(seed)
    return zegseg.Predictor(cfg, **kwargs)


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_custom_vocabulary_changes_the_number_of_classes(tiny_cfg):
    predictor = build(tiny_cfg())
    image = random_image(48, 64)
    default = predictor(image)
    assert default.vocabulary == list(MetadataCatalog.get("toy_val_all_sem_seg").stuff_classes)
    assert len(default.fractions) == 35

    assert predictor.set_vocabulary(["sky", "grass", "tv, monitor"]) is predictor
    result = predictor(image)
    assert result.vocabulary == ["sky", "grass", "tv, monitor"]
    assert set(result.fractions) == {"sky", "grass", "tv, monitor"}
    assert result.labels.min() >= 0 and result.labels.max() < 3
    assert predictor.model.test_unseen_mask.tolist() == [True, True, True]  # own names: all unseen

    predictor.set_vocabulary(["sky", "a purple dragon"], unseen_classes=["a purple dragon"])
    assert predictor.model.test_unseen_mask.tolist() == [False, True]
    assert predictor(image).labels.max() < 2
    with pytest.raises(ValueError, match="repeats"):
        predictor.set_vocabulary(["sky", "sky"])


def test_vocabulary_given_to_the_constructor(tiny_cfg):
    predictor = build(tiny_cfg(), vocabulary=[" cat ", "dog"], unseen_classes=[])
    assert predictor.vocabulary == ["cat", "dog"]
    assert predictor.model.test_unseen_mask.tolist() == [False, False]
    with pytest.raises(ValueError, match="empty"):
        build(tiny_cfg(), vocabulary=[])


def test_result_fields_at_original_size(tiny_cfg):
    predictor = build(tiny_cfg(), vocabulary=["a", "b", "c"])
    result = predictor(random_image(37, 91))
    assert result.labels.shape == (37, 91) and result.labels.dtype == np.int32
    assert result.confidence.shape == (37, 91) and result.confidence.dtype == np.float32
    assert np.isfinite(result.confidence).all()
    assert sum(result.fractions.values()) + result.unknown_fraction == pytest.approx(1.0)
    assert result.unknown_fraction == 0.0
    counts = np.bincount(result.labels.ravel(), minlength=3)
    assert [result.fractions[n] for n in "abc"] == pytest.approx(counts / counts.sum())
    assert result.present_classes() == [int(k) for k in np.argsort(-counts, kind="stable") if counts[k]]


def test_images_are_resized_per_config_and_batched(tiny_cfg):
    predictor = build(tiny_cfg(), vocabulary=["a", "b"])
    seen = []
    hook = predictor.model.register_forward_pre_hook(lambda m, args: seen.append([x["image"].shape for x in args[0]]))
    big, small = random_image(600, 800, 1), random_image(40, 30, 2)
    results = predictor.predict_batch([big, small])
    hook.remove()
    # ResizeShortestEdge(64, max 128): 600x800 -> 64x85; 40x30 -> 85x64
    assert seen == [[(3, 64, 85), (3, 85, 64)]]
    assert [r.labels.shape for r in results] == [(600, 800), (40, 30)]
    single = predictor(small)
    np.testing.assert_array_equal(single.labels, results[1].labels)
    assert predictor.predict_batch([]) == []


def test_bgr_and_rgb_inputs_agree(tiny_cfg):
    predictor = build(tiny_cfg(), vocabulary=["a", "b", "c"])
    bgr = random_image(48, 48, 3)
    from_bgr = predictor(bgr, image_format="BGR")
    from_rgb = predictor(np.ascontiguousarray(bgr[:, :, ::-1]), image_format="RGB")
    np.testing.assert_array_equal(from_bgr.labels, from_rgb.labels)
    np.testing.assert_allclose(from_bgr.confidence, from_rgb.confidence)
    with pytest.raises(ValueError, match="image format"):
        predictor(bgr, image_format="HSV")


@pytest.mark.parametrize(
    "image", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32)]
)
def test_rejects_images_that_are_not_hw3_uint8(tiny_cfg, image):
    predictor = build(tiny_cfg(), vocabulary=["a"])
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        predictor(image)


def test_confidence_threshold_marks_unknown_pixels(tiny_cfg):
    predictor = build(tiny_cfg(), vocabulary=["a", "b"])
    image = random_image(32, 40)
    plain = predictor(image)
    predictor.confidence_threshold = float(np.median(plain.confidence)) + 1e-6
    result = predictor(image)
    low = plain.confidence < predictor.confidence_threshold
    assert low.any() and not low.all()
    assert (result.labels[low] == -1).all()
    np.testing.assert_array_equal(result.labels[~low], plain.labels[~low])
    assert result.unknown_fraction == pytest.approx(low.mean())
    assert sum(result.fractions.values()) + result.unknown_fraction == pytest.approx(1.0)
    assert (result.label_image()[low] == 255).all()


def test_label_image_is_uint16_above_255_classes():
    def result(labels, num_classes):
        names = [str(i) for i in range(num_classes)]
        return SegmentationResult(labels=labels, confidence=np.ones((2, 2), np.float32), vocabulary=names)

    labels = np.array([[0, 254], [-1, 3]], dtype=np.int32)
    small = result(labels, 255)
    assert small.label_image().dtype == np.uint8
    np.testing.assert_array_equal(small.label_image(), [[0, 254], [255, 3]])
    labels[0, 1] = 299
    big = result(labels, 300)
    assert big.label_image().dtype == np.uint16
    np.testing.assert_array_equal(big.label_image(), [[0, 299], [65535, 3]])
    assert big.unknown_fraction == 0.25 and big.fractions["299"] == 0.25


@pytest.mark.parametrize("max_elements", [1, 50, 10**9])
def test_banded_upsampling_matches_interpolate(max_elements):
    scores = torch.randn(5, 7, 9, generator=torch.Generator().manual_seed(0))
    best, label = upsample_argmax(scores, 23, 31, max_elements=max_elements)
    expected = F.interpolate(scores[None], size=(23, 31), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(best, expected.max(0).values)
    assert torch.equal(label, expected.argmax(0))


def test_weights_are_loaded(tiny_cfg, tmp_path):
    trained = build(tiny_cfg(), seed=0, vocabulary=["a", "b", "c"])
    torch.save({"model": trained.model.state_dict()}, tmp_path / "model.pth")
    image = random_image(40, 40)
    other = build(tiny_cfg(), seed=1, vocabulary=["a", "b", "c"])
    assert not np.allclose(other(image).confidence, trained(image).confidence)
    loaded = build(tiny_cfg("MODEL.WEIGHTS", str(tmp_path / "model.pth")), seed=1, vocabulary=["a", "b", "c"])
    np.testing.assert_allclose(loaded(image).confidence, trained(image).confidence, rtol=1e-5, atol=1e-6)


def test_missing_weights_file_is_named(tiny_cfg, tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build(tiny_cfg("MODEL.WEIGHTS", str(missing)))


def test_untrained_model_warns(tiny_cfg, caplog):
    with caplog.at_level("WARNING", logger="zegseg.predictor"):
        build(tiny_cfg(), vocabulary=["a"])
    assert "untrained" in caplog.text


def test_config_is_not_modified(tiny_cfg):
    cfg = tiny_cfg("MODEL.DEVICE", "cuda")
    cfg.MODEL.DEVICE = "cuda"  # load_config already resolved it; the predictor must resolve its own copy
    cfg.freeze()
    predictor = build(cfg, vocabulary=["a"])
    assert cfg.MODEL.DEVICE == "cuda" and cfg.TEST.VOCABULARY == []
    assert predictor.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
