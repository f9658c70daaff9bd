"""The torch data layer over a prepared folder: batch shapes and masks, images without keywords,
negatives that are never positives and are reproducible per (seed, epoch) whatever the workers,
distributed shares that cover every pair, and features that stay memory-mapped."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import scipy.sparse

torch = pytest.importorskip("torch")

from support.prepare_helpers import small_parts  # noqa: E402

from amc_data.errors import ConfigError, InputError  # noqa: E402
from amc_data.prepare import load_prepared, write_prepared  # noqa: E402
from amc_data.prepare.synth import SynthConfig, synth  # noqa: E402
from amc_data.ranking.batch import ImageBatch, QueryBatch, TrainBatch  # noqa: E402
from amc_data.ranking.data import (  # noqa: E402
    EpochSampler,
    TrainingPairs,
    collate_train,
    image_batch,
    query_batch,
    train_loader,
)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory):
    """A small synth folder with a tenth of its images without keywords."""
    config = SynthConfig(images=480, queries=120, no_keywords=0.1, seed=5)
    return load_prepared(synth(tmp_path_factory.mktemp("data") / "synth", config=config).out)


def _positives(prepared, split="train") -> dict[int, set[int]]:
    judged = prepared.judgments.merge(prepared.split_queries(split), on="query_id")
    judged = judged[judged["label"] > 0]
    return {q: set(g["img_id"]) for q, g in judged.groupby("query_id")}


def _epoch(loader, epoch: int) -> list[TrainBatch]:
    loader.sampler.set_epoch(epoch)
    return list(loader)


def _same(a: TrainBatch, b: TrainBatch) -> bool:
    pairs = [(a.query.tokens, b.query.tokens), (a.images.regions, b.images.regions)]
    pairs.append((a.images.keywords, b.images.keywords))
    return all(x.shape == y.shape and torch.equal(x, y) for x, y in pairs)


# -- items and batches -------------------------------------------------------------------------
def test_a_batch_has_the_documented_shapes_types_and_masks(prepared):
    loader = train_loader(prepared, split="train", batch_size=16, negatives=3, seed=0, workers=0)
    batch = next(iter(loader))
    assert isinstance(batch, TrainBatch)
    tokens, mask = batch.query.tokens, batch.query.mask
    assert tokens.dtype == torch.int64 and mask.dtype == torch.bool and tokens.shape[0] == 16
    assert torch.equal(mask, tokens > 0) and mask.any(1).all()
    assert tokens.max() <= len(prepared.query_vocabulary)
    images = batch.images
    assert images.shape == (16, 4)
    assert images.regions.shape == (16, 4, 8, 32) and images.regions.dtype == torch.float32
    assert images.region_mask.shape == (16, 4, 8) and images.region_mask.all()
    k = images.keywords.shape[-1]
    assert images.keywords.shape == images.keyword_counts.shape == images.keyword_mask.shape
    assert images.keywords.shape == (16, 4, k) and 1 <= k <= 64
    assert torch.equal(images.keyword_mask, images.keywords > 0)
    assert (images.keyword_counts[images.keyword_mask] >= 1).all()
    assert (images.keyword_counts[~images.keyword_mask] == 0).all()
    assert images.keywords.max() <= len(prepared.vocabulary)


def test_an_item_holds_its_query_its_positive_first_and_the_right_rows(prepared):
    pairs = TrainingPairs(prepared, negatives=2, seed=1)
    train = prepared.judgments.merge(prepared.split_queries("train"), on="query_id")
    train = train[train["label"] > 0].sort_values(["query_id", "img_id"])
    assert len(pairs) == len(train)
    features, keywords = np.asarray(prepared.features, np.float32), prepared.keywords
    for index in (0, 17, len(pairs) - 1):
        query_id, img_id = train.iloc[index][["query_id", "img_id"]]
        item = pairs[index]
        assert np.array_equal(item.tokens, prepared.query_token_ids([query_id])[0] + 1)
        rows = np.concatenate([prepared.rows([img_id]), pairs.negatives_for(index)])
        assert np.array_equal(item.regions, features[rows])
        for m, row in enumerate(rows):
            present = item.keywords[m] > 0
            expected = dict(zip(keywords[row].indices + 1, keywords[row].data, strict=True))
            assert dict(zip(item.keywords[m][present], item.counts[m][present], strict=True)) == (
                expected
            )


def test_collating_single_items_equals_the_batched_gather(prepared):
    pairs = TrainingPairs(prepared, negatives=3, seed=2)
    indices = [5, 0, 33, 12, 7]
    batched = collate_train(pairs.__getitems__(indices))
    single = collate_train([pairs[i] for i in indices])
    for name in ("regions", "region_mask", "keywords", "keyword_counts", "keyword_mask"):
        assert torch.equal(getattr(batched.images, name), getattr(single.images, name)), name
    assert torch.equal(batched.query.tokens, single.query.tokens)


def test_images_without_keywords_give_an_all_false_mask(prepared):
    empty = prepared.feature_ids[np.diff(prepared.keywords.indptr) == 0]
    assert empty.size > 0
    batch = image_batch(prepared, empty[:3])
    assert batch.shape == (3,)
    assert batch.keywords.shape == (3, 1)  # at least one column, all padding
    assert not batch.keyword_mask.any() and (batch.keyword_counts == 0).all()
    mixed = image_batch(prepared, [empty[0], prepared.feature_ids[0]])
    assert not mixed.keyword_mask[0].any() and mixed.keyword_mask[1].any()


def test_keywords_are_truncated_to_the_most_frequent_deterministically(tmp_path):
    parts = small_parts(tmp_path, n_images=12)
    counts = np.array([[1, 3, 2, 3, 0]] + [[1, 1, 1, 1, 1]] * 11, dtype=np.int32)
    parts["keywords_csr"] = scipy.sparse.csr_matrix(counts)
    data = load_prepared(write_prepared(tmp_path / "p", **parts))
    first = data.feature_ids[0]
    batch = image_batch(data, [first], max_keywords=2)
    # counts 3 and 3 (ids 1 and 3) beat 2 and 1; the tie goes to the lower id first
    assert batch.keywords.tolist() == [[2, 4]]
    assert batch.keyword_counts.tolist() == [[3.0, 3.0]]
    wide = image_batch(data, [first], max_keywords=64)
    assert sorted(wide.keywords[0].tolist()) == [1, 2, 3, 4]


def test_image_batch_reads_float32_regions_and_refuses_unknown_ids(prepared):
    ids = prepared.split_images("test")[::-1][:10]
    batch = image_batch(prepared, ids)
    assert isinstance(batch, ImageBatch)
    rows = prepared.rows(ids)
    assert batch.regions.dtype == torch.float32
    assert np.array_equal(batch.regions.numpy(), np.asarray(prepared.features[rows], np.float32))
    with pytest.raises(InputError, match="have no features"):
        image_batch(prepared, [-5])


def test_query_batch_pads_and_masks_and_an_unknown_query_is_empty(tmp_path, prepared):
    ids = prepared.split_queries("val")["query_id"].to_numpy()[:6]
    batch = query_batch(prepared, ids)
    assert isinstance(batch, QueryBatch)
    expected = prepared.query_token_ids(ids)
    width = max(len(t) for t in expected)
    assert batch.tokens.shape == (6, width)
    for row, tokens in zip(batch.tokens.tolist(), expected, strict=True):
        assert row == [*(tokens + 1).tolist(), *[0] * (width - len(tokens))]
    assert torch.equal(batch.mask, batch.tokens > 0)
    assert query_batch(prepared, ids, max_query_tokens=1).tokens.shape == (6, 1)

    parts = small_parts(tmp_path)
    parts["queries"].loc[parts["queries"]["split"] == "test", "query"] = "zebra xylophone"
    data = load_prepared(write_prepared(tmp_path / "p", **parts))
    unknown = data.split_queries("test")["query_id"].to_numpy()[:2]
    batch = query_batch(data, unknown)
    assert batch.tokens.shape == (2, 1) and not batch.mask.any()


# -- negatives ---------------------------------------------------------------------------------
def test_negatives_come_from_the_split_and_are_never_the_querys_positives(prepared):
    pairs = TrainingPairs(prepared, negatives=6, seed=3)
    positives = _positives(prepared)
    pool = set(prepared.split_images("train").tolist())
    train = prepared.judgments.merge(prepared.split_queries("train"), on="query_id")
    train = train[train["label"] > 0].sort_values(["query_id", "img_id"])
    assert np.array_equal(pairs.query_ids, train["query_id"])
    assert np.array_equal(pairs.img_ids, train["img_id"])
    for epoch in (0, 1):
        for index, query_id in enumerate(pairs.query_ids.tolist()):
            drawn = set(prepared.feature_ids[pairs.negatives_for((epoch, index))].tolist())
            assert drawn <= pool
            assert not drawn & positives[query_id]
            assert len(drawn) == 6  # without repeats while the pool allows


def test_a_pool_smaller_than_the_negatives_draws_with_repeats(tmp_path):
    parts = small_parts(tmp_path, n_images=12)  # 6 train images, each its query's positive
    data = load_prepared(write_prepared(tmp_path / "p", **parts))
    pairs = TrainingPairs(data, negatives=8, seed=0)
    rows = pairs.negatives_for(0)
    assert rows.size == 8 and len(set(rows.tolist())) <= 5


def test_negatives_are_reproducible_per_seed_and_epoch_and_change_across_epochs(prepared):
    a = TrainingPairs(prepared, negatives=4, seed=7)
    b = TrainingPairs(prepared, negatives=4, seed=7)
    c = TrainingPairs(prepared, negatives=4, seed=8)
    everything = range(len(a))
    first = np.stack([a.negatives_for((0, i)) for i in everything])
    assert np.array_equal(first, np.stack([b.negatives_for((0, i)) for i in everything]))
    b.set_epoch(0)
    assert np.array_equal(b[3].regions, a[(0, 3)].regions)
    second = np.stack([a.negatives_for((1, i)) for i in everything])
    assert (first != second).any(axis=1).mean() > 0.9
    other_seed = np.stack([c.negatives_for((0, i)) for i in everything])
    assert (first != other_seed).any(axis=1).mean() > 0.9


def test_a_loader_gives_the_same_epoch_whatever_the_workers_and_persistent_workers_follow(
    prepared,
):
    """The epoch travels with each index, so persistent workers draw the epoch's negatives."""
    kwargs = {"split": "train", "batch_size": 32, "negatives": 2, "seed": 4}
    inline = train_loader(prepared, workers=0, **kwargs)
    workers = train_loader(prepared, workers=2, **kwargs)
    epochs_inline = [_epoch(inline, e) for e in (0, 1)]
    epochs_workers = [_epoch(workers, e) for e in (0, 1)]
    for one, other in zip(epochs_inline, epochs_workers, strict=True):
        assert len(one) == len(other)
        assert all(_same(x, y) for x, y in zip(one, other, strict=True))
    assert not _same(epochs_inline[0][0], epochs_inline[1][0])  # reshuffled, new negatives
    again = _epoch(inline, 0)
    assert all(_same(x, y) for x, y in zip(again, epochs_inline[0], strict=True))


def test_two_ranks_split_every_pair_between_them(prepared):
    pairs = TrainingPairs(prepared, negatives=1)
    shares = []
    for rank in (0, 1):
        sampler = EpochSampler(pairs, rank=rank, world_size=2, seed=0)
        sampler.set_epoch(3)
        shares.append([index for epoch, index in sampler if epoch == 3])
    assert len(shares[0]) == len(shares[1]) == -(-len(pairs) // 2)
    assert set(shares[0]) | set(shares[1]) == set(range(len(pairs)))
    loader = train_loader(
        prepared,
        split="train",
        batch_size=50,
        negatives=1,
        seed=0,
        workers=0,
        rank=1,
        world_size=2,
    )
    assert sum(len(b.query) for b in _epoch(loader, 0)) == len(shares[1])


def test_other_splits_train_on_their_positive_labels(prepared):
    pairs = TrainingPairs(prepared, split="val", negatives=2)
    assert len(pairs) == sum(map(len, _positives(prepared, "val").values()))
    pool = set(prepared.split_images("val").tolist())
    assert set(prepared.feature_ids[pairs.negatives_for(0)].tolist()) <= pool


# -- memory mapping and processes --------------------------------------------------------------
def test_features_stay_memory_mapped_and_are_reopened_in_each_process(prepared):
    pairs = TrainingPairs(prepared, negatives=1)
    pairs[0]
    assert isinstance(pairs.features.base, np.memmap) or isinstance(pairs.features, np.memmap)
    state = pickle.loads(pickle.dumps(pairs))
    assert state._features is None  # a worker opens the file itself
    assert np.array_equal(state[0].regions, pairs[0].regions)
    assert len(pickle.dumps(pairs)) < prepared.features.nbytes  # the features never travel


# -- bad settings ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"negatives": -1}, ConfigError, "negatives must be a whole number >= 0"),
        ({"max_keywords": 0}, ConfigError, "max_keywords must be a whole number >= 1"),
        ({"split": "dev"}, ConfigError, "no split 'dev'"),
    ],
)
def test_bad_settings(prepared, kwargs, error, message):
    with pytest.raises(error, match=message):
        TrainingPairs(prepared, **kwargs)


def test_bad_loader_settings(prepared):
    with pytest.raises(ConfigError, match=r"rank must be a whole number from 0 to 1, not 2\."):
        train_loader(prepared, rank=2, world_size=2)
    with pytest.raises(ConfigError, match="batch_size must be"):
        train_loader(prepared, batch_size=0)


def test_a_split_without_positives_is_an_input_error(tmp_path):
    parts = small_parts(tmp_path)
    parts["judgments"]["label"] = 0
    data = load_prepared(write_prepared(tmp_path / "p", **parts))
    with pytest.raises(InputError, match="no train query has a judgment with label > 0"):
        TrainingPairs(data)


def test_a_hand_built_loader_with_persistent_workers_follows_the_datasets_epoch(prepared):
    """The pattern of a loop that builds its own DataLoader: a DistributedSampler and
    `dataset.set_epoch` reach persistent workers, which draw each epoch's negatives."""
    from torch.utils.data import DataLoader, DistributedSampler

    def build(workers: int) -> DataLoader:
        pairs = TrainingPairs(prepared, negatives=2, seed=6)
        sampler = DistributedSampler(pairs, num_replicas=1, rank=0, shuffle=True, seed=6)
        return DataLoader(
            pairs,
            batch_size=40,
            sampler=sampler,
            collate_fn=collate_train,
            num_workers=workers,
            persistent_workers=workers > 0,
        )

    def run(loader: DataLoader, epoch: int) -> list[TrainBatch]:
        loader.sampler.set_epoch(epoch)
        loader.dataset.set_epoch(epoch)
        return list(loader)

    inline, workers = build(0), build(2)
    for epoch in (0, 1, 2):
        expected, found = run(inline, epoch), run(workers, epoch)
        assert all(_same(x, y) for x, y in zip(expected, found, strict=True))


def test_negatives_are_uniform_over_the_pool_less_the_positives(prepared):
    pairs = TrainingPairs(prepared, negatives=6, seed=9)
    drawn = np.concatenate([pairs.negatives_for((epoch, 10)) for epoch in range(1000)])
    counts = np.bincount(drawn, minlength=prepared.features.shape[0])
    free = set(prepared.rows(prepared.split_images("train")).tolist())
    free -= set(prepared.rows(np.array(sorted(_positives(prepared)[pairs.query_ids[10]]))).tolist())
    assert set(np.flatnonzero(counts).tolist()) == free
    observed = counts[sorted(free)]
    expected = drawn.size / len(free)
    chi2_per_dof = ((observed - expected) ** 2 / expected).sum() / (len(free) - 1)
    assert 0.8 < chi2_per_dof < 1.25


def test_no_negatives_gives_the_positive_alone(prepared):
    loader = train_loader(prepared, split="train", batch_size=8, negatives=0, seed=0, workers=0)
    batch = next(iter(loader))
    assert batch.images.shape == (8, 1)


def test_features_of_one_vector_per_image_are_one_region(tmp_path):
    parts = small_parts(tmp_path)
    parts["features"] = parts["features"][:, 0, :]  # (N, D)
    data = load_prepared(write_prepared(tmp_path / "p", **parts))
    batch = next(iter(train_loader(data, batch_size=4, negatives=2, workers=0)))
    assert batch.images.regions.shape == (4, 3, 1, 4)
    assert image_batch(data, data.feature_ids[:2]).regions.shape == (2, 1, 4)
