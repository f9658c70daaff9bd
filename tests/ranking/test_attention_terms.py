"""The training terms on the attention's items: `region_mean_hinge` (the ranking loss of the
regions' mean value alone), `region_target` and `keyword_target` (the region / keyword attention
drawn toward the items whose values match the query). On by default, the loss is the ranking
loss plus their weighted sum; off (0) training never asks the model for the values; a run with
them resumes to the uninterrupted weights; they are refused where there is no attention over
their modality."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from support.interrupted import resumes_and_differs_from_off, run_weights, same_weights  # noqa: E402

import amc_data.ranking.training as training  # noqa: E402
from amc_data import load_prepared, synth  # noqa: E402
from amc_data.errors import ConfigError  # noqa: E402
from amc_data.ranking.config import TrainConfig, train_config  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.loss import (  # noqa: E402
    attention_entropy,
    attention_target_loss,
    gate_routing_loss,
    pool_hinge_loss,
)
from amc_data.ranking.model import AttentionModel, ModelConfig, ValueReading  # noqa: E402
from amc_data.ranking.resume import recorded_options  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("attention-terms") / "data"
    synth(out, seed=6, images=300, queries=100)
    return out


def test_a_region_the_attention_has_left_is_still_drawn_back_by_its_target() -> None:
    # Three regions; the attention has all but left the first (weight 1e-4), whose value alone
    # matches the query. The ranking loss moves a logit in proportion to its weight (~1e-4
    # here); the target term moves it by its weight less its target, so by almost the whole
    # target.
    logits = torch.tensor([[-9.0, 0.0, 0.0]], requires_grad=True)
    attention = torch.softmax(logits, -1)
    match = torch.tensor([[0.9, 0.1, 0.1]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    attention_target_loss(attention, match, mask, torch.ones(1), temperature=0.05).backward()
    target = torch.softmax(match / 0.05, -1)
    assert logits.grad is not None
    torch.testing.assert_close(logits.grad, attention.detach() - target)
    assert logits.grad[0, 0] < -0.99  # descent raises the left region's logit


def test_padding_images_without_regions_and_unpicked_rows_add_nothing() -> None:
    attention = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0], [0.2, 0.8, 0.0]])
    match = torch.tensor([[0.3, 0.1, 0.99], [0.5, 0.5, 0.5], [0.1, 0.3, 0.99]])
    mask = torch.tensor([[True, True, False], [False, False, False], [True, True, False]])
    rows = torch.tensor([1.0, 1.0, 0.0])
    got = attention_target_loss(attention, match, mask, rows, temperature=0.1)
    # Only the first row counts, its padded third region (however well it "matches") aside;
    # the second has no regions (all 0: no target, no NaN), the third is not picked.
    target = torch.softmax(torch.tensor([0.3, 0.1]) / 0.1, -1)
    expected = -(target * torch.tensor([0.5, 0.5]).log()).sum() / 2  # the mean over rows 1, 2
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isfinite(got)
    # Weighted rows: a weighted mean.
    weighted = attention_target_loss(attention, match, mask, torch.tensor([0.5, 0.0, 0.0]), 0.1)
    assert weighted.item() == pytest.approx(2 * got.item(), rel=1e-6)
    assert attention_target_loss(attention, match, mask, torch.zeros(3), 0.1).item() == 0.0


def test_the_target_is_held_fixed() -> None:
    match = torch.tensor([[0.2, 0.4]], requires_grad=True)
    attention = torch.tensor([[0.5, 0.5]], requires_grad=True)
    loss = attention_target_loss(
        attention, match, torch.ones(1, 2, dtype=torch.bool), torch.ones(1), 0.1
    )
    loss.backward()
    assert match.grad is None and attention.grad is not None


def test_a_query_weighted_0_asks_nothing_of_the_hinge_and_the_counts_stay() -> None:
    # The regions' mean value's hinge counts each query as much as the gate reads the regions
    # for it: a query sent wholly to the keywords (0) adds nothing, and the cells and queries
    # that divide the sum are counted as without weights.
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]], requires_grad=True)
    own, positive = torch.tensor([0, 0]), torch.tensor([[True, False, False], [True, False, False]])
    for reduction in ("all", "violating", "per-query", "mixed"):
        plain = pool_hinge_loss(scores, own, positive, 0.2, reduction=reduction)
        half = torch.tensor([0.5, 0.5])
        weighted = pool_hinge_loss(
            scores, own, positive, 0.2, reduction=reduction, query_weights=half
        )
        assert weighted.item() == pytest.approx(0.5 * plain.item()), reduction
        first_only = pool_hinge_loss(
            scores, own, positive, 0.2, reduction=reduction, query_weights=torch.tensor([1.0, 0])
        )
        (grad,) = torch.autograd.grad(first_only, scores)
        assert torch.equal(grad[1], torch.zeros(3)), reduction  # the second query: nothing
        assert grad[0].abs().sum() > 0, reduction


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
    return model.eval(), query_batch(prepared, queries), image_batch(prepared, images, 64)


def test_the_reading_is_each_item_s_and_the_mean_value_s_cosine_with_the_query(
    data: Path,
) -> None:
    model, query, images = _model(data)
    with torch.no_grad():
        scores, _, _, reading = model(query, images, pool=True, weights=True, regions=True)
        regions = images.regions.shape[1]
        assert isinstance(reading, ValueReading) and reading.match.shape == (5, 12, regions)
        assert torch.equal(scores, model(query, images, pool=True))
        # Recomputed from the model's own layers.
        shared = F.normalize(model._encode_query(query).shared, dim=-1)  # (5, d)
        value = model.region_value(model.region_norm(images.regions))  # (12, R, d)
        mask = images.region_mask  # (12, R)
        match = torch.einsum("qd,nrd->qnr", shared, F.normalize(value, dim=-1)) * mask
        counts = mask.sum(-1, keepdim=True).clamp_min(1)
        mean = F.normalize((value * mask[..., None]).sum(1) / counts, dim=-1)
        torch.testing.assert_close(reading.match, match)
        torch.testing.assert_close(reading.mean, shared @ mean.T)
        assert torch.equal(reading.mask[0], mask)
        # The keywords' reading: their embeddings (the attention's values) against the query.
        *_, words = model(query, images, pool=True, weights=True, keywords=True)
        embedded = F.normalize(model.keywords(images.keywords), dim=-1)  # (12, K, d)
        present = images.keyword_mask
        torch.testing.assert_close(
            words.match, torch.einsum("qd,nkd->qnk", shared, embedded) * present
        )
        assert torch.equal(words.mask[0], present)
        # With the gate's reading too, the gate's, the regions', then the keywords'; chunk by
        # chunk, as a pool too large for one is scored, the same readings.
        every = model(
            query, images, pool=True, weights=True, gate=True, regions=True, keywords=True
        )
        torch.testing.assert_close(every[-2].match, reading.match)
        torch.testing.assert_close(every[-1].match, words.match)
        model.pool_chunk_elements = 1
        chunked = model(query, images, pool=True, weights=True, regions=True, keywords=True)
        torch.testing.assert_close(chunked[-2].match, reading.match)
        torch.testing.assert_close(chunked[-2].mean, reading.mean)
        torch.testing.assert_close(chunked[-1].match, words.match)
        # Each query's own candidates (pairs): the same cosines.
        paired = images.map(lambda t: t.unsqueeze(0).expand(5, *t.shape))
        pairs = model(query, paired, weights=True, regions=True, keywords=True)
        torch.testing.assert_close(pairs[-2].match, reading.match)
        torch.testing.assert_close(pairs[-2].mean, reading.mean)
        torch.testing.assert_close(pairs[-1].match, words.match)


def test_a_model_without_attention_over_a_modality_has_no_reading_of_it_to_give(
    data: Path,
) -> None:
    model, query, images = _model(data, intra=False)
    with pytest.raises(ConfigError, match="no attention over regions"):
        model(query, images, pool=True, weights=True, regions=True)
    with pytest.raises(ConfigError, match="no attention over keywords"):
        model(query, images, pool=True, weights=True, keywords=True)


FAST = {"epochs": 3, "batch_size": 32, "dim": 16, "device": "cpu"}


@pytest.mark.parametrize("inter", [True, False], ids=["gate", "fixed-weights"])
def test_on_the_loss_is_the_ranking_loss_and_its_terms_plus_the_weighted_terms(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inter: bool
) -> None:
    seen: list[tuple[float, float]] = []
    real = training._Run._loss

    def spy(self, net, batch):  # the loss, and its parts recomputed from the same weights
        loss = real(self, net, batch)
        with torch.no_grad():
            scored = net(
                batch.query,
                batch.images,
                pool=True,
                weights=True,
                gate=inter,
                regions=True,
                keywords=True,
            )
            scores, inside, modality, regions, words = *scored[:3], *scored[-2:]
            own, positive = batch.pool_own, batch.pool_positive

            def hinge(values, weights=None):
                return pool_hinge_loss(
                    values.float(), own, positive, 0.2, reduction="mixed", query_weights=weights
                )

            parts = hinge(scores) + 0.003 * attention_entropy(
                inside["keyword"], positive * modality[..., 1], floor=1.5
            )
            if inter:
                gate = scored[3]
                parts = parts + 0.4 * gate_routing_loss(gate.alone, gate.gate, own, positive, 0.2)
            # The visual weight on each query's own image (fixed: 0.5, or 1 for an image without
            # keywords), every query counted fully at the first step and the weight taking over
            # by a quarter of the run.
            left = max(0.0, 1 - self.steps_taken / (0.25 * self.total_steps))
            visual = modality[..., 0] + (1 - modality[..., 0]) * left
            read = visual[torch.arange(len(own)), own]
            mean_term = hinge(regions.mean, read)
            target_term = attention_target_loss(
                inside["region"], regions.match, regions.mask, positive * visual, 0.05
            )
            # The keyword target: each positive counted by the keyword weight, at its own
            # temperature.
            keyword_term = attention_target_loss(
                inside["keyword"], words.match, words.mask, positive * modality[..., 1], 0.2
            )
            # The mean value's hinge falls linearly over the run from 0.7 to 0.6 of it.
            mean_weight = 0.7 * (1 - 0.4 * self.steps_taken / self.total_steps)
            terms = mean_weight * mean_term + 0.2 * target_term + 0.3 * keyword_term
        seen.append((float(loss.detach()), float(parts + terms)))
        return loss

    monkeypatch.setattr(training._Run, "_loss", spy)
    # Dropout off (and modality dropout), so that the recomputation sees the weights the loss saw.
    init = ModelConfig.__init__
    monkeypatch.setattr(
        ModelConfig, "__init__", lambda self, **kw: init(self, **{**kw, "dropout": 0.0})
    )
    config = {**FAST, "epochs": 1, "modality_dropout": 0.0, "inter": inter}
    terms = {"region_target": 0.2, "region_mean_hinge": 0.7, "keyword_target": 0.3}
    train(data, tmp_path / "on", TrainConfig(**config, **terms, keyword_target_temperature=0.2))
    assert len(seen) > 4 and seen[0][0] != seen[-1][0]
    for loss, expected in seen:
        assert loss == pytest.approx(expected, rel=1e-5)


TERMS = ("region_target", "region_mean_hinge", "keyword_target")


def test_off_training_never_asks_the_model_for_the_values(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bool] = []
    real = AttentionModel.forward

    def spy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        asked.append(bool(kwargs.get("regions") or kwargs.get("keywords")))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(AttentionModel, "forward", spy)
    off = {**FAST, "epochs": 1, **dict.fromkeys(TERMS, 0.0)}
    train(data, tmp_path / "off", TrainConfig(**off))
    assert asked and not any(asked)
    # A new run takes every term; runs recorded before they existed resume without them, and
    # the paper's preset has none.
    new = TrainConfig()
    assert (new.region_target, new.region_mean_hinge, new.keyword_target) == (0.1, 0.5, 0.05)
    recorded = TrainConfig(**FAST).to_dict()
    for name in TERMS:
        del recorded[name]
    resumed = recorded_options(recorded, str(tmp_path))
    paper = train_config({}, preset="paper")
    for name in TERMS:
        assert getattr(resumed, name) == 0.0 and getattr(paper, name) == 0.0, name
    # Recorded before the warmup existed, the region terms counted by the gate from the start.
    del recorded["region_terms_warmup"]
    resumed = recorded_options({**recorded, "region_target": 0.1}, str(tmp_path))
    assert resumed.region_terms_warmup == 0.0 and new.region_terms_warmup == 0.25
    # Recorded before the hinge faded, it kept its weight throughout.
    del recorded["region_mean_hinge_end"]
    resumed = recorded_options({**recorded, "region_mean_hinge": 0.5}, str(tmp_path))
    assert resumed.region_mean_hinge_end == 1.0 and new.region_mean_hinge_end == 0.6


# (every case fades the mean value's hinge, the default: its weight at each step is checked by
# the loss's recomputation above)
@pytest.mark.parametrize("option", [*TERMS, "region_terms_warmup"])
def test_a_run_with_the_term_resumes_to_the_uninterrupted_weights_which_differ_from_off(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: str
) -> None:
    config = TrainConfig(**FAST)  # every term on (the default), cut inside a step's loss
    resumes_and_differs_from_off(data, tmp_path, config, monkeypatch, "pool_hinge_loss", 3, option)


def test_the_per_pair_loss_takes_the_terms_too(data: Path, tmp_path: Path) -> None:
    pairs = {**FAST, "loss": "pairs", "negatives": 4}
    train(data, tmp_path / "on", TrainConfig(**pairs))
    off = {**pairs, **dict.fromkeys(TERMS, 0.0)}
    train(data, tmp_path / "off", TrainConfig(**off))
    assert not same_weights(run_weights(tmp_path / "on"), run_weights(tmp_path / "off"))


def test_the_cli_flags_set_them_and_refuse_a_bad_value_or_a_model_without_the_attention(
    data: Path, tmp_path: Path
) -> None:
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    for flag in ("--region-target", "--region-target-temperature", "--region-mean-hinge"):
        assert flag in help_text
    assert "--keyword-target" in help_text and "--keyword-target-temperature" in help_text
    out = tmp_path / "run"
    args = ["train", str(data), "--out", str(out), "--epochs", "1", "--dim", "16"]
    result = CliRunner().invoke(cli, [*args, "--region-target-temperature", "0"])
    assert result.exit_code == 2 and "--region-target-temperature" in result.output
    result = CliRunner().invoke(cli, [*args, "--no-intra", "--region-target", "0.2"])
    assert result.exit_code == 2 and "intra on" in result.output
    result = CliRunner().invoke(cli, [*args, "--model", "keyword", "--region-mean-hinge", "1"])
    assert result.exit_code == 2 and "over regions" in result.output
    result = CliRunner().invoke(cli, [*args, "--model", "visual", "--keyword-target", "0.2"])
    assert result.exit_code == 2 and "over keywords" in result.output
    result = CliRunner().invoke(cli, [*args, "--keyword-target-temperature", "-1"])
    assert result.exit_code == 2 and "--keyword-target-temperature" in result.output
    assert not out.exists()  # refused before anything is written
    flags = ["--region-target", "0.2", "--region-mean-hinge", "0.5", "--keyword-target", "0.05"]
    result = CliRunner().invoke(cli, [*args, *flags, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    recorded = (out / "config.json").read_text()
    assert '"region_target": 0.2' in recorded and '"region_mean_hinge": 0.5' in recorded
    assert '"keyword_target": 0.05' in recorded
