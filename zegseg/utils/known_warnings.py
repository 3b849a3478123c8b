"""Warnings of third-party code that zegseg triggers and that tell a zegseg user nothing they can act on.

They are silenced only where zegseg triggers them (``import zegseg``, loading a TorchScript CLIP archive), by
exact message and category, with :func:`known_warnings_silenced`; every other warning still shows, and so do these
when user code triggers them elsewhere.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, Tuple, Type

__all__ = ["KNOWN_WARNINGS", "known_warnings_silenced"]

KNOWN_WARNINGS: Tuple[Tuple[str, Type[Warning]], ...] = (
    # OpenAI's clip package imports pkg_resources (deprecated by setuptools) on import
    (r"pkg_resources is deprecated as an API", UserWarning),
    # fvcore (imported by detectron2) scripts its losses at import; zegseg loads OpenAI's TorchScript CLIP files
    (r"`torch\.jit\.(script|load)` is deprecated", FutureWarning),
)
"""(message regex matched at the start of the warning text, category) of each silenced warning."""


@contextmanager
def known_warnings_silenced() -> Iterator[None]:
    """Within the block, ignore exactly the :data:`KNOWN_WARNINGS`; the previous filters come back after it."""
    with warnings.catch_warnings():
        for message, category in KNOWN_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield
