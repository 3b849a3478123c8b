#!/usr/bin/env python
"""Train or evaluate a zegseg model: ``python train_net.py --config-file configs/toy/zegformer.yaml``.

Multi-process: ``--num-gpus N`` (GPUs with NCCL, or N CPU processes with gloo when no GPU exists).
Evaluation only: ``--eval-only MODEL.WEIGHTS path/to/model.pth`` (the weights must fit the model completely).
A user mistake (config, weights, CLIP file, dataset) ends with one ``error: ...`` line and exit code 1.
"""
import sys

import zegseg  # noqa: F401  (first: registers everything and silences known third-party import warnings)

# isort: split
from detectron2.engine import default_argument_parser, launch
from torch.multiprocessing import ProcessExitedException

from zegseg.checkpoint import CheckpointError, ZegsegCheckpointer
from zegseg.engine import ZegsegTrainer, preflight, setup_cfg
from zegseg.engine.setup_config import ConfigError


def main(args):
    cfg = setup_cfg(args)
    try:
        if args.eval_only:
            model = ZegsegTrainer.build_model(cfg)
            checkpointer = ZegsegCheckpointer(model, cfg.OUTPUT_DIR, partial_ok=cfg.MODEL.WEIGHTS_PARTIAL_OK)
            checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
            return ZegsegTrainer.test(cfg, model)
        trainer = ZegsegTrainer(cfg)
        trainer.resume_or_load(resume=args.resume)
    except (CheckpointError, ConfigError) as e:
        raise SystemExit(f"error: {e}") from None
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    preflight(args)
    try:
        launch(
            main,
            args.num_gpus,
            num_machines=args.num_machines,
            machine_rank=args.machine_rank,
            dist_url=args.dist_url,
            args=(args,),
        )
    except ProcessExitedException as e:  # a worker stopped with its own one-line error, printed above
        sys.exit(e.exit_code)
