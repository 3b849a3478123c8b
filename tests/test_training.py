"""Training from a config through zegseg's trainer: a few iterations, evaluation, and two CPU processes."""
import json
import logging

import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.engine import AMPTrainer, SimpleTrainer, launch
from detectron2.utils import comm

import zegseg  # noqa: F401
from zegseg.data.datasets.register_toy import register_all_toy
from zegseg.data.toy.generate import generate_toy_world
from zegseg.engine import ZegsegTrainer
from zegseg.engine import trainer as trainer_module
from zegseg.engine.cpu_autocast import CPUAutocastTrainer, cpu_bfloat16_supported
from zegseg.engine.setup_config import load_config

from .test_zegformer import TINY


@pytest.fixture(scope="module")
def mini_toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_toy_world(root, counts={"train": 8, "val": 4}, workers=1)
    return root


def mini_cfg(root, clip_path, out_dir, *opts):
    if "mini_toy_train_seen_sem_seg" not in DatasetCatalog.list():
        register_all_toy(root, prefix="mini_")
    return load_config(
        "configs/toy/zegformer.yaml",
        TINY
        + [
            "MODEL.CLIP.NAME", str(clip_path),
            "DATASETS.TRAIN", "('mini_toy_train_seen_sem_seg',)",
            "DATASETS.TEST", "('mini_toy_val_all_sem_seg',)",
            "SOLVER.MAX_ITER", "3",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.CHECKPOINT_PERIOD", "100",
            "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(out_dir),
            *opts,
        ],
    )


def test_train_then_evaluate_gzs3(mini_toy_root, tiny_clip_path, tmp_path):
    cfg = mini_cfg(mini_toy_root, tiny_clip_path, tmp_path / "out")
    trainer = ZegsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert (tmp_path / "out" / "model_final.pth").is_file()
    results = ZegsegTrainer.test(cfg, trainer.model)["sem_seg"]
    assert {"mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pAcc", "fwIoU", "mACC"} <= set(results)
    assert all(0.0 <= results[k] <= 100.0 for k in ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU"))


def _train_worker(root, clip_path, out_dir):
    cfg = mini_cfg(root, clip_path, out_dir, "SEED", str(7 + comm.get_rank()))
    trainer = ZegsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out_dir / f"rank{comm.get_rank()}.pt")


def test_two_cpu_processes_stay_in_sync(mini_toy_root, tiny_clip_path, tmp_path):
    out_dir = tmp_path / "ddp"
    launch(_train_worker, 2, dist_url="auto", args=(mini_toy_root, tiny_clip_path, out_dir))
    rank0, rank1 = (torch.load(out_dir / f"rank{r}.pt") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    params = [k for k in rank0 if "running_" not in k and "num_batches" not in k]
    assert all(torch.equal(rank0[k], rank1[k]) for k in params)
    metrics = [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]
    assert any("total_loss" in m for m in metrics)  # training was logged
    assert any("sem_seg/hIoU" in m for m in metrics)  # and the final evaluation ran in both processes


@pytest.mark.parametrize(
    "config_file, opts, message",
    [
        ("missing.yaml", [], "config file not found: missing.yaml"),
        ("configs/toy/zegformer.yaml", ["NOT.A_KEY", "1"], "Non-existent key: NOT.A_KEY"),
        ("configs/toy/zegformer.yaml", ["MODEL.WEIGHTS", "nowhere/model.pth"], "MODEL.WEIGHTS file not found"),
        ("configs/toy/zegformer.yaml", ["MODEL.CLIP.NAME", "ViT-L/14", "MODEL.CLIP.WEIGHTS_DIR", "/nonexistent"],
         "/nonexistent/ViT-L-14.pt"),
    ],
)
def test_train_net_preflight_reports_user_mistakes_in_one_line(config_file, opts, message):
    import argparse

    from zegseg.engine import preflight

    args = argparse.Namespace(config_file=config_file, opts=opts, resume=False)
    with pytest.raises(SystemExit) as err:
        preflight(args)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_short_toy_training_raises_seen_miou(mini_toy_root, tmp_path):
    """ZegFormer with the shipped ToyCLIP: 100 iterations on the mini world beat the untrained model's mIoU-seen."""
    cfg = mini_cfg(
        mini_toy_root,
        "ToyCLIP",
        tmp_path / "out",
        "DATASETS.TEST", "('mini_toy_train_all_sem_seg',)",
        "SOLVER.MAX_ITER", "100",
        "SOLVER.IMS_PER_BATCH", "4",
        "SOLVER.BASE_LR", "0.001",
        "SOLVER.WARMUP_ITERS", "5",
        "MODEL.ZEGFORMER.CLIP_IMAGE_BRANCH", "False",
    )
    cfg.defrost()
    cfg.SEED = 0
    trainer = ZegsegTrainer(cfg)
    before = ZegsegTrainer.test(cfg, trainer.model)["sem_seg"]["mIoU-seen"]
    trainer.resume_or_load(resume=False)
    trainer.train()
    after = ZegsegTrainer.test(cfg, trainer.model)["sem_seg"]["mIoU-seen"]
    assert after > before + 3.0, (before, after)


@pytest.mark.parametrize("amp, cpu_bf16, device, bf16_kernels, loop", [
    ("False", "True", "cpu", True, SimpleTrainer),
    ("True", "False", "cpu", True, SimpleTrainer),  # warned: CPU AMP needs SOLVER.AMP.CPU_BFLOAT16
    ("True", "True", "cpu", True, CPUAutocastTrainer),
    ("True", "True", "cpu", False, SimpleTrainer),  # warned: no bfloat16 kernels on this CPU
    ("True", "True", "cuda", False, AMPTrainer),
])
def test_training_loop_follows_amp_keys_and_device(mini_toy_root, tiny_clip_path, tmp_path, monkeypatch, caplog,
                                                   amp, cpu_bf16, device, bf16_kernels, loop):
    monkeypatch.setattr(trainer_module, "cpu_bfloat16_supported", lambda: bf16_kernels)
    cfg = mini_cfg(mini_toy_root, tiny_clip_path, tmp_path, "SOLVER.AMP.ENABLED", amp,
                   "SOLVER.AMP.CPU_BFLOAT16", cpu_bf16)
    cfg.defrost()
    cfg.MODEL.DEVICE = device
    with caplog.at_level(logging.WARNING, logger=trainer_module.logger.name):
        assert ZegsegTrainer.training_loop(cfg) is loop
    assert ("no bfloat16 kernels" in caplog.text) == (device == "cpu" and cpu_bf16 == "True" and not bf16_kernels)


def test_cpu_bfloat16_kernel_check(monkeypatch):
    assert isinstance(cpu_bfloat16_supported(), bool)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert cpu_bfloat16_supported() is False


def test_cpu_bfloat16_training_runs_convolutions_in_bf16_keeps_fp32_weights(mini_toy_root, tiny_clip_path,
                                                                           tmp_path):
    if not cpu_bfloat16_supported():
        pytest.skip("this CPU has no bfloat16 kernels in oneDNN")
    cfg = mini_cfg(mini_toy_root, tiny_clip_path, tmp_path / "out", "SOLVER.AMP.ENABLED", "True",
                   "SOLVER.AMP.CPU_BFLOAT16", "True")
    trainer = ZegsegTrainer(cfg)
    assert isinstance(trainer._trainer, CPUAutocastTrainer)
    conv_dtypes = []
    conv = next(m for m in trainer.model.backbone.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda module, inputs, output: conv_dtypes.append(output.dtype))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert conv_dtypes[:3] == [torch.bfloat16] * 3  # one training forward per iteration, under autocast
    assert set(conv_dtypes[3:]) <= {torch.float32}  # the evaluation at the end of training (if any) is float32
    params = dict(trainer.model.named_parameters())
    assert all(params[n].dtype == torch.float32 for n in before)
    assert any(not torch.equal(params[n], p) for n, p in before.items())  # the optimizer stepped
    records = [json.loads(line) for line in (tmp_path / "out" / "metrics.json").read_text().splitlines()]
    losses = [r["total_loss"] for r in records if "total_loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))  # logged by detectron2's writers (the last step)
    model = trainer.model.eval()  # inference stays float32 outside the training step
    conv_dtypes.clear()
    with torch.no_grad():
        model([{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "height": 64, "width": 64}])
    assert conv_dtypes == [torch.float32]
