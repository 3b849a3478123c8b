"""Untrusted files must not run code: YAML configs (every entry point, ``_BASE_`` chains too) and pickled weights.

Each malicious file asks the loader to run ``touch MARKER``; the marker file must never appear.
"""
import contextlib
import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from zegseg.engine.setup_config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
TOY_CONFIG = ROOT / "configs" / "toy" / "zegformer.yaml"


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "MARKER"
    yield path
    assert not path.exists(), "a malicious file ran code"


@pytest.fixture(params=["direct", "base"])
def evil_config(request, tmp_path, marker):
    """A config whose own text (``direct``) or whose ``_BASE_`` file (``base``) holds a code-running YAML tag."""
    evil = tmp_path / "evil.yaml"
    evil.write_text(
        f"_BASE_: {TOY_CONFIG}\n"
        "MODEL:\n"
        f"  WEIGHTS: !!python/object/apply:os.system [\"touch {marker}\"]\n"
    )
    if request.param == "direct":
        return evil
    benign = tmp_path / "benign_looking.yaml"
    benign.write_text("_BASE_: evil.yaml\nSOLVER:\n  MAX_ITER: 10\n")
    return benign


def test_load_config_refuses_python_tags(evil_config, tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(str(evil_config))
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "evil.yaml") in message and "python/object/apply:os.system" in message


def test_predictor_from_config_file_refuses_python_tags(evil_config):
    from zegseg import Predictor

    with pytest.raises(ConfigError):
        Predictor.from_config_file(str(evil_config))


def test_demo_refuses_python_tags(evil_config, tmp_path):
    spec = importlib.util.spec_from_file_location("zegseg_demo_security", ROOT / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo
    try:
        spec.loader.exec_module(demo)
        image = tmp_path / "in.png"
        image.write_bytes(b"not used")
        out = io.StringIO()
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            code = demo.main(
                ["--config-file", str(evil_config), "--input", str(image), "--output", str(tmp_path / "o")]
            )
    finally:
        del sys.modules[spec.name]
    assert code == 2
    assert "refusing the YAML tag" in out.getvalue() and "Traceback" not in out.getvalue()


def test_train_net_refuses_python_tags(evil_config, tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(evil_config), "--eval-only"],
        cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "refusing the YAML tag" in proc.stderr and str(tmp_path / "evil.yaml") in proc.stderr


def test_safe_yaml_still_merges_base_chain(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {TOY_CONFIG}\nSOLVER:\n  MAX_ITER: 7\n")
    cfg = load_config(str(child))
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.META_ARCHITECTURE == "ZegFormer"
