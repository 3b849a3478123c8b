"""Ready-made vocabularies for the demos: the toy world and the class lists of the benchmark datasets."""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

from ..data.datasets.common import load_class_list
from ..data.toy import load_world

__all__ = ["VOCABULARY_PRESETS", "preset_vocabulary", "vocabulary_text"]

# display name -> the class names, read when asked for
VOCABULARY_PRESETS: Dict[str, Callable[[], Sequence[str]]] = {
    "toy world": lambda: load_world().classes,
    "COCO-Stuff (171)": lambda: load_class_list("coco_stuff").names,
    "ADE20k-150": lambda: load_class_list("ade20k_150").names,
    "PASCAL VOC (20)": lambda: load_class_list("voc").names,
}


def preset_vocabulary(name: str) -> List[str]:
    """The class names of a preset (a key of :data:`VOCABULARY_PRESETS`).

    Raises:
        ValueError: an unknown preset.
    """
    if name not in VOCABULARY_PRESETS:
        raise ValueError(f"unknown vocabulary preset {name!r}; known: {', '.join(VOCABULARY_PRESETS)}")
    return list(VOCABULARY_PRESETS[name]())


def vocabulary_text(names: Sequence[str]) -> str:
    """Class names as one string that :func:`~zegseg.modeling.vocabulary.parse_vocabulary` reads back to the same
    list: joined by "; " (synonyms inside a class keep their ", ")."""
    return "; ".join(names)
