"""Safe reading of the downloaded inputs: zip archives (or the folders they unzip to) and the
authors' Python 2 pickles.

Zip members are read straight from the archive, never extracted to disk. Before anything is
read, every member name is checked (no absolute paths, no `..`, no duplicates) and the declared
sizes are capped, so a hostile archive (zip slip, zip bomb) is refused up front; while reading,
inflation never runs past the size the directory declared, and every member's CRC is checked.

The central directory is parsed here rather than by `zipfile`: for the million-member Lite
archive `zipfile.ZipFile` spends about 9 s building `ZipInfo` objects, this parser about 2 s.
Reading a member is a slice of a memory map and one `zlib` call.
"""

from __future__ import annotations

import array
import mmap
import os
import pickle
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np

from .errors import ArchiveError, InputError, UnsafePickleError

GiB = 1 << 30
MiB = 1 << 20

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory record
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4xHH4xLLLHHH8xL")  # central directory header, fields we use
_LOCAL_LENGTHS = struct.Struct("<HH")  # name and extra lengths at offset 26 of a local header
_STORED, _DEFLATED = 0, 8
_ONE_SHOT_LIMIT = 64 << 10  # compressed bytes; inflates to at most ~66 MB
_FLAG_ENCRYPTED, _FLAG_UTF8 = 0x1, 0x800


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps that make a zip bomb fail fast instead of filling memory or disk."""

    max_total_size: int = 64 * GiB  # sum of declared uncompressed sizes
    max_member_size: int = 4 * GiB
    max_ratio: float = 200.0  # uncompressed / compressed, checked for members over ratio_floor
    ratio_floor: int = 1 * MiB


class Member(NamedTuple):
    """One file inside an archive, as its central directory (or the file system) describes it."""

    name: str
    offset: int  # of the local header in the zip; -1 for a file in a folder
    compressed_size: int
    size: int
    crc: int
    method: int
    flags: int


def is_junk(name: str) -> bool:
    """True for macOS resource entries and Finder files that zip tools add by accident."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base == ".DS_Store" or base.startswith("._")


def _maybe_unsafe(name: str) -> bool:
    """A cheap pre-check that lets the million ordinary names skip `_unsafe_reason`."""
    return not name or name[0] in "/\\" or ".." in name or "\x00" in name or name[1:2] == ":"


def _unsafe_reason(name: str) -> str | None:
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "contains '..'"
    return None


class Archive(Protocol):
    """What the encoder needs from an input: look members up by name and read them."""

    path: Path

    def __contains__(self, name: object) -> bool: ...
    def member(self, name: str) -> Member | None: ...
    def top_folders(self) -> list[str]: ...
    def read_member(self, member: Member) -> bytes: ...
    def locations(self, names: Sequence[str]) -> np.ndarray: ...
    def read_at(self, name: str, location: Sequence[int]) -> bytes: ...


class ZipArchive:
    """A zip file, read safely and fast. Picklable: a copy sent to a worker process re-opens the
    file there and parses the directory only if it has to look names up itself."""

    def __init__(self, path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or ArchiveLimits()
        self._rows: dict[str, int] | None = None  # member name -> row of `_fields`
        self._fields = np.zeros((0, 6), dtype=np.int64)  # offset, csize, size, crc, method, flags
        self._map: mmap.mmap | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "limits": self.limits}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["limits"])  # type: ignore[misc]

    def __enter__(self) -> ZipArchive:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None

    def _mapping(self) -> mmap.mmap:
        if self._map is None:
            try:
                with open(self.path, "rb") as file:
                    if os.fstat(file.fileno()).st_size == 0:
                        raise self._error("is empty, not a zip archive")
                    self._map = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
            except OSError as exc:
                raise ArchiveError(f"Cannot open archive {self.path}: {exc}.") from exc
        return self._map

    def _error(self, what: str, member: str | None = None) -> ArchiveError:
        where = f"{self.path} (member {member!r})" if member else str(self.path)
        return ArchiveError(
            f"Archive {where} {what}. The file is damaged, truncated or not what it should be: "
            "run `amc-data verify` and fetch it again."
        )

    # -- directory -----------------------------------------------------------------------------
    def _index(self) -> dict[str, int]:
        if self._rows is None:
            self._rows, self._fields = self._parse_directory()
        return self._rows

    def _parse_directory(self) -> tuple[dict[str, int], np.ndarray]:
        data = self._mapping()
        tail_start = max(0, len(data) - (_EOCD.size + 0xFFFF))
        eocd_at = data.rfind(b"PK\x05\x06", tail_start)
        if eocd_at < 0 or eocd_at + _EOCD.size > len(data):
            raise self._error("has no zip directory (end-of-central-directory record not found)")
        _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(data, eocd_at)
        directory_end = eocd_at
        locator_at = eocd_at - _ZIP64_LOCATOR.size
        if locator_at >= 0 and data[locator_at : locator_at + 4] == b"PK\x06\x07":
            _, _, zip64_at, _ = _ZIP64_LOCATOR.unpack_from(data, locator_at)
            if data[zip64_at : zip64_at + 4] != b"PK\x06\x06":
                raise self._error("has a broken zip64 directory record")
            fields = _ZIP64_EOCD.unpack_from(data, zip64_at)
            disk, cd_disk, count, cd_size, cd_offset = fields[4], fields[5], *fields[7:10]
            directory_end = zip64_at
        if disk != 0 or cd_disk != 0:
            raise self._error("spans several disks, which is not supported")
        # Bytes prepended to the archive (a self-extractor stub) shift every offset alike.
        shift = directory_end - cd_size - cd_offset
        if shift < 0:
            raise self._error("has a central directory that points outside the file")
        return self._parse_entries(data, cd_offset + shift, count, shift)

    def _parse_entries(
        self, data: mmap.mmap, position: int, count: int, shift: int
    ) -> tuple[dict[str, int], np.ndarray]:
        # The hot loop of opening a million-member archive: one unpack per entry, a cheap safety
        # pre-check, fields into one flat buffer; `Member` objects are made only when asked for.
        members: dict[str, int] = {}
        fields = array.array("q")
        total = 0
        max_member, max_ratio, ratio_floor = (
            self.limits.max_member_size,
            self.limits.max_ratio,
            self.limits.ratio_floor,
        )
        unpack = _CENTRAL.unpack_from
        for _ in range(count):
            signature, flags, method, crc, csize, size, name_len, extra_len, comment_len, offset = (
                unpack(data, position)
            )
            if signature != b"PK\x01\x02":
                raise self._error("has a damaged central directory")
            start = position + _CENTRAL.size
            raw_name = data[start : start + name_len]
            # ASCII is the common case and decodes fast as UTF-8; cp437 is zip's legacy default.
            utf8 = flags & _FLAG_UTF8 or raw_name.isascii()
            name = raw_name.decode("utf-8" if utf8 else "cp437")
            if 0xFFFFFFFF in (csize, size, offset):
                extra = data[start + name_len : start + name_len + extra_len]
                size, csize, offset = _zip64_sizes(extra, size, csize, offset)
            position = start + name_len + extra_len + comment_len
            if _maybe_unsafe(name) and (reason := _unsafe_reason(name)):
                raise ArchiveError(
                    f"Archive {self.path}: member {name!r} {reason}; refusing the whole archive "
                    "(it could write or read outside its folder). Delete it and fetch it again."
                )
            if name in members:
                raise self._error("holds two members of the same name; refusing it", name)
            if size > max_member:
                raise self._error(
                    f"declares {size:,} bytes for one member, over the cap of {max_member:,}", name
                )
            if size > ratio_floor and size > max_ratio * max(csize, 1):
                raise self._error(
                    f"declares a compression ratio of {size / max(csize, 1):,.0f}:1, over the cap "
                    f"of {max_ratio:,.0f}:1 (a zip bomb?)",
                    name,
                )
            total += size
            if not name.endswith("/"):
                members[name] = len(members)
                fields.extend((offset + shift, csize, size, crc, method, flags))
        if total > self.limits.max_total_size:
            raise self._error(
                f"declares {total:,} bytes uncompressed in all, over the cap of "
                f"{self.limits.max_total_size:,}"
            )
        return members, np.frombuffer(fields, dtype=np.int64).reshape(-1, 6)

    # -- lookups -------------------------------------------------------------------------------
    def __contains__(self, name: object) -> bool:
        return name in self._index()

    def member(self, name: str) -> Member | None:
        """The member called `name`, or None."""
        row = self._index().get(name)
        return None if row is None else Member(name, *self._fields[row].tolist())

    def locations(self, names: Sequence[str]) -> np.ndarray:
        """`(len(names), 6)` int64: each member's fields after its name, for `read_at`; a row of
        -1 for a name the archive lacks.

        The compact form in which the encoder ships a million member references to workers.
        """
        get = self._index().get
        rows = np.fromiter((get(name, -1) for name in names), dtype=np.int64, count=len(names))
        found = np.vstack((self._fields, np.full((1, 6), -1, dtype=np.int64)))
        return found[rows]

    def read_at(self, name: str, location: Sequence[int]) -> bytes:
        """Read a member from its name and a row of `locations`, without the directory."""
        return self.read_member(Member(name, *location))

    def members(self, include_junk: bool = False) -> Iterator[Member]:
        """Every file member, in directory order (junk entries left out unless asked for)."""
        index = self._index()
        for name, fields in zip(index, self._fields.tolist(), strict=True):
            if include_junk or not is_junk(name):
                yield Member(name, *fields)

    def top_folders(self) -> list[str]:
        """Names of the folders at the archive's top level (junk left out), sorted."""
        tops = {name.split("/", 1)[0] for name in self._index() if "/" in name}
        return sorted(top for top in tops if not is_junk(top + "/"))

    # -- reading -------------------------------------------------------------------------------
    def read(self, name: str) -> bytes:
        """The bytes of the member called `name`."""
        member = self.member(name)
        if member is None:
            raise ArchiveError(f"Archive {self.path} has no member {name!r}.")
        return self.read_member(member)

    def read_member(self, member: Member) -> bytes:
        """The bytes of `member`, inflated (never past its declared size) and CRC-checked."""
        data = self._mapping()
        if member.flags & _FLAG_ENCRYPTED:
            raise self._error("is encrypted; amc-data reads only unencrypted archives", member.name)
        at = member.offset
        if data[at : at + 4] != b"PK\x03\x04":
            raise self._error("has no local header where its directory says", member.name)
        name_len, extra_len = _LOCAL_LENGTHS.unpack_from(data, at + 26)
        start = at + 30 + name_len + extra_len
        end = start + member.compressed_size
        if end > len(data):
            raise self._error("ends before this member's data does (truncated?)", member.name)
        if member.method == _STORED:
            content = data[start:end]
        elif member.method == _DEFLATED:
            try:
                if member.compressed_size <= _ONE_SHOT_LIMIT:
                    # Deflate inflates at most 1032:1, so a small member stays small even if its
                    # declared size lies; one-shot inflation is 3x faster than a decompressobj.
                    content = zlib.decompress(data[start:end], -15, member.size)
                else:
                    inflater = zlib.decompressobj(-15)
                    content = inflater.decompress(data[start:end], member.size + 1)
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


def _zip64_sizes(extra: bytes, size: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace the 0xFFFFFFFF placeholders with the values of the zip64 extra field."""
    position = 0
    while position + 4 <= len(extra):
        tag, length = struct.unpack_from("<HH", extra, position)
        if tag == 0x0001:
            values = iter(struct.unpack_from(f"<{length // 8}Q", extra, position + 4))
            if size == 0xFFFFFFFF:
                size = next(values)
            if csize == 0xFFFFFFFF:
                csize = next(values)
            if offset == 0xFFFFFFFF:
                offset = next(values)
            break
        position += 4 + length
    return size, csize, offset


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
        if _unsafe_reason(name):
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

    def locations(self, names: Sequence[str]) -> np.ndarray:
        """Sizes only (`read_at` goes by name); a row of -1 for a missing file."""
        rows = np.full((len(names), 6), -1, dtype=np.int64)
        for row, name in enumerate(names):
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
    hits = [sum(layout.name(name) in archive for name in sample) for layout in layouts]
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
