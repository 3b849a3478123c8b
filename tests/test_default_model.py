"""The shipped toy ZegFormer (zegseg/model_zoo/toy_zegformer.pth): safe and complete, the default of inference
entry points only (an explicit MODEL.WEIGHTS wins, training never loads it), good on a toy scene; and the pieces
of tools/build_default_model.py that do not need a training run."""
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from zegseg import Predictor
from zegseg.checkpoint import ZegsegCheckpointer, read_weights_file
from zegseg.data.toy import load_world, render_indexed_scene
from zegseg.engine import ZegsegTrainer
from zegseg.engine.setup_config import load_config
from zegseg.model_zoo import MODEL_ZOO_DIR, MissingDefaultWeightsError, inference_weights

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "toy" / "zegformer.yaml")
SHIPPED = MODEL_ZOO_DIR / "toy_zegformer.pth"
CPU = ["MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def build_tool():
    spec = importlib.util.spec_from_file_location("build_default_model", ROOT / "tools" / "build_default_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shipped_state():
    return read_weights_file(str(SHIPPED))["model"]  # weights_only=True: nothing in it can run code


@pytest.fixture(scope="module")
def predictor():
    return Predictor(load_config(CONFIG, CPU))


def test_shipped_file_matches_its_report(shipped_state):
    report = json.loads(SHIPPED.with_suffix(".json").read_text())
    assert report["weights"] == SHIPPED.name and report["config"] == "configs/toy/zegformer.yaml"
    assert report["sha256"] == hashlib.sha256(SHIPPED.read_bytes()).hexdigest()
    floats = {v.dtype for v in shipped_state.values() if v.is_floating_point()}
    assert floats == {getattr(torch, report["dtype"])}
    for key in ("gzs3", "gzs3_float32"):
        assert set(report[key]) >= {"mIoU", "hIoU", "mIoU-seen", "mIoU-unseen"}
    assert SHIPPED.stat().st_size < 8e6  # weights only: no optimizer state


def test_predictor_defaults_to_the_shipped_weights(predictor, shipped_state):
    state = predictor.model.state_dict()
    assert set(shipped_state) <= set(state)
    for name, value in shipped_state.items():
        assert torch.equal(state[name], value.to(state[name].dtype)), name


def test_shipped_model_segments_a_toy_scene(predictor):
    world = load_world()
    predictor.set_vocabulary(list(world.classes))
    accuracies = []
    for index in range(4):
        scene = render_indexed_scene(world, 0, "val", index, 160)
        labels = predictor(scene.image, image_format="RGB").labels
        valid = scene.label != 255
        accuracies.append(float((labels[valid] == scene.label[valid]).mean()))
    assert np.mean(accuracies) > 0.8, accuracies  # 0.92 when shipped; an untrained or broken model: about 1/35


def test_explicit_weights_win_and_default_is_inference_only(tmp_path, shipped_state):
    other = {k: (v.float() + 1 if v.is_floating_point() else v) for k, v in shipped_state.items()}
    path = tmp_path / "mine.pth"
    torch.save({"model": other}, path)
    cfg = load_config(CONFIG, CPU + ["MODEL.WEIGHTS", str(path)])
    assert inference_weights(cfg) == str(path)
    state = Predictor(cfg).model.state_dict()
    name = next(k for k, v in other.items() if v.is_floating_point())
    assert torch.equal(state[name], other[name])

    # training (train_net.py's path: the trainer's checkpointer with MODEL.WEIGHTS) starts from scratch
    cfg = load_config(CONFIG, CPU)
    assert cfg.MODEL.WEIGHTS == "" and inference_weights(cfg) == str(SHIPPED)
    torch.manual_seed(0)
    model = ZegsegTrainer.build_model(cfg)
    ZegsegCheckpointer(model, str(tmp_path), for_training=True).resume_or_load(cfg.MODEL.WEIGHTS, resume=False)
    trained = model.state_dict()
    differ = [k for k, v in shipped_state.items() if v.is_floating_point() and not torch.equal(trained[k], v.float())]
    assert len(differ) > len(shipped_state) // 2


def test_missing_default_weights_say_how_to_rebuild(tmp_path):
    cfg = load_config(CONFIG, CPU + ["MODEL.DEFAULT_WEIGHTS", str(tmp_path / "gone.pth")])
    with pytest.raises(MissingDefaultWeightsError, match="build_default_model.py"):
        Predictor(cfg)
    assert inference_weights(load_config(CONFIG, CPU + ["MODEL.DEFAULT_WEIGHTS", ""])) == ""


def test_build_tool_converts_weights_only(build_tool, tmp_path):
    state = {"w": torch.randn(3, 4), "bn.num_batches_tracked": torch.tensor(7), "arr": np.ones(2, np.float64)}
    path = tmp_path / "out.pth"
    build_tool.save_weights(build_tool.weights_only(state, torch.float16), path)
    loaded = read_weights_file(str(path))
    assert set(loaded) == {"model"}
    model = loaded["model"]
    assert model["w"].dtype == torch.float16 and torch.allclose(model["w"].float(), state["w"], atol=1e-2)
    assert model["bn.num_batches_tracked"].dtype == torch.int64 and int(model["bn.num_batches_tracked"]) == 7
    assert model["arr"].dtype == torch.float16
