"""A folder standing in for the archive it was unzipped from.

Only regular files are read: a FIFO would block the read forever, and a link to a device such
as `/dev/zero` would be read until memory runs out, so anything else is refused by name before
it is opened for reading (and checked again on the open file, in case it was swapped between).
A symbolic link to a regular file is followed; a dangling one is an error that names it.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import AmcDataError, ArchiveError
from .members import STORED, ArchiveLimits, Member, is_junk, unsafe_reason

__all__ = ["DirectoryArchive", "read_regular_file"]

# Opening a FIFO for reading waits for a writer unless non-blocking; regular files ignore it.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


class DirectoryArchive:
    """A folder standing in for the archive it was unzipped from (same API as `ZipArchive`)."""

    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()

    def __enter__(self) -> DirectoryArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    def close(self) -> None:
        pass

    def _file(self, name: str) -> Path:
        if reason := unsafe_reason(name):
            raise ArchiveError(
                f"Refusing member name {name!r} in folder {self.path}: it {reason} and could "
                "read outside the folder."
            )
        return self.path / name

    # -- lookups -------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.member(name) is not None

    def member(self, name: str) -> Member | None:
        """The entry called `name`, or None where there is none (or only a folder).

        Entries that cannot be read (a FIFO, a device, a dangling link) are members of size 0,
        so that reading them says what is wrong instead of calling them missing.
        """
        path = self._file(name)
        try:
            info = path.stat()
        except (FileNotFoundError, NotADirectoryError):
            return Member(name, -1, 0, 0, 0, STORED, 0) if path.is_symlink() else None
        except OSError:  # a link loop, a permission problem: reading will say which
            return Member(name, -1, 0, 0, 0, STORED, 0)
        if stat.S_ISDIR(info.st_mode):
            return None
        size = info.st_size if stat.S_ISREG(info.st_mode) else 0
        return Member(name, -1, size, size, 0, STORED, 0)

    def top_folders(self) -> list[str]:
        return sorted(
            entry.name
            for entry in os.scandir(self.path)
            if entry.is_dir() and not is_junk(entry.name)
        )

    def locations(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """Sizes only (`read_at` goes by name); a row of -1 for a missing file."""
        rows = np.full((len(names), 6), -1, dtype=np.int64)
        for row, name in enumerate(names):
            if isinstance(name, bytes | np.bytes_):
                name = bytes(name).decode("utf-8")
            if unsafe_reason(name):
                continue  # a name that would leave the folder is simply not a member
            member = self.member(name)
            if member is not None:
                rows[row] = (-1, member.size, member.size, 0, STORED, 0)
        return rows

    # -- reading -------------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """The bytes of the regular file `name` (a link to one is followed)."""
        return read_regular_file(self._file(name), self.limits.max_member_size)

    def read_member(self, member: Member) -> bytes:
        return self.read(member.name)

    def read_at(self, name: str, location: Sequence[int]) -> bytes:
        return self.read(name)


def read_regular_file(
    path: Path, max_size: int, error: type[AmcDataError] = ArchiveError, what: str = "member"
) -> bytes:
    """The bytes of `path` if it is a regular file (a link to one is followed) of at most
    `max_size` bytes; otherwise `error`, naming it, and nothing is read."""
    try:
        before = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        if path.is_symlink():
            raise error(
                f"{path} is a symbolic link to {os.readlink(path)!r}, which does not exist. "
                "Replace the link with the file it stands for, or remove it."
            ) from None
        raise error(f"{path} does not exist.") from None
    except OSError as exc:
        raise error(f"Cannot read {path}: {exc}.") from exc
    _check_regular(path, before, max_size, error, what)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise error(f"Cannot read {path}: {exc}.") from exc
    with open(fd, "rb") as file:
        opened = os.fstat(fd)
        _check_regular(path, opened, max_size, error, what)  # swapped since the stat?
        try:
            # Never more than the size seen (+1 to notice growth): a bounded allocation.
            data = file.read(opened.st_size + 1)
        except OSError as exc:
            raise error(f"Cannot read {path}: {exc}.") from exc
    if len(data) > opened.st_size:
        raise error(f"{path} grew while it was read; read it again once it is complete.")
    return data


def _check_regular(
    path: Path, info: os.stat_result, max_size: int, error: type[AmcDataError], what: str
) -> None:
    if not stat.S_ISREG(info.st_mode):
        link = f" (through a symbolic link to {os.readlink(path)!r})" if path.is_symlink() else ""
        raise error(
            f"{path} is {_kind(info.st_mode)}{link}, not a regular file; only regular files are "
            "read. Replace it with the file it stands for, or remove it."
        )
    if info.st_size > max_size:
        raise error(
            f"{path} holds {info.st_size:,} bytes, over the cap of {max_size:,} for one {what}."
        )
