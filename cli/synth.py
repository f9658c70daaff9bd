"""`amc-data synth`."""

from __future__ import annotations

from pathlib import Path

import click

from .options import quiet_option
from .prepare import report_prepared


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--images", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--queries", type=click.IntRange(min=1), default=600, show_default=True)
@click.option(
    "--regions",
    type=click.IntRange(min=2),
    default=8,
    show_default=True,
    help="Feature vectors (regions) per image.",
)
@click.option(
    "--dim",
    type=click.IntRange(min=2),
    default=32,
    show_default=True,
    help="Dimensions of a region's feature vector.",
)
@click.option("--force", is_flag=True, help="Replace an existing prepared folder at OUT.")
@quiet_option
def synth_command(
    out: Path,
    seed: int,
    images: int,
    queries: int,
    regions: int,
    dim: int,
    force: bool,
    quiet: bool,
) -> None:
    """Write a synthetic prepared dataset to OUT, planted so that a model must pick the
    modality (pixels or keywords) by the query's intent.

    The keywords go through the real encoder; the same options give byte-identical files.
    Train on it with `amc-data train OUT --out RUN`.
    """
    from amc_data.prepare.synth import synth

    result = synth(
        out, seed=seed, images=images, queries=queries, regions=regions, dim=dim, force=force
    )
    if not quiet:
        report_prepared(result)


COMMANDS: list[click.Command] = [synth_command]
