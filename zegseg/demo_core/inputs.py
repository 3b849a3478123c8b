"""Inputs of the demos: image and video files from paths, folders and globs; vocabularies from files."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from ..modeling.vocabulary import normalise_class
from ..utils.image_io import IMAGE_EXTENSIONS

__all__ = ["Inputs", "VocabularyFileError", "collect_inputs", "read_vocabulary_file"]

logger = logging.getLogger(__name__)


class VocabularyFileError(ValueError):
    """A vocabulary file that is missing or unreadable; the message is one line naming it."""


def read_vocabulary_file(path: str) -> List[str]:
    """One class per line ("a, b" = synonyms of one class); blank lines and lines starting with "#" skipped.

    Raises:
        VocabularyFileError: the file is missing or cannot be read as UTF-8 text.
    """
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise VocabularyFileError(f"--vocabulary-file: no such file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise VocabularyFileError(f"--vocabulary-file: cannot read {path} ({e})") from None
    names = [normalise_class(line) for line in lines if not line.strip().startswith("#")]
    return [n for n in names if n]


@dataclass
class Inputs:
    images: List[Tuple[Path, str]] = field(default_factory=list)  # (file, output stem relative to --output)
    videos: List[Tuple[Path, str]] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)  # one-line problems with the --input / --video-input values


def _is_within(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def collect_inputs(image_specs: Sequence[str], video_specs: Sequence[str], output_dir: Path) -> Inputs:
    """Expand files, folders and globs into input files with unique output stems.

    Folders are searched recursively for the endings in IMAGE_EXTENSIONS; a file named explicitly or matched by
    a glob is tried whatever its ending. Files under the output folder are left out of folders and globs (the
    demo never segments its own results); a file named explicitly is taken as it is.
    """
    found = Inputs()
    out = output_dir.resolve()
    seen: set = set()
    stems: Dict[str, int] = {}

    def add(target: List[Tuple[Path, str]], path: Path, stem: str) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        unique = stem
        while unique in stems:
            stems[stem] += 1
            unique = f"{stem}_{stems[stem]}"
        if unique != stem:
            logger.warning("%s: another input also maps to %r; writing its results as %r", path, stem, unique)
        stems.setdefault(unique, 1)
        target.append((path, unique))

    for specs, target, kind in ((image_specs, found.images, "--input"), (video_specs, found.videos, "--video-input")):
        for spec in specs:
            path = Path(spec).expanduser()
            if path.is_dir() and kind == "--input":
                files = sorted(
                    f
                    for f in path.rglob("*")
                    if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not _is_within(f, out)
                )
                if not files:
                    found.missing.append(f"{kind} {spec}: no image files ({' '.join(IMAGE_EXTENSIONS)}) in this folder")
                for f in files:
                    add(target, f, f.relative_to(path).with_suffix("").as_posix())
            elif path.is_file():
                add(target, path, path.stem)
            elif any(c in spec for c in "*?["):
                matches = sorted(Path(m) for m in glob(os.path.expanduser(spec), recursive=True))
                files = [m for m in matches if m.is_file() and not _is_within(m, out)]
                if len(files) < sum(m.is_file() for m in matches):
                    logger.info("%s %s: files under the output folder %s left out", kind, spec, output_dir)
                if not files:
                    found.missing.append(f"{kind} {spec}: no files match (outside the output folder)")
                for f in files:
                    add(target, f, f.stem)
            elif path.is_dir():
                found.missing.append(f"{kind} {spec}: is a folder; give the video files")
            else:
                found.missing.append(f"{kind} {spec}: no such {'file or folder' if kind == '--input' else 'file'}")
    return found
