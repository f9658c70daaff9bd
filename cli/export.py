"""`amc-data export`."""

from __future__ import annotations

from pathlib import Path

import click

from amc_data.exporting.config import ExportConfig

from .options import config_option, quiet_option


@click.command("export")
@click.argument("data", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("out", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@config_option(ExportConfig, "to")
@config_option(ExportConfig, "shard_mb")
@config_option(ExportConfig, "force")
@quiet_option
def export_command(
    data: Path, out: Path, to: str, shard_mb: float, force: bool, quiet: bool
) -> None:
    """Write the prepared folder DATA to DIR for other tools: a Hugging Face dataset (--to hf:
    Parquet shards per config and split, and a dataset card with the source, licences, splits,
    the encode and prepare records and the citation; `datasets.load_dataset(DIR, "images")`
    opens it) or webdataset tar shards (--to wds: one sample per image, for streaming training).

    DIR is built beside itself and renamed into place once complete. A non-empty DIR is refused
    unless it holds an earlier export and --force is given; files no export wrote are never
    deleted.
    """
    from amc_data.exporting.core import export
    from amc_data.progress import progress_enabled

    config = ExportConfig(to=to, shard_mb=shard_mb, force=force)
    result = export(data, out, config=config, progress=progress_enabled(quiet))
    if quiet:
        return
    click.echo(f"{result.to}: exported {data} into {result.out}")
    click.echo(f"  {'split':<6} {'images':>10} {'queries':>10} {'judgments':>11}")
    for split in ("train", "val", "test"):
        counts = [result.counts[kind][split] for kind in ("images", "queries", "judgments")]
        click.echo(f"  {split:<6} {counts[0]:>10,} {counts[1]:>10,} {counts[2]:>11,}")
    click.echo(f"  {len(result.files):,} files, {result.bytes / 1e6:,.1f} MB")


COMMANDS: list[click.Command] = [export_command]
