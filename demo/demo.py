#!/usr/bin/env python
"""Segment your own images or videos with your own class names. Usage and output formats: demo/README.md.

    python demo/demo.py --config-file configs/toy/zegformer.yaml --input photos/ --output out/ \
        --vocabulary "sky; grass; tv, monitor" --opts MODEL.WEIGHTS output/toy_zegformer/model_final.pth

Exit codes: 0 every input done (or skipped), 1 some input failed, 2 a bad option, config, vocabulary or weights
file (nothing processed), 130 interrupted.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
import tqdm
from detectron2.config import CfgNode

from zegseg.checkpoint import CheckpointError
from zegseg.demo_core import (
    LABELS_SUFFIX,
    OVERLAY_SUFFIX,
    VIDEO_SUFFIX,
    VocabularyFileError,
    collect_inputs,
    read_vocabulary_file,
    remove_files,
    render_result,
    result_is_complete,
    write_image_outputs,
    write_json,
)
from zegseg.engine.setup_config import ConfigError, load_config
from zegseg.modeling.clip.loader import ClipWeightsNotFoundError
from zegseg.modeling.vocabulary import check_vocabulary, parse_vocabulary
from zegseg.predictor import Predictor, SegmentationResult
from zegseg.utils.atomic_io import temporary_path
from zegseg.utils.image_io import ImageReadError, read_image
from zegseg.utils.visualize import class_palette, legend_font_size, legend_width

logger = logging.getLogger("zegseg.demo")

class UsageError(Exception):
    """A bad command line, config, vocabulary or weights file: reported in one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="demo.py",
        description="Open-vocabulary semantic segmentation of your images with class names you choose.",
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="zegseg config (YAML)")
    parser.add_argument(
        "--input", nargs="+", default=[], metavar="PATH", help="image files, folders (searched recursively) or globs"
    )
    parser.add_argument("--video-input", nargs="+", default=[], metavar="FILE", help="video files")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the results")
    vocab = parser.add_mutually_exclusive_group()
    vocab.add_argument(
        "--vocabulary",
        metavar="NAMES",
        help='class names separated by ";" if the text has one, else by ","; within a ";"-separated class, '
        '"," separates synonyms: "cat, dog, sky" = 3 classes, "tv, monitor; sky" = 2 classes. '
        "Default: the classes of the config's test dataset (or TEST.VOCABULARY)",
    )
    vocab.add_argument(
        "--vocabulary-file",
        metavar="FILE",
        help='one class per line; "a, b" on a line = one class with synonyms; blank lines and "#" lines skipped',
    )
    parser.add_argument(
        "--unseen",
        metavar="NAMES",
        help="the classes of the vocabulary the model did not see in training (same syntax as --vocabulary); "
        "default with a custom vocabulary: every class counts as unseen",
    )
    parser.add_argument(
        "--confidence-threshold",
        type=_non_negative_float,
        default=0.0,
        metavar="T",
        help="pixels whose winning class scores below T are labelled unknown (default 0: none)",
    )
    parser.add_argument("--alpha", type=_unit_float, default=0.5, help="opacity of the class colours (default 0.5)")
    parser.add_argument("--batch-size", type=_positive_int, default=4, help="images or frames per forward pass")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: skip them)")
    parser.add_argument("--verbose", action="store_true", help="log progress details and tracebacks")
    parser.add_argument(
        "--opts", nargs=argparse.REMAINDER, default=[], metavar="KEY VALUE", help="config overrides; must come last"
    )
    return parser


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


# -------------------------------------------------------------- vocabulary (parse_vocabulary: zegseg's own rule)
def resolve_vocabulary(args: argparse.Namespace) -> Tuple[Optional[List[str]], Optional[List[str]]]:
    """The vocabulary and unseen names from the options (``None``: the config's), validated."""
    if args.vocabulary is not None:
        names, option = parse_vocabulary(args.vocabulary), "--vocabulary"
    elif args.vocabulary_file is not None:
        try:
            names = read_vocabulary_file(args.vocabulary_file)
        except VocabularyFileError as e:
            raise UsageError(str(e)) from None
        option = f"--vocabulary-file {args.vocabulary_file}"
    else:
        if args.unseen is not None:
            raise UsageError("--unseen needs --vocabulary or --vocabulary-file")
        return None, None
    unseen = parse_vocabulary(args.unseen) if args.unseen is not None else None
    try:
        names, _ = check_vocabulary(names, unseen)
    except ValueError as e:
        raise UsageError(f"{option}: {e}") from None
    return names, unseen


# ---------------------------------------------------------------------------------------------------- outputs
@dataclass
class Summary:
    done: int = 0  # images and videos
    failed: int = 0
    skipped: int = 0
    videos: int = 0  # videos among the done inputs
    frames: int = 0  # frames of those videos
    start: float = field(default_factory=time.perf_counter)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = (self.done - self.videos + self.frames) / elapsed if elapsed > 0 else 0.0  # a frame counts as an image
        video = f", {self.frames} video frames" if self.frames else ""
        return (
            f"{self.done} done, {self.failed} failed, {self.skipped} skipped{video} "
            f"in {elapsed:.1f} s ({rate:.2f} images/s)"
        )


def _skip_or_restart(path: Path, files: Sequence[Path], report: Path, args) -> bool:
    """True: keep the complete earlier result. False: (re)do it; an incomplete one is announced."""
    if not args.overwrite and result_is_complete(files, report):
        logger.warning("%s: skipped, its results exist (%s; use --overwrite)", path, report)
        return True
    if not args.overwrite and any(p.exists() for p in [*files, report]):
        logger.info("%s: the results of an interrupted run are incomplete: redoing them", path)
    report.unlink(missing_ok=True)  # the completion marker goes first and comes back last
    return False


def process_images(
    predictor: Predictor, images: List[Tuple[Path, str]], output_dir: Path, args, summary: Summary
) -> None:
    palette = class_palette(len(predictor.vocabulary))
    bar = tqdm.tqdm(total=len(images), desc="images", unit="img", file=sys.stderr, dynamic_ncols=True)
    for start in range(0, len(images), args.batch_size):
        batch = []
        for path, stem in images[start : start + args.batch_size]:
            targets = {
                "overlay": output_dir / f"{stem}{OVERLAY_SUFFIX}",
                "labels": output_dir / f"{stem}{LABELS_SUFFIX}",
                "json": output_dir / f"{stem}.json",
            }
            if _skip_or_restart(path, [targets["overlay"], targets["labels"]], targets["json"], args):
                summary.skipped += 1
                bar.update()
                continue
            try:
                batch.append((path, targets, read_image(path)))
            except Exception as e:
                reason = str(e) if isinstance(e, ImageReadError) else f"cannot read it ({type(e).__name__}: {e})"
                logger.error("%s: %s", path, reason)
                summary.failed += 1
                bar.update()
        for (path, targets, image), result in zip(batch, _predict_isolating_failures(predictor, batch, summary)):
            if result is not None:
                try:
                    write_image_outputs(
                        path,
                        image,
                        result,
                        targets,
                        alpha=args.alpha,
                        confidence_threshold=args.confidence_threshold,
                        palette=palette,
                    )
                    summary.done += 1
                except Exception as e:
                    remove_files(list(targets.values()))
                    logger.error("%s: cannot write the results (%s: %s)", path, type(e).__name__, e)
                    logger.debug("traceback", exc_info=True)
                    summary.failed += 1
            bar.update()
    bar.close()


def _predict_isolating_failures(predictor: Predictor, batch, summary: Summary) -> List[Optional[SegmentationResult]]:
    """Predict a batch; when it fails, each image alone, so that one bad image does not fail the others."""
    if not batch:
        return []
    try:
        return predictor.predict_batch([image for _, _, image in batch], image_format="RGB")
    except Exception as e:
        if len(batch) == 1:
            path = batch[0][0]
            logger.error("%s: inference failed (%s: %s)", path, type(e).__name__, e)
            logger.debug("traceback", exc_info=True)
            summary.failed += 1
            return [None]
        return [r for item in batch for r in _predict_isolating_failures(predictor, [item], summary)]


def process_video(predictor: Predictor, path: Path, stem: str, output_dir: Path, args, summary: Summary) -> None:
    """Write ``<stem>_overlay.mp4`` (frames with class colours and a legend) and, last, ``<stem>.json``.

    The video is encoded under a temporary name and renamed when complete; an interrupted video leaves nothing.
    """
    target, report = output_dir / f"{stem}{VIDEO_SUFFIX}", output_dir / f"{stem}.json"
    if _skip_or_restart(path, [target], report, args):
        summary.skipped += 1
        return
    capture = cv2.VideoCapture(str(path))
    writer = bar = None
    partial = temporary_path(target, suffix=".mp4")  # OpenCV picks the container from the ending
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            logger.error("%s: not a readable video", path)
            summary.failed += 1
            return
        fps = capture.get(cv2.CAP_PROP_FPS) or 25.0
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
        height, width = frame.shape[:2]
        vocabulary = predictor.vocabulary
        palette = class_palette(len(vocabulary))
        font_size = legend_font_size(height)
        panel = legend_width(vocabulary, font_size)
        target.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width + panel, height))
        if not writer.isOpened():
            logger.error("%s: cannot open %s for writing (mp4v)", path, target)
            summary.failed += 1
            return
        counts = np.zeros(len(vocabulary) + 1, dtype=np.int64)  # [unknown, class 0, ...]
        frames = 0
        bar = tqdm.tqdm(total=total, desc=path.name, unit="frame", file=sys.stderr, dynamic_ncols=True)
        while frame is not None:
            batch = [frame]
            while len(batch) < args.batch_size:
                ok, frame = capture.read()
                if not ok:
                    frame = None
                    break
                batch.append(frame)
            else:
                ok, frame = capture.read()
                frame = frame if ok else None
            for image, result in zip(batch, predictor.predict_batch(batch, image_format="BGR")):
                rgb = np.ascontiguousarray(image[:, :, ::-1])
                canvas = render_result(rgb, result, palette, args.alpha, panel_width=panel, font_size=font_size)
                writer.write(np.ascontiguousarray(canvas[:, :, ::-1]))
                counts += np.bincount(result.labels.ravel() + 1, minlength=len(vocabulary) + 1)
            frames += len(batch)
            bar.update(len(batch))
        bar.close()
        writer.release()
        os.replace(partial, target)
        if total is not None and frames < total:
            logger.warning("%s: decoded %d of %d frames", path, frames, total)
        pixels = max(int(counts.sum()), 1)
        write_json(
            report,
            {
                "input": str(path),
                "frames": frames,
                "fps": fps,
                "height": height,
                "width": width,
                "vocabulary": vocabulary,
                "confidence_threshold": args.confidence_threshold,
                "fractions": {n: float(c) / pixels for n, c in zip(vocabulary, counts[1:])},
                "unknown_fraction": float(counts[0]) / pixels,
                "overlay": target.name,
            },
        )
        summary.done += 1
        summary.videos += 1
        summary.frames += frames
    except Exception as e:
        remove_files([target, report])
        logger.error("%s: video failed (%s: %s)", path, type(e).__name__, e)
        logger.debug("traceback", exc_info=True)
        summary.failed += 1
    finally:  # also on Ctrl-C: no half-written video stays behind
        if writer is not None:
            writer.release()
        partial.unlink(missing_ok=True)
        if bar is not None:
            bar.close()
        capture.release()


# ------------------------------------------------------------------------------------------------------- main
class _Formatter(logging.Formatter):
    """Info lines as they are, other levels prefixed ("ERROR photo.png: not an image file ...")."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        return message if record.levelno == logging.INFO else f"{record.levelname} {message}"


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bars."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging() -> Tuple[logging.Handler, int]:
    """One-line messages on stderr: warnings and errors from every library, the demo's own info lines."""
    root = logging.getLogger()
    handler = _TqdmHandler()
    handler.setFormatter(_Formatter())
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logger.setLevel(logging.INFO)
    logging.getLogger("zegseg.demo_core").setLevel(logging.INFO)  # the shared parts' info lines, as the demo's
    logging.getLogger("zegseg.model_zoo").setLevel(logging.INFO)  # which weights a config's default names
    return handler, previous


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """Let a kill (SIGTERM) unwind like Ctrl-C, so that no temporary file is left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def load_cfg(args: argparse.Namespace) -> CfgNode:
    """The config file with the --opts overrides; failures become a one-line UsageError."""
    try:
        return load_config(args.config_file, args.opts)
    except FileNotFoundError:
        raise UsageError(f"--config-file: no such file: {args.config_file}") from None
    except ConfigError as e:
        raise UsageError(str(e)) from None
    except Exception as e:
        raise UsageError(f"cannot load config {args.config_file} with --opts {' '.join(args.opts)}: {e}") from None


def build_predictor(cfg: CfgNode, args: argparse.Namespace, vocabulary, unseen) -> Predictor:
    """Model + weights + vocabulary; failures become a one-line UsageError."""
    try:
        return Predictor(
            cfg, vocabulary=vocabulary, unseen_classes=unseen, confidence_threshold=args.confidence_threshold
        )
    except ClipWeightsNotFoundError as e:
        raise UsageError(str(e)) from None
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    except ValueError as e:
        hint = "" if vocabulary else " (pass --vocabulary or --vocabulary-file)"
        raise UsageError(f"cannot build the model: {e}{hint}") from None
    except Exception as e:
        logger.debug("traceback", exc_info=True)
        raise UsageError(f"cannot build the model: {type(e).__name__}: {e}") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the demo; returns the exit code (0 ok, 1 some input failed, 2 usage/setup error, 130 interrupted)."""
    parser = build_parser()
    handler, previous_level = _setup_logging()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help
            return int(e.code or 0)
        if args.verbose:
            logging.getLogger().setLevel(logging.INFO)
            logger.setLevel(logging.DEBUG)
        if not args.input and not args.video_input:
            raise UsageError("give --input and/or --video-input")
        vocabulary, unseen = resolve_vocabulary(args)
        cfg = load_cfg(args)
        output_dir = Path(args.output).expanduser()
        inputs = collect_inputs(args.input, args.video_input, output_dir)
        summary = Summary()
        for problem in inputs.missing:
            logger.error("%s", problem)
            summary.failed += 1
        if inputs.images or inputs.videos:
            predictor = build_predictor(cfg, args, vocabulary, unseen)
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise UsageError(f"--output: cannot create {output_dir} ({e})") from None
            names = predictor.vocabulary
            logger.info("%d classes: %s%s", len(names), "; ".join(names[:20]), " ..." if len(names) > 20 else "")
            summary.start = time.perf_counter()
            with _sigterm_as_interrupt():
                if inputs.images:
                    process_images(predictor, inputs.images, output_dir, args, summary)
                for path, stem in inputs.videos:
                    process_video(predictor, path, stem, output_dir, args, summary)
        logger.info("%s", summary.line())
        return 1 if summary.failed else 0
    except UsageError as e:
        logger.error("%s", e)
        return 2
    except KeyboardInterrupt:
        logger.error("interrupted")
        return 130
    except Exception as e:  # a bug, not a bad input: still one line (--verbose for the traceback)
        logger.error("unexpected %s: %s", type(e).__name__, e)
        logger.debug("traceback", exc_info=True)
        return 1
    finally:
        root = logging.getLogger()
        root.removeHandler(handler)
        root.setLevel(previous_level)


if __name__ == "__main__":
    sys.exit(main())
