"""Shared test fixtures: tiny models on CPU, two threads at most (the CI machine has two cores)."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_clip_path(tmp_path_factory):
    """A random-weight OpenAI-architecture CLIP (ViT, 32 px, width 64), saved as an fp16 state dict."""
    import clip.model

    torch.manual_seed(0)
    model = clip.model.CLIP(
        embed_dim=32,
        image_resolution=32,
        vision_layers=1,
        vision_width=64,
        vision_patch_size=8,
        context_length=16,
        vocab_size=49408,
        transformer_width=64,
        transformer_heads=1,
        transformer_layers=1,
    )
    clip.model.convert_weights(model)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip.pt"
    torch.save(model.state_dict(), path)
    return path
