"""The tensors a ranking model reads: a batch of queries and a batch of images.

The data layer (`data`) produces them, the models (`model`) consume them, and both the training
loop and evaluation move them to a device with `.to()`. Ids are shifted by one so that 0 is the
padding id of every embedding table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Self

import torch


class _TensorFields:
    """`.to()` and `.pin_memory()` over every tensor field (DataLoader pins any object with
    `pin_memory()`)."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Self:
        return type(self)(
            **{
                f.name: _move(getattr(self, f.name), device, non_blocking)
                for f in fields(self)  # type: ignore[arg-type]
            }
        )

    def pin_memory(self) -> Self:
        return type(self)(
            **{f.name: _pin(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
        )

    def map(self, function: Callable[[torch.Tensor], torch.Tensor]) -> Self:
        """The same batch with `function` applied to every tensor (a reshape, an index, ...)."""
        return type(self)(
            **{
                f.name: _apply(getattr(self, f.name), function)
                for f in fields(self)  # type: ignore[arg-type]
            }
        )


def _move(value: object, device: torch.device | str, non_blocking: bool) -> object:
    if isinstance(value, torch.Tensor | _TensorFields):
        return value.to(device, non_blocking=non_blocking)
    return value


def _apply(value: object, function: Callable[[torch.Tensor], torch.Tensor]) -> object:
    if isinstance(value, _TensorFields):
        return value.map(function)
    return function(value) if isinstance(value, torch.Tensor) else value


def _pin(value: object) -> object:
    if isinstance(value, torch.Tensor | _TensorFields):
        return value.pin_memory()
    return value


@dataclass(frozen=True)
class QueryBatch(_TensorFields):
    """Queries as padded token ids."""

    tokens: torch.Tensor  # (B, L) int64: query-vocabulary id + 1, 0 = padding
    mask: torch.Tensor  # (B, L) bool: True where a token is

    def __len__(self) -> int:
        return self.tokens.shape[0]


@dataclass(frozen=True)
class ImageBatch(_TensorFields):
    """Images as region features and a bag of keywords, over any leading shape `S`.

    `S` is `(B, M)` for each query's own candidates (in training `M = 1 + t`, the positive
    first) or `(N,)` for one pool of images that every query is scored against.
    """

    regions: torch.Tensor  # (*S, R, D) float: region or grid-cell features
    region_mask: torch.Tensor  # (*S, R) bool: True where a region is
    keywords: torch.Tensor  # (*S, K) int64: keyword-vocabulary id + 1, 0 = padding
    keyword_counts: torch.Tensor  # (*S, K) float: how often each keyword occurs
    keyword_mask: torch.Tensor  # (*S, K) bool: True where a keyword is; may be all False

    @property
    def shape(self) -> tuple[int, ...]:
        """The leading shape `S`."""
        return tuple(self.region_mask.shape[:-1])


@dataclass(frozen=True)
class TrainBatch(_TensorFields):
    """One training step's input, in one of two shapes.

    Pairs (the paper's): each query with its positive and `t` negatives of its own, `images`
    (B, 1 + t, ...) with the positive at index 0. Pool: the batch's queries share one pool of
    images (their positives and sampled negatives, each once), `images` (P, ...), with
    `pool_positive` saying which pool images are positives of which query and `pool_own` which
    one is each row's own positive.
    """

    query: QueryBatch  # (B, L)
    images: ImageBatch  # pairs (B, 1 + t, ...) | pool (P, ...)
    # Which query and which positive image each row holds (any ids that compare equal for the
    # same query or image): in-batch negatives must skip rows of the same query or image.
    query_keys: torch.Tensor | None = None  # (B,) int64
    positive_keys: torch.Tensor | None = None  # (B,) int64
    pool_positive: torch.Tensor | None = None  # (B, P) bool: image p is a positive of query b
    pool_own: torch.Tensor | None = None  # (B,) int64: the column of row b's own positive
    # The feature rows of the images, when the regions are gathered on the device from
    # resident features instead of by the loader (then `images.regions` is (*S, 0, 0)).
    rows: torch.Tensor | None = None  # pairs (B, 1 + t) | pool (P,) int64

    @property
    def pooled(self) -> bool:
        return self.pool_own is not None
