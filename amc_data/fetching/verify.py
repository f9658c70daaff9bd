"""`verify` and `info`: what is on disk, held to the manifests and the checksum record.

Both return data (frozen dataclasses); the CLI formats them.
"""

from __future__ import annotations

import enum
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..datadir import resolve_data_dir
from .checksums import Digests, FileChecksum, hash_file, mismatch
from .manifest import Manifest, expected_checksums, resolve_manifests

log = logging.getLogger(__name__)


class FileStatus(enum.Enum):
    """The state of one file on disk."""

    OK = "ok"  # matches every known value, and a hash was known
    MISSING = "missing"
    SIZE_MISMATCH = "size mismatch"
    HASH_MISMATCH = "hash mismatch"
    UNVERIFIABLE = "unverifiable"  # present, but no hash is known (never fetched by amc-data)
    NOT_HASHED = "present"  # present with the right size; not hashed (info's fast mode)
    UNREADABLE = "unreadable"  # there, but not a readable file (a folder, no permission, a loop)

    @property
    def failed(self) -> bool:
        """True for the states `verify` exits non-zero on."""
        return self in (
            FileStatus.MISSING,
            FileStatus.SIZE_MISMATCH,
            FileStatus.HASH_MISMATCH,
            FileStatus.UNREADABLE,
        )


@dataclass(frozen=True)
class FileReport:
    """One file: where it is, what it must be, what it is."""

    dataset: str
    name: str
    path: Path
    status: FileStatus
    expected: FileChecksum
    actual: Digests | None = None
    size: int | None = None  # bytes on disk (None when missing)
    detail: str | None = None  # what differs, or why it cannot be verified


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset as `info` sees it: its manifest, its folder, its files."""

    manifest: Manifest
    folder: Path
    files: tuple[FileReport, ...]


@dataclass(frozen=True)
class InfoReport:
    """What `info` returns: the data folder and each dataset in it."""

    data_dir: Path
    datasets: tuple[DatasetInfo, ...]


def check_file(
    dataset: str,
    path: Path,
    expected: FileChecksum,
    *,
    hash_it: bool = True,
    progress: bool = False,
) -> FileReport:
    """Hold one file to `expected`. Sizes are compared first, so a truncated file is caught
    without reading it; with `hash_it` false, a file of the right size is NOT_HASHED. A path
    that cannot be read as a file is UNREADABLE, with the reason in `detail`."""
    report = partial(FileReport, dataset, path.name, path, expected=expected)
    try:
        info = path.stat()
    except FileNotFoundError:
        return report(FileStatus.MISSING, detail="not there; run `amc-data fetch`")
    except OSError as exc:
        return report(FileStatus.UNREADABLE, detail=_unreadable(exc))
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return report(FileStatus.UNREADABLE, detail=f"{kind} where the file should be")
    size = info.st_size
    if expected.size is not None and size != expected.size:
        return report(
            FileStatus.SIZE_MISMATCH,
            size=size,
            detail=f"size: expected {expected.size} bytes, found {size} bytes",
        )
    if not hash_it:
        return report(FileStatus.NOT_HASHED, size=size)
    if not expected.has_hash:
        return report(
            FileStatus.UNVERIFIABLE,
            size=size,
            detail="no hash is known for it (the manifest gives none and none was recorded); "
            "`amc-data fetch` records one",
        )
    try:
        digests = hash_file(
            path, git_blob_sha1=expected.git_blob_sha1 is not None, progress=progress
        )
    except OSError as exc:
        return report(FileStatus.UNREADABLE, size=size, detail=_unreadable(exc))
    problem = mismatch(expected, digests)
    status = FileStatus.OK if problem is None else FileStatus.HASH_MISMATCH
    return report(status, actual=digests, size=size, detail=problem)


def _unreadable(exc: OSError) -> str:
    return f"cannot be read: {exc.strerror or exc}"


def _check_manifest(
    manifest: Manifest, data_dir: Path, *, hash_it: bool, progress: bool
) -> tuple[FileReport, ...]:
    folder = data_dir / manifest.name
    expected = expected_checksums(folder, manifest)
    reports = []
    for entry in manifest.files:
        path = folder / entry.name
        reports.append(
            check_file(
                manifest.name, path, expected[entry.name], hash_it=hash_it, progress=progress
            )
        )
        log.info("%s/%s: %s", manifest.name, entry.name, reports[-1].status.value)
    return tuple(reports)


def verify(
    datasets: Iterable[str] = (),
    *,
    data_dir: str | os.PathLike[str] | None = None,
    manifest_paths: Iterable[str | os.PathLike[str]] = (),
    progress: bool = False,
) -> list[FileReport]:
    """Re-hash every file of the named datasets (all bundled ones when none is named) against
    its manifest and the checksum record. One report per file, in manifest order."""
    root = resolve_data_dir(data_dir)
    reports: list[FileReport] = []
    for manifest in resolve_manifests(datasets, manifest_paths):
        reports.extend(_check_manifest(manifest, root, hash_it=True, progress=progress))
    return reports


def info(
    datasets: Iterable[str] = (),
    *,
    data_dir: str | os.PathLike[str] | None = None,
    manifest_paths: Iterable[str | os.PathLike[str]] = (),
    hash_files: bool = True,
    progress: bool = False,
) -> InfoReport:
    """The data folder, the manifests, and the state of each file (hashed unless `hash_files`
    is false, in which case only presence and size are checked)."""
    root = resolve_data_dir(data_dir)
    return InfoReport(
        data_dir=root,
        datasets=tuple(
            DatasetInfo(
                manifest=manifest,
                folder=root / manifest.name,
                files=_check_manifest(manifest, root, hash_it=hash_files, progress=progress),
            )
            for manifest in resolve_manifests(datasets, manifest_paths)
        ),
    )
