"""demo/demo.py end to end on a tiny model: outputs, bad inputs, exit codes, overwrite rule, video."""
import contextlib
import importlib.util
import io
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from detectron2.data import MetadataCatalog
from PIL import Image

from zegseg.utils.image_io import ImageReadError, read_image

from .helpers import TINY_INFERENCE_OPTS

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "toy" / "zegformer.yaml")
TINY = TINY_INFERENCE_OPTS
VOCAB = "sky; grass; tv, monitor"


@pytest.fixture(scope="module")
def demo():
    spec = importlib.util.spec_from_file_location("zegseg_demo", ROOT / "demo" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


@pytest.fixture(scope="module")
def opts(tiny_clip_path, tmp_path_factory):
    cache = tmp_path_factory.mktemp("embed_cache")
    return TINY + ["MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.CLIP.EMBED_CACHE_DIR", str(cache)]


def run(demo, *args, opts=()):
    """main(argv) with stdout and stderr captured: (exit code, everything printed)."""
    argv = ["--config-file", CONFIG, *map(str, args)]
    if opts:
        argv += ["--opts", *map(str, opts)]
    out = io.StringIO()
    with contextlib.redirect_stderr(out), contextlib.redirect_stdout(out):
        code = demo.main(argv)
    return code, out.getvalue()


def noise(h, w, c=3, seed=0, dtype=np.uint8, high=256):
    shape = (h, w, c) if c else (h, w)
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def write_exif_rotated_jpeg(path, width=64, height=32):
    """A landscape JPEG whose EXIF says "rotate 90° clockwise to display" (orientation 6)."""
    image = Image.fromarray(noise(height, width))
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, exif=exif.tobytes())


@pytest.fixture(scope="module")
def mixed_inputs(tmp_path_factory):
    """A folder of good and bad images, and a non-image file outside it."""
    root = tmp_path_factory.mktemp("inputs")
    images = root / "images"
    images.mkdir()
    Image.fromarray(noise(48, 64)).save(images / "good.png")
    Image.fromarray(noise(40, 56, 4, seed=1)).save(images / "rgba.png")
    Image.fromarray(noise(40, 56, 0, seed=2)).save(images / "gray.png")
    Image.fromarray(noise(36, 44, 0, seed=3, dtype=np.uint16, high=60000)).save(images / "gray16.png")
    cv2.imwrite(str(images / "rgb16.png"), noise(30, 50, 3, seed=4, dtype=np.uint16, high=60000))
    write_exif_rotated_jpeg(images / "exif.jpg")
    ramp = np.linspace(0, 255, 1600, dtype=np.float32)[None, :, None]
    Image.fromarray(np.broadcast_to(ramp, (1200, 1600, 3)).astype(np.uint8)).save(images / "large.jpg")
    buffer = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buffer, format="JPEG")
    (images / "corrupt.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    (images / "text.png").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("an explicitly named file that is no image\n")
    return root


@pytest.fixture(scope="module")
def mixed_run(demo, opts, mixed_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed_out")
    code, log = run(
        demo, "--input", mixed_inputs / "images", mixed_inputs / "notes.txt", "--output", out,
        "--vocabulary", VOCAB, "--batch-size", "3", opts=opts,
    )
    return code, log, out


def labels_of(out, stem):
    return cv2.imread(str(out / f"{stem}_labels.png"), cv2.IMREAD_UNCHANGED)


def error_lines(log, name):
    return [line for line in log.splitlines() if line.startswith("ERROR") and name in line]


# ------------------------------------------------------------------------------------ the mixed folder, case by case
def test_good_image_outputs(mixed_run):
    code, log, out = mixed_run
    labels = labels_of(out, "good")
    assert labels.shape == (48, 64) and labels.dtype == np.uint8
    assert labels.max() < 3
    overlay = np.asarray(Image.open(out / "good_overlay.png"))
    assert overlay.dtype == np.uint8 and overlay.ndim == 3 and overlay.shape[2] == 3
    assert overlay.shape[0] >= 48 and overlay.shape[1] > 64  # legend panel on the right
    report = json.loads((out / "good.json").read_text())
    assert report["vocabulary"] == ["sky", "grass", "tv, monitor"]
    assert sum(report["fractions"].values()) + report["unknown_fraction"] == pytest.approx(1.0)
    counts = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert [report["fractions"][n] for n in report["vocabulary"]] == pytest.approx(counts)
    assert report["unknown_label"] == 255 and report["label_map"] == "good_labels.png"


def test_exit_code_and_summary_with_failed_inputs(mixed_run):
    code, log, out = mixed_run
    assert code == 1
    assert "7 done, 3 failed, 0 skipped" in log
    assert "Traceback" not in log


def test_corrupt_file_is_reported_and_skipped(mixed_run):
    code, log, out = mixed_run
    assert len(error_lines(log, "corrupt.jpg")) == 1
    assert not list(out.glob("corrupt*"))


def test_text_file_named_png_is_reported(mixed_run):
    code, log, out = mixed_run
    (line,) = error_lines(log, "text.png")
    assert "not an image" in line
    assert not list(out.glob("text*"))


def test_explicit_non_image_file_is_reported(mixed_run):
    code, log, out = mixed_run
    assert len(error_lines(log, "notes.txt")) == 1


def test_rgba_image(mixed_run):
    assert labels_of(mixed_run[2], "rgba").shape == (40, 56)


def test_grayscale_image(mixed_run):
    assert labels_of(mixed_run[2], "gray").shape == (40, 56)


def test_16bit_images(mixed_run):
    out = mixed_run[2]
    assert labels_of(out, "gray16").shape == (36, 44)
    assert labels_of(out, "rgb16").shape == (30, 50)


def test_exif_rotated_jpeg_gives_the_rotated_size(mixed_run):
    out = mixed_run[2]
    assert labels_of(out, "exif").shape == (64, 32)  # stored 64 wide x 32 high, displayed portrait
    assert json.loads((out / "exif.json").read_text())["height"] == 64


def test_very_large_image_keeps_its_size(mixed_run):
    labels = labels_of(mixed_run[2], "large")
    assert labels.shape == (1200, 1600) and labels.max() < 3


# ------------------------------------------------------------------------------------------------ image reading
def test_read_image_conversions(mixed_inputs, tmp_path):
    images = mixed_inputs / "images"
    rgba = np.asarray(Image.open(images / "rgba.png"))
    np.testing.assert_array_equal(read_image(images / "rgba.png"), rgba[..., :3])  # alpha dropped, not composited
    gray = read_image(images / "gray.png")
    assert gray.shape == (40, 56, 3) and (gray[..., 0] == gray[..., 2]).all()
    raw16 = np.asarray(Image.open(images / "gray16.png")).astype(np.float64)
    np.testing.assert_array_equal(read_image(images / "gray16.png")[..., 1], np.round(raw16 * 255 / 65535))
    assert read_image(images / "rgb16.png").dtype == np.uint8
    assert read_image(images / "exif.jpg").shape == (64, 32, 3)
    for name in ("corrupt.jpg", "text.png", "missing.png"):
        with pytest.raises(ImageReadError):
            read_image(images / name)


# ---------------------------------------------------------------------------------------------- other behaviours
def test_no_overwrite_without_flag(demo, opts, mixed_inputs, tmp_path):
    image = mixed_inputs / "images" / "good.png"
    assert run(demo, "--input", image, "--output", tmp_path, "--vocabulary", VOCAB, opts=opts)[0] == 0
    (tmp_path / "good.json").write_text('{"sentinel": 1}')  # a complete result: JSON with every file present
    code, log = run(demo, "--input", image, "--output", tmp_path, "--vocabulary", VOCAB, opts=opts)
    assert code == 0 and "0 done, 0 failed, 1 skipped" in log and "--overwrite" in log
    assert (tmp_path / "good.json").read_text() == '{"sentinel": 1}'
    code, log = run(demo, "--input", image, "--output", tmp_path, "--vocabulary", VOCAB, "--overwrite", opts=opts)
    assert code == 0 and "1 done" in log
    assert json.loads((tmp_path / "good.json").read_text())["vocabulary"] == ["sky", "grass", "tv, monitor"]


def test_confidence_threshold_marks_unknown(demo, opts, mixed_inputs, tmp_path):
    image = mixed_inputs / "images" / "good.png"
    code, _ = run(demo, "--input", image, "--output", tmp_path, "--confidence-threshold", "1e9", opts=opts)
    assert code == 0
    assert (labels_of(tmp_path, "good") == 255).all()
    report = json.loads((tmp_path / "good.json").read_text())
    assert report["unknown_fraction"] == 1.0 and not any(report["fractions"].values())


def test_default_vocabulary_is_the_test_dataset_and_untrained_warning(demo, opts, mixed_inputs, tmp_path):
    code, log = run(demo, "--input", mixed_inputs / "images" / "good.png", "--output", tmp_path, opts=opts)
    assert code == 0 and "untrained" in log
    report = json.loads((tmp_path / "good.json").read_text())
    assert report["vocabulary"] == list(MetadataCatalog.get("toy_val_all_sem_seg").stuff_classes)


def test_vocabulary_file_with_more_than_255_classes_gives_uint16_labels(demo, opts, mixed_inputs, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("# my classes\n\ntv,monitor\n" + "\n".join(f"class {i}" for i in range(299)) + "\n")
    out = tmp_path / "out"
    image = mixed_inputs / "images" / "good.png"
    code, _ = run(demo, "--input", image, "--output", out, "--vocabulary-file", names, opts=opts)
    assert code == 0
    report = json.loads((out / "good.json").read_text())
    assert len(report["vocabulary"]) == 300 and report["vocabulary"][0] == "tv, monitor"
    assert report["unknown_label"] == 65535
    labels = labels_of(out, "good")
    assert labels.dtype == np.uint16 and labels.shape == (48, 64) and labels.max() < 300


def test_parse_vocabulary(demo, tmp_path):
    assert demo.parse_vocabulary("cat, dog, sky") == ["cat", "dog", "sky"]
    assert demo.parse_vocabulary("tv,monitor ;sky;") == ["tv, monitor", "sky"]
    assert demo.parse_vocabulary(" , ") == []
    names = tmp_path / "names.txt"
    names.write_text("sky\n  # comment\n\ntv ,  monitor\n")
    assert demo.read_vocabulary_file(str(names)) == ["sky", "tv, monitor"]


@pytest.mark.parametrize(
    "vocab_args, message",
    [
        (["--vocabulary", " , "], "empty"),
        (["--vocabulary", "cat, dog, cat"], "repeats class names: 'cat'"),
        (["--vocabulary", "cat; dog", "--unseen", "bird"], "not in the vocabulary"),
        (["--vocabulary-file", "no_such_names.txt"], "no_such_names.txt"),
        (["--unseen", "cat"], "--unseen needs"),
    ],
)
def test_bad_vocabulary_exits_2_before_processing(demo, opts, mixed_inputs, tmp_path, vocab_args, message):
    out = tmp_path / "out"
    code, log = run(demo, "--input", mixed_inputs / "images", "--output", out, *vocab_args, opts=opts)
    assert code == 2
    (line,) = [line for line in log.splitlines() if line.strip()]
    assert line.startswith("ERROR") and message in line
    assert not out.exists()


def test_missing_weights_exit_2(demo, opts, mixed_inputs, tmp_path):
    weights = tmp_path / "model_final.pth"
    code, log = run(
        demo, "--input", mixed_inputs / "images", "--output", tmp_path / "out", opts=[*opts, "MODEL.WEIGHTS", weights]
    )
    assert code == 2 and str(weights) in log and "Traceback" not in log
    assert not (tmp_path / "out").exists()


def test_missing_config_exit_2(demo, mixed_inputs, tmp_path):
    out = io.StringIO()
    with contextlib.redirect_stderr(out):
        argv = ["--config-file", str(tmp_path / "nope.yaml"), "--input", str(mixed_inputs), "--output", str(tmp_path)]
        code = demo.main(argv)
    assert code == 2
    assert out.getvalue().strip() == f"ERROR --config-file: no such file: {tmp_path / 'nope.yaml'}"


def test_missing_clip_weights_exit_2(demo, opts, mixed_inputs, tmp_path):
    clip_path = tmp_path / "ViT-missing.pt"
    opts = [*opts, "MODEL.CLIP.NAME", clip_path]
    code, log = run(demo, "--input", mixed_inputs / "images", "--output", tmp_path / "out", opts=opts)
    assert code == 2
    (line,) = [line for line in log.splitlines() if line.strip()]
    assert "CLIP model" in line and str(clip_path) in line


def test_usage_errors_exit_2(demo, tmp_path):
    assert run(demo, "--output", tmp_path)[0] == 2  # no input
    assert run(demo, "--input", "x.png", "--output", tmp_path, "--confidence-threshold", "-1")[0] == 2
    assert run(demo, "--input", "x.png", "--output", tmp_path, "--opts", "NO.SUCH_KEY", "1")[0] == 2


def test_missing_input_fails_but_others_run(demo, opts, mixed_inputs, tmp_path):
    code, log = run(
        demo, "--input", tmp_path / "absent.png", tmp_path / "*.nothing", mixed_inputs / "images" / "gray.png",
        "--output", tmp_path / "out", "--vocabulary", VOCAB, opts=opts,
    )
    assert code == 1 and "1 done, 2 failed" in log
    assert len(error_lines(log, "absent.png")) == 1 and len(error_lines(log, "*.nothing")) == 1
    assert (tmp_path / "out" / "gray_labels.png").is_file()


def test_collect_inputs_unique_stems_and_output_folder_excluded(demo, tmp_path):
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.fromarray(noise(8, 8)).save(tmp_path / sub / "x.png")
    (tmp_path / "out").mkdir()
    Image.fromarray(noise(8, 8)).save(tmp_path / "out" / "x_overlay.png")
    (tmp_path / "a" / "readme.md").write_text("skipped when scanning a folder")
    found = demo.collect_inputs([str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png")], [], tmp_path / "out")
    assert [stem for _, stem in found.images] == ["x", "x_2"]
    found = demo.collect_inputs([str(tmp_path), str(tmp_path / "a" / "x.png")], [], tmp_path / "out")
    assert [stem for _, stem in found.images] == ["a/x", "b/x"] and found.missing == []
    found = demo.collect_inputs([str(tmp_path / "*" / "x.png")], [], tmp_path / "out")
    assert len(found.images) == 2


def noise_video(path, frames: int = 5):
    """A 64x48 mp4 of ``frames`` noise frames at 5 fps; returns ``path``."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (64, 48))
    for i in range(frames):
        writer.write(noise(48, 64, seed=i))
    writer.release()
    return path


# ----------------------------------------------------------------------------------------------------------- video
def test_video(demo, opts, tmp_path):
    video = noise_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    args = ("--video-input", video, "--output", out, "--vocabulary", VOCAB, "--batch-size", "2")
    code, log = run(demo, *args, opts=opts)
    assert code == 0 and "1 done" in log and "5 video frames" in log
    capture = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == 5
    assert frames[0].shape[0] == 48 and frames[0].shape[1] > 64
    report = json.loads((out / "clip.json").read_text())
    assert report["frames"] == 5 and report["vocabulary"] == ["sky", "grass", "tv, monitor"]
    assert sum(report["fractions"].values()) + report["unknown_fraction"] == pytest.approx(1.0)

    code, log = run(demo, "--video-input", video, "--output", out, "--vocabulary", VOCAB, opts=opts)
    assert code == 0 and "1 skipped" in log


def test_unreadable_video_fails(demo, opts, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    code, log = run(demo, "--video-input", bad, "--output", tmp_path / "out", "--vocabulary", VOCAB, opts=opts)
    assert code == 1 and len(error_lines(log, "bad.mp4")) == 1
    assert not (tmp_path / "out" / "bad_overlay.mp4").exists()
