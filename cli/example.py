"""`amc-data example`."""

from __future__ import annotations

from pathlib import Path

import click

from amc_data.examples import EXAMPLE_DATASETS, ExampleConfig

from .options import config_option, quiet_option


@click.command("example")
@click.argument("dataset", type=click.Choice(EXAMPLE_DATASETS))
@click.argument("out", type=click.Path(file_okay=False, path_type=Path))
@config_option(ExampleConfig, "seed")
@config_option(ExampleConfig, "images")
@config_option(ExampleConfig, "regions")
@config_option(ExampleConfig, "dim")
@quiet_option
def example_command(
    dataset: str, out: Path, seed: int, images: int, regions: int, dim: int, quiet: bool
) -> None:
    """Write a small example of DATASET's input files into OUT (a new or empty folder): for
    `coco`, Karpathy's dataset.json, the keyword_<split>/<file stem>.json files, and features
    with their ids, in the layout `encode coco` and `prepare coco` read.

    Use OUT as the data folder: `amc-data encode coco --data-dir OUT --min-df 2`.
    """
    from amc_data.examples import write_example

    config = ExampleConfig(seed=seed, images=images, regions=regions, dim=dim)
    result = write_example(dataset, out, config)
    if quiet:
        return
    splits = ", ".join(f"{count} {split}" for split, count in result.splits.items())
    click.echo(f"Wrote a {dataset} example of {result.images} images ({splits}) to {result.out}:")
    click.echo(f"  {result.keywords}/dataset.json and keyword_<split>/<file stem>.json")
    click.echo(f"  {result.features} and {result.feature_ids} (Karpathy imgids)")
    click.echo(f"Next: amc-data encode coco --data-dir {result.data_dir} --min-df 2")


COMMANDS: list[click.Command] = [example_command]
