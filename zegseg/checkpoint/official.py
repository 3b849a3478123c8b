"""Released checkpoints of the official implementations → zegseg checkpoints.

Two formats are known, both built on MaskFormer's code (detectron2 ResNet, ``sem_seg_head.pixel_decoder``,
``sem_seg_head.predictor``):

- ``"zegformer"``: dingjiansw101/ZegFormer (``MaskFormer`` meta-architecture with ``ZegFormerHead``); its CLIP sits
  under ``sem_seg_head.predictor.clip_model`` when the model was built with CLIP classification on.
- ``"zsseg"``: MendelXu/zsseg.baseline, the "simple baseline" (``ZeroShotMaskFormer``); its frozen CLIP, learned
  prompt and "no object" embedding sit under ``clip_adapter``.

Every key of an official checkpoint falls under exactly one rule of its format's table (:data:`RULES`):

- ``rename``: copied to the zegseg key given by the replacement (flattened where zegseg stores a vector);
- ``clip``: the frozen CLIP, which zegseg keeps out of its checkpoints (it loads MODEL.CLIP.NAME); kept apart
  under OpenAI's names so that it can be written as a CLIP file;
- ``prompt``: learned prompt context vectors, written as a MODEL.CLIP.PROMPT_LEARNER.WEIGHTS file;
- ``config``: a value zegseg reads from its config, not from weights; reported with its config key;
- ``derived``: a buffer zegseg recomputes (from CLIP or from constants); reported, not loaded.

A key that no rule matches is an error (:class:`UnknownOfficialKeysError`): nothing is dropped silently.
The pixel-decoder rules assume the reference configs' FPN inputs res2…res5 (official ``adapter_1``/``layer_1`` is
res2, …, ``layer_4`` is res5).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from .checkpointer import read_weights_file
from .errors import CheckpointError

__all__ = [
    "FORMATS",
    "RULES",
    "OfficialConversion",
    "OfficialCheckpointError",
    "Rule",
    "UnknownOfficialKeysError",
    "config_mismatches",
    "convert_official_state_dict",
    "detect_format",
    "load_official_state_dict",
    "save_conversion",
]

RENAME, CLIP, PROMPT, CONFIG, DERIVED = "rename", "clip", "prompt", "config", "derived"


class OfficialCheckpointError(ValueError):
    """An official checkpoint cannot be read or converted; the message is one line for the user."""


class UnknownOfficialKeysError(OfficialCheckpointError):
    """The checkpoint holds tensors zegseg has no place for."""


@dataclass(frozen=True)
class Rule:
    """One line of a key table.

    Attributes:
        pattern: regular expression matched at the start of an official key.
        target: ``rename``: the replacement (``re.sub`` template) of the matched prefix; ``config``: the zegseg
            config key; other kinds: what the tensor is (for the report).
        kind: rename | clip | prompt | config | derived.
        flatten: ``rename`` only: the official (1, D) tensor is stored as (D,) in zegseg.
        value: ``config`` only: tensor → the config value it implies.
    """

    pattern: str
    target: str
    kind: str = RENAME
    flatten: bool = False
    value: Optional[Callable[[Tensor], float]] = None


def _no_object_weight(empty_weight: Tensor) -> float:
    """MaskFormer's criterion buffer: ones, with the "no object" weight last."""
    return float(empty_weight.reshape(-1)[-1])


def _temperature(logit_scale: Tensor) -> float:
    """ZegFormer stores log(1 / τ)."""
    return math.exp(-float(logit_scale.reshape(-1)[0]))


_PIXEL_DECODER = r"sem_seg_head\.(?:pixel_decoder\.)?"  # MaskFormer heads before "version 2" had no pixel_decoder.
_PREDICTOR = r"sem_seg_head\.predictor\."
_DECODER = _PREDICTOR + r"transformer\.decoder\."

_MASKFORMER_RULES: Tuple[Rule, ...] = (
    Rule(r"backbone\.", "backbone."),
    Rule(_PIXEL_DECODER + r"adapter_1\.", "pixel_decoder.lateral_convs.res2."),
    Rule(_PIXEL_DECODER + r"adapter_2\.", "pixel_decoder.lateral_convs.res3."),
    Rule(_PIXEL_DECODER + r"adapter_3\.", "pixel_decoder.lateral_convs.res4."),
    Rule(_PIXEL_DECODER + r"layer_1\.", "pixel_decoder.output_convs.res2."),
    Rule(_PIXEL_DECODER + r"layer_2\.", "pixel_decoder.output_convs.res3."),
    Rule(_PIXEL_DECODER + r"layer_3\.", "pixel_decoder.output_convs.res4."),
    Rule(_PIXEL_DECODER + r"layer_4\.", "pixel_decoder.output_convs.res5."),
    Rule(_PIXEL_DECODER + r"mask_features\.", "pixel_decoder.mask_features."),
    Rule(_PREDICTOR + r"input_proj\.", "transformer_decoder.input_proj."),
    Rule(_PREDICTOR + r"query_embed\.", "transformer_decoder.query_embed."),
    Rule(_DECODER + r"layers\.(\d+)\.multihead_attn\.", r"transformer_decoder.layers.\1.cross_attn."),
    Rule(_DECODER + r"layers\.", "transformer_decoder.layers."),
    Rule(_DECODER + r"norm\.", "transformer_decoder.norm."),
    Rule(_PREDICTOR + r"mask_embed\.", "mask_embed."),
    Rule(r"criterion\.empty_weight$", "MODEL.CRITERION.NO_OBJECT_WEIGHT", CONFIG, value=_no_object_weight),
)

RULES: Dict[str, Tuple[Rule, ...]] = {
    "zegformer": _MASKFORMER_RULES
    + (
        Rule(_PREDICTOR + r"projection_layer\.", "semantic_proj."),
        Rule(_PREDICTOR + r"bg_feature$", "text_classifier.no_object_embedding", flatten=True),
        Rule(_PREDICTOR + r"logit_scale$", "MODEL.ZEGFORMER.TEMPERATURE", CONFIG, value=_temperature),
        Rule(_PREDICTOR + r"clip_model\.", "frozen CLIP", CLIP),
    ),
    "zsseg": _MASKFORMER_RULES
    + (
        Rule(_PREDICTOR + r"class_embed\.", "semantic_proj."),
        Rule(r"clip_adapter\.non_object_embedding$", "text_classifier.no_object_embedding", flatten=True),
        Rule(r"clip_adapter\.clip_model\.", "frozen CLIP", CLIP),
        Rule(r"clip_adapter\.prompt_learner\.prefix_prompt$", "learned prompt context", PROMPT),
        Rule(r"clip_adapter\.prompt_learner\.(?:start|dot|end|pad)_signal$", "CLIP token embeddings", DERIVED),
        Rule(r"clip_adapter\.pixel_(?:mean|std)$", "CLIP's pixel normalisation", DERIVED),
    ),
}
"""Key tables by format."""

FORMATS: Dict[str, str] = {
    "zegformer": "ZegFormer (dingjiansw101/ZegFormer)",
    "zsseg": "simple baseline (MendelXu/zsseg.baseline)",
}
"""Known formats and what they are."""

META_ARCHITECTURES: Dict[str, str] = {"zegformer": "ZegFormer", "zsseg": "TwoStageCLIP"}
"""The zegseg meta-architecture each format converts to."""

# Keys that only one format has (checked in this order).
_SIGNATURES = (
    ("zegformer", _PREDICTOR + r"bg_feature$"),
    ("zsseg", r"clip_adapter\.|" + _PREDICTOR + r"class_embed\."),
)


@dataclass
class OfficialConversion:
    """The result of :func:`convert_official_state_dict`.

    Attributes:
        format: "zegformer" or "zsseg".
        model: zegseg state dict (what ``{"model": ...}`` checkpoints hold).
        sources: zegseg key → the official key it came from.
        clip: the frozen CLIP's weights under OpenAI's names (empty when the checkpoint holds none).
        prompt_ctx: (n_ctx, W) learned prompt context vectors, or ``None``.
        config: zegseg config key → the value the checkpoint implies.
        derived: official key → what it is (buffers zegseg recomputes; not loaded).
    """

    format: str
    model: Dict[str, Tensor] = field(default_factory=dict)
    sources: Dict[str, str] = field(default_factory=dict)
    clip: Dict[str, Tensor] = field(default_factory=dict)
    prompt_ctx: Optional[Tensor] = None
    config: Dict[str, float] = field(default_factory=dict)
    derived: Dict[str, str] = field(default_factory=dict)

    def summary(self) -> List[str]:
        """One line per kind of content: what was converted and what was set apart."""
        lines = [f"{FORMATS[self.format]}: {len(self.model)} tensors converted to zegseg names"]
        if self.clip:
            lines.append(
                f"frozen CLIP: {len(self.clip)} tensors not put in the zegseg checkpoint (zegseg loads CLIP from "
                "MODEL.CLIP.NAME)"
            )
        if self.prompt_ctx is not None:
            n, width = self.prompt_ctx.shape
            lines.append(f"learned prompt: {n} context vectors of width {width}")
        for key, value in self.config.items():
            lines.append(f"config value: {key} {value:.6g}")
        if self.derived:
            lines.append(f"not loaded, recomputed by zegseg: {', '.join(sorted(self.derived))}")
        return lines


def detect_format(state_dict: Mapping[str, object]) -> str:
    """The format ("zegformer" or "zsseg") of an official state dict.

    Raises:
        OfficialCheckpointError: the keys match neither format.
    """
    for name, signature in _SIGNATURES:
        if any(re.match(signature, key) for key in state_dict):
            return name
    raise OfficialCheckpointError(
        "not a ZegFormer or zsseg.baseline checkpoint: found neither 'sem_seg_head.predictor.bg_feature' nor "
        "'clip_adapter.*' / 'sem_seg_head.predictor.class_embed.*' among its keys"
    )


def _first_rule(rules: List[Tuple[re.Pattern, Rule]], key: str) -> Tuple[Optional[re.Match], Optional[Rule]]:
    """The first rule whose pattern matches the start of ``key``, with its match; ``(None, None)`` if none does."""
    for regex, rule in rules:
        match = regex.match(key)
        if match:
            return match, rule
    return None, None


def convert_official_state_dict(state_dict: Mapping[str, Tensor], fmt: Optional[str] = None) -> OfficialConversion:
    """Map an official state dict onto zegseg's names (see the module docstring for the rules).

    Args:
        state_dict: official key → tensor.
        fmt: "zegformer", "zsseg", or ``None`` to detect the format from the keys.
    Returns:
        the conversion; ``model`` holds zegseg-named tensors (shared with the input where no reshape is needed).
    Raises:
        UnknownOfficialKeysError: keys no rule of the format matches.
        OfficialCheckpointError: unknown format, or two official keys that map onto one zegseg key.
    """
    fmt = fmt or detect_format(state_dict)
    if fmt not in RULES:
        raise OfficialCheckpointError(f"unknown checkpoint format {fmt!r}; known: {', '.join(RULES)}")
    rules = [(re.compile(rule.pattern), rule) for rule in RULES[fmt]]
    result = OfficialConversion(format=fmt)
    unknown: List[str] = []
    for key, tensor in state_dict.items():
        match, rule = _first_rule(rules, key)
        if rule is None:
            unknown.append(key)
        elif rule.kind == RENAME:
            target = match.expand(rule.target) + key[match.end() :]
            if target in result.sources:
                raise OfficialCheckpointError(f"{result.sources[target]!r} and {key!r} both map to {target!r}")
            result.model[target] = tensor.reshape(-1) if rule.flatten else tensor
            result.sources[target] = key
        elif rule.kind == CLIP:
            result.clip[key[match.end() :]] = tensor
        elif rule.kind == PROMPT:
            result.prompt_ctx = tensor
        elif rule.kind == CONFIG:
            result.config[rule.target] = rule.value(tensor)
        else:
            result.derived[key] = rule.target
    if unknown:
        shown = ", ".join(unknown[:8]) + (f" and {len(unknown) - 8} more" if len(unknown) > 8 else "")
        raise UnknownOfficialKeysError(
            f"{len(unknown)} tensor(s) of this {FORMATS[fmt]} checkpoint have no place in zegseg: {shown}"
        )
    return result


def config_mismatches(conversion: OfficialConversion, cfg: Mapping) -> List[str]:
    """Where a zegseg config disagrees with the checkpoint: its meta-architecture, and every value the checkpoint
    fixes (:attr:`OfficialConversion.config`).

    Args:
        conversion: from :func:`convert_official_state_dict`.
        cfg: a zegseg config.
    Returns:
        one message per disagreement (empty: the config fits).
    """
    problems = []
    arch = META_ARCHITECTURES[conversion.format]
    found = cfg["MODEL"]["META_ARCHITECTURE"]
    if found != arch:
        problems.append(f"MODEL.META_ARCHITECTURE is {found!r}; this checkpoint needs {arch!r}")
    for key, value in conversion.config.items():
        node = cfg
        for part in key.split("."):
            node = node[part]
        if not math.isclose(float(node), value, rel_tol=1e-4, abs_tol=1e-8):
            problems.append(f"{key} is {node} in the config but {value:.6g} in the checkpoint (set {key} {value:.6g})")
    return problems


# ------------------------------------------------------------------------------------------------------- reading
def load_official_state_dict(path: Union[str, Path]) -> Dict[str, Tensor]:
    """Read an official checkpoint without running code (:func:`~zegseg.checkpoint.read_weights_file`: ``.pth``
    with ``torch.load(weights_only=True)``, detectron2 ``.pkl`` with an unpickler that admits numpy arrays only).

    Args:
        path: a detectron2 checkpoint ``{"model": {...}, ...}`` or a bare state dict.
    Returns:
        key → tensor (numpy arrays converted).
    Raises:
        OfficialCheckpointError: missing file, unreadable or unsafe content, or no state dict inside.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise OfficialCheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        state = read_weights_file(str(path))["model"]
    except CheckpointError as e:
        raise OfficialCheckpointError(str(e)) from None
    if not state:
        raise OfficialCheckpointError(f"{path} holds an empty state dict")
    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}


def save_conversion(
    conversion: OfficialConversion,
    output: Union[str, Path],
    *,
    clip_output: Optional[Union[str, Path]] = None,
    prompt_output: Optional[Union[str, Path]] = None,
) -> List[str]:
    """Write the zegseg checkpoint ``{"model": state_dict}`` and, optionally, the CLIP and prompt files.

    Args:
        conversion: from :func:`convert_official_state_dict`.
        output: the zegseg checkpoint (.pth).
        clip_output: where to write the frozen CLIP (an OpenAI-format state dict that MODEL.CLIP.NAME can name);
            only when the checkpoint holds one.
        prompt_output: where to write the learned prompt ``{"ctx": (n_ctx, W)}`` (for
            MODEL.CLIP.PROMPT_LEARNER.WEIGHTS); only when the checkpoint holds one.
    Returns:
        one line per file written.
    Raises:
        OfficialCheckpointError: an output is asked for that the checkpoint has no content for.
    """
    if clip_output is not None and not conversion.clip:
        raise OfficialCheckpointError("the checkpoint holds no CLIP weights to write")
    if prompt_output is not None and conversion.prompt_ctx is None:
        raise OfficialCheckpointError("the checkpoint holds no learned prompt to write")
    written = []
    torch.save({"model": {k: v.contiguous() for k, v in conversion.model.items()}}, output)
    written.append(f"zegseg checkpoint: {output}")
    if clip_output is not None:
        torch.save({k: v.contiguous() for k, v in conversion.clip.items()}, clip_output)
        written.append(f"CLIP weights: {clip_output} (use MODEL.CLIP.NAME {clip_output})")
    if prompt_output is not None:
        torch.save({"ctx": conversion.prompt_ctx.contiguous()}, prompt_output)
        written.append(f"learned prompt: {prompt_output} (use MODEL.CLIP.PROMPT_LEARNER.WEIGHTS {prompt_output})")
    return written
