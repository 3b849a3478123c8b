"""Official ZegFormer / zsseg.baseline checkpoints → zegseg: the key tables against the official models' full key and
shape lists (tests/fixtures/official_*.json, extracted once from the official code with random weights by
tools/check_official_parity.py --write-fixture), safe reading, and the converter's command line."""
import contextlib
import importlib.util
import io
import json
import math
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.modeling import build_model

from zegseg.checkpoint.official import (
    OfficialCheckpointError,
    UnknownOfficialKeysError,
    config_mismatches,
    convert_official_state_dict,
    detect_format,
    load_official_state_dict,
)
from zegseg.engine.setup_config import load_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
CASES = {  # format: (fixture, zegseg reference config)
    "zegformer": (
        "official_zegformer_coco_stuff_r101_vit16.json",
        "configs/coco_stuff/zegformer_R101_bs32_60k_vit16.yaml",
    ),
    "zsseg": ("official_zsseg_coco_stuff_r101c_vit16.json", "configs/coco_stuff/two_stage_R101_vit16.yaml"),
}
VIT_B16 = dict(
    embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
    context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8, transformer_layers=12,
)


def fixture_tensors(fmt):
    return json.loads((FIXTURES / CASES[fmt][0]).read_text())["tensors"]


def synthetic_official(fmt):
    """The official state dict with every tensor filled with its own index + 1 (broadcast constants: no memory),
    except the values that stand for config keys, which get the official configs' values."""
    state = {}
    for i, (name, shape, dtype) in enumerate(fixture_tensors(fmt)):
        state[name] = torch.full((), float(i + 1), dtype=getattr(torch, dtype)).expand(shape)
    if "criterion.empty_weight" in state:
        weight = torch.ones(state["criterion.empty_weight"].shape)
        weight[-1] = 0.1
        state["criterion.empty_weight"] = weight
    if "sem_seg_head.predictor.logit_scale" in state:
        state["sem_seg_head.predictor.logit_scale"] = torch.tensor([math.log(1 / 0.01)])
    return state


@pytest.fixture(scope="module")
def clip512_path(tmp_path_factory):
    """A small random CLIP with ViT-B/16's 512-d embedding space (the official heads hard-code 512)."""
    import clip.model

    torch.manual_seed(0)
    model = clip.model.CLIP(
        embed_dim=512, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
        context_length=77, vocab_size=49408, transformer_width=64, transformer_heads=1, transformer_layers=1,
    )
    path = tmp_path_factory.mktemp("clip512") / "clip512.pt"
    torch.save(model.state_dict(), path)
    return path


def build_zegseg(config, clip_path, cache_dir):
    cfg = load_config(str(ROOT / config), [
        "MODEL.DEVICE", "cpu", "MODEL.CLIP.NAME", str(clip_path), "MODEL.CLIP.EMBED_CACHE_DIR", str(cache_dir),
        "DATASETS.TRAIN", "()", "TEST.VOCABULARY", '["cat", "grass"]', "TEST.UNSEEN_CLASSES", '["grass"]',
    ])
    return cfg, build_model(cfg)


@pytest.mark.parametrize("fmt", sorted(CASES))
def test_official_keys_load_strictly_into_the_reference_config(fmt, clip512_path, tmp_path):
    official = synthetic_official(fmt)
    index = {name: i + 1 for i, (name, _, _) in enumerate(fixture_tensors(fmt))}
    conversion = convert_official_state_dict(official)
    assert conversion.format == fmt
    cfg, model = build_zegseg(CASES[fmt][1], clip512_path, tmp_path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted = {k: tuple(v.shape) for k, v in conversion.model.items()}
    assert sorted(set(expected) - set(converted)) == [], "missing in the conversion"
    assert sorted(set(converted) - set(expected)) == [], "unexpected in the conversion"
    assert converted == expected
    model.load_state_dict(conversion.model, strict=True)
    for name, tensor in model.state_dict().items():  # each zegseg tensor holds its own official source
        assert torch.all(tensor == index[conversion.sources[name]]), name
    assert config_mismatches(conversion, cfg) == []
    assert conversion.config["MODEL.CRITERION.NO_OBJECT_WEIGHT"] == pytest.approx(0.1)

    # Nothing left unaccounted for; the frozen CLIP is ViT-B/16 under OpenAI's names.
    n_prompt = int(conversion.prompt_ctx is not None)
    accounted = len(conversion.model) + len(conversion.clip) + len(conversion.config) + len(conversion.derived)
    assert accounted + n_prompt == len(official)
    import clip.model

    with torch.device("meta"):
        vit_b16 = {k: tuple(v.shape) for k, v in clip.model.CLIP(**VIT_B16).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in conversion.clip.items()} == vit_b16

    # As saved by the official training configs: no CLIP inside; the network converts the same way.
    without_clip = {k: v for k, v in official.items() if "clip_model." not in k}
    again = convert_official_state_dict(without_clip, fmt)
    assert again.clip == {} and set(again.model) == set(conversion.model)


def test_format_specific_contents():
    zegformer = convert_official_state_dict(synthetic_official("zegformer"))
    assert zegformer.config["MODEL.ZEGFORMER.TEMPERATURE"] == pytest.approx(0.01)
    assert zegformer.prompt_ctx is None and zegformer.derived == {}
    assert zegformer.model["text_classifier.no_object_embedding"].shape == (512,)
    zsseg = convert_official_state_dict(synthetic_official("zsseg"))
    assert tuple(zsseg.prompt_ctx.shape) == (16, 512)
    assert len(zsseg.derived) == 6  # CLIP's pixel mean/std and the prompt learner's four token embeddings
    assert zsseg.model["semantic_proj.layers.0.weight"].shape == (1024, 256)
    assert zsseg.model["backbone.stem.conv3.weight"].shape == (128, 64, 3, 3)  # R-101c's DeepLab stem


@pytest.mark.parametrize(
    "fmt, extra",
    [
        ("zegformer", "sem_seg_head.predictor.transformer.encoder.layers.0.linear1.weight"),  # ENC_LAYERS > 0
        ("zsseg", "region_clip_adapter.non_object_embedding"),  # SEPERATE_ADAPTER
        ("zsseg", "clip_adapter.prompt_learner.suffix_prompt"),  # PROMPT_SHAPE (16, n) with n > 0
    ],
)
def test_tensors_without_a_place_in_zegseg_are_errors(fmt, extra):
    official = synthetic_official(fmt)
    official[extra] = torch.zeros(3)
    with pytest.raises(UnknownOfficialKeysError, match=extra.replace(".", r"\.")):
        convert_official_state_dict(official)


def test_unknown_formats_and_collisions():
    with pytest.raises(OfficialCheckpointError, match="not a ZegFormer or zsseg.baseline checkpoint"):
        detect_format({"backbone.stem.conv1.weight": torch.zeros(1)})
    with pytest.raises(OfficialCheckpointError, match="unknown checkpoint format"):
        convert_official_state_dict({"a": torch.zeros(1)}, "maskformer")
    legacy = {  # MaskFormer heads before "version 2" had the pixel decoder directly under sem_seg_head
        "sem_seg_head.predictor.bg_feature": torch.zeros(1, 4),
        "sem_seg_head.layer_1.weight": torch.zeros(1),
        "sem_seg_head.pixel_decoder.layer_1.weight": torch.zeros(1),
    }
    with pytest.raises(OfficialCheckpointError, match="both map to 'pixel_decoder.output_convs.res2.weight'"):
        convert_official_state_dict(legacy)


def test_config_mismatches_are_named():
    official = synthetic_official("zegformer")
    official["sem_seg_head.predictor.logit_scale"] = torch.tensor([math.log(1 / 0.02)])
    conversion = convert_official_state_dict(official)
    zegformer_cfg = load_config(str(ROOT / CASES["zegformer"][1]))
    (problem,) = config_mismatches(conversion, zegformer_cfg)
    assert "MODEL.ZEGFORMER.TEMPERATURE" in problem and "0.02" in problem
    two_stage_cfg = load_config(str(ROOT / CASES["zsseg"][1]))
    assert any("this checkpoint needs 'ZegFormer'" in p for p in config_mismatches(conversion, two_stage_cfg))


def test_reading_pkl_pth_and_refusing_unsafe_or_broken_files(tmp_path):
    arrays = {"sem_seg_head.predictor.bg_feature": np.arange(4, dtype=np.float32).reshape(1, 4)}
    pkl = tmp_path / "weights.pkl"
    pkl.write_bytes(pickle.dumps({"model": arrays, "__author__": "test"}))
    state = load_official_state_dict(pkl)
    assert torch.equal(state["sem_seg_head.predictor.bg_feature"], torch.arange(4.0).reshape(1, 4))
    pth = tmp_path / "weights.pth"
    torch.save({"model": {"x": torch.ones(2)}, "iteration": 5}, pth)
    assert torch.equal(load_official_state_dict(pth)["x"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"model": {"x": Evil()}}))
    with pytest.raises(OfficialCheckpointError, match="could run code"):
        load_official_state_dict(evil)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    for bad in (garbage, tmp_path / "missing.pth"):
        with pytest.raises(OfficialCheckpointError) as info:
            load_official_state_dict(bad)
        assert "\n" not in str(info.value)


def test_detectron2_training_checkpoints_with_optimizer_and_scheduler_are_read(tmp_path):
    """Released checkpoints are detectron2 training checkpoints (the official trainers use DeepLab's WarmupPolyLR)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.projects.deeplab.lr_scheduler import WarmupPolyLR

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-4)
    scheduler = WarmupPolyLR(optimizer, 100, warmup_iters=0)
    model(torch.randn(1, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    checkpointer = DetectionCheckpointer(model, str(tmp_path), optimizer=optimizer, scheduler=scheduler)
    checkpointer.save("model_final", iteration=5)
    state = load_official_state_dict(tmp_path / "model_final.pth")
    assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], model.weight.detach())


# ---------------------------------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def cli():
    spec = importlib.util.spec_from_file_location("convert_official", ROOT / "tools" / "convert_official_checkpoint.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def run(cli, *args):
    """main(argv) with output captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def tiny_zegformer_file(path, **extra):
    state = {
        "sem_seg_head.predictor.bg_feature": torch.randn(1, 512),
        "sem_seg_head.predictor.projection_layer.weight": torch.randn(512, 256),
        "sem_seg_head.predictor.logit_scale": torch.tensor([math.log(100.0)]),
        "sem_seg_head.predictor.clip_model.text_projection": torch.randn(512, 512).half(),
        **extra,
    }
    torch.save({"model": state, "iteration": 60000}, path)
    return state


def test_cli_converts_and_reports(cli, tmp_path):
    state = tiny_zegformer_file(tmp_path / "official.pth")
    source, target = tmp_path / "official.pth", tmp_path / "zegseg.pth"
    code, out, err = run(cli, source, target, "--config", ROOT / CASES["zegformer"][1])
    assert (code, err) == (0, "")
    assert "2 tensors converted" in out and "MODEL.ZEGFORMER.TEMPERATURE 0.01" in out
    assert "frozen CLIP: 1 tensors" in out and "--clip-out" in out
    written = torch.load(target, weights_only=True)
    assert set(written) == {"model"}
    model = written["model"]
    assert torch.equal(model["text_classifier.no_object_embedding"], state["sem_seg_head.predictor.bg_feature"][0])
    assert torch.equal(model["semantic_proj.weight"], state["sem_seg_head.predictor.projection_layer.weight"])

    code, out, err = run(cli, source, target)
    assert code == 1 and "already exist" in err and "--force" in err
    code, out, _ = run(cli, source, target, "--force", "--clip-out", tmp_path / "c.pt")
    assert code == 0
    clip_state = torch.load(tmp_path / "c.pt", weights_only=True)
    assert torch.equal(clip_state["text_projection"], state["sem_seg_head.predictor.clip_model.text_projection"])


def test_cli_writes_the_learned_prompt_for_zegseg(cli, tmp_path, clip512_path):
    from zegseg.modeling.clip import load_clip
    from zegseg.modeling.clip.prompt_learner import load_prompt_learner

    ctx = torch.randn(16, 64)  # width of the small test CLIP's text tower
    torch.save(
        {"clip_adapter.non_object_embedding": torch.randn(1, 512), "clip_adapter.prompt_learner.prefix_prompt": ctx},
        tmp_path / "zsseg.pth",
    )
    code, out, err = run(cli, tmp_path / "zsseg.pth", tmp_path / "two_stage.pth")
    assert (code, err) == (0, "")
    assert "learned prompt: 16 context vectors" in out
    learner = load_prompt_learner(tmp_path / "two_stage_prompt.pth", load_clip(str(clip512_path)))
    assert torch.equal(learner.ctx.detach(), ctx)


@pytest.mark.parametrize(
    "case, message",
    [
        ("unknown_key", "have no place in zegseg: sem_seg_head.predictor.transformer.encoder.norm.weight"),
        ("garbage", "official.pth"),  # the reader names the file
        ("missing", "does not exist"),
        ("not_official", "not a ZegFormer or zsseg.baseline checkpoint"),
        ("config_mismatch", "MODEL.ZEGFORMER.TEMPERATURE is 0.01 in the config but 0.05"),
        ("no_prompt", "holds no learned prompt"),
    ],
)
def test_cli_errors_are_one_line(cli, tmp_path, case, message):
    source, args = tmp_path / "official.pth", []
    if case == "unknown_key":
        tiny_zegformer_file(source, **{"sem_seg_head.predictor.transformer.encoder.norm.weight": torch.ones(256)})
    elif case == "garbage":
        source.write_bytes(b"\x00\x01 definitely not a checkpoint")
    elif case == "not_official":
        torch.save({"model": {"backbone.stem.conv1.weight": torch.zeros(1)}}, source)
    elif case == "config_mismatch":
        tiny_zegformer_file(source, **{"sem_seg_head.predictor.logit_scale": torch.tensor([math.log(20.0)])})
        args = ["--config", ROOT / CASES["zegformer"][1]]
    elif case == "no_prompt":
        tiny_zegformer_file(source)
        args = ["--prompt-out", tmp_path / "p.pth"]
    code, out, err = run(cli, source, tmp_path / "zegseg.pth", *args)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert message in err
    assert not (tmp_path / "zegseg.pth").exists()


# ------------------------------------------------------------------------------------------ the parity script
@pytest.fixture(scope="module")
def parity():
    spec = importlib.util.spec_from_file_location("official_parity", ROOT / "tools" / "check_official_parity.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_parity_metrics(parity):
    ref = torch.tensor([[0.0, 1.0, 2.0], [3.0, 2.0, 1.0]])
    row = parity.compare("x", ref + torch.tensor([[0.0, 0.0, 0.0], [0.0, 1.5, 0.0]]), ref, "argmax")
    assert row["max_abs"] == 1.5 and row["mean_abs"] == 0.25 and row["agreement"] == 0.5
    assert row["flips"] == 1 and row["max_flip_margin"] == 1.0  # official top-2 margin (3 - 2) where it flipped
    assert parity.compare("m", -ref, ref, "sign")["agreement"] == pytest.approx(1 / 6)  # only the zero agrees
    assert parity.compare("k", ref.T, ref.T, "argmax_classes_first")["agreement"] == 1.0
    assert "error" in parity.compare("s", ref[:1], ref, "")


def test_parity_inputs_are_shared_and_reproducible(parity, tmp_path):
    from zegseg.modeling.clip import load_clip

    state = parity.random_clip_state("tiny", seed=3)
    weights = [v for k, v in state.items() if v.is_floating_point() and k != "logit_scale"]  # OpenAI's: fp32
    assert all(torch.equal(v, v.half().float()) for v in weights)
    torch.save(state, tmp_path / "clip.pt")
    clip_model = load_clip(str(tmp_path / "clip.pt"))
    assert float(clip_model.logit_scale.exp()) == pytest.approx(100.0)
    assert clip_model.text_projection.shape == (64, 512)
    image = parity.synthetic_image(48, seed=3)
    assert image.dtype == torch.uint8 and image.shape == (3, 48, 48)
    assert torch.equal(image, parity.synthetic_image(48, seed=3)) and image.float().std() > 10
    with pytest.raises(SystemExit):  # not an official checkout
        parity.parse_args(["--official-root", str(tmp_path), "--model", "zegformer"])


def test_official_configs_are_merged_without_running_their_tags(parity, tmp_path, capsys):
    from detectron2.config import get_cfg

    marker = tmp_path / "ran"
    (tmp_path / "base.yaml").write_text(
        "INPUT:\n"
        f"  MIN_SIZE_TRAIN: !!python/object/apply:os.system [\"touch {marker}\"]\n"
        "  MIN_SIZE_TEST: 512\n"
        "MODEL:\n  PIXEL_STD: [1.0, 2.0, 3.0]\n"
    )
    (tmp_path / "child.yaml").write_text("_BASE_: base.yaml\nINPUT:\n  MIN_SIZE_TEST: 640\n")
    cfg = get_cfg()
    parity.merge_official_config(cfg, tmp_path / "child.yaml", tmp_path)
    assert not marker.exists()
    assert cfg.INPUT.MIN_SIZE_TEST == 640 and cfg.MODEL.PIXEL_STD == [1.0, 2.0, 3.0]
    assert cfg.INPUT.MIN_SIZE_TRAIN == get_cfg().INPUT.MIN_SIZE_TRAIN
    assert "INPUT.MIN_SIZE_TRAIN (!!python/object/apply:os.system)" in capsys.readouterr().out


def test_timing_worker_answers_each_image_with_wall_and_cpu_seconds(parity, tmp_path, monkeypatch, capsys):
    """The side-by-side benchmark's counters (bench/bench_official_side_by_side.py) on a run whose counts are
    known: one answer per requested image, the model called on exactly that image, and a wait that uses no CPU
    counted as wall time only."""
    import io
    import time

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.pt")
        torch.save(torch.full((3, 4, 5), i, dtype=torch.uint8), paths[-1])
    seen = []

    def final(image, clip_branch):
        seen.append((int(image[0, 0, 0]), tuple(image.shape), clip_branch))
        time.sleep(0.2)

    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(f"{p}\n" for p in paths)))
    parity.serve_timings(final)
    answers = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert seen == [(i, (3, 4, 5), True) for i in range(3)]
    assert len(answers) == 3 and all(" ".join(a[:-2]) == parity.TIMING_TAG for a in answers)
    for wall, cpu in ((float(a[-2]), float(a[-1])) for a in answers):
        assert wall >= 0.2 and cpu < 0.1
