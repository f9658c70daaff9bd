"""FeatureConfig declares its options once: the library checks them by that declaration (and
its cross-field rules by hand), naming the parameter; the CLI shows a refusal by its flag.
No torch needed: the config is checked before anything loads."""

from __future__ import annotations

from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.errors import ConfigError
from amc_data.featurizing.core import FeatureConfig


@pytest.mark.parametrize(
    ("changes", "parameter", "words"),
    [
        ({"grid": 0}, "grid", "grid must be a whole number >= 1, not 0."),
        ({"image_size": True}, "image_size", "image_size must be a whole number >= 1, not True."),
        ({"batch_size": 2.5}, "batch_size", "batch_size must be a whole number >= 1, not 2.5."),
        ({"workers": -1}, "workers", "workers must be a whole number >= 0, not -1."),
        ({"max_batches": 0}, "max_batches", "max_batches must be a whole number >= 1, not 0."),
        ({"dtype": "float64"}, "dtype", "dtype must be one of float16, float32, not 'float64'."),
        ({"precision": "fp16"}, "precision", "precision must be one of auto, bf16, fp32"),
        ({"weights": "imagenet"}, "weights", "weights must be one of default, none"),
        ({"on_error": "ignore"}, "on_error", "on_error must be one of fail, skip"),
        ({"resume": 1}, "resume", "resume must be True or False, not 1."),
        ({"resize": 200}, "resize", "resize (200) must be at least image_size (224)"),
        ({"id_source": "tsv"}, "id_file", "id_file is needed exactly when id_source"),
        ({"tsv_columns": (1, 1)}, "tsv_columns", "tsv_columns must be two different columns"),
    ],
)
def test_a_bad_option_is_refused_naming_its_parameter(
    changes: dict, parameter: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        FeatureConfig(**changes)
    assert str(caught.value).startswith(words)
    assert caught.value.parameter == parameter


def test_paths_are_welcome_as_strings() -> None:
    config = FeatureConfig(model_file="net.pt", id_source="tsv", id_file="ids.tsv")
    assert config.model_file == Path("net.pt") and config.id_file == Path("ids.tsv")


def test_the_cli_names_a_cross_field_refusal_by_its_flag(tmp_path: Path) -> None:
    args = ["features", str(tmp_path), "--out", str(tmp_path / "f.npy"), "--resize", "100"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --resize (100) must be at least image_size (224)")
