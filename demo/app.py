#!/usr/bin/env python
"""Segment a picture with class names you type, in the browser (Gradio). Usage: demo/README.md.

    python demo/app.py                       # the shipped toy ZegFormer, on http://127.0.0.1:7860
    python demo/app.py --port 8080 --weights output/toy_zegformer/model_final.pth

The page takes an image (upload, paste or one of the toy examples), a vocabulary (free text: "sky; grass; red
circle", or a preset) and, under "Model", a config, a weights file and fast mode. It shows the overlay, a legend,
the area of each class and the time the request took, and offers the label map PNG, the JSON report and the
overlay with its legend for download (the files demo/demo.py writes). Mistakes (a file that is not an image, an
empty vocabulary, a missing weights file) are reported in the page and the app keeps serving.
"""
from __future__ import annotations

import argparse
import html
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home

import gradio as gr  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from zegseg.checkpoint import CheckpointError  # noqa: E402
from zegseg.data.toy import load_world, render_indexed_scene  # noqa: E402
from zegseg.demo_core import (  # noqa: E402
    LABELS_SUFFIX,
    OVERLAY_SUFFIX,
    VOCABULARY_PRESETS,
    area_rows,
    preset_vocabulary,
    vocabulary_text,
    write_image_outputs,
)
from zegseg.engine.setup_config import ConfigError, load_config  # noqa: E402
from zegseg.modeling.clip.loader import ClipWeightsNotFoundError  # noqa: E402
from zegseg.modeling.vocabulary import VocabularyError, check_vocabulary  # noqa: E402
from zegseg.predictor import Predictor, SegmentationResult  # noqa: E402
from zegseg.utils.image_io import ImageReadError, read_image  # noqa: E402
from zegseg.utils.visualize import class_palette, legend_entries, overlay_labels  # noqa: E402

logger = logging.getLogger("zegseg.app")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/toy/zegformer.yaml"
EXAMPLE_SCENES = (3, 11, 24)  # toy validation scenes shown as examples (seed 0, 160 px)
MAX_MODELS = 2  # models kept loaded, most recently used first
KEEP_REQUESTS = 16  # the output folders of this many recent requests are kept (older ones are deleted)
DISPLAY_MIN_SIZE = 480  # small images are shown enlarged (nearest neighbour) to at least this many pixels


class UserError(Exception):
    """A mistake the page reports in one line (bad image, vocabulary, config or weights)."""


# ------------------------------------------------------------------------------------------------------ models
class ModelCache:
    """Predictors by (config file, weights file), the ``size`` most recently used kept loaded. A vocabulary or
    fast-mode change reuses the loaded model (its text embeddings are cached per vocabulary)."""

    def __init__(self, size: int = MAX_MODELS):
        self.size = size
        self._models: OrderedDict[Tuple[str, str], Predictor] = OrderedDict()
        self.lock = threading.Lock()  # one request uses the models at a time
        self.builds = 0  # models built so far (for tests and the log)

    def get(self, config_file: str, weights: str, vocabulary: List[str]) -> Tuple[Predictor, bool]:
        """The predictor for (config, weights) with ``vocabulary`` set, and whether it was built just now."""
        key = (config_file, weights)
        predictor = self._models.get(key)
        if predictor is not None:
            self._models.move_to_end(key)
            return predictor.set_vocabulary(vocabulary), False
        opts = ["MODEL.WEIGHTS", weights] if weights else []
        try:
            cfg = load_config(config_file, opts)
            predictor = Predictor(cfg, vocabulary=vocabulary)
        except FileNotFoundError as e:  # config, weights or CLIP file (ClipWeightsNotFoundError too)
            raise UserError(str(e)) from None
        except (ConfigError, CheckpointError, ClipWeightsNotFoundError) as e:
            raise UserError(str(e)) from None
        except (ValueError, TypeError) as e:  # e.g. a config whose model is not an open-vocabulary segmentor
            raise UserError(f"cannot build the model of {config_file}: {e}") from None
        self._models[key] = predictor
        self.builds += 1
        while len(self._models) > self.size:
            self._models.popitem(last=False)
        return predictor, True


def pass_unreadable_files_on(component: gr.Image) -> gr.Image:
    """Make an image input hand the app the uploaded file's path even when Pillow cannot open it, so that zegseg's
    reader says what is wrong in the page (``gr.Image`` alone answers a bare "Error"). Set on the instance: Gradio
    writes a ``.pyi`` file next to the source of every ``Component`` subclass."""
    preprocess = component.preprocess

    def lenient(payload):
        try:
            return preprocess(payload)
        except Exception:  # read again, with a one-line reason, by read_image
            return str(payload.path) if payload is not None and payload.path else None

    component.preprocess = lenient
    return component


def resolve_config(path: str) -> str:
    """A config path as given, or relative to the repository when it is not found from the working folder."""
    return path if Path(path).is_file() or not (REPO / path).is_file() else str(REPO / path)


def parse_vocabulary_text(text: str) -> List[str]:
    """The vocabulary box's text as class names (";" or "," separated, see parse_vocabulary), validated."""
    try:
        names, _ = check_vocabulary(text or "")
    except VocabularyError as e:
        raise UserError(f"Vocabulary: {e}. Type class names separated by ';' or ',', or pick a preset.") from None
    return names


def legend_html(result: SegmentationResult, palette: np.ndarray) -> str:
    """The legend of the classes present (as drawn next to the downloadable overlay), as an HTML list."""
    fractions = list(result.fractions.values())
    entries = legend_entries(result.vocabulary, result.present_classes(), fractions, palette, result.unknown_fraction)
    items = "".join(
        f'<li><span class="swatch" style="background:rgb{tuple(color)}"></span>{html.escape(text)}</li>'
        for text, color in entries
    )
    return f'<ul class="zegseg-legend">{items}</ul>'


def display_image(image: np.ndarray) -> np.ndarray:
    """Small images enlarged by an integer factor (nearest neighbour, so that pixels stay sharp) for the page."""
    factor = max(1, -(-DISPLAY_MIN_SIZE // max(image.shape[:2])))
    return image if factor == 1 else np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def segment(
    cache: ModelCache,
    image_path: Optional[str],
    vocabulary: str,
    config_file: str,
    weights: str,
    fast: bool,
    alpha: float,
    out_dir: Path,
    progress=lambda fraction, desc: None,
) -> Tuple[np.ndarray, str, List[Tuple[str, float, int]], List[str], str]:
    """One request: returns (overlay for display, legend HTML, area rows, files to download, status line).

    Raises:
        UserError: a missing or unreadable image, a bad vocabulary, config or weights file.
    """
    start = time.perf_counter()
    if not image_path:
        raise UserError("No image: upload one (or pick an example) first.")
    names = parse_vocabulary_text(vocabulary)
    try:
        image = read_image(image_path)
    except ImageReadError as e:
        raise UserError(f"Cannot read the image {Path(image_path).name}: {e}.") from None
    config_file = resolve_config((config_file or "").strip() or DEFAULT_CONFIG)
    weights = (weights or "").strip()
    with cache.lock:
        progress(0.1, "loading the model")
        predictor, built = cache.get(config_file, weights, names)
        if fast and not predictor.supports_fast_mode:
            raise UserError("Fast mode: this model has no fast mode (it sends no region crops to CLIP).")
        predictor.set_fast_mode(fast)
        progress(0.4, "segmenting")
        result = predictor(image, image_format="RGB")
    progress(0.9, "writing the results")
    palette = class_palette(len(names))
    stem = Path(image_path).stem or "image"
    targets = {
        "overlay": out_dir / f"{stem}{OVERLAY_SUFFIX}",
        "labels": out_dir / f"{stem}{LABELS_SUFFIX}",
        "json": out_dir / f"{stem}.json",
    }
    write_image_outputs(
        Path(image_path).name, image, result, targets, alpha=alpha, confidence_threshold=0.0, palette=palette
    )
    elapsed = time.perf_counter() - start
    load = " (including loading the model)" if built else ""
    mode = "fast mode" if predictor.fast_mode else "exact mode"
    status = (
        f"Segmented {image.shape[1]} × {image.shape[0]} px into {len(result.present_classes())} of {len(names)} "
        f"classes in {elapsed:.2f} s{load}, {mode}."
    )
    overlay = display_image(overlay_labels(image, result.labels, palette, alpha))
    files = [str(targets["labels"]), str(targets["json"]), str(targets["overlay"])]
    return overlay, legend_html(result, palette), area_rows(result), files, status


# ---------------------------------------------------------------------------------------------------------- UI
CSS = """
.zegseg-legend { list-style: none; padding: 0; margin: 0; display: grid;
                 grid-template-columns: repeat(auto-fill, minmax(180px, 1fr)); }
.zegseg-legend li { margin: 2px 0; }
.zegseg-legend .swatch { display: inline-block; width: 14px; height: 14px; margin-right: 6px;
                         vertical-align: middle; border: 1px solid #888; }
#status.error p { color: #b00020; font-weight: 600; }
"""


def write_examples(folder: Path, indices: Sequence[int] = EXAMPLE_SCENES) -> List[str]:
    """Toy validation scenes as PNG files (rendered, so that nothing has to be downloaded)."""
    world, paths = load_world(), []
    for index in indices:
        path = folder / f"toy_val_{index:05d}.png"
        if not path.is_file():
            Image.fromarray(render_indexed_scene(world, 0, "val", index, 160).image).save(path)
        paths.append(str(path))
    return paths


def new_request_folder(work_dir: Path, keep: int = KEEP_REQUESTS) -> Path:
    """A fresh folder for one request's files; the oldest beyond ``keep`` are deleted, so that a long-running app
    does not fill the disk (Gradio serves its own copies of the files it showed)."""
    folder = Path(tempfile.mkdtemp(prefix=f"request_{time.time_ns()}_", dir=work_dir))
    for old in sorted(work_dir.glob("request_*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def config_choices(default: str) -> List[str]:
    """The repository's model configs (not the Base-* ones), the default first."""
    found = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "configs").rglob("*.yaml") if not p.name.startswith("Base-")
    )
    return [default] + [c for c in found if c != default]


def build_app(config_file: str, weights: str, work_dir: Path) -> gr.Blocks:
    """The page; ``work_dir`` holds the examples and each request's files."""
    cache = ModelCache()
    examples = write_examples(work_dir)
    toy_text = vocabulary_text(preset_vocabulary("toy world"))

    def run(image_path, vocabulary, config, weights_file, fast, alpha, progress=gr.Progress()):  # noqa: B008 (Gradio's idiom)
        out_dir = new_request_folder(work_dir)
        try:
            overlay, legend, rows, files, status = segment(
                cache, image_path, vocabulary, config, weights_file, fast, alpha, out_dir,
                progress=lambda fraction, desc: progress(fraction, desc=desc),
            )
            logger.info("%s", status)
            return overlay, legend, rows, files, gr.update(value=status, elem_classes=[])
        except UserError as e:
            logger.info("request refused: %s", e)
            message = str(e)
        except Exception as e:  # a bug, not a user mistake: one line in the page, the traceback in the console
            logger.exception("request failed")
            message = f"Unexpected error ({type(e).__name__}): {e}. The app keeps running; see its console."
        return None, "", [], None, gr.update(value=f"⚠ {message}", elem_classes=["error"])

    with gr.Blocks(title="zegseg: open-vocabulary segmentation") as app:
        gr.Markdown(
            "## zegseg: open-vocabulary segmentation\n"
            "Upload a picture (or pick a toy example), type the class names to look for, press **Segment**. "
            "The default model is the toy ZegFormer shipped with zegseg: it knows the toy world "
            "(textured stuff and coloured shapes), not real photos."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = pass_unreadable_files_on(
                    gr.Image(label="Image", type="filepath", sources=["upload", "clipboard"], elem_id="input-image",
                             height=320)
                )
                gr.Examples(examples=examples, inputs=image, label="Toy examples")
                preset = gr.Dropdown(
                    choices=list(VOCABULARY_PRESETS), value="toy world", label="Vocabulary preset", elem_id="preset"
                )
                vocabulary = gr.Textbox(
                    value=toy_text,
                    label="Vocabulary (class names separated by ';' or ','; 'tv, monitor; sky' = 2 classes)",
                    lines=3,
                    elem_id="vocabulary",
                )
                with gr.Accordion("Model", open=False):
                    config = gr.Dropdown(
                        choices=config_choices(config_file), value=config_file, label="Config", allow_custom_value=True
                    )
                    weights_box = gr.Textbox(
                        value=weights,
                        label="Weights file (empty: the config's default, the shipped toy ZegFormer)",
                        elem_id="weights",
                    )
                    fast = gr.Checkbox(value=False, label="Fast mode (fewer region crops to CLIP)", elem_id="fast")
                    alpha = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Overlay opacity")
                button = gr.Button("Segment", variant="primary", elem_id="run")
                status = gr.Markdown(elem_id="status")  # next to the button: the answer, or what is wrong
            with gr.Column(scale=1):
                overlay = gr.Image(label="Result", type="numpy", format="png", interactive=False, elem_id="result",
                                   height=320)
                legend = gr.HTML(elem_id="legend")
                areas = gr.Dataframe(
                    headers=["class", "area (%)", "pixels"], label="Area per class", interactive=False, elem_id="areas"
                )
                files = gr.File(label="Label map PNG, JSON report, overlay PNG", file_count="multiple",
                                interactive=False, elem_id="downloads")
        preset.input(lambda name: vocabulary_text(preset_vocabulary(name)), inputs=preset, outputs=vocabulary)
        button.click(
            run,
            inputs=[image, vocabulary, config, weights_box, fast, alpha],
            outputs=[overlay, legend, areas, files, status],
            concurrency_limit=1,
        )
    app.zegseg_cache = cache  # for tests: how many models were built
    return app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="app.py", description="zegseg's web app (Gradio).")
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"initial config (default {DEFAULT_CONFIG})")
    parser.add_argument("--weights", default="", help="initial weights file (default: the config's default)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument(
        "--share", choices=("true", "false"), default="false", help="a public gradio.live link (default false)"
    )
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    logging.getLogger("zegseg.model_zoo").setLevel(logging.INFO)
    work_dir = Path(tempfile.mkdtemp(prefix="zegseg_app_"))
    try:
        app = build_app(args.config_file, args.weights, work_dir)
        try:
            app.queue(default_concurrency_limit=1).launch(
                server_name=args.host,
                server_port=args.port,
                share=args.share == "true",
                prevent_thread_lock=True,
                quiet=True,
                allowed_paths=[str(work_dir)],
                css=CSS,
            )
        except OSError as e:  # the port is taken, or the host is not an address of this machine
            reason = "the port is taken (choose another with --port)" if "empty port" in str(e) else str(e)
            print(f"error: cannot start the app on {args.host}:{args.port}: {reason}", file=sys.stderr)
            return 2
        share = f" and {app.share_url}" if app.share_url else ""
        print(f"zegseg app running at {app.local_url}{share}", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # a kill stops it as Ctrl-C does, cleaning up
        try:
            app.block_thread()  # returns on Ctrl-C
        finally:
            app.close()
        return 0
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
