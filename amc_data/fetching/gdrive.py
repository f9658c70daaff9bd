"""Google Drive folders as a download source.

A manifest URL of the form `<origin>/drive/folders/<id>` means "the file of this entry's name in
that folder". The folder is listed through its `embeddedfolderview` page (the page gdown reads),
sub-folders included; the file is then requested from `<origin>/uc?export=download&id=<file id>`.
Large files come back as Drive's "virus scan" confirmation page, which gdown's public
`get_url_from_gdrive_confirmation` turns into the confirmed download URL; a quota or error page
becomes an `HtmlResponseError` telling the user to download by hand and use `--from`.

Every endpoint is derived from the manifest URL's own origin, so a test manifest pointing at a
local fake exercises exactly this code.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping
from html.parser import HTMLParser
from urllib.parse import urlencode, urlsplit

import requests
from gdown.download import get_url_from_gdrive_confirmation
from gdown.exceptions import FileURLRetrievalError

from ..errors import DownloadError, HtmlResponseError
from .download import by_hand_advice, looks_like_html

log = logging.getLogger(__name__)

_FOLDER_PATH = re.compile(r"/drive/(?:u/\d+/)?folders/([-\w]+)")
_FILE_PATH = re.compile(r"/file/d/([-\w]+)")
_PAGE_LIMIT = 4 << 20  # an HTML page larger than this is not one of Drive's pages
_MAX_DEPTH = 4  # sub-folder levels explored when looking for a file


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
    link's whole text (what gdown reads).
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
            raise DownloadError(
                f"The Google Drive folder {folder_url} has no file named {name!r} (it lists: "
                f"{found}). The manifest may be out of date; {by_hand_advice(name, folder_url)}"
            )
        return files[name]

    def _list(self, session: requests.Session, folder_url: str, timeout: float) -> dict[str, str]:
        origin = _origin(folder_url)
        root = drive_folder_id(folder_url)
        if root is None:
            raise DownloadError(f"{folder_url} is not a Google Drive folder URL.")
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
    """GET a small HTML page; HTTP errors surface as requests.HTTPError for the caller to sort
    into retryable or not."""
    with session.get(url, timeout=timeout, stream=True) as resp:
        resp.raise_for_status()
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
            page = _read_page(resp)
        try:
            confirmed = get_url_from_gdrive_confirmation(page)
        except (FileURLRetrievalError, AssertionError, KeyError) as exc:  # gdown asserts too
            raise HtmlResponseError(f"{self.html_advice()} (Drive said: {exc})") from exc
        log.info("%s: Drive asked for confirmation; following %s", self.name, confirmed)
        return session.get(confirmed, headers=dict(headers), timeout=timeout, stream=True)
