"""The fetch stage: put every file of a dataset in its folder, verified.

For each file, under a per-file lock (two runs on one data folder both end verified):
1. a file already at its final name that matches what is expected costs no network call;
2. a copy in the `--from` folder is verified and copied (or hard-linked) in, never replaced by a
   download when it fails;
3. otherwise each URL is tried in order by `HttpDownloader`: streamed into `.<name>.part` beside
   the target, hashed on the way, resumed with `Range` after a drop, retried with backoff on
   transient errors, stopped at the first bytes of an HTML page, verified, then renamed into
   place. Nothing unverified ever sits at the final name.
Files the manifest gives no hash for get their size and sha256 recorded in the lock file.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import queue
import re
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import requests
import urllib3
from filelock import FileLock, Timeout
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from .datadir import resolve_data_dir
from .errors import (
    AmcDataError,
    ChecksumError,
    ConfigError,
    DownloadError,
    HtmlResponseError,
    LockTimeoutError,
    TransientDownloadError,
)
from .gdrive import DriveFolderIndex, DriveSource, drive_folder_id
from .hashes import (
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
from .manifest import FileEntry, Manifest, expected_checksums, record_checksum, resolve_manifests
from .progress import progress_bar

log = logging.getLogger(__name__)

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<meta", b"<title", b"<script")
_LOCK_POLL_S = 0.5  # how often a run waiting for another one's lock looks again
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


class Outcome(enum.Enum):
    """What `fetch` did for one file."""

    PRESENT = "present"  # already there and verified
    DOWNLOADED = "downloaded"
    RESUMED = "resumed"  # downloaded, continuing a partial download
    COPIED = "copied"  # taken from the --from folder
    RECORDED = "recorded"  # no hash was known: size and sha256 recorded in the lock file
    FAILED = "failed"


@dataclass(frozen=True)
class FetchResult:
    """The outcome for one file. `origin` is the URL or path it came from; `reason` explains a
    failure (or, for a success, what went wrong on the way, e.g. a dead mirror)."""

    dataset: str
    name: str
    path: Path
    outcome: Outcome
    size: int | None = None
    origin: str | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """True when the file is at its final name and verified (or recorded)."""
        return self.outcome is not Outcome.FAILED


def looks_like_html(first_bytes: bytes, content_type: str | None = None) -> bool:
    """True when a response is an HTML page: by its Content-Type, or by its first bytes (after
    any byte-order mark and white space)."""
    if content_type and "html" in content_type.lower():
        return True
    head = first_bytes[:512].removeprefix(b"\xef\xbb\xbf").lstrip().lower()
    return head.startswith(_HTML_STARTS)


# --------------------------------------------------------------------------- sources


class Source(Protocol):
    """Where a download comes from. `open` is called once per attempt."""

    url: str
    label: str

    def open(
        self, session: requests.Session, headers: dict[str, str], timeout: float
    ) -> requests.Response: ...

    def html_advice(self) -> str: ...


class UrlSource:
    """A plain http(s) URL."""

    def __init__(self, url: str, name: str) -> None:
        self.url = url
        self.label = url
        self._name = name

    def open(
        self, session: requests.Session, headers: dict[str, str], timeout: float
    ) -> requests.Response:
        """Start a streaming GET."""
        return session.get(self.url, headers=headers, timeout=timeout, stream=True)

    def html_advice(self) -> str:
        """What to tell the user when the server sends a page instead of the file."""
        return (
            f"{self.url} answered with an HTML page (a login wall, an error or confirmation "
            f"page, or a moved file) instead of {self._name}. Download it by hand in a web "
            "browser, put it in a folder, and run `amc-data fetch --from THAT_FOLDER`."
        )


def make_source(url: str, name: str, drive_index: DriveFolderIndex) -> Source:
    """The source for one manifest URL: a Drive folder URL means the file `name` inside it."""
    if drive_folder_id(url) is not None:
        return DriveSource(url, name, drive_index)
    return UrlSource(url, name)


# --------------------------------------------------------------------------- downloader


@dataclass(frozen=True)
class Download:
    """A finished, verified download, still at its partial name."""

    digests: Digests
    resumed: bool


def _status_error(resp: requests.Response, label: str) -> DownloadError:
    """An unusable HTTP status: retryable (5xx, 408, 429) or the end of that URL."""
    code = resp.status_code
    text = f"{label} answered HTTP {code} {resp.reason or ''}".rstrip()
    if code >= 500 or code in (408, 429):
        return TransientDownloadError(f"{text}.")
    return DownloadError(f"{text}; trying the next source, if any.")


def _content_range(resp: requests.Response) -> tuple[int, int | None] | None:
    """(first byte, total size or None) of a 206 answer's Content-Range, None if unreadable."""
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


class HttpDownloader:
    """Downloads one source into a partial file and verifies it.

    Settings live in `__init__`; `__call__` keeps its state in locals, so one instance serves
    every thread. Transient failures (connection errors, timeouts, 5xx, 408, 429, short bodies)
    are retried with exponential backoff (`backoff`, `2 * backoff`, ... seconds), each attempt
    resuming from the bytes held. Raises `DownloadError` (this source is done),
    `HtmlResponseError` or `ChecksumError`.
    """

    def __init__(
        self,
        *,
        retries: int = 5,
        timeout: float = 60.0,
        backoff: float = 1.0,
        chunk_size: int = CHUNK_SIZE,
        progress: bool = False,
    ) -> None:
        self.retries = retries
        self.timeout = timeout
        self.backoff = backoff
        self.chunk_size = chunk_size
        self.progress = progress

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
        cancel = cancel or threading.Event()
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff, max=60),
            retry=retry_if_exception_type(TransientDownloadError),
            reraise=True,
            sleep=lambda seconds: _sleep(seconds, cancel),
            before_sleep=lambda state: log.warning(
                "%s: %s (attempt %d of %d); retrying",
                part.name[1:].removesuffix(".part"),
                state.outcome.exception() if state.outcome else "?",
                state.attempt_number,
                self.retries + 1,
            ),
        )
        return retrying(self._attempt, source, part, expected, session, position, cancel)

    def _attempt(
        self,
        source: Source,
        part: Path,
        expected: FileChecksum,
        session: requests.Session,
        position: int | None,
        cancel: threading.Event,
    ) -> Download:
        held = file_size(part)
        if decide(final_verified=False, partial_bytes=held, expected_size=expected.size) is not (
            Action.RESUME
        ):
            held = 0
        try:
            resp = self._open(source, session, held)
            if held and not (resp.status_code == 206 and _start(resp) == held):
                if resp.status_code == 200:  # Range ignored: this body is the whole file
                    log.info("%s ignored the Range request; starting over", source.label)
                else:  # a 206 starting elsewhere, or 416: ask for the whole file
                    log.info("%s answered the resume badly; starting over", source.label)
                    resp.close()
                    resp = self._open(source, session, 0)
                held = 0
            with resp:
                return self._receive(resp, source, part, expected, held, position, cancel)
        except requests.HTTPError as exc:  # from a Drive folder listing
            raise _status_error(exc.response, source.label) from exc
        except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
            raise TransientDownloadError(
                f"{source.label}: {_describe(exc)}; the partial download is kept for resuming."
            ) from exc

    def _open(self, source: Source, session: requests.Session, held: int) -> requests.Response:
        headers = {"Accept-Encoding": "identity"}  # sizes and hashes are of the bytes as stored
        if held:
            headers["Range"] = f"bytes={held}-"
        resp = source.open(session, headers, self.timeout)
        if resp.status_code in (200, 206) or (resp.status_code == 416 and held):
            return resp
        resp.close()
        raise _status_error(resp, source.label)

    def _receive(
        self,
        resp: requests.Response,
        source: Source,
        part: Path,
        expected: FileChecksum,
        held: int,
        position: int | None,
        cancel: threading.Event,
    ) -> Download:
        name = part.name[1:].removesuffix(".part")
        length, total = _announced(resp, source, held, expected, name)
        hasher = StreamHasher(git_size=total if expected.git_blob_sha1 else None)
        if held:
            hash_file(part, hasher=hasher)  # take up the bytes already held
        sink = HashingWriter(part, append=bool(held), hasher=hasher)
        bar = progress_bar(
            total=total,
            desc=name,
            enabled=self.progress,
            position=position,
            bytes_units=True,
            initial=held,
        )
        received = 0
        try:
            for chunk in _body_chunks(resp, self.chunk_size):
                if cancel.is_set():
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


def _announced(
    resp: requests.Response, source: Source, held: int, expected: FileChecksum, name: str
) -> tuple[int | None, int | None]:
    """Check a response's headers before reading its body; return (body length, whole file
    size), each None when unknown. Refuses HTML pages, ranges not asked for, and a size that
    differs from the expected one."""
    if looks_like_html(b"", resp.headers.get("Content-Type")):
        raise HtmlResponseError(source.html_advice())
    content_range = _content_range(resp) if resp.status_code == 206 else None
    if resp.status_code == 206 and (content_range is None or content_range[0] != held):
        raise TransientDownloadError(f"{source.label} sent a range that was not asked for.")
    length = _body_length(resp)
    total = content_range[1] if content_range else None
    if total is None and length is not None:
        total = held + length
    if expected.size is not None and total is not None and total != expected.size:
        raise ChecksumError(
            f"{source.label} announces {total} bytes for {name}, but {expected.size} are "
            "expected; nothing was kept from it. The source may hold another version."
        )
    return length, total if total is not None else expected.size


def _describe(exc: BaseException) -> str:
    """A network error in one line (urllib3 repeats its message inside a tuple)."""
    while exc.args and isinstance(exc.args[0], BaseException):  # requests wraps urllib3
        exc = exc.args[0]
    return exc.args[0] if exc.args and isinstance(exc.args[0], str) else str(exc)


def _sleep(seconds: float, cancel: threading.Event) -> None:
    """Wait between retries, but not past a cancellation."""
    if cancel.wait(seconds):
        raise KeyboardInterrupt


def _body_chunks(resp: requests.Response, size: int) -> Iterator[bytes]:
    """The body as it arrives, one socket read at a time, so every byte received is written
    even when the connection then breaks (`read(n)` drops what it buffered if the body ends
    early, and a resume would re-fetch it)."""
    while chunk := resp.raw.read1(size):
        yield chunk


def _start(resp: requests.Response) -> int | None:
    content_range = _content_range(resp)
    return content_range[0] if content_range else None


# --------------------------------------------------------------------------- the stage


@dataclass(frozen=True)
class _Run:
    """Settings and shared helpers of one `fetch` run."""

    data_dir: Path
    downloader: HttpDownloader
    drive_index: DriveFolderIndex
    from_dir: Path | None
    lock_timeout: float | None
    cancel: threading.Event  # set on Ctrl-C: every job stops at its next chunk
    progress: bool
    jobs: int
    slots: queue.Queue[int]  # progress-bar rows free for the next job


def fetch(
    datasets: Iterable[str] = (),
    *,
    data_dir: str | os.PathLike[str] | None = None,
    manifest_paths: Iterable[str | os.PathLike[str]] = (),
    from_dir: str | os.PathLike[str] | None = None,
    jobs: int = 4,
    retries: int = 5,
    timeout: float = 60.0,
    backoff: float = 1.0,
    lock_timeout: float | None = None,
    progress: bool = False,
) -> list[FetchResult]:
    """Fetch every file of the named datasets (all bundled ones when none is named) into
    `<data_dir>/<dataset>/`, verified. Returns one result per file, in manifest order; a failure
    is a result with outcome FAILED and its reason, not an exception.

    `manifest_paths` replace the bundled manifests of the same name; `from_dir` is a folder of
    files placed by hand (looked at before any network call); `lock_timeout` caps the wait for
    another process fetching the same file (None: wait as long as it takes).
    """
    manifests = resolve_manifests(datasets, manifest_paths)
    return fetch_manifests(
        manifests,
        data_dir=data_dir,
        from_dir=from_dir,
        jobs=jobs,
        downloader=HttpDownloader(
            retries=retries, timeout=timeout, backoff=backoff, progress=progress
        ),
        lock_timeout=lock_timeout,
    )


def fetch_manifests(
    manifests: Iterable[Manifest],
    *,
    data_dir: str | os.PathLike[str] | None = None,
    from_dir: str | os.PathLike[str] | None = None,
    jobs: int = 4,
    downloader: HttpDownloader | None = None,
    lock_timeout: float | None = None,
) -> list[FetchResult]:
    """`fetch` for manifests already loaded, with a downloader of your own settings."""
    downloader = downloader or HttpDownloader()
    _check_settings(jobs, downloader, from_dir)
    work = [(manifest, entry) for manifest in manifests for entry in manifest.files]
    jobs = max(1, min(jobs, len(work)))
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)
    run = _Run(
        data_dir=resolve_data_dir(data_dir),
        downloader=downloader,
        drive_index=DriveFolderIndex(),
        from_dir=Path(from_dir) if from_dir is not None else None,
        lock_timeout=lock_timeout,
        cancel=threading.Event(),
        progress=downloader.progress,
        jobs=jobs,
        slots=slots,
    )
    if jobs == 1:
        return [_fetch_one(run, manifest, entry) for manifest, entry in work]
    pool = ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="amc-data-fetch")
    try:
        return list(pool.map(lambda job: _fetch_one(run, *job), work))
    except BaseException:  # Ctrl-C: stop the other jobs at their next chunk, keep partials
        run.cancel.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _check_settings(jobs: int, downloader: HttpDownloader, from_dir: object) -> None:
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, not {jobs}.")
    if downloader.retries < 0:
        raise ConfigError(f"retries must be 0 or more, not {downloader.retries}.")
    if downloader.timeout <= 0 or downloader.backoff < 0:
        raise ConfigError(
            f"timeout must be positive and backoff not negative (got {downloader.timeout} and "
            f"{downloader.backoff})."
        )
    if from_dir is not None and not Path(str(from_dir)).is_dir():
        raise ConfigError(f"The --from folder {from_dir} does not exist or is not a folder.")


def _fetch_one(run: _Run, manifest: Manifest, entry: FileEntry) -> FetchResult:
    folder = run.data_dir / manifest.name
    slot = run.slots.get()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _file_lock(folder, entry.name, run.lock_timeout, run.cancel):
            return _fetch_locked(run, manifest, entry, folder, slot)
    except (AmcDataError, OSError) as exc:
        log.info("%s/%s failed: %s", manifest.name, entry.name, exc)  # the result says it too
        return FetchResult(
            manifest.name, entry.name, folder / entry.name, Outcome.FAILED, reason=str(exc)
        )
    finally:
        run.slots.put(slot)


@contextmanager
def _file_lock(
    folder: Path, name: str, timeout: float | None, cancel: threading.Event
) -> Iterator[None]:
    """Hold `.<name>.lock`: one process at a time works on a file; the next one waits, then
    finds the file present. The wait polls, so a cancelled run does not hang here."""
    lock = FileLock(folder / f".{name}.lock")
    waited = 0.0
    while True:
        try:
            lock.acquire(timeout=0 if not waited else _LOCK_POLL_S)
            break
        except Timeout:
            if not waited:
                log.warning("%s: another amc-data process is fetching it; waiting", name)
            if cancel.is_set():
                raise KeyboardInterrupt from None
            if timeout is not None and waited >= timeout:
                raise LockTimeoutError(
                    f"Waited {timeout:g} s for {folder / name}: another amc-data process is "
                    "still fetching it. Run again when it is done, or raise --lock-timeout."
                ) from None
            waited += _LOCK_POLL_S
    try:
        yield
    finally:
        lock.release()


def _fetch_locked(
    run: _Run, manifest: Manifest, entry: FileEntry, folder: Path, slot: int
) -> FetchResult:
    # Read inside the lock: the process that held it may have just recorded this file.
    expected = expected_checksums(folder, manifest)[entry.name]
    final = folder / entry.name
    position = slot if run.jobs > 1 else None  # one bar per job row; a lone bar stays put
    notes: list[str] = []
    if final.is_file():
        digests = _hash_with_bar(run, final, expected, f"checking {entry.name}", position)
        problem = mismatch(expected, digests)
        if problem is None:
            return _finish(manifest, entry, folder, Outcome.PRESENT, digests, expected, str(final))
        log.info("%s: the file in place is not the expected one (%s)", final, problem)
        notes.append(
            f"the file at {final} does not match ({problem}); it stays there until a "
            "verified copy replaces it"
        )
    if run.from_dir is not None:
        found = _find_in(run.from_dir, manifest.name, entry.name)
        if found is not None:
            return _copy_in(run, manifest, entry, folder, found, expected, position)
        log.info("%s is not in the --from folder %s; downloading it", entry.name, run.from_dir)
    part = folder / f".{entry.name}.part"
    held = file_size(part)
    action = decide(final_verified=False, partial_bytes=held, expected_size=expected.size)
    log.info("%s: %s (%d bytes held)", entry.name, action.value, held)
    with requests.Session() as session:
        session.headers["User-Agent"] = "amc-data"
        for url in entry.urls:
            source = make_source(url, entry.name, run.drive_index)
            try:
                download = run.downloader(
                    source, part, expected, session=session, position=position, cancel=run.cancel
                )
            except (DownloadError, ChecksumError) as exc:
                log.info("%s: %s", entry.name, exc)  # collected into the result
                notes.append(str(exc))
                continue
            os.replace(part, final)
            outcome = Outcome.RESUMED if download.resumed else Outcome.DOWNLOADED
            return _finish(manifest, entry, folder, outcome, download.digests, expected, url, notes)
    return FetchResult(
        manifest.name,
        entry.name,
        final,
        Outcome.FAILED,
        reason=f"every source failed: {' | '.join(notes)}",
    )


def _finish(
    manifest: Manifest,
    entry: FileEntry,
    folder: Path,
    outcome: Outcome,
    digests: Digests,
    expected: FileChecksum,
    origin: str,
    notes: list[str] | None = None,
) -> FetchResult:
    """Record the sha256 of a verified file when none was known, and build its result."""
    if expected.sha256 is None:
        record_checksum(folder, entry.name, digests.size, digests.sha256, origin)
        if not expected.has_hash:  # nothing vouched for the file: say it was trusted on first use
            outcome = Outcome.RECORDED
    return FetchResult(
        manifest.name,
        entry.name,
        folder / entry.name,
        outcome,
        size=digests.size,
        origin=origin,
        reason="; ".join(notes) if notes else None,
    )


def _find_in(from_dir: Path, dataset: str, name: str) -> Path | None:
    """`<from>/<name>` or `<from>/<dataset>/<name>`, whichever exists first."""
    for candidate in (from_dir / name, from_dir / dataset / name):
        if candidate.is_file():
            return candidate
    return None


def _copy_in(
    run: _Run,
    manifest: Manifest,
    entry: FileEntry,
    folder: Path,
    src: Path,
    expected: FileChecksum,
    position: int | None,
) -> FetchResult:
    """Verify a `--from` file and put it in place (hard link when possible, else a copy),
    through a temporary name."""
    tmp = folder / f".{entry.name}.from"
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
            digests = _hash_with_bar(run, tmp, expected, f"checking {entry.name}", position)
        except OSError:  # another file system, or links not allowed: copy, hashing on the way
            git_size = src.stat().st_size if expected.git_blob_sha1 else None
            sink = HashingWriter(tmp, append=False, hasher=StreamHasher(git_size=git_size))
            with open(src, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    sink.write(chunk)
            digests = sink.close()
        problem = mismatch(expected, digests)
        if problem is not None:
            return FetchResult(
                manifest.name,
                entry.name,
                folder / entry.name,
                Outcome.FAILED,
                origin=str(src),
                reason=(
                    f"{src} (from --from) is not the expected file ({problem}). It was not used, "
                    f"and {entry.name} was not downloaded instead: a file given with --from is "
                    "never silently replaced. Replace or remove it, then run again."
                ),
            )
        os.replace(tmp, folder / entry.name)
    finally:
        tmp.unlink(missing_ok=True)
    return _finish(manifest, entry, folder, Outcome.COPIED, digests, expected, str(src))


def _hash_with_bar(
    run: _Run, path: Path, expected: FileChecksum, desc: str, position: int | None
) -> Digests:
    with progress_bar(
        total=file_size(path),
        desc=desc,
        enabled=run.progress,
        position=position,
        bytes_units=True,
    ) as bar:
        return hash_file(
            path, git_blob_sha1=expected.git_blob_sha1 is not None, on_bytes=bar.update
        )
