"""`amc-data serve`: a search page over one run (or two, side by side), in a browser."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from amc_data._optional import require
from amc_data.ranking.search_config import SearchConfig
from amc_data.serving.config import ServeConfig

from .options import config_option


@click.command("serve")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--data",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    required=True,
    help="The prepared folder whose images to rank (the one the runs were trained on).",
)
@click.option(
    "--images",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="A folder holding the pictures under the file names the prepared folder records "
    "(COCO's train2014/ or val2014/, any folder); repeat it for several. Only the prepared "
    "folder's pictures are served from it.",
)
@config_option(ServeConfig, "host")
@config_option(ServeConfig, "port")
@config_option(ServeConfig, "top")
@config_option(SearchConfig, "split")
@config_option(SearchConfig, "device")
def serve_command(
    runs: tuple[Path, ...],
    data: Path,
    images: tuple[Path, ...],
    host: str,
    port: int,
    top: int,
    split: str,
    device: str,
) -> None:
    """Serve a search page for RUNS (one run, or two shown side by side for each query, such as
    AMC and a baseline) over the images of DATA: the ranked images with what the model looked
    at, and a JSON API (/api/search?q=...). Ctrl-C stops it."""
    if len(runs) > 2:
        raise click.UsageError(f"serve shows one run or two side by side, not {len(runs)}.")
    config = ServeConfig(host=host, port=port, top=top)
    search_config = SearchConfig(split=split, device=device)  # type: ignore[arg-type]
    require("torch", "the search page")
    from amc_data.serving.server import bind, load_state, serve, url_of

    sock = bind(config)  # first: a port in use is told at once, not after the loading
    try:
        state = load_state(
            runs,
            data,
            images,
            config,
            split=search_config.split,
            device=search_config.device,
        )
    except BaseException:
        sock.close()
        raise
    click.echo(f"Serving {', '.join(str(r) for r in runs)} at {url_of(sock)} (Ctrl-C stops)")
    sys.stdout.flush()  # the address reaches a pipe (a script waiting for it) at once
    if images and state.pictures is None:
        click.echo(f"No picture to show: {data} records no file name for its images.", err=True)
    serve(state, sock)


COMMANDS = [serve_command]
