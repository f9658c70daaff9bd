"""The ranking loss AMC is trained with: a hinge on the margin between a query's positive image
and its negatives, importable without the trainer."""

from __future__ import annotations

import torch


def hinge_ranking_loss(
    scores: torch.Tensor,
    margin: float,
    in_batch: torch.Tensor | None = None,
    in_batch_negative: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of `max(0, margin - s(q, v+) + s(q, v-))` over every negative of every query.

    `scores` is `(B, 1 + t)`, the positive first (the paper's `t` sampled negatives). With
    `in_batch` (`(B, B)`: each query against every query's positive, its own on the diagonal)
    the other queries' positives count as negatives too, where `in_batch_negative` (`(B, B)`
    bool) allows: rows of the same query, or with the same positive image, are no negatives.
    """
    positive = scores[:, :1]  # (B, 1)
    losses = (margin - positive + scores[:, 1:]).clamp(min=0)  # (B, t)
    total, count = losses.sum(), losses.numel()
    if in_batch is not None and in_batch.shape[0] > 1:
        own = in_batch.diagonal().unsqueeze(1)  # (B, 1)
        others = ~torch.eye(in_batch.shape[0], dtype=torch.bool, device=in_batch.device)
        if in_batch_negative is not None:
            others &= in_batch_negative
        extra = (margin - own + in_batch).clamp(min=0)[others]  # (pairs,)
        total, count = total + extra.sum(), count + extra.numel()
    return total / max(count, 1)
