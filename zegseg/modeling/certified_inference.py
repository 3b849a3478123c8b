"""Certified fast mode: send CLIP queries in rounds until every pixel's class is provably exact mode's.

The semantic map of a mask-classification model is linear in its queries::

    scores[c] = calibrate(sum_q p_q(c) · basis_q)                 (K, H, W)

where ``p_q`` is query q's class distribution after the CLIP ensemble (known only once CLIP has seen q's crop)
and ``basis_q >= 0`` is q's mask at the output size (see :func:`score_basis`; bilinear resizing has non-negative
weights, so resizing the K-class map equals summing resized per-query maps, in either order exact mode uses).
Before CLIP runs, ``p_q(c) <= upper_q(c)`` (the meta-architecture's ``class_prob_bound``: its ensemble with the
largest probabilities CLIP can give). With ``A`` the scores of the queries sent so far and
``R[c] = sum_{q unsent} upper_q(c) · basis_q`` the most the others can add, a pixel whose best class ``c*`` under
``A`` has ``A[c*] > max_{c != c*} (A[c] + R[c]) + tol`` has class ``c*`` in exact mode too (the unsent queries can
only add, at most ``R``); ``tol`` (:data:`ROUNDING_TOLERANCE` of the map's largest score) covers float rounding.

Rounds: the first sends the selector's queries. After each round, the unsent queries that uncertain pixels need
are estimated (:func:`needed_queries`); if sending them would cost at least as much as sending all the rest
(``len(needed) + round_cost >= unsent``, ``round_cost`` being one round's overhead in crops), the rest go at
once and the map is exact mode's. So certification never takes more than one round beyond what a finishing
round needs, and on an image it cannot certify it costs exact mode plus one round.

Guarantee (``uncertain_fraction`` 0): every pixel's class is exact mode's, except pixels where exact mode's own two
best scores are within float rounding of each other (CLIP's crops are encoded in different batches, whose float
rounding differs). Only the scores of the queries sent are in the output: a certified map's values differ from
exact mode's; its argmax does not.
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["BLOCK", "ROUNDING_TOLERANCE", "certified_semantic_map", "needed_queries", "score_basis", "uncertain_pixels"]

ROUNDING_TOLERANCE = 1e-4
"""Margin, relative to the map's largest absolute score (at least 1), a pixel needs beyond its bound to count as
certified: far above float32 rounding of sums of a few hundred terms, far below any margin that matters."""

BLOCK = 4
"""Side, in output pixels, of the blocks of :func:`uncertain_pixels`' middle test."""


def score_basis(padded_masks: Tensor, resize: Callable[[Tensor], Tensor], resize_masks_first: bool) -> Tensor:
    """Per-query maps whose ``p``-weighted sum is the semantic map exact mode assembles.

    Args:
        padded_masks: (Q, H_pad, W_pad) mask logits at the padded input size.
        resize: crops (C, H_pad, W_pad) maps to the image and resizes them to the output, (C, height, width).
        resize_masks_first: exact mode's order: True resizes the logits, then takes the sigmoid; False (the
            official order) builds the map from the sigmoids at the padded size and resizes the map, which equals
            resizing each query's sigmoid (bilinear resizing is linear).
    Returns:
        (Q, height, width) non-negative maps.
    """
    if resize_masks_first:
        return resize(padded_masks).sigmoid_()
    return resize(padded_masks.sigmoid())


def uncertain_pixels(scores: Tensor, upper: Tensor, basis: Tensor, tol: float) -> Tuple[Tensor, Tensor]:
    """Pixels whose class the unsent queries could still change.

    Three tests, each exact about what it certifies and each run only on the pixels the one before left open: a
    class-independent slack (``R[c] <= sum_q max_c upper_q(c) · basis_q``), the per-class slack computed on
    blocks of :data:`BLOCK` × :data:`BLOCK` pixels (each query's largest weight in the block), and the per-class
    slack of the pixel itself.

    Args:
        scores: (K, H, W) calibrated scores of the queries sent.
        upper: (U, K) upper bounds of the unsent queries' class probabilities.
        basis: (U, H, W) their maps (:func:`score_basis`).
        tol: extra margin a certified pixel needs (float rounding).
    Returns:
        uncertain: (H, W) bool.
        margin: (H, W) ``scores[c*] - max_{c != c*} scores[c] - tol`` (what the unsent queries must stay below).
    """
    if len(scores) == 1:  # one class: nothing to decide
        return torch.zeros(scores.shape[1:], dtype=torch.bool, device=scores.device), scores[0]
    top = scores.topk(2, dim=0)
    margin = top.values[0] - top.values[1] - tol
    flat_basis = basis.flatten(1)
    uncertain = (upper.amax(dim=1) @ flat_basis).view_as(margin) >= margin
    height, width = margin.shape
    blocks = F.max_pool2d(basis[None], BLOCK, ceil_mode=True)[0]  # (U, H / BLOCK, W / BLOCK)
    block_slack = torch.einsum("qc,qhw->chw", upper, blocks).flatten(1)  # (K, blocks)
    rows = torch.arange(height, device=margin.device) // BLOCK
    cols = torch.arange(width, device=margin.device) // BLOCK
    block_of = (rows[:, None] * blocks.shape[2] + cols[None]).flatten()  # (H * W,) each pixel's block
    for slack in (lambda pixels: block_slack[:, block_of[pixels]], lambda pixels: upper.T @ flat_basis[:, pixels]):
        pixels = uncertain.flatten().nonzero().squeeze(1)
        if not len(pixels):
            break
        flat = scores.flatten(1)[:, pixels]  # (K, N)
        columns = torch.arange(len(pixels), device=flat.device)
        best = top.indices[0].flatten()[pixels]
        rivals = slack(pixels).add_(flat)  # (K, N): at least A[c] + R[c]
        rivals[best, columns] = float("-inf")
        uncertain.view(-1)[pixels] = flat[best, columns] <= rivals.amax(dim=0) + tol
    return uncertain, margin


def needed_queries(uncertain: Tensor, margin: Tensor, weight: Tensor, basis: Tensor, may_stay: int = 0) -> Tensor:
    """The unsent queries that must be sent for the uncertain pixels to become certified, if the queries sent
    were to add nothing to any class (the usual case for the "no object" queries that make up most of the rest).

    Per uncertain pixel, the queries of smallest weight there are left out as long as their summed weight stays
    below the pixel's margin; the others are needed. The ``may_stay`` pixels that need the most queries are
    given up (they may stay uncertain).

    Args:
        uncertain: (H, W) bool, from :func:`uncertain_pixels`.
        margin: (H, W) the pixels' margins.
        weight: (U,) ``max_c upper_q(c)`` of the unsent queries.
        basis: (U, H, W) their maps.
        may_stay: how many uncertain pixels need not be certified.
    Returns:
        (U,) bool.
    """
    pixels = uncertain.flatten().nonzero().squeeze(1)
    w = (weight[:, None] * basis.flatten(1)[:, pixels]).T.contiguous()  # (N, U)
    ascending, order = w.sort(dim=1)
    over = ascending.cumsum(dim=1) >= margin.flatten()[pixels].clamp(min=0)[:, None]
    if may_stay > 0:
        over[over.sum(dim=1).topk(min(may_stay, len(pixels))).indices] = False
    need = torch.zeros_like(over)
    need.scatter_(1, order, over)
    return need.any(dim=0)


def certified_semantic_map(
    *,
    first: Tensor,
    upper: Tensor,
    basis: Tensor,
    classify: Callable[[Tensor], Tensor],
    calibrate: Callable[[Tensor], Tensor],
    exact_map: Callable[[Tensor], Tensor],
    uncertain_fraction: float = 0.0,
    round_cost: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    """Send queries to CLIP in rounds until the map's classes are certified (module docstring).

    Args:
        first: (Q,) bool, the queries of the first round (at least one).
        upper: (Q, K) upper bounds of the queries' class probabilities before CLIP.
        basis: (Q, H, W) the queries' maps (:func:`score_basis`).
        classify: (M,) query indices → (M, K) their class probabilities (runs CLIP on their crops).
        calibrate: (K, H, W) raw map → calibrated scores (may work in place).
        exact_map: (Q, K) probabilities of every query → the map exact mode builds from them; used when every
            query has been sent.
        uncertain_fraction: stop once at most this fraction of the pixels is uncertain.
        round_cost: the overhead of one more round (a CLIP call and this check), in crops.
    Returns:
        scores: (K, H, W) calibrated scores of the queries sent.
        sent: (Q,) bool, the queries CLIP has seen.
    """
    num = len(upper)
    sent = first.clone()
    if not bool(sent.any()):
        raise ValueError("certification needs at least one query in its first round")
    if int(sent.sum()) + round_cost >= num:  # a round of checks cannot pay: this is exact mode
        sent[:] = True
    probs = torch.zeros_like(upper)
    known = torch.zeros_like(sent)
    raw = upper.new_zeros((upper.shape[1], *basis.shape[1:]))
    while True:
        new = (sent & ~known).nonzero().squeeze(1)
        probs[new] = classify(new).to(probs.dtype)
        known[new] = True
        if bool(known.all()):
            return exact_map(probs), known
        raw += torch.einsum("qc,qhw->chw", probs[new], basis[new])
        scores = calibrate(raw.clone())
        tol = ROUNDING_TOLERANCE * max(1.0, float(scores.abs().max()))
        unsent = (~known).nonzero().squeeze(1)
        uncertain, margin = uncertain_pixels(scores, upper[unsent], basis[unsent], tol)
        may_stay = int(uncertain_fraction * uncertain.numel())
        if int(uncertain.sum()) <= may_stay:
            return scores, known
        need = needed_queries(uncertain, margin, upper[unsent].amax(dim=1), basis[unsent], may_stay)
        if not bool(need.any()) or int(need.sum()) + round_cost >= len(unsent):
            sent[:] = True  # a round cannot finish cheaper than sending the rest at once
        else:
            sent[unsent[need]] = True
