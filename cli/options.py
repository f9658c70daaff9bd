"""Options shared by several subcommands, defined once."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import click

from amc_data.checks import declared, field_kind
from amc_data.datadir import ENV_DATA_HOME

F = TypeVar("F", bound=Callable[..., Any])


def flag_of(name: str, rule_flag: str | None = None) -> str:
    """The flag of the option named `name` in Python: `rule_flag`, else `--name-with-dashes`."""
    return rule_flag or "--" + name.replace("_", "-")


def config_option(config_type: type, name: str, *decls: str, **overrides: Any) -> Callable[[F], F]:
    """The Click option of the config field `name`, everything taken from its declaration
    (`amc_data.checks.option`): the flag, the default (shown), the help, and the type with its
    range or choices, so a default or bound is written once, in the config. `decls` replaces the
    flag spelling (e.g. `"--no-intra"`); `overrides` any other Click setting."""
    field = next(f for f in dataclasses.fields(config_type) if f.name == name)
    rule = declared(field)
    if rule is None:
        raise TypeError(f"{config_type.__name__}.{name} is not declared with checks.option")
    kind, _optional = field_kind(config_type, field)
    settings: dict[str, Any] = {"help": rule.help, "show_default": True}
    if field.default is not dataclasses.MISSING:
        settings["default"] = field.default
    if rule.choices is not None:
        settings["type"] = click.Choice(rule.choices)
    elif kind is bool:
        settings["is_flag"] = True
        if field.default is True and "/" not in (rule.flag or "/"):
            # A lone off-switch (`--no-intra`): given, it sets False (Click 8.2 and later make a
            # lone flag set True whatever its default), and it shows no default (`--no-intra
            # [default: True]` would read as the switch being on).
            settings.update(flag_value=False, show_default=False)
    elif kind is int:
        low = None if rule.low is None else int(rule.low) + (1 if rule.above else 0)
        high = None if rule.high is None else int(rule.high) - (1 if rule.below else 0)
        settings["type"] = int if low is None and high is None else click.IntRange(low, high)
    elif kind is float and rule.low is None and rule.high is None:
        settings["type"] = float
    elif kind is float:
        settings["type"] = click.FloatRange(
            min=rule.low, max=rule.high, min_open=rule.above, max_open=rule.below
        )
    settings.update(overrides)
    spelling = decls or (flag_of(name, rule.flag),)
    return click.option(*spelling, name, **settings)


def data_dir_option(func: F) -> F:
    """`--data-dir DIR`: where datasets live (default `$AMC_DATA_HOME`, else user data folder)."""
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=str),
        default=None,
        help=f"Data folder (default: ${ENV_DATA_HOME}, else the platform's user data folder).",
    )(func)


def quiet_option(func: F) -> F:
    """`--quiet`: no progress bars and no summary beyond errors."""
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars; errors only.")(func)


def jobs_option(default: int | None, help_text: str) -> Callable[[F], F]:
    """`--jobs N` with a per-command default (None means all cores)."""

    def decorate(func: F) -> F:
        return click.option(
            "--jobs",
            "-j",
            type=click.IntRange(min=1),
            default=default,
            show_default=default is not None,
            help=help_text,
        )(func)

    return decorate


def manifest_option(func: F) -> F:
    """`--manifest PATH` (repeatable): manifests replacing the bundled ones of the same name."""
    return click.option(
        "--manifest",
        "manifest_paths",
        multiple=True,
        type=click.Path(dir_okay=False, exists=True, path_type=str),
        help="Use this manifest (TOML) instead of the bundled one of the same name; its `name` is "
        "the dataset. Repeatable.",
    )(func)


def on_error_option(help_text: str) -> Callable[[F], F]:
    """`--on-error fail|skip` (default fail): what a bad input item does, in the command's words
    (`help_text`)."""
    return click.option(
        "--on-error",
        type=click.Choice(["fail", "skip"]),
        default="fail",
        show_default=True,
        help=help_text,
    )
