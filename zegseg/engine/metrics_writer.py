"""metrics.json without repeated iterations when a run is resumed or restarted in the same OUTPUT_DIR."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Callable

from detectron2.utils.events import JSONWriter
from detectron2.utils.file_io import PathManager

from ..utils.atomic_io import atomic_write

__all__ = ["ResumableJSONWriter", "drop_records_from"]

logger = logging.getLogger(__name__)


def drop_records_from(json_file: str, start_iter: int) -> int:
    """Rewrite ``json_file`` (one JSON object per line) without the records of iteration ``>= start_iter`` and
    without unreadable lines (a line cut off by a kill). Returns the number of lines dropped."""
    path = Path(json_file)
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            keep = isinstance(record, dict) and int(record.get("iteration", -1)) < start_iter
        except (ValueError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += bool(line.strip())
    if dropped:
        with atomic_write(path, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in kept))
    return dropped


class ResumableJSONWriter(JSONWriter):
    """detectron2's ``JSONWriter`` that, before its first write, drops the records the run is about to write
    again: those of iterations at or after the run's first one (all of them for a fresh run, the ones after the
    resumed checkpoint for ``--resume``), so every iteration appears once.

    Args:
        json_file: the metrics file (appended to after the clean-up).
        start_iter: returns the run's first iteration; read at the first write, after ``resume_or_load``.
        window_size: as for ``JSONWriter``.
    """

    def __init__(self, json_file: str, start_iter: Callable[[], int], window_size: int = 20):
        self._json_file = json_file
        self._start_iter = start_iter
        self._window_size = window_size
        self._last_write = -1
        self._file_handle = None

    def write(self) -> None:
        if self._file_handle is None:
            start = self._start_iter()
            dropped = drop_records_from(self._json_file, start)
            if dropped:
                logger.info("%s: dropped %d records of iterations >= %d, which this run writes again",
                            self._json_file, dropped, start)
            self._file_handle = PathManager.open(self._json_file, "a")
        super().write()

    def close(self) -> None:
        if self._file_handle is not None:
            super().close()
