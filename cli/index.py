"""`amc-data index`: build a trained run's search index over a prepared folder's images."""

from __future__ import annotations

from pathlib import Path

import click

from amc_data._optional import require
from amc_data.ranking.search_config import SearchConfig

from .options import config_option


@click.command("index")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--data",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The prepared folder whose images to index (the one the run was trained on).",
)
@config_option(SearchConfig, "split")
@click.option(
    "--dtype",
    type=click.Choice(["float16", "float32"]),
    default="float16",
    show_default=True,
    help="How the regions' keys and values are stored (float16: half the size; scores "
    "within about 1e-3 of float32's).",
)
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
def index_command(run: Path, data: Path, split: str, dtype: str, quiet: bool) -> None:
    """Build RUN's search index of DATA's images (RUN/index-SPLIT/), or say it is up to date:
    every image's projected regions and keywords, from best.pt, for `amc-data search`. A stale
    index (another checkpoint, features, vocabularies or split) is rebuilt."""
    require("torch")
    from amc_data.ranking.index import build_index, expected_identity, index_folder, open_index
    from amc_data.ranking.search import Searcher

    searcher = Searcher(run, data, SearchConfig(split=split, exact=True))  # type: ignore[arg-type]
    folder = index_folder(run, split)
    manifest_dtype = None
    if (folder / "manifest.json").is_file():
        import json

        manifest_dtype = json.loads((folder / "manifest.json").read_text()).get("dtype")
    if manifest_dtype not in (None, dtype):
        identity = expected_identity(run, searcher.prepared, searcher.img_ids)
        build_index(
            run,
            searcher.prepared,
            split,
            searcher.img_ids,
            searcher.loaded.model,
            identity,
            searcher.max_keywords,
            dtype,
            progress=not quiet,
        )
    index = open_index(
        run,
        searcher.prepared,
        split,
        searcher.img_ids,
        searcher.loaded.model,
        max_keywords=searcher.max_keywords,
        dtype=dtype,
        progress=not quiet,
    )
    size = sum(p.stat().st_size for p in index.folder.iterdir())
    click.echo(
        f"{index.folder}: {len(index):,} images, {size / 1e6:,.1f} MB "
        f"({index.manifest['dtype']}), built in {index.manifest['build_seconds']} s"
    )


COMMANDS = [index_command]
