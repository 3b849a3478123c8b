"""train_net.py's preflight: every user mistake is one ``error: ...`` line naming the file, key or dataset and the
fix; never a traceback."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from zegseg.engine import preflight

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy" / "zegformer.yaml"


def check(config_file, *opts, eval_only=False):
    """The preflight's message for this command line (it must fail)."""
    args = argparse.Namespace(config_file=str(config_file), opts=list(map(str, opts)), resume=False,
                              eval_only=eval_only)
    with pytest.raises(SystemExit) as err:
        preflight(args)
    message = str(err.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def yaml_file(tmp_path, text, name="cfg.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = yaml_file(tmp_path, f"_BASE_: {TOY}\nSOLVER:\n  MAX_ITER: [10\n  BASE_LR: 0.1\n")
    message = check(bad)
    assert f"{bad}, line 4: not valid YAML" in message


def test_typo_in_a_config_file_is_not_called_an_override(tmp_path):
    bad = yaml_file(tmp_path, f"_BASE_: {TOY}\nMODEL:\n  CLIP:\n    TEMPLATE: photo\n")
    message = check(bad)
    assert f"{bad}: unknown config key MODEL.CLIP.TEMPLATE; did you mean MODEL.CLIP.TEMPLATES?" in message
    assert "override" not in message


def test_bad_override_is_called_an_override():
    assert "bad config override" in check(TOY, "MODEL.CLIP.TEMPLATE", "photo")


@pytest.mark.parametrize(
    "text, fragment",
    [
        (f"_BASE_: {TOY}\nSOLVER:\n  MAX_ITER: many\n", "for config key: SOLVER.MAX_ITER"),
        ("_BASE_: nowhere.yaml\n", "cannot read a _BASE_ config"),
        ("", "not a config"),
        ("- a\n- b\n", "not a config"),
    ],
)
def test_other_config_file_mistakes(tmp_path, text, fragment):
    bad = yaml_file(tmp_path, text)
    message = check(bad)
    assert str(bad) in message and fragment in message


@pytest.mark.parametrize(
    "content, fragment",
    [
        ("truncated", "cannot read weights"),
        (b"plain text, not weights", "cannot read weights"),
        ({"model": {"w": "not a tensor"}}, "not a tensor"),
    ],
)
def test_unreadable_weights(tmp_path, tiny_clip_path, content, fragment):
    path = tmp_path / "model.pth"
    if content == "truncated":
        path.write_bytes(Path(tiny_clip_path).read_bytes()[:4096])
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    message = check(TOY, "MODEL.WEIGHTS", path)
    assert message.startswith("error: MODEL.WEIGHTS: ") and fragment in message and str(path) in message


def test_unreadable_clip_file(tmp_path, tiny_clip_path):
    truncated = tmp_path / "clip.pt"
    truncated.write_bytes(Path(tiny_clip_path).read_bytes()[:4096])
    message = check(TOY, "MODEL.CLIP.NAME", truncated)
    assert f"cannot read the CLIP checkpoint '{truncated}' (MODEL.CLIP.NAME)" in message

    not_clip = tmp_path / "not_clip.pt"
    torch.save({"weight": torch.zeros(2)}, not_clip)
    assert "not an OpenAI-format CLIP checkpoint" in check(TOY, "MODEL.CLIP.NAME", not_clip)


def test_unknown_dataset_names_a_close_match():
    message = check(TOY, "DATASETS.TRAIN", "('toy_train_sen_sem_seg',)")
    assert "DATASETS.TRAIN: unknown dataset 'toy_train_sen_sem_seg'; did you mean 'toy_train_seen_sem_seg'?" in message
    message = check(TOY, "DATASETS.TEST", "('no_such_thing',)", "MODEL.WEIGHTS_PARTIAL_OK", "True", eval_only=True)
    assert "DATASETS.TEST: unknown dataset 'no_such_thing'" in message


def test_unprepared_dataset_names_the_prepare_command(tmp_path, tiny_clip_path):
    from zegseg.data.datasets.register_ade20k_150 import register_ade20k_150

    register_ade20k_150(tmp_path)  # an empty dataset root
    try:
        message = check(TOY, "MODEL.CLIP.NAME", tiny_clip_path, "MODEL.WEIGHTS_PARTIAL_OK", "True",
                        "DATASETS.TEST", "('ade20k_150_val_sem_seg',)", eval_only=True)
    finally:
        register_ade20k_150()
    assert "DATASETS.TEST: dataset 'ade20k_150_val_sem_seg' is not prepared" in message
    assert "python datasets/prepare_ade20k_150.py" in message and str(tmp_path) in message


@pytest.mark.parametrize(
    "opts, fragment",
    [
        (["DATASETS.TEST", "('ade20k_150_val_sem_seg',)", "MODEL.WEIGHTS_PARTIAL_OK", "True"], "is not prepared"),
        (["DATASETS.TEST", "('toy_val_al_sem_seg',)", "MODEL.WEIGHTS_PARTIAL_OK", "True"], "unknown dataset"),
        (["MODEL.WEIGHTS", "{clip}"], "give this model none of its"),  # caught when loading, in main()
        (  # refused by the model while it is built, in main()
            ["MODEL.WEIGHTS", "{clip}", "MODEL.META_ARCHITECTURE", "TwoStageCLIP", "MODEL.CLIP.CROP_PROCEDURE",
             "zegformer"],
            "config not usable by TwoStageCLIP: TwoStageCLIP needs MODEL.CLIP.CROP_PROCEDURE simple_baseline",
        ),
    ],
)
def test_train_net_prints_one_line_and_no_traceback(tmp_path, tiny_clip_path, opts, fragment):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("DETECTRON2_DATASETS", None)  # ./datasets of the repository: the toy world, no ADE20K
    opts = [o.format(clip=tiny_clip_path) for o in opts]
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train_net.py"), "--config-file", str(TOY), "--eval-only",
         "MODEL.CLIP.NAME", str(tiny_clip_path), "OUTPUT_DIR", str(tmp_path / "out"),
         "MODEL.BACKBONE.NAME", "build_resnet_backbone", "MODEL.RESNETS.NORM", "BN", *opts],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, last
