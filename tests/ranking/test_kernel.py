"""The scoring kernel: tiles of encoded queries x encoded images give the model's own
`score_pool` scores for every registered model kind, whatever the tile size, image cache or
query order; the relevant cells it scores first are the very values of the tiles."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import amc_data  # noqa: E402
from amc_data.ranking.checkpoint import load_model  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.kernel import (  # noqa: E402
    DenseScorer,
    PoolScorer,
    RandomScorer,
    row_order,
)
from amc_data.ranking.model import ModelConfig  # noqa: E402
from amc_data.ranking.registry import model_kind, model_kinds  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


GATE_CONTENT = "amc --gate-content"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("kernel")
    data = root / "data"
    amc_data.synth(data, seed=2, images=240, queries=40)
    made = {}
    options = {"epochs": 1, "batch_size": 32, "dim": 8, "device": "cpu"}
    for kind in model_kinds():
        made[kind] = root / kind
        train(data, made[kind], TrainConfig(**options, model=kind))
    # The gate that also reads the attended vectors (the paper's form, `--preset paper`): each
    # query carries a probe beside its vector, which a tile of queries must keep with it.
    made[GATE_CONTENT] = root / "gate-content"
    train(data, made[GATE_CONTENT], TrainConfig(**options, gate_content=True))
    return data, made


def _matrix(scorer: PoolScorer) -> np.ndarray:
    out = np.full((len(scorer.query_ids), len(scorer.img_ids)), np.nan, dtype=np.float32)
    for rows, cols, tile in scorer.tiles():
        assert np.isnan(out[rows, cols]).all()  # every cell once
        out[rows, cols] = tile
    return out


@pytest.mark.parametrize("kind", [*model_kinds(), GATE_CONTENT])
@pytest.mark.parametrize(("tile_bytes", "cache_bytes"), [(1 << 30, 1 << 30), (40_000, 0)])
def test_kernel_tiles_equal_score_pool_for_every_model_kind(
    runs: tuple[Path, dict[str, Path]],
    kind: str,
    tile_bytes: int,
    cache_bytes: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from amc_data.ranking import kernel

    data, made = runs
    if tile_bytes < 1 << 30:
        monkeypatch.setattr(kernel, "QUERY_BLOCK", 16)  # the queries encoded in three blocks
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


def test_tiles_scored_for_the_relevant_cells_are_kept_not_scored_twice(
    runs: tuple[Path, dict[str, Path]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An evaluation scores the tiles holding a relevant cell first; those tiles are kept for
    the pass over every tile: every tile is scored once, and every figure is the one a
    second scoring of them gives, to the bit."""
    import pandas as pd

    from amc_data.evaluation.streaming import PoolReduction
    from amc_data.ranking import kernel

    data, made = runs
    prepared = amc_data.load_prepared(data)
    model = load_model(made["amc"], prepared).model.eval()
    # Each query judged relevant to its first relevant image, and those images: every image
    # then has a true caption (the caption ranks need one).
    positive = prepared.judgments[prepared.judgments["label"] > 0]
    judged = positive.groupby("query_id", as_index=False)["img_id"].first().assign(label=1)
    queries = np.sort(judged["query_id"].to_numpy())
    images = np.unique(judged["img_id"].to_numpy())
    scored = []
    score = PoolScorer.score

    def counted(self: PoolScorer, queries: object, images: object) -> np.ndarray:
        scored.append(1)
        return score(self, queries, images)

    monkeypatch.setattr(PoolScorer, "score", counted)

    def evaluate(kept_bytes: int) -> tuple[pd.DataFrame, float, int]:
        monkeypatch.setattr(kernel, "KEPT_TILE_BYTES", kept_bytes)
        scored.clear()
        scorer = PoolScorer(model, prepared, queries, images, tile_bytes=20_000)
        reduction = PoolReduction(scorer.grid, queries, images, judged)
        kernel.reduce_pool(scorer, reduction)
        assert reduction.auc is not None
        tiles = len(list(scorer.grid))
        return reduction.frame(), reduction.auc.auc(), len(scored) - tiles

    frame, auc, again = evaluate(kernel.KEPT_TILE_BYTES)
    frame_twice, auc_twice, again_twice = evaluate(0)
    assert again == 0 and again_twice > 0  # kept: no tile scored twice
    pd.testing.assert_frame_equal(frame, frame_twice)
    assert auc == auc_twice


def _option_grid() -> list[tuple[str, dict[str, object]]]:
    """Every attention-family kind with each option that changes its scoring math."""
    grid: list[tuple[str, dict[str, object]]] = []
    for kind in model_kinds():
        row = model_kind(kind)
        if kind == "cca":
            continue
        grid.append((kind, {}))
        if row.intra_attention:
            grid.append((kind, {"attention": "dot"}))
            grid.append((kind, {"intra": False}))
            grid.append((kind, {"attention_scale": 7.0}))
            grid.append((kind, {"region_attention_scale_rate": 3.0}))  # the regions' own scale
        if row.modality_gate:
            grid.append((kind, {"inter": False}))
            grid.append((kind, {"gate_content": True}))
            grid.append((kind, {"gate_scale": 0.0}))
            grid.append((kind, {"gate_content": True, "gate_scale": 0.0, "attention": "dot"}))
    return grid


def _mode_grid() -> list[tuple[str, str, dict[str, object]]]:
    """Each (mode, kind, options); the modes that give keywords by id only where the model
    attends to its keywords (pooled keywords are read as one mean: there are no ids)."""
    grid = []
    for kind, options in _option_grid():
        row = model_kind(kind)
        pooled_keywords = row.keywords and not (row.intra_attention and options.get("intra", True))
        for mode in ("vectors", "gram", "steps", "ids", "id-bags"):
            if not (mode.startswith("id") and pooled_keywords):
                grid.append((mode, kind, options))
    return grid


@pytest.mark.parametrize(("mode", "kind", "options"), _mode_grid())
def test_the_dense_path_equals_score_pool_for_every_kind_and_option(
    kind: str, options: dict[str, object], mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Random weights (every parameter perturbed, scales included), images with padded
    regions, no keywords at all, repeated keywords: the dense path's scores (from the attended
    vectors, from each image's Gram matrices, a few images a step with the unused keyword
    slots cut, or keywords given by id as an index gives them: looked up, or a weighted bag of
    table rows for a few queries) are score_pool's to float32 rounding (relative 1e-5)."""
    from amc_data.ranking import kernel
    from amc_data.ranking.batch import ImageBatch, QueryBatch
    from amc_data.ranking.build import build_model

    generator = torch.Generator().manual_seed(len(kind) * 31 + len(str(options)))
    config = ModelConfig(
        kind=kind,
        query_vocab_size=30,
        keyword_vocab_size=25,
        feature_dim=12,
        dim=16,
        **options,  # type: ignore[arg-type]
    )
    model = build_model(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)
    n, regions, width = 37, 6, 5
    region_mask = torch.rand(n, regions, generator=generator) > 0.3
    region_mask[0] = False  # an image without regions
    keywords = torch.randint(1, 26, (n, width), generator=generator)
    keywords[torch.rand(n, width, generator=generator) > 0.6] = 0
    keywords[1] = 0  # an image without keywords
    images = ImageBatch(
        regions=torch.randn(n, regions, 12, generator=generator) * 3,
        region_mask=region_mask,
        keywords=keywords,
        keyword_counts=torch.randint(1, 4, (n, width), generator=generator).float(),
        keyword_mask=keywords > 0,
    )
    tokens = torch.randint(0, 31, (9, 4), generator=generator)
    tokens[:, 0] = torch.randint(1, 31, (9,), generator=generator)
    query = QueryBatch(tokens=tokens, mask=tokens > 0)
    dense = DenseScorer.of(model)
    assert dense is not None
    if mode == "steps":
        monkeypatch.setattr(kernel, "STEP_ELEMENTS", 300)  # 2 or 3 images a step
    if mode == "id-bags":
        monkeypatch.setattr(kernel, "FEW_QUERIES", 9)
    with torch.no_grad():
        expected = model.score_pool(query, images)
        encoded = dense.images(model._encode_images(images), gram=mode in ("gram", "steps"))
        if mode.startswith("id") and encoded.keywords is not None:
            assert encoded.keywords.key is not None  # attended: the grid leaves pooled out
            by_id = dataclasses.replace(encoded.keywords, key=None, value=None, ids=keywords)
            encoded = dataclasses.replace(encoded, keywords=by_id)
        got = dense.score(dense.queries(model._encode_query(query)), encoded)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_models_the_dense_path_does_not_cover_keep_their_own_scoring(
    runs: tuple[Path, dict[str, Path]],
) -> None:
    data, made = runs
    prepared = amc_data.load_prepared(data)
    assert DenseScorer.of(load_model(made["cca"], prepared).model.eval()) is None
    amc = load_model(made["amc"], prepared).model
    assert DenseScorer.of(amc.train()) is None  # dropout active
    assert DenseScorer.of(amc.eval()) is not None


def test_a_model_option_the_dense_path_does_not_know_keeps_the_model_s_scoring() -> None:
    """An option added to the model later (here: a config with one more field) that is on,
    the dense path cannot know what it changes: the model is scored by its own `_score`; at
    its default, the dense path applies."""
    from amc_data.ranking.build import build_model

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class LaterConfig(ModelConfig):
        later_option: bool = False

    options = {"query_vocab_size": 5, "keyword_vocab_size": 5, "feature_dim": 3, "dim": 4}
    model = build_model(ModelConfig(**options)).eval()
    model.config = LaterConfig(**options)
    assert DenseScorer.of(model) is not None
    model.config = LaterConfig(**options, later_option=True)
    assert DenseScorer.of(model) is None


@pytest.mark.parametrize("kind", ["amc", "cca"])
def test_tiles_scored_by_threads_side_by_side_are_the_tiles_of_one_thread(
    runs: tuple[Path, dict[str, Path]], kind: str
) -> None:
    """`eval --threads N` scores tiles side by side: the same tiles, in the grid's order, to
    the bit, as one thread gives; torch's own thread count is set back afterwards."""
    data, made = runs
    prepared = amc_data.load_prepared(data)
    model = load_model(made[kind], prepared).model.eval()
    queries = np.sort(prepared.queries["query_id"].to_numpy())
    images = np.sort(prepared.images["img_id"].to_numpy())

    def tiles(workers: int) -> list[tuple[slice, slice, np.ndarray]]:
        scorer = PoolScorer(model, prepared, queries, images, tile_bytes=20_000, workers=workers)
        assert len(list(scorer.grid)) > 4  # several tiles to share out
        return list(scorer.tiles())

    alone, side_by_side = tiles(1), tiles(3)
    assert [(r, c) for r, c, _ in alone] == [(r, c) for r, c, _ in side_by_side]
    for (_, _, one), (_, _, many) in zip(alone, side_by_side, strict=True):
        np.testing.assert_array_equal(one, many)
    assert torch.get_num_threads() == 1  # the fixture's setting, set back


def test_in_order_keeps_the_order_bounds_the_jobs_in_flight_and_passes_errors_on() -> None:
    import threading
    import time

    from amc_data.ranking.kernel import in_order

    torch.set_num_threads(2)  # the caller's setting, to be set back
    started: list[int] = []
    lock = threading.Lock()
    threads_inside: set[int] = set()

    def work(job: int) -> int:
        with lock:
            started.append(job)
        threads_inside.add(torch.get_num_threads())
        time.sleep(0.002 * (job % 3))  # later jobs may finish first
        return job * job

    consumed = []
    for value in in_order(work, iter(range(40)), workers=4):
        consumed.append(value)
        # At most two jobs a worker beyond what was consumed have been started.
        assert len(started) <= len(consumed) + 8
    assert consumed == [j * j for j in range(40)]
    assert threads_inside == {1}  # one torch thread in each worker

    def failing(job: int) -> int:
        if job == 5:
            raise ValueError("job 5 is bad")
        return job

    assert torch.get_num_threads() == 2
    with pytest.raises(ValueError, match="job 5 is bad"):
        list(in_order(failing, range(20), workers=2))
    assert torch.get_num_threads() == 2


def test_scorers_side_by_side_at_once_set_torch_threads_back_to_what_it_was() -> None:
    """Two scorers at once (the search page scores each run in its own thread): torch's
    thread count, the process's, is 1 while either scores and back to the caller's after."""
    import threading

    from amc_data.ranking.kernel import in_order

    torch.set_num_threads(2)
    first_started, second_done = threading.Event(), threading.Event()
    seen: list[int] = []

    def slow(job: int) -> int:
        first_started.set()
        second_done.wait(5)
        seen.append(torch.get_num_threads())
        return job

    def quick(job: int) -> int:
        seen.append(torch.get_num_threads())
        return job

    def in_a_new_thread() -> int:
        # torch keeps the count per thread, and a new thread takes the process's setting.
        found: list[int] = []
        reader = threading.Thread(target=lambda: found.append(torch.get_num_threads()))
        reader.start()
        reader.join(5)
        return found[0]

    thread = threading.Thread(target=lambda: list(in_order(slow, range(2), workers=2)))
    thread.start()
    first_started.wait(5)
    assert list(in_order(quick, range(4), workers=2)) == [0, 1, 2, 3]
    assert in_a_new_thread() == 1  # the first scorer is still at work
    second_done.set()
    thread.join(5)
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == 2 and in_a_new_thread() == 2
