"""Where a model's class names come from: dataset metadata, or a list (or one string) the user types.

Every vocabulary zegseg uses goes through :func:`check_vocabulary`: the config's ``TEST.VOCABULARY``, dataset
metadata, ``Predictor(vocabulary=...)``, ``set_vocabulary(...)`` and the demo's ``--vocabulary``. A vocabulary is
a list of class names; one class may list synonyms joined by ", " (``"tv, monitor"``). A single string is read
with :func:`parse_vocabulary`, the demo's ``--vocabulary`` rule.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from typing import Dict, List, Optional, Sequence, Tuple, Union

from detectron2.data import MetadataCatalog

__all__ = [
    "VocabularyError",
    "check_vocabulary",
    "dataset_vocabulary",
    "normalise_class",
    "parse_vocabulary",
]

Names = Union[str, Sequence[str]]


class VocabularyError(ValueError):
    """A vocabulary that cannot be used as given; the message names the offending entry and the fix."""


def normalise_class(text: str) -> str:
    """Strip each ","-separated synonym and join them with ", " (the text encoder's synonym separator)."""
    return ", ".join(s.strip() for s in text.split(",") if s.strip())


def parse_vocabulary(text: str) -> List[str]:
    """Split one string into class names, as the demo's ``--vocabulary`` does.

    By ";" when the text has one (then "," inside a class separates its synonyms), otherwise by ",":
    ``"cat, dog, sky"`` → 3 classes; ``"tv, monitor; sky"`` → ``["tv, monitor", "sky"]``; ``"sky"`` → ``["sky"]``.
    Empty parts are dropped.
    """
    if ";" in text:
        names = [normalise_class(part) for part in text.split(";")]
    else:
        names = [part.strip() for part in text.split(",")]
    return [n for n in names if n]


def _as_names(names: object, what: str) -> List[str]:
    """A list of stripped class names from a string or an ordered collection of strings."""
    if isinstance(names, str):
        return parse_vocabulary(names)
    if isinstance(names, (bytes, bytearray)):
        raise VocabularyError(f"the {what} is bytes: decode it to text first")
    if isinstance(names, Set):
        raise VocabularyError(f"the {what} is a set: give a list (a set's order, and so the class indices, varies)")
    if isinstance(names, Mapping) or not isinstance(names, Iterable):
        raise VocabularyError(f"the {what} must be a list of class names or one string, got {type(names).__name__}")
    items = list(names)
    for i, name in enumerate(items):
        if not isinstance(name, str):
            hint = " (YAML reads unquoted yes/no/on/off as booleans: quote them)" if isinstance(name, bool) else ""
            raise VocabularyError(f"class name #{i} of the {what} is {name!r} ({type(name).__name__}), not text{hint}")
    return [n.strip() for n in items]


def _clip_key(name: str) -> frozenset:
    """What CLIP's tokenizer reads of a class: its synonyms lower-cased with runs of spaces collapsed.

    Two classes with the same key get the same text embedding (the tokenizer lower-cases and collapses
    whitespace; the class embedding averages over synonyms, so their order does not matter).
    """
    return frozenset(" ".join(s.lower().split()) for s in name.split(", ") if s.strip())


def check_vocabulary(names: Names, unseen: Optional[Names] = None) -> Tuple[List[str], List[bool]]:
    """Validate class names and mark which are unseen.

    Args:
        names: class names; synonyms of one class are joined by ", " (e.g. "tv, monitor"). One string is split
            by :func:`parse_vocabulary` (``"sky; grass"`` → 2 classes), never into letters.
        unseen: names treated as unseen classes (a list, or one string read the same way). ``None`` means every
            class is unseen, as in a cross-dataset or user-typed vocabulary for which no seen/unseen split exists.
    Returns:
        the cleaned names (surrounding whitespace stripped) and a per-class ``is_unseen`` list.
    Raises:
        VocabularyError: an empty vocabulary; a name that is not text; an empty name; names equal once
            lower-cased with spaces collapsed (CLIP would embed them identically); unseen names not in the
            vocabulary; a set, mapping or other non-list instead of names.
    """
    cleaned = _as_names(names, "vocabulary")
    if not cleaned:
        raise VocabularyError("the vocabulary is empty: give at least one class name")
    empty = [i for i, n in enumerate(cleaned) if not _clip_key(n)]
    if empty:
        raise VocabularyError(f"class name #{empty[0]} of the vocabulary is empty: {cleaned[empty[0]]!r}")
    duplicates = sorted({n for n in cleaned if cleaned.count(n) > 1})
    if duplicates:
        raise VocabularyError(f"the vocabulary repeats class names: {', '.join(map(repr, duplicates))}")
    first: Dict[frozenset, str] = {}
    for name in cleaned:
        other = first.setdefault(_clip_key(name), name)
        if other != name:
            raise VocabularyError(
                f"class names {other!r} and {name!r} differ only in case, spacing or synonym order: CLIP reads "
                "them as the same text, so they would get one embedding; keep one of them"
            )
    if unseen is None:
        return cleaned, [True] * len(cleaned)
    unseen_set = set(_as_names(unseen, "unseen classes"))
    unknown = sorted(unseen_set - set(cleaned))
    if unknown:
        raise VocabularyError(f"unseen classes not in the vocabulary: {', '.join(map(repr, unknown))}")
    return cleaned, [n in unseen_set for n in cleaned]


def dataset_vocabulary(dataset_name: str) -> Tuple[List[str], List[bool]]:
    """Class names of a registered dataset and which are unseen (metadata ``unseen_classes``; absent → all)."""
    meta = MetadataCatalog.get(dataset_name)
    names = getattr(meta, "stuff_classes", None)
    if not names:
        raise ValueError(f"dataset {dataset_name!r} has no 'stuff_classes' metadata; is it registered?")
    return check_vocabulary(names, getattr(meta, "unseen_classes", None))
