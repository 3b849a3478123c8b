"""The shipped tiny CLIP of the toy world: loads through load_clip and classifies region crops zero-shot."""
import pytest
import torch

from zegseg.data.toy import load_world
from zegseg.data.toy.crops import eval_region_crops, zero_shot_report
from zegseg.modeling.clip import BUILTIN_CLIP_MODELS, load_clip

CHECKPOINT = BUILTIN_CLIP_MODELS["ToyCLIP"]

pytestmark = pytest.mark.skipif(
    not CHECKPOINT.is_file(), reason=f"{CHECKPOINT} is absent; build it with `python tools/train_toy_clip.py`"
)


@pytest.fixture(scope="module")
def toy_clip():
    return load_clip("ToyCLIP")


def test_checkpoint_is_a_small_fp16_state_dict():
    assert CHECKPOINT.stat().st_size <= 20 * 2**20
    state = torch.load(CHECKPOINT, map_location="cpu", weights_only=True)
    assert state["text_projection"].dtype == torch.float16
    assert state["token_embedding.weight"].shape[0] == 49408


def test_zero_shot_region_crops(toy_clip):
    world = load_world()
    crops, classes = eval_region_crops(world, per_class=4, out_size=toy_clip.visual.input_resolution, seed=7)
    report = zero_shot_report(toy_clip, world, crops, classes)
    assert report["overall"] >= 0.9, report
    assert report["unseen"] >= 0.8, report
