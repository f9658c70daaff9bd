"""Reading members straight from a zip archive, never extracting them to disk.

Before anything is read, the central directory is parsed and checked (`zipindex`): no absolute
paths, no `..`, no duplicates, no members sharing bytes, declared sizes capped, so a hostile
archive (zip slip, zip bomb) is refused up front. While reading, inflation stops one byte past
the size the directory declared, and every member's CRC is checked. Reading a member is one
`pread` (two when its local header is unusually long) and one inflation.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ArchiveError, InputError
from ..machine import pread
from .members import DEFLATED, STORED, ArchiveLimits, Member, is_junk
from .zipindex import FLAG_ENCRYPTED, ZipIndex, archive_error, read_index

__all__ = ["ZipArchive"]

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra lengths at 26
_LOCAL_SLACK = 160  # bytes read beyond the fixed local header, for its name and extra field
_BZIP2, _LZMA = 12, 14
_STDLIB_METHODS = (_BZIP2, _LZMA)


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
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)
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
        return self.read_at(member.name, member[1:])

    def iter_members(self, include_junk: bool = False) -> Iterator[tuple[Member, bytes]]:
        """Each member with its bytes, in file order, without extracting anything to disk."""
        for member in sorted(self.members(include_junk), key=lambda m: m.offset):
            yield member, self.read_member(member)

    def read_at(self, name: str, location: Sequence[int]) -> bytes:
        """`read_member` from a member's name and its row of `locations`, without the directory
        (what a worker process does, a million times: hence one function, one local-header
        parse, and one `pread` unless the header's variable part is longer than guessed)."""
        offset, compressed_size, size, crc, method, flags = location
        if flags & FLAG_ENCRYPTED:
            raise self._error("is encrypted; amc-data reads only unencrypted archives", name)
        fd = self._fd if self._fd is not None else self._file()
        block = pread(fd, _LOCAL_HEADER.size + _LOCAL_SLACK + compressed_size, offset)
        if len(block) < _LOCAL_HEADER.size:
            raise self._error("ends before this member's local header (truncated?)", name)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack_from(block)
        if signature != b"PK\x03\x04":
            raise self._error("has no local header where its directory says", name)
        start = _LOCAL_HEADER.size + name_len + extra_len
        end = start + compressed_size
        if end > len(block):
            block += pread(fd, end - len(block), offset + len(block))
            if end > len(block):
                raise self._error("ends before this member's data does (truncated?)", name)
        data = memoryview(block)[start:end]
        if method == DEFLATED:
            try:
                # max_length caps the output: one byte more than declared is enough to refuse
                # a member that lies about its size, whatever its compressed bytes would give.
                content = zlib.decompressobj(-15).decompress(data, size + 1)
            except zlib.error as exc:
                raise self._error(f"has damaged compressed data ({exc})", name) from exc
        elif method == STORED:
            content = bytes(data)
        elif method in _STDLIB_METHODS:
            try:
                content = _stdlib_inflate(method, data, size + 1)
            except (ValueError, ImportError) as exc:
                raise self._error(f"has damaged compressed data ({exc})", name) from exc
        else:
            raise self._error(
                f"uses compression method {method}; amc-data reads stored, deflate, bzip2 and "
                "lzma members: re-zip it with `zip -r`",
                name,
            )
        if len(content) != size:
            more = " or more" if len(content) > size else ""
            raise self._error(
                f"inflates to {len(content):,} bytes{more} where its directory says {size:,}", name
            )
        if zlib.crc32(content) != crc:
            raise self._error(
                f"fails its CRC check (expected {crc:08x}, found {zlib.crc32(content):08x})", name
            )
        return content


def _stdlib_inflate(method: int, data: memoryview, max_length: int) -> bytes:
    """A bzip2 or lzma member's bytes, at most `max_length` of them; `ValueError` if damaged.

    These rare methods go to the standard library's own decompressors (not through `zipfile`,
    which would first parse the whole directory again), with the same cap on the output.
    """
    if method == _BZIP2:
        import bz2

        try:
            return bz2.BZ2Decompressor().decompress(data, max_length)
        except OSError as exc:  # bz2 reports bad data as OSError
            raise ValueError(str(exc)) from exc
    import lzma

    # A zip's lzma member: 2 bytes of encoder version, 2 bytes of properties size, then the
    # LZMA1 properties (lc/lp/pb in one byte, the dictionary size in four) and the raw stream.
    props_size = int.from_bytes(data[2:4], "little")
    props = bytes(data[4 : 4 + props_size])
    if props_size != 5 or len(props) != 5:
        raise ValueError(f"lzma properties of {props_size} bytes, expected 5")
    lc, rest = props[0] % 9, props[0] // 9
    filters = [
        {
            "id": lzma.FILTER_LZMA1,
            "lc": lc,
            "lp": rest % 5,
            "pb": rest // 5,
            "dict_size": int.from_bytes(props[1:5], "little"),
        }
    ]
    try:
        inflater = lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
        return inflater.decompress(data[4 + props_size :], max_length)
    except lzma.LZMAError as exc:
        raise ValueError(str(exc)) from exc
