"""The gate routing term (`gate_routing`): a divergence pulling the modality gate, for each
training query, toward the modality that alone ranks the query's image better than it does for
the batch's other queries. Off (0) training never asks the model for it; on (0.4, the default),
the loss is the ranking loss plus that many times the term, only the gate learns from it,
training resumes to the uninterrupted weights, and the option is refused where there is no
gate. Its companion `gate_warmup`: training starts from fixed 0.5 / 0.5 modality weights, the
gate's taking over linearly by that share of the run (by step), while the routing term reads the
gate's own weights throughout."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from support.interrupted import resumes_and_differs_from_off, run_weights, same_weights  # noqa: E402

import amc_data.ranking.training as training  # noqa: E402
from amc_data import load_prepared, synth  # noqa: E402
from amc_data.errors import ConfigError  # noqa: E402
from amc_data.ranking.config import TrainConfig, train_config  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.loss import attention_entropy, gate_routing_loss, pool_hinge_loss  # noqa: E402
from amc_data.ranking.model import AttentionModel, GateReading, ModelConfig  # noqa: E402
from amc_data.ranking.resume import recorded_options  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("routing") / "data"
    synth(out, seed=5, images=300, queries=100)
    return out


MARGIN = 0.2


def _pool(visual_better: list[bool]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's own image at its own column of a pool of as many images; the modality that
    ranks the own image first scores it 0.9 and every other 0.1, the other modality scores the
    own image 0.1 and the others 0.5."""
    n = len(visual_better)
    alone = torch.empty(n, n, 2)
    for q, visual in enumerate(visual_better):
        good, bad = (0, 1) if visual else (1, 0)
        alone[q, :, good], alone[q, :, bad] = 0.1, 0.5
        alone[q, q, good], alone[q, q, bad] = 0.9, 0.1
    return alone, torch.arange(n), torch.eye(n, dtype=torch.bool)


def _gate(n: int, visual: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Gate logits (n, 2) that give `visual` to the visual modality, and the weights (n, n, 2)
    over a pool of n images (the gate reads the query alone)."""
    logits = torch.tensor([[math.log(visual), math.log(1 - visual)]] * n, requires_grad=True)
    return logits, torch.softmax(logits, -1).unsqueeze(1).expand(n, n, 2)


def test_each_gate_is_pulled_toward_the_modality_that_alone_ranks_its_image_better() -> None:
    alone, own, positive = _pool([True, True, False, False])
    logits, gate = _gate(4)
    gate_routing_loss(alone, gate, own, positive, MARGIN).backward()
    grad = logits.grad
    assert grad is not None
    # Descent raises the visual logit of the first two queries and lowers that of the others.
    assert (grad[:2, 0] < 0).all() and (grad[2:, 0] > 0).all()
    assert torch.allclose(grad.sum(-1), torch.zeros(4), atol=1e-7)


def test_a_modality_that_ranks_better_for_every_query_alike_draws_none_to_it() -> None:
    # The keywords alone rank every query's image first, the regions none: no query asks more of
    # one modality than the others do, so a balanced gate is left where it is (a pull toward the
    # keywords for all would starve the regions of the queries that need them).
    alone, own, positive = _pool([False] * 4)
    logits, gate = _gate(4)
    gate_routing_loss(alone, gate, own, positive, MARGIN).backward()
    assert logits.grad is not None and torch.equal(logits.grad, torch.zeros(4, 2))
    # Where the keywords do better for every query but by less for some, those are drawn to
    # the regions: only the difference from the batch counts.
    alone[2:, :, 1] = 0.2  # the keywords rank the images of queries 2 and 3 less clearly first
    alone[2, 2, 1] = alone[3, 3, 1] = 0.3
    logits, gate = _gate(4)
    gate_routing_loss(alone, gate, own, positive, MARGIN).backward()
    assert logits.grad is not None
    assert (logits.grad[:2, 0] > 0).all() and (logits.grad[2:, 0] < 0).all()


def test_the_target_is_a_sigmoid_of_the_centred_hinge_difference_over_its_spread() -> None:
    generator = torch.Generator().manual_seed(0)
    queries, pool = 6, 9
    alone = torch.rand(queries, pool, 2, generator=generator) * 2 - 1
    own = torch.randint(0, pool, (queries,), generator=generator)
    positive = torch.zeros(queries, pool, dtype=torch.bool)
    positive[torch.arange(queries), own] = True
    positive[0, (int(own[0]) + 1) % pool] = True  # another positive: not a negative
    visual = torch.rand(queries, generator=generator) * 0.8 + 0.1
    gate = torch.stack([visual, 1 - visual], -1).unsqueeze(1).expand(queries, pool, 2)
    temperature = 0.3
    # Recomputed with plain Python: each modality's mean hinge over the query's negatives.
    differences = []
    for q in range(queries):
        hinges = []
        for m in range(2):
            own_score = float(alone[q, int(own[q]), m])
            terms = [
                max(0.0, MARGIN - own_score + float(alone[q, j, m]))
                for j in range(pool)
                if not positive[q, j]
            ]
            hinges.append(sum(terms) / len(terms))
        differences.append(hinges[1] - hinges[0])
    mean, spread = statistics.mean(differences), statistics.stdev(differences)
    expected = 0.0
    for q, difference in enumerate(differences):
        target = 1 / (1 + math.exp(-(difference - mean) / (temperature * spread)))
        v = float(visual[q])
        expected += target * math.log(target / v) + (1 - target) * math.log((1 - target) / (1 - v))
    got = gate_routing_loss(alone, gate, own, positive, MARGIN, temperature=temperature)
    assert got.item() == pytest.approx(expected / queries, rel=1e-5)


def test_only_the_gate_learns_from_it_and_images_without_both_modalities_are_left_out() -> None:
    alone, own, positive = _pool([True, True, False, False])
    alone.requires_grad_(True)
    _, gate = _gate(4)
    loss = gate_routing_loss(alone, gate, own, positive, MARGIN)
    loss.backward()
    assert alone.grad is None  # the target is held fixed
    # A query whose own image has no keywords (the gate gives them 0) takes no part: changing
    # what its modalities score changes nothing.
    weights = gate.detach().clone()
    weights[3, :, :] = torch.tensor([1.0, 0.0])
    kept = gate_routing_loss(alone.detach(), weights, own, positive, MARGIN)
    other = alone.detach().clone()
    other[3] = torch.rand(4, 2)
    assert gate_routing_loss(other, weights, own, positive, MARGIN).item() == kept.item()
    # Fewer than two queries left: nothing to compare with, a zero loss and no NaN.
    weights[1:, :, :] = torch.tensor([1.0, 0.0])
    nothing = gate_routing_loss(alone.detach(), weights, own, positive, MARGIN)
    assert nothing.item() == 0.0


def _model(data: Path, **options: object) -> tuple[AttentionModel, object, object]:
    prepared = load_prepared(data)
    torch.manual_seed(0)
    model = AttentionModel(
        ModelConfig(
            query_vocab_size=len(prepared.query_vocabulary),
            keyword_vocab_size=len(prepared.vocabulary),
            feature_dim=int(prepared.features.shape[-1]),
            dim=16,
            dropout=0.0,
            **options,  # type: ignore[arg-type]
        )
    )
    queries = prepared.queries["query_id"].to_numpy()[:5]
    images = prepared.images["img_id"].to_numpy()[:12]
    return model, query_batch(prepared, queries), image_batch(prepared, images, 64)


def test_forward_with_gate_gives_the_gate_s_own_weights_and_each_modality_s_score_alone(
    data: Path,
) -> None:
    model, query, images = _model(data)
    with torch.no_grad():
        scores, _, modality, reading = model.eval()(
            query, images, pool=True, weights=True, gate=True
        )
        assert isinstance(reading, GateReading) and reading.alone.shape == (5, 12, 2)
        assert torch.equal(scores, model(query, images, pool=True))
        assert torch.equal(reading.gate, modality)
        # Every query scored with one modality alone (modality dropout at 1, the favoured one
        # kept): the score is that modality's score alone, and the gate's own weights are
        # still the undropped ones.
        model.train()
        model.modality_dropout, model.modality_dropout_keep = 1.0, "favoured"
        dropped, _, kept, trained = model(query, images, pool=True, weights=True, gate=True)
        side = reading.gate.argmax(-1, keepdim=True)
        torch.testing.assert_close(dropped, trained.alone.gather(-1, side).squeeze(-1))
        assert set(kept.unique().tolist()) == {0.0, 1.0}
        torch.testing.assert_close(trained.gate, reading.gate)
        # Chunk by chunk, as a pool too large for one is scored: the same reading.
        model.eval()
        model.pool_chunk_elements = 1
        chunked = model(query, images, pool=True, weights=True, gate=True)[3]
    torch.testing.assert_close(chunked.gate, reading.gate)
    torch.testing.assert_close(chunked.alone, reading.alone)


def test_a_model_without_a_gate_has_no_reading_to_give(data: Path) -> None:
    model, query, images = _model(data, inter=False)
    with pytest.raises(ConfigError, match="no modality gate"):
        model(query, images, pool=True, weights=True, gate=True)


FAST = {"epochs": 3, "batch_size": 32, "dim": 16, "device": "cpu", "gate_routing": 0.5}


def test_on_the_loss_is_the_ranking_loss_and_entropy_plus_the_weighted_term(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, float]] = []
    real = training._Run._loss

    def spy(self, net, batch):  # the loss, and its parts recomputed from the same weights
        loss = real(self, net, batch)
        with torch.no_grad():
            scores, inside, modality, reading = net(
                batch.query, batch.images, pool=True, weights=True, gate=True
            )
            parts = pool_hinge_loss(
                scores.float(),
                batch.pool_own,
                batch.pool_positive,
                self.config.margin,
                reduction=self.config.pool_reduction,
            )
            rows = batch.pool_positive * modality[..., 1]
            parts = parts + 0.003 * attention_entropy(inside["keyword"], rows, floor=1.5)
            term = gate_routing_loss(
                reading.alone, reading.gate, batch.pool_own, batch.pool_positive, 0.2
            )
        seen.append((float(loss.detach()), float(parts + 0.5 * term)))
        return loss

    monkeypatch.setattr(training._Run, "_loss", spy)
    # Dropout off (and modality dropout), so that the recomputation sees the weights the loss saw.
    init = ModelConfig.__init__
    monkeypatch.setattr(
        ModelConfig, "__init__", lambda self, **kw: init(self, **{**kw, "dropout": 0.0})
    )
    apart = {"modality_dropout": 0.0, "region_target": 0.0, "region_mean_hinge": 0.0}
    apart["keyword_target"] = 0.0
    train(data, tmp_path / "on", TrainConfig(**{**FAST, "epochs": 1, **apart}))
    assert seen
    for loss, expected in seen:
        assert loss == pytest.approx(expected, rel=1e-5)


def test_off_training_never_asks_the_model_for_the_gate(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bool] = []
    real = AttentionModel.forward

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(bool(kwargs.get("gate")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AttentionModel, "forward", spy)
    train(data, tmp_path / "off", TrainConfig(**{**FAST, "epochs": 1, "gate_routing": 0.0}))
    assert asked and not any(asked)
    # A new run takes the term; runs recorded before it existed resume without it, and the
    # paper's preset has none.
    assert TrainConfig().gate_routing == 0.4
    recorded = TrainConfig(**FAST).to_dict()
    del recorded["gate_routing"]
    assert recorded_options(recorded, str(tmp_path)).gate_routing == 0.0
    assert train_config({}, preset="paper").gate_routing == 0.0


def test_a_run_with_the_term_resumes_to_the_uninterrupted_weights_which_differ_from_off(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(**FAST)
    resumes_and_differs_from_off(
        data, tmp_path, config, monkeypatch, "gate_routing_loss", 3, "gate_routing"
    )


def test_the_per_pair_loss_takes_the_term_too(data: Path, tmp_path: Path) -> None:
    pairs = {**FAST, "loss": "pairs", "negatives": 4}
    train(data, tmp_path / "on", TrainConfig(**pairs))
    train(data, tmp_path / "off", TrainConfig(**{**pairs, "gate_routing": 0.0}))
    assert not same_weights(run_weights(tmp_path / "on"), run_weights(tmp_path / "off"))


def test_the_cli_flag_sets_it_and_refuses_a_bad_value_or_a_model_without_a_gate(
    data: Path, tmp_path: Path
) -> None:
    assert "--gate-routing" in CliRunner().invoke(cli, ["train", "--help"]).output
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--epochs", "1", "--dim", "16"]
    result = CliRunner().invoke(cli, [*args, "--gate-routing", "-1"])
    assert result.exit_code == 2 and "--gate-routing" in result.output
    result = CliRunner().invoke(cli, [*args, "--no-inter", "--gate-routing", "0.1"])
    assert result.exit_code == 2 and "inter on" in result.output
    result = CliRunner().invoke(cli, [*args, "--gate-routing", "0.3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert '"gate_routing": 0.3' in (out / "config.json").read_text()


def test_the_blend_moves_the_training_weights_toward_fixed_ones_and_the_gate_reads_its_own(
    data: Path,
) -> None:
    model, query, images = _model(data)
    with torch.no_grad():
        scores, _, gate, _ = model.eval()(query, images, pool=True, weights=True, gate=True)
        model.train()
        model.modality_dropout = 0.0
        model.gate_blend = 1.0  # the first step of a warmup: fixed weights
        fixed, _, modality, reading = model(query, images, pool=True, weights=True, gate=True)
        assert torch.all(modality == 0.5)  # every image of the fixture has both modalities
        torch.testing.assert_close(reading.gate, gate)  # what the routing term reads
        assert not torch.allclose(fixed, scores)  # the gate's own weights are not 0.5
        model.gate_blend = 0.25
        _, _, quarter = model(query, images, pool=True, weights=True)
        torch.testing.assert_close(quarter, 0.75 * gate + 0.25 * 0.5)
        model.gate_blend = 1.0
        assert torch.equal(model.eval()(query, images, pool=True), scores)  # evaluation: none


def test_the_trainer_fades_the_blend_by_step_and_a_model_without_a_gate_never_blends(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[float, int, int]] = []
    loss = training._Run._loss

    def spy(self, net, batch):  # type: ignore[no-untyped-def]
        model = training._unwrap(net)
        seen.append((model.gate_blend, self.steps_taken, self.total_steps))
        return loss(self, net, batch)

    monkeypatch.setattr(training._Run, "_loss", spy)
    train(data, tmp_path / "on", TrainConfig(**{**FAST, "gate_warmup": 0.5}))
    assert seen[0][0] == 1.0 and seen[-1][0] == 0.0 and len(seen) > 6
    for blend, step, total in seen:
        assert blend == pytest.approx(max(0.0, 1 - step / (0.5 * total)))
    assert len({blend for blend, *_ in seen}) > 3  # by step, not by epoch
    seen.clear()
    fixed = {name: value for name, value in FAST.items() if name != "gate_routing"}
    train(data, tmp_path / "fixed", TrainConfig(**fixed, inter=False))
    assert seen and all(blend == 0.0 for blend, *_ in seen)


def test_a_run_with_the_warmup_resumes_to_the_uninterrupted_weights_which_differ_from_off(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(**{**FAST, "gate_warmup": 0.7})  # cut inside the warmup
    resumes_and_differs_from_off(
        data, tmp_path, config, monkeypatch, "gate_routing_loss", 3, "gate_warmup"
    )


def test_the_warmup_is_new_on_a_new_run_only_and_refused_without_a_gate(
    data: Path, tmp_path: Path
) -> None:
    assert TrainConfig().gate_warmup == 0.5
    recorded = TrainConfig(**FAST).to_dict()
    del recorded["gate_warmup"]  # recorded before it existed: the gate's from the first step
    assert recorded_options(recorded, str(tmp_path)).gate_warmup == 0.0
    assert train_config({}, preset="paper").gate_warmup == 0.0
    assert "--gate-warmup" in CliRunner().invoke(cli, ["train", "--help"]).output
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--epochs", "1", "--dim", "16"]
    for bad in ("-0.1", "1.5"):
        result = CliRunner().invoke(cli, [*args, "--gate-warmup", bad])
        assert result.exit_code == 2 and "--gate-warmup" in result.output
    result = CliRunner().invoke(cli, [*args, "--no-inter", "--gate-warmup", "0.3"])
    assert result.exit_code == 2 and "inter on" in result.output
    assert not out.exists()
    result = CliRunner().invoke(cli, [*args, "--gate-warmup", "0.3", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert '"gate_warmup": 0.3' in (out / "config.json").read_text()
