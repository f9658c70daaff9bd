"""The fetch stage: put every file of a dataset in its folder, verified.

For each file, under a per-file lock (two runs on one data folder both end verified):
1. a file already at its final name that matches what is expected costs no network call;
2. a copy in the `--from` folder is verified and copied (or hard-linked) in, never replaced by a
   download when it fails;
3. otherwise each URL is tried in order by the transport (`download.HttpDownloader`): streamed
   into `.<name>.part` beside the target, verified, then renamed into place here. Nothing
   unverified ever sits at the final name.
Files the manifest gives no hash for get their size and sha256 recorded in the lock file.
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
from dataclasses import dataclass
from pathlib import Path

import requests
from filelock import FileLock, Timeout

from ..datadir import resolve_data_dir
from ..errors import AmcDataError, ChecksumError, ConfigError, DownloadError, LockTimeoutError
from ..progress import progress_bar
from .checksums import (
    CHUNK_SIZE,
    Digests,
    FileChecksum,
    HashingWriter,
    StreamHasher,
    file_size,
    hash_file,
    mismatch,
)
from .download import Download, HttpDownloader, Source, UrlSource, looks_like_html
from .gdrive import DriveFolderIndex, DriveSource, drive_folder_id
from .manifest import FileEntry, Manifest, expected_checksums, record_checksum, resolve_manifests

# The transport's public names stay importable from here.
__all__ = [
    "Download",
    "FetchResult",
    "HttpDownloader",
    "Outcome",
    "Source",
    "UrlSource",
    "fetch",
    "fetch_manifests",
    "looks_like_html",
    "make_source",
]

log = logging.getLogger(__name__)

_LOCK_POLL_S = 0.5  # how often a run waiting for another one's lock looks again


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
    if jobs < 1:
        raise ConfigError(f"jobs must be at least 1, not {jobs}.")
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
        return _failed(manifest, entry, folder, str(exc))
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
        digests = _hash_with_bar(run, final, entry.name, expected, position)
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
    return _failed(manifest, entry, folder, f"every source failed: {' | '.join(notes)}")


def _failed(
    manifest: Manifest, entry: FileEntry, folder: Path, reason: str, origin: str | None = None
) -> FetchResult:
    return FetchResult(
        manifest.name, entry.name, folder / entry.name, Outcome.FAILED, origin=origin, reason=reason
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
            digests = _hash_with_bar(run, tmp, entry.name, expected, position)
        except OSError:  # another file system, or links not allowed: copy, hashing on the way
            git_size = src.stat().st_size if expected.git_blob_sha1 else None
            sink = HashingWriter(tmp, append=False, hasher=StreamHasher(git_size=git_size))
            with open(src, "rb") as fh:
                while chunk := fh.read(CHUNK_SIZE):
                    sink.write(chunk)
            digests = sink.close()
        problem = mismatch(expected, digests)
        if problem is not None:
            return _failed(
                manifest,
                entry,
                folder,
                f"{src} (from --from) is not the expected file ({problem}). It was not used, "
                f"and {entry.name} was not downloaded instead: a file given with --from is "
                "never silently replaced. Replace or remove it, then run again.",
                origin=str(src),
            )
        os.replace(tmp, folder / entry.name)
    finally:
        tmp.unlink(missing_ok=True)
    return _finish(manifest, entry, folder, Outcome.COPIED, digests, expected, str(src))


def _hash_with_bar(
    run: _Run, path: Path, name: str, expected: FileChecksum, position: int | None
) -> Digests:
    """Hash a file on disk (the one in place, or a `--from` copy) under a "checking" bar."""
    with progress_bar(
        total=file_size(path),
        desc=f"checking {name}",
        enabled=run.downloader.progress,
        position=position,
        bytes_units=True,
    ) as bar:
        return hash_file(
            path, git_blob_sha1=expected.git_blob_sha1 is not None, on_bytes=bar.update
        )
