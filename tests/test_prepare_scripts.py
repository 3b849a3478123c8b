"""datasets/prepare_*.py on miniature downloads in the official on-disk formats, checked pixel by pixel."""
import hashlib
import importlib.util
import logging
import pickle
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io
from detectron2.data import DatasetCatalog
from PIL import Image

from zegseg.data.datasets import (
    register_ade20k_150,
    register_ade20k_full,
    register_coco_stuff,
    register_pcontext,
    register_voc,
)
from zegseg.data.datasets.common import load_class_list, read_label

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import datasets/<name>.py as a module (registered in sys.modules so that process pools can pickle its
    functions)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "datasets" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def expected_map(raw: np.ndarray, mapping: dict, ignore: int) -> np.ndarray:
    """Reference conversion, one pixel at a time."""
    out = np.empty(raw.shape, np.int64)
    for idx, value in np.ndenumerate(raw):
        out[idx] = mapping.get(int(value), ignore)
    return out


def class_mapping(class_list: str, seen_only: bool = False) -> dict:
    classes = load_class_list(class_list)
    names = classes.seen if seen_only else classes.names
    by_name = dict(zip(classes.names, classes.raw_ids))
    return {by_name[n]: k for k, n in enumerate(names)}


def tree_digest(root: Path) -> dict:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


def write_jpg(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(autouse=True)
def restore_registrations():
    yield
    for register in (register_coco_stuff.register_coco_stuff, register_voc.register_voc,
                     register_ade20k_full.register_ade20k_full, register_ade20k_150.register_ade20k_150,
                     register_pcontext.register_pcontext):
        register()


# ---------------------------------------------------------------------------------------------------- COCO-Stuff


def make_coco(root: Path) -> dict:
    rng = np.random.default_rng(0)
    values = np.array([0, 10, 11, 20, 90, 91, 171, 181, 255], np.uint8)  # person, fire hydrant, gap, cow, gap, ...
    raw = {}
    for split, stems in (("train2017", ["000000000009", "000000000025"]), ("val2017", ["000000000139"])):
        for stem in stems:
            label = rng.choice(values, size=(7, 9)).astype(np.uint8)
            path = root / "coco/stuffthingmaps" / split / f"{stem}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(label).save(path)
            write_jpg(root / "coco" / split / f"{stem}.jpg", 7, 9)
            raw[(split, stem)] = label
    return raw


def test_prepare_coco_stuff(tmp_path):
    raw = make_coco(tmp_path)
    sources = tree_digest(tmp_path)
    script = load_script("prepare_coco_stuff")
    assert script.main(["--root", str(tmp_path), "--workers", "2"]) == 0
    assert tree_digest(tmp_path / "coco/stuffthingmaps") == {
        k: v for k, v in sources.items() if "stuffthingmaps/" in k
    }  # sources untouched

    all_map, seen_map = class_mapping("coco_stuff"), class_mapping("coco_stuff", seen_only=True)
    assert all_map[0] == 0 and all_map[20] == 19 and all_map[181] == 170 and 11 not in all_map
    assert seen_map[0] == 0 and 20 not in seen_map and seen_map[181] == 155
    out = tmp_path / "coco/stuffthingmaps_detectron2"
    for (split, stem), label in raw.items():
        subsets = [("all", all_map)] + ([("seen", seen_map)] if split == "train2017" else [])
        for subset, mapping in subsets:
            got = read_label(out / f"{split}_{subset}" / f"{stem}.png")
            assert got.dtype == np.uint8
            np.testing.assert_array_equal(got, expected_map(label, mapping, 255))
    assert not (out / "val2017_seen").exists()

    register_coco_stuff.register_coco_stuff(tmp_path)
    records = DatasetCatalog.get("coco_stuff_train_seen_sem_seg")
    assert [Path(r["file_name"]).stem for r in records] == ["000000000009", "000000000025"]
    assert all(Path(r["file_name"]).is_file() and Path(r["sem_seg_file_name"]).is_file() for r in records)


def test_prepare_is_idempotent(tmp_path, caplog):
    make_coco(tmp_path)
    script = load_script("prepare_coco_stuff")
    assert script.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    outputs = tmp_path / "coco/stuffthingmaps_detectron2"
    before = tree_digest(outputs)
    assert len(before) == 5
    caplog.set_level(logging.INFO)
    assert script.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    assert "wrote 0 label files (5 already present)" in caplog.text
    assert tree_digest(outputs) == before

    removed = outputs / "train2017_seen/000000000025.png"
    removed.unlink()
    caplog.clear()
    assert script.main(["--root", str(tmp_path), "--workers", "1"]) == 0
    assert "wrote 1 label files (4 already present)" in caplog.text
    assert tree_digest(outputs).keys() == before.keys()
    assert hashlib.sha256(removed.read_bytes()).hexdigest() == before[str(removed)][0]


# ---------------------------------------------------------------------------------------------------------- VOC


def write_palette_png(path: Path, label: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(label)
    img.putpalette(list(np.random.default_rng(1).integers(0, 256, 768, dtype=np.uint8)))  # L -> P, same indices
    assert img.mode == "P"
    img.save(path)


def make_voc(root: Path) -> dict:
    rng = np.random.default_rng(1)
    voc = root / "VOCdevkit/VOC2012"
    values = np.array([0, 1, 5, 15, 16, 20, 255], np.uint8)
    labels = {i: rng.choice(values, size=(6, 5)).astype(np.uint8) for i in
              ("2007_000032", "2007_000033", "2008_000002", "2008_000003")}
    write_palette_png(voc / "SegmentationClass/2007_000032.png", labels["2007_000032"])  # VOC train
    write_palette_png(voc / "SegmentationClass/2007_000033.png", labels["2007_000033"])  # VOC val
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("2007_000032\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2007_000033\n")
    sbd = root / "benchmark_RELEASE/dataset"
    (sbd / "cls").mkdir(parents=True)
    for image_id in ("2008_000002", "2008_000003", "2007_000033"):  # SBD's copy of a VOC val image is excluded
        seg = labels[image_id] if image_id != "2007_000033" else np.ones((6, 5), np.uint8)
        seg = np.where(seg == 255, 0, seg).astype(np.uint8)  # SBD has no void label
        labels[image_id] = seg if image_id != "2007_000033" else labels[image_id]
        gt = {"Segmentation": seg, "Boundaries": np.zeros((1, 1)), "CategoriesPresent": np.unique(seg)}
        scipy.io.savemat(sbd / "cls" / f"{image_id}.mat", {"GTcls": gt})
    (sbd / "train.txt").write_text("2008_000002\n2007_000033\n")
    (sbd / "val.txt").write_text("2008_000003\n")
    for image_id in labels:
        write_jpg(voc / "JPEGImages" / f"{image_id}.jpg", 6, 5)
    return labels


def test_prepare_voc(tmp_path):
    labels = make_voc(tmp_path)
    sources = tree_digest(tmp_path)
    assert load_script("prepare_voc").main(["--root", str(tmp_path), "--workers", "1"]) == 0
    assert {k: v for k, v in tree_digest(tmp_path).items() if k in sources} == sources

    out = tmp_path / "VOCdevkit/VOC2012/annotations_detectron2"
    assert sorted(p.stem for p in (out / "train_seen").iterdir()) == ["2007_000032", "2008_000002", "2008_000003"]
    assert sorted(p.stem for p in (out / "val_all").iterdir()) == ["2007_000033"]
    all_map = {c: c - 1 for c in range(1, 21)}
    seen_map = {c: c - 1 for c in range(1, 16)}
    for image_id in ("2007_000032", "2008_000002", "2008_000003"):
        np.testing.assert_array_equal(read_label(out / "train_seen" / f"{image_id}.png"),
                                      expected_map(labels[image_id], seen_map, 255))
    np.testing.assert_array_equal(read_label(out / "val_all/2007_000033.png"),
                                  expected_map(labels["2007_000033"], all_map, 255))

    register_voc.register_voc(tmp_path)
    assert len(DatasetCatalog.get("voc_train_seen_sem_seg")) == 3
    assert len(DatasetCatalog.get("voc_val_all_sem_seg")) == 1


# ------------------------------------------------------------------------------------------------- ADE20K-Full


def encode_ade(class_index: np.ndarray) -> np.ndarray:
    """ADE20K's *_seg.png colour code of a class-index map: R = index // 256 * 10, G = index % 256."""
    rgb = np.zeros(class_index.shape + (3,), np.uint8)
    rgb[..., 0] = class_index // 256 * 10
    rgb[..., 1] = class_index % 256
    rgb[..., 2] = 7  # instance information, unused
    return rgb


def make_ade_full(root: Path) -> dict:
    rng = np.random.default_rng(2)
    # wall (frequent), runway (common), adding machine (rare), 1 (not among the 847 classes), 0 (unlabeled)
    values = np.array([2978, 2185, 3148, 1, 0])
    entries = {
        "ADE_train_00000001.jpg": ("ADE20K_2021_17_01/images/ADE/training/urban/street", (12, 20)),
        "ADE_val_00000001.jpg": ("ADE20K_2021_17_01/images/ADE/validation/urban/street", (6, 9)),
    }
    index = {"folder": [], "filename": [], "objectnames": ["-"]}
    classes = {}
    for filename, (folder, (h, w)) in entries.items():
        index["folder"].append(folder)
        index["filename"].append(filename)
        write_jpg(root / folder / filename, h, w)
        classes[filename] = rng.choice(values, size=(h, w))
        Image.fromarray(encode_ade(classes[filename])).save(root / folder / filename.replace(".jpg", "_seg.png"))
    with open(root / "ADE20K_2021_17_01/index_ade20k.pkl", "wb") as f:
        pickle.dump(index, f)
    return classes


def test_prepare_ade20k_full(tmp_path):
    classes = make_ade_full(tmp_path)
    sources = tree_digest(tmp_path)
    script = load_script("prepare_ade20k_full")
    assert script.main(["--root", str(tmp_path), "--workers", "1", "--max-size", "8"]) == 0
    assert {k: v for k, v in tree_digest(tmp_path).items() if k in sources} == sources

    ade = tmp_path / "ADE20K_2021_17_01"
    seen_map = class_mapping("ade20k_full", seen_only=True)
    all_map = class_mapping("ade20k_full")
    assert all_map[2978] == 0 and all_map[2185] == 52 and all_map[3148] == 846 and seen_map[2185] == 52
    assert 3148 not in seen_map and 1 not in all_map

    # training: 12 x 20 has its shorter side above 8, so image and label are resized to 8 x 13
    train_label = read_label(ade / "annotations_detectron2/training_seen/ADE_train_00000001.png")
    assert train_label.dtype == np.uint16 and train_label.shape == (8, 13)
    expected = expected_map(classes["ADE_train_00000001.jpg"], seen_map, 65535).astype(np.uint16)
    np.testing.assert_array_equal(train_label, cv2.resize(expected, (13, 8), interpolation=cv2.INTER_NEAREST))
    assert cv2.imread(str(ade / "images_detectron2/training/ADE_train_00000001.jpg")).shape == (8, 13, 3)

    # validation: 6 x 9 stays as it is; the image is copied byte for byte
    val_label = read_label(ade / "annotations_detectron2/validation_all/ADE_val_00000001.png")
    np.testing.assert_array_equal(val_label, expected_map(classes["ADE_val_00000001.jpg"], all_map, 65535))
    source = tmp_path / "ADE20K_2021_17_01/images/ADE/validation/urban/street/ADE_val_00000001.jpg"
    assert (ade / "images_detectron2/validation/ADE_val_00000001.jpg").read_bytes() == source.read_bytes()
    assert not (ade / "annotations_detectron2/validation_seen").exists()

    register_ade20k_full.register_ade20k_full(tmp_path)
    (record,) = DatasetCatalog.get("ade20k_full_val_all_sem_seg")
    assert Path(record["file_name"]).name == "ADE_val_00000001.jpg"


# -------------------------------------------------------------------------------------------------- ADE20K-150


def test_prepare_ade20k_150(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    raw = np.random.default_rng(3).integers(0, 151, (5, 7)).astype(np.uint8)
    raw[0, :3] = [0, 1, 150]
    (ade / "annotations/validation").mkdir(parents=True)
    Image.fromarray(raw).save(ade / "annotations/validation/ADE_val_00000001.png")
    write_jpg(ade / "images/validation/ADE_val_00000001.jpg", 5, 7)
    assert load_script("prepare_ade20k_150").main(["--root", str(tmp_path), "--workers", "1"]) == 0
    got = read_label(ade / "annotations_detectron2/validation/ADE_val_00000001.png")
    np.testing.assert_array_equal(got, expected_map(raw, {c: c - 1 for c in range(1, 151)}, 255))
    assert list(got[0, :3]) == [255, 0, 149]
    register_ade20k_150.register_ade20k_150(tmp_path)
    assert len(DatasetCatalog.get("ade20k_150_val_sem_seg")) == 1


# ---------------------------------------------------------------------------------------------- PASCAL Context


def make_pcontext(root: Path, labels_txt: bool = True) -> dict:
    voc = root / "VOCdevkit/VOC2010"
    (voc / "trainval").mkdir(parents=True)
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "ImageSets/Main/val.txt").write_text("2008_000002\n2008_000005\n")
    rng = np.random.default_rng(4)
    values = np.array([0, 1, 2, 397, 458, 459], np.uint16)  # unlabeled, accordion, aeroplane, table, wood, wool
    maps = {}
    for image_id in ("2008_000002", "2008_000005", "2008_000007"):  # the last one is a training image
        maps[image_id] = rng.choice(values, size=(6, 4)).astype(np.uint16)
        scipy.io.savemat(voc / "trainval" / f"{image_id}.mat", {"LabelMap": maps[image_id]})
        write_jpg(voc / "JPEGImages" / f"{image_id}.jpg", 6, 4)
    if labels_txt:
        names = load_class_list("pcontext_459").names
        (voc / "labels.txt").write_text("".join(f"{i}: {n}\n" for i, n in enumerate(names, 1)))
    return maps


def test_prepare_pcontext(tmp_path):
    maps = make_pcontext(tmp_path)
    assert load_script("prepare_pcontext").main(["--root", str(tmp_path), "--workers", "1"]) == 0
    out = tmp_path / "VOCdevkit/VOC2010/annotations_detectron2"
    assert sorted(p.stem for p in (out / "pc59_val").iterdir()) == ["2008_000002", "2008_000005"]
    map459 = {c: c - 1 for c in range(1, 460)}
    map59 = class_mapping("pcontext_59")
    assert map59[2] == 0 and map59[397] == 49 and map59[458] == 58 and 1 not in map59 and 459 not in map59
    for image_id in ("2008_000002", "2008_000005"):
        pc459 = read_label(out / "pc459_val" / f"{image_id}.png")
        pc59 = read_label(out / "pc59_val" / f"{image_id}.png")
        assert pc459.dtype == np.uint16 and pc59.dtype == np.uint8
        np.testing.assert_array_equal(pc459, expected_map(maps[image_id], map459, 65535))
        np.testing.assert_array_equal(pc59, expected_map(maps[image_id], map59, 255))
    register_pcontext.register_pcontext(tmp_path)
    assert len(DatasetCatalog.get("pcontext_459_val_sem_seg")) == 2


def test_prepare_pcontext_rejects_other_label_names(tmp_path, caplog):
    make_pcontext(tmp_path, labels_txt=False)
    (tmp_path / "VOCdevkit/VOC2010/labels.txt").write_text("1: accordion\n2: airplane\n")
    assert load_script("prepare_pcontext").main(["--root", str(tmp_path), "--workers", "1"]) == 1
    assert "'2: airplane' disagrees" in caplog.text


# --------------------------------------------------------------------------------------------- missing layouts


@pytest.mark.parametrize("name, expected", [
    ("prepare_coco_stuff", "coco"),
    ("prepare_voc", "VOCdevkit/VOC2012"),
    ("prepare_ade20k_full", "ADE20K_2021_17_01"),
    ("prepare_ade20k_150", "ADEChallengeData2016"),
    ("prepare_pcontext", "VOCdevkit/VOC2010"),
])
def test_missing_download_is_one_clear_error(tmp_path, caplog, name, expected):
    assert load_script(name).main(["--root", str(tmp_path), "--workers", "1"]) == 1
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(tmp_path / expected) in errors[0].getMessage()
    assert "expected the directory" in errors[0].getMessage()


def test_missing_sbd_names_the_path(tmp_path, caplog):
    make_voc(tmp_path)
    sbd = tmp_path / "elsewhere"
    assert load_script("prepare_voc").main(["--root", str(tmp_path), "--sbd-dir", str(sbd)]) == 1
    assert str(sbd / "cls") in caplog.text and "--no-sbd" in caplog.text


def test_script_exits_with_status_1_and_no_traceback(tmp_path):
    coco = tmp_path / "coco"
    coco.mkdir()
    result = subprocess.run([sys.executable, str(REPO / "datasets/prepare_coco_stuff.py"), "--root", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert str(coco / "stuffthingmaps" / "train2017") in result.stderr
    assert "Traceback" not in result.stderr
