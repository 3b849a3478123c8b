"""CLIP loading from local files: state dicts, TorchScript archives, clear errors, never the network."""
import socket

import clip.model
import pytest
import torch

from zegseg.modeling.clip import ClipWeightsNotFoundError, checkpoint_fingerprint, load_clip, resolve_clip_path


def test_loads_fp16_state_dict_as_fp32_on_cpu(tiny_clip_path):
    model = load_clip(str(tiny_clip_path))
    assert model.visual.input_resolution == 32 and model.context_length == 16
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in model.parameters())
    assert model.checkpoint_path == str(tiny_clip_path) and not model.training


def test_loads_torchscript_archive(tiny_clip_path, tmp_path):
    reference = load_clip(str(tiny_clip_path))
    traced = torch.jit.trace(
        reference, (torch.zeros(1, 3, 32, 32), torch.zeros(1, 16, dtype=torch.long)), check_trace=False
    )
    path = tmp_path / "tiny_jit.pt"
    traced.save(str(path))
    model = load_clip(str(path))
    tokens = clip.tokenize(["a photo of a cat"], context_length=16)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens))


def test_wrapped_state_dict(tiny_clip_path, tmp_path):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": torch.load(tiny_clip_path)}, path)
    assert load_clip(str(path)).visual.input_resolution == 32


def test_missing_named_weights_name_the_expected_file_without_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("load_clip tried to open a network connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    with pytest.raises(ClipWeightsNotFoundError) as err:
        load_clip("ViT-B/16", weights_dir=tmp_path)
    assert str(tmp_path / "ViT-B-16.pt") in str(err.value)


def test_weights_dir_and_env_lookup(tiny_clip_path, tmp_path, monkeypatch):
    (tmp_path / "ViT-B-32.pt").write_bytes(tiny_clip_path.read_bytes())
    assert resolve_clip_path("ViT-B/32", tmp_path) == tmp_path / "ViT-B-32.pt"
    monkeypatch.setenv("ZEGSEG_CLIP_DIR", str(tmp_path))
    assert resolve_clip_path("ViT-B/32") == tmp_path / "ViT-B-32.pt"


def test_unknown_name_and_bad_file(tmp_path):
    with pytest.raises(ClipWeightsNotFoundError, match="neither a known name"):
        load_clip("ViT-Z/99")
    bad = tmp_path / "bad.pt"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not an OpenAI-format CLIP"):
        load_clip(str(bad))


def test_fingerprint_depends_on_content(tiny_clip_path, tmp_path):
    copy = tmp_path / "copy.pt"
    copy.write_bytes(tiny_clip_path.read_bytes())
    assert checkpoint_fingerprint(copy) == checkpoint_fingerprint(tiny_clip_path)
    other = tmp_path / "other.pt"
    other.write_bytes(tiny_clip_path.read_bytes() + b"x")
    assert checkpoint_fingerprint(other) != checkpoint_fingerprint(tiny_clip_path)
