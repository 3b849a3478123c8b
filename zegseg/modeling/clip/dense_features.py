"""Dense CLIP features: one embedding in CLIP's joint image-text space per position of the image encoder's output
grid, from a frozen OpenAI CLIP (MaskCLIP, Zhou et al., ECCV 2022).

CLIP pools its image tower's last feature map into one vector with attention; the pooling's query-key part is what
mixes positions. Skipping it, and keeping every per-position computation, gives each position a vector that the
text embeddings can be compared with:

* **ViT**: the last transformer block runs its *value path* only: ``y = ln_1(x)``, ``v = out_proj(W_v y + b_v)``,
  ``x = x + v``, ``x = x + mlp(ln_2(x))`` (the residual and MLP kept; this is the block run with each token attending
  only to itself), then ``ln_post`` and ``proj`` on every patch token; the class token is dropped. The positional
  embedding is resized bicubically to the input's patch grid (any input size, see
  :func:`~zegseg.modeling.clip.image_encoder.embed_patches`). MaskCLIP's keys for key smoothing are
  ``out_proj(W_k y + b_k)``.
* **ResNet** (modified ResNet with an attention pool): the attention pool's value and output projections applied
  to the last feature map as 1x1 convolutions, ``c_proj(v_proj(x))``, without its positional embedding; the keys are
  ``k_proj(x)``.

A 1x1 grid therefore gives CLIP's own pooled embedding exactly when the pooling has nothing to mix: a ResNet whose
attention pool's positional embedding is zero (all its tokens are then equal), or a ViT whose last block attends
each token to itself.

:func:`encode_dense` is the entry point; :func:`dense_clip_features` also returns the keys and the last stage's
input (the "penultimate" features), and :func:`run_last_stage` / :class:`DenseProjection` run the last stage and the
projection separately, e.g. on trainable copies of them (TCL trains a copy of the last stage on the penultimate
features).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

from clip.model import ModifiedResNet, ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn
from torch.nn import functional as F

from .image_encoder import embed_patches

__all__ = [
    "DenseCLIPFeatures",
    "DenseProjection",
    "dense_clip_features",
    "dense_stride",
    "encode_dense",
    "last_stage",
    "run_last_stage",
]


class DenseCLIPFeatures(NamedTuple):
    """What :func:`dense_clip_features` returns (h, w: the image encoder's output grid).

    features: (B, D, h, w) embeddings in CLIP's joint space, not normalised.
    keys: (B, C, h, w) MaskCLIP's keys (C: the last stage's width), for key smoothing.
    penultimate: (B, C', h', w') the input of the last stage: the tokens entering the ViT's last block (patches only,
        (h', w') = (h, w)), or the ResNet's layer3 output ((h', w') = (2h, 2w)).
    """

    features: Tensor
    keys: Tensor
    penultimate: Tensor


def _visual(clip_model: nn.Module) -> nn.Module:
    visual = getattr(clip_model, "visual", clip_model)
    if not isinstance(visual, (VisionTransformer, ModifiedResNet)):
        raise ValueError(f"dense CLIP features need an OpenAI ViT or modified-ResNet image tower, got {type(visual)}")
    return visual


def dense_stride(clip_model: nn.Module) -> int:
    """Input pixels per output-grid cell: the ViT's patch size, or 32 for the modified ResNet."""
    visual = _visual(clip_model)
    if isinstance(visual, VisionTransformer):
        return int(visual.conv1.stride[0])
    return 32


def last_stage(clip_model: nn.Module) -> nn.Module:
    """The module that :func:`run_last_stage` runs: the ViT's last ``ResidualAttentionBlock`` or the ResNet's
    ``layer4`` (copy it with ``copy.deepcopy`` to train it)."""
    visual = _visual(clip_model)
    if isinstance(visual, VisionTransformer):
        return visual.transformer.resblocks[-1]
    return visual.layer4


def _value_path(block: ResidualAttentionBlock, x: Tensor) -> Tuple[Tensor, Tensor]:
    """A transformer block with each token attending only to itself: (..., width) tokens → (tokens, keys)."""
    attn = block.attn
    width = x.shape[-1]
    y = block.ln_1(x)
    w_k, w_v = attn.in_proj_weight[width : 2 * width], attn.in_proj_weight[2 * width :]
    b_k, b_v = attn.in_proj_bias[width : 2 * width], attn.in_proj_bias[2 * width :]
    v = attn.out_proj(F.linear(y, w_v, b_v))
    k = attn.out_proj(F.linear(y, w_k, b_k))
    x = x + v
    return x + block.mlp(block.ln_2(x)), k


def run_last_stage(clip_model: nn.Module, penultimate: Tensor, stage: Optional[nn.Module] = None) -> Tensor:
    """The last stage of CLIP's image tower on a penultimate feature map, the ViT's block by its value path.

    Args:
        clip_model: OpenAI CLIP (or its image tower); gives the stage when ``stage`` is None.
        penultimate: (B, C', h', w') as in :class:`DenseCLIPFeatures`.
        stage: a module of the same kind as :func:`last_stage`'s (e.g. a trainable copy); None: CLIP's own.
    Returns:
        (B, C, h, w) the stage's output (before the projection into the joint space).
    """
    stage = last_stage(clip_model) if stage is None else stage
    if isinstance(_visual(clip_model), VisionTransformer):
        tokens, _ = _value_path(stage, penultimate.flatten(2).transpose(1, 2))
        return _token_map(tokens, tuple(penultimate.shape[-2:]))
    return stage(penultimate)


class DenseProjection(nn.Module):
    """The projection of a last-stage feature map into CLIP's joint space, as 1x1 operations, with its own copy of
    CLIP's weights (trainable; CLIP's stay frozen): ViT ``ln_post`` then ``proj``; ResNet the attention pool's
    ``v_proj`` then ``c_proj``."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        visual = _visual(clip_model)
        if isinstance(visual, VisionTransformer):
            if visual.proj is None:
                raise ValueError("this ViT image tower has no output projection (proj is None)")
            width, dim = visual.proj.shape
            self.pre = nn.LayerNorm(width, eps=visual.ln_post.eps)
            self.pre.load_state_dict(visual.ln_post.state_dict())
            self.proj = nn.Linear(width, dim, bias=False)
            self.proj.weight = nn.Parameter(visual.proj.detach().T.clone())
        else:
            pool = visual.attnpool
            self.pre = nn.Linear(pool.v_proj.in_features, pool.v_proj.out_features)
            self.pre.load_state_dict(pool.v_proj.state_dict())
            self.proj = nn.Linear(pool.c_proj.in_features, pool.c_proj.out_features)
            self.proj.load_state_dict(pool.c_proj.state_dict())
        self.to(next(visual.parameters()))

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) → (B, D, h, w): ``proj(pre(x))`` at every position (``pre``: ``ln_post`` or ``v_proj``)."""
        return self.proj(self.pre(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)


def _resnet_penultimate(visual: ModifiedResNet, images: Tensor) -> Tensor:
    x = images.to(visual.conv1.weight.dtype)
    x = visual.relu1(visual.bn1(visual.conv1(x)))
    x = visual.relu2(visual.bn2(visual.conv2(x)))
    x = visual.avgpool(visual.relu3(visual.bn3(visual.conv3(x))))
    return visual.layer3(visual.layer2(visual.layer1(x)))


def _token_map(tokens: Tensor, grid: Tuple[int, int]) -> Tensor:
    """(B, h * w, C) tokens, row by row → (B, C, h, w)."""
    return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def _per_position(linear: nn.Linear, x: Tensor) -> Tensor:
    """A linear layer as a 1x1 convolution: (B, C, h, w) → (B, C_out, h, w)."""
    return F.conv2d(x, linear.weight[:, :, None, None], linear.bias)


def dense_clip_features(clip_model: nn.Module, images: Tensor) -> DenseCLIPFeatures:
    """Dense features, MaskCLIP's keys and the last stage's input (module docstring).

    Args:
        clip_model: frozen OpenAI CLIP (ViT or modified ResNet), or its image tower.
        images: (B, 3, H, W) CLIP-normalised (see :func:`~zegseg.modeling.clip.region_encoder.normalize_for_clip`),
            any size of at least one output cell; (h, w) = (H // s, W // s) with s = :func:`dense_stride` (a ResNet
            floors at each of its five halvings, so sizes that are multiples of 32 are exact).
    Returns:
        :class:`DenseCLIPFeatures` in the image tower's dtype (fp16 for OpenAI's releases on GPU).
    """
    visual = _visual(clip_model)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    stride = dense_stride(visual)
    if min(images.shape[-2:]) < stride:
        raise ValueError(f"input {tuple(images.shape[-2:])} is smaller than CLIP's {stride}-pixel output cell")
    if isinstance(visual, VisionTransformer):
        tokens, (gh, gw) = embed_patches(visual, images)
        blocks = visual.transformer.resblocks
        tokens = blocks[:-1](tokens.permute(1, 0, 2)).permute(1, 0, 2)  # NLD -> LND -> NLD
        patches = tokens[:, 1:]  # the class token cannot reach the patches in a self-attending block
        hidden, keys = _value_path(blocks[-1], patches)
        features = visual.ln_post(hidden) @ visual.proj
        return DenseCLIPFeatures(*(_token_map(t, (gh, gw)) for t in (features, keys, patches)))
    penultimate = _resnet_penultimate(visual, images)
    x = visual.layer4(penultimate)
    pool = visual.attnpool
    features = _per_position(pool.c_proj, _per_position(pool.v_proj, x))
    return DenseCLIPFeatures(features, _per_position(pool.k_proj, x), penultimate)


def encode_dense(clip_model: nn.Module, images: Tensor, *, return_penultimate: bool = False):
    """Per-position embeddings in CLIP's joint space (module docstring).

    Args:
        clip_model: frozen OpenAI CLIP (ViT or modified ResNet), or its image tower.
        images: (B, 3, H, W) CLIP-normalised images.
        return_penultimate: also return the last stage's input (see :class:`DenseCLIPFeatures`), from which
            ``DenseProjection(clip)(run_last_stage(clip, penultimate))`` gives the features again.
    Returns:
        (B, D, h, w) unnormalised embeddings at the encoder's output grid ((h, w) = (H, W) // :func:`dense_stride`),
        or ``(features, penultimate)`` with ``return_penultimate``.
    """
    out = dense_clip_features(clip_model, images)
    return (out.features, out.penultimate) if return_penultimate else out.features
