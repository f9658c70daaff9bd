"""The torch data layer: training pairs with sampled negatives, and query and image batches, from
a prepared dataset folder.

- `TrainingPairs`: one item per (query, positive image) of a split, with `negatives` images
  drawn uniformly from the split's pool, never one of the query's positives. The draw depends
  on (seed, epoch, index) alone, so it is the same whatever the batch size, worker count,
  rank or order, and differs from epoch to epoch.
- Pool batches (`pool_negatives` set): the batch's queries share one pool instead, made of
  their positives and `pool_negatives` images drawn uniformly from the split (per seed, epoch
  and the batch's first pair), each image once; a mask says which pool images are positives of
  which query. Every query then meets P - (its positives) negatives, and each image of the
  batch is read and projected once. With `pool_word_share` > 0 that share of the draws is
  taken among the training images that share a query word with the batch's captions instead
  (see `_WordImages`), so the pool holds images that match a caption on one word and not on
  another: the negatives that only a second concept of the caption can tell apart.
- `train_loader`: a `DataLoader` over it (a `DistributedSampler` per rank, persistent workers,
  pinned memory on request). Call `loader.sampler.set_epoch(epoch)` at the start of each epoch,
  as with any distributed sampler: the epoch travels with each index to the workers. (A loader
  built by hand over `TrainingPairs` works too: call both the sampler's and the dataset's
  `set_epoch`; the dataset keeps its epoch in shared memory, which its workers read.)
- `query_batch`, `image_batch`: tensors for scoring (validation, evaluation, demo).

Features stay memory-mapped: each process (each loader worker) opens the file itself on first
use, and only the rows a batch needs are read. Keyword ids and query ids are shifted by one so
that 0 pads; an image keeps its `max_keywords` most frequent keywords (ties: lower id first).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._optional import require
from ..checks import real_number, whole_number
from ..errors import ConfigError, InputError

require("torch", "the training data loader")  # a one-line MissingDependencyError without torch

import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler  # noqa: E402

from ..prepare.format import PreparedDataset, load_prepared, map_features  # noqa: E402
from .batch import ImageBatch, QueryBatch, TrainBatch  # noqa: E402

__all__ = [
    "EpochSampler",
    "PairSample",
    "TrainingPairs",
    "collate_train",
    "image_batch",
    "query_batch",
    "train_loader",
]


# -- shared gathering ----------------------------------------------------------------------------
def _as_prepared(prepared: PreparedDataset | str | os.PathLike[str]) -> PreparedDataset:
    return prepared if isinstance(prepared, PreparedDataset) else load_prepared(prepared)


def _open_features(root: Path) -> np.ndarray:
    """The features memory-mapped, `(N, R, D)` (one file, or several read as one)."""
    return map_features(root)


def _gather_regions(features: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """`features[rows]` as float32, reading the file in row order."""
    flat = rows.reshape(-1)
    order = np.argsort(flat, kind="stable")
    out = np.empty((flat.size, *features.shape[1:]), dtype=np.float32)
    out[order] = features[flat[order]]  # sorted rows: sequential reads from the memmap
    return out.reshape(*rows.shape, *features.shape[1:])


@dataclass(frozen=True)
class _Keywords:
    """The CSR keyword matrix as its three arrays (no copies; cheap to send to a worker)."""

    indptr: np.ndarray  # (N + 1,)
    indices: np.ndarray  # (nnz,) word ids
    counts: np.ndarray  # (nnz,) int32 counts

    @classmethod
    def of(cls, prepared: PreparedDataset) -> _Keywords:
        matrix = prepared.keywords
        return cls(matrix.indptr, matrix.indices, matrix.data)

    def gather(self, rows: np.ndarray, max_keywords: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids + 1 (0 pads) and counts of each row's `max_keywords` most frequent keywords
        (ties: lower id first), padded to the longest row (at least 1 wide): shapes
        `(*rows.shape, K)`."""
        flat = rows.reshape(-1)
        starts = self.indptr[flat].astype(np.int64)
        lengths = self.indptr[flat + 1].astype(np.int64) - starts
        total = int(lengths.sum())
        first = np.cumsum(lengths) - lengths  # where each row's entries begin in the flat list
        segment = np.repeat(np.arange(flat.size), lengths)
        rank = np.arange(total) - np.repeat(first, lengths)
        where = np.repeat(starts, lengths) + rank
        ids, counts = self.indices[where], self.counts[where]
        if lengths.size and int(lengths.max()) > max_keywords:
            # Most frequent first within each row, ties by id; `segment` stays sorted.
            order = np.lexsort((ids, -counts, segment))
            ids, counts = ids[order], counts[order]
        keep = rank < max_keywords
        width = max(1, min(max_keywords, int(lengths.max(initial=0))))
        out_ids = np.zeros((flat.size, width), dtype=np.int64)
        out_counts = np.zeros((flat.size, width), dtype=np.float32)
        out_ids[segment[keep], rank[keep]] = ids[keep] + 1
        out_counts[segment[keep], rank[keep]] = counts[keep]
        return out_ids.reshape(*rows.shape, width), out_counts.reshape(*rows.shape, width)


def _pad(sequences: Sequence[np.ndarray]) -> np.ndarray:
    """Int64 sequences right-padded with 0 into `(len, max(1, longest))`."""
    width = max(1, max((s.size for s in sequences), default=0))
    out = np.zeros((len(sequences), width), dtype=np.int64)
    for i, sequence in enumerate(sequences):
        out[i, : sequence.size] = sequence
    return out


def _query_tokens(
    prepared: PreparedDataset, query_ids: np.ndarray, max_query_tokens: int
) -> list[np.ndarray]:
    """Each query's ids + 1, at most `max_query_tokens` of them (the first ones)."""
    return [t[:max_query_tokens] + 1 for t in prepared.query_token_ids(query_ids)]


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters every input bit."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _hash_below(
    seed: int,
    epochs: np.ndarray,
    indices: np.ndarray,
    round_: int,
    t: int,
    bounds: np.ndarray,
    stream: int = 0,
) -> np.ndarray:
    """`(B, t)` integers, entry (i, j) uniform in [0, bounds[i]) and a function of (seed,
    epochs[i], indices[i], round_, j, stream) alone. Streams other than 0 are independent of
    stream 0 (and of each other), which is every draw made before streams existed."""
    with np.errstate(over="ignore"):  # uint64 arithmetic wraps, as the hash intends
        h = _mix(np.full(indices.shape, seed, dtype=np.uint64) + _GOLDEN)
        if stream:
            h = _mix(h ^ (np.uint64(stream) + _GOLDEN))
        h = _mix(h ^ (epochs.astype(np.uint64) + _GOLDEN))
        h = _mix(h ^ (indices.astype(np.uint64) + _GOLDEN))
        j = np.arange(t, dtype=np.uint64) + np.uint64(round_ * t)
        h = _mix(h[:, None] ^ (j[None, :] + _GOLDEN))  # (B, t)
        # The top 32 bits scaled to the bound (bias below 2**-32 * bound: negligible).
        scaled = (h >> np.uint64(32)) * bounds.astype(np.uint64)[:, None]
        return (scaled >> np.uint64(32)).astype(np.int64)


# The hash streams of a pool's draws by word: which word, then which of its images. The uniform
# draws keep stream 0, so a pool without word draws is the pool drawn before they existed.
_WORD_STREAM, _IMAGE_STREAM = 1, 2
_UNIT = 2**32  # a draw's 32 random bits, read as a fraction of it


@dataclass(frozen=True)
class _WordImages:
    """The training captions' inverted index: for each query word, the pool positions of the
    images that are positives of a training query holding it, and the word's weight in a draw.

    The weight is one over the number of those images: a word every caption holds ("a") is
    drawn about never, a concept's name (some tens of images) often, and once drawn each of its
    images is as likely. A word whose captions describe one image only is never drawn: that
    image is the caption's own positive, already in the pool. Arrays only (cheap to send to a
    loader worker); built once from the prepared data, never from any planted truth.
    """

    indptr: np.ndarray  # (V + 1,) int64 over word ids + 1 (0 pads and holds nothing)
    positions: np.ndarray  # (entries,) int64: pool positions, sorted within each word
    weights: np.ndarray  # (V,) float64

    @classmethod
    def of(
        cls, tokens: np.ndarray, pair_query: np.ndarray, pair_position: np.ndarray, pool: int
    ) -> _WordImages:
        """From the queries' padded tokens `(Q, L)` (ids + 1), each training pair's query and
        its positive's pool position, and the pool's size."""
        words = tokens[pair_query]  # (pairs, L)
        held = words > 0
        word = words[held]
        position = np.broadcast_to(pair_position[:, None], words.shape)[held]
        keys = np.unique(word * pool + position)  # one entry per (word, image)
        word, position = keys // pool, keys % pool
        vocabulary = int(tokens.max(initial=0)) + 1
        images = np.bincount(word, minlength=vocabulary)  # (V,)
        indptr = np.zeros(vocabulary + 1, dtype=np.int64)
        np.cumsum(images, out=indptr[1:])
        weights = np.where(images >= 2, 1.0 / np.maximum(images, 1), 0.0)
        return cls(indptr, position.astype(np.int64), weights)

    def draw(self, words: np.ndarray, word_bits: np.ndarray, image_bits: np.ndarray) -> np.ndarray:
        """Pool positions of `word_bits.size` images: each a word of `words` (ids + 1, 0 pads;
        with repeats, as the batch's captions hold them) drawn by weight, then one of its images,
        both by 32 random bits; `(0,)` when no word of `words` can be drawn."""
        cumulative = np.cumsum(self.weights[words])
        total = float(cumulative[-1]) if cumulative.size else 0.0
        if total <= 0.0:
            return np.zeros(0, dtype=np.int64)
        wanted = word_bits.astype(np.float64) / _UNIT * total
        pick = np.searchsorted(cumulative, wanted, side="right").clip(max=words.size - 1)
        chosen = words[pick]
        start = self.indptr[chosen]
        count = (self.indptr[chosen + 1] - start).astype(np.uint64)
        offset = (image_bits.astype(np.uint64) * count) >> np.uint64(32)  # < count
        return self.positions[start + offset.astype(np.int64)]


def _repeats(values: np.ndarray) -> np.ndarray:
    """`(B, t)` bool: the entry repeats an earlier entry of its row."""
    order = np.argsort(values, axis=1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=1)
    later = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(later, order[:, 1:], ordered[:, 1:] == ordered[:, :-1], axis=1)
    return later


def _positive_judgments(prepared: PreparedDataset, split: str) -> Any:
    """The split's judgments with label > 0, one per (query, image), sorted by both; an
    `InputError` if there are none."""
    queries = prepared.split_queries(split)
    judgments = prepared.judgments
    positive = judgments[judgments["query_id"].isin(queries["query_id"]) & (judgments["label"] > 0)]
    if positive.empty:
        raise InputError(
            f"{prepared.root}: no {split} query has a judgment with label > 0, so there is "
            f"nothing to train on. Check judgments.parquet, or use another split."
        )
    return positive.drop_duplicates(["query_id", "img_id"]).sort_values(
        ["query_id", "img_id"], kind="stable"
    )


def _pool_positions(
    prepared: PreparedDataset,
    split: str,
    pool_ids: np.ndarray,
    pair_query_ids: np.ndarray,
    pair_img_ids: np.ndarray,
) -> np.ndarray:
    """Each pair's positive image as its position in the sorted `pool_ids`; an `InputError`
    naming the first positive outside the pool."""
    positions = np.searchsorted(pool_ids, pair_img_ids)
    outside = (positions >= pool_ids.size) | (
        pool_ids[np.minimum(positions, pool_ids.size - 1)] != pair_img_ids
    )
    if outside.any():
        bad = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"{prepared.root}: query {pair_query_ids[bad]} of split {split!r} has positive "
            f"image {pair_img_ids[bad]}, which is not in the {split} images. Prepare the "
            "dataset again."
        )
    return positions


# -- training pairs ------------------------------------------------------------------------------
@dataclass(frozen=True)
class PairSample:
    """One training item: a query with its positive image and `t` negatives."""

    tokens: np.ndarray  # (L,) int64: query-vocabulary id + 1
    regions: np.ndarray  # (1 + t, R, D) float32; index 0 is the positive
    keywords: np.ndarray  # (1 + t, K) int64: keyword id + 1, 0 pads
    counts: np.ndarray  # (1 + t, K) float32
    query: int = -1  # the query's index among the dataset's queries
    positive: int = -1  # the positive's feature row


class _Gathered(list):
    """The samples of one batch, plus the batch arrays they are views of (so that
    `collate_train` need not copy them again)."""

    arrays: tuple[np.ndarray, ...]
    rows: np.ndarray  # the feature rows of the images: pairs (B, M), pool (P,)
    pool: tuple[np.ndarray, np.ndarray] | None = None  # pool batches: positive mask, own column


class TrainingPairs(Dataset):
    """One item per (query, positive image) of `split`: the query's tokens, the positive and
    `negatives` images drawn uniformly from the split's images that are not positives of the
    query (without repeats when there are enough), reproducibly per (seed, epoch, index).

    A positive is a judgment with label > 0. Index with an int (the epoch set by `set_epoch`)
    or with an `(epoch, index)` pair, which is what `EpochSampler` yields.
    """

    def __init__(
        self,
        prepared: PreparedDataset | str | os.PathLike[str],
        split: str = "train",
        negatives: int = 4,
        seed: int = 0,
        max_keywords: int = 64,
        max_query_tokens: int = 32,
        pool_negatives: int | None = None,
        gather_regions: bool = True,
        pool_word_share: float = 0.0,
    ) -> None:
        prepared = _as_prepared(prepared)
        whole_number("negatives", negatives, low=0)
        if pool_negatives is not None:
            whole_number("pool_negatives", pool_negatives, low=0)
        real_number("pool_word_share", pool_word_share, low=0, high=1)
        if pool_word_share and pool_negatives is None:
            raise ConfigError(
                f"pool_word_share {pool_word_share!r} draws part of a pool batch's negatives; "
                "these pairs draw their own (pool_negatives is None). Set pool_negatives, or "
                "leave pool_word_share at 0.",
                parameter="pool_word_share",
            )
        whole_number("seed", seed, low=0)
        whole_number("max_keywords", max_keywords, low=1)
        whole_number("max_query_tokens", max_query_tokens, low=1)
        # None: pairs with their own `negatives`; a number: pool batches (see the module).
        self.pool_negatives = None if pool_negatives is None else int(pool_negatives)
        # False: the loader leaves the regions out (the trainer gathers them from features
        # resident on its device) and sends the feature rows instead.
        self.gather_regions = bool(gather_regions)
        self.split, self.negatives, self.seed = split, int(negatives), int(seed)
        self.max_keywords = int(max_keywords)
        # In shared memory, so that `set_epoch` reaches loader workers too, persistent ones
        # included: they read it when the next epoch's indices arrive.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()
        self.root = prepared.root
        query_ids = self._index_positives(prepared, split)
        self._index_queries(prepared, query_ids, max_query_tokens)
        self._keywords = _Keywords.of(prepared)
        # The pool's draws by word (see `_WordImages`): how many, and the index they read.
        self.pool_word_draws = round(float(pool_word_share) * (self.pool_negatives or 0))
        self._word_images = (
            _WordImages.of(
                self._tokens, self._pair_query, self._positive_positions, self._pool_rows.size
            )
            if self.pool_word_draws
            else None
        )
        self._features: np.ndarray | None = None
        self._features_pid = -1

    def _index_positives(self, prepared: PreparedDataset, split: str) -> np.ndarray:
        """Index the split's (query, positive image) pairs against its image pool; the distinct
        query ids, in order."""
        positive = _positive_judgments(prepared, split)
        pool_ids = np.sort(prepared.split_images(split))
        pair_query_ids = positive["query_id"].to_numpy(np.int64)
        pair_img_ids = positive["img_id"].to_numpy(np.int64)
        self._pool_rows = prepared.rows(pool_ids)  # (P,) feature rows of the pool
        # Each query's positives as sorted positions in the pool, one run per query.
        query_ids, first, per_query = np.unique(
            pair_query_ids, return_index=True, return_counts=True
        )
        positions = _pool_positions(prepared, split, pool_ids, pair_query_ids, pair_img_ids)
        self.query_ids = pair_query_ids  # (pairs,) the query of each item
        self.img_ids = pair_img_ids  # (pairs,) its positive image
        self._pair_query = np.repeat(np.arange(query_ids.size), per_query)  # (pairs,)
        self._pair_positive = self._pool_rows[positions]  # (pairs,) feature rows
        self._positive_positions = positions  # sorted within each query's run
        self._positive_start = first
        self._positive_count = per_query
        if self.negatives and (per_query >= pool_ids.size).any():
            bad = int(query_ids[np.flatnonzero(per_query >= pool_ids.size)[0]])
            raise InputError(
                f"{prepared.root}: every {split} image is a positive of query {bad}, so no "
                "negative can be drawn for it. Use --negatives 0 or a larger image pool."
            )
        return query_ids

    def _index_queries(
        self, prepared: PreparedDataset, query_ids: np.ndarray, max_query_tokens: int
    ) -> None:
        """The queries' padded tokens, and every positive (query, feature row) pair as one
        sorted key, for the pool's mask."""
        tokens = _query_tokens(prepared, query_ids, max_query_tokens)
        self._rows_total = int(prepared.features.shape[0])
        self._positive_keys = np.unique(self._pair_query * self._rows_total + self._pair_positive)
        self._tokens = _pad(tokens)  # (Q, L)
        self._token_lengths = np.array([t.size for t in tokens], dtype=np.int64)

    def __len__(self) -> int:
        return int(self._pair_query.size)

    @property
    def epoch(self) -> int:
        """The epoch whose negatives plain integer indices draw."""
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch of plain integer indices, in this process and in its loader workers
        (call it before iterating the loader for that epoch)."""
        whole_number("epoch", epoch, low=0)
        self._epoch.fill_(int(epoch))

    def __getstate__(self) -> dict[str, Any]:
        # The memmap stays behind: each worker opens the file itself.
        state = self.__dict__.copy()
        state["_features"], state["_features_pid"] = None, -1
        return state

    @property
    def features(self) -> np.ndarray:
        """The features, memory-mapped by this process on first use."""
        if self._features is None or self._features_pid != os.getpid():
            self._features = _open_features(self.root)
            self._features_pid = os.getpid()
        return self._features

    def _key(self, item: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(item, tuple):
            epoch, index = int(item[0]), int(item[1])
        else:
            epoch, index = self.epoch, int(item)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} training pairs")
        return epoch, index

    def negatives_for(self, item: int | tuple[int, int]) -> np.ndarray:
        """The feature rows of item's negatives, `(negatives,)`."""
        epoch, index = self._key(item)
        return self._negatives(np.array([epoch]), np.array([index]))[0]

    def _negatives(self, epochs: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """Feature rows of the negatives of items (epochs[i], indices[i]): `(B, negatives)`.

        Draw j of round r of an item is a hash of (seed, epoch, index, r, j), so every item's
        negatives are the same whatever batch it is in. Position k among the `free` pool images
        that are not the query's positives is then mapped to its pool position. Draws repeated
        within an item are drawn again in the next round while the pool allows no repeats.
        """
        queries = self._pair_query[indices]  # (B,)
        counts = self._positive_count[queries]  # (B,)
        free = self._pool_rows.size - counts  # (B,)
        t = self.negatives
        draws = _hash_below(self.seed, epochs, indices, 0, t, free)  # (B, t)
        distinct = t <= free  # rows that can avoid repeats
        for round_ in range(1, 64):
            repeated = _repeats(draws) & distinct[:, None]
            if not repeated.any():
                break
            fresh = _hash_below(self.seed, epochs, indices, round_, t, free)
            draws = np.where(repeated, fresh, draws)
        # Skip the excluded positions: excluded e_0 < e_1 < ... ; the k-th free position is
        # k + #{i : e_i - i <= k}. Rows are searched together by offsetting each by its item.
        starts = self._positive_start[queries]
        total = int(counts.sum())
        item = np.repeat(np.arange(indices.size), counts)
        rank = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
        excluded = self._positive_positions[np.repeat(starts, counts) + rank] - rank
        width = self._pool_rows.size + 1
        keys = item * width + excluded  # sorted: items ascending, each run non-decreasing
        wanted = np.arange(indices.size)[:, None] * width + draws  # (B, t)
        before = np.cumsum(counts) - counts  # keys of earlier items
        shift = np.searchsorted(keys, wanted, side="right") - before[:, None]
        return self._pool_rows[draws + shift]

    def __getitem__(self, item: int | tuple[int, int]) -> PairSample:
        return self.__getitems__([item])[0]

    def _regions(self, rows: np.ndarray) -> np.ndarray:
        """The regions of feature rows `rows` as float32, or `(*rows.shape, 0, 0)` when the
        trainer gathers them itself."""
        if self.gather_regions:
            return _gather_regions(self.features, rows)
        return np.zeros((*rows.shape, 0, 0), dtype=np.float32)

    def pool_rows(self, epoch: int, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The pool of a batch of items: its sorted feature rows `(P,)` (the items' positives
        and `pool_negatives` draws, each row once) and the mask `(B, P)` of the pool images
        that are positives of each item's query. The uniform draws depend on (seed, epoch, the
        first item) alone; the draws by word (`pool_word_draws` of them) on those and the
        words of the items' queries."""
        positives = self._pair_positive[indices]  # (B,)
        draws = self.pool_draws(epoch, indices)
        rows = np.unique(np.concatenate([positives, self._pool_rows[draws]]))  # (P,)
        queries = self._pair_query[indices]  # (B,)
        keys = queries[:, None] * self._rows_total + rows[None, :]  # (B, P)
        found = np.searchsorted(self._positive_keys, keys).clip(max=self._positive_keys.size - 1)
        return rows, self._positive_keys[found] == keys

    def pool_draws(self, epoch: int, indices: np.ndarray) -> np.ndarray:
        """The pool positions drawn for a batch of items, `(pool_negatives,)`, with repeats: the
        uniform draws first, then those by word (images that are positives of a training query
        sharing a word with the batch's queries; uniform draws instead when none of their words
        describes two images or more)."""
        count = int(self.pool_negatives or 0)
        by_word = np.zeros(0, dtype=np.int64)
        epochs, first = np.array([epoch]), indices[:1]
        if self._word_images is not None and self.pool_word_draws:
            words = self._tokens[self._pair_query[indices]].reshape(-1)
            unit = np.array([_UNIT])
            word_bits, image_bits = (
                _hash_below(self.seed, epochs, first, 0, self.pool_word_draws, unit, stream)[0]
                for stream in (_WORD_STREAM, _IMAGE_STREAM)
            )
            by_word = self._word_images.draw(words[words > 0], word_bits, image_bits)
        bound = np.array([self._pool_rows.size])
        # The uniform draws are the first ones of the stream without word draws: a pool with
        # pool_word_share 0 is the pool drawn before the option existed.
        uniform = _hash_below(self.seed, epochs, first, 0, count - by_word.size, bound)[0]
        return np.concatenate([uniform, by_word])

    def __getitems__(self, items: Sequence[int | tuple[int, int]]) -> list[PairSample]:
        """A batch of items, gathered together (one read of the features for all of them)."""
        keys = [self._key(item) for item in items]
        indices = np.array([index for _, index in keys], dtype=np.int64)
        if self.pool_negatives is not None:
            return self._pool_items(keys, indices)
        rows = np.empty((len(keys), 1 + self.negatives), dtype=np.int64)  # (B, M)
        rows[:, 0] = self._pair_positive[indices]
        rows[:, 1:] = self._negatives(np.array([epoch for epoch, _ in keys]), indices)
        regions = self._regions(rows)  # (B, M, R, D)
        keywords, counts = self._keywords.gather(rows, self.max_keywords)  # (B, M, K)
        queries = self._pair_query[indices]
        lengths = self._token_lengths[queries]
        tokens = self._tokens[queries, : max(1, int(lengths.max(initial=0)))]  # (B, L)
        samples = _Gathered(
            PairSample(
                tokens[i, : lengths[i]],
                regions[i],
                keywords[i],
                counts[i],
                int(queries[i]),
                int(rows[i, 0]),
            )
            for i in range(len(keys))
        )
        samples.arrays = (tokens, regions, keywords, counts)
        samples.rows = rows
        return samples

    def _pool_items(self, keys: list[tuple[int, int]], indices: np.ndarray) -> _Gathered:
        """A pool batch: each item as a sample of its positive alone, with the pool's arrays."""
        if len({epoch for epoch, _ in keys}) > 1:
            raise ConfigError("A pool batch takes items of one epoch.")
        rows, positive = self.pool_rows(keys[0][0], indices)  # (P,), (B, P)
        regions = self._regions(rows)  # (P, R, D)
        keywords, counts = self._keywords.gather(rows, self.max_keywords)  # (P, K)
        queries = self._pair_query[indices]
        lengths = self._token_lengths[queries]
        tokens = self._tokens[queries, : max(1, int(lengths.max(initial=0)))]  # (B, L)
        own = np.searchsorted(rows, self._pair_positive[indices])  # (B,)
        samples = _Gathered(
            PairSample(
                tokens[i, : lengths[i]],
                regions[own[i] : own[i] + 1],
                keywords[own[i] : own[i] + 1],
                counts[own[i] : own[i] + 1],
                int(queries[i]),
                int(rows[own[i]]),
            )
            for i in range(len(keys))
        )
        samples.arrays = (tokens, regions, keywords, counts)
        samples.pool = (positive, own)
        samples.rows = rows
        return samples


def collate_train(samples: Sequence[PairSample]) -> TrainBatch:
    """Stack `PairSample`s into a `TrainBatch` (queries padded to the longest, keywords to the
    widest image)."""
    arrays = getattr(samples, "arrays", None)
    pool = getattr(samples, "pool", None)
    rows = getattr(samples, "rows", None)
    if arrays is not None:
        tokens, regions, keywords, counts = arrays
    else:
        if not samples:
            raise ConfigError("collate_train needs at least one sample.")
        tokens = _pad([s.tokens for s in samples])
        regions = np.stack([s.regions for s in samples])
        width = max(s.keywords.shape[-1] for s in samples)
        keywords = np.zeros((len(samples), *samples[0].keywords.shape[:-1], width), np.int64)
        counts = np.zeros(keywords.shape, np.float32)
        for i, s in enumerate(samples):
            keywords[i, :, : s.keywords.shape[-1]] = s.keywords
            counts[i, :, : s.counts.shape[-1]] = s.counts
    return TrainBatch(
        query=_query_tensors(tokens),
        images=_image_tensors(regions, keywords, counts),
        query_keys=torch.tensor([s.query for s in samples], dtype=torch.int64),
        positive_keys=torch.tensor([s.positive for s in samples], dtype=torch.int64),
        pool_positive=None if pool is None else torch.from_numpy(pool[0]),
        pool_own=None if pool is None else torch.from_numpy(pool[1].astype(np.int64)),
        rows=None if rows is None else torch.from_numpy(rows),
    )


def _query_tensors(tokens: np.ndarray) -> QueryBatch:
    tensor = torch.from_numpy(tokens)  # (B, L)
    return QueryBatch(tokens=tensor, mask=tensor > 0)


def _image_tensors(regions: np.ndarray, keywords: np.ndarray, counts: np.ndarray) -> ImageBatch:
    region_tensor = torch.from_numpy(regions)  # (*S, R, D)
    keyword_tensor = torch.from_numpy(keywords)  # (*S, K)
    return ImageBatch(
        regions=region_tensor,
        # Every prepared image has all R regions; the mask is there for models and batches
        # that pad (a padded region would be False).
        region_mask=torch.ones(region_tensor.shape[:-1], dtype=torch.bool),  # (*S, R)
        keywords=keyword_tensor,
        keyword_counts=torch.from_numpy(counts),  # (*S, K)
        keyword_mask=keyword_tensor > 0,  # (*S, K)
    )


# -- loaders -------------------------------------------------------------------------------------
class EpochSampler(Sampler):
    """A `DistributedSampler` whose indices carry their epoch, `(epoch, index)`, so that loader
    workers (persistent ones included) draw that epoch's negatives. `set_epoch` each epoch."""

    def __init__(
        self,
        dataset: TrainingPairs,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        self.inner: DistributedSampler[int] = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        whole_number("epoch", epoch, low=0)
        self.epoch = int(epoch)
        self.inner.set_epoch(self.epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, index) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def train_loader(
    prepared: PreparedDataset | str | os.PathLike[str],
    *,
    split: str = "train",
    batch_size: int = 64,
    negatives: int = 4,
    seed: int = 0,
    workers: int = 0,
    pin_memory: bool = False,
    rank: int = 0,
    world_size: int = 1,
    max_keywords: int = 64,
    max_query_tokens: int = 32,
    shuffle: bool = True,
    pool_negatives: int | None = None,
    gather_regions: bool = True,
    pool_word_share: float = 0.0,
) -> DataLoader:
    """A loader of `TrainBatch`es over `split`'s training pairs for process `rank` of
    `world_size` (each rank sees its own share; together they cover every pair each epoch).

    Shuffled per (seed, epoch) and the negatives drawn per (seed, epoch, pair): call
    `loader.sampler.set_epoch(epoch)` before each epoch. `workers` > 0 loads in that many
    persistent worker processes. `pool_negatives` makes pool batches (see the module), and
    `pool_word_share` draws that share of their negatives by caption word;
    `gather_regions=False` leaves the regions to the trainer (features resident on a device).
    """
    whole_number("batch_size", batch_size, low=1)
    whole_number("workers", workers, low=0)
    whole_number("world_size", world_size, low=1)
    whole_number("rank", rank, low=0, high=world_size - 1)
    dataset = TrainingPairs(
        prepared,
        split=split,
        negatives=negatives,
        seed=seed,
        max_keywords=max_keywords,
        max_query_tokens=max_query_tokens,
        pool_negatives=pool_negatives,
        gather_regions=gather_regions,
        pool_word_share=pool_word_share,
    )
    sampler = EpochSampler(dataset, rank=rank, world_size=world_size, shuffle=shuffle, seed=seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate_train,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
        # The loader's own generator: drawing its worker seed from torch's global generator
        # would shift dropout's stream by how many loaders were made (resume, workers).
        generator=torch.Generator().manual_seed(seed),
    )


# -- scoring batches -----------------------------------------------------------------------------
def query_batch(
    prepared: PreparedDataset, query_ids: Sequence[int] | np.ndarray, max_query_tokens: int = 32
) -> QueryBatch:
    """The queries `query_ids` as padded token ids, `(Q, L)` (a query whose words are all
    unknown gets an all-False mask)."""
    whole_number("max_query_tokens", max_query_tokens, low=1)
    ids = np.asarray(query_ids, dtype=np.int64).reshape(-1)
    return _query_tensors(_pad(_query_tokens(prepared, ids, max_query_tokens)))


def image_batch(
    prepared: PreparedDataset, img_ids: Sequence[int] | np.ndarray, max_keywords: int = 64
) -> ImageBatch:
    """The images `img_ids` with leading shape `(N,)`: regions read from the memory-mapped
    features as float32, keywords as padded ids + counts (an image without keywords gets an
    all-False mask). `InputError` for an id without features."""
    whole_number("max_keywords", max_keywords, low=1)
    rows = prepared.rows(np.asarray(img_ids, dtype=np.int64).reshape(-1))
    regions = _gather_regions(prepared.features, rows)  # (N, R, D)
    keywords, counts = _Keywords.of(prepared).gather(rows, max_keywords)  # (N, K)
    return _image_tensors(regions, keywords, counts)
