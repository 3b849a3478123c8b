#!/usr/bin/env python
"""Train the tiny CLIP of the embedded toy world (``zegseg/model_zoo/toy_clip.pt``, name "ToyCLIP").

An OpenAI-architecture CLIP (ModifiedResNet image tower, 64 px input; 128-wide text transformer with the real BPE
vocabulary) trained contrastively on toy pairs covering ALL classes, as web-scale pre-training covers everything:
masked region crops of single classes with prompt-template captions ("a photo of a red star."), and whole
scenes with their captions plus hard-negative captions (one class name swapped). Region crops are sampled
class-balanced, so each batch holds crops that differ only in shape or only in colour.

Reproducible from ``--seed``; resumes from ``<out-dir>/last.pth`` when interrupted; logs zero-shot top-1 on
held-out region crops. The shipped checkpoint came from (about 15 minutes on 2 CPU cores; on a machine shared with
other jobs, one thread is much faster than two)::

    python tools/train_toy_clip.py --out-dir output/toy_clip --steps 1000 --eval-every 100 --threads 1
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import zegseg  # noqa: F401  (first: its import silences clip's known import-time warning)

# isort: split
import clip
import clip.model
import cv2
import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from zegseg.data.toy import load_world, render_scene
from zegseg.data.toy.crops import eval_region_crops, normalize_crops, scene_region_crops, zero_shot_report

logger = logging.getLogger("train_toy_clip")

_POOL_STREAM = 3  # seed stream of training-pool scenes
_CROP_STREAM = 4  # seed stream of the mask perturbations of those scenes
_STEP_STREAM = 5  # seed stream of each step's sampling and augmentation
_DEFAULT_EXPORT = Path(__file__).resolve().parents[1] / "zegseg" / "model_zoo" / "toy_clip.pt"
TEMPLATES = (
    "a photo of a {}.",
    "a {}.",
    "{}",
    "a photo of the {}.",
    "a cropped photo of a {}.",
    "a masked photo of a {}.",
    "a photo of a small {}.",
    "a photo of a large {}.",
    "this is a photo of a {}.",
    "there is a {} in the scene.",
    "a photo of a {} in the scene.",
    "a good photo of the {}.",
)


def build_clip(args: argparse.Namespace) -> clip.model.CLIP:
    """A randomly initialised OpenAI-architecture CLIP with the requested (tiny) sizes."""
    layers = tuple(int(v) for v in args.vision_layers.split(","))
    return clip.model.CLIP(
        embed_dim=args.embed_dim,
        image_resolution=args.resolution,
        vision_layers=layers,
        vision_width=args.vision_width,
        vision_patch_size=None,
        context_length=args.context_length,
        vocab_size=49408,
        transformer_width=args.text_width,
        transformer_heads=args.text_width // 64,
        transformer_layers=args.text_layers,
    )


def _pool_item(index: int, *, world_file, seed: int, resolution: int, size: int):
    world = load_world(world_file)
    scene = render_scene(world, np.random.default_rng([seed, _POOL_STREAM, index]), size)
    crops, classes = scene_region_crops(
        scene, len(world.classes), resolution, np.random.default_rng([seed, _CROP_STREAM, index])
    )
    small = cv2.resize(scene.image, (resolution, resolution), interpolation=cv2.INTER_AREA)
    present = sorted(int(c) for c in np.unique(scene.label) if c != 255)
    return small, scene.caption, present, crops, classes


def build_pool(args: argparse.Namespace, world) -> dict:
    """Training pool: ``args.pool_scenes`` scenes (downsized, with captions) and their perturbed region crops.
    Cached in ``<out-dir>/pool.npz``; deterministic from the seed."""
    key = f"{args.seed}-{args.pool_scenes}-{args.resolution}-{args.scene_size}-{world.digest}"
    path = Path(args.out_dir) / "pool.npz"
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        if str(data["key"]) == key:
            return {k: data[k] for k in data.files}
    job = partial(_pool_item, world_file=args.world, seed=args.seed, resolution=args.resolution, size=args.scene_size)
    with get_context("spawn").Pool(args.workers) as pool:
        items = list(tqdm(pool.imap(job, range(args.pool_scenes), chunksize=32), total=args.pool_scenes,
                          desc="training pool", unit="scene"))
    k = len(world.classes)
    present = np.zeros((len(items), k), dtype=bool)
    for i, item in enumerate(items):
        present[i, item[2]] = True
    data = {
        "key": np.asarray(key),
        "scenes": np.stack([item[0] for item in items]),
        "captions": np.asarray([item[1] for item in items]),
        "present": present,
        "crops": np.concatenate([item[3] for item in items]),
        "crop_classes": np.concatenate([item[4] for item in items]),
    }
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)
    return data


def _swap_one_class(caption: str, present: np.ndarray, world, rng: np.random.Generator) -> str:
    """A hard negative: the caption with one thing replaced by a thing differing in colour or in shape only."""
    names = world.classes
    things = [i for i in np.flatnonzero(present) if i >= world.num_stuff]
    if not things:
        stuff = [i for i in np.flatnonzero(present)]
        i = stuff[int(rng.integers(len(stuff)))]
        j = int(rng.choice([s for s in range(world.num_stuff) if not present[s]]))
        return caption.replace(names[i], names[j])
    i = things[int(rng.integers(len(things)))]
    color, shape = names[i].split(" ", 1)
    if rng.random() < 0.5:
        options = [f"{c} {shape}" for c in world.colors if c != color]
    else:
        options = [f"{color} {s}" for s in world.shapes if s != shape]
    options = [o for o in options if not present[names.index(o)]] or options
    return caption.replace(names[i], options[int(rng.integers(len(options)))])


def sample_batch(args: argparse.Namespace, world, pool: dict, by_class: list, step: int):
    """Images (N, R, R, 3) uint8, their captions, the key of each pair (equal keys = same content; positives),
    and extra hard-negative captions, for one step. Deterministic in (seed, step)."""
    rng = np.random.default_rng([args.seed, _STEP_STREAM, step])
    k = len(world.classes)
    classes = rng.integers(k, size=args.batch_crops)
    crop_idx = np.asarray([by_class[c][int(rng.integers(len(by_class[c])))] for c in classes])
    crops = pool["crops"][crop_idx].copy()
    is_thing = classes >= world.num_stuff
    rot = rng.integers(4, size=len(crops)) * is_thing
    for r in (1, 2, 3):
        sel = rot == r
        crops[sel] = np.rot90(crops[sel], r, axes=(1, 2))
    flip = rng.random(len(crops)) < 0.5
    crops[flip] = crops[flip][:, :, ::-1]
    names = world.classes
    crop_texts = [TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(names[c]) for c in classes]

    scene_idx = rng.choice(len(pool["scenes"]), size=args.batch_scenes, replace=False)
    scenes = pool["scenes"][scene_idx].copy()
    flip = rng.random(len(scenes)) < 0.5
    scenes[flip] = scenes[flip][:, :, ::-1]
    scene_texts = [str(pool["captions"][i]) for i in scene_idx]
    present = pool["present"][scene_idx]
    _, scene_keys = np.unique(present, axis=0, return_inverse=True)
    negatives = [_swap_one_class(t, p, world, rng) for t, p in zip(scene_texts, present)]

    images = np.concatenate([crops, scenes])
    gain = rng.uniform(0.9, 1.1, size=(len(images), 1, 1, 1))
    images = np.clip(images * gain, 0, 255).astype(np.uint8)
    keys = np.concatenate([classes, k + scene_keys.reshape(-1)])
    return images, crop_texts + scene_texts, keys, negatives


def contrastive_loss(image: torch.Tensor, text: torch.Tensor, keys: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with several positives.

    Args:
        image: (N, D) L2-normalised; text: (N + M, D) L2-normalised, the first N paired with the images and the
            last M hard negatives; keys: (N,) pair keys, equal keys are positives of each other; scale: logit scale.
    """
    n = image.shape[0]
    logits = scale * image @ text.T
    pos = (keys[:, None] == keys[None, :]).float()
    target_i = F.pad(pos / pos.sum(1, keepdim=True), (0, text.shape[0] - n))
    loss_i = -(target_i * logits.log_softmax(dim=1)).sum(1).mean()
    loss_t = -((pos / pos.sum(0, keepdim=True)) * logits[:, :n].log_softmax(dim=0)).sum(0).mean()
    return (loss_i + loss_t) / 2


def encode_text_trimmed(model: clip.model.CLIP, tokens: torch.Tensor) -> torch.Tensor:
    """``model.encode_text(tokens)`` computed on the tokens up to the batch's last end-of-text token only.

    The text transformer is causal and reads its output at the end-of-text token, so dropping the padding after
    it gives the same result at a fraction of the cost. Returns (N, D) text features.
    """
    length = int(tokens.argmax(dim=-1).max()) + 1
    blocks = list(model.transformer.resblocks)
    full_masks = [b.attn_mask for b in blocks]
    try:
        for block, mask in zip(blocks, full_masks):
            block.attn_mask = mask[:length, :length]
        x = model.token_embedding(tokens[:, :length]) + model.positional_embedding[:length]
        x = model.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)
    finally:
        for block, mask in zip(blocks, full_masks):
            block.attn_mask = mask
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def export_fp16(model: clip.model.CLIP, path: Path) -> None:
    """Save a plain state dict with every floating tensor in fp16, atomically.

    A superset of OpenAI's ``convert_weights`` (which leaves the 49408-row token embedding in fp32 and would make
    the file twice as large); ``clip.model.build_model`` loads it either way.
    """
    state = {k: (v.half() if v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _lr_at(step: int, args: argparse.Namespace) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * t)))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or name == "logit_scale" else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _arch_args(args: argparse.Namespace) -> dict:
    names = ("embed_dim", "resolution", "vision_layers", "vision_width", "context_length", "text_width", "text_layers")
    return {n: getattr(args, n) for n in names}


def evaluate(model, world, eval_set) -> dict:
    was_training = model.training
    model.eval()
    report = zero_shot_report(model, world, *eval_set)
    model.train(was_training)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", default="output/toy_clip", help="checkpoints, training pool cache, metrics")
    parser.add_argument("--export", default=str(_DEFAULT_EXPORT), help="where the final fp16 state dict goes")
    parser.add_argument("--world", default=None, help="class list / split JSON (default: the packaged world.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-crops", type=int, default=192, help="region-crop pairs per batch")
    parser.add_argument("--batch-scenes", type=int, default=64, help="whole-scene pairs per batch")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--warmup", type=int, default=150)
    parser.add_argument("--pool-scenes", type=int, default=6000, help="scenes in the cached training pool")
    parser.add_argument("--scene-size", type=int, default=160, help="size the pool scenes are rendered at")
    parser.add_argument("--resolution", type=int, default=64, help="CLIP input resolution (multiple of 32)")
    parser.add_argument("--vision-layers", default="1,1,1,1", help="ModifiedResNet blocks per stage")
    parser.add_argument("--vision-width", type=int, default=16, help="ModifiedResNet width (attention pool: 32x)")
    parser.add_argument("--embed-dim", type=int, default=256)
    parser.add_argument("--text-width", type=int, default=128, help="multiple of 64")
    parser.add_argument("--text-layers", type=int, default=3)
    parser.add_argument("--context-length", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--eval-per-class", type=int, default=20)
    parser.add_argument("--save-every-min", type=float, default=3.0, help="checkpoint (and export) interval")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 on a busy machine)")
    parser.add_argument("--workers", type=int, default=2, help="processes building the training pool")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world = load_world(args.world)

    torch.manual_seed(args.seed)
    model = build_clip(args).to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("CLIP: %.2fM parameters, arch %s", n_params / 1e6, _arch_args(args))

    step = 0
    ckpt_path = out_dir / "last.pth"
    if ckpt_path.is_file():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ckpt["arch"] != _arch_args(args) or ckpt["seed"] != args.seed:
            raise ValueError(f"{ckpt_path} was trained with {ckpt['arch']} seed {ckpt['seed']}; use another --out-dir")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"])
        step = ckpt["step"]
        logger.info("Resumed from %s at step %d", ckpt_path, step)

    t0 = time.time()
    pool = build_pool(args, world)
    longest = max(int((clip.tokenize([str(c)], context_length=512)[0] > 0).sum()) for c in pool["captions"])
    if longest > args.context_length:
        raise ValueError(f"--context-length {args.context_length} < longest caption ({longest} tokens)")
    by_class = [np.flatnonzero(pool["crop_classes"] == c) for c in range(len(world.classes))]
    logger.info("Training pool: %d scenes, %d region crops (%.0fs); longest caption %d tokens",
                len(pool["scenes"]), len(pool["crops"]), time.time() - t0, longest)
    eval_set = eval_region_crops(world, args.eval_per_class, args.resolution, seed=args.seed + 1000)

    def save() -> None:
        ckpt = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                "torch_rng": torch.get_rng_state(), "arch": _arch_args(args), "seed": args.seed}
        tmp = out_dir / "last.pth.tmp"
        torch.save(ckpt, tmp)
        os.replace(tmp, ckpt_path)
        export_fp16(model, out_dir / "toy_clip_fp16.pt")

    model.train()
    last_save = time.time()
    bar = tqdm(total=args.steps, initial=step, desc="toy CLIP", unit="step")
    while step < args.steps:
        images, texts, keys, negatives = sample_batch(args, world, pool, by_class, step)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, args)
        x = normalize_crops(images, device)
        n_crops = args.batch_crops
        crop_texts, crop_index = np.unique(texts[:n_crops], return_inverse=True)
        crop_tokens = clip.tokenize(list(crop_texts), context_length=args.context_length).to(device)
        scene_tokens = clip.tokenize(texts[n_crops:] + negatives, context_length=args.context_length).to(device)
        image = F.normalize(model.encode_image(x), dim=-1)
        crop_text = encode_text_trimmed(model, crop_tokens)[torch.from_numpy(crop_index.reshape(-1)).to(device)]
        text = F.normalize(torch.cat([crop_text, encode_text_trimmed(model, scene_tokens)]), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        loss = contrastive_loss(image, text, torch.from_numpy(keys).to(device), scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{scale.item():.1f}")
        if step % args.eval_every == 0 or step == args.steps:
            report = evaluate(model, world, eval_set)
            logger.info("step %d loss %.3f zero-shot %s", step, loss.item(),
                        " ".join(f"{k}={v:.3f}" for k, v in report.items()))
            with open(out_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps({"step": step, "loss": loss.item(), **report}) + "\n")
        if time.time() - last_save > 60 * args.save_every_min or step == args.steps:
            save()
            last_save = time.time()
    bar.close()
    export_fp16(model, Path(args.export))
    size_mb = Path(args.export).stat().st_size / 2**20
    logger.info("Exported %s (%.1f MB) after %d steps", args.export, size_mb, step)


if __name__ == "__main__":
    main()
