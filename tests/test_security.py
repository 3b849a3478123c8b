"""Untrusted files must not run code: YAML configs (every entry point, ``_BASE_`` chains too) and pickled weights.

Each malicious file asks the loader to run ``touch MARKER``; the marker file must never appear.
"""
import collections
import contextlib
import importlib.util
import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from zegseg.checkpoint import (
    CheckpointError,
    UnsafeCheckpointError,
    UnsafePickleError,
    ZegsegCheckpointer,
    safe_pickle_loads,
)
from zegseg.engine.setup_config import ConfigError, load_config

from .helpers import TINY_INFERENCE_OPTS

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


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("zegseg_demo_security", ROOT / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run_demo(demo, config, tmp_path, *opts):
    """(exit code, everything printed) of the demo on one (never read) image."""
    image = tmp_path / "in.png"
    image.write_bytes(b"not used")
    argv = ["--config-file", str(config), "--input", str(image), "--output", str(tmp_path / "out")]
    if opts:
        argv += ["--opts", *map(str, opts)]
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        code = demo.main(argv)
    return code, out.getvalue()


def run_train_net(cwd, *args):
    return subprocess.run(
        [sys.executable, str(ROOT / "train_net.py"), *map(str, args)],
        cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300,
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(f in last for f in fragments), last


def test_demo_refuses_python_tags(demo, evil_config, tmp_path):
    code, printed = run_demo(demo, evil_config, tmp_path)
    assert code == 2
    assert "refusing the YAML tag" in printed and "Traceback" not in printed


def test_train_net_refuses_python_tags(evil_config, tmp_path):
    proc = run_train_net(tmp_path, "--config-file", evil_config, "--eval-only")
    assert_one_line_error(proc, "refusing the YAML tag", str(tmp_path / "evil.yaml"))


def test_safe_yaml_still_merges_base_chain(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text(f"_BASE_: {TOY_CONFIG}\nSOLVER:\n  MAX_ITER: 7\n")
    cfg = load_config(str(child))
    assert cfg.SOLVER.MAX_ITER == 7 and cfg.MODEL.META_ARCHITECTURE == "ZegFormer"


# ------------------------------------------------------------------------------------------------- pickles
class RunsCommand:
    """Unpickling this calls ``os.system(command)``."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture(params=["pkl", "pth"])
def evil_weights(request, tmp_path, marker):
    """A weights file that runs ``touch MARKER`` when unpickled: a detectron2-style .pkl or a torch.save'd .pth."""
    payload = {"model": {"backbone.weight": RunsCommand(f"touch {marker}")}, "__author__": "someone"}
    path = tmp_path / f"evil.{request.param}"
    if request.param == "pkl":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    return path


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_safe_pickle_reads_numpy_and_plain_containers(protocol):
    data = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.zeros(0, dtype=np.int64),
        "s": np.float32(2.5),
        "dtype": np.dtype("<f4"),
        "nested": collections.OrderedDict(a=[1, "x", (2.0, None)], b={1, 2}, c=b"raw"),
    }
    got = safe_pickle_loads(pickle.dumps(data, protocol=protocol))
    np.testing.assert_array_equal(got["w"], data["w"])
    assert got["w"].dtype == np.float32 and got["b"].shape == (0,) and got["s"] == np.float32(2.5)
    assert got["dtype"] == data["dtype"] and got["nested"] == data["nested"]


@pytest.mark.parametrize("target", [(os.system, ("touch {marker}",)), (eval, ("open('{marker}', 'w')",))])
def test_safe_pickle_refuses_callables(target, marker):
    fn, args = target

    class Evil:
        def __reduce__(self):
            return fn, tuple(a.format(marker=marker) for a in args)

    with pytest.raises(UnsafePickleError, match="could run code"):
        safe_pickle_loads(pickle.dumps({"model": {"w": Evil()}}))


def test_checkpointer_refuses_code_in_weights(evil_weights):
    with pytest.raises(UnsafeCheckpointError) as err:
        ZegsegCheckpointer(nn.Linear(2, 2)).load(str(evil_weights))
    assert str(evil_weights) in str(err.value) and "system" in str(err.value) and "\n" not in str(err.value)


def test_predictor_and_demo_refuse_code_in_weights(demo, evil_weights, tiny_clip_path, tmp_path):
    from zegseg import Predictor

    opts = TINY_INFERENCE_OPTS + ["MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.WEIGHTS", str(evil_weights)]
    with pytest.raises(CheckpointError, match="refusing weights"):
        Predictor(load_config(str(TOY_CONFIG), opts), vocabulary=["sky", "grass"])
    code, printed = run_demo(demo, TOY_CONFIG, tmp_path, *opts)
    assert code == 2 and "refusing weights" in printed and "Traceback" not in printed


def test_train_net_refuses_code_in_weights(evil_weights, tmp_path):
    proc = run_train_net(tmp_path, "--config-file", TOY_CONFIG, "--eval-only", "MODEL.WEIGHTS", evil_weights)
    assert_one_line_error(proc, "refusing weights", str(evil_weights))


def _ade_index(root, index):
    ade = root / "ADE20K_2021_17_01"
    ade.mkdir(parents=True)
    (ade / "index_ade20k.pkl").write_bytes(pickle.dumps(index))


def _prepare_ade20k_full():
    from .test_prepare_scripts import load_script

    return load_script("prepare_ade20k_full")


def test_prepare_ade20k_full_refuses_code_in_the_index(tmp_path, marker, caplog):
    _ade_index(tmp_path, {"folder": [RunsCommand(f"touch {marker}")], "filename": ["ADE_train_00000001.jpg"]})
    assert _prepare_ade20k_full().main(["--root", str(tmp_path), "--workers", "1"]) == 1
    assert "could run code" in caplog.text


@pytest.mark.parametrize(
    "folder, filename",
    [
        ("ADE20K_2021_17_01/images", "../../../escape.jpg"),
        ("../outside", "ADE_train_00000001.jpg"),
        ("/etc", "ADE_train_00000001.jpg"),
        ("ADE20K_2021_17_01/images", "sub/ADE_train_00000001.jpg"),
    ],
)
def test_prepare_ade20k_full_keeps_paths_inside_the_root(tmp_path, folder, filename, caplog):
    root = tmp_path / "root"
    _ade_index(root, {"folder": [folder], "filename": [filename]})
    before = sorted(tmp_path.rglob("*"))
    assert _prepare_ade20k_full().main(["--root", str(root), "--workers", "1"]) == 1
    assert "outside the dataset root" in caplog.text or "not a plain file name" in caplog.text
    assert sorted(tmp_path.rglob("*")) == before  # nothing written anywhere
