"""Losses of the feature-generation models: multi-bandwidth MMD (ZS3Net's GMMN, CaGNet's content loss), the
contextual latent code's KL divergence and CaGNet's masked L1 adversarial loss."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

__all__ = ["adversarial_l1", "classwise_mmd", "kl_divergence", "mmd"]


def mmd(x: Tensor, y: Tensor, sigmas: Sequence[float]) -> Tensor:
    """Square root of the (biased) maximum mean discrepancy between two sample sets, per group.

    The kernel is the sum over bandwidths ``k(a, b) = Σ_σ exp(-‖a - b‖² / (2σ))`` (σ multiplies the squared
    distance's scale as in the official ZS3Net/CaGNet code, i.e. it plays the role of a variance), and
    ``MMD² = mean k(x, x') + mean k(y, y') - 2 mean k(x, y)`` with every pair counted (diagonals included).

    Args:
        x: (G, N, D) samples of G groups (e.g. generated features of G classes).
        y: (G, M, D) samples of the same groups (e.g. real features).
        sigmas: the bandwidths σ.
    Returns:
        (G,) ``sqrt(max(MMD², 1e-12))``, differentiable in ``x`` and ``y``.
    """
    if not sigmas:
        raise ValueError("mmd needs at least one bandwidth")
    scales = torch.tensor([1.0 / (2.0 * s) for s in sigmas], dtype=x.dtype, device=x.device)

    def kernel_mean(a: Tensor, b: Tensor) -> Tensor:
        d2 = torch.cdist(a, b).pow(2)  # (G, Na, Nb)
        return torch.exp(-d2[..., None] * scales).sum(-1).mean(dim=(1, 2))

    mmd2 = kernel_mean(x, x) + kernel_mean(y, y) - 2.0 * kernel_mean(x, y)
    return mmd2.clamp_min(1e-12).sqrt()


def classwise_mmd(fake: Tensor, real: Tensor, sigmas: Sequence[float]) -> Tensor:
    """Mean over classes of :func:`mmd` between generated and real features of each class.

    Args:
        fake: (C, N, D) generated features, N per class.
        real: (C, M, D) real features of the same C classes.
        sigmas: kernel bandwidths.
    Returns:
        scalar; 0 (connected to ``fake``'s graph) when C is 0.
    """
    if fake.shape[0] == 0:
        return fake.sum() * 0.0
    return mmd(fake, real, sigmas).mean()


def kl_divergence(mu: Tensor, logvar: Tensor, valid: Tensor) -> Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) of a per-pixel latent code, averaged over the valid pixels and the channels.

    ``-½ Σ (1 + log σ² - μ² - σ²)`` over valid pixels × channels, divided by their number (valid pixels × D).

    Args:
        mu: (B, D, H, W) means.
        logvar: (B, D, H, W) log-variances.
        valid: (B, H, W) bool, the pixels that count (labelled with a seen class).
    Returns:
        scalar; 0 (connected to the graph) when no pixel is valid.
    """
    per_pixel = (-0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp())).sum(1)  # (B, H, W), summed over D
    weight = valid.to(per_pixel.dtype)
    return (per_pixel * weight).sum() / (weight.sum() * mu.shape[1]).clamp_min(1.0)


def adversarial_l1(scores: Tensor, target: float, valid: Tensor) -> Tensor:
    """CaGNet's adversarial loss (its "lsgan" option): ``|D(x) - target|`` averaged over the valid pixels.

    Args:
        scores: (B, 1, H, W) discriminator outputs in [0, 1] (after the sigmoid).
        target: 1.0 for "real", 0.0 for "generated".
        valid: (B, H, W) bool.
    Returns:
        scalar; 0 (connected to the graph) when no pixel is valid.
    """
    weight = valid.to(scores.dtype)
    return ((scores[:, 0] - target).abs() * weight).sum() / weight.sum().clamp_min(1.0)
