"""Wrong weights never pass silently: missing, other-architecture, CLIP and mis-shaped weights are one-line errors
for inference, evaluation and resuming; training may start from part of the model (an ImageNet backbone)."""
import argparse
import contextlib
import importlib.util
import io
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from detectron2.modeling import build_model

import zegseg
from zegseg.checkpoint import (
    IncompatibleCheckpointError,
    MissingWeightsError,
    ZegsegCheckpointer,
    read_weights_file,
)
from zegseg.engine import ZegsegTrainer, preflight
from zegseg.engine.setup_config import load_config

from .helpers import TINY_INFERENCE_OPTS
from .test_training import mini_cfg, mini_toy_root  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "toy"


def tiny_cfg(clip_path, config="zegformer", *opts):
    opts = TINY_INFERENCE_OPTS + ["MODEL.CLIP.NAME", str(clip_path), *opts]
    return load_config(str(CONFIGS / f"{config}.yaml"), opts)


def save_weights(cfg, path, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    ZegsegCheckpointer(model, str(path.parent)).save(path.stem)
    return model


@pytest.fixture(scope="module")
def weights(tiny_clip_path, tmp_path_factory):
    """Checkpoints of three tiny toy models: ZegFormer, ZegFormer with fewer queries, the pixel-level model."""
    folder = tmp_path_factory.mktemp("weights")
    save_weights(tiny_cfg(tiny_clip_path), folder / "zegformer.pth")
    save_weights(tiny_cfg(tiny_clip_path, "zegformer", "MODEL.TRANSFORMER_DECODER.NUM_QUERIES", "3"),
                 folder / "zegformer_q3.pth")
    save_weights(tiny_cfg(tiny_clip_path, "pixel_level"), folder / "pixel_level.pth")
    return folder


def zegformer(clip_path):
    torch.manual_seed(1)
    return build_model(tiny_cfg(clip_path)).eval()


def test_own_checkpoint_loads_completely_without_warnings(tiny_clip_path, weights, caplog):
    model = zegformer(tiny_clip_path)
    with caplog.at_level(logging.WARNING):
        ZegsegCheckpointer(model).load(str(weights / "zegformer.pth"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    saved = read_weights_file(str(weights / "zegformer.pth"))["model"]
    assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
    assert not any(k.startswith("clip_model.") for k in saved)  # the frozen CLIP stays out, yet nothing is "missing"


@pytest.mark.parametrize(
    "file, message",
    [
        ("pixel_level.pth", "parameters missing"),
        ("zegformer_q3.pth", "has shape (3, 32) in the file but (4, 32) in the model"),
    ],
)
def test_mismatched_weights_are_an_error_for_inference(tiny_clip_path, weights, file, message):
    with pytest.raises(IncompatibleCheckpointError) as err:
        ZegsegCheckpointer(zegformer(tiny_clip_path)).load(str(weights / file))
    text = str(err.value)
    assert message in text and str(weights / file) in text and "MODEL.WEIGHTS_PARTIAL_OK" in text
    assert "\n" not in text


def test_partial_ok_loads_mismatched_weights_with_a_warning(tiny_clip_path, weights, caplog):
    model = zegformer(tiny_clip_path)
    with caplog.at_level(logging.WARNING):
        ZegsegCheckpointer(model, partial_ok=True).load(str(weights / "zegformer_q3.pth"))
    assert "do not fit this model" in caplog.text
    saved = read_weights_file(str(weights / "zegformer_q3.pth"))["model"]
    assert torch.equal(model.state_dict()["backbone.stem.conv1.weight"], saved["backbone.stem.conv1.weight"])


def test_clip_file_as_model_weights_is_refused_even_with_partial_ok(tiny_clip_path):
    for partial_ok in (False, True):
        with pytest.raises(IncompatibleCheckpointError, match="none of its .* parameters"):
            ZegsegCheckpointer(zegformer(tiny_clip_path), partial_ok=partial_ok).load(str(tiny_clip_path))


def test_empty_weights_for_evaluation(tiny_clip_path, caplog):
    with pytest.raises(MissingWeightsError, match="MODEL.WEIGHTS is empty"):
        ZegsegCheckpointer(zegformer(tiny_clip_path)).resume_or_load("", resume=False)
    with caplog.at_level(logging.WARNING):
        ZegsegCheckpointer(zegformer(tiny_clip_path), partial_ok=True).resume_or_load("", resume=False)
    assert "untrained" in caplog.text


def test_eval_only_without_weights_stops_in_preflight():
    args = argparse.Namespace(config_file=str(CONFIGS / "zegformer.yaml"), opts=[], resume=False, eval_only=True)
    with pytest.raises(SystemExit) as err:
        preflight(args)
    assert "--eval-only needs trained weights" in str(err.value) and "\n" not in str(err.value)


def test_predictor_and_demo_refuse_weights_of_another_model(tiny_clip_path, weights, tmp_path):
    cfg = tiny_cfg(tiny_clip_path, "zegformer", "MODEL.WEIGHTS", str(weights / "pixel_level.pth"))
    with pytest.raises(IncompatibleCheckpointError):
        zegseg.Predictor(cfg, vocabulary=["sky", "grass"])
    cfg.defrost()
    cfg.MODEL.WEIGHTS_PARTIAL_OK = True
    assert zegseg.Predictor(cfg, vocabulary=["sky", "grass"]).vocabulary == ["sky", "grass"]

    spec = importlib.util.spec_from_file_location("zegseg_demo_weights", ROOT / "demo" / "demo.py")
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo
    try:
        spec.loader.exec_module(demo)
        (tmp_path / "in.png").write_bytes(b"never read")
        argv = ["--config-file", str(CONFIGS / "zegformer.yaml"), "--input", str(tmp_path / "in.png"),
                "--output", str(tmp_path / "out"), "--vocabulary", "sky; grass", "--opts", *TINY_INFERENCE_OPTS,
                "MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.WEIGHTS", str(weights / "pixel_level.pth")]
        out = io.StringIO()
        with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
            code = demo.main(argv)
    finally:
        del sys.modules[spec.name]
    assert code == 2
    assert "do not fit this model" in out.getvalue() and "Traceback" not in out.getvalue()


def test_train_net_eval_only_refuses_weights_of_another_model(tiny_clip_path, weights, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(CONFIGS / "zegformer.yaml"), "--eval-only",
         *TINY_INFERENCE_OPTS, "MODEL.CLIP.NAME", str(tiny_clip_path),
         "MODEL.WEIGHTS", str(weights / "pixel_level.pth"), "OUTPUT_DIR", str(tmp_path / "out")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: weights") and "do not fit this model" in last


def backbone_pkl(model, path):
    """A torchvision-converted ImageNet backbone as detectron2 expects it: numpy arrays under backbone-relative
    names, an unused classifier, ``matching_heuristics``."""
    state = {k[len("backbone."):]: v.numpy() for k, v in model.state_dict().items() if k.startswith("backbone.")}
    state["fc.weight"] = torch.zeros(10, 2).numpy()
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "torchvision", "matching_heuristics": True}, f)


def test_training_starts_from_a_backbone_only_pkl(mini_toy_root, tiny_clip_path, tmp_path, caplog):  # noqa: F811
    source = build_model(mini_cfg(mini_toy_root, tiny_clip_path, tmp_path / "unused"))
    torch.nn.init.normal_(source.backbone.stem.conv1.weight)
    backbone_pkl(source, tmp_path / "R-toy.pkl")

    cfg = mini_cfg(mini_toy_root, tiny_clip_path, tmp_path / "out", "MODEL.WEIGHTS", str(tmp_path / "R-toy.pkl"))
    trainer = ZegsegTrainer(cfg)
    with caplog.at_level(logging.INFO, logger="zegseg.checkpoint"):
        trainer.resume_or_load(resume=False)
    assert "start from scratch" in caplog.text
    assert torch.equal(trainer.model.backbone.stem.conv1.weight, source.backbone.stem.conv1.weight)

    # the same file cannot stand in for a whole model at inference
    model = build_model(cfg)
    with pytest.raises(IncompatibleCheckpointError, match="parameters missing"):
        ZegsegCheckpointer(model).load(str(tmp_path / "R-toy.pkl"))


def test_training_initialisation_refuses_weights_of_another_model(mini_toy_root, tiny_clip_path, weights, tmp_path):  # noqa: F811
    # the from-scratch ResNet: detectron2's FrozenBatchNorm2d (ToyCLIP's tower) fills running statistics that a file
    # lacks, so the rule would count them as given and name the missing rest instead
    cfg = mini_cfg(mini_toy_root, tiny_clip_path, tmp_path / "out", "MODEL.WEIGHTS", str(tiny_clip_path),
                   "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.RESNETS.NORM", "BN")
    with pytest.raises(IncompatibleCheckpointError, match="none of its"):
        ZegsegTrainer(cfg).resume_or_load(resume=False)
