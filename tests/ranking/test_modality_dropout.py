"""Modality dropout (`modality_dropout`): in training, that share of the queries (drawn per step)
is scored with one modality alone, for each image one drawn by the gate's weights (or, as runs
recorded before `modality_dropout_keep` did, the one they favour), where the image has it.
Evaluation never drops; 0 is training as before, bit for bit; a run with it resumes to the
uninterrupted weights; runs recorded before it, or before the drawn modality, resume as they
ran."""

from __future__ import annotations

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

import amc_data.ranking.model as model_module  # noqa: E402
from amc_data import load_prepared, synth  # noqa: E402
from amc_data.ranking.config import TrainConfig, train_config  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.model import AttentionModel, ModelConfig  # noqa: E402
from amc_data.ranking.resume import recorded_options  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402

FAST = {"epochs": 3, "batch_size": 32, "dim": 16, "device": "cpu", "modality_dropout": 0.3}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("modality-dropout") / "data"
    synth(out, seed=6, images=300, queries=100)
    return out


def _model(data: Path, kind: str = "amc", inter: bool = True):  # type: ignore[no-untyped-def]
    prepared = load_prepared(data)
    torch.manual_seed(0)
    model = AttentionModel(
        ModelConfig(
            kind=kind,
            inter=inter,
            query_vocab_size=len(prepared.query_vocabulary),
            keyword_vocab_size=len(prepared.vocabulary),
            feature_dim=int(prepared.features.shape[-1]),
            dim=16,
            dropout=0.0,
        )
    )
    query = query_batch(prepared, prepared.queries["query_id"].to_numpy()[:40])
    images = image_batch(prepared, prepared.images["img_id"].to_numpy()[:12], 64)
    return model, query, images


def test_dropped_queries_keep_a_modality_drawn_by_the_gate_for_each_image() -> None:
    gate = torch.tensor([[[0.3, 0.7], [0.9, 0.1], [1.0, 0.0], [0.5, 0.5], [0.5, 0.5]]])
    gate = gate.expand(4000, 5, 2)
    # Image 2 has no keywords; images 3 and 4 are a tie, as fixed weights always are.
    available = torch.ones(1, 5, 2, dtype=torch.bool)
    available[0, 2, 1] = False
    torch.manual_seed(0)
    dropped = model_module._drop_modality(gate, available, 0.5, 4000)
    rows = ((dropped == 0) | (dropped == 1)).all(-1).all(-1)  # the dropped queries
    assert 1800 < int(rows.sum()) < 2200  # about half of them
    assert torch.equal(dropped[~rows], gate[~rows])  # the others keep the gate's weights
    textual = dropped[rows, :, 1]  # (dropped, 5): 1 where the keywords were kept
    # Each image keeps the keywords about as often as the gate weighs them ...
    for image, weight in enumerate([0.7, 0.1, 0.0, 0.5, 0.5]):
        assert abs(float(textual[:, image].mean()) - weight) < 0.04, image
    # ... drawn for each image, not once per query: two tied images disagree half the time.
    assert 0.4 < float((textual[:, 3] != textual[:, 4]).float().mean()) < 0.6
    assert torch.allclose(dropped.sum(-1), torch.ones(4000, 5))
    # An image without keywords keeps its visual weight of 1 whatever was drawn.
    assert (dropped[:, 2] == torch.tensor([1.0, 0.0])).all()


def test_favoured_keeps_the_modality_the_gate_favours_where_the_image_has_it() -> None:
    gate = torch.tensor([[[0.3, 0.7], [0.6, 0.4], [1.0, 0.0], [0.5, 0.5]]]).expand(400, 4, 2)
    # Image 2 has no keywords; image 3's weights are a tie, as fixed weights always are.
    available = torch.tensor([[[True, True], [True, True], [True, False], [True, True]]])
    torch.manual_seed(0)
    dropped = model_module._drop_modality(gate, available, 0.5, 400, "favoured")
    rows = (dropped[:, 0] == torch.tensor([0.0, 1.0])).all(-1)  # the dropped queries
    assert 140 < int(rows.sum()) < 260  # about half of them
    assert torch.equal(dropped[~rows], gate[~rows])  # the others keep the gate's weights
    # A dropped query keeps, for each image, the modality its weights favour ...
    assert (dropped[rows, 1] == torch.tensor([1.0, 0.0])).all()
    assert (dropped[rows, 2] == torch.tensor([1.0, 0.0])).all()
    # ... and for a tie one drawn per query: either, about as often.
    tied = dropped[rows, 3]
    assert ((tied == 0) | (tied == 1)).all() and 0.3 < float(tied[:, 0].mean()) < 0.7
    assert torch.allclose(dropped.sum(-1), torch.ones(400, 4))
    # Where the favoured modality is missing (a tie on an image without keywords) nothing moves.
    none = torch.tensor([[[0.5, 0.5]]]).expand(400, 1, 2)
    visual_only = torch.tensor([[[True, False]]])
    kept = model_module._drop_modality(none, visual_only, 1.0, 400, "favoured")
    assert ((kept == torch.tensor([1.0, 0.0])).all(-1) | (kept == 0.5).all(-1)).all()


def _drop_as_recorded_before_keep(
    modality: torch.Tensor, available: torch.Tensor, share: float, queries: int, keep: str
) -> torch.Tensor:
    """Modality dropout as the package did it before `modality_dropout_keep` existed (kept
    here as the reference that older runs must resume to)."""
    modality = modality.expand(queries, *modality.shape[1:])
    dropped = torch.rand(queries) < share
    drawn = torch.randint(0, 2, (queries,))
    weights = modality.detach()
    tie = (weights[..., 0] - weights[..., 1]).abs() < 1e-6
    side = torch.where(tie, drawn[:, None], weights.argmax(-1))
    kept = torch.nn.functional.one_hot(side, 2).bool()
    usable = dropped[:, None] & (kept & available).any(-1)
    return torch.where(usable[..., None], kept.to(modality.dtype), modality)


def test_favoured_trains_as_runs_recorded_before_the_option_did_bit_for_bit(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    favoured = {**FAST, "modality_dropout_keep": "favoured"}
    train(data, tmp_path / "favoured", TrainConfig(**favoured))
    train(data, tmp_path / "drawn", TrainConfig(**FAST))
    monkeypatch.setattr(model_module, "_drop_modality", _drop_as_recorded_before_keep)
    train(data, tmp_path / "before", TrainConfig(**favoured))
    before = run_weights(tmp_path / "before")
    assert same_weights(run_weights(tmp_path / "favoured"), before)
    assert not same_weights(run_weights(tmp_path / "drawn"), before)


def test_in_training_some_queries_score_as_one_modality_alone_in_evaluation_none(
    data: Path,
) -> None:
    model, query, images = _model(data)
    torch.manual_seed(1)
    model.modality_dropout = 1.0  # every query, for the test
    model.train()
    _, _, modality = model(query, images, pool=True, weights=True)
    assert ((modality == 0) | (modality == 1)).all()
    assert (modality[:, :, 0] == 1).any() and (modality[:, :, 1] == 1).any()
    model.eval()
    with torch.no_grad():
        _, _, evaluated = model(query, images, pool=True, weights=True)
        model.modality_dropout = 0.0
        _, _, without = model(query, images, pool=True, weights=True)
    assert torch.equal(evaluated, without)
    assert not ((evaluated == 0) | (evaluated == 1)).all()
    # Fixed weights (--no-inter) are dropped in training the same way.
    fixed, query, images = _model(data, inter=False)
    fixed.modality_dropout = 1.0
    _, _, modality = fixed.train()(query, images, pool=True, weights=True)
    assert modality.shape[0] == len(query) and ((modality == 0) | (modality == 1)).all()


def test_off_training_is_as_before_bit_for_bit(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    off = {**FAST, "modality_dropout": 0.0}
    train(data, tmp_path / "off", TrainConfig(**off))
    # Before the option the model's scoring never called the dropping (and drew nothing).
    monkeypatch.setattr(model_module, "_drop_modality", _never_called)
    train(data, tmp_path / "before", TrainConfig(**off))
    assert same_weights(run_weights(tmp_path / "off"), run_weights(tmp_path / "before"))


def _never_called(*args: object) -> None:
    raise AssertionError("modality dropout at 0 dropped a modality")


def test_a_run_with_it_resumes_to_the_uninterrupted_weights_which_differ_from_off(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = TrainConfig(**FAST)
    resumes_and_differs_from_off(
        data, tmp_path, config, monkeypatch, "pool_hinge_loss", 3, "modality_dropout"
    )


def test_the_per_pair_loss_drops_too(data: Path, tmp_path: Path) -> None:
    pairs = {**FAST, "loss": "pairs", "negatives": 4}
    train(data, tmp_path / "on", TrainConfig(**pairs))
    train(data, tmp_path / "off", TrainConfig(**{**pairs, "modality_dropout": 0.0}))
    assert not same_weights(run_weights(tmp_path / "on"), run_weights(tmp_path / "off"))


def test_a_model_that_reads_one_modality_never_drops_and_fusion_does(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    visual = {key: value for key, value in FAST.items() if key != "modality_dropout"}
    monkeypatch.setattr(model_module, "_drop_modality", _never_called)
    train(data, tmp_path / "visual", TrainConfig(**{**visual, "model": "visual"}))  # the default
    with pytest.raises(AssertionError, match="dropped a modality"):
        train(data, tmp_path / "fusion", TrainConfig(**{**visual, "model": "fusion"}))


def test_a_run_recorded_before_the_option_resumes_without_it(tmp_path: Path) -> None:
    recorded = TrainConfig(**FAST).to_dict()
    del recorded["modality_dropout"]
    assert recorded_options(recorded, str(tmp_path)).modality_dropout == 0.0
    # One recorded with dropout before the drawn modality kept the favoured one.
    recorded = TrainConfig(**FAST).to_dict()
    del recorded["modality_dropout_keep"]
    assert recorded_options(recorded, str(tmp_path)).modality_dropout_keep == "favoured"
    assert TrainConfig().modality_dropout_keep == "drawn"
    # A new run takes the default; the paper's preset scores every query with both modalities.
    assert TrainConfig().modality_dropout > 0
    assert train_config({}, preset="paper").modality_dropout == 0.0


def test_the_cli_flag_sets_it_and_refuses_a_bad_value_or_a_model_it_does_not_fit(
    data: Path, tmp_path: Path
) -> None:
    help_text = CliRunner().invoke(cli, ["train", "--help"]).output
    assert "--modality-dropout" in help_text and "--modality-dropout-keep" in help_text
    args = ["train", str(data), "--out", str(tmp_path / "run")]
    result = CliRunner().invoke(cli, [*args, "--modality-dropout", "1.5"])
    assert result.exit_code == 2 and "--modality-dropout" in result.output
    result = CliRunner().invoke(cli, [*args, "--modality-dropout-keep", "random"])
    assert result.exit_code == 2 and "'random' is not one of 'drawn', 'favoured'" in result.output
    off = ["--modality-dropout", "0", "--modality-dropout-keep", "favoured"]
    result = CliRunner().invoke(cli, [*args, *off])
    assert result.exit_code == 2 and "--modality-dropout-keep" in result.output
    for kind in ("visual", "keyword", "cca"):
        result = CliRunner().invoke(cli, [*args, "--model", kind, "--modality-dropout", "0.2"])
        assert result.exit_code == 2 and "reads regions and keywords" in result.output, kind
    assert not (tmp_path / "run").exists()  # refused before anything is written
