"""Mixed-precision training on CPU: the forward pass and the losses under bfloat16 autocast."""
from __future__ import annotations

import time

import torch
from detectron2.engine import SimpleTrainer

__all__ = ["CPUAutocastTrainer", "cpu_bfloat16_supported"]


def cpu_bfloat16_supported() -> bool:
    """Whether oneDNN has bfloat16 kernels on this CPU (AVX-512 and newer). Without them bfloat16 convolutions
    fall back to slow reference code, so bfloat16 training would be slower than float32."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without the check
        return False


class CPUAutocastTrainer(SimpleTrainer):
    """detectron2's training step with the model's forward pass (losses included) under CPU autocast in bfloat16.

    Autocast runs convolutions and matrix products in bfloat16 (oneDNN's bf16 kernels; the parameters, their
    gradients and the optimizer state stay float32) and keeps precision-sensitive ops (softmax, losses, norms) in
    float32. bfloat16 has float32's exponent range, so no gradient scaler is needed. Backward and the optimizer step
    run outside the autocast region, as torch recommends. Selected by SOLVER.AMP.ENABLED with
    SOLVER.AMP.CPU_BFLOAT16 on a CPU model (:class:`~zegseg.engine.ZegsegTrainer`).
    """

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
            losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()
