"""The feature-generation family (ZS3Net, CaGNet): parts on hand-built inputs, losses against hand computations,
each training stage lowering its loss, the no-unseen-labels guard, and a short run through the trainer."""
import argparse
import math

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import zegseg  # noqa: F401
from zegseg.data.datasets.register_toy import TOY_DATASETS, register_all_toy
from zegseg.data.toy.generate import generate_toy_world
from zegseg.engine import ZegsegTrainer, preflight
from zegseg.engine.setup_config import load_config
from zegseg.modeling.generative import (
    ContextualModule,
    DiscriminatorClassifier,
    GMMNGenerator,
    PixelFeatureGenerator,
    adversarial_l1,
    class_prior,
    classwise_mmd,
    kl_divergence,
    load_class_embeddings,
    mmd,
    sample_label_maps,
    sample_pixels_per_class,
)

TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.GENERATIVE.ASPP_CHANNELS", "32",
    "MODEL.GENERATIVE.PROJECT_CHANNELS", "32",
    "MODEL.GENERATIVE.HEAD_DIM", "32",
    "MODEL.ZS3NET.NOISE_DIM", "8",
    "MODEL.ZS3NET.GENERATOR_HIDDEN_DIM", "32",
    "MODEL.ZS3NET.SAMPLES_PER_CLASS", "16",
    "MODEL.ZS3NET.GENERATOR_START_ITER", "100",
    "MODEL.CAGNET.FEATURE_DIM", "16",
    "MODEL.CAGNET.CONTEXT_DIM", "16",
    "MODEL.CAGNET.GENERATOR_HIDDEN_DIMS", "[32]",
    "MODEL.CAGNET.GENERATOR_DROPOUTS", "[0.1]",
    "MODEL.CAGNET.DISCRIMINATOR_HIDDEN_DIM", "32",
    "MODEL.CAGNET.CONTENT_SAMPLES", "16",
    "MODEL.CAGNET.FINETUNE_START_ITER", "100",
    "MODEL.CAGNET.CYCLE_ITERS", "10",
]  # fmt: skip
NUM_SEEN = 26  # the toy world's seen classes (training vocabulary); 9 unseen


def tiny_model(name, clip_path, *opts):
    cfg = load_config(f"configs/toy/{name}.yaml", TINY + ["MODEL.CLIP.NAME", str(clip_path), *opts])
    torch.manual_seed(0)
    return build_model(cfg)


def seen_batch(n=2, size=64, seed=0):
    """Images of two flat halves labelled with two seen classes, a 255 (ignored) strip between them."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        a, b = torch.randperm(NUM_SEEN, generator=g)[:2].tolist()
        sem_seg = torch.full((size, size), b, dtype=torch.long)
        sem_seg[:, : size // 2] = a
        image = (sem_seg * 37 % 255).to(torch.uint8)[None].expand(3, -1, -1).clone()
        sem_seg[:, size // 2 - 2 : size // 2 + 2] = 255
        batch.append({"image": image, "sem_seg": sem_seg, "height": size, "width": size})
    return batch


def run_steps(model, batch, iteration, steps, key, lr=1e-3):
    """``steps`` AdamW steps at a fixed trainer iteration; the value of loss ``key`` per step."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    values = []
    model.train()
    with EventStorage(iteration):
        for _ in range(steps):
            losses = model(batch)
            opt.zero_grad()
            sum(losses.values()).backward()
            opt.step()
            values.append(float(losses[key].detach()))
    return values


def mean(xs):
    return sum(xs) / len(xs)


# ------------------------------------------------------------------------------------------------ parts, losses
def test_generators_and_discriminator_shapes():
    gmmn = GMMNGenerator(embed_dim=6, noise_dim=4, hidden_dim=8, feature_dim=5).eval()
    emb = torch.randn(3, 7, 6)
    assert gmmn(emb).shape == (3, 7, 5)
    noise = torch.rand(3, 7, 4)
    torch.testing.assert_close(gmmn(emb, noise), gmmn(emb, noise))  # eval: deterministic given the noise
    gen = PixelFeatureGenerator(embed_dim=6, latent_dim=5, hidden_dims=[8, 8], dropouts=[0.1, 0.5], feature_dim=5)
    out = gen(torch.randn(2, 6, 4, 3), torch.randn(2, 5, 4, 3))
    assert out.shape == (2, 5, 4, 3) and bool(((out > 0) & (out < 1)).all())  # sigmoid output, like real features
    with pytest.raises(ValueError, match="2 hidden layers need as many dropouts"):
        PixelFeatureGenerator(embed_dim=6, latent_dim=5, hidden_dims=[8, 8], dropouts=[0.1], feature_dim=5)
    disc = DiscriminatorClassifier(feature_dim=5, hidden_dim=8, num_classes=4).eval()
    realness, logits = disc(out)
    assert realness.shape == (2, 1, 4, 3) and logits.shape == (2, 4, 4, 3)
    assert bool(((realness > 0) & (realness < 1)).all())
    torch.testing.assert_close(disc.classify(out), logits)


def test_mmd_matches_a_hand_computation():
    x = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])  # one group, two samples
    y = torch.tensor([[[0.0, 1.0]]])

    def k(d2, sigmas):
        return sum(math.exp(-d2 / (2 * s)) for s in sigmas)

    for sigmas in ([1.0], [2.0, 5.0]):
        kxx = (k(0, sigmas) * 2 + k(1, sigmas) * 2) / 4  # d² of the pairs: 0, 1, 1, 0
        kyy = k(0, sigmas)
        kxy = (k(1, sigmas) + k(2, sigmas)) / 2  # ‖(0,0)-(0,1)‖² = 1, ‖(1,0)-(0,1)‖² = 2
        expected = math.sqrt(kxx + kyy - 2 * kxy)
        assert float(mmd(x, y, sigmas)[0]) == pytest.approx(expected, rel=1e-5)
    same = torch.randn(2, 5, 3)
    assert float(mmd(same, same, [2.0]).max()) < 1e-5  # identical sets: MMD 0 (up to the sqrt's floor)
    near, far = classwise_mmd(same, same + 0.1, [2.0]), classwise_mmd(same, same + 10.0, [2.0])
    assert float(far) > 10 * float(near) > 0
    assert float(classwise_mmd(same[:0], same[:0], [2.0])) == 0.0


def test_mmd_gradient_moves_generated_samples_towards_real_ones():
    real = torch.randn(1, 64, 3) + 3.0
    fake = torch.randn(1, 64, 3).requires_grad_()
    opt = torch.optim.Adam([fake], lr=0.1)
    first = float(classwise_mmd(fake, real, [2.0, 5.0]).detach())
    for _ in range(40):
        loss = classwise_mmd(fake, real, [2.0, 5.0])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(classwise_mmd(fake, real, [2.0, 5.0]).detach()) < 0.5 * first


def test_kl_matches_a_hand_computation():
    mu = torch.tensor([[[[0.5, -1.0]], [[0.0, 2.0]]]])  # (B=1, D=2, H=1, W=2)
    logvar = torch.tensor([[[[0.0, 1.0]], [[0.5, 0.0]]]])
    valid = torch.tensor([[[True, False]]])  # only the first pixel counts

    def kl(m, lv):
        return -0.5 * (1 + lv - m * m - math.exp(lv))

    expected = (kl(0.5, 0.0) + kl(0.0, 0.5)) / 2  # the first pixel's two channels, averaged
    assert float(kl_divergence(mu, logvar, valid)) == pytest.approx(expected, rel=1e-6)
    both = (kl(0.5, 0.0) + kl(0.0, 0.5) + kl(-1.0, 1.0) + kl(2.0, 0.0)) / 4
    assert float(kl_divergence(mu, logvar, torch.ones(1, 1, 2, dtype=torch.bool))) == pytest.approx(both, rel=1e-6)
    assert float(kl_divergence(torch.zeros(1, 3, 2, 2), torch.zeros(1, 3, 2, 2), torch.ones(1, 2, 2).bool())) == 0.0
    assert float(kl_divergence(mu, logvar, torch.zeros(1, 1, 2, dtype=torch.bool))) == 0.0


def test_adversarial_l1_matches_a_hand_computation():
    scores = torch.tensor([[[[0.9, 0.2], [0.6, 0.0]]]])
    valid = torch.tensor([[[True, True], [False, True]]])
    assert float(adversarial_l1(scores, 1.0, valid)) == pytest.approx((0.1 + 0.8 + 1.0) / 3)
    assert float(adversarial_l1(scores, 0.0, valid)) == pytest.approx((0.9 + 0.2 + 0.0) / 3)


def test_contextual_module_shapes_sampling_and_feature_formula():
    torch.manual_seed(0)
    cm = ContextualModule(feature_dim=6, hidden_dim=4, dilations=(1, 2, 5))
    h = torch.randn(2, 6, 9, 7)
    out = cm(h, sample=False)
    assert all(t.shape == (2, 6, 9, 7) for t in out)
    assert bool((out.logvar >= 0).all())
    torch.testing.assert_close(out.latent, out.mu)
    torch.testing.assert_close(out.features, torch.sigmoid(h + h * torch.sigmoid(out.mu)))
    sampled = cm(h, sample=True)
    torch.testing.assert_close(sampled.mu, out.mu)
    assert not torch.equal(sampled.latent, out.latent)


def test_random_label_maps_follow_the_prior():
    prior = class_prior(num_seen=2, num_unseen=1, unseen_rate=2.0)
    torch.testing.assert_close(prior, torch.tensor([0.2, 0.2, 0.6]))
    maps = sample_label_maps(4, 50, 50, prior, generator=torch.Generator().manual_seed(0))
    assert maps.shape == (4, 50, 50) and maps.dtype == torch.long
    freq = torch.bincount(maps.flatten(), minlength=3).float() / maps.numel()
    torch.testing.assert_close(freq, prior, atol=0.02, rtol=0)


def test_pixel_sampler_draws_only_labelled_pixels_of_each_class():
    labels = torch.tensor([3, 255, 1, 3, 3, 255, 1, 7])
    classes, index = sample_pixels_per_class(labels, num_classes=5, num_samples=20)
    assert classes.tolist() == [1, 3]  # 7 is not one of the 5 classes, 255 is ignored
    assert index.shape == (2, 20)
    assert bool((labels[index] == classes[:, None]).all())
    none, empty = sample_pixels_per_class(torch.full((4,), 255), num_classes=5, num_samples=3)
    assert none.numel() == 0 and empty.shape == (0, 3)


def test_embeddings_from_clip_or_files(tmp_path):
    names = ["cat", "dog", "sky"]
    text = lambda ns: torch.arange(len(ns) * 4, dtype=torch.float).view(len(ns), 4) + 1  # noqa: E731
    clip = load_class_embeddings("clip", names, text)
    torch.testing.assert_close(clip.norm(dim=-1), torch.ones(3))
    vectors = np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32)
    np.save(tmp_path / "w2v.npy", vectors)
    from_npy = load_class_embeddings(str(tmp_path / "w2v.npy"), names, text)
    torch.testing.assert_close(from_npy, torch.nn.functional.normalize(torch.from_numpy(vectors), dim=-1))
    torch.save({n: torch.from_numpy(v) for n, v in zip(reversed(names), vectors[::-1].copy())}, tmp_path / "w.pt")
    torch.testing.assert_close(load_class_embeddings(str(tmp_path / "w.pt"), names, text), from_npy)
    with pytest.raises(ValueError, match="has 3 rows for 2 classes"):
        load_class_embeddings(str(tmp_path / "w2v.npy"), names[:2], text)
    with pytest.raises(ValueError, match="no vector for horse"):
        load_class_embeddings(str(tmp_path / "w.pt"), ["cat", "horse"], text)
    with pytest.raises(ValueError, match="not found"):
        load_class_embeddings(str(tmp_path / "missing.npy"), names, text)
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="cannot read the class-embedding file"):
        load_class_embeddings(str(tmp_path / "bad.npy"), names, text)


def test_preflight_names_a_bad_embedding_file_in_one_line(tmp_path):
    np.save(tmp_path / "w2v.npy", np.zeros((30, 8), dtype=np.float32))  # the toy world has 35 classes
    for source, reason in ((tmp_path / "w2v.npy", "has 30 rows for 35 classes"), (tmp_path / "no.npy", "not found")):
        args = argparse.Namespace(
            config_file="configs/toy/zs3net.yaml",
            opts=["MODEL.GENERATIVE.EMBEDDINGS", str(source)],
            resume=False,
            eval_only=False,
        )
        with pytest.raises(SystemExit) as err:
            preflight(args)
        message = str(err.value)
        assert message.startswith("error: MODEL.GENERATIVE.EMBEDDINGS: ") and "\n" not in message
        assert reason in message


# --------------------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", ["zs3net", "cagnet"])
def test_inference_over_any_subset_of_the_trained_classes(name, tiny_clip_path):
    model = tiny_model(name, tiny_clip_path).eval()
    assert model.num_seen == NUM_SEEN and model.num_classes == 35
    assert model.generation_class_names[:NUM_SEEN] == model.train_class_names
    image = torch.randint(0, 255, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        out = model([{"image": image, "height": 128, "width": 192}])[0]["sem_seg"]
    assert out.shape == (35, 128, 192)
    torch.testing.assert_close(out.sum(0), torch.ones(128, 192))
    model.set_vocabulary(["red star", "sky"], unseen_classes=["red star"])
    with torch.no_grad():
        assert model([{"image": image}])[0]["sem_seg"].shape == (2, 64, 96)
    with pytest.raises(ValueError, match="not among them: zebra"):
        model.set_vocabulary(["sky", "zebra"])


def test_zs3net_stages_and_each_lowers_its_loss(tiny_clip_path):
    model = tiny_model("zs3net", tiny_clip_path)
    batch = seen_batch(seed=1)
    stage1 = run_steps(model, batch, iteration=0, steps=15, key="loss_sem_seg", lr=1e-2)
    assert mean(stage1[-3:]) < 0.7 * mean(stage1[:3])
    assert not bool(model.classifier_trained)
    before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("backbone.", "head."))}
    mmd_values = run_steps(model, batch, iteration=100, steps=30, key="loss_mmd", lr=3e-3)
    assert mean(mmd_values[-3:]) < 0.8 * mean(mmd_values[:3])
    cls_values = run_steps(model, batch, iteration=130, steps=30, key="loss_cls", lr=1e-2)
    assert mean(cls_values[-3:]) < 0.7 * mean(cls_values[:3])
    assert bool(model.classifier_trained)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "stage 2 must leave the network frozen"


def test_cagnet_stages_and_each_lowers_its_loss(tiny_clip_path):
    model = tiny_model("cagnet", tiny_clip_path)
    batch = seen_batch(seed=2)
    assert [model.stage(i) for i in (0, 99, 100, 109, 110, 119, 120)] == [
        "train", "train", "step1", "step1", "step2", "step2", "step1"
    ]  # fmt: skip
    with EventStorage(0):
        keys = set(model.train()(batch))
    assert keys == {
        "loss_disc", "loss_cls_real", "loss_cls_fake", "loss_kl", "loss_backbone_cls", "loss_gen_adv",
        "loss_gen_content",
    }  # fmt: skip
    train = run_steps(model, batch, iteration=0, steps=15, key="loss_cls_real", lr=1e-2)
    assert mean(train[-3:]) < 0.7 * mean(train[:3])
    content = run_steps(model, batch, iteration=100, steps=20, key="loss_gen_content", lr=1e-2)
    assert mean(content[-3:]) < 0.8 * mean(content[:3])
    transfer = run_steps(model, batch, iteration=110, steps=20, key="loss_cls_transfer", lr=3e-3)
    assert mean(transfer[-3:]) < 0.8 * mean(transfer[:3])


def test_cagnet_losses_reach_only_their_own_network(tiny_clip_path):
    """One backward over the summed losses: each loss's gradient stays in its network."""
    model = tiny_model("cagnet", tiny_clip_path).train()
    batch = seen_batch()
    owners = {
        "loss_disc": ("discriminator.trunk", "discriminator.gan_head"),
        "loss_cls_real": ("discriminator.trunk", "discriminator.cls_head"),
        "loss_kl": ("backbone", "head", "feature_proj", "contextual"),
        "loss_backbone_cls": ("backbone", "head", "feature_proj", "contextual"),
        "loss_gen_adv": ("generator",),
        "loss_gen_content": ("generator",),
    }
    for key, allowed in owners.items():
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        with EventStorage(0):
            model(batch)[key].backward()
        reached = {n for n, p in model.named_parameters() if p.grad is not None and bool(p.grad.abs().sum() > 0)}
        assert reached, key
        stray = sorted(n for n in reached if not n.startswith(allowed))
        assert not stray, (key, stray)


# ------------------------------------------------------------------------------------------ no unseen labels
@pytest.mark.parametrize("name", ["zs3net", "cagnet"])
def test_training_refuses_unseen_class_labels(name, tiny_clip_path):
    model = tiny_model(name, tiny_clip_path).train()
    batch = seen_batch()
    batch[0]["sem_seg"][0, 0] = NUM_SEEN  # the first unseen class's id in the generation vocabulary
    with EventStorage(0), pytest.raises(ValueError, match="not one of the 26 seen classes"):
        model(batch)


@pytest.mark.parametrize("name", ["zs3net", "cagnet"])
def test_toy_configs_train_on_seen_labels_only(name):
    cfg = load_config(f"configs/toy/{name}.yaml", ["MODEL.DEVICE", "cpu"])
    for dataset in cfg.DATASETS.TRAIN:
        assert TOY_DATASETS[dataset][1] == "labels_seen"  # never the labels_all folder


def test_cagnet_step2_reads_nothing_from_the_batch(tiny_clip_path):
    """Step 2's label maps are random: its losses are the same whatever the images and labels (even all ignored)."""
    model = tiny_model("cagnet", tiny_clip_path).train()
    empty = [{"image": torch.zeros(3, 64, 64, dtype=torch.uint8), "sem_seg": torch.full((64, 64), 255)}] * 2
    values = []
    for batch in (seen_batch(seed=3), empty):
        torch.manual_seed(5)
        with EventStorage(110):
            values.append({k: float(v.detach()) for k, v in model(batch).items()})
    assert values[0] == values[1] and set(values[0]) == {"loss_cls_transfer"}


def test_zs3net_unseen_features_come_from_embeddings_and_noise_only(tiny_clip_path):
    """The generator's inputs in stage 2: embeddings of the seen classes present in the labels (MMD side) and of
    every unseen class (classifier side), never an unseen layout; the classifier sees each unseen class equally."""
    model = tiny_model("zs3net", tiny_clip_path).train()
    calls = []
    model.generator.register_forward_pre_hook(lambda m, args: calls.append(args[0].detach().clone()))
    seen_inputs = []
    model.classifier.register_forward_pre_hook(lambda m, args: seen_inputs.append(args[0].shape[0]))
    batch = seen_batch(seed=4)
    present = sorted({int(c) for x in batch for c in x["sem_seg"].unique() if int(c) != 255})
    with EventStorage(100):
        model(batch)
    emb = model.class_embeddings
    n = model.samples_per_class
    assert len(calls) == 2
    torch.testing.assert_close(calls[0], emb[present, None].expand(-1, n, -1))
    torch.testing.assert_close(calls[1], emb[NUM_SEEN:, None].expand(-1, n, -1))
    assert seen_inputs == [(len(present) + 35 - NUM_SEEN) * n]


# ---------------------------------------------------------------------------------------------- trainer run
@pytest.fixture(scope="module")
def gen_toy_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    generate_toy_world(root, counts={"train": 6, "val": 2}, workers=1)
    register_all_toy(root, prefix="gen_")
    return root


@pytest.mark.parametrize("name", ["zs3net", "cagnet"])
def test_one_command_runs_both_stages_and_evaluates(name, gen_toy_root, tiny_clip_path, tmp_path):
    assert "gen_toy_train_seen_sem_seg" in DatasetCatalog.list()
    cfg = load_config(
        f"configs/toy/{name}.yaml",
        TINY
        + [
            "MODEL.CLIP.NAME", str(tiny_clip_path),
            "DATASETS.TRAIN", "('gen_toy_train_seen_sem_seg',)",
            "DATASETS.TEST", "('gen_toy_val_all_sem_seg',)",
            "MODEL.ZS3NET.GENERATOR_START_ITER", "2",
            "MODEL.CAGNET.FINETUNE_START_ITER", "2",
            "MODEL.CAGNET.CYCLE_ITERS", "1",
            "SOLVER.MAX_ITER", "4",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.CHECKPOINT_PERIOD", "100",
            "INPUT.MIN_SIZE_TRAIN", "(64,)",
            "INPUT.MIN_SIZE_TEST", "64",
            "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(tmp_path / "out"),
        ],
    )  # fmt: skip
    trainer = ZegsegTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = ZegsegTrainer.test(cfg, trainer.model)["sem_seg"]
    assert all(0.0 <= results[k] <= 100.0 for k in ("mIoU-seen", "mIoU-unseen", "hIoU"))
    state = torch.load(tmp_path / "out" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    if name == "zs3net":
        assert bool(state["classifier_trained"])  # stage 2 ran, and the switch survives the checkpoint
