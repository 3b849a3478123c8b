"""Semantic-segmentation evaluation for generalized zero-shot (GZS3) and cross-dataset benchmarks."""
from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from tabulate import tabulate

from ..data.datasets.common import read_label

__all__ = ["GZSSemSegEvaluator", "confusion_matrix", "sem_seg_metrics"]

logger = logging.getLogger(__name__)


def confusion_matrix(gt: np.ndarray, pred: np.ndarray, num_classes: int, ignore_label: int) -> np.ndarray:
    """Pixel counts of (ground-truth class, predicted class) pairs; ignored ground-truth pixels are skipped.

    Args:
        gt: (H, W) integer ground truth, ids in [0, num_classes) or ``ignore_label``.
        pred: (H, W) integer prediction, ids in [0, num_classes).
    Returns:
        (K, K) int64 matrix, rows ground truth, columns prediction.
    Raises:
        ValueError: shapes differ, or a label is outside [0, K) without being ``ignore_label``.
    """
    if gt.shape != pred.shape:
        raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in size")
    gt = gt.astype(np.int64, copy=False).ravel()
    pred = pred.astype(np.int64, copy=False).ravel()
    keep = gt != ignore_label
    gt, pred = gt[keep], pred[keep]
    if gt.size and (gt.min() < 0 or gt.max() >= num_classes):
        bad = np.unique(gt[(gt < 0) | (gt >= num_classes)])[:5].tolist()
        raise ValueError(f"ground-truth ids {bad} outside [0, {num_classes}) and not the ignore label {ignore_label}")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted ids outside [0, {num_classes})")
    counts = np.bincount(gt * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if values.size else math.nan


def sem_seg_metrics(
    conf: np.ndarray, class_names: Sequence[str], unseen: Optional[Sequence[bool]] = None
) -> Dict[str, float]:
    """Dataset-level metrics from an accumulated (K, K) confusion matrix (rows GT, columns prediction).

    Per class c: IoU = TP / (TP + FP + FN), accuracy = TP / (TP + FN). A class is *valid* when it has at least
    one ground-truth pixel; means run over valid classes only (see :class:`GZSSemSegEvaluator`). Invalid
    classes get NaN.

    Returns (values in percent), keys: "mIoU", "fwIoU", "pAcc", "mACC", "IoU-<name>" per class and, when
    ``unseen`` marks at least one class, "mIoU-seen", "mIoU-unseen" and "hIoU" = 2 S U / (S + U).
    """
    conf = conf.astype(np.float64)
    tp = np.diag(conf)
    gt_pixels = conf.sum(axis=1)
    pred_pixels = conf.sum(axis=0)
    valid = gt_pixels > 0
    iou = np.full(len(tp), math.nan)
    acc = np.full(len(tp), math.nan)
    iou[valid] = tp[valid] / (gt_pixels + pred_pixels - tp)[valid]
    acc[valid] = tp[valid] / gt_pixels[valid]
    total = gt_pixels.sum()

    res: Dict[str, float] = OrderedDict()
    res["mIoU"] = 100 * _mean(iou[valid])
    res["fwIoU"] = 100 * float((gt_pixels[valid] / total * iou[valid]).sum()) if total else math.nan
    res["pAcc"] = 100 * float(tp.sum() / total) if total else math.nan
    res["mACC"] = 100 * _mean(acc[valid])
    if unseen is not None and any(unseen):
        unseen = np.asarray(unseen, dtype=bool)
        seen_miou = 100 * _mean(iou[valid & ~unseen])
        unseen_miou = 100 * _mean(iou[valid & unseen])
        res["mIoU-seen"] = seen_miou
        res["mIoU-unseen"] = unseen_miou
        if math.isnan(seen_miou) or math.isnan(unseen_miou):  # a group without any ground-truth pixel
            res["hIoU"] = math.nan
        else:
            total_miou = seen_miou + unseen_miou
            res["hIoU"] = 2 * seen_miou * unseen_miou / total_miou if total_miou > 0 else 0.0
    for name, value in zip(class_names, iou):
        res[f"IoU-{name}"] = 100 * float(value)
    return res


class GZSSemSegEvaluator(DatasetEvaluator):
    """Confusion-matrix evaluation of semantic segmentation, with seen/unseen metrics where the dataset has a
    zero-shot split (metadata ``unseen_classes``).

    mIoU definition: the mean IoU over the classes that have at least one ground-truth pixel in the evaluated
    set. A class that is absent from the ground truth is excluded from every mean even when it is predicted;
    its false positives still count, as false negatives of the classes they cover. This matches detectron2's
    SemSegEvaluator after commit f3c1bc19 (July 2022). The earlier rule averaged over every class with a
    non-empty union, so each absent class that the model happened to predict added an IoU of 0: with large
    vocabularies evaluated on a small set (PASCAL Context 459, ADE20K-847) many classes are absent and the two
    rules differ by several points (4-5 on PC-459); the present-in-ground-truth rule measures only what the
    benchmark can measure and does not depend on how many absent classes a model hallucinates.

    Inputs: ``process`` takes the model's inputs (with "file_name") and outputs (with "sem_seg": (K, H, W)
    scores at the original image size); the ground truth is the record's label file (8-bit or 16-bit PNG,
    ignore value from metadata ``ignore_label``). Results under "sem_seg": "mIoU", "fwIoU", "pAcc", "mACC",
    "IoU-<class>", and with a split "mIoU-seen", "mIoU-unseen", "hIoU", all in percent. With ``output_dir``,
    a per-class table (``sem_seg_per_class.txt``) and the results (``sem_seg_results.json``, NaN as null) are
    written there.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None):
        meta = MetadataCatalog.get(dataset_name)
        for key in ("stuff_classes", "ignore_label"):
            if not hasattr(meta, key):
                raise ValueError(f"dataset {dataset_name!r} has no {key!r} metadata; is it registered?")
        self._dataset_name = dataset_name
        self._class_names: List[str] = list(meta.stuff_classes)
        self._num_classes = len(self._class_names)
        self._ignore_label = int(meta.ignore_label)
        self._unseen: Optional[List[bool]] = None
        unseen = getattr(meta, "unseen_classes", None)
        if unseen:
            unknown = sorted(set(unseen) - set(self._class_names))
            if unknown:
                raise ValueError(f"unseen classes of {dataset_name!r} not in its stuff_classes: {unknown}")
            self._unseen = [name in set(unseen) for name in self._class_names]
        self._distributed = distributed
        self._output_dir = output_dir
        self._gt_files = {r["file_name"]: r["sem_seg_file_name"] for r in DatasetCatalog.get(dataset_name)}
        self._conf = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)

    def reset(self) -> None:
        self._conf = np.zeros((self._num_classes, self._num_classes), dtype=np.int64)

    def process(self, inputs: List[dict], outputs: List[dict]) -> None:
        for inp, out in zip(inputs, outputs):
            scores = out["sem_seg"]
            if scores.shape[0] != self._num_classes:
                raise ValueError(
                    f"the model scores {scores.shape[0]} classes but {self._dataset_name!r} has {self._num_classes}"
                )
            pred = scores.argmax(dim=0).to(device="cpu", dtype=torch.int64).numpy()
            gt_file = self._gt_files.get(inp["file_name"])
            if gt_file is None:
                raise KeyError(f"{inp['file_name']} is not an image of {self._dataset_name!r}")
            gt = read_label(gt_file)
            if gt.shape != pred.shape:
                raise ValueError(f"prediction {pred.shape} for {inp['file_name']} differs from its label {gt.shape}")
            self._conf += confusion_matrix(gt, pred, self._num_classes, self._ignore_label)

    def evaluate(self) -> Optional[Dict[str, Dict[str, float]]]:
        conf = self._conf
        if self._distributed:
            comm.synchronize()
            gathered = comm.gather(self._conf, dst=0)
            if not comm.is_main_process():
                return None
            conf = np.sum(gathered, axis=0)
        if conf.sum() == 0:
            logger.warning("%s: no labelled pixel was evaluated", self._dataset_name)
        res = sem_seg_metrics(conf, self._class_names, self._unseen)
        summary = {k: round(v, 2) for k, v in res.items() if not k.startswith("IoU-")}
        logger.info("Semantic segmentation on %s: %s", self._dataset_name, summary)
        if self._output_dir:
            self._write(conf, res)
        return OrderedDict(sem_seg=res)

    def _write(self, conf: np.ndarray, res: Dict[str, float]) -> None:
        os.makedirs(self._output_dir, exist_ok=True)
        gt_pixels = conf.sum(axis=1)
        acc = np.where(gt_pixels > 0, np.diag(conf) / np.maximum(gt_pixels, 1), np.nan) * 100
        split = (["unseen" if u else "seen" for u in self._unseen] if self._unseen else
                 ["-"] * self._num_classes)
        rows = [
            (name, s, res[f"IoU-{name}"], a, int(n))
            for name, s, a, n in zip(self._class_names, split, acc, gt_pixels)
        ]
        table = tabulate(rows, headers=["class", "split", "IoU", "Acc", "GT pixels"], floatfmt=".2f",
                         missingval="-")
        summary = tabulate([(k, v) for k, v in res.items() if not k.startswith("IoU-")], floatfmt=".2f")
        with open(os.path.join(self._output_dir, "sem_seg_per_class.txt"), "w") as f:
            f.write(f"{self._dataset_name}\n\n{summary}\n\n{table}\n")
        clean = {k: (None if math.isnan(v) else v) for k, v in res.items()}
        with open(os.path.join(self._output_dir, "sem_seg_results.json"), "w") as f:
            json.dump({"dataset": self._dataset_name, "sem_seg": clean}, f, indent=2)
