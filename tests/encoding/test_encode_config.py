"""EncodeConfig declares its options once: the library checks them by that declaration, naming
the parameter, and the CLI shows a bad one by its flag."""

from __future__ import annotations

from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.encoding.analyzer import check_min_df, fit_vocabulary
from amc_data.encoding.core import EncodeConfig
from amc_data.errors import ConfigError


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"min_df": 0}, "min_df must be a whole number >= 1, not 0. The authors used 6."),
        ({"min_df": 2.0}, "min_df must be a whole number >= 1, not 2.0."),
        ({"jobs": 0}, "jobs must be a whole number >= 1, not 0."),
        ({"jobs": 2.5}, "jobs must be a whole number >= 1, not 2.5."),
        ({"on_error": "ignore"}, "on_error must be one of fail, skip, not 'ignore'."),
        ({"force": "yes"}, "force must be True or False, not 'yes'."),
        (
            {"formats": "original,xml"},
            "formats must be a comma-separated list of original, csr, parquet: xml is not a "
            "format.",
        ),
    ],
)
def test_a_bad_option_is_refused_naming_its_parameter(changes: dict, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EncodeConfig(**changes)
    assert str(caught.value).startswith(words)
    assert caught.value.parameter == next(iter(changes))


def test_min_df_has_one_rule_for_the_config_and_the_vocabulary_fit() -> None:
    with pytest.raises(ConfigError) as from_config:
        EncodeConfig(min_df=0)
    with pytest.raises(ConfigError) as from_fit:
        fit_vocabulary({"red": 1}, 1, 0)
    assert str(from_config.value) == str(from_fit.value)
    assert from_fit.value.parameter == "min_df"
    assert check_min_df(6) == 6


def test_the_cli_names_a_library_refusal_by_its_flag(tmp_path: Path) -> None:
    args = ["encode", "coco", "--formats", "original,xml", "--data-dir", str(tmp_path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: --formats must be a comma-separated list")
    bad_range = CliRunner().invoke(cli, ["encode", "coco", "--min-df", "0"])
    assert bad_range.exit_code == 2 and "--min-df" in bad_range.stderr
