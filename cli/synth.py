"""`amc-data synth`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from amc_data.prepare.synth_config import SynthConfig

from .options import config_option, quiet_option
from .prepare import report_prepared

F = TypeVar("F", bound=Callable[..., Any])

# The settings the command line offers, besides seed and images (options of their own below).
_SETTINGS = (
    "queries",
    "regions",
    "dim",
    "concepts",
    "candidates",
    "shown",
    "labelled",
    "query_concepts",
    "both_intents",
)


def _settings(command: F) -> F:
    for name in reversed(_SETTINGS):
        command = config_option(SynthConfig, name)(command)
    return command


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@config_option(SynthConfig, "seed")
# An INTEGER: its minimum (10 per concept) is a rule across fields, said in its help and checked
# by SynthConfig.
@config_option(SynthConfig, "images", type=int)
@_settings
@click.option("--force", is_flag=True, help="Replace an existing prepared folder at OUT.")
@quiet_option
def synth_command(out: Path, force: bool, quiet: bool, **settings: int | float) -> None:
    """Write a synthetic prepared dataset to OUT, planted so that a model must pick the
    modality (pixels or keywords) by the query's intent, and its truth beside it
    (OUT.concepts.parquet: which concepts each query names and where each image carries them,
    for `amc-data eval --concepts`).

    The keywords go through the real encoder; the same options give byte-identical files.
    With --shown, --labelled or --query-concepts above 1, a several-concept world. Train on it
    with `amc-data train OUT --out RUN`.
    """
    from amc_data.prepare.synth import concepts_path, synth

    config = SynthConfig(**settings)  # type: ignore[arg-type]
    result = synth(out, config=config, force=force)
    if not quiet:
        report_prepared(result)
        click.echo(f"synth: its concepts file is {concepts_path(result.out)}")


COMMANDS: list[click.Command] = [synth_command]
