"""The scoring kernel that evaluation and validation share: every query of a split against
every image of it, in tiles of bounded memory, each tile folded into the metrics at once.

1. Images are encoded once, a block at a time, into their query-independent parts (whatever
   the model's `_encode_images` gives: projected region keys and values, keyword embeddings,
   masks; cca's canonical vectors).
2. Queries are encoded once (`_encode_query`), all of them: a few vectors of the shared space
   each, small beside the images.
3. A tile (a block of queries x a block of images) is scored by the model's own `_score` in
   pool mode: dense batched products, no loop over pairs, float32 (bf16 autocast on CUDA only,
   when asked for, as training does). The model's `score_pool` computes the same, but encodes
   its images again for every chunk of queries.
4. Each tile goes to a reducer (`amc_data.evaluation.streaming.PoolReduction`): top-k per
   query, judged cells, AUC counts, caption ranks. Nothing of size queries x images is held.

The kernel reads the model's encode and score steps (`_encode_images`, `_encode_query`,
`_score`): they are the parts `score_pool` is made of, shared by every registered model kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ..evaluation.streaming import TILE_BYTES, CellValues, PoolReduction, TileGrid, tile_grid
from ..progress import progress_bar
from .data import image_batch, query_batch

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset
    from .model import RankingModel

QUERY_BLOCK = 4096  # queries encoded per forward pass
BATCH_ELEMENTS = 1 << 25  # raw region values read per image block: 128 MiB of float32


def precision_context(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA when `amp`; nothing elsewhere (the same code runs on the CPU)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


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


def pair_bytes(model: RankingModel, regions: int, keywords: int) -> int:
    """About how many bytes scoring one (query, image) pair holds at once inside a tile: the
    attention logits and weights over its items and the attended vectors, a few copies each."""
    dim = model.config.dim
    return 4 * (3 * (regions + keywords) + 6 * dim) + 16


class PoolScorer:
    """One model's scores of `query_ids` x `img_ids` (both ascending), tile by tile.

    Images are encoded a block at a time (`BATCH_ELEMENTS` raw region values) and kept for the
    second pass while they fit `cache_bytes`; queries are encoded once."""

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
    ) -> None:
        self.model, self.prepared = model, prepared
        self.query_ids, self.img_ids = query_ids, img_ids
        self.device, self.amp, self.max_keywords = torch.device(device), amp, max_keywords
        model.eval()
        regions = int(prepared.features.shape[1])
        pair = pair_bytes(model, regions, max_keywords)
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
                    parts.append(self.model._encode_query(batch.to(self.device)))
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
        size = _bytes(encoded)
        if size <= self._cache_left:
            self._cache[block] = encoded
            self._cache_left -= size
        return encoded

    @torch.no_grad()
    def score(self, queries: Any, images: Any) -> np.ndarray:
        """One tile: encoded queries x encoded images -> float32 scores (on the CPU)."""
        with self._context():
            scores = self.model._score(queries, images, pool=True)[0]
        return scores.float().cpu().numpy()

    def tiles(
        self, progress: bool = False, only: set[int] | None = None
    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        """Every tile of the grid (those numbered in `only`, when given), in the grid's order:
        (rows, cols, scores)."""
        encoded_queries = self.queries()
        bar = progress_bar(total=len(self.img_ids), desc="scoring", unit="image", enabled=progress)
        with bar:
            block_index, block = -1, None
            for number, (rows, cols) in enumerate(self.grid):
                if only is None or number in only:
                    if cols.start // self.image_block != block_index:
                        block_index = cols.start // self.image_block
                        block = self.images(block_index)
                    offset = block_index * self.image_block
                    local = slice(cols.start - offset, cols.stop - offset)
                    yield rows, cols, self.score(take(encoded_queries, rows), take(block, local))
                if rows.stop == self.grid.rows:
                    bar.update(cols.stop - cols.start)

    def cells(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The scores of chosen cells, from the very tiles `tiles` gives (the same shapes, so
        the same values to the bit), scoring only the tiles that hold one."""
        return _cells_from_tiles(self, row, col)


def _cells_from_tiles(
    scorer: PoolScorer | RandomScorer, row: np.ndarray, col: np.ndarray
) -> np.ndarray:
    gather = CellValues(scorer.grid, row, col)
    if len(gather.row):
        needed = {int(t) for t in np.unique(scorer.grid.tile_of(gather.row, gather.col))}
        for rows, cols, tile in scorer.tiles(only=needed):
            gather.add(rows, cols, tile)
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
    """Fold a scorer's whole matrix into `reduction`: its chosen cells first, then every tile."""
    row, col = reduction.positive_cells
    if reduction.metrics:
        reduction.set_positive_scores(scorer.cells(row, col))
    for rows, cols, tile in scorer.tiles(progress):
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
        self, progress: bool = False, only: set[int] | None = None
    ) -> Iterator[tuple[slice, slice, np.ndarray]]:
        rng = np.random.default_rng(self.seed)
        for number, (rows, cols) in enumerate(self.grid):
            tile = rng.random((rows.stop - rows.start, self.grid.cols), np.float32)
            if only is None or number in only:  # every row is drawn: the stream goes in order
                yield rows, cols, tile

    def cells(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The scores of chosen cells: one pass over the matrix, keeping only them."""
        return _cells_from_tiles(self, row, col)
