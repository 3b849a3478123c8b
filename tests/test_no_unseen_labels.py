"""The zero-shot rule: no component is ever trained with segmentation labels of unseen classes.

Every shipped config trains on image–caption pairs or on a segmentation dataset whose class list holds no class
its evaluation treats as unseen, and the toy training loader's targets are exactly the seen-class masks (an unseen
object's pixels are never a target). Backbone initialisation uses no segmentation labels at all: the toy
configs start from ToyCLIP's image tower, trained on image–caption pairs only (test_clip_backbone.py).
"""
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import MetadataCatalog

import zegseg  # noqa: F401  (registers the datasets)
from zegseg.data.datasets.register_toy import register_all_toy
from zegseg.data.toy import generate, load_world
from zegseg.engine.setup_config import load_config
from zegseg.engine.trainer import ZegsegTrainer

CONFIGS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))
PREFIX = "unseen_rule_"


def _unseen_of(names):
    """The union of the unseen classes that the datasets ``names`` declare."""
    return {c for n in names for c in (MetadataCatalog.get(n).get("unseen_classes") or [])}


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda p: str(Path(p).relative_to(Path(p).parents[1])))
def test_configs_train_on_seen_classes_only(config_file):
    cfg = load_config(config_file, ["MODEL.DEVICE", "cpu"])
    unseen = _unseen_of(cfg.DATASETS.TEST)
    for name in cfg.DATASETS.TRAIN:
        meta = MetadataCatalog.get(name)
        if meta.get("dataset_type") == "captions":
            continue  # image–caption pairs, no segmentation labels (web-scale pre-training's kind of data)
        classes = meta.stuff_classes
        assert not unseen & set(classes), f"{name} trains on unseen classes {sorted(unseen & set(classes))}"
    if "toy" in config_file and cfg.DATASETS.TRAIN:
        assert unseen, "the toy configs evaluate GZS3: their test set declares unseen classes"


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate.generate_toy_world(root, seed=0, size=64, counts={"train": 8, "val": 2}, workers=1)
    register_all_toy(root, prefix=PREFIX)
    return root


def test_toy_training_targets_are_seen_class_masks(toy_root):
    """Every target of the training loader is one seen class's full mask, read from the seen labels; the unseen
    objects present in the images contribute no target."""
    world = load_world()
    unseen_ids = [world.classes.index(n) for n in world.unseen]
    cfg = load_config(
        "configs/toy/zegformer.yaml",
        [
            "DATASETS.TRAIN", f"('{PREFIX}toy_train_seen_sem_seg',)",
            "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.IMS_PER_BATCH", "4",
            "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "MODEL.DEVICE", "cpu",
        ],
    )  # fmt: skip
    loader = iter(ZegsegTrainer.build_train_loader(cfg))
    unseen_pixels = 0
    for _ in range(4):
        for sample in next(loader):
            stem = Path(sample["file_name"]).stem
            all_ids = cv2.imread(str(toy_root / "toy" / "labels_all" / "train" / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            unseen_pixels += int(np.isin(all_ids, unseen_ids).sum())
            instances = sample["instances"]
            assert (instances.gt_classes < len(world.seen_classes)).all()
            for cls, mask in zip(instances.gt_classes.tolist(), instances.gt_masks.numpy()):
                target = all_ids == world.classes.index(world.seen_classes[cls])
                assert (mask == target).all() or (mask == target[:, ::-1]).all(), "a target is not a seen mask"
    assert unseen_pixels > 0, "the sampled images hold unseen objects (else the test proves nothing)"
