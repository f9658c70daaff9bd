"""Checkpoint formats: today's round trip, the migration of every older kind of checkpoint to the
model it was written for, and the refusal of a checkpoint a newer amc-data wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from support.checkpoint_fixtures import RUNS, read_expected  # noqa: E402

from amc_data.errors import CheckpointError, ConfigError  # noqa: E402
from amc_data.ranking.batch import ImageBatch, QueryBatch  # noqa: E402
from amc_data.ranking.build import build_model  # noqa: E402
from amc_data.ranking.checkpoint import (  # noqa: E402
    FORMAT,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from amc_data.ranking.migrations import ADDED_LATER, FORMAT_VERSION, migrate  # noqa: E402
from amc_data.ranking.model import ModelConfig, RankingModel  # noqa: E402

VQ, VK, D = 11, 13, 8


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _queries(count: int = 3) -> QueryBatch:
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randint(1, VQ + 1, (count, 4), generator=generator)
    tokens[0, 3] = 0
    return QueryBatch(tokens=tokens, mask=tokens > 0)


def _images(count: int = 6) -> ImageBatch:
    generator = torch.Generator().manual_seed(0)
    keywords = torch.randint(1, VK + 1, (count, 5), generator=generator)
    keywords[1, 3:] = 0
    return ImageBatch(
        regions=torch.randn(count, 4, D, generator=generator),
        region_mask=torch.ones(count, 4, dtype=torch.bool),
        keywords=keywords,
        keyword_counts=torch.ones(count, 5),
        keyword_mask=keywords > 0,
    )


def _scores(model: RankingModel) -> torch.Tensor:
    return model.eval().score_pool(_queries(), _images())


def _write(path: Path, version: int, model_config: dict, state: dict, **extra: Any) -> Path:
    """A checkpoint file as an amc-data of checkpoint format `version` wrote it."""
    payload = {
        "format": FORMAT,
        "format_version": version,
        "model_config": model_config,
        "model": state,
        **extra,
    }
    torch.save(payload, path)
    return path


def test_today_s_checkpoints_are_written_as_the_newest_format_and_read_back_whole(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    config = ModelConfig(query_vocab_size=VQ, keyword_vocab_size=VK, feature_dim=D, dim=16)
    model = build_model(config)
    path = tmp_path / "best.pt"
    save_checkpoint(
        path, {"model_config": config.to_dict(), "model": model.state_dict(), "epoch": 3}
    )
    assert FORMAT_VERSION == 3
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION
    read = read_checkpoint(path)
    assert read["model_config"] == config.to_dict() and read["epoch"] == 3
    assert read["model"].keys() == model.state_dict().keys()
    loaded = load_model(path)
    assert loaded.model_config == config and loaded.epoch == 3
    torch.testing.assert_close(_scores(loaded.model), _scores(model), rtol=0, atol=0)


# Each older kind of format 1 checkpoint: the model it was built as, and the model options that
# amc-data did not yet record when it was written.
OLD_KINDS = {
    "before-attention-scale-rate": (
        {"attention_scale": 4.0, "attention_scale_rate": 1.0, "region_attention_scale_rate": 0.0},
        ("region_attention_scale_rate", "attention_scale_rate"),
    ),
    "before-gate-options": (
        {
            "attention": "dot",
            "attention_scale_rate": 1.0,
            "region_attention_scale_rate": 0.0,
            "gate_scale": 0.0,
            "gate_content": True,
        },
        (
            "attention",
            "attention_scale",
            "attention_scale_rate",
            "region_attention_scale_rate",
            "gate_scale",
            "gate_content",
        ),
    ),
}


@pytest.mark.parametrize("kind", sorted(OLD_KINDS))
def test_a_format_1_checkpoint_of_each_older_kind_loads_as_the_model_it_was_written_for(
    kind: str, tmp_path: Path
) -> None:
    options, absent = OLD_KINDS[kind]
    torch.manual_seed(0)
    old_config = ModelConfig(
        query_vocab_size=VQ, keyword_vocab_size=VK, feature_dim=D, dim=16, **options
    )
    old = build_model(old_config)
    recorded = {k: v for k, v in old_config.to_dict().items() if k not in absent}
    path = _write(tmp_path / "old.pt", 1, recorded, old.state_dict())

    assert read_checkpoint(path)["format_version"] == FORMAT_VERSION
    loaded = load_model(path)  # strict: no weight missing or left over
    assert loaded.model_config == old_config
    torch.testing.assert_close(_scores(loaded.model), _scores(old), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=f"{absent[-1]}.* are missing"):
        ModelConfig.from_dict(recorded)  # today's format records every option


def test_a_format_2_checkpoint_loads_with_its_regions_on_the_keyword_attention_s_scale(
    tmp_path: Path,
) -> None:
    torch.manual_seed(0)
    old_config = ModelConfig(
        query_vocab_size=VQ,
        keyword_vocab_size=VK,
        feature_dim=D,
        dim=16,
        attention_scale=3.0,
        region_attention_scale_rate=0.0,
    )
    old = build_model(old_config)
    recorded = old_config.to_dict()
    del recorded["region_attention_scale_rate"]  # format 2 had one scale, and no such option
    path = _write(tmp_path / "old.pt", 2, recorded, old.state_dict())

    assert read_checkpoint(path)["format_version"] == FORMAT_VERSION
    loaded = load_model(path)  # strict: no region scale expected, none left over
    assert loaded.model_config == old_config
    assert not hasattr(loaded.model, "region_log_scale")
    torch.testing.assert_close(_scores(loaded.model), _scores(old), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["amc", "visual"])
def test_a_format_1_checkpoint_with_an_affine_region_norm_scores_as_it_did(
    kind: str, tmp_path: Path
) -> None:
    config = ModelConfig(
        query_vocab_size=VQ, keyword_vocab_size=VK, feature_dim=D, dim=4, kind=kind
    )
    torch.manual_seed(0)
    model = build_model(config)
    state = model.state_dict()
    generator = torch.Generator().manual_seed(0)
    scale, shift = torch.rand(D, generator=generator) + 0.5, torch.randn(D, generator=generator)
    # The same model as amc-data 0.1 wrote it: an affine norm, and projections that undo it.
    old = dict(state)
    old["region_norm.weight"], old["region_norm.bias"] = scale, shift
    for name in ("region_value", "region_key"):
        if f"{name}.weight" in state:
            w = state[f"{name}.weight"] / scale
            old[f"{name}.weight"] = w
            old[f"{name}.bias"] = state[f"{name}.bias"] - w @ shift
    path = _write(tmp_path / "old.pt", 1, config.to_dict(), old)

    migrated = read_checkpoint(path)["model"]
    assert "region_norm.weight" not in migrated and "region_norm.bias" not in migrated
    loaded = load_model(path)
    torch.testing.assert_close(_scores(loaded.model), _scores(model))


def test_a_format_1_record_from_before_the_pool_loss_trained_with_per_pair_negatives() -> None:
    checkpoint = {"format": FORMAT, "format_version": 1, "train_config": {"epochs": 2}}
    migrated = migrate(checkpoint)
    # Nor did such a run have the attention entropy term, modality dropout (nor the modality
    # drawn by the gate), the violating mean, the gate routing term, the region terms or the
    # keyword target (added later, on by default).
    without_term = {
        "attention_entropy": 0.0,
        "attention_entropy_floor": 0.0,
        "modality_dropout": 0.0,
        "modality_dropout_keep": "favoured",
        "pool_reduction": "all",
        "gate_routing": 0.0,
        "region_target": 0.0,
        "region_mean_hinge": 0.0,
        "keyword_target": 0.0,
        "region_terms_warmup": 0.0,
        "gate_warmup": 0.0,
        "region_mean_hinge_end": 1.0,
    }
    assert migrated["train_config"] == {"loss": "pairs", "epochs": 2, **without_term}
    assert checkpoint == {"format": FORMAT, "format_version": 1, "train_config": {"epochs": 2}}
    recorded = {"format": FORMAT, "format_version": 1, "train_config": {"loss": "pool"}}
    assert migrate(recorded)["train_config"] == {"loss": "pool", **without_term}  # recorded stay


def test_migrating_leaves_today_s_format_and_what_it_cannot_read_as_it_is() -> None:
    today = {"format": FORMAT, "format_version": FORMAT_VERSION, "model_config": {"dim": 3}}
    assert migrate(today) == today
    # A checkpoint with only its marker: nothing to fill; a resume names what it lacks.
    assert migrate({"format": FORMAT, "format_version": 1}) == {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
    }


def test_a_checkpoint_from_a_newer_amc_data_is_refused_asking_for_an_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "last.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="written by a newer amc-data; upgrade amc-data") as e:
        read_checkpoint(path)
    assert str(path) in str(e.value) and "train again" not in str(e.value).lower()
    assert path.read_bytes() == before


@pytest.mark.parametrize("version", [0, None, "2", 1.0])
def test_a_format_no_amc_data_writes_is_refused(version: object, tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"format": FORMAT, "format_version": version}, path)
    with pytest.raises(CheckpointError, match="which no amc-data writes"):
        read_checkpoint(path)


FIXTURE_RUNS = read_expected()["runs"]


@pytest.mark.parametrize("name", sorted(FIXTURE_RUNS))
def test_the_format_1_fixture_checkpoints_migrate_to_the_options_they_were_trained_with(
    name: str,
) -> None:
    entry = FIXTURE_RUNS[name]
    for file in ("last.pt", "best.pt"):
        raw = torch.load(RUNS / name / file, map_location="cpu", weights_only=True)
        assert raw["format_version"] == 1
        migrated = migrate(raw)
        assert migrated["format_version"] == FORMAT_VERSION
        assert migrated["model_config"] == entry["model_config"]
        expected = {**ADDED_LATER, **raw["train_config"], **entry["options"]}
        assert migrated["train_config"] == expected
        assert migrated["model"].keys() == raw["model"].keys()  # no region norm to fold here
