"""Google Drive folders as a download source.

A manifest URL of the form `<origin>/drive/folders/<id>` means "the file of this entry's name in
that folder". The folder is listed through its `embeddedfolderview` page, sub-folders included;
the file is then requested from `<origin>/uc?export=download&id=<file id>`. Large files come back
as Drive's "virus scan" confirmation page: its download form (or, on older pages, its download
link) gives the confirmed URL. A quota or error page becomes an HTML `SourceError` quoting
Drive's words and telling the user to download by hand and use `--from`. Both pages are read
with `html.parser`, beside each other.

Every endpoint is derived from the manifest URL's own origin, so a test manifest pointing at a
local fake exercises exactly this code.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import requests

from .body import looks_like_html
from .download import by_hand_advice
from .problems import Problem, source_error, status_error

log = logging.getLogger(__name__)

_FOLDER_PATH = re.compile(r"/drive/(?:u/\d+/)?folders/([-\w]+)")
_FILE_PATH = re.compile(r"/file/d/([-\w]+)")
_PAGE_LIMIT = 4 << 20  # an HTML page larger than this is not one of Drive's pages
_MAX_DEPTH = 4  # sub-folder levels explored when looking for a file
_DOWNLOAD_URL = re.compile(r'"downloadUrl"\s*:\s*("(?:[^"\\]|\\.)*")')  # in a page's script


def drive_folder_id(url: str) -> str | None:
    """The folder id when `url` is a Drive folder URL (`.../drive/folders/<id>`), else None."""
    match = _FOLDER_PATH.search(urlsplit(url).path)
    return match.group(1) if match else None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class _FolderViewParser(HTMLParser):
    """Collects (kind, id, name) for each file and sub-folder link of an embeddedfolderview page.

    The name is the link's `flip-entry-title` text when there is one (Drive's layout), else the
    link's whole text (a plainer layout).
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.entries: list[tuple[str, str, str]] = []
        self._link: tuple[str, str] | None = None
        self._text: list[str] = []
        self._title: list[str] = []
        self._title_depth = 0  # > 0 while inside the title div (counting nested divs)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "a":
            path = urlsplit(attr.get("href") or "").path
            if file_match := _FILE_PATH.search(path):
                self._link = ("file", file_match.group(1))
            elif folder_match := _FOLDER_PATH.search(path):
                self._link = ("folder", folder_match.group(1))
            else:
                self._link = None
            self._text, self._title, self._title_depth = [], [], 0
        elif self._link is not None and tag == "div":
            if self._title_depth:
                self._title_depth += 1
            elif not self._title and "flip-entry-title" in (attr.get("class") or "").split():
                self._title_depth = 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "div" and self._title_depth:
            self._title_depth -= 1
        elif tag == "a" and self._link is not None:
            text = "".join(self._title or self._text).strip()
            if text:
                self.entries.append((self._link[0], self._link[1], text))
            self._link = None

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self._text.append(data)
            if self._title_depth:
                self._title.append(data)


def parse_folder_view(html: str) -> list[tuple[str, str, str]]:
    """(kind, id, name) of each entry of a Drive `embeddedfolderview` page; kind is "file" or
    "folder"."""
    parser = _FolderViewParser()
    parser.feed(html)
    parser.close()
    return parser.entries


@dataclass(frozen=True)
class ConfirmationPage:
    """What one of Drive's pages says: the confirmed download URL (None when the page offers
    none), and the page's own words (its warning or error captions)."""

    url: str | None
    message: str


class _ConfirmationParser(HTMLParser):
    """Reads the download form (`<form id="download-form">` with hidden inputs), the older
    download link (`<a id="uc-download-link" href="/uc?export=download&confirm=...">`), and the
    text of the `uc-warning-*` / `uc-error-*` captions."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.action: str | None = None
        self.fields: list[tuple[str, str]] = []
        self.link: str | None = None
        self.captions: list[str] = []
        self._in_form = False
        self._caption: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {key: value or "" for key, value in attrs}
        if tag == "form" and attr.get("id") == "download-form" and self.action is None:
            self.action, self._in_form = attr.get("action", ""), True
        elif tag == "input" and self._in_form and attr.get("type", "").lower() == "hidden":
            if attr.get("name"):
                self.fields.append((attr["name"], attr.get("value", "")))
        elif tag == "a" and self.link is None:
            href = attr.get("href", "")
            if attr.get("id") == "uc-download-link" or href.startswith("/uc?export=download"):
                self.link = href or None
        elif tag == "p" and any(
            c.startswith(("uc-error-", "uc-warning-")) for c in attr.get("class", "").split()
        ):
            self._caption = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self._in_form = False
        elif tag == "p" and self._caption is not None:
            text = " ".join("".join(self._caption).split())
            if text:
                self.captions.append(text)
            self._caption = None

    def handle_data(self, data: str) -> None:
        if self._caption is not None:
            self._caption.append(data)


def parse_confirmation_page(html: str, page_url: str) -> ConfirmationPage:
    """The confirmed download URL and the words of one of Drive's pages, read from the page
    served at `page_url` (relative links are resolved against it). Only an http(s) URL counts."""
    parser = _ConfirmationParser()
    parser.feed(html)
    parser.close()
    try:
        url = _confirmed_url(parser, html, page_url)
    except ValueError:  # a malformed address (an unclosed IPv6 bracket, bad JSON)
        url = None
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        url = None
    return ConfirmationPage(url, " ".join(parser.captions))


def _confirmed_url(parser: _ConfirmationParser, html: str, page_url: str) -> str | None:
    if parser.action is not None:
        parts = urlsplit(urljoin(page_url, parser.action))
        return urlunsplit(
            parts._replace(query=urlencode([*parse_qsl(parts.query), *parser.fields]))
        )
    if parser.link is not None:
        return urljoin(page_url, parser.link)
    if match := _DOWNLOAD_URL.search(html):
        return urljoin(page_url, json.loads(match.group(1)))
    return None


class DriveFolderIndex:
    """Finds file ids in Drive folders by file name. Listings are cached for the life of the
    object (one `fetch` run), and the object is safe to share between download threads."""

    def __init__(self) -> None:
        self._cache: dict[str, dict[str, str]] = {}
        self._lock = threading.Lock()

    def find(self, session: requests.Session, folder_url: str, name: str, timeout: float) -> str:
        """The id of the file called `name` in the folder at `folder_url` or its sub-folders."""
        with self._lock:  # one listing per folder, even when several jobs ask at once
            files = self._cache.get(folder_url)
            if files is None:
                files = self._list(session, folder_url, timeout)
                self._cache[folder_url] = files
        if name not in files:
            found = ", ".join(sorted(files)) or "nothing"
            raise source_error(
                Problem.NOT_LISTED,
                f"The Google Drive folder {folder_url} has no file named {name!r} (it lists: "
                f"{found}). The manifest may be out of date; {by_hand_advice(name, folder_url)}",
            )
        return files[name]

    def _list(self, session: requests.Session, folder_url: str, timeout: float) -> dict[str, str]:
        origin = _origin(folder_url)
        root = drive_folder_id(folder_url)
        if root is None:
            raise source_error(
                Problem.NOT_LISTED, f"{folder_url} is not a Google Drive folder URL."
            )
        files: dict[str, str] = {}
        seen = {root}
        level = [root]
        for _ in range(_MAX_DEPTH + 1):  # breadth first: a top-level file wins over a nested one
            next_level = []
            for folder_id in level:
                listing = f"{origin}/embeddedfolderview?{urlencode({'id': folder_id})}"
                page = _get_page(session, listing, timeout)
                for kind, entry_id, entry_name in parse_folder_view(page):
                    if kind == "file":
                        files.setdefault(entry_name, entry_id)
                    elif entry_id not in seen:
                        seen.add(entry_id)
                        next_level.append(entry_id)
            level = next_level
        log.info("Google Drive folder %s lists %d files", folder_url, len(files))
        return files


def _get_page(session: requests.Session, url: str, timeout: float) -> str:
    """GET a small HTML page; an unusable status is a `SourceError` (retryable or not)."""
    with session.get(url, timeout=timeout, stream=True) as resp:
        if resp.status_code != 200:
            raise status_error(resp, f"The Google Drive listing {url}")
        return _read_page(resp)


def _read_page(resp: requests.Response) -> str:
    """The text of one of Drive's pages (UTF-8), read up to `_PAGE_LIMIT` bytes."""
    return resp.raw.read(_PAGE_LIMIT, decode_content=True).decode("utf-8", errors="replace")


class DriveSource:
    """The file `name` of a Drive folder, as a download source (see `download.Source`)."""

    def __init__(self, folder_url: str, name: str, index: DriveFolderIndex) -> None:
        self.url = folder_url
        self.name = name
        self._index = index
        self.label = f"Google Drive folder {folder_url}"

    def html_advice(self) -> str:
        """What to tell the user when Drive answers with a page instead of the file."""
        return (
            f"Google Drive answered with its quota or confirmation page instead of {self.name}. "
            + by_hand_advice(self.name, self.url)
        )

    def open(
        self, session: requests.Session, headers: Mapping[str, str], timeout: float
    ) -> requests.Response:
        """Start the download (streaming), through the confirmation page when Drive shows one.
        The confirmed URL is resolved again on each call, so a resumed attempt gets a fresh one."""
        file_id = self._index.find(session, self.url, self.name, timeout)
        query = urlencode({"export": "download", "id": file_id})
        resp = session.get(
            f"{_origin(self.url)}/uc?{query}", headers=dict(headers), timeout=timeout, stream=True
        )
        if resp.status_code != 200 or not looks_like_html(b"", resp.headers.get("Content-Type")):
            return resp
        with resp:
            page = parse_confirmation_page(_read_page(resp), resp.url)
        if page.url is None:
            said = f" (Drive said: {page.message})" if page.message else ""
            raise source_error(Problem.HTML, f"{self.html_advice()}{said}")
        log.info("%s: Drive asked for confirmation; following %s", self.name, page.url)
        return session.get(page.url, headers=dict(headers), timeout=timeout, stream=True)
