"""Commands start without third-party deprecation noise or a device warning for configs that ask for nothing."""
import os
import subprocess
import sys

import pytest
import torch

from zegseg.engine.setup_config import get_zegseg_cfg, resolve_device

NOISE = ("pkg_resources", "torch.jit", "FutureWarning", "UserWarning", "no GPU is available")


def run(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=env, timeout=300, cwd=cwd or os.getcwd()
    )


def test_demo_starts_quietly_with_a_toy_config(tmp_path):
    # loads the config (device resolution included) and stops at the missing input, before building a model
    proc = run("demo/demo.py", "--config-file", "configs/toy/zegformer.yaml", "--input", str(tmp_path / "none.png"),
               "--output", str(tmp_path / "out"))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ERROR --input {tmp_path / 'none.png'}: no such file or folder",
        "0 done, 1 failed, 0 skipped in 0.0 s (0.00 images/s)",
    ]


@pytest.mark.parametrize("command", [["train_net.py", "--help"], ["tools/train_toy_clip.py", "--help"]])
def test_no_known_third_party_warnings(command):
    proc = run(*command)
    assert proc.returncode == 0, proc.stderr
    assert not [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)], proc.stderr


def test_the_filters_are_narrow_and_do_not_outlive_the_import():
    code = (
        "import warnings, zegseg, torch\n"
        "with warnings.catch_warnings(record=True) as seen:\n"
        "    warnings.simplefilter('always')\n"
        "    torch.jit.script(torch.nn.Identity())\n"  # user code: its warning still shows
        "print([str(w.message)[:30] for w in seen])\n"
    )
    proc = run("-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "`torch.jit.script` is deprecat" in proc.stdout
    assert not [line for line in proc.stderr.splitlines() if any(n in line for n in NOISE)], proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the CPU fallback")
def test_auto_device_is_silent_and_cuda_without_gpu_warns_once(caplog):
    cfg = get_zegseg_cfg()
    cfg.MODEL.DEVICE = "auto"
    with caplog.at_level("WARNING", logger="zegseg"):
        resolve_device(cfg)
    assert cfg.MODEL.DEVICE == "cpu" and not caplog.records
    proc = run("-c", (
        "import logging; logging.basicConfig()\n"
        "from zegseg.engine.setup_config import load_config\n"
        "for _ in range(3):\n"
        "    assert load_config('configs/toy/zegformer.yaml', ['MODEL.DEVICE', 'cuda']).MODEL.DEVICE == 'cpu'\n"
        "assert load_config('configs/toy/zegformer.yaml').MODEL.DEVICE == 'cpu'\n"
    ))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("MODEL.DEVICE is 'cuda' but no GPU is available: running on CPU") == 1, proc.stderr


def test_toy_configs_ask_for_the_device_that_exists():
    from zegseg.engine.setup_config import load_config

    for name in ("zegformer", "two_stage", "two_stage_prompt_learning", "pixel_level"):
        device = load_config(f"configs/toy/{name}.yaml").MODEL.DEVICE
        assert device == ("cuda" if torch.cuda.is_available() else "cpu")
