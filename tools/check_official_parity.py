#!/usr/bin/env python
"""Compare zegseg with the official implementation on identical random weights.

The official model (ZegFormer: dingjiansw101/ZegFormer; two-stage: MendelXu/zsseg.baseline) is built from its own
COCO-Stuff config in a separate Python process that puts ``--official-root`` on its path (the official code is
only imported there, never copied). Its random weights are converted with :mod:`zegseg.checkpoint.official` and
loaded into zegseg's model built from the matching zegseg config. Both get the same random CLIP (saved once,
fp16-representable values, ``logit_scale = ln 100`` as in OpenAI's releases), the same image and the same
vocabulary (COCO-Stuff's 171 classes, 15 unseen). Everything runs in fp32 on the CPU; the official code's fp16
casts and its hard-coded ``.cuda()`` are made no-ops in its process.

Compared, as max / mean absolute difference and argmax (for masks: sign) agreement:
  the text embeddings of the vocabulary each classifier uses (segment classifier, CLIP image branch);
  (a) the segmentation network: pred_logits and pred_masks of the last decoder layer, and of the earlier layers;
  (b) the final per-pixel scores with the CLIP branch off (segment classifier only) and on.
Results also go to <workdir>/parity.json, the outputs to <workdir>/official.pt and <workdir>/zegseg.pt.

Examples:
  python tools/check_official_parity.py --official-root /path/to/ZegFormer --model zegformer
  python tools/check_official_parity.py --official-root /path/to/zsseg.baseline --model two_stage
  # the key/shape fixtures of tests/fixtures/ (no forward pass):
  python tools/check_official_parity.py --official-root /path/to/ZegFormer --model zegformer \
      --write-fixture tests/fixtures/official_zegformer_coco_stuff_r101_vit16.json

The official code needs its own dependencies importable (ZegFormer: timm; add folders with --official-pythonpath);
zsseg.baseline's training-only ``wandb`` import is stubbed when wandb is absent.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import yaml
from torch.nn import functional as F

REPO = Path(__file__).resolve().parents[1]
VOCAB_NAME = "zegseg_parity_vocabulary"
READY_TAG = "[parity-worker] ready"  # a serving worker's lines to its driver (see serve_timings)
TIMING_TAG = "[parity-worker] seconds"

MODELS = {
    "zegformer": {
        "format": "zegformer",
        "official_config": "configs/coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff_gzss_eval.yaml",
        "fixture_config": "configs/coco-stuff/zegformer_R101_bs32_60k_vit16_coco-stuff_gzss_eval.yaml",
        "zegseg_config": "configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml",
        "pythonpath": ["."],
        "repo": "dingjiansw101/ZegFormer",
    },
    "two_stage": {
        "format": "zsseg",
        "official_config": "configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_vild_prompt_bs32_60k.yaml",
        # The released zero-shot checkpoint's config (learned prompt): its keys include the prompt learner's.
        "fixture_config": "configs/coco-stuff-164k-156/zero_shot_maskformer_R101c_bs32_60k.yaml",
        "zegseg_config": "configs/coco_stuff/two_stage_R101_vit16.yaml",
        "pythonpath": ["third_party/CLIP", "."],
        "repo": "MendelXu/zsseg.baseline",
    },
}

CLIP_ARCHS = {
    # OpenAI's ViT-B/16 (clip.model.CLIP arguments).
    "ViT-B/16": dict(
        embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
        context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12,
    ),
    # ViT-B/16's image tower with a one-layer text tower: for timing per image, where both implementations have
    # embedded the vocabulary before the first image (so the text tower's size changes no per-image time).
    "ViT-B/16-image": dict(
        embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
        context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1,
    ),
    # Same interfaces (512-d embeddings, 224 px, 77 tokens), one narrow layer per tower: for quick checks.
    "tiny": dict(
        embed_dim=512, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=16,
        context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1,
    ),
}


class ParityError(RuntimeError):
    """A step of the check failed; the message is one line."""


# ================================================================================ official side (worker process)
def _identity(self, *args, **kwargs):
    return self


def _perturb(model: torch.nn.Module, seed: int, skip: Sequence[str]) -> None:
    """Make every 1-D tensor non-trivial (norm weights, biases, running means; running variances in [0.5, 1.5]) so
    that a swapped or mis-mapped tensor cannot hide behind default ones and zeros."""
    g = torch.Generator().manual_seed(seed + 1)
    for name, t in model.state_dict().items():
        if not t.is_floating_point() or any(s in name for s in skip):
            continue
        if name.endswith("running_var"):
            t.copy_(torch.rand(t.shape, generator=g) + 0.5)
        elif t.ndim == 1:
            t.add_(0.1 * torch.randn(t.shape, generator=g))


class _CodeTag:
    """Stands for a YAML value that a ``!!python/...`` tag would compute by running code (never run here)."""

    def __init__(self, tag: str):
        self.tag = tag


class _OfficialConfigLoader(yaml.SafeLoader):
    """Safe YAML that reads ``!!python/...`` tags as :class:`_CodeTag` placeholders instead of running them."""


_OfficialConfigLoader.add_multi_constructor(
    "tag:yaml.org,2002:python/", lambda loader, suffix, node: _CodeTag("!!python/" + suffix)
)


def _read_official_yaml(path: Path) -> Dict:
    """A config file and its ``_BASE_`` chain (later files override earlier ones), safely."""
    with open(path) as f:
        data = yaml.load(f, Loader=_OfficialConfigLoader) or {}
    base = data.pop("_BASE_", None)
    if base is None:
        return data
    merged = _read_official_yaml(path.parent / base)

    def merge(src: Dict, dst: Dict) -> None:
        for k, v in src.items():
            if isinstance(v, dict) and isinstance(dst.get(k), dict):
                merge(v, dst[k])
            else:
                dst[k] = v

    merge(data, merged)
    return merged


def _drop_code_tags(node: Dict, prefix: str = "") -> List[str]:
    """Remove the placeholders of :func:`_read_official_yaml` in place; returns the keys removed."""
    dropped = []
    for k in list(node):
        if isinstance(node[k], _CodeTag):
            dropped.append(f"{prefix}{k} ({node.pop(k).tag})")
        elif isinstance(node[k], dict):
            dropped += _drop_code_tags(node[k], f"{prefix}{k}.")
    return dropped


def merge_official_config(cfg, path: Path, workdir: Path) -> None:
    """Merge an official config into ``cfg`` without running code: values computed by ``!!python/...`` tags (the
    official base configs compute the training scales with ``eval``) keep the defaults, which inference never
    reads; the keys concerned are printed."""
    data = _read_official_yaml(path)
    dropped = _drop_code_tags(data)
    if dropped:
        print(f"[official] not evaluated (code in the YAML; training only): {', '.join(dropped)}", flush=True)
    flat = workdir / "official_config.yaml"
    flat.write_text(yaml.safe_dump(data))
    cfg.merge_from_file(str(flat), allow_unsafe=False)


def _official_zegformer(spec: Dict, clip_state: Dict, root: Path, config: str, keys_only: bool):
    import mask_former
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config
    from mask_former.third_party import clip as official_clip
    from mask_former.third_party.model import build_model as build_clip

    def load(name, device="cpu", jit=False):
        model = build_clip(dict(clip_state)).eval()
        if keys_only:  # names, shapes and dtypes only (CLIP stays fp16, as in the official runs): skip the prompts
            model.encode_text = lambda text: torch.randn(len(text), model.text_projection.shape[1])
            return model, None
        return model.float(), None

    official_clip.load = load
    work = Path(spec["workdir"])
    (work / "train_classes.json").write_text(json.dumps(spec["names"][:1]))  # training vocabulary: unused here
    (work / "test_classes.json").write_text(json.dumps(spec["names"]))
    unseen = [n for n, u in zip(spec["names"], spec["unseen"]) if u]
    MetadataCatalog.get(VOCAB_NAME).set(stuff_classes=list(spec["names"]), val_extra_classes=unseen)
    cfg = get_cfg()
    add_deeplab_config(cfg)
    mask_former.add_mask_former_config(cfg)
    merge_official_config(cfg, root / config, Path(spec["workdir"]))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "DATASETS.TEST", (VOCAB_NAME,), "DATASETS.VAL_ALL", (VOCAB_NAME,),
        "MODEL.SEM_SEG_HEAD.TRAIN_CLASS_JSON", str(work / "train_classes.json"),
        "MODEL.SEM_SEG_HEAD.TEST_CLASS_JSON", str(work / "test_classes.json"),
    ])
    torch.manual_seed(spec["seed"])
    model = build_model(cfg).eval()
    _perturb(model, spec["seed"], skip=("clip_model.", "logit_scale", "empty_weight"))

    def network(tensor):
        return model.sem_seg_head(model.backbone(tensor))

    def final(image, clip_branch: bool):
        model.clip_classification = clip_branch
        h, w = image.shape[-2:]
        return model([{"image": image, "height": h, "width": w}])[0]["sem_seg"]

    def text():
        predictor = model.sem_seg_head.predictor
        return {"segment": predictor.text_features_test, "region": predictor.text_features_test_clip}

    return model, network, final, text


def _official_zsseg(spec: Dict, clip_state: Dict, root: Path, config: str, keys_only: bool):
    if importlib.util.find_spec("wandb") is None:  # imported by its training logger only
        sys.modules["wandb"] = types.ModuleType("wandb")
    import clip as official_clip  # zsseg.baseline's own copy (third_party/CLIP is first on the path)
    import mask_former
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config

    official_clip.load = lambda name, device="cpu", jit=False: (
        official_clip.model.build_model(dict(clip_state)).float().eval(),
        None,
    )
    flags = [0 if u else 1 for u in spec["unseen"]]
    for name in (VOCAB_NAME,):
        MetadataCatalog.get(name).set(stuff_classes=list(spec["names"]), trainable_flag=flags)
    cfg = get_cfg()
    add_deeplab_config(cfg)
    mask_former.add_mask_former_config(cfg)
    merge_official_config(cfg, root / config, Path(spec["workdir"]))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATASETS.TEST", (VOCAB_NAME,)])
    torch.manual_seed(spec["seed"])
    model = build_model(cfg).eval()
    _perturb(model, spec["seed"], skip=("clip_model.", "empty_weight", "clip_adapter.pixel_", "_signal"))
    adapter = model.clip_adapter
    names = list(spec["names"])

    def network(tensor):
        out = model.sem_seg_head(model.backbone(tensor))
        text = adapter.get_text_features(names)  # (K + 1, D): the classes and the normalised "no object"

        def logits(embeddings):
            return adapter.get_sim_logits(text, adapter.normalize_feature(embeddings))

        out["pred_logits"] = logits(out["pred_logits"])
        for aux in out.get("aux_outputs", []):
            aux["pred_logits"] = logits(aux["pred_logits"])
        return out

    def final(image, clip_branch: bool):
        model.clip_ensemble = clip_branch
        h, w = image.shape[-2:]
        return model([{"image": image, "height": h, "width": w, "meta": {"dataset_name": VOCAB_NAME}}])[0]["sem_seg"]

    def text():
        classes = adapter.get_text_features(names)[:-1]  # one embedding per class serves both classifiers
        return {"segment": classes, "region": classes}

    return model, network, final, text


def run_worker(spec_path: Path) -> None:
    """Build the official model, run it, and save its weights and outputs (``spec["output"]``)."""
    from detectron2.structures import ImageList

    spec = json.loads(spec_path.read_text())
    root = Path(spec["official_root"])
    for p in reversed(spec["pythonpath"]):
        sys.path.insert(0, p)
    keys_only = spec["keys_only"]
    torch.Tensor.cuda = _identity  # official ZegFormer embeds its prompts with a hard-coded .cuda()
    if not keys_only:  # fp32 comparison: no fp16 casts (CLIP's convert_weights, ZegFormer's CLIP logits)
        torch.Tensor.half = _identity
    clip_state = torch.load(spec["clip"], map_location="cpu", weights_only=True)
    builder = {"zegformer": _official_zegformer, "zsseg": _official_zsseg}[spec["format"]]
    start = time.perf_counter()
    model, network, final, text = builder(spec, clip_state, root, spec["config"], keys_only)
    state = model.state_dict()
    payload = {
        "tensors": [[k, list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in state.items()],
        "build_s": time.perf_counter() - start,
    }
    if not keys_only:
        payload["state_dict"] = {k: v for k, v in state.items() if "clip_model." not in k}
        image = torch.load(spec["image"], weights_only=True)
        with torch.no_grad():
            payload["text"] = text()
            images = [(image.float() - model.pixel_mean) / model.pixel_std]
            out = network(ImageList.from_tensors(images, model.size_divisibility).tensor)
            payload["network"] = {
                "pred_logits": out["pred_logits"][0],
                "pred_masks": out["pred_masks"][0],
                "aux_logits": torch.stack([a["pred_logits"][0] for a in out["aux_outputs"]]),
                "aux_masks": torch.stack([a["pred_masks"][0] for a in out["aux_outputs"]]),
            }
            timings = {}
            for branch in (False, True):
                start = time.perf_counter()
                payload[f"scores_clip_{'on' if branch else 'off'}"] = final(image, branch)
                timings[f"final_clip_{'on' if branch else 'off'}_s"] = time.perf_counter() - start
            payload["timings"] = timings
    torch.save(payload, spec["output"])
    if spec.get("serve"):
        print(READY_TAG, flush=True)
        serve_timings(final)


def serve_timings(final) -> None:
    """Worker side of timed runs: for each line of stdin naming a saved (3, H, W) uint8 image, run the official
    model on it with the CLIP branch on and answer with one line: wall seconds and this process's CPU seconds."""
    for line in sys.stdin:
        image = torch.load(line.strip(), weights_only=True)
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.no_grad():
            final(image, True)
        print(f"{TIMING_TAG} {time.perf_counter() - wall:.6f} {time.process_time() - cpu:.6f}", flush=True)


# ==================================================================================== zegseg side (main process)
def random_clip_state(arch: str, seed: int) -> Dict[str, torch.Tensor]:
    """A random OpenAI-architecture CLIP state dict: fp16-representable values (as OpenAI's releases, so fp16
    round trips in either loader change nothing), ``logit_scale = ln 100`` and the metadata entries of OpenAI's
    TorchScript archives (the official ZegFormer loader requires them)."""
    import clip.model

    torch.manual_seed(seed)
    model = clip.model.CLIP(**CLIP_ARCHS[arch])
    state = {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state["logit_scale"] = torch.tensor(math.log(100.0))
    a = CLIP_ARCHS[arch]
    state.update(
        input_resolution=torch.tensor(a["image_resolution"]),
        context_length=torch.tensor(a["context_length"]),
        vocab_size=torch.tensor(a["vocab_size"]),
    )
    return state


def synthetic_image(size: int, seed: int) -> torch.Tensor:
    """(3, size, size) uint8 RGB: smooth random colour fields plus a little noise (regions for masks to find)."""
    g = torch.Generator().manual_seed(seed)
    smooth = F.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(size, size), mode="bicubic", align_corners=False)
    image = 0.9 * smooth[0].clamp(0, 1) + 0.1 * torch.rand(3, size, size, generator=g)
    return (image * 255).round().clamp(0, 255).to(torch.uint8)


def _official_spec(args: argparse.Namespace, workdir: Path, spec: Dict) -> Tuple[Path, Dict]:
    root = Path(args.official_root).resolve()
    model = MODELS[args.model]
    spec = {
        **spec,
        "official_root": str(root),
        "pythonpath": [str(root / p) for p in model["pythonpath"]]
        + [str(Path(p).resolve()) for p in args.official_pythonpath],
        "format": model["format"],
        "output": str(workdir / "official.pt"),
        "workdir": str(workdir),
    }
    spec_path = workdir / "official_spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    return spec_path, spec


def _worker_command(args: argparse.Namespace, spec_path: Path) -> List[str]:
    # A fresh interpreter in the official root: its `mask_former` (and, for zsseg.baseline, its `clip`) must not
    # meet zegseg's imports.
    return [args.python, str(Path(__file__).resolve()), "--worker", str(spec_path)]


def run_official(args: argparse.Namespace, workdir: Path, spec: Dict) -> Dict:
    """Run the worker process on ``spec`` and return what it saved."""
    spec_path, spec = _official_spec(args, workdir, spec)
    proc = subprocess.run(_worker_command(args, spec_path), cwd=spec["official_root"])
    if proc.returncode != 0:
        raise ParityError(f"the official model failed to build or run (exit {proc.returncode}); its traceback is above")
    return torch.load(spec["output"], map_location="cpu", weights_only=True)


class OfficialServer:
    """The official model kept alive in its worker process, timing images on request (:func:`serve_timings`), so
    that a benchmark can alternate between the two implementations image by image."""

    def __init__(self, args: argparse.Namespace, workdir: Path, spec: Dict):
        spec_path, spec = _official_spec(args, workdir, {**spec, "serve": True})
        self.workdir = workdir
        self.proc = subprocess.Popen(
            _worker_command(args, spec_path), cwd=spec["official_root"], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )
        self._read_until(READY_TAG)
        self.payload = torch.load(spec["output"], map_location="cpu", weights_only=True)

    def _read_until(self, tag: str) -> str:
        for line in self.proc.stdout:
            if line.startswith(tag):
                return line
            print(line, end="")  # the official code's own output
        raise ParityError(f"the official model's process ended (exit {self.proc.wait()}); its traceback is above")

    def time_image(self, image: torch.Tensor, index: int) -> Tuple[float, float]:
        """Wall and CPU seconds of the official model on ``image`` (3, H, W) uint8, CLIP branch on."""
        path = self.workdir / f"timing_image_{index}.pt"
        torch.save(image, path)
        self.proc.stdin.write(f"{path}\n")
        self.proc.stdin.flush()
        wall, cpu = self._read_until(TIMING_TAG).split()[-2:]
        return float(wall), float(cpu)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait()


def build_zegseg(args: argparse.Namespace, workdir: Path, names: List[str], unseen: List[bool]):
    from detectron2.modeling import build_model

    from zegseg.engine.setup_config import load_config

    opts = [
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.CLIP.NAME", str(workdir / "clip.pt"),
        "MODEL.CLIP.EMBED_CACHE_DIR", str(workdir / "text_cache"),
        "DATASETS.TRAIN", "()",
        "TEST.VOCABULARY", json.dumps(names),
        "TEST.UNSEEN_CLASSES", json.dumps([n for n, u in zip(names, unseen) if u]),
        "TEST.AMP", "False",
    ] + list(args.opts)
    cfg = load_config(str(args.config or REPO / MODELS[args.model]["zegseg_config"]), opts)
    return cfg, build_model(cfg).eval()


def compare(name: str, ours: torch.Tensor, ref: torch.Tensor, agreement: str) -> Dict:
    """Max / mean absolute difference and agreement: "argmax" over the last dim (or the first with
    "argmax_classes_first"), "sign" for mask logits, "" for none."""
    if ours.shape != ref.shape:
        error = f"shape {list(ours.shape)} vs official {list(ref.shape)}"
        return {"output": name, "shape": list(ref.shape), "error": error}
    diff = (ours.double() - ref.double()).abs()
    extra = {}
    if agreement == "":
        agree = None
    elif agreement == "sign":
        agree = ((ours > 0) == (ref > 0)).double().mean()
    else:
        dim = 0 if agreement == "argmax_classes_first" else -1
        flipped = ours.argmax(dim) != ref.argmax(dim)
        agree = 1.0 - flipped.double().mean()
        if flipped.any():  # how close to a tie the official scores are where the argmax differs
            top2 = ref.double().topk(2, dim=dim).values
            margin = (top2.select(dim, 0) - top2.select(dim, 1))[flipped]
            extra = {"flips": int(flipped.sum()), "max_flip_margin": float(margin.max())}
    return {
        "output": name,
        "shape": list(ref.shape),
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "official_max_abs": float(ref.abs().max()),
        "agreement": None if agree is None else float(agree),
        "agreement_kind": {"": None, "sign": "sign"}.get(agreement, "argmax"),
        **extra,
    }


def _zegseg_final(model, image: torch.Tensor, clip_branch: bool) -> Optional[torch.Tensor]:
    """zegseg's per-pixel scores with the CLIP image branch on or switched off (segment classifier only)."""
    saved = {k: getattr(model, k) for k in ("region_classifier", "query_selector") if hasattr(model, k)}
    if not clip_branch and "region_classifier" not in saved:
        return None
    try:
        if not clip_branch:
            for k in saved:
                setattr(model, k, None)
        h, w = image.shape[-2:]
        with torch.no_grad():
            return model([{"image": image, "height": h, "width": w}])[0]["sem_seg"]
    finally:
        for k, v in saved.items():
            setattr(model, k, v)


def _region_text(model) -> torch.Tensor:
    """(K, D) text embeddings zegseg's CLIP image branch compares crops with."""
    return getattr(model, "region_text_embeddings", model.test_text_embeddings)


def print_table(rows: List[Dict]) -> None:
    header = ("output", "shape", "max |diff|", "mean |diff|", "max |official|", "agree")
    print("{:34s} {:>16s} {:>11s} {:>11s} {:>14s} {:>9s}".format(*header))
    for r in rows:
        if "error" in r:
            print(f"{r['output']:34s} {str(tuple(r['shape'])):>16s}  {r['error']}")
            continue
        agree = "-" if r["agreement"] is None else f"{100 * r['agreement']:.3f}%"
        flips = ""
        if "flips" in r:
            flips = f"  ({r['flips']} flipped; official top-2 margin there <= {r['max_flip_margin']:.2g})"
        print(
            f"{r['output']:34s} {str(tuple(r['shape'])):>16s} {r['max_abs']:11.3g} {r['mean_abs']:11.3g} "
            f"{r['official_max_abs']:14.4g} {agree:>9s}{flips}"
        )


def write_fixture(args: argparse.Namespace, payload: Dict) -> None:
    model = MODELS[args.model]
    fixture = {
        "source": {
            "repository": model["repo"],
            "commit": args.official_commit or _git_head(Path(args.official_root)),
            "config": model["fixture_config"],
            "clip": args.clip,
            "how": "tools/check_official_parity.py --write-fixture (official model built with random weights)",
        },
        "tensors": payload["tensors"],
    }
    lines = ",\n".join(json.dumps(t) for t in fixture["tensors"])
    text = f'{{"source": {json.dumps(fixture["source"], indent=1)},\n"tensors": [\n{lines}\n]}}\n'
    Path(args.write_fixture).write_text(text)
    print(f"wrote {len(payload['tensors'])} tensor names and shapes to {args.write_fixture}")


def _git_head(root: Path) -> Optional[str]:
    proc = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def load_official_weights(args: argparse.Namespace, cfg, model: torch.nn.Module, state_dict: Dict) -> None:
    """Convert the official model's weights and load them into zegseg's ``model`` (every key must fit)."""
    from zegseg.checkpoint.official import config_mismatches, convert_official_state_dict

    conversion = convert_official_state_dict(state_dict, MODELS[args.model]["format"])
    for line in conversion.summary():
        print(f"[parity] converter: {line}")
    problems = config_mismatches(conversion, cfg)
    if problems:
        print(f"[parity] config vs checkpoint: {'; '.join(problems)}")
    incompatible = model.load_state_dict(conversion.model, strict=False)
    if incompatible.missing_keys or incompatible.unexpected_keys:
        raise ParityError(
            f"converted weights do not fit zegseg's model: missing {incompatible.missing_keys[:5]} "
            f"({len(incompatible.missing_keys)}), unexpected {incompatible.unexpected_keys[:5]} "
            f"({len(incompatible.unexpected_keys)})"
        )
    model.eval()


def check(args: argparse.Namespace) -> List[Dict]:
    import zegseg  # noqa: F401  (registers the datasets)
    from zegseg.modeling.vocabulary import dataset_vocabulary

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="zegseg_parity_")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    names, unseen = dataset_vocabulary("coco_stuff_val_all_sem_seg")
    torch.save(random_clip_state(args.clip, args.seed), workdir / "clip.pt")
    image = synthetic_image(args.size, args.seed)
    torch.save(image, workdir / "image.pt")
    keys_only = bool(args.write_fixture)
    spec = {
        "names": names, "unseen": unseen, "seed": args.seed, "keys_only": keys_only,
        "clip": str(workdir / "clip.pt"), "image": str(workdir / "image.pt"),
        "config": MODELS[args.model]["fixture_config" if keys_only else "official_config"],
    }
    print(f"[parity] official {args.model} ({args.official_root}), CLIP {args.clip}, workdir {workdir}", flush=True)
    start = time.perf_counter()
    official = run_official(args, workdir, spec)
    print(f"[parity] official model: {time.perf_counter() - start:.0f} s", flush=True)
    if keys_only:
        write_fixture(args, official)
        return []

    start = time.perf_counter()
    cfg, model = build_zegseg(args, workdir, names, unseen)
    load_official_weights(args, cfg, model, official["state_dict"])
    rows = [
        compare("text embeddings, segment classifier", model.test_text_embeddings, official["text"]["segment"], ""),
        compare("text embeddings, CLIP image branch", _region_text(model), official["text"]["region"], ""),
    ]
    with torch.no_grad():
        out = model.predict(model.preprocess_images([{"image": image}]).tensor)
    net = official["network"]
    rows.append(compare("pred_logits (last layer)", out["pred_logits"][0], net["pred_logits"], "argmax"))
    rows.append(compare("pred_masks (last layer)", out["pred_masks"][0], net["pred_masks"], "sign"))
    aux_logits = torch.stack([a["pred_logits"][0] for a in out["aux_outputs"]])
    aux_masks = torch.stack([a["pred_masks"][0] for a in out["aux_outputs"]])
    rows.append(compare(f"pred_logits ({len(aux_logits)} earlier layers)", aux_logits, net["aux_logits"], "argmax"))
    rows.append(compare(f"pred_masks ({len(aux_masks)} earlier layers)", aux_masks, net["aux_masks"], "sign"))
    timings = {"official": official.get("timings", {}), "zegseg": {}}
    saved = {"network": {"pred_logits": out["pred_logits"][0], "pred_masks": out["pred_masks"][0]}}
    for branch in (False, True):
        key = f"scores_clip_{'on' if branch else 'off'}"
        t0 = time.perf_counter()
        ours = _zegseg_final(model, image, branch)
        timings["zegseg"][f"final_clip_{'on' if branch else 'off'}_s"] = time.perf_counter() - t0
        label = f"scores, CLIP branch {'on' if branch else 'off'}"
        saved[key] = ours
        if ours is None:
            error = "zegseg model has no CLIP branch to switch off"
            rows.append({"output": label, "shape": list(official[key].shape), "error": error})
        else:
            rows.append(compare(label, ours, official[key], "argmax_classes_first"))
    print(f"[parity] zegseg model: {time.perf_counter() - start:.0f} s", flush=True)
    print_table(rows)
    result = {
        "model": args.model, "clip": args.clip, "seed": args.seed, "size": args.size,
        "official_root": str(args.official_root),
        "zegseg_config": str(args.config or MODELS[args.model]["zegseg_config"]),
        "opts": list(args.opts), "rows": rows, "timings": timings,
    }
    (workdir / "parity.json").write_text(json.dumps(result, indent=1))
    torch.save(saved, workdir / "zegseg.pt")
    print(f"[parity] results: {workdir / 'parity.json'}")
    return rows


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official-root", help="official checkout: ZegFormer (zegformer), zsseg.baseline (two_stage)")
    parser.add_argument("--model", choices=sorted(MODELS), help="which model to compare")
    parser.add_argument("--config", help="zegseg config (default: the matching configs/coco_stuff/ reference config)")
    parser.add_argument("--clip", choices=sorted(CLIP_ARCHS), default="ViT-B/16", help="random CLIP architecture")
    parser.add_argument("--size", type=int, default=320, help="square test image size in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights, the CLIP and the image")
    parser.add_argument("--workdir", help="folder for the shared CLIP, image and outputs (default: a new temp dir)")
    parser.add_argument("--official-pythonpath", nargs="*", default=[], help="folders with the official code's deps")
    parser.add_argument("--python", default=sys.executable, help="interpreter that runs the official code")
    parser.add_argument("--write-fixture", help="only write the official model's tensor names and shapes to this JSON")
    parser.add_argument("--official-commit", help="the official checkout's commit, for the fixture (default: git HEAD)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="zegseg config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if not args.worker:
        if not args.official_root or not args.model:
            parser.error("--official-root and --model are required")
        if not (Path(args.official_root) / "mask_former").is_dir():
            parser.error(f"--official-root {args.official_root!r} is not an official checkout (no mask_former/ folder)")
        if args.write_fixture and args.clip != "ViT-B/16":
            parser.error("fixtures record the ViT-B/16 model: leave --clip at its default")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(Path(args.worker))
        return 0
    try:
        check(args)
    except ParityError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
