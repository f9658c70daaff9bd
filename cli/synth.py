"""`amc-data synth`."""

from __future__ import annotations

from pathlib import Path

import click

from amc_data.prepare.synth_config import SynthConfig

from .options import config_option, quiet_option
from .prepare import report_prepared


@click.command("synth")
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@config_option(SynthConfig, "seed")
# An INTEGER: its minimum (10 per concept) is a rule across fields, said in its help and checked
# by SynthConfig.
@config_option(SynthConfig, "images", type=int)
@config_option(SynthConfig, "queries")
@config_option(SynthConfig, "regions")
@config_option(SynthConfig, "dim")
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

    config = SynthConfig(seed=seed, images=images, queries=queries, regions=regions, dim=dim)
    result = synth(out, config=config, force=force)
    if not quiet:
        report_prepared(result)


COMMANDS: list[click.Command] = [synth_command]
