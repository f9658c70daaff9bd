"""`amc-data search`: what a search engine built with a trained model does with a free-text query.

The query goes through the analyzer training queries went through and the run's query
vocabulary; every image of a split (or of the whole prepared folder) is scored against it in
bounded chunks, and the best ones come back with what the model looked at: the modality
weights, the most attended keywords and the most attended regions (AMC only: the baselines pool
with fixed weights and CCA has no attention).

By default the images are scored from the run's search index (`amc_data.ranking.index`: each
image's projected, normalised region keys and values and its keyword ids, memory-mapped, built
on first use): every image, exactly, by the dense kernel (`kernel.DenseScorer`), a block at a
time. `exact=True` scores from the raw features instead (the reference path); `shortlist=K`
first picks K images by a FAISS inner-product search over a query-independent embedding of each
image, then scores those K exactly (two-stage: faster, and it may miss images that the full
scan ranks in the top; measured in docs/search.md). Ranked lists break ties by img_id.

A `Searcher` keeps the model, the prepared folder and the index between queries; `search()` is
the one-query form, `Searcher.search_many` ranks many queries with the same kernel in batches.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from operator import itemgetter
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..prepare.format import PreparedDataset, load_prepared, shown_ids
from ..prepare.queries import query_analyzer
from .batch import ImageBatch, QueryBatch
from .checkpoint import load_model
from .data import image_batch
from .distributed import resolve_device
from .index import READ_BLOCK, ImageIndex, Shortlist, open_index
from .kernel import DenseScorer, in_order, scoring_workers
from .registry import model_kind
from .search_config import (
    ALL_IMAGES,
    COMPILE_IMAGES,
    SearchConfig,
    check_query,
    with_options,
)

log = logging.getLogger(__name__)

# Rows scored at once: at least this many blocks (a few thousand rows of a shortlist too),
# of at least this many rows each.
SHARED_BLOCKS = 8
SHARED_BLOCK_ROWS = 256

MAX_QUERY_TOKENS = 32  # as at training: a query's first 32 known words
QUOTED_CHARS = 80  # of a query quoted in a message
SHOWN_ITEMS = 3  # keywords and regions listed per result
# The images' tensors are kept between queries up to this many bytes; larger pools (COCO's
# whole 49 x 2,048 split) are read again in chunks for each query.
CACHE_BYTES = 256 << 20
CHUNK_VALUES = 1 << 25  # region values read and scored at a time: 128 MiB of float32
QUERY_BLOCK = 64  # queries scored together by search_many


@dataclass(frozen=True)
class AttendedKeyword:
    word: str
    weight: float


@dataclass(frozen=True)
class AttendedRegion:
    region: int  # index into the image's regions (row-major over the grid)
    weight: float
    row: int | None = None  # grid cell, when the regions are a square grid
    col: int | None = None


@dataclass(frozen=True)
class SearchHit:
    """One ranked image and, for an attention model, why it ranks there."""

    rank: int
    img_id: int
    score: float
    file_name: str | None = None  # the image's file, when images.parquet records it
    visual_weight: float | None = None  # the modality weights (summing to 1)
    keyword_weight: float | None = None
    keywords: list[AttendedKeyword] = field(default_factory=list)  # most attended first
    regions: list[AttendedRegion] = field(default_factory=list)
    # Every weight, for a picture of the attention (a heat map over all the regions, every
    # keyword highlighted): each region's, in region order, and each of the image's keywords
    # the model read, in the image's order. None where the model has no intra-attention.
    region_weights: tuple[float, ...] | None = None
    keyword_weights: tuple[AttendedKeyword, ...] | None = None

    def to_dict(self, every_weight: bool = False) -> dict[str, Any]:
        """The hit as `search --json` prints it; `every_weight` adds `region_weights` (a list)
        and `keyword_weights` (a list of {word, weight}), null where there are none."""
        modality = None
        if self.visual_weight is not None and self.keyword_weight is not None:
            modality = {"visual": self.visual_weight, "keyword": self.keyword_weight}
        shown: dict[str, Any] = {
            "rank": self.rank,
            "img_id": self.img_id,
            "score": self.score,
            "file_name": self.file_name,
            "modality_weights": modality,
            "keywords": [{"word": k.word, "weight": k.weight} for k in self.keywords],
            "regions": [
                {"region": r.region, "row": r.row, "col": r.col, "weight": r.weight}
                for r in self.regions
            ],
        }
        if every_weight:
            regions, keywords = self.region_weights, self.keyword_weights
            shown["region_weights"] = None if regions is None else list(regions)
            shown["keyword_weights"] = (
                None
                if keywords is None
                else [{"word": k.word, "weight": k.weight} for k in keywords]
            )
        return shown


@dataclass(frozen=True)
class SearchResult:
    """The ranked images for one query, and how the query was read."""

    query: str
    words: list[str]  # the query's words the model knows, in analyzer order
    unknown: list[str]  # analyzed words outside the run's query vocabulary (ignored)
    split: str
    images: int  # how many images were ranked
    hits: list[SearchHit]

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "words": self.words,
            "unknown": self.unknown,
            "split": self.split,
            "images": self.images,
            "results": [hit.to_dict() for hit in self.hits],
        }


class Searcher:
    """A trained run over a prepared folder's images, ready for free-text queries."""

    def __init__(
        self,
        run: str | os.PathLike[str],
        data: str | os.PathLike[str] | PreparedDataset,
        config: SearchConfig | None = None,
        *,
        progress: bool = False,
        **options: Any,
    ) -> None:
        """`options` change fields of `config` (default `SearchConfig()`) by name, e.g.
        `Searcher(run, data, split="all", device="cuda")`; `progress` shows a bar while the
        index is built."""
        self.config = with_options(config or SearchConfig(), options)
        split = self.config.split
        self.prepared = data if isinstance(data, PreparedDataset) else load_prepared(data)
        self.device = resolve_device(self.config.device)
        self.workers = scoring_workers(self.device, self.config.threads or None)
        self.loaded = load_model(run, self.prepared, self.device)
        self.split = split
        if split == ALL_IMAGES:
            ids = self.prepared.images["img_id"].to_numpy(np.int64)
        else:
            ids = self.prepared.split_images(split)
        self.img_ids = np.sort(np.asarray(ids, dtype=np.int64))
        if self.img_ids.size == 0:
            raise InputError(f"{self.prepared.root} has no {split} images to search.")
        self.max_keywords = int(self.loaded.train_config.get("max_keywords", 64))
        model_config = self.loaded.model_config
        row = model_kind(model_config.kind)
        self.explains = row.explains
        self.attends = row.intra_attention and model_config.intra
        values = int(np.prod(self.prepared.features.shape[1:]))  # R * D per image
        self.chunk = max(1, CHUNK_VALUES // values)
        self._cached: list[ImageBatch] | None = None
        self._run, self._progress = run, progress
        self._opened: ImageIndex | None = None
        self.dense = DenseScorer.of(self.loaded.model)
        self._compile_decided = False
        if self.config.exact and self.img_ids.size * values * 4 <= CACHE_BYTES:
            self._cached = list(self._read_chunks())
        self._shortlist: Any = None
        self._index = {word: i for i, word in enumerate(self.prepared.query_vocabulary)}
        files = self.prepared.images
        self._file_names = (
            dict(zip(files["img_id"].to_numpy(np.int64).tolist(), files["file_name"], strict=True))
            if "file_name" in files.columns
            else None
        )

    @property
    def index(self) -> ImageIndex | None:
        """The run's search index over the images (None with `exact`), opened (built, when
        missing or stale) on first use."""
        if self.config.exact:
            return None
        if self._opened is None:
            self._opened = open_index(
                self._run,
                self.prepared,
                self.split,
                self.img_ids,
                self.loaded.model,
                max_keywords=self.max_keywords,
                progress=self._progress,
            )
        return self._opened

    def read_query(self, text: str) -> tuple[list[str], list[str], QueryBatch]:
        """The query's known words, its unknown words, and its (1, L) batch. A query longer
        than `MAX_QUERY_CHARS` is refused before it is read."""
        tokens = query_analyzer()(check_query(text))
        known = [t for t in tokens if t in self._index]
        unknown = list(dict.fromkeys(t for t in tokens if t not in self._index))
        if not known:
            why = (
                f"none of its words ({shown_ids(unknown, len(unknown))}) is in the query "
                "vocabulary the run was trained with"
                if unknown
                else "it has no word the analyzer keeps (stop words and punctuation are dropped)"
            )
            quoted = text if len(text) <= QUOTED_CHARS else f"{text[:QUOTED_CHARS]}..."
            raise InputError(
                f"Cannot search for {quoted!r}: {why}. Use words of the training queries "
                f"({self.prepared.root / 'query_vocab.tsv'} lists them)."
            )
        ids = [self._index[t] + 1 for t in known[:MAX_QUERY_TOKENS]]  # 0 is padding
        tokens_tensor = torch.tensor([ids], dtype=torch.int64)
        batch = QueryBatch(tokens=tokens_tensor, mask=tokens_tensor > 0)
        return known, unknown, batch

    @torch.no_grad()
    def search(self, text: str, top: int | None = None) -> SearchResult:
        """The `top` (default: the config's) best images of the split for `text`, best first
        (ties: lower img_id)."""
        top = self.config.top if top is None else replace(self.config, top=top).top  # checked
        words, unknown, query = self.read_query(text)
        ids, scores = self.rank(query, top)[0]
        hits = self._explain(query, ids, scores)
        return SearchResult(text, words, unknown, self.split, int(self.img_ids.size), hits)

    @torch.no_grad()
    def search_many(
        self, texts: list[str], top: int | None = None, explain: bool = False
    ) -> list[SearchResult]:
        """`search` for each of `texts`, scored together in blocks of queries (the same kernel);
        without `explain`, the hits carry no attention weights (cheaper)."""
        top = self.config.top if top is None else replace(self.config, top=top).top
        read = [self.read_query(text) for text in texts]
        results = []
        for lo in range(0, len(read), QUERY_BLOCK):
            block = read[lo : lo + QUERY_BLOCK]
            ranked = self.rank(_stack([q for _, _, q in block]), top)
            for text, (words, unknown, query), (ids, scores) in zip(
                texts[lo : lo + QUERY_BLOCK], block, ranked, strict=True
            ):
                hits = self._explain(query, ids, scores) if explain else self._plain(ids, scores)
                results.append(
                    SearchResult(text, words, unknown, self.split, int(self.img_ids.size), hits)
                )
        return results

    @torch.no_grad()
    def rank(self, query: QueryBatch, top: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each query's `top` images (ids, scores), best first, ties by lower img_id: from the
        shortlist when the config asks for one, else from every image's score."""
        if self.config.shortlist and not self.config.exact:
            return self._rank_shortlist(query, top)
        scores = self._score_matrix(query)
        return [_top(row, self.img_ids, top) for row in scores]

    @torch.no_grad()
    def scores(self, query: QueryBatch) -> np.ndarray:
        """The score of every image (in `img_ids` order) for each query of a (Q, L) batch:
        (Q, N); for a (1, L) query, as before, its (N,) row when `exact` is off or on."""
        matrix = self._score_matrix(query)
        return matrix[0] if len(query) == 1 else matrix

    def _score_matrix(self, query: QueryBatch) -> np.ndarray:
        index = self.index
        if index is not None:
            return self._index_scores(query, slice(0, len(index)))
        return self._raw_scores(query)

    def _encoded_queries(self, query: QueryBatch) -> Any:
        encoded = self.loaded.model._encode_query(query.to(self.device))
        return encoded if self.dense is None else self.dense.queries(encoded)

    def _index_scores(self, query: QueryBatch, rows: slice | np.ndarray) -> np.ndarray:
        """Scores (Q, len(rows)) of the index's rows `rows` (a slice, or ascending positions)."""
        index = self.index
        assert index is not None
        if not self._compile_decided:
            self._compile_decided = True
            if self.dense is not None and self.compiles(len(index)):
                self.dense.compile_one_pass()
        encoded = self._encoded_queries(query)
        model = self.loaded.model
        # Blocks of at most READ_BLOCK images, and a few blocks even of a shortlist's few
        # thousand rows, for the scoring threads to share (a single block would be scored
        # with torch's own threads, which a second busy process stalls: see `kernel.in_order`).
        # The blocks depend on the rows only, so the scores do not depend on the threads.
        count = rows.stop - rows.start if isinstance(rows, slice) else len(rows)
        size = min(READ_BLOCK, max(SHARED_BLOCK_ROWS, -(-count // SHARED_BLOCKS)))
        if isinstance(rows, slice):
            steps = range(rows.start, rows.stop, size)
            blocks: list[Any] = [slice(lo, min(rows.stop, lo + size)) for lo in steps]
        else:
            blocks = [rows[lo : lo + size] for lo in range(0, len(rows), size)]
        dense = self.dense

        @torch.no_grad()  # per thread: the blocks are scored by `workers` threads
        def scored(block: Any) -> torch.Tensor:
            images = index.block(block, self.device)
            if dense is not None:
                return dense.score(encoded, images)
            return model._score(encoded, images, pool=True)[0].float()

        parts = list(in_order(scored, blocks, min(self.workers, len(blocks))))
        if not parts:
            return np.zeros((len(query), 0), dtype=np.float32)
        return torch.cat(parts, 1).cpu().numpy()

    def compiles(self, images: int) -> bool:
        """Whether the index search over `images` images runs compiled (`SearchConfig.compile`;
        never on a GPU: there the eager kernels already run at the memory's speed)."""
        if self.device.type != "cpu" or self.config.compile == "off":
            return False
        return self.config.compile == "on" or images >= COMPILE_IMAGES

    def _rank_shortlist(self, query: QueryBatch, top: int) -> list[tuple[np.ndarray, np.ndarray]]:
        index = self.index
        assert index is not None
        if self._shortlist is None:
            self._shortlist = Shortlist(index, self.config.shortlist_index)
        encoded = self._encoded_queries(query)
        vectors = self._shortlist.query_vectors(self.loaded.model, self.dense, encoded)
        candidates = self._shortlist.search(vectors, max(top, self.config.shortlist), self.workers)
        ranked = []
        for q, rows in enumerate(candidates):
            rows = np.sort(rows[rows >= 0])
            one = query.map(itemgetter(slice(q, q + 1)))
            scores = self._index_scores(one, rows)[0]
            ranked.append(_top(scores, self.img_ids[rows], top))
        return ranked

    def _raw_scores(self, query: QueryBatch) -> np.ndarray:
        model = self.loaded.model
        query = query.to(self.device)
        parts = [
            model.score_pool(query, images.to(self.device)).float().cpu().numpy()
            for images in (self._cached if self._cached is not None else self._read_chunks())
        ]
        return np.concatenate(parts, 1)

    def _read_chunks(self) -> Iterator[ImageBatch]:
        for lo in range(0, self.img_ids.size, self.chunk):
            yield image_batch(self.prepared, self.img_ids[lo : lo + self.chunk], self.max_keywords)

    def _file_name(self, img_id: int) -> str | None:
        """The image's file name, when the prepared folder records one (None for images it
        does not name, such as synth's)."""
        name = None if self._file_names is None else self._file_names.get(img_id)
        return name if isinstance(name, str) and name else None

    def _plain(self, ids: np.ndarray, scores: np.ndarray) -> list[SearchHit]:
        return [
            SearchHit(
                rank=i + 1,
                img_id=int(img),
                score=float(s),
                file_name=self._file_name(int(img)),
            )
            for i, (img, s) in enumerate(zip(ids, scores, strict=True))
        ]

    def _explain(self, query: QueryBatch, ids: np.ndarray, scores: np.ndarray) -> list[SearchHit]:
        hits = self._plain(ids, scores)
        if not self.explains or not hits:
            return hits
        images = image_batch(self.prepared, ids, self.max_keywords)
        grid = images.map(lambda t: t.unsqueeze(0)).to(self.device)  # (1, top, ...)
        attention = self.loaded.model.explain(query.to(self.device), grid)
        modality = attention.modality_weights[0].float().cpu().numpy()  # (top, 2)
        regions = attention.region_weights[0].float().cpu().numpy()  # (top, R)
        keywords = attention.keyword_weights[0].float().cpu().numpy()  # (top, K)
        keyword_ids = images.keywords.numpy()  # ids + 1, 0 pads
        side = math.isqrt(regions.shape[1])
        square = side * side == regions.shape[1]
        vocabulary = self.prepared.vocabulary
        explained = []
        for i, hit in enumerate(hits):
            attended_keywords: list[AttendedKeyword] = []
            attended_regions: list[AttendedRegion] = []
            every_region: tuple[float, ...] | None = None
            every_keyword: tuple[AttendedKeyword, ...] | None = None
            if self.attends:
                every_region = tuple(float(w) for w in regions[i])
                every_keyword = tuple(
                    AttendedKeyword(vocabulary[int(keyword_ids[i, k]) - 1], float(keywords[i, k]))
                    for k in np.flatnonzero(keyword_ids[i] > 0)
                )
                for k in _strongest(keywords[i], keyword_ids[i] > 0):
                    word = vocabulary[int(keyword_ids[i, k]) - 1]
                    attended_keywords.append(AttendedKeyword(word, float(keywords[i, k])))
                for r in _strongest(regions[i], np.ones(regions.shape[1], dtype=bool)):
                    cell = divmod(int(r), side) if square and side > 1 else (None, None)
                    attended_regions.append(
                        AttendedRegion(int(r), float(regions[i, r]), cell[0], cell[1])
                    )
            explained.append(
                SearchHit(
                    rank=hit.rank,
                    img_id=hit.img_id,
                    score=hit.score,
                    file_name=hit.file_name,
                    visual_weight=float(modality[i, 0]),
                    keyword_weight=float(modality[i, 1]),
                    keywords=attended_keywords,
                    regions=attended_regions,
                    region_weights=every_region,
                    keyword_weights=every_keyword,
                )
            )
        return explained


def _top(scores: np.ndarray, ids: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """The `top` best (ids, scores): score descending, then img_id ascending (ties)."""
    if scores.size > top:
        kth = np.partition(scores, scores.size - top)[scores.size - top]
        keep = np.flatnonzero(scores >= kth)  # every image tying with the last one kept
    else:
        keep = np.arange(scores.size)
    order = keep[np.lexsort((ids[keep], -scores[keep]))][:top]
    return ids[order], scores[order]


def _stack(queries: list[QueryBatch]) -> QueryBatch:
    """(1, L_i) queries as one (Q, max L) batch, padded with 0."""
    width = max(q.tokens.shape[1] for q in queries)
    tokens = torch.zeros(len(queries), width, dtype=torch.int64)
    for i, q in enumerate(queries):
        tokens[i, : q.tokens.shape[1]] = q.tokens[0]
    return QueryBatch(tokens=tokens, mask=tokens > 0)


def _strongest(weights: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Indices of the `SHOWN_ITEMS` largest weights among the valid (and non-zero) items."""
    candidates = np.flatnonzero(valid & (weights > 0))
    order = np.argsort(-weights[candidates], kind="stable")
    return candidates[order[:SHOWN_ITEMS]]


def search(
    run: str | os.PathLike[str],
    data: str | os.PathLike[str] | PreparedDataset,
    query: str,
    config: SearchConfig | None = None,
    *,
    progress: bool = False,
    **options: Any,
) -> SearchResult:
    """Rank the images of the config's split ("all": every image) of `data` for the free-text
    `query` with the run (a run folder's best.pt, or a .pt file); `options` change fields of
    `config` by name (`split`, `top`, `device`). See `Searcher` for repeated queries.
    `compile` "auto" scores this one query eagerly: compiling takes as long as it saves once."""
    chosen = with_options(config or SearchConfig(), options)
    if chosen.compile == "auto":
        chosen = replace(chosen, compile="off")
    check_query(query)  # before the model and the folder load
    return Searcher(run, data, chosen, progress=progress).search(query)
