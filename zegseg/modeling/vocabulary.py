"""Where a model's class names come from: dataset metadata, or a list the user types."""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from detectron2.data import MetadataCatalog

__all__ = ["check_vocabulary", "dataset_vocabulary"]


def check_vocabulary(names: Sequence[str], unseen: Optional[Sequence[str]] = None) -> Tuple[List[str], List[bool]]:
    """Validate class names and mark which are unseen.

    Args:
        names: class names; synonyms of one class are joined by ", " (e.g. "tv, monitor").
        unseen: names treated as unseen classes. ``None`` means every class is unseen, as in a cross-dataset or
            user-typed vocabulary for which no seen/unseen split exists.
    Returns:
        the cleaned names (surrounding whitespace stripped) and a per-class ``is_unseen`` list.
    Raises:
        ValueError: for an empty vocabulary, empty or duplicate names, or unseen names not in the vocabulary.
    """
    cleaned = [str(n).strip() for n in names]
    if not cleaned:
        raise ValueError("the vocabulary is empty: give at least one class name")
    if any(not n for n in cleaned):
        raise ValueError(f"the vocabulary has an empty class name: {list(names)!r}")
    duplicates = sorted({n for n in cleaned if cleaned.count(n) > 1})
    if duplicates:
        raise ValueError(f"the vocabulary repeats class names: {', '.join(map(repr, duplicates))}")
    if unseen is None:
        return cleaned, [True] * len(cleaned)
    unseen_set = {str(n).strip() for n in unseen}
    unknown = sorted(unseen_set - set(cleaned))
    if unknown:
        raise ValueError(f"unseen classes not in the vocabulary: {', '.join(map(repr, unknown))}")
    return cleaned, [n in unseen_set for n in cleaned]


def dataset_vocabulary(dataset_name: str) -> Tuple[List[str], List[bool]]:
    """Class names of a registered dataset and which are unseen (metadata ``unseen_classes``; absent → all)."""
    meta = MetadataCatalog.get(dataset_name)
    names = getattr(meta, "stuff_classes", None)
    if not names:
        raise ValueError(f"dataset {dataset_name!r} has no 'stuff_classes' metadata; is it registered?")
    return check_vocabulary(names, getattr(meta, "unseen_classes", None))
