"""Interrupted runs never leave results that look finished: the demo's files and the trainer's checkpoints are
written atomically, reruns redo incomplete results, ``--resume`` survives a truncated checkpoint, and metrics.json
keeps each iteration once. Also: a glob that matches the output folder does not feed the demo its own results."""
import json
import logging
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from zegseg.checkpoint import ZegsegCheckpointer
from zegseg.demo_core import outputs as demo_outputs
from zegseg.engine import ZegsegTrainer
from zegseg.engine.metrics_writer import drop_records_from

from .test_demo import VOCAB, demo, noise, noise_video, opts, run  # noqa: F401  (fixtures)
from .test_training import mini_cfg, mini_toy_root  # noqa: F401  (fixture)


def leftovers(folder):
    """Temporary files (hidden ``.name.*.tmp*``) under ``folder``."""
    return [p.name for p in folder.rglob(".*") if p.is_file()]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "in" / "photo.png"
    path.parent.mkdir()
    Image.fromarray(noise(40, 56)).save(path)
    return path


def outputs(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------------------------------------------ demo
@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_demo_interrupted_while_writing_leaves_no_finished_result(demo, opts, image, tmp_path, monkeypatch, how):  # noqa: F811
    out = tmp_path / "out"
    real_write_png, calls = demo_outputs.write_png, []

    def interrupted_on_second_file(path, array):
        calls.append(path)
        if len(calls) == 2:  # the label map: half written when the interruption comes
            with demo_outputs.atomic_write(path) as f:
                f.write(b"\x89PNG\r\n\x1a\n half")
                if how == "ctrl_c":
                    raise KeyboardInterrupt
                os.kill(os.getpid(), signal.SIGTERM)  # the demo turns it into an interruption
                f.write(b"never reached")
        real_write_png(path, array)

    monkeypatch.setattr(demo_outputs, "write_png", interrupted_on_second_file)
    code, log = run(demo, "--input", image, "--output", out, "--vocabulary", VOCAB, opts=opts)
    assert code == 130 and "interrupted" in log
    assert outputs(out) == ["photo_overlay.png"]  # complete on its own, but no JSON: not a finished result
    assert not leftovers(out)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the demo's handler is gone again

    monkeypatch.setattr(demo_outputs, "write_png", real_write_png)
    code, log = run(demo, "--input", image, "--output", out, "--vocabulary", VOCAB, opts=opts)
    assert code == 0 and "1 done, 0 failed, 0 skipped" in log and "incomplete" in log
    assert outputs(out) == ["photo.json", "photo_labels.png", "photo_overlay.png"]
    assert Image.open(out / "photo_labels.png").size == (56, 40)
    assert json.loads((out / "photo.json").read_text())["label_map"] == "photo_labels.png"


def test_demo_redoes_truncated_results_of_an_older_run(demo, opts, image, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    out.mkdir()
    (out / "photo_overlay.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # what a kill mid-save used to leave
    (out / "photo.json").write_text('{"input": "photo.png", "heigh')  # and a JSON cut off
    code, log = run(demo, "--input", image, "--output", out, "--vocabulary", VOCAB, opts=opts)
    assert code == 0 and "1 done, 0 failed, 0 skipped" in log
    # a whole image again (the truncated file does not open); the legend may make it taller than the 40 px input,
    # depending on how many classes the random-weight model finds
    assert Image.open(out / "photo_overlay.png").size[1] >= 40
    assert Image.open(out / "photo_labels.png").size == (56, 40)
    assert json.loads((out / "photo.json").read_text())["height"] == 40


def test_demo_interrupted_video_leaves_nothing(demo, opts, tmp_path, monkeypatch):  # noqa: F811
    video = noise_video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    real_predict, calls = demo.Predictor.predict_batch, []

    def interrupted_on_second_batch(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(demo.Predictor, "predict_batch", interrupted_on_second_batch)
    args = ("--video-input", video, "--output", out, "--vocabulary", VOCAB, "--batch-size", "2")
    code, _ = run(demo, *args, opts=opts)
    assert code == 130 and outputs(out) == []

    monkeypatch.setattr(demo.Predictor, "predict_batch", real_predict)
    code, log = run(demo, *args, opts=opts)
    assert code == 0 and "1 done" in log and outputs(out) == ["clip.json", "clip_overlay.mp4"]


def test_recursive_glob_does_not_pick_up_the_output_folder(demo, opts, tmp_path):  # noqa: F811
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    Image.fromarray(noise(40, 56)).save(photos / "a.png")
    Image.fromarray(noise(40, 56, seed=1)).save(photos / "sub" / "b.png")
    out = photos / "results"  # inside the folder the glob searches
    spec = str(photos / "**" / "*.png")
    code, log = run(demo, "--input", spec, "--output", out, "--vocabulary", VOCAB, opts=opts)
    assert code == 0 and "2 done, 0 failed, 0 skipped" in log
    code, log = run(demo, "--input", spec, "--output", out, "--vocabulary", VOCAB, opts=opts)
    assert code == 0 and "0 done, 0 failed, 2 skipped" in log and "left out" in log
    assert sorted(p.name for p in out.glob("*_overlay*.png")) == ["a_overlay.png", "b_overlay.png"]

    inputs = demo.collect_inputs([spec], [], out)
    assert sorted(p.name for p, _ in inputs.images) == ["a.png", "b.png"]
    only_outputs = demo.collect_inputs([str(out / "*.png")], [], out)
    assert not only_outputs.images and "outside the output folder" in only_outputs.missing[0]


# ------------------------------------------------------------------------------------------------ checkpoints
def test_checkpoint_interrupted_while_saving_keeps_the_previous_one(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    checkpointer = ZegsegCheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    real_save = torch.save

    def killed_mid_save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", killed_mid_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000002")
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    ZegsegCheckpointer(nn.Linear(3, 2)).load(str(tmp_path / "model_0000001.pth"))


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.json").read_text().splitlines()]


@pytest.fixture
def finished_run(mini_toy_root, tiny_clip_path, tmp_path):  # noqa: F811
    """A 4-iteration training with checkpoints after iterations 1 and 3 (and model_final)."""
    out = tmp_path / "out"
    cfg = mini_cfg(mini_toy_root, tiny_clip_path, out, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "2")
    trainer = ZegsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth"} <= set(os.listdir(out))
    return cfg, out


def test_resume_falls_back_to_the_newest_readable_checkpoint(finished_run, caplog):
    cfg, out = finished_run
    final = out / "model_final.pth"
    final.write_bytes(final.read_bytes()[:1000])  # killed while torch.save wrote it
    trainer = ZegsegTrainer(cfg)
    with caplog.at_level(logging.WARNING):
        trainer.resume_or_load(resume=True)
    assert "model_final.pth" in caplog.text and "resumed from" in caplog.text and "model_0000003.pth" in caplog.text
    assert trainer.start_iter == 4
    saved = torch.load(out / "model_0000003.pth", weights_only=True)["model"]
    assert torch.equal(trainer.model.backbone.stem.conv1.weight, saved["backbone.stem.conv1.weight"])


def test_resumed_run_writes_each_iteration_once(finished_run):
    cfg, out = finished_run
    first = metrics(out)
    assert any(r["iteration"] == 3 and "total_loss" in r for r in first)
    # killed after iteration 3 was logged but before its checkpoint: the run resumes from iteration 1's
    (out / "last_checkpoint").write_text("model_0000001.pth")
    with open(out / "metrics.json", "a") as f:
        f.write('{"iteration": 3, "total_lo')  # and the kill cut a line short
    trainer = ZegsegTrainer(cfg)
    trainer.resume_or_load(resume=True)
    assert trainer.start_iter == 2
    trainer.train()
    records = metrics(out)
    training = [r["iteration"] for r in records if "total_loss" in r]
    assert sorted(training) == sorted(set(training)) and 3 in training
    evaluations = [r["iteration"] for r in records if "sem_seg/hIoU" in r]
    assert len(evaluations) == len(set(evaluations)) == 1


def test_drop_records_from(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text('{"iteration": 0, "a": 1}\n{"iteration": 5, "a": 2}\n{"iteration": 2}\n{"itera')
    assert drop_records_from(str(path), 3) == 2
    assert [json.loads(line)["iteration"] for line in path.read_text().splitlines()] == [0, 2]
    assert drop_records_from(str(tmp_path / "none.json"), 0) == 0


def test_fresh_run_in_an_old_output_dir_starts_a_fresh_metrics_file(finished_run):
    cfg, out = finished_run
    before = len(metrics(out))
    trainer = ZegsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert len(metrics(out)) == before
    assert np.all(np.diff([r["iteration"] for r in metrics(out)]) >= 0)
