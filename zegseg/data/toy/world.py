"""The toy world's vocabulary: class list and seen/unseen split, read from a JSON file (``world.json`` by default).

Classes are the stuff names followed by every ``"{colour} {shape}"`` thing, colour-major. Ids index that list.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["DEFAULT_WORLD_FILE", "ToyWorld", "load_world"]

DEFAULT_WORLD_FILE = Path(__file__).resolve().parent / "world.json"


@dataclass(frozen=True)
class ToyWorld:
    """Class list and split of the toy world.

    Attributes:
        stuff: stuff class names (each must have a texture in :mod:`zegseg.data.toy.render`).
        colors: thing colour name -> RGB (0-255).
        shapes: thing shape names (each must have an outline in :mod:`zegseg.data.toy.render`).
        unseen: class names held out from segmentation training labels.
        digest: SHA-256 (16 hex digits) of the canonical JSON content; identifies the split on disk.
    """

    stuff: Tuple[str, ...]
    colors: Dict[str, Tuple[int, int, int]]
    shapes: Tuple[str, ...]
    unseen: Tuple[str, ...]
    digest: str
    things: Tuple[Tuple[str, str], ...] = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "things", tuple((c, s) for c in self.colors for s in self.shapes))

    @property
    def classes(self) -> List[str]:
        """All class names: stuff first, then ``"{colour} {shape}"`` things."""
        return list(self.stuff) + [f"{c} {s}" for c, s in self.things]

    @property
    def seen_classes(self) -> List[str]:
        unseen = set(self.unseen)
        return [name for name in self.classes if name not in unseen]

    @property
    def num_stuff(self) -> int:
        return len(self.stuff)

    def thing_id(self, color: str, shape: str) -> int:
        """Class id of a coloured shape."""
        return self.num_stuff + list(self.colors).index(color) * len(self.shapes) + list(self.shapes).index(shape)

    def seen_lut(self) -> np.ndarray:
        """(256,) uint8 lookup table: all-class id -> seen-class id, unseen ids and 255 -> 255."""
        lut = np.full(256, 255, dtype=np.uint8)
        seen_index = {name: i for i, name in enumerate(self.seen_classes)}
        for i, name in enumerate(self.classes):
            if name in seen_index:
                lut[i] = seen_index[name]
        return lut

    def class_groups(self) -> Dict[str, List[int]]:
        """Class ids per group: ``"stuff"``, ``"thing"``, ``"seen"``, ``"unseen"``."""
        unseen = set(self.unseen)
        names = self.classes
        return {
            "stuff": list(range(self.num_stuff)),
            "thing": list(range(self.num_stuff, len(names))),
            "seen": [i for i, n in enumerate(names) if n not in unseen],
            "unseen": [i for i, n in enumerate(names) if n in unseen],
        }


def _validate(world: ToyWorld, source: str) -> None:
    from .render import SHAPE_OUTLINES, STUFF_TEXTURES

    names = world.classes
    if len(set(names)) != len(names):
        raise ValueError(f"{source}: class names are not unique: {names}")
    if len(names) > 255:
        raise ValueError(f"{source}: {len(names)} classes do not fit uint8 labels (at most 255)")
    for name in world.stuff:
        if name not in STUFF_TEXTURES:
            raise ValueError(f"{source}: unknown stuff {name!r}; known: {', '.join(sorted(STUFF_TEXTURES))}")
    for name in world.shapes:
        if name not in SHAPE_OUTLINES:
            raise ValueError(f"{source}: unknown shape {name!r}; known: {', '.join(sorted(SHAPE_OUTLINES))}")
    for name, rgb in world.colors.items():
        if len(rgb) != 3 or not all(0 <= v <= 255 for v in rgb):
            raise ValueError(f"{source}: colour {name!r} must be three integers in 0-255, got {rgb}")
    unknown = [n for n in world.unseen if n not in names]
    if unknown:
        raise ValueError(f"{source}: unseen classes {unknown} are not in the class list {names}")
    if len(world.seen_classes) == 0:
        raise ValueError(f"{source}: every class is unseen")


def load_world(path: Optional[Union[str, Path]] = None) -> ToyWorld:
    """Read a world file (default: the packaged ``world.json``) and validate it.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on unknown stuff/shape names, duplicate classes or unseen names outside the class list.
    """
    path = Path(path) if path is not None else DEFAULT_WORLD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"toy world file {path} does not exist")
    spec = json.loads(path.read_text())
    missing = [k for k in ("stuff", "colors", "shapes", "unseen") if k not in spec]
    if missing:
        raise ValueError(f"{path}: missing keys {missing}")
    content = {k: spec[k] for k in ("stuff", "colors", "shapes", "unseen")}
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    world = ToyWorld(
        stuff=tuple(spec["stuff"]),
        colors={k: tuple(int(v) for v in rgb) for k, rgb in spec["colors"].items()},
        shapes=tuple(spec["shapes"]),
        unseen=tuple(spec["unseen"]),
        digest=digest,
    )
    _validate(world, str(path))
    return world
