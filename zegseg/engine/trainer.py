"""The training loop: detectron2's DefaultTrainer with zegseg's builders and CPU-capable multi-process training."""
from __future__ import annotations

import logging
import os
import weakref

import torch
from detectron2.config import CfgNode
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, TensorboardXWriter
from detectron2.utils.file_io import PathManager
from detectron2.utils.logger import setup_logger

from ..checkpoint import ZegsegCheckpointer
from ..data.dataset_mappers import build_train_mapper
from ..data.segment_samples import build_train_dataset
from ..evaluation import build_evaluator
from ..solver import build_lr_scheduler, build_optimizer
from .cpu_autocast import CPUAutocastTrainer, cpu_bfloat16_supported
from .metrics_writer import ResumableJSONWriter
from .setup_config import ConfigError

__all__ = ["ZegsegTrainer"]

logger = logging.getLogger(__name__)


def _wrap_ddp(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel for GPU or CPU (gloo) modules; CPU modules must not be given ``device_ids``."""
    on_cpu = next(model.parameters()).device.type == "cpu"
    device_ids = None if on_cpu else [comm.get_local_rank()]
    return create_ddp_model(model, broadcast_buffers=False, device_ids=device_ids)


class ZegsegTrainer(DefaultTrainer):
    """detectron2's trainer with zegseg's data, evaluation and solver; runs multi-process on CPU too."""

    def __init__(self, cfg: CfgNode):
        # DefaultTrainer.__init__ with two changes: DDP works for CPU models, and AMP is float16 with a gradient
        # scaler on CUDA (detectron2's AMPTrainer), bfloat16 autocast on CPU if SOLVER.AMP.CPU_BFLOAT16, else off.
        super(DefaultTrainer, self).__init__()
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = _wrap_ddp(model)
        self._trainer = self.training_loop(cfg)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # MODEL.WEIGHTS initialises training (may be partial, e.g. an ImageNet backbone); resuming needs all weights
        self.checkpointer = ZegsegCheckpointer(
            model,
            cfg.OUTPUT_DIR,
            for_training=True,
            partial_ok=cfg.MODEL.WEIGHTS_PARTIAL_OK,
            trainer=weakref.proxy(self),
        )
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @staticmethod
    def training_loop(cfg: CfgNode) -> type:
        """The detectron2 trainer class that runs the steps: AMPTrainer (float16, CUDA), CPUAutocastTrainer
        (bfloat16, CPU, SOLVER.AMP.CPU_BFLOAT16, where the CPU has bfloat16 kernels) or SimpleTrainer (float32)."""
        if not cfg.SOLVER.AMP.ENABLED:
            return SimpleTrainer
        if cfg.MODEL.DEVICE.startswith("cuda"):
            return AMPTrainer
        if cfg.SOLVER.AMP.CPU_BFLOAT16:
            if cpu_bfloat16_supported():
                return CPUAutocastTrainer
            logger.warning(
                "SOLVER.AMP.CPU_BFLOAT16: this CPU has no bfloat16 kernels in oneDNN (they need AVX-512), where "
                "bfloat16 would be slower than float32: training in fp32"
            )
            return SimpleTrainer
        logger.warning("SOLVER.AMP.ENABLED is ignored on CPU without SOLVER.AMP.CPU_BFLOAT16: training in fp32")
        return SimpleTrainer

    def build_writers(self):
        """detectron2's writers, with a metrics.json that holds each iteration once across resumes."""
        PathManager.mkdirs(self.cfg.OUTPUT_DIR)
        trainer = weakref.proxy(self)
        return [
            CommonMetricPrinter(self.max_iter),
            ResumableJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"), lambda: trainer.start_iter),
            TensorboardXWriter(self.cfg.OUTPUT_DIR),
        ]

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """detectron2's model building; a value the model refuses (a ``ValueError`` raised while it reads the
        config) becomes a :class:`ConfigError` naming the meta-architecture, which ``train_net.py`` prints as one
        line."""
        try:
            return super().build_model(cfg)
        except ConfigError:
            raise
        except ValueError as e:
            raise ConfigError(f"config not usable by {cfg.MODEL.META_ARCHITECTURE}: {e}") from e

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        return build_detection_train_loader(
            cfg, mapper=build_train_mapper(cfg, is_train=True), dataset=build_train_dataset(cfg)
        )

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer):
        return build_lr_scheduler(cfg, optimizer)
