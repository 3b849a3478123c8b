"""Class lists, splits, registration metadata and loading of the built-in datasets (zegseg.data.datasets)."""
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from zegseg.data.datasets import register_coco_stuff as coco_module
from zegseg.data.datasets.common import (
    dataset_root,
    ignore_label_for,
    label_lut,
    load_class_list,
    read_label,
    register_sem_seg_dataset,
    write_label,
)


def _sha(names):
    return hashlib.sha256("\n".join(names).encode()).hexdigest()


COCO_UNSEEN = [
    "cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard", "clouds", "grass",
    "playingfield", "river", "road", "tree", "wall-concrete",
]
VOC_UNSEEN = ["pottedplant", "sheep", "sofa", "train", "tvmonitor"]
PC59 = [
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle", "building", "bus",
    "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow", "cup", "curtain", "dog", "door", "fence",
    "floor", "flower", "food", "grass", "ground", "horse", "keyboard", "light", "motorbike", "mountain", "mouse",
    "person", "plate", "platform", "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow",
    "sofa", "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
]


def test_coco_stuff_class_list():
    classes = load_class_list("coco_stuff")
    assert len(classes.names) == 171 and len(classes.seen) == 156
    assert list(classes.unseen) == COCO_UNSEEN
    gaps = {11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90}  # COCO category ids without a class, minus one
    assert set(classes.raw_ids) == set(range(182)) - gaps
    assert list(classes.raw_ids) == sorted(classes.raw_ids)
    assert classes.names[:3] == ("person", "bicycle", "car") and classes.names[-1] == "wood"
    assert classes.names[classes.raw_ids.index(20)] == "cow" and classes.names[classes.raw_ids.index(171)] == \
        "wall-concrete"
    assert classes.seen[-1] == "wood" and "cow" not in classes.seen


def test_voc_class_list():
    classes = load_class_list("voc")
    assert len(classes.names) == 20 and list(classes.raw_ids) == list(range(1, 21))
    assert list(classes.unseen) == VOC_UNSEEN
    assert list(classes.seen) == list(classes.names[:15])


def test_ade20k_full_class_list_and_frequency_split():
    import json

    data = json.loads((Path(coco_module.__file__).with_name("class_names") / "ade20k_full.json").read_text())
    frequency = {c["name"]: c["frequency"] for c in data["classes"]}
    classes = load_class_list("ade20k_full")
    assert len(classes.names) == 847 and len(classes.seen) == 572 and len(classes.unseen) == 275
    counts = {f: sum(v == f for v in frequency.values()) for f in ("frequent", "common", "rare")}
    assert counts == {"frequent": 212, "common": 360, "rare": 275}
    assert list(classes.unseen) == [n for n in classes.names if frequency[n] == "rare"]
    # digests of ZegFormer's lists (names of all 847 classes in order; names of the 275 rare ones)
    assert _sha(classes.names) == "ee311c5f3b780a16a58f40726927f6c41149860a5fca6c1116ea1dca129efd8b"
    assert _sha(classes.unseen) == "b4efddd0006b9eb2e449fd4a252425257435c6f4f45d3797376af4b41f8bc11e"
    assert classes.names[0] == "wall" and classes.raw_ids[0] == 2978
    assert classes.unseen[:2] == ("catwalk", "inflatable bounce game")
    assert classes.unseen[-1] == "adding machine, totalizer, totaliser"


def test_ade20k_150_and_pascal_context_class_lists():
    ade = load_class_list("ade20k_150")
    assert len(ade.names) == 150 and list(ade.raw_ids) == list(range(1, 151)) and not ade.unseen
    assert ade.names[:4] == ("wall", "building", "sky", "floor") and ade.names[8] == "window"
    assert all(n == n.strip() for n in ade.names)

    pc459 = load_class_list("pcontext_459")
    assert len(pc459.names) == 459 and list(pc459.raw_ids) == list(range(1, 460))
    assert _sha(pc459.names) == "c9fe8ff7083d2572021691666a700755d8f4e1c634585ba9919a3f3a2c834538"
    pc59 = load_class_list("pcontext_59")
    assert list(pc59.names) == PC59
    assert [pc459.names[i - 1] for i in pc59.raw_ids] == PC59
    assert list(pc59.raw_ids) == sorted(pc59.raw_ids)


def test_unknown_class_list():
    with pytest.raises(ValueError, match="unknown class list 'nope'; known: .*coco_stuff"):
        load_class_list("nope")


EXPECTED = {  # name: (number of classes, ignore label, unseen classes: None = no split)
    "coco_stuff_train_seen_sem_seg": (156, 255, []),
    "coco_stuff_train_all_sem_seg": (171, 255, COCO_UNSEEN),
    "coco_stuff_val_all_sem_seg": (171, 255, COCO_UNSEEN),
    "voc_train_seen_sem_seg": (15, 255, []),
    "voc_val_all_sem_seg": (20, 255, VOC_UNSEEN),
    "ade20k_full_train_seen_sem_seg": (572, 65535, []),
    "ade20k_full_val_all_sem_seg": (847, 65535, 275),
    "ade20k_150_val_sem_seg": (150, 255, None),
    "pcontext_59_val_sem_seg": (59, 255, None),
    "pcontext_459_val_sem_seg": (459, 65535, None),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_registered_metadata(name):
    import zegseg.data  # noqa: F401  (registers)

    num_classes, ignore, unseen = EXPECTED[name]
    meta = MetadataCatalog.get(name)
    assert name in DatasetCatalog.list()
    assert len(meta.stuff_classes) == num_classes and len(set(meta.stuff_classes)) == num_classes
    assert meta.ignore_label == ignore and meta.evaluator_type == "gzs_sem_seg"
    assert meta.image_root and meta.sem_seg_root
    if unseen is None:
        assert not hasattr(meta, "unseen_classes")
    elif isinstance(unseen, int):
        assert len(meta.unseen_classes) == unseen and set(meta.unseen_classes) <= set(meta.stuff_classes)
    else:
        assert meta.unseen_classes == unseen


def test_seen_sets_index_the_seen_list():
    all_meta = MetadataCatalog.get("coco_stuff_val_all_sem_seg")
    seen = MetadataCatalog.get("coco_stuff_train_seen_sem_seg").stuff_classes
    assert seen == [n for n in all_meta.stuff_classes if n not in set(all_meta.unseen_classes)]


@pytest.fixture
def coco_root(tmp_path):
    """COCO-Stuff registered under a temporary root; the default registration is restored afterwards."""
    coco_module.register_coco_stuff(tmp_path)
    yield tmp_path
    coco_module.register_coco_stuff()


def _write_image(path: Path, h=6, w=8):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((h, w, 3), 100, np.uint8))


def test_registered_dataset_loads_from_root(coco_root):
    labels = coco_root / "coco/stuffthingmaps_detectron2/val2017_all"
    for stem in ("000000000002", "000000000001"):
        _write_image(coco_root / f"coco/val2017/{stem}.jpg")
        write_label(labels / f"{stem}.png", np.zeros((6, 8), np.uint8))
    _write_image(coco_root / "coco/val2017/000000000003.jpg")  # an image without a label is not a sample
    records = DatasetCatalog.get("coco_stuff_val_all_sem_seg")
    assert [Path(r["file_name"]).name for r in records] == ["000000000001.jpg", "000000000002.jpg"]
    assert records[0]["sem_seg_file_name"] == str(labels / "000000000001.png")
    assert MetadataCatalog.get("coco_stuff_val_all_sem_seg").sem_seg_root == str(labels)


def test_registration_reads_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    try:
        coco_module.register_coco_stuff()
        assert MetadataCatalog.get("coco_stuff_val_all_sem_seg").image_root == str(tmp_path / "coco/val2017")
    finally:
        monkeypatch.undo()
        coco_module.register_coco_stuff()
    assert MetadataCatalog.get("coco_stuff_val_all_sem_seg").image_root == str(Path(dataset_root()) / "coco/val2017")


def test_missing_labels_name_the_prepare_script(coco_root):
    with pytest.raises(FileNotFoundError, match="val2017_all not found; create it with python datasets/prepare_coco"):
        DatasetCatalog.get("coco_stuff_val_all_sem_seg")
    labels = coco_root / "coco/stuffthingmaps_detectron2/val2017_all"
    write_label(labels / "000000000001.png", np.zeros((6, 8), np.uint8))
    with pytest.raises(FileNotFoundError, match="1 of 1 labels .* have no image"):
        DatasetCatalog.get("coco_stuff_val_all_sem_seg")


def test_register_replaces_previous_entry(tmp_path):
    name = "_test_datasets_replace"
    for root in (tmp_path / "a", tmp_path / "b"):
        register_sem_seg_dataset(name, image_dir=root, gt_dir=root, class_names=["x", "y"], prepare_hint="-")
    assert MetadataCatalog.get(name).image_root == str(tmp_path / "b")
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def test_label_roundtrip_and_lut(tmp_path):
    label8 = np.array([[0, 1, 255], [7, 254, 3]], np.uint8)
    label16 = np.array([[0, 846, 65535], [300, 255, 1]], np.uint16)
    write_label(tmp_path / "a.png", label8)
    write_label(tmp_path / "b.png", label16)
    for name, label in (("a.png", label8), ("b.png", label16)):
        back = read_label(tmp_path / name)
        assert back.dtype == label.dtype and np.array_equal(back, label)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "b.png"]  # no temporary files left
    with pytest.raises(ValueError, match="uint8 or uint16"):
        write_label(tmp_path / "c.png", label8.astype(np.int32))

    assert ignore_label_for(254) == 255 and ignore_label_for(255) == 65535 and ignore_label_for(847) == 65535
    lut = label_lut([5, 2, 9], 16)
    assert lut.dtype == np.uint8 and lut[5] == 0 and lut[2] == 1 and lut[9] == 2 and lut[0] == lut[15] == 255
    lut16 = label_lut(list(range(1, 301)), 400)
    assert lut16.dtype == np.uint16 and lut16[0] == 65535 and lut16[300] == 299
