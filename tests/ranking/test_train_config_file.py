"""`amc-data train --config FILE`: a TOML file of training options, below the typed options and
above the preset; unknown keys and wrong types are refused, naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.errors import ConfigError
from amc_data.ranking.config import TrainConfig, read_config_file, train_config


def _file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_option_is_a_key_and_typed_options_then_the_file_then_the_preset_win(
    tmp_path: Path,
) -> None:
    path = _file(tmp_path, 'epochs = 3\nlr = 0.01\nmodel = "amc"\nmargin = 0.3\ncompile = true\n')
    assert read_config_file(path) == {
        "epochs": 3,
        "lr": 0.01,
        "model": "amc",
        "margin": 0.3,
        "compile": True,
    }
    config = train_config({"epochs": 5}, config_file=path, preset="paper")
    assert (config.epochs, config.lr, config.margin, config.compile) == (5, 0.01, 0.3, True)
    assert (config.loss, config.attention, config.gate_content) == ("pairs", "dot", True)
    expected = TrainConfig(epochs=3, lr=0.01, margin=0.3, compile=True)
    assert train_config(config_file=path) == expected


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("epochz = 3\n", r"run\.toml: unknown key 'epochz'\. The keys are the training options"),
        ('model = { kind = "amc" }\n', r"run\.toml: model is a TOML table"),
        ("negatives = [1, 2]\n", r"run\.toml: negatives is a TOML list; .* negatives = 8"),
        ("epochs = \n", r"run\.toml: is not valid TOML"),
    ],
)
def test_a_bad_file_is_refused_naming_the_file_and_the_key(
    tmp_path: Path, text: str, words: str
) -> None:
    with pytest.raises(ConfigError, match=words) as caught:
        train_config(config_file=_file(tmp_path, text))
    assert caught.value.parameter == "config_file"
    assert "\n" not in str(caught.value)


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^config_file .*nothing\.toml: cannot be read"):
        train_config(config_file=tmp_path / "nothing.toml")


def test_values_are_checked_as_typed_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^epochs must be a whole number from 1 to 10,000"):
        train_config(config_file=_file(tmp_path, 'epochs = "many"\n'))
    with pytest.raises(ConfigError, match=r"^loss must be one of pool, pairs, not 'pair'"):
        train_config(config_file=_file(tmp_path, 'loss = "pair"\n'))


def test_an_option_from_the_file_that_the_run_would_not_use_is_refused_naming_the_file(
    tmp_path: Path,
) -> None:
    path = _file(tmp_path, "negatives = 8\n")  # the default value, but given
    with pytest.raises(ConfigError) as caught:
        train_config(config_file=path)
    assert str(caught.value).startswith(f"negatives 8 (from the config file {path}) goes with")
    assert caught.value.parameter == "negatives"
    assert train_config({"loss": "pairs"}, config_file=path).negatives == 8


def test_the_cli_reads_the_file_and_shows_flags_in_its_errors(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    import amc_data.ranking.training as training

    seen = []

    def stop(data, out, config, **kwargs):
        seen.append(config)
        raise ConfigError("stop here")

    path = _file(tmp_path, "epochs = 3\nlr = 0.01\n")
    original, training.train = training.train, stop
    try:
        args = ["train", "data", "--out", "run", "--config", str(path), "--epochs", "4"]
        result = CliRunner().invoke(cli, args)
        bad = _file(tmp_path, "colour = 'red'\n")
        refused = CliRunner().invoke(cli, ["train", "data", "--out", "run", "--config", str(bad)])
    finally:
        training.train = original
    assert "stop here" in result.output and seen == [TrainConfig(epochs=4, lr=0.01)]
    assert refused.exit_code == 2 and len(seen) == 1
    assert f"--config {bad}: unknown key 'colour'" in refused.output
