"""The model registry: one row per model kind, read by the config checks, `build_model`, the
CLI's `--model` choices and help, and the docs' model table. A new baseline is one module and
one row: the toy kinds here are registered from outside the package, trained and evaluated end to
end, and listed everywhere a kind is."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from amc_data_cli.train import train_command  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from torch import Tensor, nn  # noqa: E402

import amc_data  # noqa: E402
from amc_data.errors import ConfigError  # noqa: E402
from amc_data.ranking import registry  # noqa: E402
from amc_data.ranking.batch import ImageBatch, QueryBatch  # noqa: E402
from amc_data.ranking.build import build_model  # noqa: E402
from amc_data.ranking.config import MODELS, TrainConfig  # noqa: E402
from amc_data.ranking.model import ModelConfig, RankingModel  # noqa: E402
from amc_data.ranking.registry import ModelKind, model_kinds, model_table, registered  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402

MODEL_PAGE = Path(__file__).resolve().parents[2] / "docs" / "model.md"
ONE_EPOCH = {"epochs": 1, "batch_size": 32, "dim": 16, "device": "cpu", "loss": "pairs"}


# The examples of CONTRIBUTING's "Adding a baseline model" ----------------------------------------


# A baseline that reuses AttentionModel: the row alone says what it reads and attends to.
KEYWORD_ATTENTION = ModelKind(
    "keyword-attention",
    "query-guided attention over the keywords only",
    "amc_data.ranking.model:AttentionModel",
    keywords=True,
    intra_attention=True,
)


class MeanWordsModel(RankingModel):
    """The query's mean word embedding against the image's count-weighted mean keyword
    embedding, by cosine."""

    def __init__(self, config: ModelConfig, word_vectors: Tensor | None = None) -> None:
        super().__init__(config)
        self.words = nn.Embedding(config.query_vocab_size + 1, config.dim, padding_idx=0)
        self.keywords = nn.Embedding(config.keyword_vocab_size + 1, config.dim, padding_idx=0)

    def _encode_query(self, query: QueryBatch) -> Tensor:
        weights = query.mask.float()  # (B, L)
        summed = torch.einsum("bl,bld->bd", weights, self.words(query.tokens))
        return summed / weights.sum(-1, keepdim=True).clamp_min(1)  # (B, d)

    def _encode_images(self, images: ImageBatch) -> Tensor:
        counts = images.keyword_counts.float() * images.keyword_mask  # (*S, K)
        summed = torch.einsum("...k,...kd->...d", counts, self.keywords(images.keywords))
        return summed / counts.sum(-1, keepdim=True).clamp_min(1)  # (*S, d)

    def _score(self, query: Tensor, images: Tensor, pool: bool) -> tuple[Tensor]:
        q = nn.functional.normalize(query, dim=-1)  # (B|Q, d)
        i = nn.functional.normalize(images, dim=-1)  # (B, M, d) | (N, d)
        return (q @ i.T if pool else torch.einsum("bd,bmd->bm", q, i),)


MEAN_WORDS = ModelKind(
    "mean-words",
    "query words vs keywords, each mean-pooled, no regions",
    MeanWordsModel,  # or "mypackage.mean_words:MeanWordsModel"
    keywords=True,
)


# -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    amc_data.synth(out, seed=3, images=240, queries=90)
    return out


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry as built in, entry points not yet loaded; restored afterwards."""
    monkeypatch.setattr(registry, "_rows", {row.name: row for row in registry.BUILT_IN})
    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    yield


def test_the_registry_loads_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from amc_data.ranking.registry import model_kinds, model_table, model_help\n"
        "from amc_data.ranking.config import MODELS, TrainConfig\n"
        "print(model_kinds(), MODELS, TrainConfig(model='cca').model, len(model_table()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'amc', 'visual', 'keyword', 'fusion', 'cca'" in out.stdout


def test_the_documented_model_table_is_the_registry_s() -> None:
    assert model_table() in MODEL_PAGE.read_text(encoding="utf-8")


def test_the_built_in_kinds_say_what_they_use() -> None:
    assert MODELS == ("amc", "visual", "keyword", "fusion", "cca")
    amc, visual, keyword, fusion, cca = registry.BUILT_IN
    assert amc.regions and amc.keywords and amc.intra_attention and amc.modality_gate
    assert (visual.regions, visual.keywords, visual.intra_attention) == (True, False, False)
    assert (keyword.regions, keyword.keywords, keyword.intra_attention) == (False, True, False)
    assert fusion.regions and fusion.keywords and not fusion.modality_gate
    assert cca.closed_form and not any(r.closed_form for r in (amc, visual, keyword, fusion))


def test_a_new_kind_is_one_row_trained_evaluated_and_listed_everywhere(
    data: Path, tmp_path: Path
) -> None:
    runner = CliRunner()
    with registered(KEYWORD_ATTENTION):
        assert "keyword-attention" in model_kinds()
        model_option = next(p for p in train_command.params if p.name == "model")
        assert "keyword-attention" in model_option.type.choices  # type: ignore[attr-defined]
        shown = runner.invoke(cli, ["train", "--help"], terminal_width=400).output
        assert "keyword-attention" in shown
        assert "keyword-attention: query-guided attention over the keywords only" in shown
        assert "| `keyword-attention` | no | yes | yes | no | gradient descent |" in model_table()

        run = tmp_path / "run"
        args = ["train", str(data), "--out", str(run), "--model", "keyword-attention"]
        args += ["--epochs", "1", "--dim", "16", "--device", "cpu", "--quiet"]
        trained = runner.invoke(cli, args)
        assert trained.exit_code == 0, trained.output
        assert json.loads((run / "config.json").read_text())["model"]["kind"] == (
            "keyword-attention"
        )
        evaluated = runner.invoke(cli, ["eval", str(run), "--data", str(data), "--device", "cpu"])
        assert evaluated.exit_code == 0, evaluated.output
        assert "keyword-attention" in evaluated.output
        model = build_model(ModelConfig(kind="keyword-attention", **_sizes()))
        assert model.use_keywords and model.attend and not model.use_visual and not model.gated
    assert "keyword-attention" not in model_kinds()
    assert "keyword-attention" not in runner.invoke(cli, ["train", "--help"]).output
    with pytest.raises(ConfigError, match="model must be one of amc, visual, keyword, fusion"):
        TrainConfig(model="keyword-attention")


def _sizes() -> dict[str, int]:
    return {"query_vocab_size": 7, "keyword_vocab_size": 9, "feature_dim": 5}


def test_every_registered_kind_trains_on_synth(data: Path, tmp_path: Path) -> None:
    """A row whose model does not build, train or checkpoint fails here: the toy kinds too."""
    with registered(KEYWORD_ATTENTION), registered(MEAN_WORDS):
        for kind in model_kinds():
            result = train(data, tmp_path / kind, TrainConfig(model=kind, **ONE_EPOCH))
            assert result.epochs == 1 and result.best_metric is not None, kind


def test_a_row_must_be_consistent_and_its_name_new(fresh_registry: None) -> None:
    with pytest.raises(ConfigError, match="registered already"):
        registry.register(registry.BUILT_IN[0])
    with pytest.raises(ConfigError, match="built in"):
        registry.unregister("amc")
    with pytest.raises(ConfigError, match="must read the regions, the keywords or both"):
        ModelKind("nothing", "reads nothing", MeanWordsModel)
    with pytest.raises(ConfigError, match="a modality gate weighs two modalities"):
        ModelKind("gated", "one modality gated", MeanWordsModel, keywords=True, modality_gate=True)
    with pytest.raises(ConfigError, match="one line each"):
        ModelKind("table", "a | b", MeanWordsModel, keywords=True)


def test_an_ablation_of_a_part_the_kind_lacks_is_refused_naming_the_parameter() -> None:
    with registered(MEAN_WORDS):
        with pytest.raises(ConfigError, match="intra cannot be switched off") as caught:
            ModelConfig(kind="mean-words", intra=False, **_sizes())
        assert caught.value.parameter == "intra"
        assert "(amc)" in str(caught.value)


def test_a_builder_that_is_not_there_or_disagrees_with_its_row_is_a_config_error() -> None:
    missing = ModelKind("missing", "nowhere", "amc_data.ranking.nowhere:Model", keywords=True)
    with registered(missing), pytest.raises(ConfigError, match="cannot be loaded"):
        build_model(ModelConfig(kind="missing", **_sizes()))
    liar = ModelKind("liar", "says closed form", MeanWordsModel, keywords=True, closed_form=True)
    with registered(liar), pytest.raises(ConfigError, match="closed_form=True"):
        build_model(ModelConfig(kind="liar", **_sizes()))


class _EntryPoint:
    def __init__(self, name: str, found: Any) -> None:
        self.name, self.value, self.found = name, f"plugin:{name}", found

    def load(self) -> Any:
        if isinstance(self.found, Exception):
            raise self.found
        return self.found


def test_entry_points_add_kinds_once_and_a_broken_one_is_left_out(
    fresh_registry: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls = []

    def entry_points(group: str) -> list[_EntryPoint]:
        calls.append(group)
        return [
            _EntryPoint("mean-words", MEAN_WORDS),
            _EntryPoint("factory", lambda: KEYWORD_ATTENTION),
            _EntryPoint("broken", ImportError("no module named plugin")),
        ]

    monkeypatch.setattr(registry, "entry_points", entry_points)
    with caplog.at_level(logging.WARNING, logger=registry.__name__):
        assert model_kinds()[-2:] == ("mean-words", "keyword-attention")
    assert model_kinds() == (*MODELS, "mean-words", "keyword-attention")
    assert calls == ["amc_data.models"]  # loaded once
    assert "broken" in caplog.text and "no module named plugin" in caplog.text


def test_the_cli_names_an_ablation_the_kind_lacks_by_its_flag(data: Path, tmp_path: Path) -> None:
    args = ["train", str(data), "--out", str(tmp_path / "run"), "--model", "visual", "--no-intra"]
    result = CliRunner().invoke(cli, [*args, "--device", "cpu", "--quiet"])
    assert result.exit_code == 2
    assert "Error: --no-intra cannot be switched off for the visual model" in result.output
