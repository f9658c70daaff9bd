"""The HTTP transport of the fetch stage: one source streamed into a partial file, verified.

`HttpDownloader` streams a `Source` into `.<name>.part` beside the target, hashing on the way. Each
attempt is four steps, one unit each: open (asking to continue the partial when it may be, see
`partial`), check the answer's headers, stream the body, then check it is complete and is the
expected file. Failures are `SourceError`s whose `problem` says what happened; the transient ones
are retried with backoff (a host that cannot be reached once at most). A resumed download that
turns out not to be the expected file (its head and tail may come from two versions) is started
over from zero, once. The caller renames the verified file into place.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
import urllib3

from ..checks import check_config, option
from ..progress import progress_bar
from . import partial
from .body import BodyReader, HtmlSniffer, content_encoding, decodable, looks_like_html
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
from .partial import PartState
from .problems import Problem, SourceError, network_error, source_error, status_error

log = logging.getLogger(__name__)

GiB = 1 << 30
MAX_UNKNOWN_SIZE = 16 * GiB  # the most bytes taken for a file whose size nobody announced
_MAX_WAIT = 60.0  # the longest pause between two attempts, in seconds
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


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
    deadline: float | None  # time.monotonic() by which the call must end, None for no limit

    def check(self, label: str, deadline_s: float | None) -> None:
        """Stop a cancelled job (KeyboardInterrupt) or one past its deadline."""
        if self.cancel.is_set():
            raise KeyboardInterrupt
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise source_error(
                Problem.DEADLINE,
                f"{label} did not deliver {self.source.name} within the deadline of "
                f"{deadline_s:g} s;",  # what was kept is added once the partial is closed
            )


class _SplicedResume(Exception):
    """A resumed download is whole but not the expected file: start over from zero (once)."""

    def __init__(self, error: SourceError) -> None:
        super().__init__(str(error))
        self.error = error  # what to raise if the download from zero fails the same way


@dataclass(frozen=True)
class _Answer:
    """What a response's headers announce: body length as sent (None when unknown), the whole
    file's size (None when unknown), and whether the body is compressed."""

    length: int | None
    total: int | None
    encoded: bool


@dataclass(frozen=True, kw_only=True)
class HttpDownloader:
    """Downloads one source into a partial file and verifies it.

    A frozen callable: settings are its fields, `__call__` keeps its state in locals, so one
    instance serves every thread. Transient failures (dropped connections, timeouts, 5xx, 408,
    429, short bodies) are retried `retries` times with exponential backoff (`backoff`,
    `2 * backoff`, ... seconds), each attempt continuing the bytes held when the server proves
    the file unchanged (a validator) or the expected hash will prove it whole; a resumed file
    that fails its hash is downloaded once more from zero. A host that cannot be reached (its
    name does not resolve, it refuses the connection) is retried once at most. `timeout` bounds
    each connection and read; `deadline`, when set, bounds the whole call, retries included. A
    file of unknown size may be at most `max_unknown_size` bytes. Raises `SourceError` (its
    `problem` says why; the HTML and wrong-file kinds are also `HtmlResponseError` and
    `ChecksumError`); `ConfigError` for settings out of range.
    """

    retries: int = option(
        5,
        "Retries per URL on transient errors (drops, timeouts, 5xx, 408, 429, short bodies); "
        "a host that cannot be reached is retried once at most.",
        low=0,
    )
    timeout: float = option(
        60.0,
        "Seconds to wait for a connection or for data (each read, not the whole download).",
        low=0,
        above=True,
    )
    backoff: float = option(1.0, "First retry delay in seconds; it doubles on each retry.", low=0)
    deadline: float | None = option(
        None,
        "Seconds one file may take from one source in all, retries included (default: no limit).",
        low=0,
        above=True,
    )
    max_unknown_size: int = option(
        MAX_UNKNOWN_SIZE, "Bytes a file of unknown size may take at most.", low=1
    )
    chunk_size: int = option(CHUNK_SIZE, "Bytes read at a time.", low=1)
    progress: bool = False

    def __post_init__(self) -> None:
        check_config(self)

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
        """Download `source` into `part` (continuing what it holds when it may) and verify it
        against `expected`. On success the verified file is still at `part`; the caller renames
        it. Setting `cancel` stops the download (KeyboardInterrupt) within a chunk; the partial
        download is kept."""
        deadline = None if self.deadline is None else time.monotonic() + self.deadline
        job = _Job(source, part, expected, session, position, cancel or threading.Event(), deadline)
        attempt, wait, restarted = 1, 0.0, False
        while True:
            try:
                _sleep(wait, job)
                return self._attempt(job)
            except _SplicedResume as spliced:
                if restarted:
                    raise spliced.error from None
                log.warning(
                    "%s It had been resumed, so its first part may be another version's: "
                    "downloading it again from the start.",
                    spliced,
                )
                restarted, wait = True, 0.0  # a fresh start, not a retry of a failure
            except SourceError as exc:
                if exc.problem is Problem.DEADLINE:  # say what became of the bytes received
                    raise source_error(exc.problem, f"{exc} {_kept(part)}") from exc
                if attempt > self._retries_for(exc.problem):
                    raise
                wait = min(self.backoff * 2 ** (attempt - 1), _MAX_WAIT)
                level = logging.INFO if exc.problem is Problem.UNREACHABLE else logging.WARNING
                log.log(level, "%s (attempt %d); retrying in %g s", exc, attempt, wait)
                attempt += 1

    def _retries_for(self, problem: Problem) -> int:
        if not problem.transient:
            return 0
        return min(self.retries, 1) if problem is Problem.UNREACHABLE else self.retries

    def _attempt(self, job: _Job) -> Download:
        source, part = job.source, job.part
        job.check(source.label, self.deadline)
        state = partial.load(part, source.url)
        held = file_size(part)
        size = job.expected.size
        if size is None and state is not None:
            size = state.total  # the size the first answer announced
        # Without a validator only a known hash can catch a partial spliced onto another file.
        resumable = state is not None and (state.validator is not None or job.expected.has_hash)
        action = decide(partial_bytes=held, expected_size=size, resumable=resumable)
        if action is Action.DOWNLOAD:
            held, state = 0, None
        log.debug("%s: %s from %s (%d bytes held)", source.name, action.value, source.label, held)
        try:
            resp, held = self._open(job, held, state)
            with resp:
                answer = self._announced(resp, job, held)
                if not held:  # a fresh start: what a later attempt may continue from
                    partial.remember(part, _resume_state(resp, source, answer, job.expected))
                digests, reader = self._stream(resp, job, held, answer)
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise network_error(exc, source.label, source.url, self.timeout, _kept(part)) from exc
        self._check_complete(job, answer, held, digests, reader)
        try:
            digests = self._verify(job, digests)
        except SourceError as exc:
            if held:  # the bytes held may be another version's: try once more from zero
                raise _SplicedResume(exc) from exc
            raise
        partial.forget(part)
        return Download(digests=digests, resumed=held > 0)

    def _open(self, job: _Job, held: int, state: PartState | None) -> tuple[requests.Response, int]:
        """Ask for the file (the rest of it when `held`); return the answer and the bytes it
        continues from (0 when the server's answer does not continue the partial)."""
        resp = self._request(job, held, state)
        if not held or _continues(resp, held, state):
            return resp, held
        if resp.status_code == 200:  # Range ignored, or If-Range saw a changed file: all of it
            log.info("%s: %s sent the whole file; starting over", job.source.name, job.source.label)
        else:  # a 206 from elsewhere or of a changed file, or 416: ask for the whole file
            log.info("%s: %s did not continue it; starting over", job.source.name, job.source.label)
            resp.close()
            resp = self._request(job, 0, None)
        partial.discard(job.part)
        return resp, 0

    def _request(self, job: _Job, held: int, state: PartState | None) -> requests.Response:
        headers = {"Accept-Encoding": "identity"}  # sizes and hashes are of the bytes as stored
        if held and state is not None:
            headers["Range"] = f"bytes={held}-"
            if state.validator is not None:
                headers["If-Range"] = state.validator
        timeout = self.timeout
        if job.deadline is not None:
            timeout = max(0.001, min(timeout, job.deadline - time.monotonic()))
        resp = job.source.open(job.session, headers, timeout)
        if resp.status_code in (200, 206) or (resp.status_code == 416 and held):
            return resp
        resp.close()
        raise status_error(resp, job.source.label)

    def _announced(self, resp: requests.Response, job: _Job, held: int) -> _Answer:
        """Check a response's headers before reading its body: refuse HTML pages, encodings
        not decoded here, ranges not asked for, and a size that differs from the expected one
        or passes the cap for files of unknown size."""
        source, expected = job.source, job.expected
        if looks_like_html(b"", resp.headers.get("Content-Type")):
            raise source_error(Problem.HTML, source.html_advice())
        encoding = content_encoding(resp)
        if not decodable(encoding):
            raise source_error(
                Problem.ENCODING,
                f"{source.label} sent {source.name} compressed as {encoding!r}, which amc-data "
                "does not decode (it asked for the file as stored).",
            )
        content_range = _content_range(resp)
        if resp.status_code == 206 and (content_range is None or content_range[0] != held):
            raise source_error(Problem.BAD_RANGE, f"{source.label} sent a range not asked for.")
        length = _header_int(resp, "Content-Length")
        total = content_range[1] if content_range else None
        if total is None and length is not None and encoding is None:
            total = held + length
        if expected.size is not None and total is not None and total != expected.size:
            raise source_error(
                Problem.WRONG_FILE,
                f"{source.label} announces {total} bytes for {source.name}, but {expected.size} "
                "are expected; nothing was kept from it. The source may hold another version.",
            )
        if expected.size is None and total is not None and total > self.max_unknown_size:
            raise self._too_large(source, total)
        return _Answer(length, total, encoding is not None)

    def _stream(
        self, resp: requests.Response, job: _Job, held: int, answer: _Answer
    ) -> tuple[Digests, BodyReader]:
        """Write the body after the `held` bytes of the partial, hashing it; stop at an HTML
        page and at the most bytes the file may have."""
        source, part, expected = job.source, job.part, job.expected
        size = answer.total if answer.total is not None else expected.size
        hasher = StreamHasher(git_size=size if expected.git_blob_sha1 else None)
        if held:
            hash_file(part, hasher=hasher)  # take up the bytes already held
        limit = expected.size if expected.size is not None else self.max_unknown_size
        reader = BodyReader(resp, self.chunk_size)
        sniffer = None if held else HtmlSniffer()
        sink = HashingWriter(part, append=bool(held), hasher=hasher)
        bar = progress_bar(
            total=size,
            desc=source.name,
            enabled=self.progress,
            position=job.position,
            bytes_units=True,
            initial=held,
        )
        written = held
        try:
            for chunk in reader:
                job.check(source.label, self.deadline)
                data = sniffer.feed(chunk) if sniffer else chunk
                if sniffer and sniffer.is_html:
                    raise source_error(Problem.HTML, source.html_advice())
                written += len(data)
                if written > limit:
                    raise self._too_many(source, expected, limit)
                sink.write(data)
                bar.update(len(data))
            if sniffer and (rest := sniffer.finish()):
                sink.write(rest)
                bar.update(len(rest))
            elif sniffer and sniffer.is_html:
                raise source_error(Problem.HTML, source.html_advice())
        except BaseException as exc:
            with contextlib.suppress(OSError):  # the error being raised is the one to report
                if sniffer is not None and not sniffer.is_html:
                    sink.write(sniffer.finish())  # the bytes held back are worth keeping too
                sink.close()
            if isinstance(exc, SourceError) and not exc.problem.transient:
                partial.discard(part)  # a page, another file, or too much: nothing to keep
            raise
        finally:
            bar.close()
        return sink.close(), reader

    def _check_complete(
        self, job: _Job, answer: _Answer, held: int, digests: Digests, reader: BodyReader
    ) -> None:
        """A body that ended before its announced length, its encoding's end, the whole file's
        announced size or the expected size is short: kept for resuming when it may be, retried."""
        short_of = max(
            answer.length - reader.raw_bytes if answer.length is not None else 0,
            answer.total - digests.size if answer.total is not None else 0,
            job.expected.size - digests.size if job.expected.size is not None else 0,
            0 if reader.complete else 1,
        )
        if short_of > 0:
            raise source_error(
                Problem.SHORT_BODY,
                f"{job.source.label} ended the body of {job.source.name} early (at "
                f"{digests.size} bytes); {_kept(job.part)}",
            )

    def _verify(self, job: _Job, digests: Digests) -> Digests:
        """Hold the complete download to what is expected; delete it when it differs."""
        expected, part = job.expected, job.part
        if expected.git_blob_sha1 and digests.git_blob_sha1 is None:  # the size was unknown
            digests = hash_file(part)
        problem = mismatch(expected, digests)
        if problem:
            partial.discard(part)
            raise source_error(
                Problem.WRONG_FILE,
                f"{job.source.name} downloaded from {job.source.label} is not the expected file "
                f"({problem}); the download was deleted. The source may serve another version or "
                "a damaged copy.",
            )
        return digests

    def _too_large(self, source: Source, size: int) -> SourceError:
        return source_error(
            Problem.TOO_LARGE,
            f"{source.label} announces {size} bytes for {source.name}, more than the "
            f"{self.max_unknown_size} bytes taken for a file of unknown size; nothing was kept. "
            + by_hand_advice(source.name, source.url),
        )

    def _too_many(self, source: Source, expected: FileChecksum, limit: int) -> SourceError:
        if expected.size is not None:
            return source_error(
                Problem.WRONG_FILE,
                f"{source.label} sent more than the {limit} bytes expected for {source.name}; "
                "the download was deleted. The source may hold another version.",
            )
        return source_error(
            Problem.TOO_LARGE,
            f"{source.label} sent more than {limit} bytes for {source.name}, the most taken for "
            "a file of unknown size; the download was deleted. "
            + by_hand_advice(source.name, source.url),
        )


# --------------------------------------------------------------------------- helpers


def _continues(resp: requests.Response, held: int, state: PartState | None) -> bool:
    """True when the answer is the rest of the partial: a 206 starting at the bytes held, not
    compressed, for a file that kept its validator and size."""
    content_range = _content_range(resp)
    if state is None or content_range is None or content_range[0] != held:
        return False
    validator = partial.validator_of(resp)
    if validator is not None and state.validator is not None and validator != state.validator:
        return False  # the server ignored If-Range, but its answer shows the file changed
    return content_range[1] in (None, state.total) and content_encoding(resp) is None


def _resume_state(
    resp: requests.Response, source: Source, answer: _Answer, expected: FileChecksum
) -> PartState | None:
    """What a partial started from this answer may be continued with; None when it may not
    (no validator and no known hash, no known size, or a compressed body)."""
    validator = partial.validator_of(resp)
    if (validator is None and not expected.has_hash) or answer.total is None or answer.encoded:
        return None
    return PartState(source.url, validator, answer.total)


def _kept(part: Path) -> str:
    """What happened to the bytes received, in words (never claims bytes that are not there)."""
    held = file_size(part)
    if not held:
        return "no bytes were kept."
    if partial.state_path(part).exists():
        return f"the {held} bytes received are kept for resuming."
    return (
        f"the {held} bytes received cannot be resumed from (no validator and no known hash); a "
        "retry starts over."
    )


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


def _header_int(resp: requests.Response, name: str) -> int | None:
    try:
        value = int(resp.headers[name])
    except (KeyError, ValueError):
        return None
    return value if value >= 0 else None


def _sleep(seconds: float, job: _Job) -> None:
    """Wait between retries, but not past a cancellation or the deadline."""
    if seconds <= 0:
        return
    if job.deadline is not None:
        seconds = min(seconds, max(0.0, job.deadline - time.monotonic()) + 0.001)
    if job.cancel.wait(seconds):
        raise KeyboardInterrupt
