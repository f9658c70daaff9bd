"""`amc-data features`, and `amc-data clip-scores` (the zero-shot ranker of CLIP features)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from amc_data.checks import declared, default_of
from amc_data.featurizing.clip_scores import ClipScoresConfig
from amc_data.featurizing.core import FeatureConfig
from amc_data.featurizing.sources import ID_SOURCES
from amc_data.progress import progress_enabled

from .options import config_option, quiet_option

if TYPE_CHECKING:
    from amc_data.featurizing.core import FeatureResult

_ID_SOURCES = tuple(source for source in ID_SOURCES if source != "name")  # "name": no --ids-from


def _declared_help(name: str) -> str:
    field = next(f for f in dataclasses.fields(FeatureConfig) if f.name == name)
    rule = declared(field)
    assert rule is not None  # every FeatureConfig field the CLI shows is declared
    return rule.help


def _columns(_ctx: click.Context, _param: click.Parameter, value: str) -> tuple[int, int]:
    parts = [part.strip() for part in value.split(",")]
    if len(parts) != 2 or not all(part.isdigit() for part in parts) or parts[0] == parts[1]:
        raise click.BadParameter(
            f"{value!r}: give the 0-based key column and image column, e.g. 0,1."
        )
    return int(parts[0]), int(parts[1])


@click.command("features")
@click.argument("images", type=click.Path(path_type=Path))
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Features file to write (.npy, (N, G*G, D)); e.g. DIR/features.npy.",
)
@click.option(
    "--ids",
    "ids_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="img_id file to write [default: feature_ids.npy beside features.npy, else "
    "<stem>_ids.npy].",
)
@click.option(
    "--ids-from",
    nargs=2,
    type=(click.Choice(_ID_SOURCES), click.Path(path_type=Path)),
    default=None,
    metavar="KIND PATH",
    help="Map names to img_ids: dataset-json (Karpathy's dataset.json, or keywords_coco.zip), "
    "id-map (the authors' img_id_map*.pkl), tsv (key<TAB>img_id lines). Default: the number in "
    "the file name, or the TSV key as an integer.",
)
@click.option(
    "--tsv-columns",
    default="0,1",
    show_default=True,
    callback=_columns,
    metavar="KEY,IMAGE",
    help="0-based columns of the image key and the base64 image, for a TSV input.",
)
@config_option(
    FeatureConfig,
    "backbone",
    metavar="NAME",
    default=None,  # so that --backbone with --model-file is refused; None is the default below
    show_default=False,
    help=f"{_declared_help('backbone')} [default: {default_of(FeatureConfig, 'backbone')}]",
)
@config_option(
    FeatureConfig, "model_file", type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@config_option(FeatureConfig, "weights")
@config_option(FeatureConfig, "grid")
@config_option(FeatureConfig, "image_size")
@config_option(FeatureConfig, "resize")
@config_option(FeatureConfig, "batch_size")
@config_option(FeatureConfig, "workers")
@config_option(FeatureConfig, "device", metavar="auto|cpu|cuda[:N]")
@config_option(FeatureConfig, "precision")
@config_option(FeatureConfig, "dtype")
@config_option(FeatureConfig, "on_error")
@config_option(FeatureConfig, "resume")
@config_option(FeatureConfig, "max_batches")
@config_option(FeatureConfig, "force")
@quiet_option
def features_command(
    images: Path,
    out: Path,
    ids_path: Path | None,
    ids_from: tuple[str, Path] | None,
    tsv_columns: tuple[int, int],
    backbone: str | None,
    model_file: Path | None,
    weights: str,
    grid: int,
    image_size: int,
    resize: int | None,
    batch_size: int,
    workers: int | None,
    device: str,
    precision: str,
    dtype: str,
    on_error: str,
    resume: bool,
    max_batches: int | None,
    force: bool,
    quiet: bool,
) -> None:
    """Extract grid features of IMAGES (a folder of images, or a TSV of key<TAB>base64 image)
    into --out, with the img_id of each row beside it.

    An interrupted run continues where it stopped when run again with the same options.

    Under torchrun (python -m torch.distributed.run --nproc_per_node N -m amc_data features ...)
    each process extracts a shard of the images into the same --out, on its own GPU; rank 0
    reports. The result is the same file as one process would write.
    """
    from amc_data.featurizing.core import extract_features  # torch loads here
    from amc_data.featurizing.shards import OtherRankFailed, ranks_from_env

    if backbone is not None and model_file is not None:
        raise click.UsageError("Give --backbone or --model-file, not both.")
    main = ranks_from_env().is_main  # under torchrun, rank 0 alone draws and reports
    config = FeatureConfig(
        backbone=backbone or default_of(FeatureConfig, "backbone"),
        model_file=model_file,
        weights=weights,  # type: ignore[arg-type]
        grid=grid,
        image_size=image_size,
        resize=resize,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,  # type: ignore[arg-type]
        dtype=dtype,  # type: ignore[arg-type]
        id_source=ids_from[0] if ids_from else "name",  # type: ignore[arg-type]
        id_file=ids_from[1] if ids_from else None,
        tsv_columns=tsv_columns,
        on_error=on_error,  # type: ignore[arg-type]
        resume=resume,
        force=force,
        max_batches=max_batches,
        progress=progress_enabled(quiet) and main,
    )
    try:
        result = extract_features(images, out, ids=ids_path, config=config)
    except OtherRankFailed:
        # The rank that failed has printed why; saying it again from every rank adds nothing.
        raise click.exceptions.Exit(1) from None
    if not quiet and main:  # under torchrun, rank 0 reports
        _report(result)


def _report(result: FeatureResult) -> None:
    if result.up_to_date:
        click.echo(
            f"{result.features} is up to date with these images and options; nothing to do "
            "(--force extracts again)."
        )
        return
    rows, cells, dim = result.shape
    if not result.complete:
        click.echo(
            f"Stopped as asked with {rows:,} rows in {result.features}.partial; run the same "
            "command again to continue."
        )
        return
    click.echo(f"Wrote {result.features} ({rows:,} x {cells} x {dim}) and {result.ids}")
    click.echo(f"  backbone: {result.backbone.get('name')} on {result.device} ({result.precision})")
    if result.resumed_from:
        click.echo(f"  resumed after {result.resumed_from:,} images done by an earlier run")
    if result.skipped:
        click.echo(f"  {len(result.skipped):,} image(s) skipped; each is listed in {result.report}")
    click.echo(f"  time: {result.seconds:.1f} s ({result.images_per_second:.1f} images/s)")


COMMANDS: list[click.Command] = [features_command]


@click.command("clip-scores")
@click.argument("data", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--features",
    "features_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Features written by `amc-data features --backbone open_clip:...` (.npy): its report "
    "names the model, its _pooled.npy holds each image's embedding.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Scores file to write (Parquet: query_id, img_id, score, label), for eval --scores.",
)
@config_option(ClipScoresConfig, "split")
@config_option(ClipScoresConfig, "template")
@config_option(ClipScoresConfig, "keep")
@config_option(ClipScoresConfig, "batch_size")
@config_option(ClipScoresConfig, "device", metavar="auto|cpu|cuda[:N]")
@quiet_option
def clip_scores_command(
    data: Path, features_path: Path, out: Path, quiet: bool, **options: Any
) -> None:
    """Zero-shot CLIP ranker: score DATA's queries against their candidate images by the cosine
    of the query's CLIP text embedding and the image's pooled CLIP embedding, into a scores file
    that `amc-data eval --scores` reads (a row beside AMC's)."""
    from amc_data.featurizing.clip_scores import clip_scores

    result = clip_scores(data, features_path, out, ClipScoresConfig(**options))
    if not quiet:
        click.echo(
            f"Wrote {result.out} ({result.pairs:,} pairs of {result.queries:,} queries) with "
            f"{result.model}"
        )


COMMANDS.append(clip_scores_command)
