"""`amc-data encode`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from amc_data.encoding.config import EncodeConfig
from amc_data.progress import progress_enabled
from amc_data.spec import DATASETS, FORMATS

from .options import config_option, data_dir_option, manifest_option, quiet_option

if TYPE_CHECKING:
    from amc_data.encoding.core import EncodeResult


@click.command("encode")
@click.argument("dataset", metavar=f"{{{'|'.join([*DATASETS, 'all'])}}}")
@data_dir_option
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default <data-dir>/<dataset>/encoded; with 'all', <out>/<dataset>).",
)
@config_option(EncodeConfig, "jobs", "--jobs", "-j")
@config_option(EncodeConfig, "min_df")
@config_option(EncodeConfig, "stop_words", metavar="english|none|PATH")
@config_option(EncodeConfig, "formats", default=",".join(FORMATS))  # Click reads a str, not a tuple
@config_option(EncodeConfig, "on_error")
@config_option(EncodeConfig, "force")
@manifest_option
@quiet_option
def encode_command(
    dataset: str,
    data_dir: str | None,
    out: Path | None,
    jobs: int | None,
    min_df: int,
    stop_words: str,
    formats: str,
    on_error: str,
    force: bool,
    manifest_paths: tuple[str, ...],
    quiet: bool,
) -> None:
    """Encode DATASET's keywords exactly as the authors did (clickture, coco, or all).

    Reads the archives and lists that `fetch` put in <data-dir>/<dataset>/ and writes the
    authors' .npy files, vocab.tsv, per-split CSR matrices, Parquet tables and the encode
    record, encode.json. A second run with the same inputs and options does nothing; --force
    redoes it. --manifest only changes which checksums the encode record vouches for.
    """
    from amc_data.encoding.core import encode

    # Every option is checked by EncodeConfig and every dataset name by encode: once, there.
    config = EncodeConfig(
        min_df=min_df,
        stop_words=stop_words,
        formats=formats,  # type: ignore[arg-type]  # a comma-separated string is welcome
        on_error=on_error,  # type: ignore[arg-type]
        jobs=jobs,
        force=force,
        progress=progress_enabled(quiet),
        manifest_paths=manifest_paths,
    )
    datasets = list(DATASETS) if dataset == "all" else [dataset]
    for name in datasets:
        target = out / name if (out is not None and dataset == "all") else out
        result = encode(name, data_dir=data_dir, out=target, config=config)
        if not quiet:
            _report(result)


def _report(result: EncodeResult) -> None:
    if result.up_to_date:
        click.echo(
            f"{result.dataset}: {result.out_dir} is up to date with its inputs; nothing to do "
            "(--force encodes again)."
        )
        return
    click.echo(f"{result.dataset}: encoded into {result.out_dir}")
    click.echo(
        f"  {'split':<8} {'documents':>10} {'encoded':>10} {'skipped':>8} {'pairs':>12} "
        f"{'empty':>8}"
    )
    for split, counts in result.counts.items():
        if counts.get("documents") or counts.get("skipped"):
            click.echo(
                f"  {split:<8} {counts['documents']:>10,} {counts['encoded']:>10,} "
                f"{counts['skipped']:>8,} {counts['pairs']:>12,} {counts.get('empty', 0):>8,}"
            )
    _report_vocabulary(result)
    if result.skipped:
        click.echo(
            f"  {len(result.skipped):,} item(s) skipped; each is recorded with its reason in "
            f"the encode record, {result.out_dir / 'encode.json'}"
        )
    if "total" in result.seconds:
        click.echo(f"  time: {result.seconds['total']:.1f} s")


def _report_vocabulary(result: EncodeResult) -> None:
    """Words kept and dropped by min_df, word occurrences dropped, documents left empty (the
    library warns, through logging, when most are dropped)."""
    report = result.vocabulary
    if not report:  # recorded by an older version
        click.echo(f"  vocabulary: {result.vocabulary_size:,} words")
        return
    min_df = report["min_df"]
    click.echo(
        f"  vocabulary: {report['words_kept']:,} words kept, {report['words_dropped']:,} "
        f"dropped (in fewer than --min-df {min_df} of the {report['fitting_documents']:,} "
        "fitting documents)"
    )
    click.echo(
        f"  keywords: {report['word_occurrences_dropped']:,} of {report['word_occurrences']:,} "
        f"word occurrences dropped (outside the vocabulary); {report['documents_empty']:,} of "
        f"{report['documents']:,} documents left empty"
    )


COMMANDS: list[click.Command] = [encode_command]
