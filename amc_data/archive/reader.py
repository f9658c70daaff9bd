"""Safe reading of the downloaded inputs: zip archives (or the folders they unzip to) and the
authors' Python 2 pickles.

Zip members are read straight from the archive, never extracted to disk. Before anything is
read, the central directory is parsed and checked (`zipindex`): no absolute paths, no `..`, no
duplicates, declared sizes capped, so a hostile archive (zip slip, zip bomb) is refused up front.
While reading, inflation never runs past the size the directory declared, and every member's
CRC is checked. Reading a member is one `pread` and one `zlib` call.
"""

from __future__ import annotations

import os
import pickle
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from ..errors import ArchiveError, InputError, UnsafePickleError
from ..machine import pread
from .zipindex import (
    FLAG_ENCRYPTED,
    ArchiveLimits,
    ZipIndex,
    archive_error,
    is_junk,
    read_index,
    unsafe_reason,
)

__all__ = [
    "ArchiveLimits",
    "DirectoryArchive",
    "Member",
    "MemberLayout",
    "ZipArchive",
    "find_layout",
    "is_junk",
    "load_id_map",
    "open_archive",
]  # fmt: skip

_LOCAL_LENGTHS = struct.Struct("<HH")  # name and extra lengths at offset 26 of a local header
_LOCAL_SLACK = 160  # bytes read beyond the fixed local header, for its name and extra field
_STORED, _DEFLATED = 0, 8
_ONE_SHOT_LIMIT = 64 << 10  # compressed bytes; inflates to at most ~66 MB


class Member(NamedTuple):
    """One file inside an archive, as its central directory (or the file system) describes it."""

    name: str
    offset: int  # of the local header in the zip; -1 for a file in a folder
    compressed_size: int
    size: int
    crc: int
    method: int
    flags: int


class Archive(Protocol):
    """What the encoder needs from an input: look members up by name and read them."""

    path: Path

    def __contains__(self, name: object) -> bool: ...
    def member(self, name: str) -> Member | None: ...
    def top_folders(self) -> list[str]: ...
    def read_member(self, member: Member) -> bytes: ...
    def locations(self, names: Sequence[str] | np.ndarray) -> np.ndarray: ...
    def read_at(self, name: str, location: Sequence[int]) -> bytes: ...
    def close(self) -> None: ...


class ZipArchive:
    """A zip file, read safely and fast. Picklable: a copy sent to a worker process re-opens the
    file there and parses the directory only if it has to look names up itself."""

    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()
        self._index: ZipIndex | None = None
        self._fd: int | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "limits": self.limits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["limits"])  # type: ignore[misc]

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Close the file and drop the parsed directory (both come back on demand)."""
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
        self._fd = None
        self._index = None

    def _file(self) -> int:
        # Members are read with pread: no shared file position between threads, and no memory
        # map whose touched pages would count as this process's memory.
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:  # the whole archive, not one member: never "skipped"
                raise InputError(f"Cannot open archive {self.path}: {exc}.") from exc
        return self._fd

    def _error(self, what: str, member: str | None = None) -> ArchiveError:
        return archive_error(self.path, what, member)

    def index(self) -> ZipIndex:
        """The parsed, checked central directory."""
        if self._index is None:
            self._index = read_index(self.path, self.limits)
        return self._index

    # -- lookups -------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.index().rows([name])[0] >= 0

    def member(self, name: str) -> Member | None:
        """The member called `name`, or None."""
        index = self.index()
        row = int(index.rows([name])[0])
        return None if row < 0 else Member(name, *index.fields[row].tolist())

    def locations(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """`(len(names), 6)` int64: each member's fields after its name, for `read_at`; a row of
        -1 for a name the archive lacks.

        The compact form in which the encoder ships a million member references to workers.
        """
        index = self.index()
        rows = index.rows(names)
        if index.fields.size == 0:
            return np.full((len(names), 6), -1, dtype=np.int64)
        locations = index.fields[rows]  # a missing name (-1) picks the last row: overwritten
        locations[rows < 0] = -1
        return locations

    def read_at(self, name: str, location: Sequence[int]) -> bytes:
        """Read a member from its name and a row of `locations`, without the directory.

        The common case (a small deflated member that reads back whole and passes its checks)
        takes a short path; anything else goes through `read_member`, which says what is wrong.
        """
        offset, compressed_size, size, crc, method, flags = location
        if (
            method == _DEFLATED
            and not flags & FLAG_ENCRYPTED
            and compressed_size <= _ONE_SHOT_LIMIT
        ):
            block = pread(self._fd or self._file(), 30 + _LOCAL_SLACK + compressed_size, offset)
            if block[:4] == b"PK\x03\x04":
                name_len, extra_len = _LOCAL_LENGTHS.unpack_from(block, 26)
                start = 30 + name_len + extra_len
                if start + compressed_size <= len(block):
                    data = memoryview(block)[start : start + compressed_size]
                    try:
                        content = zlib.decompress(data, -15, size)
                    except zlib.error:
                        content = b""
                    if len(content) == size and zlib.crc32(content) == crc:
                        return content
        return self.read_member(Member(name, *location))

    def members(self, include_junk: bool = False) -> Iterator[Member]:
        """Every file member, in directory order (junk entries left out unless asked for)."""
        index = self.index()
        for row in range(index.names.size):
            name = index.name(row)
            if include_junk or not is_junk(name):
                yield Member(name, *index.fields[row].tolist())

    def top_folders(self) -> list[str]:
        """Names of the folders at the archive's top level (junk left out), sorted."""
        return list(self.index().top_folders)

    # -- reading -------------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """The bytes of the member called `name`."""
        member = self.member(name)
        if member is None:
            raise ArchiveError(f"Archive {self.path} has no member {name!r}.")
        return self.read_member(member)

    def read_member(self, member: Member) -> bytes:
        """The bytes of `member`, inflated (never past its declared size) and CRC-checked."""
        if member.flags & FLAG_ENCRYPTED:
            raise self._error("is encrypted; amc-data reads only unencrypted archives", member.name)
        # One read for the local header and the data, guessing the header's variable part.
        block = pread(self._file(), 30 + _LOCAL_SLACK + member.compressed_size, member.offset)
        if block[:4] != b"PK\x03\x04":
            raise self._error("has no local header where its directory says", member.name)
        name_len, extra_len = _LOCAL_LENGTHS.unpack_from(block, 26)
        start = 30 + name_len + extra_len
        end = start + member.compressed_size
        if end > len(block):
            block = pread(self._file(), end, member.offset)
            if end > len(block):
                raise self._error("ends before this member's data does (truncated?)", member.name)
        data = memoryview(block)[start:end]
        if member.method == _STORED:
            content = bytes(data)
        elif member.method == _DEFLATED:
            try:
                if member.compressed_size <= _ONE_SHOT_LIMIT:
                    # Deflate inflates at most 1032:1, so a small member stays small even if its
                    # declared size lies; one-shot inflation is 3x faster than a decompressobj.
                    content = zlib.decompress(data, -15, member.size)
                else:
                    inflater = zlib.decompressobj(-15)
                    content = inflater.decompress(data, member.size + 1)
            except zlib.error as exc:
                raise self._error(f"has damaged compressed data ({exc})", member.name) from exc
        else:
            raise self._error(
                f"uses compression method {member.method}; only stored and deflate are "
                "supported: re-zip it with `zip -r`",
                member.name,
            )
        if len(content) != member.size:
            raise self._error(
                f"inflates to {len(content):,} bytes or more where its directory says "
                f"{member.size:,}",
                member.name,
            )
        if zlib.crc32(content) != member.crc:
            raise self._error(
                f"fails its CRC check (expected {member.crc:08x}, found {zlib.crc32(content):08x})",
                member.name,
            )
        return content

    def iter_members(self, include_junk: bool = False) -> Iterator[tuple[Member, bytes]]:
        """Each member with its bytes, in file order, without extracting anything to disk."""
        for member in sorted(self.members(include_junk), key=lambda m: m.offset):
            yield member, self.read_member(member)


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
        if unsafe_reason(name):
            raise ArchiveError(f"Refusing member name {name!r} in folder {self.path}.")
        return self.path / name

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._file(name).is_file()

    def member(self, name: str) -> Member | None:
        try:
            size = self._file(name).stat().st_size
        except (FileNotFoundError, NotADirectoryError):
            return None
        return Member(name, -1, size, size, 0, _STORED, 0)

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
                rows[row] = (-1, member.size, member.size, 0, _STORED, 0)
        return rows

    def read_at(self, name: str, location: Sequence[int]) -> bytes:
        return self.read(name)

    def read_member(self, member: Member) -> bytes:
        if member.size > self.limits.max_member_size:
            raise ArchiveError(f"File {self.path / member.name} is over the member-size cap.")
        try:
            return self._file(member.name).read_bytes()
        except OSError as exc:
            raise ArchiveError(f"Cannot read {self.path / member.name}: {exc}.") from exc

    def read(self, name: str) -> bytes:
        member = self.member(name)
        if member is None:
            raise ArchiveError(f"Folder {self.path} has no file {name!r}.")
        return self.read_member(member)


def open_archive(path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> Archive:
    """Open a zip archive, or a folder holding what it unzips to."""
    path = Path(path)
    if path.is_dir():
        return DirectoryArchive(path, limits)
    if not path.is_file():
        raise ArchiveError(f"Archive {path} does not exist. Run `amc-data fetch` first.")
    return ZipArchive(path, limits)


@dataclass(frozen=True)
class MemberLayout:
    """How an archive's member names relate to the names the authors' scripts expect.

    Archives are sometimes zipped with one wrapping folder around everything, or without the
    folder level the scripts expect (a folder unzipped in place); `name` maps an expected
    relative name such as `keywords_dev/00048500.json` to the member that holds it.
    """

    prefix: str = ""
    strip_first_folder: bool = False

    def name(self, expected: str) -> str:
        if self.strip_first_folder and "/" in expected:
            expected = expected.split("/", 1)[1]
        return self.prefix + expected


def find_layout(archive: Archive, expected: Iterable[str]) -> MemberLayout:
    """The layout under which most of the `expected` names (a sample) exist in `archive`.

    Ties go to the plainest layout: the archive's root, names as expected.
    """
    sample = list(expected)
    layouts = [
        MemberLayout(prefix, strip)
        for prefix in ["", *(f"{top}/" for top in archive.top_folders())]
        for strip in (False, True)
    ]
    hits = [
        int((archive.locations([layout.name(name) for name in sample])[:, 2] >= 0).sum())
        for layout in layouts
    ]
    return layouts[hits.index(max(hits))]


# -- pickles -----------------------------------------------------------------------------------
class _NoGlobalsUnpickler(pickle.Unpickler):
    """Loads plain data only: a class or function reference (how pickles run code) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(
            f"refused to load global {module}.{name}: the authors' id maps hold plain data only"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused a persistent id: the authors' id maps hold plain data")


def load_id_map(path: str | os.PathLike[str]) -> dict[str, int]:
    """Load an `img_id_map*.pkl` (a Python 2 pickle of `{"img57159": 57159, ...}`) without
    allowing any globals, so a tampered file cannot run code."""
    path = Path(path)
    try:
        with open(path, "rb") as file:
            loaded = _NoGlobalsUnpickler(file, encoding="utf-8").load()
    except UnsafePickleError as exc:
        raise UnsafePickleError(
            f"{path}: {exc}. Nothing was run. This file is not the authors' pickle: delete it "
            "and fetch it again."
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a readable pickle ({exc}). Fetch it again.") from exc
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc}.") from exc
    if not isinstance(loaded, dict) or not all(
        isinstance(k, str) and type(v) is int for k, v in loaded.items()
    ):
        raise InputError(
            f"{path} holds a {type(loaded).__name__}, not a dict of image names to integer ids."
        )
    return loaded
