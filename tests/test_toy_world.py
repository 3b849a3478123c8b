"""The embedded toy world: determinism, label/caption agreement, seen-label remapping, split rule, registration."""
import json

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from zegseg.data.toy import generate, load_world, render_indexed_scene
from zegseg.data.toy.crops import class_names_in, eval_region_crops

SMALL = {"train": 6, "val": 3}


@pytest.fixture(scope="module")
def world():
    return load_world()


@pytest.fixture(scope="module")
def small_root(tmp_path_factory, world):
    root = tmp_path_factory.mktemp("datasets")
    generate.generate_toy_world(root, seed=0, size=64, counts=SMALL, workers=1)
    return root


def _read_all(toy):
    return {p.relative_to(toy).as_posix(): p.read_bytes() for p in sorted(toy.rglob("*")) if p.is_file()}


def test_world_has_plain_names_and_a_quarter_unseen(world):
    assert len(world.classes) >= 30
    assert 0.2 <= len(world.unseen) / len(world.classes) <= 0.3
    assert "red circle" in world.classes and "grass" in world.classes


def test_split_is_compositional(world):
    seen_words = {w for name in world.seen_classes for w in name.split()}
    for name in world.unseen:
        assert set(name.split()) <= seen_words, name


def test_bad_world_file_is_named(tmp_path):
    bad = tmp_path / "w.json"
    bad.write_text(json.dumps({"stuff": ["lava"], "colors": {"red": [1, 2, 3]}, "shapes": ["circle"], "unseen": []}))
    with pytest.raises(ValueError, match="lava"):
        load_world(bad)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_world(tmp_path / "nope.json")


def test_scene_is_deterministic(world):
    a = render_indexed_scene(world, 0, "train", 5, 96)
    b = render_indexed_scene(world, 0, "train", 5, 96)
    c = render_indexed_scene(world, 1, "train", 5, 96)
    assert a.image.tobytes() == b.image.tobytes() and a.label.tobytes() == b.label.tobytes()
    assert a.caption == b.caption
    assert a.image.tobytes() != c.image.tobytes()


def test_disk_world_is_deterministic_and_idempotent(tmp_path, small_root):
    toy = small_root / "toy"
    before = {p: p.stat().st_mtime_ns for p in toy.rglob("*.png")}
    generate.generate_toy_world(small_root, seed=0, size=64, counts=SMALL, workers=1)
    assert before == {p: p.stat().st_mtime_ns for p in toy.rglob("*.png")}

    again = generate.generate_toy_world(tmp_path / "a", seed=0, size=64, counts=SMALL, workers=2)
    assert _read_all(again) == _read_all(toy)
    other = generate.generate_toy_world(tmp_path / "b", seed=1, size=64, counts=SMALL, workers=1)
    other_files = _read_all(other)
    assert other_files.keys() == _read_all(toy).keys()
    assert other_files["images/train/00000.png"] != _read_all(toy)["images/train/00000.png"]


def test_captions_name_exactly_the_labelled_classes(world, small_root):
    toy = small_root / "toy"
    for split, n in SMALL.items():
        captions = json.loads((toy / "captions" / f"{split}.json").read_text())
        assert sorted(captions) == [f"{i:05d}" for i in range(n)]
        for stem, caption in captions.items():
            label = cv2.imread(str(toy / "labels_all" / split / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
            assert label.dtype == np.uint8 and label.shape == (64, 64)
            ids = set(np.unique(label).tolist()) - {255}
            assert max(ids) < len(world.classes)
            assert set(class_names_in(caption, world.classes)) == {world.classes[i] for i in ids}, caption


def test_seen_labels_drop_unseen_pixels(world):
    unseen_ids = {world.classes.index(n) for n in world.unseen}
    lut = world.seen_lut()
    found_unseen = False
    for index in range(40):
        label = render_indexed_scene(world, 0, "train", index, 64).label
        seen = lut[label]
        is_unseen = np.isin(label, list(unseen_ids))
        found_unseen |= bool(is_unseen.any())
        assert (seen[is_unseen | (label == 255)] == 255).all()
        keep = seen != 255
        names_all = np.asarray(world.classes)[label[keep]]
        names_seen = np.asarray(world.seen_classes)[seen[keep]]
        assert (names_all == names_seen).all()
    assert found_unseen


def test_seen_label_files_match_lut(world, small_root):
    toy = small_root / "toy"
    lut = world.seen_lut()
    for stem in range(SMALL["train"]):
        all_ids = cv2.imread(str(toy / "labels_all" / "train" / f"{stem:05d}.png"), cv2.IMREAD_UNCHANGED)
        seen_ids = cv2.imread(str(toy / "labels_seen" / "train" / f"{stem:05d}.png"), cv2.IMREAD_UNCHANGED)
        assert (lut[all_ids] == seen_ids).all()


def test_registration_metadata_and_records(world, small_root):
    import zegseg.data.datasets  # noqa: F401  (registers the default toy datasets)
    from zegseg.data.datasets.register_toy import register_all_toy

    assert {"toy_train_seen_sem_seg", "toy_val_all_sem_seg", "toy_train_all_sem_seg"} <= set(DatasetCatalog.list())
    register_all_toy(small_root, prefix="unit_")
    train = MetadataCatalog.get("unit_toy_train_seen_sem_seg")
    assert train.stuff_classes == world.seen_classes and train.ignore_label == 255
    assert train.evaluator_type == "gzs_sem_seg"
    val = MetadataCatalog.get("unit_toy_val_all_sem_seg")
    assert val.stuff_classes == world.classes and val.unseen_classes == list(world.unseen)
    records = DatasetCatalog.get("unit_toy_train_seen_sem_seg")
    assert len(records) == SMALL["train"]
    rec = records[0]
    assert rec["file_name"].endswith("images/train/00000.png")
    assert rec["sem_seg_file_name"].endswith("labels_seen/train/00000.png")
    assert rec["height"] == rec["width"] == 64
    assert len(DatasetCatalog.get("unit_toy_val_all_sem_seg")) == SMALL["val"]


def test_missing_world_is_generated_on_load(tmp_path, monkeypatch, world):
    from zegseg.data.datasets.register_toy import register_all_toy

    monkeypatch.setattr(generate, "DEFAULT_COUNTS", {"train": 2, "val": 1})
    register_all_toy(tmp_path, prefix="autogen_")
    records = DatasetCatalog.get("autogen_toy_val_all_sem_seg")
    assert len(records) == 1 and (tmp_path / "toy" / "manifest.json").is_file()


def test_eval_crops_are_balanced_and_deterministic(world):
    crops, classes = eval_region_crops(world, per_class=2, out_size=32, seed=3)
    again, _ = eval_region_crops(world, per_class=2, out_size=32, seed=3)
    assert crops.shape == (2 * len(world.classes), 32, 32, 3) and crops.dtype == np.uint8
    assert np.bincount(classes).tolist() == [2] * len(world.classes)
    assert crops.tobytes() == again.tobytes()
