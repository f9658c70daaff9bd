"""The HTTP transport of the fetch stage: one source streamed into a partial file, verified.

`HttpDownloader` streams a `Source` into `.<name>.part` beside the target, hashing on the way;
continues what the partial holds with `Range` (accepting only a 206 whose `Content-Range` starts at
the bytes held), retries transient failures with backoff, stops at the first bytes of an HTML
page, and checks size and hashes before returning. The caller renames the verified file into place.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
import urllib3
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from ..errors import (
    ChecksumError,
    ConfigError,
    DownloadError,
    HtmlResponseError,
    TransientDownloadError,
)
from ..progress import progress_bar
from .checksums import (
    CHUNK_SIZE,
    Action,
    Digests,
    FileChecksum,
    HashingWriter,
    StreamHasher,
    decide,
    file_size,
    hash_file,
    mismatch,
)

log = logging.getLogger(__name__)

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<title", b"<script")
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


def looks_like_html(first_bytes: bytes, content_type: str | None = None) -> bool:
    """True when a response is an HTML page: by its Content-Type, or by its first bytes (after
    any byte-order mark and white space)."""
    if content_type and "html" in content_type.lower():
        return True
    head = first_bytes[:512].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return head.startswith(_HTML_STARTS)


def by_hand_advice(name: str, url: str) -> str:
    """The way out when a source refuses: download by hand, then `fetch --from`."""
    return (
        f"Download {name} by hand from {url} in a web browser, put it in a folder, and run "
        "`amc-data fetch --from THAT_FOLDER`."
    )


# --------------------------------------------------------------------------- sources


class Source(Protocol):
    """Where a download of the file `name` comes from. `open` is called once per attempt."""

    url: str
    name: str
    label: str

    def open(
        self, session: requests.Session, headers: dict[str, str], timeout: float
    ) -> requests.Response: ...

    def html_advice(self) -> str: ...


class UrlSource:
    """A plain http(s) URL."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.name = name
        self.label = url

    def open(
        self, session: requests.Session, headers: dict[str, str], timeout: float
    ) -> requests.Response:
        """Start a streaming GET."""
        return session.get(self.url, headers=headers, timeout=timeout, stream=True)

    def html_advice(self) -> str:
        """What to tell the user when the server sends a page instead of the file."""
        return (
            f"{self.url} answered with an HTML page (a login wall, an error or confirmation "
            f"page, or a moved file) instead of {self.name}. " + by_hand_advice(self.name, self.url)
        )


# --------------------------------------------------------------------------- downloader


@dataclass(frozen=True)
class Download:
    """A finished, verified download, still at its partial name."""

    digests: Digests
    resumed: bool


@dataclass(frozen=True)
class _Job:
    """What one `HttpDownloader` call works on; every attempt gets the same one."""

    source: Source
    part: Path
    expected: FileChecksum
    session: requests.Session
    position: int | None
    cancel: threading.Event


@dataclass(frozen=True, kw_only=True)
class HttpDownloader:
    """Downloads one source into a partial file and verifies it.

    A frozen callable: settings are its fields, `__call__` keeps its state in locals, so one
    instance serves every thread. Transient failures (connection errors, timeouts, 5xx, 408, 429,
    short bodies) are retried with exponential backoff (`backoff`, `2 * backoff`, ... seconds),
    each attempt resuming from the bytes held. Raises `DownloadError` (this source is done),
    `HtmlResponseError` or `ChecksumError`; `ConfigError` for settings out of range.
    """

    retries: int = 5
    timeout: float = 60.0
    backoff: float = 1.0
    chunk_size: int = CHUNK_SIZE
    progress: bool = False

    def __post_init__(self) -> None:
        if self.retries < 0:
            raise ConfigError(f"retries must be 0 or more, not {self.retries}.")
        if self.timeout <= 0 or self.backoff < 0:
            raise ConfigError(
                f"timeout must be positive and backoff not negative (got {self.timeout} and "
                f"{self.backoff})."
            )

    def __call__(
        self,
        source: Source,
        part: Path,
        expected: FileChecksum,
        *,
        session: requests.Session,
        position: int | None = None,
        cancel: threading.Event | None = None,
    ) -> Download:
        """Download `source` into `part` (resuming what it holds) and verify it against
        `expected`. On success the verified file is still at `part`; the caller renames it.
        Setting `cancel` stops the download (KeyboardInterrupt) within a chunk; the partial
        download is kept."""
        job = _Job(source, part, expected, session, position, cancel or threading.Event())
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=60),
            retry=retry_if_exception_type(TransientDownloadError),
            reraise=True,
            sleep=lambda seconds: _sleep(seconds, job.cancel),
            before_sleep=lambda state: log.warning(
                "%s: %s (attempt %d of %d); retrying",
                source.name,
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number,
                self.retries + 1,
            ),
        )
        return retrying(self._attempt, job)

    def _attempt(self, job: _Job) -> Download:
        source = job.source
        held = file_size(job.part)
        action = decide(final_verified=False, partial_bytes=held, expected_size=job.expected.size)
        log.info("%s: %s from %s (%d bytes held)", source.name, action.value, source.label, held)
        if action is not Action.RESUME:
            held = 0
        try:
            resp = self._open(job, held)
            content_range = _content_range(resp)
            if held and (content_range is None or content_range[0] != held):
                if resp.status_code == 200:  # Range ignored: this body is the whole file
                    log.info("%s ignored the Range request; starting over", source.label)
                else:  # a 206 starting elsewhere, or 416: ask for the whole file
                    log.info("%s answered the resume badly; starting over", source.label)
                    resp.close()
                    resp = self._open(job, 0)
                held = 0
            with resp:
                return self._receive(resp, job, held)
        except requests.HTTPError as exc:  # from a Drive folder listing
            raise _status_error(exc.response, source.label) from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise TransientDownloadError(
                f"{source.label}: {_describe(exc)}; the partial download is kept for resuming."
            ) from exc

    def _open(self, job: _Job, held: int) -> requests.Response:
        headers = {"Accept-Encoding": "identity"}  # sizes and hashes are of the bytes as stored
        if held:
            headers["Range"] = f"bytes={held}-"
        resp = job.source.open(job.session, headers, self.timeout)
        if resp.status_code in (200, 206) or (resp.status_code == 416 and held):
            return resp
        resp.close()
        raise _status_error(resp, job.source.label)

    def _receive(self, resp: requests.Response, job: _Job, held: int) -> Download:
        source, part, expected, name = job.source, job.part, job.expected, job.source.name
        length, total = _announced(resp, job, held)
        hasher = StreamHasher(git_size=total if expected.git_blob_sha1 else None)
        if held:
            hash_file(part, hasher=hasher)  # take up the bytes already held
        sink = HashingWriter(part, append=bool(held), hasher=hasher)
        bar = progress_bar(
            total=total,
            desc=name,
            enabled=self.progress,
            position=job.position,
            bytes_units=True,
            initial=held,
        )
        received = 0
        try:
            for chunk in _body_chunks(resp, self.chunk_size):
                if job.cancel.is_set():
                    raise KeyboardInterrupt
                if not received and not held and looks_like_html(chunk):
                    raise HtmlResponseError(source.html_advice())
                sink.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
                if expected.size is not None and held + received > expected.size:
                    raise ChecksumError(
                        f"{source.label} sent more than the {expected.size} bytes expected for "
                        f"{name}; the download was deleted. The source may hold another version."
                    )
        except BaseException as exc:
            with contextlib.suppress(OSError):  # the error being raised is the one to report
                sink.close()
            if isinstance(exc, HtmlResponseError | ChecksumError):
                part.unlink(missing_ok=True)  # bytes of a page or of another file: useless
            raise
        finally:
            bar.close()
        digests = sink.close()
        short_of = max(
            length - received if length is not None else 0,
            expected.size - digests.size if expected.size is not None else 0,
        )
        if short_of > 0:
            raise TransientDownloadError(
                f"{source.label} ended the body {short_of} bytes short; the {digests.size} bytes "
                "received are kept for resuming."
            )
        if expected.git_blob_sha1 and digests.git_blob_sha1 is None:  # the size was unknown
            digests = hash_file(part)
        problem = mismatch(expected, digests)
        if problem:
            part.unlink(missing_ok=True)
            raise ChecksumError(
                f"{name} downloaded from {source.label} is not the expected file ({problem}); "
                "the download was deleted. The source may serve another version or a damaged "
                "copy."
            )
        return Download(digests=digests, resumed=held > 0)


def _announced(resp: requests.Response, job: _Job, held: int) -> tuple[int | None, int | None]:
    """Check a response's headers before reading its body; return (body length, whole file
    size), each None when unknown. Refuses HTML pages, ranges not asked for, and a size that
    differs from the expected one."""
    source, expected = job.source, job.expected
    if looks_like_html(b"", resp.headers.get("Content-Type")):
        raise HtmlResponseError(source.html_advice())
    content_range = _content_range(resp)
    if resp.status_code == 206 and (content_range is None or content_range[0] != held):
        raise TransientDownloadError(f"{source.label} sent a range that was not asked for.")
    length = _body_length(resp)
    total = content_range[1] if content_range else None
    if total is None and length is not None:
        total = held + length
    if expected.size is not None and total is not None and total != expected.size:
        raise ChecksumError(
            f"{source.label} announces {total} bytes for {source.name}, but {expected.size} are "
            "expected; nothing was kept from it. The source may hold another version."
        )
    return length, total if total is not None else expected.size


def _status_error(resp: requests.Response, label: str) -> DownloadError:
    """An unusable HTTP status: retryable (5xx, 408, 429) or the end of that URL."""
    code = resp.status_code
    text = f"{label} answered HTTP {code} {resp.reason or ''}".rstrip()
    if code >= 500 or code in (408, 429):
        return TransientDownloadError(f"{text}.")
    return DownloadError(f"{text}; trying the next source, if any.")


def _content_range(resp: requests.Response) -> tuple[int, int | None] | None:
    """(first byte, total size or None) of a 206 answer's Content-Range; None for any other
    answer, or when the header is missing or unreadable."""
    if resp.status_code != 206:
        return None
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", "").strip())
    if match is None:
        return None
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _body_length(resp: requests.Response) -> int | None:
    """Bytes the body announces (Content-Length), None when unknown or content-encoded."""
    if resp.headers.get("Content-Encoding", "identity").lower() != "identity":
        return None
    try:
        return int(resp.headers["Content-Length"])
    except (KeyError, ValueError):
        return None


def _body_chunks(resp: requests.Response, size: int) -> Iterator[bytes]:
    """The body as it arrives, one socket read at a time, so every byte received is written
    even when the connection then breaks (`read(n)` drops what it buffered if the body ends
    early, and a resume would re-fetch it)."""
    while chunk := resp.raw.read1(size):
        yield chunk


def _describe(exc: BaseException) -> str:
    """A network error in one line (urllib3 repeats its message inside a tuple)."""
    while exc.args and isinstance(exc.args[0], BaseException):  # requests wraps urllib3
        exc = exc.args[0]
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)


def _sleep(seconds: float, cancel: threading.Event) -> None:
    """Wait between retries, but not past a cancellation."""
    if cancel.wait(seconds):
        raise KeyboardInterrupt
