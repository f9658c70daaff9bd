"""Pool batches: the shared-pool hinge loss, the pool's positive mask, and features resident on
the training device (the CPU here) giving the same run as the memory-mapped path."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amc_data import load_prepared, synth  # noqa: E402
from amc_data.ranking.checkpoint import read_checkpoint  # noqa: E402
from amc_data.ranking.config import TrainConfig  # noqa: E402
from amc_data.ranking.data import TrainingPairs  # noqa: E402
from amc_data.ranking.loss import pool_hinge_loss  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402


def test_pool_hinge_loss_is_the_mean_over_every_query_and_negative() -> None:
    generator = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 9, generator=generator)
    own = torch.tensor([0, 3, 3, 8, 1])
    positive = torch.zeros(5, 9, dtype=torch.bool)
    positive[torch.arange(5), own] = True
    positive[1, 4] = positive[4, 0] = True  # other positives of the same query: no negatives
    terms = [
        max(0.0, 0.2 - float(scores[b, own[b]]) + float(scores[b, p]))
        for b, p in itertools.product(range(5), range(9))
        if not positive[b, p]
    ]
    assert float(pool_hinge_loss(scores, own, positive, 0.2)) == pytest.approx(np.mean(terms))
    hardest = [
        max(
            max(0.0, 0.2 - float(scores[b, own[b]]) + float(scores[b, p]))
            for p in range(9)
            if not positive[b, p]
        )
        for b in range(5)
    ]
    assert float(pool_hinge_loss(scores, own, positive, 0.2, hardest=True)) == pytest.approx(
        np.mean(hardest)
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool") / "data"
    synth(out, seed=5, images=400, queries=120)
    return out


def test_a_pool_marks_every_positive_of_every_query(data: Path) -> None:
    prepared = load_prepared(data)
    pairs = TrainingPairs(prepared, negatives=0, pool_negatives=40, seed=3)
    indices = np.arange(0, len(pairs), 7)[:32]
    rows, positive = pairs.pool_rows(2, indices)
    assert np.array_equal(rows, np.unique(rows)) and rows.size <= indices.size + 40
    judged = prepared.judgments[prepared.judgments["label"] > 0]
    truth = set(
        zip(
            judged["query_id"],
            prepared.feature_ids[
                judged["img_id"].map(
                    dict(zip(prepared.feature_ids, range(prepared.feature_ids.size), strict=True))
                )
            ],
            strict=True,
        )
    )
    row_ids = prepared.feature_ids[rows]
    for b, index in enumerate(indices):
        query = pairs.query_ids[index]
        expected = [(query, image) in truth for image in row_ids]
        assert positive[b].tolist() == expected
    again, _ = pairs.pool_rows(2, indices)
    other, _ = pairs.pool_rows(3, indices)
    assert np.array_equal(rows, again) and not np.array_equal(rows, other)
    batch = pairs.__getitems__([(2, int(i)) for i in indices])
    own = batch.pool[1]
    assert np.array_equal(rows[own], pairs._pair_positive[indices])


def test_resident_features_give_the_memory_mapped_run(data: Path, tmp_path: Path) -> None:
    options = dict(loss="pool", pool_negatives=32, epochs=2, seed=1, device="cpu", dim=16)
    host = train(data, tmp_path / "host", TrainConfig(features_on="host", **options))
    device = train(data, tmp_path / "device", TrainConfig(features_on="device", **options))
    a = read_checkpoint(host.run_dir / "last.pt")["model"]
    b = read_checkpoint(device.run_dir / "last.pt")["model"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert host.log[-1]["loss"] == device.log[-1]["loss"]


def test_the_pool_loss_trains(data: Path, tmp_path: Path) -> None:
    # The ranking loss alone: the gate routing term's targets are relative to each batch, so
    # the gate never meets all of them and the term levels off rather than falling; the region
    # target's cross-entropy keeps the target's own entropy.
    config = TrainConfig(
        loss="pool",
        epochs=3,
        seed=2,
        device="cpu",
        gate_routing=0.0,
        region_target=0.0,
        region_mean_hinge=0.0,
        keyword_target=0.0,
    )
    result = train(data, tmp_path / "run", config)
    losses = [entry["loss"] for entry in result.log]
    assert losses[-1] < 0.8 * losses[0]


def test_compiled_pool_scoring_is_not_recompiled_for_every_pool_size(data: Path) -> None:
    # A batch's pool holds its positives and sampled images once each, so its size changes
    # from batch to batch; `--compile` (dynamic shapes) must not specialise on it.
    from torch._dynamo.testing import CompileCounter

    from amc_data.ranking.build import build_model
    from amc_data.ranking.data import image_batch, query_batch
    from amc_data.ranking.model import ModelConfig

    prepared = load_prepared(data)
    config = ModelConfig(
        query_vocab_size=len(prepared.query_vocabulary),
        keyword_vocab_size=len(prepared.vocabulary),
        feature_dim=prepared.features.shape[-1],
        dim=16,
    )
    model = build_model(config).eval()
    counter = CompileCounter()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counter, dynamic=True)
    queries = query_batch(prepared, prepared.split_queries("train")["query_id"][:32])
    ids = prepared.split_images("train")
    with torch.no_grad():
        for size in (70, 77, 83, 91, 96):
            images = image_batch(prepared, ids[:size])
            scores = compiled(queries, images, pool=True)
            assert torch.allclose(scores, model.score_pool(queries, images), atol=1e-6)
    assert counter.frame_count <= 2  # the first shape, then one dynamic graph for all others
