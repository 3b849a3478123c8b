#!/usr/bin/env python
"""Rebuild the model zegseg ships: the toy ZegFormer that the demo, ``zegseg.Predictor`` and the web app use when
MODEL.WEIGHTS is empty (``MODEL.DEFAULT_WEIGHTS`` of configs/toy/zegformer.yaml).

    # train configs/toy/zegformer.yaml (~10 min on 2 CPUs, README "Results on the toy world"), then convert,
    # evaluate and ship:
    flock /tmp/zegseg-heavy.lock env OMP_NUM_THREADS=2 python tools/build_default_model.py
    # or convert, evaluate and ship a checkpoint trained with that config already:
    flock /tmp/zegseg-heavy.lock env OMP_NUM_THREADS=2 python tools/build_default_model.py \
        --weights output/toy_zegformer/model_final.pth

Steps: (1) unless ``--weights`` is given, ``python train_net.py --config-file CONFIG OUTPUT_DIR WORK_DIR``
(``--resume`` continues an interrupted run); (2) keep the model weights only (no optimizer state) and round the
floating-point ones to float16; (3) evaluate GZS3 on the config's test set (``DATASETS.TEST``, exactly as
``train_net.py --eval-only`` does) with the float32 weights and with the rounded ones; (4) ship the float16 file
when it loses at most ``--fp16-tolerance`` points of mIoU, hIoU, seen and unseen mIoU, else the float32 one, to
``zegseg/model_zoo/toy_zegformer.pth``, and write the measured numbers next to it
(``zegseg/model_zoo/toy_zegformer.json``). Both files are replaced atomically and only when every step succeeded.
Copy the numbers of the JSON into README.md ("Try it") when they change.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Mapping

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zegseg  # noqa: E402,F401  (registers the datasets and models)
from zegseg.checkpoint import ZegsegCheckpointer, read_weights_file  # noqa: E402
from zegseg.engine import ZegsegTrainer  # noqa: E402
from zegseg.engine.setup_config import load_config  # noqa: E402
from zegseg.model_zoo import MODEL_ZOO_DIR  # noqa: E402
from zegseg.utils.atomic_io import atomic_write  # noqa: E402

logger = logging.getLogger("build_default_model")

DEFAULT_CONFIG = "configs/toy/zegformer.yaml"
DEFAULT_OUT = MODEL_ZOO_DIR / "toy_zegformer.pth"
METRICS = ("mIoU", "hIoU", "mIoU-seen", "mIoU-unseen", "pAcc")
COMPARED = ("mIoU", "hIoU", "mIoU-seen", "mIoU-unseen")  # those the float16 file must keep within the tolerance


def weights_only(state: Mapping[str, object], dtype: torch.dtype) -> Dict[str, torch.Tensor]:
    """The model state with floating-point tensors cast to ``dtype`` (integer buffers such as BatchNorm's
    ``num_batches_tracked`` kept as they are); numpy arrays become tensors."""
    out = {}
    for name, value in state.items():
        tensor = torch.as_tensor(value).detach().cpu()
        out[name] = tensor.to(dtype) if tensor.is_floating_point() else tensor
    return out


def save_weights(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """``{"model": state}`` written atomically: the form ``ZegsegCheckpointer`` loads (safe, weights only)."""
    with atomic_write(path, "wb", fsync=True) as f:
        torch.save({"model": dict(state)}, f)


def evaluate(config_file: str, weights: Path, work_dir: Path) -> Dict[str, float]:
    """GZS3 of ``weights`` on the config's test set, as ``train_net.py --eval-only MODEL.WEIGHTS weights``."""
    cfg = load_config(config_file, ["MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(work_dir)])
    cfg.freeze()
    model = ZegsegTrainer.build_model(cfg)
    ZegsegCheckpointer(model, str(work_dir), partial_ok=False).load(str(weights))
    results = ZegsegTrainer.test(cfg, model)
    sem_seg = results.get("sem_seg", results) if isinstance(results, Mapping) else {}
    missing = [m for m in METRICS if m not in sem_seg]
    if missing:
        raise RuntimeError(f"the evaluation of {weights} reported no {', '.join(missing)} (got {sorted(sem_seg)})")
    return {m: round(float(sem_seg[m]), 2) for m in METRICS}


def train(config_file: str, work_dir: Path, resume: bool) -> Path:
    """Train with ``train_net.py`` into ``work_dir``; returns its model_final.pth."""
    command = [sys.executable, str(REPO / "train_net.py"), "--config-file", config_file]
    command += ["--resume"] if resume else []
    command += ["OUTPUT_DIR", str(work_dir)]
    logger.info("training: %s", " ".join(command))
    done = subprocess.run(command, cwd=REPO)
    final = work_dir / "model_final.pth"
    if done.returncode != 0 or not final.is_file():
        raise SystemExit(f"error: training failed (exit code {done.returncode}); rerun with --resume to continue")
    return final


def _repo_relative(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (as the README names configs), else as given."""
    try:
        return Path(path).resolve().relative_to(REPO).as_posix()
    except ValueError:
        return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, help=f"training config (default {DEFAULT_CONFIG})")
    parser.add_argument("--weights", type=Path, help="a checkpoint trained with --config-file: skip the training")
    parser.add_argument("--work-dir", type=Path, default=REPO / "output" / "default_model", help="training output")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted training in --work-dir")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"shipped weights (default {DEFAULT_OUT})")
    parser.add_argument(
        "--fp16-tolerance",
        type=float,
        default=0.05,
        help="largest loss in points (mIoU, hIoU, seen, unseen) for which float16 is shipped (default 0.05)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[build_default_model] %(message)s")

    source = args.weights if args.weights is not None else train(args.config_file, args.work_dir, args.resume)
    if not source.is_file():
        raise SystemExit(f"error: --weights {source}: no such file")
    checkpoint = read_weights_file(str(source))
    with tempfile.TemporaryDirectory(prefix="zegseg_default_model_") as tmp:
        candidates = {}
        for name, dtype in (("float32", torch.float32), ("float16", torch.float16)):
            path = Path(tmp) / f"{name}.pth"
            save_weights(weights_only(checkpoint["model"], dtype), path)
            logger.info("evaluating the %s weights (%.1f MB) on the config's test set", name, path.stat().st_size / 1e6)
            candidates[name] = (path, evaluate(args.config_file, path, Path(tmp) / f"eval_{name}"))
            logger.info("%s: %s", name, candidates[name][1])
        fp32, fp16 = candidates["float32"][1], candidates["float16"][1]
        loss = max(fp32[m] - fp16[m] for m in COMPARED)
        chosen = "float16" if loss <= args.fp16_tolerance else "float32"
        logger.info("float16 loses at most %.2f points (tolerance %.2f): shipping %s", loss, args.fp16_tolerance,
                    chosen)
        path = candidates[chosen][0]
        data = path.read_bytes()
        report = {
            "weights": args.out.name,
            "config": _repo_relative(args.config_file),
            "dtype": chosen,
            "sha256": hashlib.sha256(data).hexdigest(),
            "source": str(source),
            "source_iteration": int(checkpoint.get("iteration", -1)),
            "test_set": "DATASETS.TEST of the config (toy: toy_val_all_sem_seg, 200 images, 26 seen + 9 unseen)",
            "gzs3": fp16 if chosen == "float16" else fp32,
            "gzs3_float32": fp32,
            "command": "python tools/build_default_model.py" + (f" --weights {source}" if args.weights else ""),
        }
        with atomic_write(args.out, "wb", fsync=True) as f:
            f.write(data)
        with atomic_write(args.out.with_suffix(".json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(report, indent=2) + "\n")
    logger.info("shipped %s (%s, %.1f MB) and %s", args.out, chosen, len(data) / 1e6, args.out.with_suffix(".json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
