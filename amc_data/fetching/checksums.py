"""Checksums: the one streaming hasher, one-pass file verification (with its progress bar), and
the pure decision of what to do with a partial download (start afresh, or continue it).

Two kinds of checksum are supported: sha256, and git's blob sha1
(`sha1(b"blob <size>\\0" + data)`), which verifies files whose size and sha256 nobody published
but whose git repository did.
"""

from __future__ import annotations

import enum
import hashlib
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..progress import progress_bar

CHUNK_SIZE = 1 << 20  # 1 MiB: large enough for throughput, small enough for a smooth progress bar

ChecksumSource = Literal["manifest", "recorded", "none"]


@dataclass(frozen=True)
class FileChecksum:
    """What a file is expected to be. Any field may be unknown (None).

    `source` says where the values came from: the manifest, the checksum record of a first
    download ("recorded"), or nowhere ("none": the file cannot be verified yet).
    """

    size: int | None = None
    sha256: str | None = None
    git_blob_sha1: str | None = None
    source: ChecksumSource = "none"

    @property
    def has_hash(self) -> bool:
        """True when a content hash is known, so the file can truly be verified."""
        return self.sha256 is not None or self.git_blob_sha1 is not None


@dataclass(frozen=True)
class Digests:
    """What a file (or a download) actually is."""

    size: int
    sha256: str
    git_blob_sha1: str | None = None


class StreamHasher:
    """Hashes data fed in pieces: sha256 always; git blob sha1 when the total size is known up
    front (git's header carries it)."""

    def __init__(self, *, git_size: int | None = None) -> None:
        self._sha256 = hashlib.sha256()
        self._sha1 = None
        if git_size is not None:
            self._sha1 = hashlib.sha1(b"blob %d\0" % git_size)
        self.size = 0

    def update(self, data: bytes | memoryview) -> None:
        """Feed the next piece of data."""
        self._sha256.update(data)
        if self._sha1 is not None:
            self._sha1.update(data)
        self.size += len(data)

    def digests(self) -> Digests:
        """The digests of everything fed so far."""
        return Digests(
            size=self.size,
            sha256=self._sha256.hexdigest(),
            git_blob_sha1=self._sha1.hexdigest() if self._sha1 is not None else None,
        )


class HashingWriter:
    """Writes a stream to a file and hashes it on the way. Writing and hashing run in a helper
    thread, so reading the network overlaps them (file writes and hashlib release the GIL)."""

    def __init__(self, path: str | os.PathLike[str], *, append: bool, hasher: StreamHasher) -> None:
        self._fh = open(path, "ab" if append else "wb")  # noqa: SIM115 -- closed by close()
        self._hasher = hasher
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, name="amc-data-writer", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while (chunk := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._fh.write(chunk)
                    self._hasher.update(chunk)
                except BaseException as exc:  # handed to the producer on its next call
                    self._error = exc

    def write(self, chunk: bytes) -> None:
        """Queue a chunk; raises the helper's error (a full disk, say) if it met one."""
        if self._error is not None:
            raise self._error
        self._queue.put(chunk)

    def close(self) -> Digests:
        """Wait for the queued chunks, close the file, and return the digests."""
        self._queue.put(None)
        self._thread.join()
        self._fh.close()
        if self._error is not None:
            raise self._error
        return self._hasher.digests()


def hash_file(
    path: str | os.PathLike[str],
    *,
    git_blob_sha1: bool = True,
    hasher: StreamHasher | None = None,
    progress: bool = False,
    position: int | None = None,
) -> Digests:
    """Hash a file in one pass (sha256, plus git blob sha1 unless `git_blob_sha1` is false).

    With `hasher`, the file's bytes are fed into that hasher (used to take up a partial download
    where it stopped) and its digests are returned. With `progress`, a "checking <name>" bar is
    drawn (at row `position` when several run at once).
    """
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if hasher is None:
            hasher = StreamHasher(git_size=size if git_blob_sha1 else None)
        buffer = bytearray(CHUNK_SIZE)
        view = memoryview(buffer)
        with progress_bar(
            total=size,
            desc=f"checking {Path(path).name}",
            enabled=progress and size > 0,
            position=position,
            bytes_units=True,
        ) as bar:
            while n := fh.readinto(buffer):
                hasher.update(view[:n])
                bar.update(n)
    return hasher.digests()


def mismatch(expected: FileChecksum, actual: Digests) -> str | None:
    """Describe how `actual` differs from `expected` (None when it matches every known value).

    The text names each value that differs, expected then found, e.g.
    "size: expected 100 bytes, found 90 bytes".
    """
    problems = []
    if expected.size is not None and expected.size != actual.size:
        problems.append(f"size: expected {expected.size} bytes, found {actual.size} bytes")
    if expected.sha256 is not None and expected.sha256 != actual.sha256:
        problems.append(f"sha256: expected {expected.sha256}, found {actual.sha256}")
    if expected.git_blob_sha1 is not None and expected.git_blob_sha1 != actual.git_blob_sha1:
        found = actual.git_blob_sha1 or "nothing (it was not computed)"
        problems.append(f"git blob sha1: expected {expected.git_blob_sha1}, found {found}")
    return "; ".join(problems) or None


class Action(enum.Enum):
    """What to do about a partial download."""

    DOWNLOAD = "download"  # fetch from byte 0 (any partial download is discarded)
    RESUME = "resume"  # continue the partial download from the bytes it holds


def decide(*, partial_bytes: int, expected_size: int | None, resumable: bool) -> Action:
    """Pure decision for a partial download, from what is on disk.

    `partial_bytes`: bytes the partial holds (0 when there is none). `resumable`: the partial
    was started from this source, and either a validator was kept that lets the server prove
    the file has not changed since, or a known hash will catch a spliced file. A partial at
    least as large as the expected size cannot be continued (it is complete but was never
    verified, or it is wrong): it is downloaded afresh.
    """
    if partial_bytes <= 0 or not resumable:
        return Action.DOWNLOAD
    if expected_size is not None and partial_bytes >= expected_size:
        return Action.DOWNLOAD
    return Action.RESUME


def file_size(path: Path) -> int:
    """Size of `path` in bytes, 0 when it does not exist."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0
