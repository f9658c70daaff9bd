"""The fetch stage: put every file of a dataset in its folder, verified.

For each file, under a per-file lock (two runs on one data folder both end verified):
1. a file already at its final name that matches what is expected costs no network call;
2. a copy in the `--from` folder is verified and copied (or hard-linked) in, never replaced by a
   download when it fails;
3. otherwise each URL is tried in order by the transport (`download.HttpDownloader`): streamed
   into `.<name>.part` beside the target, verified, then renamed into place here. Nothing
   unverified ever sits at the final name. A host found unreachable is not asked again in the
   same run.
Files the manifest gives no hash for get their size and sha256 recorded in the dataset's
`checksums.json`; a zip among them is recorded only once it opens as a complete archive.
"""

from __future__ import annotations

import enum
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import requests
from filelock import FileLock, Timeout

from ..checks import whole_number
from ..datadir import resolve_data_dir
from ..errors import AmcDataError, ConfigError, LockTimeoutError, ManifestError
from . import partial
from .checksums import CHUNK_SIZE, Digests, FileChecksum, HashingWriter, StreamHasher, hash_file
from .checksums import mismatch as checksum_mismatch
from .download import HttpDownloader, Source, UrlSource
from .gdrive import DriveFolderIndex, DriveSource, drive_folder_id
from .manifest import (
    FileEntry,
    Manifest,
    expected_checksums,
    migrate_checksums,
    record_checksum,
    resolve_manifests,
)
from .problems import Problem, SourceError, printable
from .zipcheck import is_zip_name, zip_problem

log = logging.getLogger(__name__)

_LOCK_POLL_S = 0.5  # how often a run waiting for another one's lock looks again
_MAX_REDIRECTS = 10  # Drive needs two; a loop is caught after this many


class Outcome(enum.Enum):
    """What `fetch` did for one file."""

    PRESENT = "present"  # already there and verified
    DOWNLOADED = "downloaded"
    RESUMED = "resumed"  # downloaded, continuing a partial download
    COPIED = "copied"  # taken from the --from folder
    RECORDED = "recorded"  # no hash was known: size and sha256 recorded in checksums.json
    FAILED = "failed"


@dataclass(frozen=True)
class FetchResult:
    """The outcome for one file. `origin` is the URL or path it came from; `reason` explains a
    failure (or, for a success, what went wrong on the way, e.g. a dead mirror) in words, and
    `problems` says the same for programs: one `Problem` per thing that went wrong, in order."""

    dataset: str
    name: str
    path: Path
    outcome: Outcome
    size: int | None = None
    origin: str | None = None
    reason: str | None = None
    problems: tuple[Problem, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the file is at its final name and verified (or recorded)."""
        return self.outcome is not Outcome.FAILED

    @property
    def problem(self) -> Problem | None:
        """What ended a failed fetch (the last problem met); None for a success."""
        return self.problems[-1] if not self.ok and self.problems else None


@dataclass(frozen=True)
class _Note:
    """One thing that went wrong on the way to a file."""

    problem: Problem
    text: str


def make_source(url: str, name: str, drive_index: DriveFolderIndex) -> Source:
    """The source for one manifest URL: a Drive folder URL means the file `name` inside it."""
    if drive_folder_id(url) is not None:
        return DriveSource(url, name, drive_index)
    return UrlSource(url, name)


@dataclass(frozen=True)
class _Run:
    """Settings and shared helpers of one `fetch` run."""

    data_dir: Path
    downloader: HttpDownloader
    drive_index: DriveFolderIndex
    from_dir: Path | None
    lock_timeout: float | None
    cancel: threading.Event  # set on Ctrl-C: every job stops at its next chunk
    jobs: int
    slots: queue.Queue[int]  # progress-bar rows free for the next job
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> why, asked no more


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
    deadline: float | None = None,
    lock_timeout: float | None = None,
    progress: bool = False,
) -> list[FetchResult]:
    """Fetch every file of the named datasets (all bundled ones when none is named) into
    `<data_dir>/<dataset>/`, verified. Returns one result per file, in manifest order; a failure
    is a result with outcome FAILED, its reason and its problems, not an exception.

    `manifest_paths` replace the bundled manifests of the same name; `from_dir` is a folder of
    files placed by hand (looked at before any network call); `timeout` bounds each connection
    and read, `deadline` (None: no limit) the whole download of one file from one source;
    `lock_timeout` caps the wait for another process fetching the same file (None: wait as long
    as it takes).
    """
    manifests = resolve_manifests(datasets, manifest_paths)
    return fetch_manifests(
        manifests,
        data_dir=data_dir,
        from_dir=from_dir,
        jobs=jobs,
        downloader=HttpDownloader(
            retries=retries, timeout=timeout, backoff=backoff, deadline=deadline, progress=progress
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
    whole_number("jobs", jobs, 1)
    if from_dir is not None and not Path(from_dir).is_dir():
        raise ConfigError(f"The --from folder {from_dir} does not exist or is not a folder.")
    work = [(manifest, entry) for manifest in manifests for entry in manifest.files]
    jobs = max(1, min(jobs, len(work)))
    slots: queue.Queue[int] = queue.Queue()
    for slot in range(jobs):
        slots.put(slot)
    run = _Run(
        data_dir=resolve_data_dir(data_dir),
        downloader=downloader or HttpDownloader(),
        drive_index=DriveFolderIndex(),
        from_dir=Path(from_dir) if from_dir is not None else None,
        lock_timeout=lock_timeout,
        cancel=threading.Event(),
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


def _fetch_one(run: _Run, manifest: Manifest, entry: FileEntry) -> FetchResult:
    folder = run.data_dir / manifest.name
    slot = run.slots.get()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _file_lock(folder, entry.name, run.lock_timeout, run.cancel):
            return _fetch_locked(run, manifest, entry, folder, slot)
    except (AmcDataError, OSError) as exc:
        log.info("%s/%s failed: %s", manifest.name, entry.name, exc)  # the result says it too
        note = _Note(_problem_of(exc), printable(str(exc)))
        return _failed(manifest, entry, folder, [note])
    finally:
        run.slots.put(slot)


def _problem_of(exc: BaseException) -> Problem:
    if isinstance(exc, SourceError):
        return exc.problem
    if isinstance(exc, LockTimeoutError):
        return Problem.LOCKED
    if isinstance(exc, ManifestError):
        return Problem.BAD_RECORD
    if isinstance(exc, OSError):
        return Problem.IO
    return Problem.OTHER


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
    migrate_checksums(folder)
    # Read inside the lock: the process that held it may have just recorded this file.
    expected = expected_checksums(folder, manifest)[entry.name]
    final = folder / entry.name
    position = slot if run.jobs > 1 else None  # one bar per job row; a lone bar stays put
    notes: list[_Note] = []
    if final.is_file():
        digests = hash_file(
            final,
            git_blob_sha1=expected.git_blob_sha1 is not None,
            progress=run.downloader.progress,
            position=position,
        )
        unfit = _unfit(final, expected, digests)
        if unfit is None:
            return _finish(manifest, entry, folder, Outcome.PRESENT, digests, expected, str(final))
        log.info("%s is %s", final, unfit.text)
        notes.append(
            _Note(
                unfit.problem,
                f"the file at {final} is {unfit.text}; it stays there until a verified copy "
                "replaces it",
            )
        )
    if run.from_dir is not None:
        found = _find_in(run.from_dir, manifest.name, entry.name)
        if found is not None:
            return _copy_in(run, manifest, entry, folder, found, expected, position)
        log.info("%s is not in the --from folder %s; downloading it", entry.name, run.from_dir)
    return _download(run, manifest, entry, folder, expected, position, notes)


def _download(
    run: _Run,
    manifest: Manifest,
    entry: FileEntry,
    folder: Path,
    expected: FileChecksum,
    position: int | None,
    notes: list[_Note],
) -> FetchResult:
    """Try each URL in turn; rename the first verified download into place."""
    part = folder / f".{entry.name}.part"
    with requests.Session() as session:
        session.headers["User-Agent"] = "amc-data"
        session.max_redirects = _MAX_REDIRECTS
        for url in entry.urls:
            host = urlsplit(url).netloc
            if host in run.unreachable:  # found unreachable by another file of this run
                notes.append(_Note(Problem.UNREACHABLE, run.unreachable[host]))
                continue
            source = make_source(url, entry.name, run.drive_index)
            try:
                download = run.downloader(
                    source, part, expected, session=session, position=position, cancel=run.cancel
                )
            except SourceError as exc:
                log.info("%s: %s", entry.name, exc)  # collected into the result
                if exc.problem is Problem.UNREACHABLE:
                    run.unreachable.setdefault(host, str(exc))
                notes.append(_Note(exc.problem, str(exc)))
                continue
            unfit = _unfit(part, expected, download.digests, entry.name)
            if unfit is not None:
                partial.discard(part)
                notes.append(
                    _Note(
                        unfit.problem,
                        f"{entry.name} downloaded from {source.label} is {unfit.text}; the "
                        "download was deleted",
                    )
                )
                continue
            os.replace(part, folder / entry.name)
            outcome = Outcome.RESUMED if download.resumed else Outcome.DOWNLOADED
            return _finish(manifest, entry, folder, outcome, download.digests, expected, url, notes)
    return _failed(manifest, entry, folder, notes)


def _unfit(
    path: Path, expected: FileChecksum, digests: Digests, name: str | None = None
) -> _Note | None:
    """Why a complete, hashed file may not be taken (None when it may): its checksums differ
    from the expected ones, or it is a zip with no known hash that does not open whole."""
    problem = checksum_mismatch(expected, digests)
    if problem is not None:
        return _Note(Problem.WRONG_FILE, f"not the expected file ({problem})")
    if not expected.has_hash and is_zip_name(name or path.name):
        why = zip_problem(path)
        if why is not None:
            return _Note(Problem.INVALID_ARCHIVE, f"not a complete zip archive ({why})")
    return None


def _failed(
    manifest: Manifest,
    entry: FileEntry,
    folder: Path,
    notes: list[_Note],
    origin: str | None = None,
) -> FetchResult:
    reason = " | ".join(n.text for n in notes)
    if len(notes) > 1:
        reason = f"every source failed: {reason}"
    return FetchResult(
        manifest.name,
        entry.name,
        folder / entry.name,
        Outcome.FAILED,
        origin=origin,
        reason=reason,
        problems=tuple(n.problem for n in notes),
    )


def _finish(
    manifest: Manifest,
    entry: FileEntry,
    folder: Path,
    outcome: Outcome,
    digests: Digests,
    expected: FileChecksum,
    origin: str,
    notes: list[_Note] | None = None,
) -> FetchResult:
    """Record the sha256 of a verified file when none was known, and build its result."""
    if expected.sha256 is None:
        record_checksum(folder, entry.name, digests.size, digests.sha256, origin)
        if not expected.has_hash:  # nothing vouched for the file: say it was trusted on first use
            outcome = Outcome.RECORDED
    notes = notes or []
    return FetchResult(
        manifest.name,
        entry.name,
        folder / entry.name,
        outcome,
        size=digests.size,
        origin=origin,
        reason="; ".join(n.text for n in notes) or None,
        problems=tuple(n.problem for n in notes),
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
            digests = hash_file(
                tmp,
                git_blob_sha1=expected.git_blob_sha1 is not None,
                progress=run.downloader.progress,
                position=position,
            )
        except OSError:  # another file system, or links not allowed: copy, hashing on the way
            git_size = src.stat().st_size if expected.git_blob_sha1 else None
            sink = HashingWriter(tmp, append=False, hasher=StreamHasher(git_size=git_size))
            with open(src, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    sink.write(chunk)
            digests = sink.close()
        unfit = _unfit(tmp, expected, digests, entry.name)
        if unfit is not None:
            text = (
                f"{src} (from --from) is {unfit.text}. It was not used, and {entry.name} was not "
                "downloaded instead: a file given with --from is never silently replaced. "
                "Replace or remove it, then run again."
            )
            return _failed(manifest, entry, folder, [_Note(unfit.problem, text)], origin=str(src))
        os.replace(tmp, folder / entry.name)
    finally:
        tmp.unlink(missing_ok=True)
    return _finish(manifest, entry, folder, Outcome.COPIED, digests, expected, str(src))
