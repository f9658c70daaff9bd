"""`amc-data prepare <dataset>`: one subcommand per dataset the registry knows
(`amc_data.prepare.registry`), each built from its recipe: the shared options below, then the
dataset's own, each from its config's declaration (`config_option`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .main import AmcGroup
from .options import config_option, data_dir_option, quiet_option

if TYPE_CHECKING:
    from amc_data.prepare.common import PrepareResult
    from amc_data.prepare.registry import FileInput, PrepareRecipe

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)

# The options every `prepare` subcommand takes that are not config fields: passed to the
# recipe's `prepare` by these names.
_SHARED_OPTIONS = [
    data_dir_option,
    click.option(
        "--out",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Prepared folder (default <data-dir>/<dataset>/prepared).",
    ),
    click.option(
        "--encoded",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The encode output with the keywords (default <data-dir>/<dataset>/encoded).",
    ),
    # Required unless the dataset takes its features from elsewhere (`prepare coco --precomp`):
    # checked in `build_command`.
    click.option(
        "--features",
        type=_FILE,
        default=None,
        help="Features .npy, (N, R, D) or (N, D), float16/float32.  [required]",
    ),
    click.option(
        "--feature-ids",
        type=_FILE,
        default=None,
        help="The image id of each feature row, an int .npy of shape (N,).  [required]",
    ),
]
# A config field that, when set, names where the features come from instead of --features.
_FEATURES_ELSEWHERE = "precomp"
_SHARED_NAMES = ("data_dir", "out", "encoded", "features", "feature_ids")

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def _file_option(entry: FileInput) -> Decorator:
    return click.option(
        "--" + entry.name.replace("_", "-"),
        entry.name,
        type=_FILE,
        required=entry.required,
        default=None,
        help=entry.help,
    )


def _options(recipe: PrepareRecipe) -> list[Decorator]:
    """Every option of `prepare <recipe.name>`, in the order `--help` shows them."""
    config_fields = {f.name for f in dataclasses.fields(recipe.config)}
    from amc_data.prepare.registry import SHARED_CONFIG_FIELDS

    shared = [
        config_option(recipe.config, name) for name in SHARED_CONFIG_FIELDS if name in config_fields
    ]
    own = [
        config_option(recipe.declaring(entry), entry)
        if isinstance(entry, str)
        else _file_option(entry)
        for entry in recipe.options
    ]
    return [*_SHARED_OPTIONS, *shared, quiet_option, *own]


def build_command(recipe: PrepareRecipe) -> click.Command:
    """The `prepare <recipe.name>` subcommand: it reads its options, builds the recipe's config
    from the config options, calls the recipe's `prepare` and reports the folder."""
    inputs = [entry.name for entry in recipe.inputs]

    def command(quiet: bool, **values: Any) -> None:
        shared = {name: values.pop(name) for name in _SHARED_NAMES}
        if values.get(_FEATURES_ELSEWHERE) is None:
            for name in ("features", "feature_ids"):
                if shared[name] is None:
                    flag = "--" + name.replace("_", "-")
                    elsewhere = (
                        f" (or --{_FEATURES_ELSEWHERE} DIR)"
                        if _FEATURES_ELSEWHERE in values
                        else ""
                    )
                    raise click.UsageError(f"Missing option '{flag}'{elsewhere}.")
        files = {name: values.pop(name) for name in inputs}
        config = recipe.build_config(values)
        result = recipe.prepare(**shared, **files, config=config)
        if not quiet:
            report_prepared(result)

    for option in reversed(_options(recipe)):
        command = option(command)
    return click.command(recipe.name, help=recipe.help)(command)


class DatasetGroup(AmcGroup):
    """`prepare`: its subcommands are the registry's datasets, built when asked for (the
    dataset modules load only when `prepare` runs). As an AmcGroup, it shows a parameter that
    a subcommand's config names in an error as that subcommand's flag."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from amc_data.prepare.registry import recipes

        return list(recipes())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from amc_data.prepare.registry import recipes

        found = recipes().get(cmd_name)
        return build_command(found) if found is not None else None


@click.group("prepare", cls=DatasetGroup)
def prepare_group() -> None:
    """Build a prepared dataset folder (features, keywords, queries, judgments) that `train` and
    `eval` read: `prepare <dataset>`, one command per dataset below."""


def report_prepared(result: PrepareResult) -> None:
    from amc_data.prepare.format import SPLITS  # loaded already: the folder was just prepared

    counts = result.counts
    click.echo(f"{result.source}: prepared into {result.out}")
    click.echo(f"  {'split':<6} {'images':>10} {'queries':>10} {'judgments':>11}")
    for split in SPLITS:
        click.echo(
            f"  {split:<6} {counts['images'][split]:>10,} {counts['queries'][split]:>10,} "
            f"{counts['judgments'][split]:>11,}"
        )
    click.echo(f"  features: {counts['features']:,} rows ({result.features_stored})")
    vocabulary = result.vocabulary
    if vocabulary:
        click.echo(
            f"  query words: {vocabulary['query_words_kept']:,} kept, "
            f"{vocabulary['query_words_dropped']:,} dropped (seen fewer than --min-query-count "
            f"{vocabulary['min_count']} times in the training queries: "
            f"{vocabulary['query_word_occurrences_dropped']:,} of "
            f"{vocabulary['query_word_occurrences']:,} occurrences)"
        )
        click.echo(
            f"  queries left empty: {vocabulary['queries_empty']:,} of "
            f"{vocabulary['queries']:,}; keyword rows left empty: "
            f"{vocabulary['keyword_rows_empty']:,} of {vocabulary['keyword_rows']:,}"
        )
    for kind, entry in result.skipped.items():
        examples = ", ".join(str(e) for e in entry["examples"])
        click.echo(
            f"  left out: {entry['count']:,} {kind}" + (f" (e.g. {examples})" if examples else "")
        )
    for note in result.notes:
        click.echo(f"  note: {note}")


COMMANDS: list[click.Command] = [prepare_group]
