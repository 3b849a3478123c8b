"""Prompt learning's data: one-segment records, the per-class draw, the segment_crop mapper, CLIP at any size."""
import json
from pathlib import Path

import clip.model
import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from torch.nn import functional as F

from zegseg.config import add_zegseg_config
from zegseg.data import segment_samples
from zegseg.data.dataset_mappers import SegmentCropDatasetMapper, build_train_mapper
from zegseg.data.dataset_mappers.segment_crop import CropToSegment, RandomResizedSegmentCrop
from zegseg.data.datasets.common import register_sem_seg_dataset, write_label
from zegseg.data.segment_samples import build_train_dataset, label_classes, sample_per_class, segment_records
from zegseg.modeling.clip.image_encoder import encode_image


def make_images(root: Path, name: str, n: int = 3, h: int = 30, w: int = 40):
    """``n`` images whose labels hold class 0 (left), class 1 + k (right, image k) and ignore (bottom rows)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        label = np.zeros((h, w), np.uint8)
        label[:, w // 2 :] = 1 + k
        label[-4:] = 255
        cv2.imwrite(str(root / "images" / f"img{k}.png"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        write_label(root / "labels" / f"img{k}.png", label)
    register_sem_seg_dataset(name, image_dir=root / "images", gt_dir=root / "labels",
                             class_names=[f"c{i}" for i in range(n + 1)], prepare_hint="-", image_ext=".png")


@pytest.fixture
def dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEGSEG_CACHE_DIR", str(tmp_path / "cache"))
    name = "_test_segment_samples"
    make_images(tmp_path / "data", name)
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def make_cfg(name, **overrides):
    cfg = get_cfg()
    add_zegseg_config(cfg)
    cfg.DATASETS.TRAIN = (name,)
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.DATASET_MAPPER_NAME = "segment_crop"
    cfg.DATALOADER.NUM_WORKERS = 0
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    return cfg


def test_segment_records_and_cache(dataset, tmp_path, monkeypatch):
    records = DatasetCatalog.get(dataset)
    flat = segment_records(records, 255)
    assert [(Path(r["file_name"]).name, r["category_id"]) for r in flat] == [
        ("img0.png", 0), ("img0.png", 1), ("img1.png", 0), ("img1.png", 2), ("img2.png", 0), ("img2.png", 3)
    ]
    cached = list((tmp_path / "cache" / "label_classes").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())[records[0]["sem_seg_file_name"]] == [0, 1, 255]

    def fail(path):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(segment_samples, "read_label", fail)
    assert segment_records(records, 255) == flat
    write_label(records[0]["sem_seg_file_name"], np.full((30, 40), 3, np.uint8))  # a changed file is re-read
    monkeypatch.undo()
    monkeypatch.setenv("ZEGSEG_CACHE_DIR", str(tmp_path / "cache"))
    assert label_classes([records[0]["sem_seg_file_name"]])[records[0]["sem_seg_file_name"]] == [3]


def official_draw(records, per_class, seed):
    """The simple baseline's dataset_sample_per_class, written plainly: group by class in first-appearance order,
    rng.choice over each group's list (with replacement) when it has at least per_class records."""
    order = []
    for r in records:
        if r["category_id"] not in order:
            order.append(r["category_id"])
    rng = np.random.default_rng(seed)
    out = []
    for c in order:
        group = [r for r in records if r["category_id"] == c]
        out += group if len(group) < per_class else rng.choice(group, size=per_class).tolist()
    return out


def test_per_class_draw_is_the_official_one():
    rng = np.random.default_rng(7)
    records = [{"file_name": f"{i}", "category_id": int(c)} for i, c in enumerate(rng.integers(0, 9, 400))]
    records += [{"file_name": "rare", "category_id": 42}]  # fewer than per_class: kept as is
    drawn = sample_per_class(records, 32, seed=0)
    assert drawn == official_draw(records, 32, 0)
    counts = {c: sum(r["category_id"] == c for r in drawn) for c in {r["category_id"] for r in records}}
    assert counts[42] == 1 and all(v == 32 for c, v in counts.items() if c != 42)
    assert len({r["file_name"] for r in drawn if r["category_id"] == 3}) < 32  # with replacement
    assert sample_per_class(records, -1, 0) == records
    assert sample_per_class(records, 32, seed=1) != drawn


def test_build_train_dataset_only_for_segment_mappers(dataset):
    assert build_train_dataset(make_cfg(dataset, **{"INPUT.DATASET_MAPPER_NAME": "mask_former_semantic"})) is None
    drawn = build_train_dataset(make_cfg(dataset, **{"DATASETS.SAMPLE_PER_CLASS": 2}))
    assert sorted(r["category_id"] for r in drawn) == [0, 0, 1, 2, 3]


def test_crop_to_segment_follows_the_official_box():
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 1
    crop = CropToSegment().get_transform(None, mask)
    assert (crop.x0, crop.y0, crop.w, crop.h) == (3, 2, 4, 3)
    wide = CropToSegment(2.0).get_transform(None, mask)  # centre (5, 3.5), size (8, 6): clamped at 0 and W - 1
    assert (wide.x0, wide.y0, wide.w, wide.h) == (1, 0, 8, 6)
    edge = np.zeros((10, 12), np.uint8)
    edge[6:, 9:] = 1  # touches the right and bottom borders: the official box stops at W - 1, H - 1
    crop = CropToSegment().get_transform(None, edge)
    assert (crop.x0, crop.y0, crop.w, crop.h) == (9, 6, 2, 3)
    corner = np.zeros((10, 12), np.uint8)
    corner[9, 11] = 1
    crop = CropToSegment().get_transform(None, corner)
    assert (crop.x0, crop.y0, crop.w, crop.h) == (11, 9, 1, 1)  # at least one pixel


def test_random_resized_crop_size_and_range():
    aug = RandomResizedSegmentCrop((24, 16), scale=(0.5, 0.5), ratio=(1.0, 1.0))
    image = np.zeros((40, 40, 3), np.uint8)
    torch.manual_seed(0)
    tfm = aug.get_transform(image)
    crop, resize = tfm.transforms
    assert crop.w == crop.h == 28  # sqrt(0.5 * 1600) rounded
    assert tfm.apply_image(image).shape == (24, 16, 3)
    assert (resize.new_h, resize.new_w) == (24, 16)


def test_mapper_gives_one_segment_sample(dataset):
    cfg = make_cfg(dataset, **{"INPUT.SEGMENT_CROP.SIZE": (20, 16), "INPUT.RANDOM_FLIP": "none"})
    mapper = build_train_mapper(cfg)
    assert isinstance(mapper, SegmentCropDatasetMapper)
    record = build_train_dataset(cfg)[1]  # image 0, class 1: the right half
    torch.manual_seed(0)
    out = mapper(record)
    assert out is not None and out["segment_sample"] is True
    assert out["image"].shape == (3, 20, 16) and out["image"].dtype == torch.uint8
    assert out["instances"].gt_classes.tolist() == [1]
    assert out["instances"].gt_masks.shape == (1, 20, 16) and out["instances"].gt_masks.dtype == torch.bool
    assert (out["height"], out["width"]) == (30, 40)
    # the box crop of class 1 holds only class 1 above the ignored rows: the mask is the crop's upper part
    full = SegmentCropDatasetMapper(
        augmentations=[CropToSegment(), T.ResizeTransform(26, 19, 26, 19)], image_format="BGR"
    )(record)
    assert full["instances"].gt_masks[0].all()  # rows 0..25, columns 20..38 (the official box leaves out column W - 1)


def test_mapper_skips_samples_whose_crop_misses_the_segment(dataset):
    record = segment_records(DatasetCatalog.get(dataset), 255)[1]

    class CornerCrop(T.Augmentation):
        def get_transform(self, image):
            h, w = image.shape[:2]
            return T.CropTransform(0, h - 2, 2, 2, w, h)  # the bottom rows: ignored pixels only

    mapper = SegmentCropDatasetMapper(augmentations=[CornerCrop()], image_format="BGR")
    assert mapper(record) is None
    with pytest.raises(ValueError, match="category_id"):
        mapper({k: v for k, v in record.items() if k != "category_id"})


@pytest.mark.parametrize("size", [(40, 40), (40, 24), (56, 32)])
def test_vit_encodes_any_size_with_resized_positional_embedding(size):
    torch.manual_seed(0)
    kwargs = dict(embed_dim=16, vision_layers=1, vision_width=64, vision_patch_size=8, context_length=8,
                  vocab_size=100, transformer_width=32, transformer_heads=1, transformer_layers=1)
    model = clip.model.CLIP(image_resolution=32, **kwargs).eval()
    images = torch.randn(2, 3, *size)
    got = encode_image(model, images)
    gh, gw = size[0] // 8, size[1] // 8
    pos = model.visual.positional_embedding
    grid = F.interpolate(pos[1:].T.reshape(1, 64, 4, 4), size=(gh, gw), mode="bicubic", align_corners=False)
    if gh == gw:  # a CLIP built for this size, given the resized embedding, is the reference
        other = clip.model.CLIP(image_resolution=size[0], **kwargs).eval()
        other.load_state_dict({**model.state_dict(), "visual.positional_embedding": torch.cat(
            [pos[:1], grid.reshape(64, gh * gw).T])})
        torch.testing.assert_close(got, other.encode_image(images))
    assert got.shape == (2, 16)
    native = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(encode_image(model, native), model.encode_image(native), rtol=0, atol=0)


def test_resnet_clip_needs_its_own_resolution():
    model = clip.model.CLIP(embed_dim=16, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8,
                            vision_patch_size=None, context_length=8, vocab_size=100, transformer_width=32,
                            transformer_heads=1, transformer_layers=1).eval()
    with pytest.raises(ValueError, match="SEGMENT_CROP.SIZE"):
        encode_image(model, torch.randn(1, 3, 40, 32))
