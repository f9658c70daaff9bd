"""`amc-data prepare coco` and `amc-data prepare clickture`."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from .options import data_dir_option, on_error_option, quiet_option

if TYPE_CHECKING:
    from amc_data.prepare.common import PrepareResult

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


def _columns(
    _ctx: click.Context, _param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(","))


@dataclass(frozen=True)
class _Shared:
    """The options every `prepare` subcommand takes, as one value."""

    data_dir: str | None
    out: Path | None
    encoded: Path | None
    features: Path
    feature_ids: Path
    missing: str
    on_error: str
    min_query_count: int
    force: bool
    quiet: bool


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
    click.option(
        "--features",
        type=_FILE,
        required=True,
        help="Features .npy, (N, R, D) or (N, D), float16/float32.",
    ),
    click.option(
        "--feature-ids",
        type=_FILE,
        required=True,
        help="The image id of each feature row, an int .npy of shape (N,).",
    ),
    click.option(
        "--missing",
        type=click.Choice(["fail", "skip"]),
        default="fail",
        show_default=True,
        help="Images without features: stop, or leave them (and their queries) out.",
    ),
    on_error_option(
        "Bad input lines or entries: stop (write nothing), or leave them out and record them "
        "in prepared.json."
    ),
    click.option(
        "--min-query-count",
        type=click.IntRange(min=1),
        default=4,
        show_default=True,
        help="Keep a query word seen at least this often in the train queries.",
    ),
    click.option(
        "--force",
        is_flag=True,
        help="Replace an existing prepared folder (never anything else).",
    ),
    quiet_option,
]


def _shared_options(func: Callable[..., None]) -> Callable[..., None]:
    """Add the shared options to a subcommand, which receives them as one `_Shared` (its first
    argument) beside its own options."""

    @functools.wraps(func)
    def command(**kwargs: Any) -> None:
        shared = _Shared(**{name: kwargs.pop(name) for name in _Shared.__dataclass_fields__})
        func(shared, **kwargs)

    for option in reversed(_SHARED_OPTIONS):
        command = option(command)
    return command


@click.group("prepare")
def prepare_group() -> None:
    """Build a prepared dataset folder (features, keywords, queries, judgments) that `train` and
    `eval` read: `prepare coco` or `prepare clickture`."""


@prepare_group.command("coco")
@_shared_options
@click.option(
    "--restval",
    type=click.Choice(["train", "val", "drop"]),
    default="train",
    show_default=True,
    help="Where Karpathy's restval images go.",
)
@click.option(
    "--feature-id-kind",
    type=click.Choice(["imgid", "cocoid"]),
    default="imgid",
    show_default=True,
    help="What --feature-ids hold: Karpathy's imgid, or the COCO image id (cocoid).",
)
@click.option(
    "--dataset-json",
    type=_FILE,
    default=None,
    help="Karpathy's dataset.json (default: the one inside keywords_coco.zip).",
)
@click.option("--captions-per-image", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--fold-size",
    type=click.IntRange(min=1),
    default=1000,
    show_default=True,
    help="Test images per fold (the 1K protocol).",
)
@click.option(
    "--copy-features", is_flag=True, help="Copy the features even when the file could be linked."
)
def coco_command(
    shared: _Shared,
    restval: str,
    feature_id_kind: str,
    dataset_json: Path | None,
    captions_per_image: int,
    fold_size: int,
    copy_features: bool,
) -> None:
    """MSCOCO caption ranking (Karpathy split): captions are the queries, each judged on its
    own image; test images in folds of 1,000.

    Reads Karpathy's dataset.json from <data-dir>/coco/keywords_coco.zip (as encode does), the
    keywords from the encode output, and your features. A features file whose every row is used,
    in order, is hard-linked (else symbolically linked) into the folder, not copied.
    """
    from amc_data.prepare.coco import CocoConfig, prepare_coco

    config = CocoConfig(
        restval=restval,  # type: ignore[arg-type]
        missing=shared.missing,  # type: ignore[arg-type]
        on_error=shared.on_error,  # type: ignore[arg-type]
        captions_per_image=captions_per_image,
        fold_size=fold_size,
        min_query_count=shared.min_query_count,
        feature_id_kind=feature_id_kind,  # type: ignore[arg-type]
        link_features=not copy_features,
        force=shared.force,
    )
    result = prepare_coco(
        shared.features,
        shared.feature_ids,
        shared.out,
        data_dir=shared.data_dir,
        encoded=shared.encoded,
        dataset_json=dataset_json,
        config=config,
    )
    if not shared.quiet:
        report_prepared(result)


@prepare_group.command("clickture")
@click.option(
    "--clicks",
    type=_FILE,
    required=True,
    help="The click log (Clickture-Lite): TSV of query, image key, click count.",
)
@click.option(
    "--dev-labels",
    type=_FILE,
    required=True,
    help="The dev judgments: TSV of query, image key, Excellent/Good/Bad.",
)
@_shared_options
@click.option("--dev-features", type=_FILE, required=True, help="Features of the dev images.")
@click.option("--dev-feature-ids", type=_FILE, required=True, help="Their image ids.")
@click.option(
    "--id-map",
    type=_FILE,
    default=None,
    help="Lite key -> id: img_id_map.pkl or a key<TAB>id TSV "
    "(default <data-dir>/clickture/img_id_map.pkl).",
)
@click.option(
    "--dev-id-map",
    type=_FILE,
    default=None,
    help="Dev key -> id (default <data-dir>/clickture/img_id_map_dev.pkl).",
)
@click.option(
    "--clicks-columns",
    callback=_columns,
    default="query,key,clicks",
    show_default=True,
    help="The click log's columns in file order; '-' skips a column.",
)
@click.option(
    "--labels-columns",
    callback=_columns,
    default="query,key,grade",
    show_default=True,
    help="The dev judgments' columns in file order; '-' skips a column.",
)
@click.option("--clicks-header", is_flag=True, help="The click log's first line is a header.")
@click.option("--labels-header", is_flag=True, help="The dev judgments' first line is a header.")
@click.option(
    "--encoding", default="utf-8", show_default=True, help="Text encoding of both TSV files."
)
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=0.5,
    show_default=True,
    help="Share of the dev queries that go to val.",
)
@click.option(
    "--split-seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the val/test split of the dev queries.",
)
def clickture_command(
    shared: _Shared,
    clicks: Path,
    dev_labels: Path,
    dev_features: Path,
    dev_feature_ids: Path,
    id_map: Path | None,
    dev_id_map: Path | None,
    clicks_columns: tuple[str, ...],
    labels_columns: tuple[str, ...],
    clicks_header: bool,
    labels_header: bool,
    encoding: str,
    val_fraction: float,
    split_seed: int,
) -> None:
    """Clickture: train on the Lite click log (label = clicks), validate and test on the dev
    judgments (Excellent 3, Good 2, Bad 0), dev queries split val/test by a seeded hash.

    --features/--feature-ids are the Lite images', --dev-features/--dev-feature-ids the dev
    images', each with the ids of the id maps. Dev images get img_id 1,000,000,000 + id in the
    prepared folder (Lite and dev ids overlap); images.parquet keeps source and source_id.
    """
    from amc_data.prepare.clickture import ClicktureConfig, TsvLayout, prepare_clickture

    config = ClicktureConfig(
        clicks_layout=TsvLayout(clicks_columns, clicks_header, encoding),
        labels_layout=TsvLayout(labels_columns, labels_header, encoding),
        val_fraction=val_fraction,
        split_seed=split_seed,
        min_query_count=shared.min_query_count,
        on_error=shared.on_error,  # type: ignore[arg-type]
        missing=shared.missing,  # type: ignore[arg-type]
        force=shared.force,
    )
    result = prepare_clickture(
        clicks,
        dev_labels,
        features=shared.features,
        feature_ids=shared.feature_ids,
        dev_features=dev_features,
        dev_feature_ids=dev_feature_ids,
        out=shared.out,
        data_dir=shared.data_dir,
        encoded=shared.encoded,
        id_map=id_map,
        dev_id_map=dev_id_map,
        config=config,
    )
    if not shared.quiet:
        report_prepared(result)


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
    for kind, entry in result.skipped.items():
        examples = ", ".join(str(e) for e in entry["examples"])
        click.echo(
            f"  left out: {entry['count']:,} {kind}" + (f" (e.g. {examples})" if examples else "")
        )
    for note in result.notes:
        click.echo(f"  note: {note}")


COMMANDS: list[click.Command] = [prepare_group]
