"""The ranking losses AMC is trained with, importable without the trainer: a hinge on the margin
between a query's positive image and its negatives, either the paper's `t` sampled negatives
of each pair (`hinge_ranking_loss`) or every negative of a pool the batch shares
(`pool_hinge_loss`); and the terms beside it that shape the attention and the gate
(`attention_entropy`, `gate_routing_loss`, `attention_target_loss`)."""

from __future__ import annotations

import torch


def hinge_ranking_loss(
    scores: torch.Tensor,
    margin: float,
    in_batch: torch.Tensor | None = None,
    in_batch_negative: torch.Tensor | None = None,
    query_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of `max(0, margin - s(q, v+) + s(q, v-))` over every negative of every query.

    `scores` is `(B, 1 + t)`, the positive first (the paper's `t` sampled negatives). With
    `in_batch` (`(B, B)`: each query against every query's positive, its own on the diagonal)
    the other queries' positives count as negatives too, where `in_batch_negative` (`(B, B)`
    bool) allows: rows of the same query, or with the same positive image, are no negatives.
    `query_weights` `(B,)` (without `in_batch`): each query's terms count that many times.
    """
    positive = scores[:, :1]  # (B, 1)
    losses = (margin - positive + scores[:, 1:]).clamp(min=0)  # (B, t)
    if query_weights is not None:
        losses = losses * query_weights.to(losses.dtype).unsqueeze(1)
    total, count = losses.sum(), losses.numel()
    if in_batch is not None and in_batch.shape[0] > 1:
        own = in_batch.diagonal().unsqueeze(1)  # (B, 1)
        others = ~torch.eye(in_batch.shape[0], dtype=torch.bool, device=in_batch.device)
        if in_batch_negative is not None:
            others &= in_batch_negative
        extra = (margin - own + in_batch).clamp(min=0)[others]  # (pairs,)
        total, count = total + extra.sum(), count + extra.numel()
    return total / max(count, 1)


def pool_hinge_loss(
    scores: torch.Tensor,
    own: torch.Tensor,
    positive: torch.Tensor,
    margin: float,
    hardest: bool = False,
    reduction: str = "all",
    violating_weight: float = 0.0,
    query_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The hinge over a shared pool: `max(0, margin - s(q, v+) + s(q, v-))` for each query's own
    positive `v+` against every pool image `v-` that is none of the query's positives.

    `scores` is `(B, P)` (every query against every pool image), `own` `(B,)` the column of
    each query's own positive, `positive` `(B, P)` bool the pool images that are positives of
    each query (its own included), which are never negatives. The mean over every (query,
    negative) cell; with `hardest`, VSE++'s max violation: each query's largest term only,
    averaged over the queries that have a negative. `reduction="violating"`: the mean over the
    cells that violate the margin only, so that the few negatives still ranked too high (those
    sharing all but one concept with the positive) are not diluted by the many already beaten.
    `reduction="per-query"`: each query's hinge averaged over its own violating cells, then over
    the queries that have any, so each query still ranking a negative too high weighs the same:
    one whose violators cannot all be beaten (scored with one modality alone, against images
    that share that modality's concept) weighs as one query, not as its many cells.
    `reduction="mixed"`: half the violating mean, half the per-query mean.
    `violating_weight` (with the mean over every cell): that many times the violating mean is
    added, a middle between the two. Within a batch the two means differ by one factor (negative
    cells / violating cells), so each is the other with a per-batch step size.
    `query_weights` `(B,)`: each query's terms count that many times (the counts of cells and
    queries that divide them do not change).
    """
    rows = torch.arange(scores.shape[0], device=scores.device)
    own_scores = scores[rows, own].unsqueeze(1)  # (B, 1)
    negative = ~positive  # (B, P)
    terms = (margin - own_scores + scores).clamp(min=0) * negative  # (B, P), 0 off negatives
    violates = terms > 0  # counted before any weights, which may be 0
    if query_weights is not None:
        terms = terms * query_weights.to(terms.dtype).unsqueeze(1)
    if hardest:
        has_negative = negative.any(1)  # (B,)
        worst = terms.max(1).values  # (B,): 0 where a query has no negative
        return (worst * has_negative).sum() / has_negative.sum().clamp(min=1)
    if reduction in ("per-query", "mixed"):
        violating_cells = violates.sum(1)  # (B,)
        per_query = terms.sum(1) / violating_cells.clamp(min=1)  # 0 where none violates
        per_query_mean = per_query.sum() / (violating_cells > 0).sum().clamp(min=1)
        if reduction == "per-query":
            return per_query_mean
        cells = terms.sum() / violating_cells.sum().clamp(min=1)
        return 0.5 * cells + 0.5 * per_query_mean
    total = terms.sum()
    if reduction == "violating" or violating_weight:
        violating = total / violates.sum().clamp(min=1)
        if reduction == "violating":
            return violating
        return total / negative.sum().clamp(min=1) + violating_weight * violating
    return total / negative.sum().clamp(min=1)


def attention_entropy(
    weights: torch.Tensor, pairs: torch.Tensor, floor: float = 0.0
) -> torch.Tensor:
    """The mean entropy, in nats, of the attention rows `weights` (..., T) (each a distribution
    over an image's items, or all 0 for an image without any) over the rows `pairs` (...) picks
    (bool, or float weights of a weighted mean); 0 where it picks none. With `floor`, each row
    counts only its entropy above that many nats: a row already that sharp adds nothing. Its
    gradient sharpens each row toward the items it already favours. Padding (weight 0) adds
    nothing and passes no gradient."""
    weights = weights.float()
    entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1)  # (...)
    if floor > 0:
        entropy = (entropy - floor).clamp_min(0)
    pairs = pairs.to(entropy.dtype)
    return (entropy * pairs).sum() / pairs.sum().clamp(min=1e-12)


def gate_routing_loss(
    alone: torch.Tensor,
    gate: torch.Tensor,
    own: torch.Tensor,
    positive: torch.Tensor,
    margin: float,
    temperature: float = 0.3,
) -> torch.Tensor:
    """A divergence that teaches the modality gate, for each query, the modality that alone
    ranks the query's own positive above its negatives better than it does for the batch's
    other queries.

    `alone` is `(B, P, 2)`: each pool image's score with the visual / keyword modality alone;
    `gate` `(B, P, 2)` the gate's weights; `own` `(B,)` and `positive` `(B, P)` as for
    `pool_hinge_loss`. Each modality's hinge alone (its mean over the query's negatives) says
    how well that modality ranks by itself; the difference between the two is taken from its
    mean over the batch, so that a modality which ranks better for every query (the keywords,
    early in training) does not draw every query to it, and only what this query asks of one
    modality more than the others do remains. That difference over `temperature` times its
    spread over the batch, through a sigmoid, is the target weight of the visual modality; the
    loss is the Kullback-Leibler divergence of the gate's weights on the own positive from it
    (0 where the gate gives the target), averaged over the queries whose positive has both
    modalities. The target is held fixed: only the gate learns from it. 0 where fewer than two
    queries qualify."""
    rows = torch.arange(alone.shape[0], device=alone.device)
    alone = alone.detach().float()
    negative = (~positive).to(alone.dtype).unsqueeze(-1)  # (B, P, 1)
    own_alone = alone[rows, own].unsqueeze(1)  # (B, 1, 2)
    terms = (margin - own_alone + alone).clamp(min=0) * negative  # (B, P, 2)
    hinge = terms.sum(1) / negative.sum(1).clamp(min=1)  # (B, 2)
    weights = gate[rows, own].float()  # (B, 2)
    # Masked means rather than a selection, so that no step waits for the device to count the
    # usable queries.
    usable = ((weights > 0).all(-1) & (~positive).any(1)).to(alone.dtype)  # both, a negative
    count = usable.sum()
    preference = hinge[:, 1] - hinge[:, 0]  # > 0: the visual modality ranks better
    preference = (preference - (preference * usable).sum() / count.clamp(min=1)) * usable
    spread = ((preference**2).sum() / (count - 1).clamp(min=1)).sqrt().clamp_min(1e-6)
    visual = torch.sigmoid(preference / (temperature * spread))
    target = torch.stack([visual, 1 - visual], -1)  # (B, 2)
    divergence = (target * (target.clamp_min(1e-12).log() - weights.clamp_min(1e-12).log())).sum(
        -1
    )  # (B,)
    return (divergence * usable).sum() / count.clamp(min=1) * (count >= 2)


def attention_target_loss(
    attention: torch.Tensor,
    match: torch.Tensor,
    mask: torch.Tensor,
    pairs: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """The cross-entropy from a target to an attention over one modality's items (regions, or
    keywords), averaged over the rows `pairs` picks (bool, or float weights of a weighted
    mean); 0 where it picks none.

    `attention` is `(..., T)`, the weights over an image's items; `match` `(..., T)` how well
    each item's value matches the query (a cosine) and `mask` (broadcastable) its real items.
    The target is the softmax of `match` over `temperature`, held fixed: the items whose values
    already say what the query asks. An item's logit then moves by its weight less its target,
    so an item the attention has all but left (a concept it has not found) still draws it,
    where the ranking loss moves each logit in proportion to its weight. An image without
    items of the modality adds nothing."""
    logits = (match.detach().float() / temperature).masked_fill(~mask, float("-inf"))
    anything = mask.any(-1, keepdim=True)
    target = torch.softmax(logits.masked_fill(~anything, 0.0), -1) * anything  # (..., R)
    cross = -(target * attention.float().clamp_min(1e-12).log()).sum(-1)  # (...)
    pairs = pairs.to(cross.dtype)
    return (cross * pairs).sum() / pairs.sum().clamp(min=1e-12)
