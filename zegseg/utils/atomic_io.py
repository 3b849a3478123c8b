"""Writing files atomically: readers (and reruns) see either the old file or the complete new one, never a part.

The data goes to a hidden temporary file next to the target (``.<name>.<random>.tmp``), which is renamed over
the target only once it is complete; on any exception, Ctrl-C included, the temporary file is removed.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator, Optional, Union

__all__ = ["atomic_write", "temporary_path"]

PathLike = Union[str, os.PathLike]


def temporary_path(path: PathLike, suffix: str = ".tmp") -> Path:
    """A fresh hidden name next to ``path`` for its temporary file (``suffix`` lets writers that pick the file
    format from the name, as OpenCV's video writer does, see the real extension)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")


@contextlib.contextmanager
def atomic_write(
    path: PathLike, mode: str = "wb", *, encoding: Optional[str] = None, fsync: bool = False
) -> Iterator[IO]:
    """Open a temporary file for writing; on a clean exit rename it to ``path``, otherwise delete it.

    Args:
        path: the target; its folder is created when missing.
        mode: "wb" or "w".
        encoding: for text mode.
        fsync: flush the data to disk before the rename (checkpoints), so that a power loss cannot leave a
            renamed but empty file.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write writes new files only (mode 'wb' or 'w'), got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        with open(tmp, "x" + mode[1:], encoding=encoding) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
