"""Load the runs, bind the address, and serve the page until Ctrl-C or SIGTERM.

uvicorn handles both signals while it serves (it stops taking requests, finishes those under
way, closes) and raises the signal again once it has stopped, so the caller unwinds as it does
for any interrupted command.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._optional import require
from ..errors import InputError
from .config import MAX_REQUEST_BYTES, ServeConfig
from .pictures import Pictures

log = logging.getLogger(__name__)


def require_server() -> None:
    """The server libraries, or a one-line error saying how to install them."""
    for module in ("starlette", "uvicorn"):
        require(module, "the search page", extra="serve")


def run_name(run: Path) -> str:
    """How the page names a run: its folder's name (a .pt file's stem)."""
    return run.stem if run.is_file() else run.name


def load_state(
    runs: Sequence[str | os.PathLike[str]],
    data: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]] = (),
    config: ServeConfig | None = None,
    **search_options: Any,
) -> Any:
    """The runs over the prepared folder `data`, loaded with their search indexes opened (built
    when missing), and the pictures of its images found in the `images` folders: a
    `app.ServeState`. `search_options` go to each `Searcher` (`split`, `device`, ...)."""
    require_server()
    from ..prepare.format import load_prepared
    from ..ranking.search import Searcher
    from .app import Engine, ServeState

    config = config or ServeConfig()
    prepared = load_prepared(data)
    names = [run_name(Path(run)) for run in runs]
    if len(set(names)) < len(names):
        names = [f"{i + 1}: {name}" for i, name in enumerate(names)]
    engines = []
    for run, name in zip(runs, names, strict=True):
        searcher = Searcher(run, prepared, **search_options)
        searcher.index  # noqa: B018  (opened, or built, now: not on the first query)
        # One query now, so that the first one asked does not pay torch's first call either.
        if prepared.query_vocabulary:
            searcher.search(prepared.query_vocabulary[0], top=1)
        engines.append(Engine(name, searcher))
    pictures = None
    if images:
        for folder in images:
            if not Path(folder).is_dir():
                raise InputError(f"{folder} is not a folder: give --images the pictures' folder.")
        file_names = _file_names(prepared.images)
        if not file_names:
            log.warning(
                "%s records no file name for its images: no picture can be shown", prepared.root
            )
        pictures = Pictures([Path(f) for f in images], file_names)
    return ServeState(engines, pictures, config)


def _file_names(images: Any) -> dict[int, str]:
    if "file_name" not in images.columns:
        return {}
    return {
        int(img_id): name
        for img_id, name in zip(images["img_id"], images["file_name"], strict=True)
        if isinstance(name, str) and name
    }


def bind(config: ServeConfig) -> socket.socket:
    """A listening socket at the config's host and port (port 0: a free one); an `InputError`
    saying what to do when the address is taken or cannot be used."""
    try:
        infos = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise InputError(f"Cannot listen on {config.host}: {exc}. Give another --host.") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise InputError(
            f"Cannot listen on {config.host}:{config.port}: {exc.strerror or exc}. "
            "Give another --port (0: any free one), or stop what uses it."
        ) from exc
    return sock


def url_of(sock: socket.socket) -> str:
    """The page's address on the socket."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve(state: Any, sock: socket.socket) -> None:
    """Serve the page on `sock` until Ctrl-C or SIGTERM (then re-raised: KeyboardInterrupt for
    Ctrl-C, the caller's SIGTERM handler for SIGTERM)."""
    import uvicorn

    from .app import build_app

    server = uvicorn.Server(
        uvicorn.Config(
            build_app(state),
            http="h11",
            lifespan="off",
            log_level="warning",
            h11_max_incomplete_event_size=MAX_REQUEST_BYTES,
            timeout_graceful_shutdown=5,
        )
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
