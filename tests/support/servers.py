"""A real HTTP server on 127.0.0.1 for the tests, with scriptable misbehaviour per route.

Each route serves bytes with a strong ETag (a hash of its current bytes, so changing the data
changes it) and can, on chosen requests, fail with a status (and a reason phrase of its choice),
redirect, ignore `Range` or `If-Range`, answer a 206 that starts at the wrong byte or holds only a
piece of the file, drop the connection after some bytes, send a close-delimited or compressed
body, send its first bytes in tiny separate pieces, serve an HTML page, serve other bytes on chosen
requests (a file that changes between two answers), or hold its body back (after some bytes)
until the test releases it. The server counts requests and body bytes sent per
route, and keeps the `Range` and `If-Range` of each request, so a test can check what a resume
asked for and re-sent.

It also fakes the three Google Drive pages amc-data meets: a folder's `embeddedfolderview`
listing, the "virus scan" confirmation form, and the quota-exceeded page.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit


@dataclass
class Route:
    """What one path serves, and how it misbehaves.

    Request numbers count from 1. `fail` maps request numbers to an error status; `drop_after`
    maps request numbers to the body bytes sent before the connection is cut (the announced
    Content-Length stays the full one); `data_for` maps request numbers to the bytes served then
    instead of `data` (its ETag follows the bytes served).
    """

    data: bytes
    content_type: str = "application/octet-stream"
    status: int | None = None  # always answer this status (e.g. 404) with a tiny body
    reason: str | None = None  # the reason phrase sent with `status` / `fail` statuses
    fail: dict[int, int] = field(default_factory=dict)
    drop_after: dict[int, int] = field(default_factory=dict)
    data_for: dict[int, bytes] = field(default_factory=dict)
    ranges: str = "honour"  # "honour", "ignore" (always 200), "wrong-start" (206 from byte 0)
    etag: bool = True  # send a strong ETag derived from the current data
    last_modified: str | None = None  # send this Last-Modified
    if_range: str = "honour"  # "honour" (a stale If-Range gets the whole file) or "ignore"
    piece: int | None = None  # answer with a 206 of at most this many bytes, asked or not
    redirect: str | None = None  # answer 302 to this URL (or path on this server)
    content_encoding: str | None = None  # "gzip": the body is gzip-compressed; others: as is
    close_delimited: bool = False  # no Content-Length; the end of the body is the closed socket
    segments: tuple[int, ...] = ()  # sizes of the body's first writes, each sent on its own
    chunk_delay: float = 0.0  # seconds between 64 KiB pieces, to make downloads slow
    hold: threading.Event | None = None  # the body waits for this event (30 s at most) ...
    hold_after: int = 0  # ... after sending this many of its bytes
    holding: threading.Event = field(default_factory=threading.Event)  # set while it waits
    requests: int = 0
    bytes_sent: int = 0
    ranges_asked: list[str | None] = field(default_factory=list)
    if_ranges: list[str | None] = field(default_factory=list)

    def current_etag(self, data: bytes | None = None) -> str:
        """The strong ETag of the bytes served now (or of `data`)."""
        return '"' + hashlib.sha1(self.data if data is None else data).hexdigest()[:16] + '"'


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        # Clients hanging up mid-body is what several tests do on purpose.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


class FakeServer:
    """The routes and the running server. Add routes with `add`; build URLs with `url`."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.lock = threading.Lock()
        self.httpd = _QuietServer(("127.0.0.1", 0), _Handler)
        self.httpd.fake = self  # type: ignore[attr-defined]
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, key: str, data: bytes = b"", **behaviour: object) -> Route:
        """Serve `data` at `key`: a path, or a path with the query it must match
        (`/uc?id=abc`: a request matches when it carries those parameters)."""
        route = Route(data=data, **behaviour)  # type: ignore[arg-type]
        self.routes[key] = route
        return route

    def url(self, key: str) -> str:
        """The full URL of a route key."""
        return self.origin + key

    def find(self, target: str) -> Route | None:
        """The route a request target matches (exact path, then path plus query subset)."""
        parts = urlsplit(target)
        params = dict(parse_qsl(parts.query))
        for key, route in self.routes.items():
            key_parts = urlsplit(key)
            if key_parts.path != parts.path:
                continue
            wanted = dict(parse_qsl(key_parts.query))
            if all(params.get(k) == v for k, v in wanted.items()):
                return route
        return None

    # ------------------------------------------------------------------ Google Drive fake

    def add_drive_folder(self, folder_id: str, entries: list[tuple[str, str, str]]) -> str:
        """A Drive folder listing; entries are (kind "file"/"folder", id, name). Returns the
        folder URL a manifest would hold."""
        links = []
        for kind, entry_id, name in entries:
            href = (
                f"https://drive.google.com/file/d/{entry_id}/view?usp=drive_web"
                if kind == "file"
                else f"https://drive.google.com/drive/folders/{entry_id}"
            )
            links.append(
                f'<div class="flip-entry" id="entry-{entry_id}"><div class="flip-entry-info">'
                f'<a href="{href}" target="_blank"><div class="flip-entry-list-icon"><img '
                f'src="x.png"></div><div class="flip-entry-title">{name}</div></a></div>'
                '<div class="flip-entry-last-modified"><div>Jan 1, 2017</div></div></div>'
            )
        page = (
            "<!DOCTYPE html><html><head><title>AMC data</title></head><body>"
            f'<div class="flip-entries">{"".join(links)}</div></body></html>'
        )
        self.add(f"/embeddedfolderview?id={folder_id}", page.encode(), **_PAGE)
        return self.url(f"/drive/folders/{folder_id}")

    def add_drive_file(self, file_id: str, data: bytes, *, mode: str = "confirm", **kw: object):
        """A Drive file. mode "direct": `uc` serves the bytes; "confirm": `uc` answers the virus
        scan form whose confirmed URL serves them; "quota": `uc` answers the quota page.
        Returns the route that serves the bytes (None for "quota")."""
        if mode == "direct":
            return self.add(f"/uc?id={file_id}", data, **kw)
        if mode == "quota":
            self.add(f"/uc?id={file_id}", _QUOTA_PAGE.encode(), **_PAGE)
            return None
        form = drive_confirmation_page(f"{self.origin}/download", file_id, "keywords.zip (1.2G)")
        self.add(f"/uc?id={file_id}", form.encode(), **_PAGE)
        return self.add(f"/download?id={file_id}&confirm=t", data, **kw)


_PAGE = {"content_type": "text/html; charset=utf-8", "ranges": "ignore"}  # Drive's pages


def drive_confirmation_page(action: str, file_id: str, label: str) -> str:
    """Drive's "virus scan warning" page as it is served today (2024 layout: a GET form to
    drive.usercontent.google.com with hidden inputs), with `action` as the form's target."""
    return (
        "<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title><meta "
        'http-equiv="content-type" content="text/html; charset=utf-8"/><style nonce="x1">'
        ".goog-inline-block{position:relative;display:-moz-inline-box;display:inline-block}"
        '</style><link rel="icon" href="//ssl.gstatic.com/docs/doclist/images/drive_2022q3_32dp'
        '.png"/></head><body><div class="uc-main"><div id="uc-text"><p class="uc-warning-'
        'caption">Google Drive can&#39;t scan this file for viruses.</p><p class="uc-warning-'
        f'subcaption"><span class="uc-name-size"><a href="/open?id={file_id}">{label}</a></span>'
        " is too large for Google to scan for viruses. Would you still like to download this "
        f'file?</p><form id="download-form" action="{action}" method="get"><input type="submit" '
        'id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action" '
        f'value="Download anyway"/><input type="hidden" name="id" value="{file_id}"><input '
        'type="hidden" name="export" value="download"><input type="hidden" name="confirm" '
        'value="t"><input type="hidden" name="uuid" value="5c3c1b4e-7d2f-4a8e-9b1c-'
        '0a1b2c3d4e5f"></form></div></div><div class="uc-footer"><hr class="uc-footer-divider">'
        "</div></body></html>"
    )


_QUOTA_PAGE = (
    "<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>\n"
    '<div class="uc-main"><p class="uc-error-caption">Sorry, you can\'t view or download this '
    "file at this time.</p>\n"
    '<p class="uc-error-subcaption">Too many users have viewed or downloaded this file recently. '
    "Please try accessing the file again later.</p>\n</div></body></html>"
)
_RANGE = re.compile(r"bytes=(\d+)-$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # the tests' output stays clean
        pass

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        with fake.lock:
            route = fake.find(self.path)
            if route is not None:
                route.requests += 1
                number = route.requests
                route.ranges_asked.append(self.headers.get("Range"))
                route.if_ranges.append(self.headers.get("If-Range"))
        if route is None:
            return self._small(404, b"no such route")
        status = route.status or route.fail.get(number)
        if status:
            return self._small(status, b"scripted failure", reason=route.reason)
        if route.redirect is not None:
            return self._small(302, b"moved", location=route.redirect)
        served = route.data_for.get(number, route.data)
        data = served
        if route.content_encoding == "gzip":
            data = gzip.compress(data)
        start, code = self._range(route, len(data), served)
        if code == 416:
            return self._small(416, b"range not satisfiable", total=len(data))
        end = len(data) if route.piece is None else min(len(data), start + route.piece)
        body = data[start:end]
        self.send_response(code)
        self.send_header("Content-Type", route.content_type)
        self.send_header("Accept-Ranges", "bytes")
        if route.etag:
            self.send_header("ETag", route.current_etag(served))
        if route.last_modified:
            self.send_header("Last-Modified", route.last_modified)
        if route.content_encoding:
            self.send_header("Content-Encoding", route.content_encoding)
        if code == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        if route.close_delimited:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = route.drop_after.get(number)
        self._send_body(route, body if cut is None else body[:cut], fake)
        if cut is not None:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True

    def _range(self, route: Route, size: int, served: bytes) -> tuple[int, int]:
        """(first byte, status) of the answer to this request's Range and If-Range."""
        asked = _RANGE.match(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        stale = if_range is not None and if_range not in (
            route.current_etag(served) if route.etag else None,
            route.last_modified,
        )
        if asked and route.ranges == "honour" and not (stale and route.if_range == "honour"):
            start = int(asked.group(1))
            return (start, 416) if start >= size else (start, 206)
        if asked and route.ranges == "wrong-start":
            return 0, 206  # a 206, but from byte 0 whatever was asked
        return 0, 206 if route.piece is not None else 200

    def _send_body(self, route: Route, body: bytes, fake: FakeServer) -> None:
        pieces = []
        offset = 0
        for size in route.segments:  # the first writes, each flushed on its own
            pieces.append((body[offset : offset + size], True))
            offset += size
        step = 64 * 1024
        pieces += [(body[at : at + step], False) for at in range(offset, len(body), step)]
        sent = 0
        for piece, alone in pieces:
            if route.hold is not None and sent <= route.hold_after < sent + len(piece):
                split = route.hold_after - sent
                if not self._write(route, piece[:split], fake):
                    return
                sent += split
                piece = piece[split:]
                self._wait(route)
            if not self._write(route, piece, fake):
                return
            sent += len(piece)
            if alone:
                self.wfile.flush()
                time.sleep(0.05)  # lets the client read this piece before the next arrives
            if route.chunk_delay:
                time.sleep(route.chunk_delay)
        if route.hold is not None and sent <= route.hold_after:
            self._wait(route)

    def _write(self, route: Route, piece: bytes, fake: FakeServer) -> bool:
        try:
            self.wfile.write(piece)
        except OSError:  # the client went away
            return False
        with fake.lock:
            route.bytes_sent += len(piece)
        return True

    def _wait(self, route: Route) -> None:
        self.wfile.flush()
        route.holding.set()
        assert route.hold is not None
        route.hold.wait(30)

    def _small(
        self,
        code: int,
        body: bytes,
        total: int | None = None,
        reason: str | None = None,
        location: str | None = None,
    ) -> None:
        self.send_response(code, reason)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        if total is not None:
            self.send_header("Content-Range", f"bytes */{total}")
        if location is not None:
            self.send_header("Location", location)
        self.end_headers()
        self.wfile.write(body)


@contextmanager
def serve() -> Iterator[FakeServer]:
    """Run a FakeServer in a thread for the length of the block."""
    fake = FakeServer()
    thread = threading.Thread(target=fake.httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.httpd.shutdown()
        fake.httpd.server_close()
        thread.join(timeout=5)


def write_manifest(path: Path, name: str, files: list[dict[str, object]]) -> Path:
    """Write a manifest TOML for the tests; each file is a dict of manifest keys."""
    lines = [f'name = "{name}"']
    for entry in files:
        lines.append("[[files]]")
        for key, value in entry.items():
            if isinstance(value, list | tuple):
                items = ", ".join(f'"{item}"' for item in value)
                lines.append(f"{key} = [{items}]")
            elif isinstance(value, int):
                lines.append(f"{key} = {value}")
            else:
                lines.append(f'{key} = "{value}"')
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
