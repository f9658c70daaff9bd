"""The streaming reducers give exactly what the whole-matrix metrics give, tile by tile, in any
tile order, ties included, without ever holding the matrix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from amc_data.evaluation.metrics import caption_ranking, matrix_auc
from amc_data.evaluation.streaming import (
    CaptionRanks,
    PooledAuc,
    PoolReduction,
    TileGrid,
    TopK,
    tile_grid,
)


def _tied_matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Scores from a handful of values, so that many cells tie (relevant ones with others)."""
    return rng.integers(0, 7, size=(rows, cols)).astype(np.float32) / 7


def _shuffled_tiles(grid: TileGrid, rng: np.random.Generator) -> list[tuple[slice, slice]]:
    tiles = list(grid)
    return [tiles[i] for i in rng.permutation(len(tiles))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooled_auc_counts_equal_matrix_auc_and_scikit_learn_with_ties(seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    matrix = _tied_matrix(rng, 23, 17)
    if seed == 2:
        matrix = rng.random((23, 17)).astype(np.float32)
    q_pos, i_pos = rng.integers(0, 23, 30), rng.integers(0, 17, 30)
    cells = np.unique(np.c_[q_pos, i_pos], axis=0)
    q_pos, i_pos = cells[:, 0], cells[:, 1]
    counter = PooledAuc(matrix[q_pos, i_pos])
    for rows, cols in _shuffled_tiles(TileGrid(23, 17, 5, 4), rng):
        counter.add(matrix[rows, cols])
    relevant = np.zeros(matrix.shape, dtype=bool)
    relevant[q_pos, i_pos] = True
    assert counter.auc() == matrix_auc(matrix, q_pos, i_pos)
    assert counter.auc() == pytest.approx(
        roc_auc_score(relevant.ravel(), matrix.ravel()), abs=1e-12
    )


def test_pooled_auc_is_nan_with_one_class() -> None:
    counter = PooledAuc(np.zeros(0, dtype=np.float32))
    counter.add(np.ones((2, 2), dtype=np.float32))
    assert np.isnan(counter.auc())


def test_top_k_keeps_each_row_s_best_columns_across_tiles() -> None:
    rng = np.random.default_rng(3)
    matrix = rng.random((9, 40)).astype(np.float32)
    top = TopK(9, 40, 6)
    for rows, cols in _shuffled_tiles(TileGrid(9, 40, 4, 7), rng):
        top.add(rows, cols, matrix[rows, cols])
    for row in range(9):
        assert set(top.columns[row]) == set(np.argsort(-matrix[row])[:6])
        np.testing.assert_array_equal(np.sort(top.scores[row]), np.sort(matrix[row])[-6:])
    wide = TopK(2, 3, 100)  # fewer columns than k: all of them
    wide.add(slice(0, 2), slice(0, 3), matrix[:2, :3])
    assert wide.k == 3 and set(wide.columns[0]) == {0, 1, 2}


@pytest.mark.parametrize("folds", [None, "given"])
def test_caption_ranks_equal_caption_ranking_of_the_whole_matrix(folds: str | None) -> None:
    rng = np.random.default_rng(4)
    n_images, per_image = 12, 3
    captions = n_images * per_image
    matrix = _tied_matrix(rng, captions + 4, n_images)  # 4 rows that are not captions
    caption_image = np.full(captions + 4, -1)
    caption_image[rng.permutation(captions + 4)[:captions]] = np.repeat(np.arange(n_images), 3)
    image_folds = np.arange(n_images) % 3 if folds else None
    rows = np.flatnonzero(caption_image >= 0)
    true = np.zeros(len(caption_image), dtype=np.float32)
    true[rows] = matrix[rows, caption_image[rows]]
    streamed = CaptionRanks(caption_image, true, n_images, image_folds, fold_size=4)
    for r, c in _shuffled_tiles(TileGrid(captions + 4, n_images, 7, 5), rng):
        streamed.add(r, c, matrix[r, c])
    whole = caption_ranking(
        matrix[rows].T, caption_image[rows], image_folds=image_folds, fold_size=4
    )
    assert streamed.result().summary() == whole.summary()


def test_pool_reduction_gives_the_frame_and_metrics_of_the_whole_matrix() -> None:
    rng = np.random.default_rng(5)
    queries, images = np.arange(100, 130), np.arange(10, 50, 2)
    matrix = _tied_matrix(rng, len(queries), len(images))
    own = rng.permutation(np.arange(len(queries)) % len(images))  # every image has a caption
    judged = pd.DataFrame(
        {
            "query_id": np.r_[queries, queries[:5]],
            "img_id": np.r_[images[own], images[(own[:5] + 1) % len(images)]],
            "label": np.r_[np.ones(len(queries), int), np.zeros(5, int)],
        }
    )
    judged = judged.drop_duplicates(["query_id", "img_id"])
    grid = tile_grid(len(queries), len(images), pair_bytes=4, budget=4 * 37)
    reduction = PoolReduction(grid, queries, images, judged, keep=4, folds=None)
    q_cells, i_cells = reduction.positive_cells
    reduction.set_positive_scores(matrix[q_cells, i_cells])
    for rows, cols in grid:
        reduction.add(rows, cols, matrix[rows, cols].copy())
    frame = reduction.frame()
    rows = np.searchsorted(queries, frame["query_id"]), np.searchsorted(images, frame["img_id"])
    np.testing.assert_array_equal(frame["score"].to_numpy(), matrix[rows])
    assert len(frame.merge(judged, on=["query_id", "img_id"])) == len(judged)
    for q, group in frame.groupby("query_id"):
        row = matrix[np.searchsorted(queries, q)]
        assert np.sort(group["score"].to_numpy())[-4:].min() == np.sort(row)[-4]
    relevant = judged[judged["label"] > 0]
    q_pos = np.searchsorted(queries, relevant["query_id"])
    i_pos = np.searchsorted(images, relevant["img_id"])
    assert reduction.auc is not None and reduction.captions is not None
    assert reduction.auc.auc() == matrix_auc(matrix, q_pos, i_pos)
    scores, is_relevant = reduction.roc_sample()
    assert len(scores) == matrix.size and is_relevant.sum() == len(relevant)
    whole = caption_ranking(matrix.T, own)
    assert reduction.captions.result().summary() == whole.summary()
