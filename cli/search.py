"""`amc-data search`: rank a split's images for a free-text query with a trained run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from amc_data._optional import require
from amc_data.ranking.search_config import SearchConfig, check_query

from .options import config_option
from .tables import text_table

if TYPE_CHECKING:
    from amc_data.ranking.search import SearchHit, SearchResult


@click.command("search")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.argument("query", nargs=-1, required=True)
@click.option(
    "--data",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The prepared folder whose images to rank (the one the run was trained on).",
)
@config_option(SearchConfig, "split")
@config_option(SearchConfig, "top")
@config_option(SearchConfig, "device")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print a JSON list of the results (rank, img_id, score, modality_weights, keywords, "
    "regions) instead of a table.",
)
@click.option(
    "--quiet", "-q", is_flag=True, help="No notes on stderr (unknown words); the results still."
)
def search_command(
    run: Path,
    query: tuple[str, ...],
    data: Path,
    split: str,
    top: int,
    device: str,
    as_json: bool,
    quiet: bool,
) -> None:
    """Rank the images of DATA for QUERY (free text; several words need no quotes) with RUN (a
    run folder's best.pt, or a .pt file), showing what the model attended to."""
    text = check_query(" ".join(query))  # a query too long is refused before torch loads
    require("torch")
    from amc_data.prepare.format import shown_ids
    from amc_data.ranking.search import search

    config = SearchConfig(split=split, top=top, device=device)  # type: ignore[arg-type]
    result = search(run, data, text, config)
    if result.unknown and not quiet:
        click.echo(
            f"Unknown query word(s) ignored (not in the run's query vocabulary): "
            f"{shown_ids(result.unknown, len(result.unknown))}",
            err=True,
        )
    if as_json:
        click.echo(json.dumps([hit.to_dict() for hit in result.hits], indent=2))
        return
    click.echo(
        f"{len(result.hits)} best of {result.images} {result.split} images for "
        f"{' '.join(result.words)!r}:"
    )
    click.echo(_table(result))


def _table(result: SearchResult) -> str:
    header = ["rank", "img_id", "score", "visual", "keyword", "keywords (attention)", "regions"]
    rows = [
        [
            str(hit.rank),
            str(hit.img_id),
            f"{hit.score:.4f}",
            _weight(hit.visual_weight),
            _weight(hit.keyword_weight),
            ", ".join(f"{k.word} {k.weight:.2f}" for k in hit.keywords) or "-",
            _regions(hit),
        ]
        for hit in result.hits
    ]
    return text_table(header, rows)


def _weight(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _regions(hit: SearchHit) -> str:
    cells = []
    for region in hit.regions:
        where = f"({region.row},{region.col})" if region.row is not None else f"#{region.region}"
        cells.append(f"{where} {region.weight:.2f}")
    return ", ".join(cells) or "-"


COMMANDS = [search_command]
