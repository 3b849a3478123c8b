"""The benchmark scripts run end to end on the toy configs and print the tables bench/README.md is built from.

Tiny sizes, one image, one thread; only the tables' structure and counts are checked, never a time.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
            "--variant", name, "MODEL.CLIP.FAST_MODE.ENABLED", "True", "MODEL.CLIP.FAST_MODE.CERTIFY", "False",
            "MODEL.CLIP.FAST_MODE.MIN_CONTRIBUTION", "0.4")],
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
