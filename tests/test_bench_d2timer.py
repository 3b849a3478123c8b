"""bench_single_pass_d2timer: the per-crop and single-pass modes timed by detectron2's inference timer.

Tiny models and images; the counts detectron2 reports and the parsed numbers' consistency are checked, never a time.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import inference_on_dataset

from .helpers import ONE_VIEW_PER_QUERY, TINY_INFERENCE_OPTS
from .test_bench import run_bench, tables

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import bench_single_pass_d2timer as d2timer  # noqa: E402


def test_parse_reads_what_inference_on_dataset_logs():
    records = d2timer._Records()
    logger = logging.getLogger(d2timer.D2_LOGGER)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(records)
    try:
        inference_on_dataset(lambda inputs: [{} for _ in inputs], [[{}]] * 4, None)  # 4 batches: 3 warm-up
    finally:
        logger.removeHandler(records)
        logger.setLevel(level)
    timing = d2timer.parse_d2_timing(records.messages)
    assert timing["batches"] == 4 and timing["timed"] == 1
    assert 0 <= timing["compute_s"] <= timing["total_s"]
    assert timing["lines"][0] == "Start inference on 4 batches"
    with pytest.raises(RuntimeError, match="found 2"):
        d2timer.parse_d2_timing(records.messages * 2)


def test_fake_coco_stuff_is_what_the_registration_reads(tmp_path):
    d2timer.write_fake_coco_stuff(tmp_path, images=3, size=24)
    d2timer.register_coco_stuff(tmp_path)
    try:
        records = DatasetCatalog.get(d2timer.DATASET)
        assert len(records) == 3 and all(Path(r["sem_seg_file_name"]).is_file() for r in records)
        assert len(MetadataCatalog.get(d2timer.DATASET).stuff_classes) == 171
    finally:
        d2timer.register_coco_stuff()


def test_d2timer_bench_reports_detectrons_counts(tiny_clip_path):
    out = run_bench(
        "bench_single_pass_d2timer.py", "--config-file", "configs/toy/zegformer.yaml", "--size", "64",
        "--images", "7", "--variant", "dense", "MODEL.CLIP.REGION_MODE", "dense", "--order", "dense", "crops", "dense",
        "--opts", *TINY_INFERENCE_OPTS, "MODEL.CLIP.NAME", str(tiny_clip_path), *ONE_VIEW_PER_QUERY,
    )
    runs, summary = tables(out)
    # 7 images: detectron2 leaves min(5, 6) = 5 untimed and times 2 per run
    assert [(r["run"], r["mode"], r["images"], r["timed by detectron2"]) for r in runs] == [
        ("1", "dense", "7", "2"), ("2", "crops", "7", "2"), ("3", "dense", "7", "2")]
    compute = [float(r["pure compute s/image"]) for r in runs]
    assert all(0 < c <= float(r["total s/image"]) for c, r in zip(compute, runs))
    by_mode = {r["mode"]: r for r in summary}
    assert list(by_mode) == ["crops", "dense"]
    assert [by_mode[m]["runs"] for m in by_mode] == ["1", "2"] and by_mode["dense"]["images timed"] == "4"
    assert by_mode["crops"]["speed-up vs crops"] == "1.00x"
    assert out.count("Total inference pure compute time:") == 3 and "Start inference on 7 batches" in out
