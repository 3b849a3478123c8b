"""The benchmark scripts run end to end on the toy configs and print the tables bench/README.md is built from.

Tiny sizes, one image, one thread; only the tables' structure and counts are checked, never a time.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from detectron2.modeling import build_model

import zegseg  # noqa: F401
from zegseg.engine.setup_config import load_config

from .helpers import ONE_VIEW_PER_QUERY, TINY_INFERENCE_OPTS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from common import ClipProbe  # noqa: E402


def run_bench(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--device", "cpu", "--threads", "1", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def tables(stdout: str) -> List[List[Dict[str, str]]]:
    """Every Markdown table in ``stdout`` as a list of {column: cell} rows."""
    found, lines = [], [line for line in stdout.splitlines()]
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header = [c.strip() for c in lines[i].strip("|").split("|")]
            rows, i = [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, (c.strip() for c in lines[i].strip("|").split("|")))))
                i += 1
            found.append(rows)
        else:
            i += 1
    return found


def test_inference_variants_share_weights_and_inputs():
    out = run_bench(
        "bench_inference.py", "--config-file", "configs/toy/zegformer.yaml", "--size", "64", "--images", "2",
        "--warmup", "0", "--clip-floor", "4",
        "--variant", "no_branch", "MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH", "False",
        "--variant", "fast_off", "MODEL.CLIP.FAST_MODE.ENABLED", "True", "MODEL.CLIP.FAST_MODE.MIN_CONTRIBUTION", "0.0",
        *[arg for name in ("fast_a", "fast_b") for arg in (
            "--variant", name, "MODEL.CLIP.FAST_MODE.ENABLED", "True", "MODEL.CLIP.FAST_MODE.MIN_CONTRIBUTION", "0.4")],
        "--opts", "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.RESNETS.NORM", "BN",  # as it was set for
    )
    (rows,) = tables(out)
    by_name = {r["variant"]: r for r in rows}
    crops = {name: float(r["crops to CLIP"]) for name, r in by_name.items()}
    assert list(by_name) == ["default", "no_branch", "fast_off", "fast_a", "fast_b"]
    assert crops["no_branch"] == 0 and crops["default"] > 0
    # every variant's process builds the same seeded random weights and images: fast mode without cut-offs crops
    # what exact mode crops, and two identical fast variants (whose choice depends on the weights) agree
    assert crops["fast_off"] == crops["default"]
    assert crops["fast_a"] == crops["fast_b"] < crops["default"]
    assert all(float(r["s/image"]) > 0 and r["vs floor"].endswith("x") for r in rows)


def test_scaling_reports_every_mask_count_and_vocabulary():
    out = run_bench(
        "bench_scaling.py", "--config-file", "configs/toy/zegformer.yaml", "--size", "64", "--masks", "2", "5",
        "--vocabularies", "4", "12", "--images", "1",
    )
    masks, vocab = tables(out)
    assert [r["masks"] for r in masks] == ["2", "5"]
    assert [r["classes"] for r in vocab] == ["4", "12"]
    assert vocab[0]["vs first"] == "1.00x"


def test_scaling_rejects_a_vocabulary_larger_than_ade_full():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_scaling.py"), "--config-file", "configs/toy/zegformer.yaml",
         "--device", "cpu", "--size", "64", "--masks", "--vocabularies", "900"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode != 0 and "at most 847 classes" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("config", ["zegformer", "pixel_level"])
def test_training_bench_runs_an_optimizer_step(config):
    out = run_bench(
        "bench_training.py", "--config-file", f"configs/toy/{config}.yaml", "--size", "64", "--iters", "1",
        "--warmup", "0",
    )
    (rows,) = tables(out)
    assert rows[0]["config"] == f"configs/toy/{config}.yaml" and float(rows[0]["iters/s"]) > 0


def test_probe_counts_images_not_clip_calls(tiny_clip_path, monkeypatch):
    """A model that calls CLIP more than once per image (as certified fast mode did, once per round): the probe
    must still divide by the images that went in."""
    opts = TINY_INFERENCE_OPTS + ["MODEL.TRANSFORMER_DECODER.NUM_QUERIES", "8", "MODEL.CLIP.NAME", str(tiny_clip_path),
                                  "MODEL.CLIP.CROP_PROCEDURE", "zegformer", *ONE_VIEW_PER_QUERY]  # every query, once
    torch.manual_seed(0)
    model = build_model(load_config("configs/toy/zegformer.yaml", opts)).eval()
    one_call = model.region_clip_logits

    def two_calls(image, masks, image_size, source=None):  # the first three queries, then the other five
        (a, valid_a), (b, valid_b) = one_call(image, masks[:3], image_size), one_call(image, masks[3:], image_size)
        return torch.cat([a, b]), torch.cat([valid_a, valid_b])

    monkeypatch.setattr(model, "region_clip_logits", two_calls)
    probe = ClipProbe(model)
    g = torch.Generator().manual_seed(0)
    batch = [{"image": torch.randint(0, 255, (3, 64, 96), generator=g, dtype=torch.uint8)} for _ in range(3)]
    with torch.no_grad():
        model(batch[:2])
        model(batch[2:])
    per_image = probe.per_image()
    assert probe.images == 3 and probe.clip_calls == 6
    assert probe.crops == 3 * 8 and per_image["crops"] == 8.0  # counted per call, it would read 4.0
    assert per_image["clip_calls"] == 2.0
    assert per_image["clip_s"] == probe.clip_seconds / 3 and per_image["network_s"] > 0
    probe.reset()
    assert probe.images == probe.crops == probe.clip_calls == 0


def test_fast_mode_bench_counts_per_image_and_interleaves_modes():
    out = run_bench(
        "bench_fast_mode.py", "--config-file", "configs/toy/zegformer.yaml", "--images", "3", "--warmup", "1",
        "--variant", "cap5", "MODEL.CLIP.FAST_MODE.MIN_CONTRIBUTION", "0.0", "MODEL.CLIP.FAST_MODE.MAX_QUERIES", "5",
        "--opts", "MODEL.TRANSFORMER_DECODER.NUM_QUERIES", "8", "MODEL.CLIP.CROP_PROCEDURE", "zegformer",
        *ONE_VIEW_PER_QUERY,
    )
    (rows,) = tables(out)
    by_name = {r["mode"]: r for r in rows}
    assert list(by_name) == ["exact", "fast (config)", "cap5"]
    assert "2 timed images per mode after 1 untimed" in out
    # seeded random weights, identical for every mode; the official crop procedure crops every query, empty or
    # not: exact mode sends all 8 in one call per image
    assert float(by_name["exact"]["crops / image"]) == 8.0 and float(by_name["exact"]["CLIP calls / image"]) == 1.0
    assert float(by_name["cap5"]["crops / image"]) == 5.0
    assert float(by_name["cap5"]["CLIP calls / image"]) == 1.0
    assert by_name["exact"]["speed-up vs exact"] == "1.00x" and by_name["exact"]["Δ hIoU"] == "+0.00"


def test_fidelity_cost_bench_times_every_variant(capsys):
    """bench_fidelity_cost: one row per crop procedure and per (assembly order, vocabulary size)."""
    import bench_fidelity_cost

    assert bench_fidelity_cost.main(["--size", "40", "50", "--output-size", "30", "36", "--masks", "3",
                                     "--vocabularies", "5", "9", "--repeat", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("| zegformer | 3 |", "| simple_baseline | 3 |", "| roi_align | 3 |", "| official order | 5 |",
                "| RESIZE_MASKS_FIRST | 9 |"):
        assert row in out
    assert out.count("1.00x") >= 3  # a fastest variant in each section (crops, K=5, K=9)
