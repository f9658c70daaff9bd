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
import math
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

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
        # bf16 autocast on CUDA keeps the model's own path: the dense path is float32.
        amp_on = amp and self.device.type == "cuda"
        self.dense = None if amp_on else DenseScorer.of(model)

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
            encoded = self.dense.images(encoded)
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


# -- the dense path ------------------------------------------------------------------------------
# AttentionModel._score in pool mode, rewritten for speed and checked equal to it (float32,
# within rounding: tests/ranking/test_kernel.py). What does not depend on the query is done once
# per image (unit keys, fixed-weight means, which items are padding); what does not depend on
# the image is done once per query (unit guides times the attention scale, the gate's scale).
# A tile is then: one matrix product of all the tile's keys (N * T rows) against the tile's
# guides, a softmax over each image's items, one batched product of the weights with the
# values, and a few dot products over the shared space per pair.


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


@dataclass(frozen=True)
class DenseImages:
    """Both modalities of a block of images; a modality the model does not read is None."""

    visual: DenseModality | None
    keywords: DenseModality | None


@dataclass(frozen=True)
class DenseQueries:
    """A block of queries as the dense path reads them (float32)."""

    shared: Tensor  # (Q, d): unit q^m
    visual_guide: Tensor | None  # (Q, d): unit s_q (cosine attention), or s_q itself (dot)
    keyword_guide: Tensor | None  # (Q, d): likewise for q W_ql
    prior: Tensor | None  # (Q, 2): the gate's prior logits
    probe: Tensor | None  # (Q, d): the gate's probe


class DenseScorer:
    """The dense path for one `AttentionModel` in eval mode: `queries` and `images` turn the
    model's encoded parts into the dense path's, `score` scores a block of each. Every
    operation is the model's own, in the same order on the same values (so the scores are
    the model's to the bit on the CPU in practice, ties included); only the layout differs:
    the keys of a whole block of images meet the guides in one matrix product."""

    def __init__(self, model: AttentionModel) -> None:
        self.model = model
        self.cosine = model.attend and model.config.attention == "cosine"
        with torch.no_grad():
            scale = getattr(model, "attention_log_scale", None)
            self.attention_scale = (
                None if scale is None else (scale * model.attention_rate).exp().float()
            )
            gate = getattr(model, "gate_log_scale", None)
            self.gate_scale = None if gate is None else gate.exp().float()

    @classmethod
    def of(cls, model: RankingModel) -> DenseScorer | None:
        """The dense path for `model`, or None where it does not apply (not the attention
        family's own math, or dropout active): those are scored by the model's `_score`."""
        own = all(
            getattr(type(model), name, None) is getattr(AttentionModel, name)
            for name in ("_score", "_attend_modality", "_encode_images", "_encode_query")
        )
        if not isinstance(model, AttentionModel) or not own or model.training:
            return None
        return cls(model)

    @torch.no_grad()
    def queries(self, q: EncodedQuery) -> DenseQueries:
        def guide(vector: Tensor | None) -> Tensor | None:
            if vector is None or not self.cosine:
                return vector
            return F.normalize(vector, dim=-1)

        return DenseQueries(
            shared=F.normalize(q.shared.float(), dim=-1, eps=1e-6),
            visual_guide=guide(q.visual_guide),
            keyword_guide=guide(q.keyword_guide),
            prior=None if q.modality_prior is None else q.modality_prior.float(),
            probe=None if q.modality_probe is None else q.modality_probe.float(),
        )

    @torch.no_grad()
    def images(self, encoded: EncodedImages) -> DenseImages:
        return DenseImages(self._modality(encoded.visual), self._modality(encoded.keywords))

    def _modality(self, items: EncodedModality | None) -> DenseModality | None:
        if items is None:
            return None
        mask = items.mask
        present = mask.any(-1)
        if self.model.attend and items.key is not None:
            return DenseModality(
                present=present,
                key=F.normalize(items.key, dim=-1) if self.cosine else items.key,
                value=items.value,
                mask=None if bool(mask.all()) else mask,
                bias=items.bias,
            )
        pooled = self.model._attend_modality(None, items, pool=False)[0]  # (N, d)
        return DenseModality(present=present, pooled=pooled)

    @torch.no_grad()
    def score(self, q: DenseQueries, images: DenseImages) -> Tensor:
        """Scores (Q, N) of a block of queries against a block of images: what the model's
        `_score(..., pool=True)` gives, as dense products."""
        with torch.autocast(q.shared.device.type, enabled=False):
            return self._score(q, images)

    def _score(self, q: DenseQueries, images: DenseImages) -> Tensor:
        units, available = [], []
        modalities = ((images.visual, q.visual_guide), (images.keywords, q.keyword_guide))
        for items, guide in modalities:
            if items is None:
                continue
            if items.key is not None and guide is not None:
                vector = self._attend(guide, items)  # (N, Q, d)
            else:
                vector = items.pooled.unsqueeze(1)  # type: ignore[union-attr]  # (N, 1, d)
            units.append(F.normalize(vector.float(), dim=-1, eps=1e-6))
            available.append(items.present)
        avail = torch.stack(available, -1).unsqueeze(1)  # (N, 1, modalities)
        if q.prior is not None:
            logits = q.prior.unsqueeze(0)  # (1, Q, 2)
            if q.probe is not None:
                content = [_pair_dots(unit, q.probe) for unit in units]  # (N, Q) each
                logits = logits + torch.stack(content, -1)
            if self.gate_scale is not None:
                logits = logits * self.gate_scale
            logits = logits.expand(avail.shape[0], q.shared.shape[0], -1)
        else:
            logits = torch.zeros(avail.shape, device=avail.device)
        weights = _masked_softmax(logits, avail)  # (N, Q|1, modalities)
        x = sum(weights[..., i : i + 1] * unit for i, unit in enumerate(units))
        x = F.normalize(x, dim=-1, eps=1e-6)  # type: ignore[arg-type]
        return _pair_dots(x, q.shared).T  # (Q, N)

    def _attend(self, guide: Tensor, items: DenseModality) -> Tensor:
        """Each query's attended vector over each image's items: (N, Q, d)."""
        key, value = items.key, items.value
        assert key is not None and value is not None
        n, t, d = key.shape
        # One product of every item's key in the block against every guide: (Q, d) @ (d, N*T),
        # as the model's einsum; the softmax runs over contiguous rows of T, as the model's.
        logits = (guide @ key.reshape(n * t, d).T).view(-1, n, t).float()  # (Q, N, T)
        if self.attention_scale is None:
            logits /= math.sqrt(d)
        else:
            logits *= self.attention_scale
        if items.bias is not None:
            logits += items.bias
        if items.mask is not None:
            logits.masked_fill_(~items.mask, float("-inf"))
            logits.masked_fill_(~items.present.view(1, -1, 1), 0.0)
        weights = torch.softmax(logits, -1)  # over each image's items
        if items.mask is not None:
            weights *= items.present.view(1, -1, 1)  # an image without items attends to none
        return torch.bmm(weights.transpose(0, 1).to(value.dtype), value)  # (N, Q, d)


def _pair_dots(vectors: Tensor, queries: Tensor) -> Tensor:
    """Dot products (N, Q) of vectors (N, Q|1, d) with each query's (Q, d), as the model's
    `_dot`: one matrix product when the vectors do not depend on the query, or when there is
    one query; elementwise otherwise."""
    if vectors.shape[1] == 1 or queries.shape[0] == 1:
        return (queries @ vectors[:, 0].T).T if vectors.shape[1] == 1 else vectors[:, 0] @ queries.T
    return (vectors * queries.unsqueeze(0)).sum(-1)


def _masked_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """As the model's: a softmax over the last axis where `mask`; all zeros where none is."""
    logits = logits.masked_fill(~mask, float("-inf"))
    anything = mask.any(-1, keepdim=True)
    logits = logits.masked_fill(~anything, 0.0)
    return torch.softmax(logits, -1) * anything
