"""Exact metrics of a `(queries, images)` score matrix that is never held whole.

A ranker scores the matrix one tile (a block of queries x a block of images) at a time, in any
order, and each reducer here folds the tile into what its metric needs, in memory bounded by
the number of queries and images (never their product):

- `TopK`: each query's best `k` images (the frame NDCG@k is computed from, k <= `k`);
- `CellValues`: the scores of chosen cells (the judged pairs, a sample for the ROC picture);
- `PooledAuc`: for each distinct score of a relevant cell, how many cells score below it and
  how many tie with it; the pooled ROC AUC follows exactly (`matrix_auc` of the whole matrix);
- `CaptionRanks`: COCO's caption ranking both ways, on the whole split and within each fold,
  as counts of the cells that outrank each caption's true image and each image's best caption
  (`caption_ranking` of the whole matrix).

The AUC and the caption ranks compare every cell with the scores of the relevant cells, so
those scores must be known before the first tile: a ranker scores the relevant cells first
(`PoolReduction.positive_cells`), and later writes the same values into each tile
(`PoolReduction.add` does), so every reducer sees one consistent matrix. Nothing here imports
torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

from amc_data.errors import InputError

from .metrics import (
    RECALL_CUTOFFS,
    CaptionRanking,
    _caption_images,
    _image_folds,
    _size_label,
    recall_at_k,
)

TILE_BYTES = 64 * 2**20  # scores of one tile, and each reducer's temporaries, stay near this
# The AUC counter sorts this many cells at a time, or more with many relevant scores (each sort
# is followed by a search of every relevant score, which a larger batch pays for less often).
SORT_CELLS = 1 << 20
SORT_CELLS_MAX = 1 << 23


@dataclass(frozen=True)
class TileGrid:
    """A `(rows, cols)` matrix cut into tiles of at most `row_block x col_block` cells; tiles
    go column block by column block (an image block is read once), rows within each."""

    rows: int
    cols: int
    row_block: int
    col_block: int

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        for col in range(0, self.cols, self.col_block):
            cols = slice(col, min(col + self.col_block, self.cols))
            for row in range(0, self.rows, self.row_block):
                yield slice(row, min(row + self.row_block, self.rows)), cols

    def tile_of(self, row: np.ndarray, col: np.ndarray) -> np.ndarray:
        """The index (in iteration order) of the tile holding each cell."""
        row_tiles = -(-self.rows // self.row_block)
        return (np.asarray(col) // self.col_block) * row_tiles + np.asarray(row) // self.row_block

    def index(self, rows: slice, cols: slice) -> int:
        return self.tile_of(np.array([rows.start]), np.array([cols.start]))[0]


def tile_grid(rows: int, cols: int, pair_bytes: int, budget: int = TILE_BYTES) -> TileGrid:
    """A grid whose tiles hold about `budget` bytes at `pair_bytes` per cell, as square in
    cells as the matrix allows (fewer image re-reads, fewer Python steps)."""
    cells = max(1, budget // max(1, pair_bytes))
    side = max(1, int(np.sqrt(cells)))
    col_block = max(1, min(cols, side))
    row_block = max(1, min(rows, cells // col_block))
    return TileGrid(rows, cols, row_block, col_block)


class TopK:
    """Each row's best `k` columns so far (all of them when the matrix has fewer). Ties at the
    k-th score keep whichever the partition meets first, as a whole-row `argpartition` does."""

    def __init__(self, rows: int, cols: int, k: int) -> None:
        self.k = max(0, min(k, cols))
        self.scores = np.full((rows, self.k), -np.inf, dtype=np.float32)
        self.columns = np.full((rows, self.k), -1, dtype=np.int64)

    def add(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        if self.k == 0:
            return
        width = block.shape[1]
        take = min(self.k, width)
        part = np.argpartition(-block, take - 1, axis=1)[:, :take] if take < width else None
        values = block if part is None else np.take_along_axis(block, part, 1)
        columns = np.arange(cols.start, cols.stop)[None, :] if part is None else part + cols.start
        scores = np.concatenate([self.scores[rows], values], 1)
        both = np.concatenate([self.columns[rows], np.broadcast_to(columns, values.shape)], 1)
        best = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        self.scores[rows] = np.take_along_axis(scores, best, 1)
        self.columns[rows] = np.take_along_axis(both, best, 1)


class CellValues:
    """The scores of chosen cells `(row[j], col[j])`, gathered tile by tile; `values[j]` is NaN
    until the tile holding the cell has been seen."""

    def __init__(self, grid: TileGrid, row: np.ndarray, col: np.ndarray) -> None:
        self.row, self.col = np.asarray(row, np.int64), np.asarray(col, np.int64)
        self.values = np.full(len(self.row), np.nan, dtype=np.float32)
        tile = grid.tile_of(self.row, self.col)
        self._order = np.argsort(tile, kind="stable")
        self._bounds = np.searchsorted(tile[self._order], np.arange(_tiles(grid) + 1))
        self._grid = grid

    def in_tile(self, rows: slice, cols: slice) -> np.ndarray:
        """The indices `j` of the chosen cells inside this tile."""
        tile = self._grid.index(rows, cols)
        return self._order[self._bounds[tile] : self._bounds[tile + 1]]

    def add(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        inside = self.in_tile(rows, cols)
        self.values[inside] = block[self.row[inside] - rows.start, self.col[inside] - cols.start]

    def overwrite(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        """Write the known values into the tile (a ranker's second pass over the same cells)."""
        inside = self.in_tile(rows, cols)
        block[self.row[inside] - rows.start, self.col[inside] - cols.start] = self.values[inside]


def _tiles(grid: TileGrid) -> int:
    return -(-grid.rows // grid.row_block) * -(-grid.cols // grid.col_block)


class PooledAuc:
    """The ROC AUC over every cell of the matrix, the cells of `positive_scores` relevant and
    all others not, ties counting half: exactly `matrix_auc` (and scikit-learn's
    `roc_auc_score` on the flattened matrix), from counts gathered tile by tile.

    For each distinct relevant score `u`, it counts the cells (relevant ones included) below
    `u` and equal to `u`; at the end the relevant cells' own contribution is taken out, which
    leaves the negatives below and tied with each relevant cell."""

    def __init__(self, positive_scores: np.ndarray) -> None:
        self.positives = np.sort(np.asarray(positive_scores, dtype=np.float32))
        self.distinct, self.multiplicity = np.unique(self.positives, return_counts=True)
        self.below = np.zeros(len(self.distinct), dtype=np.int64)
        self.equal = np.zeros(len(self.distinct), dtype=np.int64)
        self.cells = 0
        self._pending: list[np.ndarray] = []
        self._pending_cells = 0

    def add(self, block: np.ndarray) -> None:
        """Count the cells of one tile (copied: the tile may be reused by its caller)."""
        self.cells += block.size
        if not len(self.distinct):
            return
        self._pending.append(np.asarray(block, dtype=np.float32).ravel().copy())
        self._pending_cells += block.size
        if self._pending_cells >= min(SORT_CELLS_MAX, max(SORT_CELLS, 32 * len(self.distinct))):
            self._flush()

    def _flush(self) -> None:
        # Sorting a few million cells and merging the (sorted) relevant scores into them is
        # several times faster than a binary search of each cell among the relevant scores.
        if not self._pending:
            return
        cells = np.sort(np.concatenate(self._pending))
        self._pending, self._pending_cells = [], 0
        left = np.searchsorted(cells, self.distinct, "left")
        self.below += left
        self.equal += np.searchsorted(cells, self.distinct, "right") - left

    def auc(self) -> float:
        self._flush()
        n_pos = len(self.positives)
        n_neg = self.cells - n_pos
        if n_pos == 0 or n_neg <= 0:
            return float("nan")
        positives_below = np.searchsorted(self.positives, self.distinct, "left")
        below = (self.below - positives_below) * self.multiplicity
        ties = (self.equal - self.multiplicity) * self.multiplicity
        return float((int(below.sum()) + 0.5 * int(ties.sum())) / (n_pos * n_neg))


class CaptionRanks:
    """COCO's caption ranking both ways from tiles of the (captions, images) score matrix.

    `caption_image[q]` is the image (column) of row q's caption, -1 for a row that is not a
    caption; `true_scores[q]` the score of that cell. Image annotation ranks an image's best
    true caption among every caption: 1 + the other images' captions scoring at least as high.
    Image retrieval ranks a caption's image among every image: the images scoring at least as
    high as the true one, itself included. Both are also counted within each fold (a fold holds
    its images and their captions). Ties count against the model, as `caption_ranking` does."""

    def __init__(
        self,
        caption_image: np.ndarray,
        true_scores: np.ndarray,
        n_images: int,
        image_folds: np.ndarray | None,
        fold_size: int = 1000,
    ) -> None:
        self.caption_image = np.asarray(caption_image, dtype=np.int64)
        is_caption = self.caption_image >= 0
        if not is_caption.any():
            raise InputError("there are no captions with a true image to rank.")
        _caption_images((n_images, int(is_caption.sum())), self.caption_image[is_caption], 1)
        self.image_folds = _image_folds(n_images, fold_size, image_folds)
        self.true_scores = np.asarray(true_scores, dtype=np.float32)
        best = np.full(n_images, -np.inf, dtype=np.float32)
        np.maximum.at(best, self.caption_image[is_caption], self.true_scores[is_caption])
        self.best_true = best  # each image's best true caption
        self.caption_fold = np.where(
            is_caption, self.image_folds[np.maximum(self.caption_image, 0)], -1
        )
        self.annotation = np.zeros(n_images, dtype=np.int64)
        self.annotation_in_fold = np.zeros(n_images, dtype=np.int64)
        self.retrieval = np.zeros(len(self.caption_image), dtype=np.int64)
        self.retrieval_in_fold = np.zeros(len(self.caption_image), dtype=np.int64)

    def add(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        caption = np.flatnonzero(self.caption_image[rows] >= 0)
        if not len(caption):
            return
        sub = block[caption]  # (captions, images)
        columns = np.arange(cols.start, cols.stop)
        row_image = self.caption_image[rows][caption]
        same_fold = self.caption_fold[rows][caption][:, None] == self.image_folds[cols][None, :]
        # Annotation: other images' captions at least as high as the image's best true one.
        outrank = (sub >= self.best_true[cols][None, :]) & (row_image[:, None] != columns)
        self.annotation[cols] += outrank.sum(0)
        self.annotation_in_fold[cols] += (outrank & same_fold).sum(0)
        # Retrieval: images at least as high as the caption's true one (itself included).
        above = sub >= self.true_scores[rows][caption][:, None]
        index = np.arange(rows.start, rows.stop)[caption]
        self.retrieval[index] += above.sum(1)
        self.retrieval_in_fold[index] += (above & same_fold).sum(1)

    def result(self, ks: tuple[int, ...] = RECALL_CUTOFFS) -> CaptionRanking:
        captions = np.flatnonzero(self.caption_image >= 0)
        folds = []
        fold_values = np.unique(self.image_folds)
        if len(fold_values) > 1:
            for fold in fold_values:
                in_fold = captions[self.caption_fold[captions] == fold]
                folds.append(
                    (
                        recall_at_k(1 + self.annotation_in_fold[self.image_folds == fold], ks),
                        recall_at_k(self.retrieval_in_fold[in_fold], ks),
                    )
                )
        sizes = {int((self.image_folds == f).sum()) for f in fold_values}
        return CaptionRanking(
            annotation=recall_at_k(1 + self.annotation, ks),
            retrieval=recall_at_k(self.retrieval[captions], ks),
            folds=tuple(folds),
            full_label=_size_label(len(self.image_folds)),
            fold_label=_size_label(sizes.pop()) if len(sizes) == 1 else "folds",
        )


ROC_SAMPLE = 1_000_000  # irrelevant cells kept for the ROC picture of a whole-split ranking


def roc_sample_cells(
    rows: int, cols: int, relevant_row: np.ndarray, relevant_col: np.ndarray, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells drawn in a whole-split ROC picture: every relevant cell and a uniform sample
    of `ROC_SAMPLE` others (all of them when there are fewer); returns rows, cols, relevance."""
    flat_relevant = np.unique(np.ravel_multi_index((relevant_row, relevant_col), (rows, cols)))
    total = rows * cols
    if total - len(flat_relevant) <= ROC_SAMPLE:
        others = np.setdiff1d(np.arange(total), flat_relevant, assume_unique=True)
    else:
        # Distinct cells of independent draws are a uniform sample of the cells (by symmetry),
        # and drawing them needs no array of every cell (`choice` without replacement may
        # build one).
        rng = np.random.default_rng(seed)
        others = np.zeros(0, dtype=np.int64)
        while len(others) < ROC_SAMPLE:
            drawn = rng.integers(0, total, ROC_SAMPLE + len(flat_relevant) // 8 + 1024)
            others = _sorted_union(others, _sorted_difference(_sorted_unique(drawn), flat_relevant))
        others = rng.choice(others, ROC_SAMPLE, replace=False)
    cells = np.concatenate([flat_relevant, others])
    row, col = np.unravel_index(cells, (rows, cols))
    relevant = np.zeros(len(cells), dtype=bool)
    relevant[: len(flat_relevant)] = True
    return row.astype(np.int64), col.astype(np.int64), relevant


# np.union1d / np.setdiff1d of int64 arrays, by sorting (numpy's hash-based unique is several
# times slower on a million cells); the same sorted distinct values.
def _sorted_unique(values: np.ndarray) -> np.ndarray:
    values = np.sort(values)
    return values[np.r_[True, values[1:] != values[:-1]]] if len(values) else values


def _sorted_difference(values: np.ndarray, remove: np.ndarray) -> np.ndarray:
    """Sorted distinct `values` without those in sorted distinct `remove`."""
    if not len(remove):
        return values
    at = np.minimum(np.searchsorted(remove, values), len(remove) - 1)
    return values[remove[at] != values]


def _sorted_union(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    return _sorted_unique(np.concatenate([first, second]))


class PoolReduction:
    """Everything `eval` computes from a split's whole score matrix, folded in tile by tile.

    `queries` and `images` are the matrix's rows and columns (distinct ids; images ascending,
    queries in any order, see `kernel.row_order`); `judged` the
    split's judgments (`query_id`, `img_id`, `label`) inside the pool. A ranker first scores
    `positive_cells` and passes them to `set_positive_scores`, then feeds every tile to `add`.
    Without `metrics` (training's validation), only the frame is gathered and no first pass is
    needed."""

    def __init__(
        self,
        grid: TileGrid,
        queries: np.ndarray,
        images: np.ndarray,
        judged: pd.DataFrame,
        *,
        keep: int = 100,
        relevant: int = 1,
        folds: np.ndarray | None = None,
        metrics: bool = True,
    ) -> None:
        self.grid, self.queries, self.images = grid, queries, images
        self.judged = judged
        self.relevant, self.folds, self.metrics = relevant, folds, metrics
        self._query_index = pd.Index(queries)
        self.top = TopK(len(queries), len(images), keep)
        q_judged, i_judged = self._cells(judged)
        self.judged_cells = CellValues(grid, q_judged, i_judged)
        labels = judged["label"].to_numpy()
        # The cells whose scores the other reducers compare against: the relevant pairs (AUC)
        # and each caption's own image (its first judged image of label above 0).
        self._relevant_mask = labels >= relevant
        needed = np.flatnonzero(self._relevant_mask | (labels > 0))
        self.positives = CellValues(grid, q_judged[needed], i_judged[needed])
        self._relevant_of_positive = self._relevant_mask[needed]
        captioned, first = np.unique(q_judged[needed][labels[needed] > 0], return_index=True)
        self._own_positive = np.flatnonzero(labels[needed] > 0)[first]  # into positives
        self.caption_image = np.full(len(queries), -1, dtype=np.int64)
        self.caption_image[captioned] = i_judged[needed][self._own_positive]
        self.auc: PooledAuc | None = None
        self.captions: CaptionRanks | None = None
        self.roc: CellValues | None = None
        self._roc_relevant = np.zeros(0, dtype=bool)

    def _cells(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return (
            self._query_index.get_indexer(frame["query_id"].to_numpy()),
            np.searchsorted(self.images, frame["img_id"].to_numpy()),
        )

    @property
    def positive_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """The (row, col) cells to score before the tiles (none without `metrics`)."""
        if not self.metrics:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        return self.positives.row, self.positives.col

    def set_positive_scores(self, scores: np.ndarray) -> None:
        """The scores of `positive_cells`, in their order; sets up the AUC and caption ranks."""
        self.positives.values[:] = scores
        relevant = self._relevant_of_positive
        self.auc = PooledAuc(self.positives.values[relevant])
        true_scores = np.zeros(len(self.queries), dtype=np.float32)
        true_scores[self.positives.row[self._own_positive]] = scores[self._own_positive]
        self.captions = CaptionRanks(self.caption_image, true_scores, len(self.images), self.folds)
        row, col, self._roc_relevant = roc_sample_cells(
            len(self.queries),
            len(self.images),
            self.positives.row[relevant],
            self.positives.col[relevant],
        )
        self.roc = CellValues(self.grid, row, col)

    def add(self, rows: slice, cols: slice, block: np.ndarray) -> None:
        """Fold in one tile (its scores float32, `(rows, cols)` of the matrix); the cells scored
        beforehand get those scores, so that every reducer sees the same matrix."""
        if self.metrics:
            if self.auc is None or self.captions is None or self.roc is None:
                raise InputError("set_positive_scores must come before the tiles.")
            self.positives.overwrite(rows, cols, block)
            self.auc.add(block)
            self.captions.add(rows, cols, block)
            self.roc.add(rows, cols, block)
        self.top.add(rows, cols, block)
        self.judged_cells.add(rows, cols, block)

    def frame(self, limit: int | None = None) -> pd.DataFrame:
        """Each query's best `keep` images (or its best `limit`, when fewer) and every judged
        pair: `query_id`, `img_id`, `score`, `label` (0 for unjudged images), as
        `scoring.pool_frame` gives."""
        columns, scores = self.top.columns, self.top.scores
        if limit is not None and 0 < limit < self.top.k:
            best = np.argpartition(-scores, limit - 1, axis=1)[:, :limit]
            columns = np.take_along_axis(columns, best, 1)
            scores = np.take_along_axis(scores, best, 1)
        k = columns.shape[1]
        top = pd.DataFrame(
            {
                "query_id": np.repeat(self.queries, k),
                "img_id": self.images[columns.reshape(-1)],
                "score": scores.reshape(-1),
            }
        )
        judged = pd.DataFrame(
            {
                "query_id": self.judged["query_id"].to_numpy(),
                "img_id": self.judged["img_id"].to_numpy(),
                "score": self.judged_cells.values,
            }
        )
        rows = pd.concat([top, judged], ignore_index=True)
        rows = rows.drop_duplicates(["query_id", "img_id"]).reset_index(drop=True)
        judged_labels = self.judged[["query_id", "img_id", "label"]]
        labels = rows.merge(judged_labels, on=["query_id", "img_id"], how="left")["label"]
        rows["label"] = labels.fillna(0).to_numpy(np.int32)
        rows["score"] = rows["score"].astype(np.float32)
        return rows.sort_values("query_id", kind="stable", ignore_index=True)

    def roc_sample(self) -> tuple[np.ndarray, np.ndarray]:
        """The scores and relevance of the ROC picture's cells."""
        assert self.roc is not None  # set with the positive scores
        return self.roc.values.astype(np.float32), self._roc_relevant
