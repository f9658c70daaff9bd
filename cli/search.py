"""`amc-data search`: rank a split's images for a free-text query (or a file of queries) with a
trained run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from amc_data._optional import require
from amc_data.errors import InputError
from amc_data.ranking.search_config import SearchConfig, check_query

from .options import config_option
from .tables import text_table

if TYPE_CHECKING:
    from amc_data.ranking.search import SearchHit, SearchResult


@click.command("search")
@click.argument("run", type=click.Path(exists=True, path_type=Path))
@click.argument("query", nargs=-1, required=False)
@click.option(
    "--data",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The prepared folder whose images to rank (the one the run was trained on).",
)
@config_option(SearchConfig, "split")
@config_option(SearchConfig, "top")
@config_option(SearchConfig, "device")
@config_option(SearchConfig, "exact")
@config_option(SearchConfig, "shortlist")
@config_option(SearchConfig, "shortlist_index")
@config_option(SearchConfig, "threads", metavar="N")
@config_option(SearchConfig, "compile")
@click.option(
    "--queries",
    "queries_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Rank every query of this file instead of QUERY: one query a line, or "
    "`query_id<TAB>text` (without an id, the line number is the id). Prints a ranked list "
    "(query_id, rank, img_id, score[, file_name]) as TSV.",
)
@click.option(
    "--trec",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --queries: write a TREC run file here instead (qid Q0 docid rank score "
    "run_name; score descending, ties by lower img_id).",
)
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
    exact: bool,
    shortlist: int,
    shortlist_index: str,
    threads: int,
    compile: str,
    queries_file: Path | None,
    trec: Path | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Rank the images of DATA for QUERY (free text; several words need no quotes) with RUN (a
    run folder's best.pt, or a .pt file), showing what the model attended to. The images are
    scored from the run's search index (built on first use; see `amc-data index`)."""
    if (queries_file is None) == (not query):
        raise click.UsageError("Give either QUERY or --queries FILE.")
    if trec is not None and queries_file is None:
        raise click.UsageError("--trec writes the ranking of --queries FILE; give that file.")
    if as_json and queries_file is not None:
        raise click.UsageError(
            "--json shows one query's ranking; with --queries, write TSV or --trec."
        )
    config = SearchConfig(
        split=split,  # type: ignore[arg-type]
        top=top,
        device=device,  # type: ignore[arg-type]
        exact=exact,
        shortlist=shortlist,
        shortlist_index=shortlist_index,  # type: ignore[arg-type]
        threads=threads,
        compile=compile,  # type: ignore[arg-type]
    )
    if queries_file is not None:
        _batch(run, data, config, queries_file, trec, quiet)
        return
    text = check_query(" ".join(query))  # a query too long is refused before torch loads
    require("torch")
    from amc_data.prepare.format import shown_ids
    from amc_data.ranking.search import search

    result = search(run, data, text, config, progress=_bar(quiet))
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


def _bar(quiet: bool) -> bool:
    """A progress bar while the index is built: on a terminal, unless --quiet."""
    return not quiet and sys.stderr.isatty()


def read_queries(path: Path) -> list[tuple[str, str]]:
    """(query_id, text) of each non-empty line of `path`: `query_id<TAB>text`, or the text
    alone (its line number is its id)."""
    queries = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{path} is not UTF-8 text (byte {exc.start}): write the queries as UTF-8, one a "
            "line (or query_id<TAB>text)."
        ) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        query_id, tab, text = line.partition("\t")
        if not tab:
            query_id, text = str(number), line
        if not query_id.strip() or any(c.isspace() for c in query_id.strip()):
            raise click.UsageError(
                f"{path} line {number}: the query id {query_id!r} is empty or has spaces; "
                "write `query_id<TAB>text` or the text alone."
            )
        queries.append((query_id.strip(), check_query(text)))
    return queries


def _batch(
    run: Path, data: Path, config: SearchConfig, path: Path, trec: Path | None, quiet: bool
) -> None:
    queries = read_queries(path)
    require("torch")
    from amc_data.errors import InputError
    from amc_data.files import atomic_write_bytes
    from amc_data.ranking.search import Searcher

    searcher = Searcher(run, data, config, progress=_bar(quiet))
    readable = []
    for query_id, text in queries:
        try:
            searcher.read_query(text)
        except InputError as exc:
            if not quiet:
                click.echo(f"Query {query_id} skipped: {exc}", err=True)
            continue
        readable.append((query_id, text))
    results = searcher.search_many([text for _, text in readable])
    name = run.stem if run.is_file() else run.name
    lines = []
    named = any(hit.file_name is not None for result in results for hit in result.hits)
    for (query_id, _), result in zip(readable, results, strict=True):
        for hit in result.hits:
            if trec is not None:
                lines.append(f"{query_id} Q0 {hit.img_id} {hit.rank} {hit.score:.6f} {name}")
            else:
                tail = f"\t{hit.file_name or '-'}" if named else ""
                lines.append(f"{query_id}\t{hit.rank}\t{hit.img_id}\t{hit.score:.6f}{tail}")
    if trec is not None:
        atomic_write_bytes(trec, "".join(f"{line}\n" for line in lines).encode("utf-8"))
        if not quiet:
            click.echo(f"Wrote {len(lines)} lines for {len(readable)} queries to {trec}", err=True)
        return
    header = "query_id\trank\timg_id\tscore" + ("\tfile_name" if named else "")
    click.echo("\n".join([header, *lines]))


def _table(result: SearchResult) -> str:
    named = any(hit.file_name is not None for hit in result.hits)
    header = ["rank", "img_id", *(["file_name"] if named else [])]
    header += ["score", "visual", "keyword", "keywords (attention)", "regions"]
    rows = [
        [
            str(hit.rank),
            str(hit.img_id),
            *([hit.file_name or "-"] if named else []),
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
