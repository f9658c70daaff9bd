"""The search page's web application (Starlette): the page, its JSON API and the pictures.

Routes:
- `/` the page (`static/index.html`; `?q=` links are shareable: the page reads them);
- `/static/{name}` its script and style sheet, from the package;
- `/api/info` the runs served, the regions' layout (grid, `features.geometry`), the limits;
- `/api/search?q=&top=&page=&run=` one run's ranking for `q`: the fields of `search --json`
  (`SearchResult.to_dict()`), each hit with every region and keyword weight and where its picture
  is, and how the query was read (`words`, `unknown`, `ignored`);
- `/images/{img_id}/{size}` a prepared image's picture, `thumb` or `large`.

Each run's queries run in that run's own worker thread, one at a time (its `Searcher`, model and
index are shared), so the page, the pictures and the other run keep being served while a query
is scored; the thread is warmed at start (torch's first call in a thread is slow). A query
longer than `MAX_QUERY_CHARS` is refused with 413 and a message; one with no word the run knows
with 400.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import InputError
from ..prepare.queries import query_analyzer
from ..ranking.search_config import MAX_QUERY_CHARS, check_query
from .config import LARGE_PIXELS, MAX_RESULTS, THUMBNAIL_PIXELS, ServeConfig
from .pictures import Pictures, crop_box

if TYPE_CHECKING:
    from ..ranking.search import Searcher

STATIC_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PICTURE_SIZES = {"thumb": THUMBNAIL_PIXELS, "large": LARGE_PIXELS}


@dataclass
class Engine:
    """One run, ready to search, and the one thread its queries run in, in turn."""

    name: str
    searcher: Searcher
    worker: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="amc-search")
    )

    def submit(self, work: Any, *args: Any) -> Future[Any]:
        """`work(*args)` in the run's worker thread."""
        return self.worker.submit(work, *args)


class ServeState:
    """What the application serves: the runs (all over one prepared folder) and its pictures."""

    def __init__(
        self, engines: Sequence[Engine], pictures: Pictures | None, config: ServeConfig
    ) -> None:
        if not engines:
            raise InputError("serve needs at least one run.")
        self.engines = list(engines)
        self.pictures = pictures if pictures else None
        self.config = config
        prepared = self.engines[0].searcher.prepared
        self.geometry: Mapping[str, int] | None = prepared.info.get("features", {}).get("geometry")
        self.regions = int(prepared.features.shape[1]) if prepared.features.ndim == 3 else 1
        side = math.isqrt(self.regions)
        self.grid = side if side > 1 and side * side == self.regions else None
        self.vocabulary = frozenset(prepared.query_vocabulary)
        self._sizes: dict[int, tuple[int, int] | None] = {}

    def info(self) -> dict[str, Any]:
        searcher = self.engines[0].searcher
        return {
            "runs": [engine.name for engine in self.engines],
            "split": searcher.split,
            "images": int(searcher.img_ids.size),
            "top": self.config.top,
            "max_top": MAX_RESULTS,
            "max_query_chars": MAX_QUERY_CHARS,
            "regions": self.regions,
            "grid": self.grid,
            "geometry": dict(self.geometry) if self.geometry else None,
            "pictures": self.pictures is not None,
        }

    def search(self, run: int, text: str, top: int, page: int) -> dict[str, Any]:
        """Page `page` (from 1) of `top` results of run `run` for `text`, as the API sends it."""
        engine = self.engines[run]
        reading = self.reading(text)
        result = engine.searcher.search(text, top=top * page)  # in the engine's worker thread
        shown = result.to_dict()
        hits = result.hits[top * (page - 1) :]
        shown["results"] = [self._hit(hit) for hit in hits]
        shown.update(run=engine.name, page=page, top=top, ignored=reading["ignored"])
        return shown

    def reading(self, text: str) -> dict[str, list[str]]:
        """How the query's words are read: `words` the run knows (those it reads), `unknown`
        (not in its vocabulary) and `ignored` (dropped by the analyzer, such as stop words, or
        known words past the first 32)."""
        from ..ranking.search import MAX_QUERY_TOKENS  # loaded already: the runs are

        analyze = query_analyzer()
        tokens = analyze(text)
        known = [t for t in tokens if t in self.vocabulary]
        unknown = list(dict.fromkeys(t for t in tokens if t not in self.vocabulary))
        dropped = [word for word in text.split() if not analyze(word)]
        read = set(known[:MAX_QUERY_TOKENS])
        past = [t for t in known[MAX_QUERY_TOKENS:] if t not in read]
        ignored = list(dict.fromkeys([*dropped, *past]))
        return {"words": known[:MAX_QUERY_TOKENS], "unknown": unknown, "ignored": ignored}

    def _hit(self, hit: Any) -> dict[str, Any]:
        shown: dict[str, Any] = hit.to_dict(every_weight=True)
        shown["picture"] = self._picture(hit.img_id)
        return shown

    def _picture(self, img_id: int) -> dict[str, Any] | None:
        """Where the hit's picture is served, and the features' crop on it, when it has one."""
        if self.pictures is None:
            return None
        size = self._size(img_id)
        if size is None:
            return None
        return {
            "thumb": f"/images/{img_id}/thumb",
            "large": f"/images/{img_id}/large",
            "width": size[0],
            "height": size[1],
            "crop": crop_box(size[0], size[1], self.geometry) if self.geometry else None,
        }

    def _size(self, img_id: int) -> tuple[int, int] | None:
        if img_id not in self._sizes:
            assert self.pictures is not None
            found = self.pictures.picture(img_id, THUMBNAIL_PIXELS)
            self._sizes[img_id] = None if found is None else (found.width, found.height)
        return self._sizes[img_id]


def _error(message: str, status: int, **more: Any) -> JSONResponse:
    return JSONResponse({"error": message, **more}, status_code=status)


def _whole_number(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InputError(f"{name} must be a whole number, not {raw[:20]!r}.") from None
    if not low <= value <= high:
        raise InputError(f"{name} must be from {low} to {high}, not {value}.")
    return value


def build_app(state: ServeState) -> Starlette:
    """The application serving `state`."""

    async def page(request: Request) -> Response:
        html = resources.files(__package__).joinpath("static", "index.html").read_bytes()
        return Response(html, media_type="text/html; charset=utf-8")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC_FILES:  # only the package's own files, by their exact names
            return _error(f"No static file {name[:40]!r}.", 404)
        data = resources.files(__package__).joinpath("static", name).read_bytes()
        return Response(data, media_type=STATIC_FILES[name])

    async def info(request: Request) -> Response:
        return JSONResponse(state.info())

    async def api_search(request: Request) -> Response:
        text = request.query_params.get("q", "")
        try:
            check_query(text)  # the one length limit of every search, and its message
        except InputError as exc:
            return _error(str(exc), 413)
        try:
            run = _whole_number(request, "run", 0, 0, len(state.engines) - 1)
            top = _whole_number(request, "top", state.config.top, 1, MAX_RESULTS)
            page_number = _whole_number(request, "page", 1, 1, MAX_RESULTS)
            if top * page_number > MAX_RESULTS:
                raise InputError(
                    f"top x page may be at most {MAX_RESULTS:,}, not {top * page_number:,}."
                )
            work = state.engines[run].submit(state.search, run, text, top, page_number)
            return JSONResponse(await asyncio.wrap_future(work))
        except InputError as exc:
            return _error(str(exc), 400, **state.reading(text))

    async def picture(request: Request) -> Response:
        img_id, size = request.path_params["img_id"], request.path_params["size"]
        longest = PICTURE_SIZES.get(size)
        if state.pictures is None or longest is None:
            return _error("No such picture.", 404)
        found = await run_in_threadpool(state.pictures.picture, img_id, longest)
        if found is None:
            return _error(f"No picture of image {img_id}.", 404)
        headers = {"Cache-Control": "max-age=3600"}
        return Response(found.data, media_type=found.media_type, headers=headers)

    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/info", info),
        Route("/api/search", api_search),
        Route("/images/{img_id:int}/{size}", picture),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 404)
        return _error("Not found." if status == 404 else "Only GET is served here.", status)

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
