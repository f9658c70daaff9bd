"""The scoring kernel that evaluation and validation share: every query of a split against
every image of it, in tiles of bounded memory, each tile folded into the metrics at once.

1. Images are encoded once, a block at a time, into their query-independent parts (whatever
   the model's `_encode_images` gives: projected region keys and values, keyword embeddings,
   masks; cca's canonical vectors).
2. Queries are encoded once (`_encode_query`), all of them: a few vectors of the shared space
   each, small beside the images.
3. A tile (a block of queries x a block of images) is scored by the dense path (`DenseScorer`)
   for the attention family (AMC, its ablations, the visual / keyword / fusion baselines): the
   model's math rewritten as a few large matrix products on precomputed unit keys (see
   `DenseScorer`), float32. Any other model (cca, a plugin, a model in training mode, bf16
   autocast on CUDA) is scored by its own `_score` in pool mode. The model's `score_pool`
   computes the same, but encodes its images again for every chunk of queries.
4. Each tile goes to a reducer (`amc_data.evaluation.streaming.PoolReduction`): top-k per
   query, judged cells, AUC counts, caption ranks. Nothing of size queries x images is held.

The kernel reads the model's encode and score steps (`_encode_images`, `_encode_query`,
`_score`): they are the parts `score_pool` is made of, shared by every registered model kind.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor

from ..evaluation.streaming import TILE_BYTES, CellValues, PoolReduction, TileGrid, tile_grid
from ..progress import progress_bar
from .data import image_batch, query_batch
from .model import AttentionModel, EncodedImages, EncodedModality, EncodedQuery

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset
    from .model import RankingModel

log = logging.getLogger(__name__)

QUERY_BLOCK = 4096  # queries encoded per forward pass
BATCH_ELEMENTS = 1 << 25  # raw region values read per image block: 128 MiB of float32


def precision_context(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA when `amp`; nothing elsewhere (the same code runs on the CPU)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


Job = TypeVar("Job")
Result = TypeVar("Result")


def scoring_workers(device: torch.device | str, workers: int | None = None) -> int:
    """How many threads score tiles side by side: `workers`, by default torch's thread count,
    on the CPU; one on a GPU (its kernels already run one after another)."""
    if torch.device(device).type != "cpu":
        return 1
    return max(1, torch.get_num_threads() if workers is None else int(workers))


# torch's thread count is kept per thread, and a new thread (each scoring thread) takes the
# process's setting: scorers running at once (the search page's runs) share that one setting,
# saved by the first to start and set back by the last to finish.
_THREADS_LOCK = threading.Lock()
_threads_saved = {"inside": 0, "count": 0}


@contextmanager
def _one_torch_thread_each(workers: int) -> Iterator[None]:
    """torch's intra-op threads set to one while `workers` threads score side by side, then
    set back."""
    if workers <= 1:
        yield
        return
    with _THREADS_LOCK:
        if _threads_saved["inside"] == 0:
            _threads_saved["count"] = torch.get_num_threads()
            torch.set_num_threads(1)
        _threads_saved["inside"] += 1
    try:
        yield
    finally:
        with _THREADS_LOCK:
            _threads_saved["inside"] -= 1
            if _threads_saved["inside"] == 0:
                torch.set_num_threads(_threads_saved["count"])


def in_order(
    function: Callable[[Job], Result], jobs: Iterable[Job], workers: int
) -> Iterator[Result]:
    """`function(job)` for each of `jobs`, computed by `workers` threads with one torch thread
    each and given in the jobs' order; at most two jobs a worker are in flight (memory stays
    bounded). Why: the kernel's steps are many medium-sized operations; torch's own threads
    split each of them and meet at a barrier after it, which a second busy process on the
    machine stalls every time (measured on the 2-core machine: one query over 200,000 images
    18.1 s with two torch threads beside another job, 1.06 s with one), while whole tiles side
    by side never wait for each other. A tile's bits do not depend on the number of workers.
    """
    if workers <= 1:
        for job in jobs:
            yield function(job)
        return
    pending: deque[Future[Result]] = deque()
    with (
        _one_torch_thread_each(workers),
        ThreadPoolExecutor(workers, thread_name_prefix="amc-score") as pool,
    ):
        try:
            for job in jobs:
                pending.append(pool.submit(function, job))
                if len(pending) >= 2 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def take(encoded: Any, index: slice | torch.Tensor) -> Any:
    """The rows `index` (leading axis) of an encoded batch: a tensor, None, or a dataclass of
    them (nested), as `_encode_images` and `_encode_query` return."""
    if encoded is None:
        return None
    if isinstance(encoded, torch.Tensor):
        return encoded[index]
    if dataclasses.is_dataclass(encoded) and not isinstance(encoded, type):
        values = {
            f.name: take(getattr(encoded, f.name), index) for f in dataclasses.fields(encoded)
        }
        return type(encoded)(**values)
    raise TypeError(f"cannot slice an encoded batch of type {type(encoded).__name__}")


def concatenate(parts: list[Any]) -> Any:
    """Encoded batches joined along their leading axis (the inverse of `take` over blocks)."""
    first = parts[0]
    if first is None:
        return None
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    values = {
        f.name: concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(first)
    }
    return type(first)(**values)


# A cell of a dense-path tile: its score and the reducers' few copies of it; also sets the
# tiles' size (about 256K cells: 512 x 512), which matters for the relevant cells scored
# first: their tiles are scored twice (measured on the COCO protocols, 2 threads: 66.5 s at
# 256 bytes, 71.6 s at 64 bytes, whose tiles four times larger hold more of them).
DENSE_PAIR_BYTES = 256
# The tiles holding a relevant cell are scored first (the reducers need those scores before
# any other tile); up to this many bytes of them are kept for the pass over every tile rather
# than scored twice (the COCO protocols: about an eighth of the tiles, ~60 MB).
KEPT_TILE_BYTES = 256 << 20


def pair_bytes(model: RankingModel, regions: int, keywords: int) -> int:
    """About how many bytes scoring one (query, image) pair holds at once inside a tile: the
    attention logits and weights over its items and the attended vectors, a few copies each."""
    dim = model.config.dim
    return 4 * (3 * (regions + keywords) + 6 * dim) + 16


class PoolScorer:
    """One model's scores of `query_ids` x `img_ids` (both ascending), tile by tile.

    Images are encoded a block at a time (`BATCH_ELEMENTS` raw region values) and kept for the
    second pass while they fit `cache_bytes`; queries are encoded once. Tiles are scored by
    `workers` threads side by side (default: torch's thread count; see `in_order`)."""

    def __init__(
        self,
        model: RankingModel,
        prepared: PreparedDataset,
        query_ids: np.ndarray,
        img_ids: np.ndarray,
        *,
        device: torch.device | str = "cpu",
        amp: bool = False,
        max_keywords: int = 64,
        tile_bytes: int = TILE_BYTES,
        cache_bytes: int = 1 << 30,
        workers: int | None = None,
    ) -> None:
        self.model, self.prepared = model, prepared
        self.query_ids, self.img_ids = query_ids, img_ids
        self.device, self.amp, self.max_keywords = torch.device(device), amp, max_keywords
        self.workers = scoring_workers(self.device, workers)
        model.eval()
        # bf16 autocast on CUDA keeps the model's own path: the dense path is float32.
        amp_on = amp and self.device.type == "cuda"
        self.dense = None if amp_on else DenseScorer.of(model)
        regions = int(prepared.features.shape[1])
        # The dense path works through a tile a few images at a time (`STEP_ELEMENTS`): a
        # tile's cell then holds its score and the reducers' few copies of it.
        pair = DENSE_PAIR_BYTES if self.dense else pair_bytes(model, regions, max_keywords)
        grid = tile_grid(len(query_ids), len(img_ids), pair, tile_bytes)
        # Image blocks are whole numbers of tile columns, so a tile never spans two blocks.
        raw = max(1, int(np.prod(prepared.features.shape[1:])))
        per_block = max(1, min(4096, BATCH_ELEMENTS // raw) // grid.col_block) * grid.col_block
        self.image_block = per_block
        self.grid = grid
        self._cache: dict[int, Any] = {}
        self._cache_left = cache_bytes
        self._queries: Any = None

    def _context(self) -> Any:
        return precision_context(self.device, self.amp)

    @torch.no_grad()
    def queries(self) -> Any:
        """Every query, encoded once."""
        if self._queries is None:
            parts = []
            for lo in range(0, len(self.query_ids), QUERY_BLOCK):
                batch = query_batch(self.prepared, self.query_ids[lo : lo + QUERY_BLOCK])
                with self._context():
                    encoded = self.model._encode_query(batch.to(self.device))
                parts.append(encoded if self.dense is None else self.dense.queries(encoded))
            self._queries = concatenate(parts)
        return self._queries

    @torch.no_grad()
    def images(self, block: int) -> Any:
        """Image block `block` (of `image_block` images), encoded."""
        if block in self._cache:
            return self._cache[block]
        lo = block * self.image_block
        ids = self.img_ids[lo : lo + self.image_block]
        batch = image_batch(self.prepared, ids, self.max_keywords).to(self.device)
        with self._context():
            encoded = self.model._encode_images(batch)
        if self.dense is not None:
            # Many queries meet each image: its Gram matrices are worth computing once.
            encoded = self.dense.images(encoded, gram=True)
        size = _bytes(encoded)
        if size <= self._cache_left:
            self._cache[block] = encoded
            self._cache_left -= size
        return encoded

    @torch.no_grad()
    def score(self, queries: Any, images: Any) -> np.ndarray:
        """One tile: encoded queries x encoded images -> float32 scores (on the CPU)."""
        if self.dense is not None:
            return self.dense.score(queries, images).cpu().numpy()
        with self._context():
            scores = self.model._score(queries, images, pool=True)[0]
        return scores.float().cpu().numpy()

    def tiles(
        self,
        progress: bool = False,
        only: set[int] | None = None,
        kept: dict[int, np.ndarray] | None = None,
    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """Every tile of the grid (those numbered in `only`, when given), in the grid's order:
        (rows, cols, scores); a tile found in `kept` (by number) is taken from it (and
        dropped from it) instead of being scored again."""
        encoded_queries = self.queries()
        kept = {} if kept is None else kept

        def jobs() -> Iterator[tuple[slice, slice, Any, Any]]:
            # Here, in the calling thread: the image blocks are encoded (and cached) in order.
            block_index, block = -1, None
            for number, (rows, cols) in enumerate(self.grid):
                if number in kept:
                    yield rows, cols, None, kept.pop(number)
                elif only is None or number in only:
                    if cols.start // self.image_block != block_index:
                        block_index = cols.start // self.image_block
                        block = self.images(block_index)
                    offset = block_index * self.image_block
                    local = slice(cols.start - offset, cols.stop - offset)
                    yield rows, cols, take(encoded_queries, rows), take(block, local)

        def scored(job: tuple[slice, slice, Any, Any]) -> tuple[slice, slice, np.ndarray]:
            rows, cols, queries, images = job
            if queries is None:  # a kept tile
                return rows, cols, images
            return rows, cols, self.score(queries, images)

        bar = progress_bar(total=len(self.img_ids), desc="scoring", unit="image", enabled=progress)
        with bar:
            for rows, cols, tile in in_order(scored, jobs(), self.workers):
                yield rows, cols, tile
                if rows.stop == self.grid.rows:
                    bar.update(cols.stop - cols.start)

    def cells(
        self, row: np.ndarray, col: np.ndarray, kept: dict[int, np.ndarray] | None = None
    ) -> np.ndarray:
        """The scores of chosen cells, from the very tiles `tiles` gives (the same shapes, so
        the same values to the bit), scoring only the tiles that hold one; those tiles are
        put in `kept` (by number, while they fit `KEPT_TILE_BYTES`) for `tiles` to reuse."""
        return _cells_from_tiles(self, row, col, kept)


def _cells_from_tiles(
    scorer: PoolScorer | RandomScorer,
    row: np.ndarray,
    col: np.ndarray,
    kept: dict[int, np.ndarray] | None = None,
) -> np.ndarray:
    gather = CellValues(scorer.grid, row, col)
    room = KEPT_TILE_BYTES
    if len(gather.row):
        needed = {int(t) for t in np.unique(scorer.grid.tile_of(gather.row, gather.col))}
        for rows, cols, tile in scorer.tiles(only=needed):
            gather.add(rows, cols, tile)
            if kept is not None and tile.nbytes <= room:
                kept[int(scorer.grid.index(rows, cols))] = tile
                room -= tile.nbytes
    return gather.values


def row_order(queries: np.ndarray, images: np.ndarray, judged: pd.DataFrame) -> np.ndarray:
    """`queries` reordered by the first image each is judged relevant to (those with none
    last): the relevant cells then fall in few tiles, the only ones scored twice."""
    relevant = judged[judged["label"] > 0]
    first = relevant.groupby("query_id")["img_id"].min()
    column = np.full(len(queries), len(images), dtype=np.int64)
    found = pd.Index(queries).get_indexer(first.index)
    inside = found >= 0
    column[found[inside]] = np.searchsorted(images, first.to_numpy()[inside])
    return queries[np.argsort(column, kind="stable")]


def _bytes(encoded: Any) -> int:
    if encoded is None:
        return 0
    if isinstance(encoded, torch.Tensor):
        return encoded.numel() * encoded.element_size()
    return sum(_bytes(getattr(encoded, f.name)) for f in dataclasses.fields(encoded))


def reduce_pool(
    scorer: PoolScorer | RandomScorer, reduction: PoolReduction, progress: bool = False
) -> PoolReduction:
    """Fold a scorer's whole matrix into `reduction`: its chosen cells first, then every tile
    (the tiles scored for the chosen cells are kept for that pass, not scored again)."""
    row, col = reduction.positive_cells
    # Random scores are drawn again, cheaper than kept.
    kept: dict[int, np.ndarray] | None = {} if isinstance(scorer, PoolScorer) else None
    if reduction.metrics:
        reduction.set_positive_scores(_cells_from_tiles(scorer, row, col, kept))
    for rows, cols, tile in scorer.tiles(progress, kept=kept):
        reduction.add(rows, cols, tile)
    return reduction


class RandomScorer:
    """Uniform random float32 scores, seeded: the same matrix as
    `np.random.default_rng(seed).random((len(query_ids), images), dtype=np.float32)`, drawn a
    block of whole rows at a time (the generator's stream fills rows in order)."""

    def __init__(
        self, query_ids: np.ndarray, images: int, seed: int, tile_bytes: int = TILE_BYTES
    ) -> None:
        queries = len(query_ids)
        rows = max(1, min(queries, tile_bytes // (4 * max(1, images))))
        self.grid = TileGrid(queries, images, rows, max(1, images))
        self.query_ids, self.seed = query_ids, seed

    def tiles(
        self,
        progress: bool = False,
        only: set[int] | None = None,
        kept: dict[int, np.ndarray] | None = None,
    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """As `PoolScorer.tiles` (a kept tile is the one drawn again: the same values)."""
        rng = np.random.default_rng(self.seed)
        for number, (rows, cols) in enumerate(self.grid):
            tile = rng.random((rows.stop - rows.start, self.grid.cols), np.float32)
            if only is None or number in only:  # every row is drawn: the stream goes in order
                yield rows, cols, tile if kept is None else kept.pop(number, tile)

    def cells(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The scores of chosen cells: one pass over the matrix, keeping only them."""
        return _cells_from_tiles(self, row, col)


# -- the dense path ------------------------------------------------------------------------------
# AttentionModel._score in pool mode, rewritten from its math. The model's score is cos(q, x)
# with x = a u_v + b u_k, u = w / max(|w|, eps) for each modality's attended vector
# w = sum_t alpha_t V_t (alpha: the masked softmax of scale * cos(guide, key_t)). So
#
#     q.x  = a (q.v) / |v| + b (q.k) / |k|
#     |x|^2 = a^2 |u_v|^2 + b^2 |u_k|^2 + 2 a b (v.k) / (|v| |k|)
#
# and every term is a few numbers per pair: q.w = alpha . (V q) (the values against every query
# in ONE matrix product per block), likewise the gate's probe . w; |w|^2 either from the
# attended vectors themselves (one batched product of the weights with the values: few
# queries, as a search's) or from each image's Gram matrix V V^T (computed once per image:
# many queries, as an evaluation's), which keeps every temporary (images, items, queries)
# instead of (images, queries, d). Everything is laid out (images, items, queries) so that the
# reductions over an image's items run along contiguous rows of queries.
#
# Not the model's operations in the model's order, so not its bits: scores agree with
# `score_pool` within float32 rounding (relative 1e-5 on a float32 index; a float16 index's
# rounding of the keys and values is larger, see docs/search.md), tested in
# tests/ranking/test_kernel.py. The model's own path stays the reference (`search --exact`).

# (images, items, queries) elements a step of the dense path works on: its temporaries are a few
# of this many float32. Measured on the quiet 2-core VM, tiles of 512 captions x 512 images
# (49 regions, 16 keywords, dim 64) scaled to the COCO protocols' 25,000 x 5,000: 2^19
# elements 60 s (one scoring thread, two torch threads) / 73 s (two scoring threads side by
# side); 2^21 47 / 52 s; 2^22 56 / 59 s; 2^23 58 / 64 s: fewer, larger steps pay until the
# temporaries outgrow the caches.
STEP_ELEMENTS = 1 << 21
# Few queries (a search): the step is bounded by its items' float32 keys and values instead,
# kept in buffers reused by every step; larger steps, fewer Python steps over a million images.
BUFFER_ELEMENTS = 1 << 22
# Up to this many queries, keywords given by id are scored from the table by id (a bag of rows
# a query); more, from their rows looked up once.
FEW_QUERIES = 4
# Images a call of the compiled one-pass form (`DenseScorer.compile_one_pass`) scores.
ONE_PASS_STEP = 8192
EXP_FLOOR = -80.0  # attention logits below the image's best by more than this count as this
EPS = 1e-6  # the model's F.normalize eps for the attended vectors, x and q^m
# The model options the dense path reproduces. A model with any other option away from its
# default (an option added after this kernel) is scored by its own `_score`.
REPRODUCED_OPTIONS = frozenset(
    {
        "kind",
        "query_vocab_size",
        "keyword_vocab_size",
        "feature_dim",
        "dim",
        "word_dim",
        "intra",
        "inter",
        "dropout",
        "attention",
        "attention_scale",
        "attention_scale_rate",
        "region_attention_scale_rate",
        "gate_scale",
        "gate_content",
        "cca_reg",
    }
)


@dataclass(frozen=True)
class DenseModality:
    """One modality of a block of images, as the dense path reads it: attended (key, value) or
    pooled once with fixed weights (`pooled`)."""

    present: Tensor  # (N,) bool: the image has items of this modality
    key: Tensor | None = None  # (N, T, d): unit keys (cosine attention), raw keys (dot)
    value: Tensor | None = None  # (N, T, d)
    mask: Tensor | None = None  # (N, T) bool: real items; None when every item is real
    bias: Tensor | None = None  # (N, T): added to the logits (a keyword's log count)
    pooled: Tensor | None = None  # (N, d): the fixed-weight mean, when there is no attention
    gram: Tensor | None = None  # (N, T, T): V V^T, when computed once for many queries
    # (N, T) keyword ids (0: none), instead of `key` and `value`: looked up in the model's
    # table a step at a time (an index stores ids, not embeddings).
    ids: Tensor | None = None


@dataclass(frozen=True)
class DenseImages:
    """Both modalities of a block of images; a modality the model does not read is None."""

    visual: DenseModality | None
    keywords: DenseModality | None
    cross: Tensor | None = None  # (N, T_v, T_k): V_v V_k^T, with the Gram matrices


@dataclass(frozen=True)
class DenseQueries:
    """A block of queries as the dense path reads them (float32)."""

    shared: Tensor  # (Q, d): unit q^m
    visual_guide: Tensor | None  # (Q, d): unit s_q times the region attention scale (dot: /sqrt d)
    keyword_guide: Tensor | None  # (Q, d): likewise for q W_ql
    prior: Tensor | None  # (Q, 2): the gate's prior logits
    probe: Tensor | None  # (Q, d): the gate's probe

    def readers(self) -> Tensor:
        """(Q or 2Q, d): unit q^m, then the probe: what the values are read by. Made when
        asked, not kept: every field is one row per query, so slicing a block of queries
        (`take`) or joining blocks (`concatenate`) keeps each query's rows together."""
        return self.shared if self.probe is None else torch.cat([self.shared, self.probe])


@dataclass(frozen=True)
class _Sums:
    """One modality's few numbers per (image, query) pair, for its vector w (attended or
    pooled): q.w, probe.w and |w|^2; and what the cross term between modalities needs."""

    dots: Tensor  # (N, Q): unit q^m . w
    probes: Tensor | None  # (N, Q): probe . w
    square: Tensor  # (N, Q|1): |w|^2
    weights: Tensor | None = None  # (N, T, Q): the attention weights (Gram mode)
    vector: Tensor | None = None  # (N, Q|1, d): w (attended without Gram, or pooled)
    # (N, Q): what `weights` and `vector` are still to be multiplied by (the softmax's
    # 1 / sum of exponentials); None: nothing.
    inverse: Tensor | None = None


class DenseScorer:
    """The dense path for one `AttentionModel` in eval mode: `queries` and `images` turn the
    model's encoded parts into the dense path's, `score` scores a block of each (see the
    comment above for the math)."""

    def __init__(self, model: AttentionModel) -> None:
        self.model = model
        self.cosine = model.attend and model.config.attention == "cosine"
        with torch.no_grad():
            scales = [model.attention_scale(region) for region in (True, False)]
            self.region_scale, self.keyword_scale = (
                None if scale is None else scale.float() for scale in scales
            )
            gate = getattr(model, "gate_log_scale", None)
            self.gate_scale = None if gate is None else gate.exp().float()
        self._keyword_tables: tuple[Tensor, Tensor] | None = None
        # Each scoring thread its own buffers (`in_order` scores tiles side by side).
        self._local = threading.local()
        self._lock = threading.Lock()
        # The compiled one-pass form for a few queries (`compile_one_pass`), and whether it
        # has run once (its first call compiles, one thread at a time).
        self.one_pass: Callable[..., Tensor] | None = None
        self._one_pass_ready = False
        self._compile_lock = threading.Lock()

    @classmethod
    def of(cls, model: RankingModel) -> DenseScorer | None:
        """The dense path for `model`, or None where it does not apply (not the attention
        family's own math, an option it does not reproduce, or dropout active): those are
        scored by the model's `_score`."""
        own = all(
            getattr(type(model), name, None) is getattr(AttentionModel, name)
            for name in ("_score", "_attend_modality", "_encode_images", "_encode_query")
        )
        if not isinstance(model, AttentionModel) or not own or model.training:
            return None
        if not reproduces(model.config):
            return None
        return cls(model)

    @torch.no_grad()
    def queries(self, q: EncodedQuery) -> DenseQueries:
        def guide(vector: Tensor | None, scale: Tensor | None) -> Tensor | None:
            if vector is None:
                return None
            vector = vector.float()
            if not self.cosine:
                return vector / math.sqrt(vector.shape[-1])
            unit = F.normalize(vector, dim=-1)
            return unit if scale is None else unit * scale

        shared = F.normalize(q.shared.float(), dim=-1, eps=EPS)
        probe = None if q.modality_probe is None else q.modality_probe.float()
        return DenseQueries(
            shared=shared,
            visual_guide=guide(q.visual_guide, self.region_scale),
            keyword_guide=guide(q.keyword_guide, self.keyword_scale),
            prior=None if q.modality_prior is None else q.modality_prior.float(),
            probe=probe,
        )

    @torch.no_grad()
    def images(self, encoded: EncodedImages, gram: bool = False) -> DenseImages:
        """The dense parts of a block of images; `gram` adds each image's Gram matrices (worth
        it when the block meets many queries: evaluation)."""
        visual = self._modality(encoded.visual, gram)
        keywords = self._modality(encoded.keywords, gram)
        cross = None
        if gram and _attended(visual) and _attended(keywords):
            assert visual is not None and keywords is not None
            assert visual.value is not None and keywords.value is not None
            cross = torch.bmm(visual.value, keywords.value.transpose(1, 2))
        return DenseImages(visual, keywords, cross)

    def _modality(self, items: EncodedModality | None, gram: bool) -> DenseModality | None:
        if items is None:
            return None
        mask = items.mask
        present = mask.any(-1)
        if self.model.attend and items.key is not None:
            value = items.value.float()
            return DenseModality(
                present=present,
                key=(F.normalize(items.key, dim=-1) if self.cosine else items.key).float(),
                value=value,
                mask=None if bool(mask.all()) else mask,
                bias=None if items.bias is None else items.bias.float(),
                gram=torch.bmm(value, value.transpose(1, 2)) if gram else None,
            )
        pooled = self.model._attend_modality(None, items, pool=False)[0]  # (N, d)
        return DenseModality(present=present, pooled=pooled.float())

    @torch.no_grad()
    def score(self, q: DenseQueries, images: DenseImages) -> Tensor:
        """Scores (Q, N) of a block of queries against a block of images: what the model's
        `_score(..., pool=True)` gives, within float32 rounding."""
        few = q.shared.shape[0] <= FEW_QUERIES
        if self.one_pass is not None and few and not _has_gram(images):
            return self._score_one_pass(q, images)
        return self._score_steps(q, images)

    def _score_steps(self, q: DenseQueries, images: DenseImages) -> Tensor:
        """`score` by the eager path, a step of images at a time."""
        items = sum(_width(m) for m in (images.visual, images.keywords) if _attended(m))
        n, queries = _image_count(images), q.shared.shape[0]
        # Images a step: the (images, items, queries) temporaries stay near `STEP_ELEMENTS`,
        # the float32 keys and values of the step's items (images, items, d) within
        # `BUFFER_ELEMENTS`.
        dim = q.shared.shape[1]
        step = max(
            1, min(STEP_ELEMENTS // max(1, items * queries), BUFFER_ELEMENTS // max(1, items * dim))
        )
        with torch.autocast(q.shared.device.type, enabled=False):
            if step >= n:
                return self._score(q, self._ready(_trimmed(images), queries))
            out = torch.empty(queries, n, device=q.shared.device)
            for lo in range(0, n, step):
                part = self._ready(_trimmed(take(images, slice(lo, lo + step))), queries)
                out[:, lo : lo + step] = self._score(q, part)
            return out

    def compile_one_pass(self) -> None:
        """Score a few queries (a search) by the one-pass form, compiled (`torch.compile`):
        the eager path converts the stored float16 keys and values to float32 a step at a
        time and then reads them again for each product, three passes over the index's
        bytes; compiled, the conversion, the products and the softmax are fused into loops
        that read each stored value once. The first call compiles (10-25 s on the 2-core
        machine; ~4.5 s once torch's cache on disk holds the result); should compiling fail
        (no C++ compiler), the eager path is used, with a warning."""
        # A C++ wrapper: with the default Python one, the compiled kernels run holding the
        # GIL, and the scoring threads side by side take turns (measured over a million
        # images, quiet: 2.81 s a query with two scoring threads, 1.55 s with the C++ wrapper).
        self.one_pass = torch.compile(
            functools.partial(self._score, one_pass=True),
            dynamic=True,
            options={"cpp_wrapper": True},
        )

    def _score_one_pass(self, q: DenseQueries, images: DenseImages) -> Tensor:
        """A few queries against a block of images by the compiled one-pass form,
        `ONE_PASS_STEP` images a call; the keys and values stay as stored."""
        assert self.one_pass is not None
        n = _image_count(images)
        by_id = images.keywords is not None and images.keywords.ids is not None
        tables = self.keyword_tables if by_id else None
        with torch.autocast(q.shared.device.type, enabled=False):
            parts = []
            for lo in range(0, n, ONE_PASS_STEP):
                part = self._ready(_trimmed(take(images, slice(lo, lo + ONE_PASS_STEP))), 0, False)
                parts.append(self._one_pass_call(q, part, tables))
            return parts[0] if len(parts) == 1 else torch.cat(parts, 1)

    def _one_pass_call(
        self, q: DenseQueries, images: DenseImages, tables: tuple[Tensor, Tensor] | None
    ) -> Tensor:
        compiled = self.one_pass
        if compiled is None:  # compiling failed in another thread meanwhile
            return self._score_steps(q, images)
        if self._one_pass_ready:
            return compiled(q, images, tables=tables)
        with self._compile_lock:  # the first call compiles: once, not in every thread
            if self.one_pass is None:
                return self._score_steps(q, images)
            try:
                scores = compiled(q, images, tables=tables)
            except Exception as error:  # whatever the compiler raises: the eager path stands
                log.warning(
                    "compiling the one-pass search kernel failed (%s: %s); scoring with the "
                    "eager kernel instead",
                    type(error).__name__,
                    str(error).strip().splitlines()[0] if str(error).strip() else "",
                )
                self.one_pass = None
                return self._score_steps(q, images)
            self._one_pass_ready = True
            return scores

    def _ready(self, images: DenseImages, queries: int, convert: bool = True) -> DenseImages:
        """A step's images as `_score` reads them: float32 (an index stores float16; the
        one-pass form, `convert` False, reads the stored keys and values), and keywords given
        by id looked up in the model's table (here, a step at a time, not the whole block:
        they stay in the processor's cache)."""
        ready = []
        for name, items in (("visual", images.visual), ("keywords", images.keywords)):
            if items is not None:
                items = dataclasses.replace(
                    items,
                    key=self._float(f"{name} key", items.key) if convert else items.key,
                    value=self._float(f"{name} value", items.value) if convert else items.value,
                    pooled=_float(items.pooled),
                    gram=_float(items.gram),
                )
                if items.ids is not None and queries > FEW_QUERIES:
                    keys, values = self.keyword_tables
                    items = dataclasses.replace(
                        items,
                        key=self._lookup("keyword key", keys, items.ids),
                        value=self._lookup("keyword value", values, items.ids),
                        ids=None,
                    )
            ready.append(items)
        return DenseImages(ready[0], ready[1], _float(images.cross))

    def _float(self, name: str, tensor: Tensor | None) -> Tensor | None:
        """`tensor` as float32: copied into a buffer kept between steps (a new tensor of
        this size costs more to allocate, the first touch of each memory page, than the
        conversion itself)."""
        if tensor is None or tensor.dtype == torch.float32:
            return tensor
        return self._space(name, tuple(tensor.shape), tensor).copy_(tensor)

    def _lookup(self, name: str, table: Tensor, ids: Tensor) -> Tensor:
        """The rows `ids` (N, T) of `table`: (N, T, d), in a buffer kept between steps."""
        flat = self._space(name, (ids.numel(), table.shape[1]), table)
        torch.index_select(table, 0, ids.reshape(-1), out=flat)
        return flat.view(*ids.shape, table.shape[1])

    def _space(self, name: str, shape: tuple[int, ...], like: Tensor) -> Tensor:
        """A float32 buffer of `shape`, reused by every step of this thread (valid until its
        next step)."""
        size = math.prod(shape)
        buffers: dict[str, Tensor] = self._local.__dict__.setdefault("buffers", {})
        buffer = buffers.get(name)
        if buffer is None or buffer.numel() < size or buffer.device != like.device:
            buffer = torch.empty(size, dtype=torch.float32, device=like.device)
            buffers[name] = buffer
        return buffer[:size].view(shape)

    @property
    def keyword_tables(self) -> tuple[Tensor, Tensor]:
        """The keywords' (keys, values) by id: the unit rows of the embedding (cosine
        attention; the rows themselves for dot) and the rows."""
        with self._lock:  # scoring threads may ask at once
            if self._keyword_tables is None:
                table = self.model.keywords.weight.detach().float()
                keys = F.normalize(table, dim=-1) if self.cosine else table
                self._keyword_tables = (keys, table)
            return self._keyword_tables

    def _score(
        self,
        q: DenseQueries,
        images: DenseImages,
        one_pass: bool = False,
        tables: tuple[Tensor, Tensor] | None = None,
    ) -> Tensor:
        """`score` of one step; `one_pass`: the form `compile_one_pass` compiles, given the
        keyword tables (`tables`: compiled code cannot take the lock that guards them)."""
        sums, available = [], []
        modalities = ((images.visual, q.visual_guide), (images.keywords, q.keyword_guide))
        for items, guide in modalities:
            if items is None:
                continue
            if _attended(items) and guide is not None:
                sums.append(self._attend(q, guide, items, one_pass, tables))
            else:
                sums.append(_pooled_sums(q, items))
            available.append(items.present)
        avail = torch.stack(available, -1).unsqueeze(1)  # (N, 1, modalities)
        inverse = [1.0 / s.square.sqrt().clamp_min(EPS) for s in sums]  # 1 / max(|w|, eps)
        n, queries = avail.shape[0], q.shared.shape[0]
        if q.prior is not None:
            logits = q.prior.unsqueeze(0)  # (1, Q, 2)
            if q.probe is not None:
                content = [_probes(s) * inv for s, inv in zip(sums, inverse, strict=True)]
                logits = logits + torch.stack(content, -1)
            if self.gate_scale is not None:
                logits = logits * self.gate_scale
            logits = logits.expand(n, queries, -1)
        else:
            logits = torch.zeros(avail.shape, device=avail.device)
        gate = _modality_weights(logits, avail)  # (N, Q|1) each
        along = torch.zeros((), device=avail.device)  # q.x
        square = torch.zeros((), device=avail.device)  # |x|^2
        for weight, s, inv in zip(gate, sums, inverse, strict=True):
            along = along + weight * (s.dots * inv)
            square = square + weight * weight * (s.square * inv * inv)
        if len(sums) == 2:
            cross = _cross(sums[0], sums[1], images)
            square = square + 2 * gate[0] * gate[1] * cross * inverse[0] * inverse[1]
        length = square.clamp_min(0).sqrt().clamp_min(EPS)
        return (along / length).expand(n, queries).T  # (Q, N)

    def _attend(
        self,
        q: DenseQueries,
        guide: Tensor,
        items: DenseModality,
        one_pass: bool = False,
        tables: tuple[Tensor, Tensor] | None = None,
    ) -> _Sums:
        """An attended modality's sums over each image's items, laid out (N, T, Q)."""
        if items.ids is not None:
            return self._attend_ids(q, guide, items, tables)
        key, value = items.key, items.value
        assert key is not None and value is not None
        if one_pass:
            # Written as broadcasts and sums (N, T, Q, d), which the compiler turns into loops
            # that read each stored key and value once, converting as they go; run eagerly
            # they would make (N, T, Q, d) temporaries.
            logits = (key.unsqueeze(2).float() * guide).sum(-1)  # (N, T, Q)
            weights, inverse = _exponentials(logits, items)
            vector = (weights.unsqueeze(-1) * value.unsqueeze(2).float()).sum(1)  # (N, Q, d)
            return _vector_sums(q, vector, inverse)
        n, t, d = key.shape
        queries = guide.shape[0]
        # One product of every item's key in the block against every guide (already scaled).
        logits = (key.reshape(n * t, d) @ guide.T).view(n, t, queries)
        weights, inverse = _exponentials(logits, items)
        if items.gram is None:
            # Few queries: the attended vectors themselves (one pass over the values), then a
            # few dot products of length d per pair.
            return _vector_sums(q, torch.bmm(weights.transpose(1, 2), value), inverse)
        # Many queries: every item's value read by unit q^m (and the probe) in one product,
        # (N, T, Q|2Q), and |w|^2 = alpha^T G alpha from the Gram matrices.
        # (Products of fresh tensors are taken in place: no new temporary of this size.)
        read = (value.reshape(n * t, d) @ q.readers().T).view(n, t, -1)
        dots = read[..., :queries].mul_(weights).sum(1) * inverse
        probes = None
        if q.probe is not None:
            probes = read[..., queries:].mul_(weights).sum(1) * inverse
        square = torch.bmm(items.gram, weights).mul_(weights).sum(1)
        return _Sums(dots, probes, square * inverse * inverse, weights, inverse=inverse)

    def _attend_ids(
        self,
        q: DenseQueries,
        guide: Tensor,
        items: DenseModality,
        tables: tuple[Tensor, Tensor] | None = None,
    ) -> _Sums:
        """Keywords given by id, for a few queries: the logits are looked up in the table's
        products with the guides (V, Q), and each query's attended vector is a weighted bag
        of table rows; no (images, keywords, d) tensor is made. (Compiled too, `one_pass`:
        measured, the bag's own kernel beats the compiler's loops over the gathered rows
        tenfold.)"""
        keys, values = self.keyword_tables if tables is None else tables
        ids = items.ids
        assert ids is not None
        logits = F.embedding(ids, keys @ guide.T)  # (N, T, Q)
        weights, inverse = _exponentials(logits, items)
        vector = torch.stack(
            [
                F.embedding_bag(ids, values, per_sample_weights=weights[..., j], mode="sum")
                for j in range(guide.shape[0])
            ],
            1,
        )  # (N, Q, d)
        return _vector_sums(q, vector, inverse)


def _exponentials(logits: Tensor, items: DenseModality) -> tuple[Tensor, Tensor]:
    """The softmax over each image's items (axis 1) of `logits` (N, T, Q), in place and not
    divided by its sum: (exponentials, 1 / their sum (N, Q)); the sums made of them are
    divided instead (a number per pair, not per item)."""
    if items.bias is not None:
        logits += items.bias.unsqueeze(-1)
    if items.mask is not None:
        logits.masked_fill_(~items.mask.unsqueeze(-1), float("-inf"))
    top = logits.amax(1, keepdim=True)
    if items.mask is not None:
        top.masked_fill_(~items.present.view(-1, 1, 1), 0.0)  # no items: all weights 0
    # Clamped below: exp is many times slower on far negative arguments (and -inf) than on
    # others; an item that far below the best weighs exp(-80) ~ 2e-35 of it instead of less,
    # beneath float32's resolution of the sum. An image without items (all -inf) gets such
    # negligible weights too; the gate gives its modality no weight.
    weights = logits.sub_(top).clamp_(min=EXP_FLOOR).exp_()
    # At least 1 (the largest item's exp(0)) where the image has items.
    return weights, 1.0 / weights.sum(1).clamp_min(1.0)


def _vector_sums(q: DenseQueries, vector: Tensor, inverse: Tensor) -> _Sums:
    """The sums of attended vectors (N, Q, d) not yet divided by their weights' sum."""
    dots = (vector * q.shared).sum(-1) * inverse
    probes = None if q.probe is None else (vector * q.probe).sum(-1) * inverse
    square = (vector * vector).sum(-1) * inverse * inverse
    return _Sums(dots, probes, square, vector=vector, inverse=inverse)


def _trimmed(images: DenseImages) -> DenseImages:
    """`images` without the trailing item slots that none of them fills (a block is padded to
    its fullest image's keywords)."""
    visual, keywords, cross = images.visual, images.keywords, images.cross
    trimmed = []
    for items in (visual, keywords):
        width = _used_width(items)
        if items is not None and width is not None:
            items = _cut(items, width)
        trimmed.append((items, width))
    (visual, regions), (keywords, words) = trimmed
    if cross is not None and (regions is not None or words is not None):
        cross = cross[:, :regions, :words]
    return DenseImages(visual, keywords, cross)


def _used_width(items: DenseModality | None) -> int | None:
    """How many leading item slots hold an item in some image (None: all of them)."""
    if items is None or items.mask is None:
        return None
    used = torch.nonzero(items.mask.any(0))
    width = int(used[-1, 0]) + 1 if len(used) else 1
    return None if width == items.mask.shape[1] else width


def _cut(items: DenseModality, width: int) -> DenseModality:
    def cut(tensor: Tensor | None, axes: int = 1) -> Tensor | None:
        if tensor is None:
            return None
        return tensor[:, :width] if axes == 1 else tensor[:, :width, :width]

    return dataclasses.replace(
        items,
        key=cut(items.key),
        value=cut(items.value),
        mask=cut(items.mask),
        bias=cut(items.bias),
        gram=cut(items.gram, 2),
        ids=cut(items.ids),
    )


def _has_gram(images: DenseImages) -> bool:
    return any(m is not None and m.gram is not None for m in (images.visual, images.keywords))


def _attended(items: DenseModality | None) -> bool:
    return items is not None and (items.key is not None or items.ids is not None)


def _width(items: DenseModality | None) -> int:
    assert items is not None
    attended = items.key if items.key is not None else items.ids
    assert attended is not None
    return int(attended.shape[1])


def _float(tensor: Tensor | None) -> Tensor | None:
    return tensor if tensor is None or tensor.dtype == torch.float32 else tensor.float()


def _image_count(images: DenseImages) -> int:
    items = images.visual if images.visual is not None else images.keywords
    assert items is not None
    return int(items.present.shape[0])


def reproduces(config: Any) -> bool:
    """Whether the dense path computes what a model of `config` computes: every option it does
    not know is at its default."""
    for field in dataclasses.fields(config):
        if field.name in REPRODUCED_OPTIONS:
            continue
        if field.default is dataclasses.MISSING or getattr(config, field.name) != field.default:
            return False
    return True


def _pooled_sums(q: DenseQueries, items: DenseModality) -> _Sums:
    """A fixed-weight modality's sums: its vector does not depend on the query."""
    pooled = items.pooled
    assert pooled is not None
    read = pooled @ q.readers().T  # (N, Q|2Q)
    queries = q.shared.shape[0]
    probes = None if q.probe is None else read[:, queries:]
    square = pooled.square().sum(-1, keepdim=True)  # (N, 1)
    return _Sums(read[:, :queries], probes, square, vector=pooled.unsqueeze(1))


def _cross(visual: _Sums, keywords: _Sums, images: DenseImages) -> Tensor:
    """v.k for each pair (N, Q|1), from the vectors, or from the attention weights and the
    images' value products (Gram mode)."""
    cross = _cross_unscaled(visual, keywords, images)
    for sums in (visual, keywords):
        if sums.inverse is not None:
            cross = cross * sums.inverse
    return cross


def _probes(sums: _Sums) -> Tensor:
    assert sums.probes is not None  # the queries have a probe
    return sums.probes


def _cross_unscaled(visual: _Sums, keywords: _Sums, images: DenseImages) -> Tensor:
    if visual.vector is not None and keywords.vector is not None:
        return (visual.vector * keywords.vector).sum(-1)
    if visual.vector is None and keywords.vector is None:
        assert images.cross is not None
        assert visual.weights is not None and keywords.weights is not None
        return torch.bmm(images.cross, keywords.weights).mul_(visual.weights).sum(1)
    # One attended (weights), the other pooled (one vector an image).
    attended, pooled, items = (
        (visual, keywords, images.visual)
        if visual.vector is None
        else (keywords, visual, images.keywords)
    )
    assert items is not None and items.value is not None and attended.weights is not None
    assert pooled.vector is not None
    projected = torch.bmm(items.value, pooled.vector.transpose(1, 2))  # (N, T, 1)
    return (attended.weights * projected).sum(1)


def _modality_weights(logits: Tensor, available: Tensor) -> list[Tensor]:
    """The model's masked softmax over the modalities (logits (N, Q|1, M), available (N, 1,
    M)), one (N, Q|1) tensor per modality: with two, the sigmoid of the logits' difference
    (a softmax over a last axis of 2 is slow); a modality not available weighs 0."""
    if logits.shape[-1] == 1:
        return [available[..., 0].float().expand(logits.shape[:-1])]
    first, second = available[..., 0], available[..., 1]
    both = first & second
    weight = torch.sigmoid(logits[..., 0] - logits[..., 1])
    return [
        torch.where(both, weight, first.float()),
        torch.where(both, 1.0 - weight, second.float()),
    ]
