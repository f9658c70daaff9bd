"""The attention entropy term (`attention_entropy`): the mean entropy of the keyword attention
on each query's positive images, each weighted by the gate's keyword weight for it, added to the
ranking loss. Off (0), training is the ranking loss alone, bit for bit; on (0.001, the default), the
loss is the ranking loss plus that many times the entropy, training resumes to the
uninterrupted weights, and the keyword attention it asks for is sharper, down to its floor (a
row sharper than `attention_entropy_floor` nats adds nothing)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from support.interrupted import (  # noqa: E402
    resumes_and_differs_from_off,
    run_weights,
    same_weights,
)

import amc_data.ranking.training as training  # noqa: E402
from amc_data import load_prepared, synth  # noqa: E402
from amc_data.errors import ConfigError  # noqa: E402
from amc_data.ranking.checkpoint import load_model  # noqa: E402
from amc_data.ranking.config import TrainConfig, train_config  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.loss import attention_entropy, pool_hinge_loss  # noqa: E402
from amc_data.ranking.model import AttentionModel, ModelConfig  # noqa: E402
from amc_data.ranking.resume import recorded_options  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("entropy") / "data"
    synth(out, seed=5, images=300, queries=100)
    return out


def test_the_entropy_of_rows_where_the_pairs_hold_in_nats() -> None:
    weights = torch.tensor(
        [
            [0.25, 0.25, 0.25, 0.25],  # uniform over 4: log 4
            [1.0, 0.0, 0.0, 0.0],  # one item: 0
            [0.5, 0.5, 0.0, 0.0],  # two items and padding: log 2
            [0.0, 0.0, 0.0, 0.0],  # an image without items: 0
        ]
    )
    both = math.log(4) + math.log(2)
    every = torch.ones(4, dtype=torch.bool)
    assert attention_entropy(weights, every).item() == pytest.approx(both / 4)
    some = torch.tensor([True, False, True, False])
    assert attention_entropy(weights, some).item() == pytest.approx(both / 2)
    assert attention_entropy(weights, torch.zeros(4, dtype=torch.bool)).item() == 0.0
    weighted = torch.tensor([0.5, 0.0, 0.25, 0.0])  # a weighted mean
    expected = (0.5 * math.log(4) + 0.25 * math.log(2)) / 0.75
    assert attention_entropy(weights, weighted).item() == pytest.approx(expected)


def test_with_a_floor_a_row_counts_its_entropy_above_it_and_a_sharper_row_nothing() -> None:
    spread, two = [0.4, 0.3, 0.2, 0.1], [0.5, 0.5, 0.0, 0.0]  # 1.28 nats, log 2
    logits = torch.tensor([spread, two]).log().requires_grad_(True)
    every = torch.ones(2, dtype=torch.bool)
    term = attention_entropy(torch.softmax(logits, -1), every, floor=1.0)
    above = -sum(p * math.log(p) for p in spread) - 1.0
    assert term.item() == pytest.approx(above / 2)
    term.backward()
    assert logits.grad is not None and logits.grad[0].abs().sum() > 0
    assert torch.equal(logits.grad[1], torch.zeros(4))  # below the floor: no pull at all


def test_its_gradient_sharpens_a_softmax_and_passes_nothing_through_padding() -> None:
    logits = torch.tensor([[1.0, 0.5, 0.0, float("-inf")]], requires_grad=True)
    weights = torch.softmax(logits, -1)
    attention_entropy(weights, torch.ones(1, dtype=torch.bool)).backward()
    grad = logits.grad
    assert grad is not None and torch.isfinite(grad).all() and grad[0, 3] == 0
    assert grad[0, 0] < 0 < grad[0, 2]  # descent raises the favoured item, lowers the others


def _model(data: Path) -> tuple[AttentionModel, object, object]:
    prepared = load_prepared(data)
    torch.manual_seed(0)
    model = AttentionModel(
        ModelConfig(
            query_vocab_size=len(prepared.query_vocabulary),
            keyword_vocab_size=len(prepared.vocabulary),
            feature_dim=int(prepared.features.shape[-1]),
            dim=16,
        )
    ).eval()
    queries = prepared.queries["query_id"].to_numpy()[:5]
    images = prepared.images["img_id"].to_numpy()[:12]
    return model, query_batch(prepared, queries), image_batch(prepared, images, 64)


def test_forward_with_weights_gives_the_scores_and_the_attention_explain_gives(data: Path) -> None:
    model, query, images = _model(data)
    with torch.no_grad():
        scores, inside, modality = model(query, images, pool=True, weights=True)
        assert torch.equal(scores, model(query, images, pool=True))
        assert list(inside) == ["region", "keyword"] and modality.shape == (5, 12, 2)
        pairs = images.map(lambda t: t[:5].unsqueeze(1))  # (5, 1, ...): query i, image i
        scores, inside, modality = model(query, pairs, weights=True)
        assert torch.equal(scores, model(query, pairs))
        explained = model.explain(query, pairs)
    assert torch.equal(modality, explained.modality_weights)
    assert torch.equal(inside["keyword"], explained.keyword_weights)
    assert torch.equal(inside["region"], explained.region_weights)


def test_a_pool_too_large_for_one_chunk_gives_the_same_weights_chunk_by_chunk(
    data: Path,
) -> None:
    model, query, images = _model(data)
    with torch.no_grad():
        whole = model(query, images, pool=True, weights=True)
        model.pool_chunk_elements = 1  # one query a chunk
        chunked = model(query, images, pool=True, weights=True)
    torch.testing.assert_close(chunked[0], whole[0])
    assert chunked[1].keys() == whole[1].keys()
    for name in whole[1]:
        torch.testing.assert_close(chunked[1][name], whole[1][name])
    torch.testing.assert_close(chunked[2], whole[2])


def test_a_model_without_attention_has_no_weights_to_give(data: Path) -> None:
    model, query, images = _model(data)
    fusion = AttentionModel(
        ModelConfig(
            kind="fusion",
            query_vocab_size=model.config.query_vocab_size,
            keyword_vocab_size=model.config.keyword_vocab_size,
            feature_dim=model.config.feature_dim,
            dim=16,
        )
    )
    with pytest.raises(ConfigError, match="no attention weights"):
        fusion(query, images, pool=True, weights=True)


def test_on_the_loss_is_the_hinge_plus_the_gate_weighted_entropy_of_the_positives(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float, float]] = []
    real = training._Run._loss

    def spy(self, net, batch):  # the loss, and its parts recomputed from the same weights
        loss = real(self, net, batch)
        with torch.no_grad():
            scores, inside, modality = net(batch.query, batch.images, pool=True, weights=True)
            hinge = pool_hinge_loss(
                scores.float(),
                batch.pool_own,
                batch.pool_positive,
                self.config.margin,
                reduction=self.config.pool_reduction,
            )
            # Each positive weighted by the keyword modality's weight for it.
            rows = batch.pool_positive * modality[..., 1]
            entropy = attention_entropy(inside["keyword"], rows, floor=1.0)
        seen.append((float(loss.detach()), float(hinge), float(entropy)))
        return loss

    monkeypatch.setattr(training._Run, "_loss", spy)
    # Dropout off (and modality dropout), so that the recomputation sees the weights the loss saw.
    monkeypatch.setattr(ModelConfig, "__init__", _no_dropout(ModelConfig.__init__))
    on = {**FAST, "epochs": 1, "attention_entropy": 0.5, "attention_entropy_floor": 1.0}
    on["modality_dropout"] = 0.0
    on["gate_routing"] = 0.0  # the gate routing term apart (its own test adds it)
    on.update(region_target=0.0, region_mean_hinge=0.0, keyword_target=0.0)  # and the targets
    train(data, tmp_path / "on", TrainConfig(**on))
    assert seen and all(e > 0 for _, _, e in seen)
    for loss, hinge, entropy in seen:
        assert loss == pytest.approx(hinge + 0.5 * entropy, rel=1e-5)


def _no_dropout(init):  # type: ignore[no-untyped-def]
    def replaced(self, **kwargs):  # type: ignore[no-untyped-def]
        init(self, **{**kwargs, "dropout": 0.0})

    return replaced


FAST = {"epochs": 3, "batch_size": 32, "dim": 16, "device": "cpu", "attention_entropy": 0.1}


def _legacy_loss(self, net, batch):  # type: ignore[no-untyped-def]
    """`Trainer._loss` as it was before the option existed (the pool loss)."""
    scores = net(batch.query, batch.images, pool=True)
    return pool_hinge_loss(
        scores.float(),
        batch.pool_own,
        batch.pool_positive,
        self.config.margin,
        hardest=self.config.hardest,
        reduction=self.config.pool_reduction,
    )


def test_off_training_is_the_ranking_loss_alone_bit_for_bit(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = {**FAST, "attention_entropy": 0.0, "gate_routing": 0.0}
    off.update(region_target=0.0, region_mean_hinge=0.0, keyword_target=0.0)
    train(data, tmp_path / "off", TrainConfig(**off))
    monkeypatch.setattr(training._Run, "_loss", _legacy_loss)
    train(data, tmp_path / "before", TrainConfig(**off))
    assert same_weights(run_weights(tmp_path / "off"), run_weights(tmp_path / "before"))


def test_a_run_with_the_term_resumes_to_the_uninterrupted_weights_which_differ_from_off(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(**FAST)
    resumes_and_differs_from_off(
        data, tmp_path, config, monkeypatch, "attention_entropy", 3, "attention_entropy"
    )


def _keyword_entropy(data: Path, run: Path) -> float:
    """The mean entropy of a trained model's keyword attention on 200 training pairs."""
    model = load_model(run).model
    prepared = load_prepared(data)
    queries = prepared.split_queries("train")["query_id"]
    judged = prepared.judgments
    pairs = judged[judged["query_id"].isin(queries) & (judged["label"] > 0)].head(200)
    query = query_batch(prepared, pairs["query_id"].to_numpy())
    images = image_batch(prepared, pairs["img_id"].to_numpy(), 64).map(lambda t: t.unsqueeze(1))
    with torch.no_grad():
        _, inside, _ = model(query, images, weights=True)
    every = torch.ones(len(pairs), 1, dtype=torch.bool)
    return float(attention_entropy(inside["keyword"], every))


def test_on_the_keyword_attention_on_the_positives_is_sharper_down_to_the_floor(
    data: Path, tmp_path: Path
) -> None:
    train(data, tmp_path / "off", TrainConfig(**{**FAST, "attention_entropy": 0.0}))
    sharp = {**FAST, "attention_entropy": 1.0, "attention_entropy_floor": 0.0}
    train(data, tmp_path / "on", TrainConfig(**sharp))
    off, on = _keyword_entropy(data, tmp_path / "off"), _keyword_entropy(data, tmp_path / "on")
    assert on < off - 0.1
    # A floor between the two still pulls the rows above it: sharper than off. (Whether it ends
    # less sharp than no floor is not ordered in so short a training: rows below the floor
    # still sharpen with the attention's scale, which every row shares; the per-row rule is
    # asserted on the term itself above.)
    floor = (off + on) / 2
    train(data, tmp_path / "floor", TrainConfig(**{**sharp, "attention_entropy_floor": floor}))
    assert _keyword_entropy(data, tmp_path / "floor") < off - 0.1
    # A floor above every row's entropy (at most log 37 here) leaves nothing to pull: training
    # is the ranking loss alone, bit for bit.
    train(data, tmp_path / "high", TrainConfig(**{**sharp, "attention_entropy_floor": 10.0}))
    assert same_weights(run_weights(tmp_path / "high"), run_weights(tmp_path / "off"))


def test_a_run_recorded_before_the_term_or_its_floor_existed_resumes_as_it_ran(
    tmp_path: Path,
) -> None:
    recorded = TrainConfig(**FAST).to_dict()
    del recorded["attention_entropy_floor"]
    assert recorded_options(recorded, str(tmp_path)).attention_entropy_floor == 0.0
    del recorded["attention_entropy"]
    assert recorded_options(recorded, str(tmp_path)).attention_entropy == 0.0
    # A new run takes the term and its floor; the paper's preset has no term.
    assert (TrainConfig().attention_entropy, TrainConfig().attention_entropy_floor) == (0.003, 1.5)
    assert train_config({}, preset="paper").attention_entropy == 0.0


def test_the_per_pair_loss_takes_the_term_on_each_pair_s_positive(
    data: Path, tmp_path: Path
) -> None:
    pairs = {**FAST, "loss": "pairs", "negatives": 4}
    train(data, tmp_path / "on", TrainConfig(**pairs))
    train(data, tmp_path / "off", TrainConfig(**{**pairs, "attention_entropy": 0.0}))
    assert not same_weights(run_weights(tmp_path / "on"), run_weights(tmp_path / "off"))


def test_the_cli_flags_set_it_and_refuse_a_bad_value(data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "--help"])
    assert "--attention-entropy" in result.output
    out = str(tmp_path / "run")
    args = ["train", str(data), "--out", out]
    result = CliRunner().invoke(cli, [*args, "--attention-entropy", "-1"])
    assert result.exit_code == 2 and "--attention-entropy" in result.output
    result = CliRunner().invoke(cli, [*args, "--no-intra", "--attention-entropy", "0.1"])
    assert result.exit_code == 2 and "intra on" in result.output
    assert "--attention-entropy-floor" in CliRunner().invoke(cli, ["train", "--help"]).output
    result = CliRunner().invoke(
        cli, [*args, "--attention-entropy", "0", "--attention-entropy-floor", "1"]
    )
    assert result.exit_code == 2 and "attention_entropy above 0" in result.output
