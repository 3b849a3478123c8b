"""Prompt templates that turn a class name into CLIP text, as named sets.

Each template holds exactly one ``{}``, replaced by a class name (or one synonym of it). A set of several templates
is a prompt ensemble: the text encoder embeds the name in every template and averages (see
:class:`zegseg.modeling.clip.text_encoder.TextEmbedder`).

Sets:

* ``single``: ZegFormer's single template (its casing and missing full stop kept as published).
* ``selected8``: the 8 ImageNet templates ZegFormer selected for its segment classifier.
* ``vild``: the 14 templates of the "simple baseline" two-stage classifier (its ``VILD_PROMPT``).
* ``imagenet80``: the 80 ImageNet templates of CLIP's prompt-engineering notebook.
* ``maskclip85``: MaskCLIP's 85: the 80 ImageNet templates and 5 "there is / this is ... in the scene." ones.
* ``zegformer_region``: the 32 templates (with "masked"/"cropped" wordings) ZegFormer used for the text side of
  its CLIP image branch.
* ``sculpture``: the simple baseline's single template.
* ``photo``: the plain "a photo of a {}." (used for the embedded toy world).
* ``custom``: a list given by the user (``MODEL.CLIP.CUSTOM_TEMPLATES``).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

__all__ = ["TEMPLATE_SETS", "get_templates"]

_SINGLE: Tuple[str, ...] = ("A photo of a {} in the scene",)

_SELECTED8: Tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
    "A photo of a {} in the scene",
)

_VILD: Tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

_IMAGENET80: Tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

_ZEGFORMER_REGION: Tuple[str, ...] = (
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "This is a photo of a {}",
    "This is a photo of a small {}",
    "This is a photo of a medium {}",
    "This is a photo of a large {}",
    "This is a masked photo of a {}",
    "This is a masked photo of a small {}",
    "This is a masked photo of a medium {}",
    "This is a masked photo of a large {}",
    "This is a cropped photo of a {}",
    "This is a cropped photo of a small {}",
    "This is a cropped photo of a medium {}",
    "This is a cropped photo of a large {}",
    "A photo of a {} in the scene",
    "a bad photo of the {} in the scene",
    "a photo of the large {} in the scene",
    "a photo of the small {} in the scene",
    "a cropped photo of a {} in the scene",
    "a photo of a masked {} in the scene",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "This is a {} in the scene",
    "This is the {} in the scene",
    "This is one {} in the scene",
    "There is a masked {} in the scene",
    "There is the masked {} in the scene",
    "This is a masked {} in the scene",
    "This is the masked {} in the scene",
    "This is one masked {} in the scene",
)

_MASKCLIP_SCENE: Tuple[str, ...] = (
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

TEMPLATE_SETS: Dict[str, Tuple[str, ...]] = {
    "single": _SINGLE,
    "selected8": _SELECTED8,
    "vild": _VILD,
    "imagenet80": _IMAGENET80,
    "maskclip85": _IMAGENET80 + _MASKCLIP_SCENE,
    "zegformer_region": _ZEGFORMER_REGION,
    "sculpture": ("a sculpture of a {}.",),
    "photo": ("a photo of a {}.",),
}


def _check_template(template: str) -> str:
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"prompt template {template!r} must be a string with exactly one '{{}}' for the class name")
    try:
        template.format("x")
    except (IndexError, KeyError, ValueError) as e:
        raise ValueError(f"prompt template {template!r} is not a valid format string: {e}") from e
    return template


def get_templates(name: str, custom: Optional[Sequence[str]] = None) -> List[str]:
    """The prompt templates of a named set.

    Args:
        name: one of ``TEMPLATE_SETS`` or ``"custom"``.
        custom: the templates used when ``name`` is ``"custom"`` (each with exactly one ``{}``); ignored otherwise.
    Returns:
        a new list of templates.
    Raises:
        ValueError: for an unknown set name, or for ``"custom"`` with no or malformed templates.
    """
    if name == "custom":
        if not custom:
            raise ValueError("prompt set 'custom' needs templates: set MODEL.CLIP.CUSTOM_TEMPLATES")
        return [_check_template(t) for t in custom]
    if name not in TEMPLATE_SETS:
        known = ", ".join(sorted(TEMPLATE_SETS) + ["custom"])
        raise ValueError(f"unknown prompt set {name!r}; known: {known}")
    return list(TEMPLATE_SETS[name])
