"""demo/app.py without a browser: one request end to end on the shipped model, the model cache (a vocabulary or
fast-mode change never rebuilds), the one-line messages for user mistakes, the command line; Predictor's fast-mode
switch. The page itself is tested in a real browser by test_app_browser.py."""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zegseg import Predictor
from zegseg.data.toy import load_world, render_indexed_scene
from zegseg.engine.setup_config import load_config

from .helpers import TINY_INFERENCE_OPTS

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("zegseg_app", ROOT / "demo" / "app.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(render_indexed_scene(load_world(), 0, "val", 2, 160).image).save(path)
    return str(path)


def request(app, cache, image, vocabulary, tmp_path, weights="", fast=False):
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    out.mkdir()
    return app.segment(cache, image, vocabulary, app.DEFAULT_CONFIG, weights, fast, 0.5, out)


def test_request_cache_and_outputs(app, scene_file, tmp_path):
    cache = app.ModelCache()
    overlay, legend, rows, files, status = request(app, cache, scene_file, "sky; grass; water; sand; road", tmp_path)
    assert overlay.shape == (480, 480, 3) and overlay.dtype == np.uint8  # 160 px shown 3x
    assert "loading the model" in status and "exact mode" in status
    assert sum(pct for _, pct, _ in rows) == pytest.approx(100, abs=0.05)
    assert sum(n for _, _, n in rows) == 160 * 160
    assert all(f"{name}  " in legend for name, _, _ in rows)
    labels, report, overlay_file = map(Path, files)
    assert Image.open(labels).size == (160, 160)
    assert json.loads(report.read_text())["vocabulary"] == ["sky", "grass", "water", "sand", "road"]
    assert Image.open(overlay_file).size[0] > 160  # with the legend panel

    _, legend, rows, _, status = request(app, cache, scene_file, "red circle, blue square", tmp_path, fast=True)
    assert "loading the model" not in status and "fast mode" in status
    assert {name for name, _, _ in rows} <= {"red circle", "blue square", "unknown"}
    assert cache.builds == 1  # vocabulary and fast-mode changes reuse the model


@pytest.mark.parametrize(
    "image, vocabulary, weights, message",
    [
        (None, "sky", "", "No image"),
        ("broken", "sky", "", "Cannot read the image broken.png: not an image file"),
        ("scene", " ; , ", "", "Vocabulary: the vocabulary is empty"),
        ("scene", "sky; Sky", "", "differ only in case"),
        ("scene", "sky", "missing.pth", "model weights not found: missing.pth"),
    ],
)
def test_user_mistakes_are_one_line(app, scene_file, tmp_path, image, vocabulary, weights, message):
    if image == "broken":
        image = tmp_path / "broken.png"
        image.write_bytes(b"not a picture")
    elif image == "scene":
        image = scene_file
    with pytest.raises(app.UserError, match=message) as e:
        request(app, app.ModelCache(), image and str(image), vocabulary, tmp_path, weights=weights)
    assert "\n" not in str(e.value)


def test_image_input_passes_unreadable_files_on(app, tmp_path):
    from gradio.data_classes import ImageData

    broken = tmp_path / "x.png"
    broken.write_bytes(b"not a picture")
    component = app.pass_unreadable_files_on(app.gr.Image(type="filepath"))
    assert component.preprocess(ImageData(path=str(broken), orig_name="x.png")) == str(broken)


def test_command_line_defaults(app):
    args = app.build_parser().parse_args([])
    assert (args.host, args.port, args.share, args.weights) == ("127.0.0.1", 7860, "false", "")
    assert Path(app.resolve_config(app.DEFAULT_CONFIG)).is_file()  # from any working folder
    assert app.config_choices(app.DEFAULT_CONFIG)[0] == app.DEFAULT_CONFIG


def test_predictor_fast_mode_switch():
    config = str(ROOT / "configs" / "toy" / "zegformer.yaml")
    predictor = Predictor(load_config(config, TINY_INFERENCE_OPTS), vocabulary="sky; grass")
    assert predictor.supports_fast_mode and not predictor.fast_mode
    assert predictor.set_fast_mode(True).fast_mode and predictor.model.query_selector is not None
    assert not predictor.set_fast_mode(False).fast_mode and predictor.model.query_selector is None
    plain = Predictor(
        load_config(config, TINY_INFERENCE_OPTS + ["MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH", "False"]), vocabulary="sky"
    )
    assert not plain.supports_fast_mode and not plain.set_fast_mode(False).fast_mode
    with pytest.raises(ValueError, match="no fast mode"):
        plain.set_fast_mode(True)


def test_request_folders_are_pruned(app, tmp_path):
    folders = [app.new_request_folder(tmp_path, keep=2) for _ in range(4)]
    assert sorted(tmp_path.iterdir()) == folders[-2:]
