"""GZSSemSegEvaluator against an independent per-class computation on random labels."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from zegseg.config import add_zegseg_config
from zegseg.data.datasets.common import register_sem_seg_dataset, write_label
from zegseg.evaluation import GZSSemSegEvaluator, build_evaluator
from zegseg.evaluation import gzs_evaluator as gzs_module

NUM_IMAGES, H, W = 3, 9, 11


def make_dataset(root: Path, name: str, num_classes: int, unseen, seed: int = 0):
    """Random ground truth (with ignore pixels; the last class never occurs) and random score maps."""
    rng = np.random.default_rng(seed)
    ignore = 255 if num_classes <= 254 else 65535
    dtype = np.uint8 if ignore == 255 else np.uint16
    gts, scores = [], []
    (root / "images").mkdir(parents=True)
    for i in range(NUM_IMAGES):
        gt = rng.integers(0, num_classes - 1, (H, W)).astype(dtype)
        gt[rng.random((H, W)) < 0.2] = ignore
        write_label(root / "labels" / f"{i}.png", gt)
        (root / "images" / f"{i}.jpg").touch()  # never read: the evaluator needs only the file name
        # predictions right 60% of the time, otherwise a random class (the absent last class included)
        pred = np.where(rng.random((H, W)) < 0.6, np.where(gt == ignore, 0, gt), rng.integers(0, num_classes, (H, W)))
        score = torch.rand(num_classes, H, W, generator=torch.Generator().manual_seed(i))
        score.scatter_(0, torch.as_tensor(pred, dtype=torch.int64)[None], 2.0)
        gts.append(gt.astype(np.int64))
        scores.append(score)
    names = [f"class {k}" for k in range(num_classes)]
    register_sem_seg_dataset(name, image_dir=root / "images", gt_dir=root / "labels", class_names=names,
                             unseen_classes=None if unseen is None else [names[k] for k in unseen], prepare_hint="-")
    inputs = [{"file_name": r["file_name"]} for r in DatasetCatalog.get(name)]
    return inputs, [{"sem_seg": s} for s in scores], gts, ignore


def reference_metrics(gts, preds, num_classes, ignore, unseen):
    """Per-class loop over classes, straight from the definitions."""
    gt = np.concatenate([g.ravel() for g in gts])
    pred = np.concatenate([p.ravel() for p in preds])
    valid_px = gt != ignore
    gt, pred = gt[valid_px], pred[valid_px]
    ious, accs, freqs = {}, {}, {}
    for c in range(num_classes):
        tp = np.sum((gt == c) & (pred == c))
        fp = np.sum((gt != c) & (pred == c))
        fn = np.sum((gt == c) & (pred != c))
        if tp + fn == 0:
            continue  # absent from the ground truth: excluded, whatever was predicted
        ious[c] = tp / (tp + fp + fn)
        accs[c] = tp / (tp + fn)
        freqs[c] = (tp + fn) / gt.size
    res = {
        "mIoU": 100 * np.mean(list(ious.values())),
        "mACC": 100 * np.mean(list(accs.values())),
        "pAcc": 100 * np.mean(gt == pred),
        "fwIoU": 100 * sum(freqs[c] * ious[c] for c in ious),
    }
    if unseen:
        s = 100 * np.mean([v for c, v in ious.items() if c not in unseen])
        u = 100 * np.mean([v for c, v in ious.items() if c in unseen])
        res.update({"mIoU-seen": s, "mIoU-unseen": u, "hIoU": 2 * s * u / (s + u)})
    return res, ious


@pytest.fixture
def registered(tmp_path):
    names = []

    def make(name, num_classes, unseen, seed=0):
        names.append(name)
        return make_dataset(tmp_path / name, name, num_classes, unseen, seed)

    yield make
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


@pytest.mark.parametrize("num_classes, unseen", [(7, [1, 4, 6]), (300, [0, 5, 299]), (5, None)])
def test_matches_reference(registered, tmp_path, num_classes, unseen):
    name = f"_test_eval_{num_classes}"
    inputs, outputs, gts, ignore = registered(name, num_classes, unseen)
    evaluator = GZSSemSegEvaluator(name, distributed=False, output_dir=str(tmp_path / "out"))
    evaluator.reset()
    for inp, out in zip(inputs, outputs):
        evaluator.process([inp], [out])
    res = evaluator.evaluate()["sem_seg"]

    preds = [o["sem_seg"].argmax(0).numpy() for o in outputs]
    assert any((p == num_classes - 1).any() for p in preds)  # the absent class is predicted somewhere
    expected, ious = reference_metrics(gts, preds, num_classes, ignore, unseen)
    for key, value in expected.items():
        assert res[key] == pytest.approx(value, abs=1e-9), key
    split_keys = {"mIoU-seen", "mIoU-unseen", "hIoU"}
    assert set(res) == {"mIoU", "fwIoU", "pAcc", "mACC"} | (split_keys if unseen else set()) | {
        f"IoU-class {k}" for k in range(num_classes)}
    for k in range(num_classes):
        if k in ious:
            assert res[f"IoU-class {k}"] == pytest.approx(100 * ious[k])
        else:
            assert math.isnan(res[f"IoU-class {k}"])
    assert num_classes - 1 not in ious

    results = json.loads((tmp_path / "out/sem_seg_results.json").read_text())
    assert results["sem_seg"][f"IoU-class {num_classes - 1}"] is None
    assert results["sem_seg"]["mIoU"] == pytest.approx(res["mIoU"])
    table = (tmp_path / "out/sem_seg_per_class.txt").read_text()
    assert "class 0" in table and ("unseen" in table) == bool(unseen)


def test_gathers_across_processes(registered, monkeypatch):
    name = "_test_eval_gather"
    inputs, outputs, _, _ = registered(name, 7, [2, 3])
    single = GZSSemSegEvaluator(name, distributed=False)
    single.process(inputs, outputs)
    parts = [GZSSemSegEvaluator(name, distributed=True) for _ in range(2)]
    parts[0].process(inputs[:1], outputs[:1])
    parts[1].process(inputs[1:], outputs[1:])
    monkeypatch.setattr(gzs_module.comm, "synchronize", lambda: None)
    monkeypatch.setattr(gzs_module.comm, "gather", lambda data, dst=0: [p._conf for p in parts])
    monkeypatch.setattr(gzs_module.comm, "is_main_process", lambda: True)
    merged = parts[0].evaluate()["sem_seg"]
    expected = single.evaluate()["sem_seg"]
    assert merged.keys() == expected.keys()
    assert all(merged[k] == expected[k] or (math.isnan(merged[k]) and math.isnan(expected[k])) for k in merged)
    monkeypatch.setattr(gzs_module.comm, "is_main_process", lambda: False)
    assert parts[0].evaluate() is None


def test_hiou_and_rejections(registered):
    name = "_test_eval_errors"
    inputs, outputs, _, _ = registered(name, 4, [3])
    evaluator = GZSSemSegEvaluator(name, distributed=False)
    evaluator.process(inputs, outputs)
    res = evaluator.evaluate()["sem_seg"]
    assert math.isnan(res["mIoU-unseen"]) and math.isnan(res["hIoU"])  # the only unseen class never occurs
    with pytest.raises(ValueError, match="scores 3 classes but '_test_eval_errors' has 4"):
        evaluator.process(inputs[:1], [{"sem_seg": torch.zeros(3, H, W)}])
    with pytest.raises(ValueError, match="differs from its label"):
        evaluator.process(inputs[:1], [{"sem_seg": torch.zeros(4, H, W + 1)}])
    with pytest.raises(KeyError, match="is not an image of"):
        evaluator.process([{"file_name": "elsewhere.jpg"}], outputs[:1])
    with pytest.raises(ValueError, match="ground-truth ids \\[7\\] outside \\[0, 4\\)"):
        gzs_module.confusion_matrix(np.array([[7, 1]]), np.array([[0, 1]]), 4, 255)


def test_build_evaluator(registered, tmp_path):
    name = "_test_eval_build"
    registered(name, 3, None)
    cfg = get_cfg()
    add_zegseg_config(cfg)
    cfg.OUTPUT_DIR = str(tmp_path)
    evaluator = build_evaluator(cfg, name)
    assert isinstance(evaluator, GZSSemSegEvaluator)
    assert evaluator._output_dir == str(tmp_path / "inference" / name)
    MetadataCatalog.get("_test_eval_coco").set(evaluator_type="coco")
    try:
        with pytest.raises(ValueError, match="unknown evaluator_type 'coco' of '_test_eval_coco'; known: gzs_sem_seg"):
            build_evaluator(cfg, "_test_eval_coco")
    finally:
        MetadataCatalog.remove("_test_eval_coco")
    with pytest.raises(ValueError, match="no 'evaluator_type'"):
        build_evaluator(cfg, "_test_eval_unregistered")
