"""The training mapper (mask_former_semantic), on synthetic PNGs."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.projects.point_rend import ColorAugSSDTransform

from zegseg.config import add_zegseg_config
from zegseg.data.dataset_mappers import MaskFormerSemanticDatasetMapper, build_train_mapper
from zegseg.data.datasets.common import register_sem_seg_dataset, write_label


def make_dataset(root: Path, name: str, num_classes: int, h: int = 20, w: int = 30, seed: int = 0):
    """One image with a label of ``num_classes`` classes (8-bit, or 16-bit beyond 254) plus ignore pixels."""
    rng = np.random.default_rng(seed)
    ignore = 255 if num_classes <= 254 else 65535
    dtype = np.uint8 if ignore == 255 else np.uint16
    label = np.zeros((h, w), dtype)
    ids = rng.choice(num_classes, size=4, replace=False)  # four vertical stripes, one of them ignored
    bounds = np.linspace(0, w, 5).astype(int)
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        label[:, a:b] = ignore if k == 2 else ids[k]
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    (root / "images").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(root / "images/img.png"), image)
    write_label(root / "labels/img.png", label)
    register_sem_seg_dataset(name, image_dir=root / "images", gt_dir=root / "labels",
                             class_names=[f"c{i}" for i in range(num_classes)], prepare_hint="-", image_ext=".png")
    return image, label, ignore


@pytest.fixture
def dataset(tmp_path, request):
    num_classes = getattr(request, "param", 6)
    name = f"_test_mapper_{num_classes}"
    image, label, ignore = make_dataset(tmp_path, name, num_classes)
    yield name, image, label, ignore
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def make_cfg(dataset_name, **overrides):
    cfg = get_cfg()
    add_zegseg_config(cfg)
    cfg.DATASETS.TRAIN = (dataset_name,)
    cfg.INPUT.FORMAT = "BGR"
    cfg.INPUT.MIN_SIZE_TRAIN = (20,)  # the synthetic images' own size: no resize
    cfg.INPUT.MAX_SIZE_TRAIN = 1000
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.RANDOM_FLIP = "none"
    for key, value in overrides.items():
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = getattr(node, part)
        setattr(node, last, value)
    return cfg


def check_output(out, ignore):
    image, sem_seg, inst = out["image"], out["sem_seg"], out["instances"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3 and sem_seg.dtype == torch.int64
    assert image.shape[1:] == sem_seg.shape == inst.image_size
    classes = inst.gt_classes
    assert classes.dtype == torch.int64 and inst.gt_masks.dtype == torch.bool
    assert inst.gt_masks.shape == (len(classes),) + tuple(sem_seg.shape)
    assert torch.equal(classes, torch.unique(sem_seg[sem_seg != ignore]))
    for c, mask in zip(classes, inst.gt_masks):
        assert torch.equal(mask, sem_seg == c)
    assert torch.equal(inst.gt_masks.any(dim=0), sem_seg != ignore)
    assert out["height"] == 20 and out["width"] == 30 and "sem_seg_file_name" not in out


@pytest.mark.parametrize("dataset", [6, 300], indirect=True)
def test_identity_mapping_reads_image_and_label_exactly(dataset):
    name, image, label, ignore = dataset
    mapper = build_train_mapper(make_cfg(name))
    assert isinstance(mapper, MaskFormerSemanticDatasetMapper) and mapper.ignore_label == ignore
    out = mapper(DatasetCatalog.get(name)[0])
    check_output(out, ignore)
    np.testing.assert_array_equal(out["image"].permute(1, 2, 0).numpy(), image)
    np.testing.assert_array_equal(out["sem_seg"].numpy(), label.astype(np.int64))
    assert len(out["instances"]) == 3


@pytest.mark.parametrize("dataset", [6, 300], indirect=True)
def test_augmented_and_padded(dataset):
    name, _, label, ignore = dataset
    cfg = make_cfg(name, **{
        "INPUT.MIN_SIZE_TRAIN": (32, 40), "INPUT.CROP.ENABLED": True, "INPUT.CROP.TYPE": "absolute",
        "INPUT.CROP.SIZE": (24, 24), "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": 0.5, "INPUT.COLOR_AUG_SSD": True,
        "INPUT.RANDOM_FLIP": "horizontal", "INPUT.SIZE_DIVISIBILITY": 32,
    })
    mapper = build_train_mapper(cfg)
    record = DatasetCatalog.get(name)[0]
    np.random.seed(0)
    for _ in range(4):
        out = mapper(record)
        check_output(out, ignore)
        assert out["image"].shape == (3, 32, 32)
        assert set(out["sem_seg"].unique().tolist()) <= set(np.unique(label).tolist())
        # the 24 x 24 crop is padded to 32 x 32: image with grey 128 (the official mappers'), label with ignore
        assert (out["sem_seg"][24:] == ignore).all() and (out["sem_seg"][:, 24:] == ignore).all()
        assert (out["image"][:, 24:] == 128).all() and (out["image"][:, :, 24:] == 128).all()


def test_unknown_mapper_and_bad_configs(dataset):
    name = dataset[0]
    with pytest.raises(ValueError, match="unknown mapper 'nope'; known: .*mask_former_semantic"):
        build_train_mapper(make_cfg(name, **{"INPUT.DATASET_MAPPER_NAME": "nope"}))
    with pytest.raises(ValueError, match="is a training mapper"):
        build_train_mapper(make_cfg(name), is_train=False)
    with pytest.raises(ValueError, match="'_not_registered' has no 'ignore_label'"):
        build_train_mapper(make_cfg("_not_registered"))


def test_mapper_built_by_hand_rejects_size_mismatch(dataset, tmp_path):
    name, image, _, ignore = dataset
    mapper = MaskFormerSemanticDatasetMapper(augmentations=[], image_format="BGR", ignore_label=ignore)
    write_label(tmp_path / "small.png", np.zeros((5, 5), np.uint8))
    record = dict(DatasetCatalog.get(name)[0], sem_seg_file_name=str(tmp_path / "small.png"))
    with pytest.raises(ValueError, match="small.png is \\(5, 5\\)"):
        mapper(record)


def test_color_aug_is_detectron2s(dataset):
    """COLOR_AUG_SSD uses the transform of detectron2's PointRend project, as the official MaskFormer mapper does."""
    name, *_ = dataset
    mapper = build_train_mapper(make_cfg(name, **{"INPUT.COLOR_AUG_SSD": True, "INPUT.FORMAT": "RGB"}))
    augs = [getattr(a, "tfm", a) for a in mapper.augmentations.augs]
    colour = [a for a in augs if isinstance(a, ColorAugSSDTransform)]
    assert len(colour) == 1 and colour[0].is_rgb
