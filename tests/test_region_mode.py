"""MODEL.CLIP.REGION_MODE dense: each mask's CLIP embedding is the mask-pooled dense feature of one CLIP forward."""
import pytest
import torch
from detectron2.modeling import build_model
from torch.nn import functional as F

import zegseg.modeling.clip.region_encoder as region_encoder
import zegseg.modeling.mask_classification.segmentor as segmentor
from zegseg.engine.setup_config import load_config
from zegseg.engine.trainer import ZegsegTrainer
from zegseg.modeling.clip import load_clip
from zegseg.modeling.clip.dense_features import encode_dense
from zegseg.modeling.clip.region_encoder import RegionCLIPClassifier, normalize_for_clip

from .helpers import ONE_VIEW_PER_QUERY
from .test_zegformer import TINY


@pytest.fixture(scope="module")
def clip_model(tiny_clip_path):
    return load_clip(str(tiny_clip_path))  # ViT, patch 8


def test_mask_covering_one_grid_cell_gets_that_cells_dense_feature(clip_model):
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 32, 40), dtype=torch.uint8)  # a 4 x 5 grid of 8-pixel cells
    masks = torch.zeros(4, 32, 40, dtype=torch.bool)
    masks[0, 8:16, 16:24] = True  # cell (1, 2)
    masks[1, 8:16, 16:32] = True  # cells (1, 2) and (1, 3)
    masks[2, 0:8, 0:4] = True  # half of cell (0, 0): the weight does not change its direction
    emb, valid = RegionCLIPClassifier(mode="dense").encode(clip_model, image, masks)
    dense = encode_dense(clip_model, normalize_for_clip(image, "BGR")[None])[0].float()  # (D, 4, 5)
    torch.testing.assert_close(emb[0], F.normalize(dense[:, 1, 2], dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(emb[1], F.normalize(dense[:, 1, 2] + dense[:, 1, 3], dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(emb[2], F.normalize(dense[:, 0, 0], dim=0), rtol=1e-4, atol=1e-5)
    assert valid.tolist() == [True, True, True, False] and emb[3].eq(0).all()


def test_dense_scale_and_padding(clip_model):
    """A 12 x 20 image at scale 2 is 24 x 40, padded with CLIP's mean colour to 24 x 40 (3 x 5 cells); a mask of the
    image's top-left 4 x 4 pixels covers cell (0, 0) of the resized image."""
    torch.manual_seed(1)
    image = torch.randint(0, 256, (3, 12, 20), dtype=torch.uint8)
    masks = torch.zeros(1, 12, 20, dtype=torch.bool)
    masks[0, :4, :4] = True
    emb, _ = RegionCLIPClassifier(mode="dense", dense_scale=2.0, input_format="RGB").encode(clip_model, image, masks)
    big = F.interpolate(normalize_for_clip(image, "RGB")[None], size=(24, 40), mode="bilinear", align_corners=False)
    dense = encode_dense(clip_model, big)[0].float()
    torch.testing.assert_close(emb[0], F.normalize(dense[:, 0, 0], dim=0), rtol=1e-4, atol=1e-5)


def test_zegformer_dense_mode_runs_clip_once_per_image(tiny_clip_path, monkeypatch):
    cfg = load_config("configs/toy/zegformer.yaml",
                      TINY + ["MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.CLIP.REGION_MODE", "dense"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    calls = []
    monkeypatch.setattr(region_encoder, "encode_dense", lambda m, x: calls.append(x.shape) or encode_dense(m, x))
    images = [{"image": torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)} for _ in range(2)]
    out = model(images)
    assert [o["sem_seg"].shape for o in out] == [(35, 48, 64)] * 2
    assert calls == [(1, 3, 48, 64)] * 2  # one CLIP forward per image, at its own (stride-padded) size


def test_dense_mode_with_leftover_regions_runs_clip_once_per_image(tiny_clip_path, monkeypatch):
    cfg = load_config("configs/toy/zegformer.yaml",
                      TINY + ["MODEL.CLIP.NAME", str(tiny_clip_path), "MODEL.CLIP.REGION_MODE", "dense",
                              "MODEL.CLIP.LEFTOVER_MIN_AREA", "0.01"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    # nothing is claimed: every image is one leftover region besides the queries' segments
    monkeypatch.setattr(segmentor, "claim_map", lambda masks: masks.new_zeros(masks.shape[-2:]))
    regions = []
    leftover = model.leftover_region_masks
    monkeypatch.setattr(model, "leftover_region_masks", lambda *a: regions.append(leftover(*a)) or regions[-1])
    calls = []
    monkeypatch.setattr(region_encoder, "encode_dense", lambda m, x: calls.append(x.shape) or encode_dense(m, x))
    images = [{"image": torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)} for _ in range(2)]
    out = model(images)
    assert [o["sem_seg"].shape for o in out] == [(35, 48, 64)] * 2
    assert [r.shape[0] for r in regions] == [1, 1]  # each image has its leftover region ...
    assert calls == [(1, 3, 48, 64)] * 2  # ... and it shares the image's one CLIP forward


def test_dense_mode_refuses_fast_mode(tiny_clip_path):
    cfg = load_config("configs/toy/two_stage.yaml", TINY + ["MODEL.CLIP.NAME", str(tiny_clip_path),
                      "MODEL.CLIP.REGION_MODE", "dense", "MODEL.CLIP.FAST_MODE.ENABLED", "True"])
    with pytest.raises(ValueError, match="REGION_MODE dense sends none"):
        ZegsegTrainer.build_model(cfg)
    with pytest.raises(ValueError, match="unknown region mode"):
        RegionCLIPClassifier(mode="pooled")


def test_single_pass_bench_times_both_modes_interleaved():
    from .test_bench import run_bench, tables

    out = run_bench(
        "bench_single_pass.py", "--config-file", "configs/toy/zegformer.yaml", "--size", "64", "--images", "2",
        "--variant", "dense", "MODEL.CLIP.REGION_MODE", "dense", "--opts", "MODEL.TRANSFORMER_DECODER.NUM_QUERIES", "8",
        *ONE_VIEW_PER_QUERY,
    )
    (rows,) = tables(out)
    by_name = {r["mode"]: r for r in rows}
    assert list(by_name) == ["crops", "dense"] and by_name["crops"]["speed-up vs first"] == "1.00x"
    assert all(float(r["masks scored by CLIP / image"]) <= 8 for r in rows)
    assert "one dense CLIP forward of a 64 x 64 image alone" in out
