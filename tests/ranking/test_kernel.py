"""The scoring kernel: tiles of encoded queries x encoded images give the model's own
`score_pool` scores for every registered model kind, whatever the tile size, image cache or
query order; the relevant cells it scores first are the very values of the tiles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import amc_data  # noqa: E402
from amc_data.ranking.checkpoint import load_model  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.kernel import PoolScorer, RandomScorer, row_order  # noqa: E402
from amc_data.ranking.registry import model_kinds  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("kernel")
    data = root / "data"
    amc_data.synth(data, seed=2, images=240, queries=40)
    made = {}
    for kind in model_kinds():
        made[kind] = root / kind
        options = {"epochs": 1, "batch_size": 32, "negatives": 3, "dim": 8, "device": "cpu"}
        train(data, made[kind], TrainConfig(**options, model=kind))
    return data, made


def _matrix(scorer: PoolScorer) -> np.ndarray:
    out = np.full((len(scorer.query_ids), len(scorer.img_ids)), np.nan, dtype=np.float32)
    for rows, cols, tile in scorer.tiles():
        assert np.isnan(out[rows, cols]).all()  # every cell once
        out[rows, cols] = tile
    return out


@pytest.mark.parametrize("kind", model_kinds())
@pytest.mark.parametrize(("tile_bytes", "cache_bytes"), [(1 << 30, 1 << 30), (40_000, 0)])
def test_kernel_tiles_equal_score_pool_for_every_model_kind(
    runs: tuple[Path, dict[str, Path]], kind: str, tile_bytes: int, cache_bytes: int
) -> None:
    data, made = runs
    prepared = amc_data.load_prepared(data)
    model = load_model(made[kind], prepared).model.eval()
    queries = np.random.default_rng(0).permutation(prepared.queries["query_id"].to_numpy())
    images = np.sort(prepared.images["img_id"].to_numpy())[:70]
    scorer = PoolScorer(
        model, prepared, queries, images, tile_bytes=tile_bytes, cache_bytes=cache_bytes
    )
    if tile_bytes < 1 << 30:
        assert scorer.grid.row_block < len(queries) and scorer.grid.col_block < len(images)
    streamed = _matrix(scorer)
    with torch.no_grad():
        expected = model.score_pool(query_batch(prepared, queries), image_batch(prepared, images))
    np.testing.assert_allclose(streamed, expected.numpy(), rtol=1e-5, atol=1e-6)
    rows = np.arange(0, len(queries), 3)
    cols = (rows * 7) % len(images)
    np.testing.assert_array_equal(scorer.cells(rows, cols), streamed[rows, cols])


def test_random_scorer_draws_the_whole_matrix_stream_in_row_blocks() -> None:
    queries = np.arange(50)
    scorer = RandomScorer(queries, 30, seed=7, tile_bytes=4 * 30 * 8)
    assert scorer.grid.row_block == 8
    out = np.zeros((50, 30), dtype=np.float32)
    for rows, cols, tile in scorer.tiles():
        out[rows, cols] = tile
    expected = np.random.default_rng(7).random((50, 30), dtype=np.float32)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        scorer.cells(np.array([3, 49]), np.array([0, 29])), out[[3, 49], [0, 29]]
    )


def test_row_order_puts_queries_of_the_same_image_together() -> None:
    import pandas as pd

    queries = np.array([1, 2, 3, 4, 5])
    images = np.array([10, 20, 30])
    judged = pd.DataFrame(
        {"query_id": [1, 2, 3, 4], "img_id": [30, 10, 30, 20], "label": [1, 1, 1, 0]}
    )
    np.testing.assert_array_equal(row_order(queries, images, judged), [2, 1, 3, 4, 5])


def test_a_whole_split_evaluation_holds_far_less_than_its_matrix() -> None:
    """Every metric of a 12,000 x 6,000 pool (288 MB of float32 scores) folded in from tiles
    of 256 KB: the numpy memory at its peak stays well under the matrix (the ROC picture's
    million-cell sample and the per-query top 100 are the largest parts, bounded whatever
    the pool's size)."""
    import tracemalloc

    import pandas as pd

    from amc_data.evaluation.streaming import PoolReduction
    from amc_data.ranking.kernel import reduce_pool

    queries, images = np.arange(12_000), np.arange(6_000)
    judged = pd.DataFrame({"query_id": queries, "img_id": queries % 6_000, "label": 1})
    scorer = RandomScorer(queries, len(images), seed=0, tile_bytes=1 << 18)
    tracemalloc.start()
    try:
        reduction = PoolReduction(scorer.grid, queries, images, judged)
        reduce_pool(scorer, reduction)
        assert reduction.auc is not None and 0.45 < reduction.auc.auc() < 0.55
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 288e6 / 3, f"peak {peak / 1e6:.0f} MB"
