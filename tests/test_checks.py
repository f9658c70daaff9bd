"""amc_data.checks: one declaration per option gives the library's checks, the CLI's flag,
default, range and help, and the CLI's naming of a bad parameter by its flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import click
import pytest
from amc_data_cli.main import AmcGroup
from amc_data_cli.options import config_option
from click.testing import CliRunner

from amc_data.checks import check_config, option, real_number, whole_number
from amc_data.errors import ConfigError


@dataclass(frozen=True)
class ToyConfig:
    batch_size: int = option(32, "Pairs per step.", low=1, high=1000)
    rate: float = option(0.5, "A fraction.", low=0, high=1, below=True)
    mode: Literal["a", "b"] = option("a", "Which way.", choices=("a", "b"))
    limit: int | None = option(None, "Optional cap.", low=1)
    shuffle: bool = option(True, "Shuffle the pairs.", flag="--shuffle/--no-shuffle")

    def __post_init__(self) -> None:
        check_config(self)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"batch_size": 0}, "batch_size must be a whole number from 1 to 1,000, not 0."),
        ({"batch_size": True}, "batch_size must be a whole number from 1 to 1,000, not True."),
        ({"batch_size": 2.0}, "batch_size must be a whole number"),
        ({"rate": 1.0}, "rate must be a finite number >= 0 and < 1, not 1.0."),
        ({"rate": float("nan")}, "rate must be a finite number"),
        ({"mode": "c"}, "mode must be one of a, b, not 'c'."),
        ({"limit": 0}, "limit must be a whole number >= 1, not 0."),
        ({"shuffle": 1}, "shuffle must be True or False, not 1."),
    ],
)
def test_a_config_refuses_bad_values_naming_the_parameter(changes: dict, words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("(", r"\(")) as info:
        ToyConfig(**changes)
    assert info.value.parameter == next(iter(changes))


def test_good_values_pass_and_none_is_allowed_where_the_type_says_so() -> None:
    config = ToyConfig(batch_size=1000, rate=0, mode="b", limit=None, shuffle=False)
    assert config.rate == 0 and config.limit is None
    assert whole_number("n", 5, 1) == 5
    assert real_number("x", 2, above=True, low=0) == 2.0


@click.group(cls=AmcGroup)
@click.option("--debug", is_flag=True)
def toy_cli(debug: bool) -> None:
    """A group as amc-data's own."""


@toy_cli.command("toy")
@config_option(ToyConfig, "batch_size")
@config_option(ToyConfig, "rate")
@config_option(ToyConfig, "mode")
@config_option(ToyConfig, "limit")
@config_option(ToyConfig, "shuffle")
@click.option("--library-check", type=int, default=None)
def toy(library_check: int | None, **options: object) -> None:
    if library_check is not None:
        options["batch_size"] = library_check  # as a config file would, past Click's range
    click.echo(repr(ToyConfig(**options)))  # type: ignore[arg-type]


def test_the_cli_option_takes_default_range_choices_and_help_from_the_declaration() -> None:
    runner = CliRunner()
    shown = runner.invoke(toy_cli, ["toy", "--help"]).output
    assert "Pairs per step." in shown and "1<=x<=1000" in shown and "default: 32" in shown
    assert "[a|b]" in shown and "--shuffle / --no-shuffle" in shown
    default = runner.invoke(toy_cli, ["toy"])
    assert default.exit_code == 0 and repr(ToyConfig()) in default.output
    bad = runner.invoke(toy_cli, ["toy", "--batch-size", "0"])
    assert bad.exit_code == 2 and "--batch-size" in bad.output


def test_a_library_error_is_shown_with_the_flag_of_the_parameter_it_names() -> None:
    result = CliRunner().invoke(toy_cli, ["toy", "--library-check", "0"])
    assert result.exit_code == 2
    assert "Error: --batch-size must be a whole number from 1 to 1,000, not 0." in result.output
