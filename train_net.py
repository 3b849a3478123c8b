#!/usr/bin/env python
"""Train or evaluate a zegseg model: ``python train_net.py --config-file configs/toy/zegformer.yaml``.

Multi-process: ``--num-gpus N`` (GPUs with NCCL, or N CPU processes with gloo when no GPU exists).
Evaluation only: ``--eval-only MODEL.WEIGHTS path/to/model.pth``.
"""
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch

import zegseg  # noqa: F401  (registers datasets, mappers, evaluators and meta-architectures)
from zegseg.engine import ZegsegTrainer, preflight, setup_cfg


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = ZegsegTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return ZegsegTrainer.test(cfg, model)
    trainer = ZegsegTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    preflight(args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
