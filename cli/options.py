"""Options shared by several subcommands, defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from amc_data.datadir import ENV_DATA_HOME

F = TypeVar("F", bound=Callable[..., Any])


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
