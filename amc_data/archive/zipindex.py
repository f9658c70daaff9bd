"""A zip archive's central directory, parsed into numpy arrays and checked before anything is read.

The Lite archive has a million members. `zipfile.ZipFile` spends about 9 s and several hundred
MB building a `ZipInfo` per member; here the directory is read in one piece, the entries are
found and decoded column-wise with numpy, and the names are kept as one sorted byte array
(about 30 MB) that answers a million lookups with one `searchsorted`. Directories that the
column-wise path cannot handle (zip64 sizes in entries, cp437 names, a signature inside a name)
take a plain loop to the same arrays.

Checks made here, before any member is read: no absolute names, no `..` components, no NUL, no
two members of one name; declared sizes and compression ratios within `ArchiveLimits`.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ArchiveError
from ..machine import pread

GiB = 1 << 30
MiB = 1 << 20
FLAG_ENCRYPTED, FLAG_UTF8 = 0x1, 0x800
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4xHH4xLLLHHH8xL")  # the central header fields we use
_CENTRAL_SIGNATURE = 0x02014B50
_BLOCK = 1 << 16  # rows gathered at a time: bounds the temporary index arrays


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps that make a zip bomb fail fast instead of filling memory or disk."""

    max_total_size: int = 64 * GiB  # sum of declared uncompressed sizes
    max_member_size: int = 4 * GiB
    max_ratio: float = 200.0  # uncompressed / compressed, checked for members over ratio_floor
    ratio_floor: int = 1 * MiB


def archive_error(path: Path, what: str, member: str | None = None) -> ArchiveError:
    where = f"{path} (member {member!r})" if member else str(path)
    return ArchiveError(
        f"Archive {where} {what}. The file is damaged, truncated or not what it should be: "
        "run `amc-data verify` and fetch it again."
    )


def unsafe_reason(name: str) -> str | None:
    """Why a member name could escape its folder, or None."""
    if not name:
        return "is empty"
    if "\x00" in name:
        return "contains a NUL byte"
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "contains '..'"
    return None


def is_junk(name: str) -> bool:
    """True for macOS resource entries and Finder files that zip tools add by accident."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base == ".DS_Store" or base.startswith("._")


def _chars(names: np.ndarray) -> np.ndarray:
    """A numpy bytes array seen as a `(n, width)` uint8 matrix (NUL-padded), without a copy."""
    names = np.ascontiguousarray(names)
    return names.view(np.uint8).reshape(names.size, names.dtype.itemsize)


def name_keys(names: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-1a hash of each name (numpy bytes; the NUL padding is not hashed).

    Lookups go through these keys: sorting and searching a million integers is several times
    faster than sorting and searching a million strings. Every hit is confirmed by comparing
    the names themselves, so a collision can never make a wrong match.
    """
    keys = np.full(names.size, 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for lo in range(0, names.size, _BLOCK):
        chars = _chars(names[lo : lo + _BLOCK])
        lengths = (chars != 0).sum(axis=1)
        block = keys[lo : lo + _BLOCK]
        for column in range(chars.shape[1]):
            mixed = (block ^ chars[:, column]) * prime
            np.copyto(block, mixed, where=column < lengths)
    return keys


@dataclass(frozen=True)
class ZipIndex:
    """The file members of an archive (folders left out), in directory order, with a hash
    index for lookups by name."""

    names: np.ndarray  # (n,) bytes (dtype S): names encoded as UTF-8
    fields: np.ndarray  # (n, 6) int64: offset, compressed size, size, crc, method, flags
    key_order: np.ndarray  # (n,) int64: rows sorted by `name_keys`
    sorted_keys: np.ndarray  # (n,) uint64: the keys in that order
    top_folders: tuple[str, ...]

    def rows(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """(len(names),) int64: each name's row, or -1 where the archive has no such member.

        `names` are strings, or UTF-8 bytes in a numpy array (the fast way for a million).
        """
        if isinstance(names, np.ndarray):
            query = names
        else:
            query = np.array([name.encode("utf-8") for name in names], dtype=bytes)
        if query.size == 0 or self.names.size == 0:
            return np.full(query.size, -1, dtype=np.int64)
        keys = name_keys(query)
        at = np.searchsorted(self.sorted_keys, keys).clip(max=self.names.size - 1)
        rows = self.key_order[at]
        found = (self.sorted_keys[at] == keys) & (self.names[rows] == query)
        # Two names with one key (about never): walk the run of equal keys for the rest.
        for i in np.flatnonzero(~found & (self.sorted_keys[at] == keys)).tolist():
            position = int(at[i]) + 1
            while position < self.names.size and self.sorted_keys[position] == keys[i]:
                if self.names[self.key_order[position]] == query[i]:
                    rows[i], found[i] = self.key_order[position], True
                    break
                position += 1
        return np.where(found, rows, -1)

    def name(self, row: int) -> str:
        return bytes(self.names[row]).decode("utf-8")


def read_index(path: Path, limits: ArchiveLimits) -> ZipIndex:
    """Read and check the central directory of the zip file at `path`."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            directory, count, shift = _read_directory(path, file.fileno(), size)
    except OSError as exc:
        raise ArchiveError(f"Cannot read archive {path}: {exc}.") from exc
    try:
        names, fields = _parse_columns(directory, count) or _parse_loop(path, directory, count)
    except (struct.error, StopIteration, UnicodeDecodeError, IndexError) as exc:
        raise archive_error(path, f"has a damaged central directory ({exc})") from None
    del directory  # tens of MB for a million members: gone before the checks allocate theirs
    fields[:, 0] += shift
    return _checked(path, names, fields, limits, size)


def _read_directory(path: Path, fd: int, size: int) -> tuple[bytes, int, int]:
    """The central directory's bytes, its entry count, and the shift of all offsets."""
    if size == 0:
        raise archive_error(path, "is empty, not a zip archive")
    tail_start = max(0, size - (_EOCD.size + 0xFFFF + _ZIP64_LOCATOR.size))
    tail = pread(fd, size - tail_start, tail_start)
    eocd_at = tail.rfind(b"PK\x05\x06")
    if eocd_at < 0 or eocd_at + _EOCD.size > len(tail):
        raise archive_error(path, "has no zip directory (end-of-central-directory record missing)")
    _, disk, cd_disk, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, eocd_at)
    directory_end = tail_start + eocd_at
    locator_at = eocd_at - _ZIP64_LOCATOR.size
    if locator_at >= 0 and tail[locator_at : locator_at + 4] == b"PK\x06\x07":
        # The zip64 record sits right before its locator; the locator's own offset is wrong
        # when bytes were prepended to the archive, so it is only the second place to look.
        _, _, zip64_at, _ = _ZIP64_LOCATOR.unpack_from(tail, locator_at)
        before_locator = tail_start + locator_at - _ZIP64_EOCD.size
        record = pread(fd, _ZIP64_EOCD.size, max(before_locator, 0))
        if record[:4] == b"PK\x06\x06":
            zip64_at = before_locator
        else:
            record = pread(fd, _ZIP64_EOCD.size, zip64_at)
        if len(record) < _ZIP64_EOCD.size or record[:4] != b"PK\x06\x06":
            raise archive_error(path, "has a broken zip64 directory record")
        fields = _ZIP64_EOCD.unpack(record)
        disk, cd_disk, count, cd_size, cd_offset = fields[4], fields[5], *fields[7:10]
        directory_end = zip64_at
    if disk != 0 or cd_disk != 0:
        raise archive_error(path, "spans several disks, which is not supported")
    # Bytes prepended to the archive (a self-extractor stub) shift every offset alike.
    shift = directory_end - cd_size - cd_offset
    if shift < 0:
        raise archive_error(path, "has a central directory that points outside the file")
    directory = pread(fd, cd_size, cd_offset + shift)
    if len(directory) != cd_size:
        raise archive_error(path, "ends inside its central directory (truncated?)")
    return directory, count, shift


def _parse_columns(directory: bytes, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The column-wise parse, or None when this directory needs the loop."""
    if count == 0 or len(directory) < 46 * count:
        return None
    data = np.frombuffer(directory, dtype=np.uint8)
    starts = np.sort(
        np.concatenate([
            np.flatnonzero(
                np.frombuffer(directory, "<u4", (len(directory) - a) // 4, a) == _CENTRAL_SIGNATURE
            ) * 4 + a
            for a in range(4)
        ])
    )  # fmt: skip
    if starts.size != count or starts[0] != 0 or starts[-1] + 46 > len(directory):
        return None  # a signature inside a name or extra field: let the loop walk it

    def u16(at: int) -> np.ndarray:  # (count,) little-endian field at `at` of each entry
        return data[starts + at].astype(np.uint32) | data[starts + at + 1].astype(np.uint32) << 8

    def u32(at: int) -> np.ndarray:
        return u16(at) | u16(at + 2) << 16

    name_len = u16(28)
    ends = starts + 46 + name_len + u16(30) + u16(32)
    if not (np.array_equal(ends[:-1], starts[1:]) and ends[-1] == len(directory)):
        return None
    del ends
    flags = u16(8)
    fields = np.empty((count, 6), dtype=np.int64)
    for column, at in enumerate((42, 20, 24, 16)):  # offset, compressed size, size, crc
        fields[:, column] = u32(at)
    fields[:, 4], fields[:, 5] = u16(10), flags
    if (fields[:, :3] == 0xFFFFFFFF).any():
        return None  # zip64 sizes inside entries
    width = int(name_len.max())
    chars = np.zeros((count, max(width, 1)), dtype=np.uint8)
    columns = np.arange(width)
    legacy = flags & FLAG_UTF8 == 0
    for lo in range(0, count, _BLOCK):  # a block at a time: the temporaries stay small
        hi = min(lo + _BLOCK, count)
        inside = columns < name_len[lo:hi, None]
        block = np.where(inside, data[np.where(inside, starts[lo:hi, None] + 46 + columns, 0)], 0)
        if ((block == 0) & inside).any():
            return None  # NUL inside a name: the loop reports it
        if ((block >= 0x80).any(axis=1) & legacy[lo:hi]).any():
            return None  # cp437 names: the loop transcodes them
        chars[lo:hi, :width] = block
    return chars.view(f"S{chars.shape[1]}").ravel(), fields


def _parse_loop(path: Path, directory: bytes, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Entry by entry, for what the column-wise parse leaves: zip64 entries, cp437 names."""
    names: list[bytes] = []
    fields: list[tuple[int, ...]] = []
    position = 0
    for _ in range(count):
        if directory[position : position + 4] != b"PK\x01\x02":
            raise archive_error(path, "has a damaged central directory")
        _, flags, method, crc, csize, size, name_len, extra_len, comment_len, offset = (
            _CENTRAL.unpack_from(directory, position)
        )
        start = position + _CENTRAL.size
        raw = directory[start : start + name_len]
        name = raw.decode("utf-8" if flags & FLAG_UTF8 or raw.isascii() else "cp437")
        if "\x00" in name:
            raise ArchiveError(
                f"Archive {path}: member {name!r} contains a NUL byte; refusing the whole archive."
            )
        if 0xFFFFFFFF in (csize, size, offset):
            extra = directory[start + name_len : start + name_len + extra_len]
            size, csize, offset = _zip64_sizes(extra, size, csize, offset)
        names.append(name.encode("utf-8"))
        fields.append((offset, csize, size, crc, method, flags))
        position = start + name_len + extra_len + comment_len
    return np.array(names, dtype=bytes), np.array(fields, dtype=np.int64).reshape(-1, 6)


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


def _checked(
    path: Path, names: np.ndarray, fields: np.ndarray, limits: ArchiveLimits, file_size: int
) -> ZipIndex:
    """Refuse unsafe or undecodable names, duplicates, oversized members and data beyond the
    end of the file; drop folder entries; index by name."""
    count = names.size
    chars = names.view(np.uint8).reshape(count, -1) if count else np.zeros((0, 1), np.uint8)
    suspicious = np.zeros(count, dtype=bool)
    non_ascii = np.zeros(count, dtype=bool)
    is_folder = np.zeros(count, dtype=bool)
    for lo in range(0, count, _BLOCK):  # a block at a time: the temporaries stay small
        block = chars[lo : lo + _BLOCK]
        first, second = block[:, 0], block[:, 1] if block.shape[1] > 1 else block[:, 0] * 0
        dots = (block[:, :-1] == ord(".")) & (block[:, 1:] == ord("."))
        suspicious[lo : lo + _BLOCK] = (
            (first == 0) | (first == ord("/")) | (first == ord("\\")) | (second == ord(":"))
            | dots.any(axis=1)
        )  # fmt: skip
        non_ascii[lo : lo + _BLOCK] = (block >= 0x80).any(axis=1)
        last = np.maximum((block != 0).sum(axis=1) - 1, 0)
        is_folder[lo : lo + _BLOCK] = block[np.arange(block.shape[0]), last] == ord("/")
    for row in np.flatnonzero(non_ascii):
        try:
            bytes(names[row]).decode("utf-8")
        except UnicodeDecodeError:
            shown = bytes(names[row]).decode("utf-8", "replace")
            raise archive_error(path, "has a member name that is not valid UTF-8", shown) from None
    for row in np.flatnonzero(suspicious):
        name = bytes(names[row]).decode("utf-8")
        if reason := unsafe_reason(name):
            raise ArchiveError(
                f"Archive {path}: member {name!r} {reason}; refusing the whole archive (it could "
                "write or read outside its folder). Delete it and fetch it again."
            )
    sizes, compressed = fields[:, 2], np.maximum(fields[:, 1], 1)
    beyond = fields[:, 0] + fields[:, 1] > file_size
    for bad, what in (
        (beyond, "declares data beyond the end of the file (truncated, or a crafted size)"),
        (sizes > limits.max_member_size, "declares {size:,} bytes for one member, over the cap "
         f"of {limits.max_member_size:,}"),
        ((sizes > limits.ratio_floor) & (sizes > limits.max_ratio * compressed),
         "declares a compression ratio of {ratio:,.0f}:1, over the cap of "
         f"{limits.max_ratio:,.0f}:1 (a zip bomb?)"),
    ):  # fmt: skip
        if bad.any():
            row = int(np.argmax(bad))
            ratio = sizes[row] / compressed[row]
            message = what.format(size=int(sizes[row]), ratio=ratio)
            raise archive_error(path, message, bytes(names[row]).decode("utf-8"))
    total = int(sizes.sum())
    if total > limits.max_total_size:
        raise archive_error(
            path,
            f"declares {total:,} bytes uncompressed in all, over the cap of "
            f"{limits.max_total_size:,}",
        )
    keep = np.flatnonzero(~is_folder)
    names, fields = (names[keep], fields[keep]) if keep.size < count else (names, fields)
    keys = name_keys(names)
    key_order = np.argsort(keys, kind="stable")
    sorted_keys = keys[key_order]
    # Only names whose key occurs more than once can be repeats: compare those exactly.
    for key in np.unique(sorted_keys[1:][sorted_keys[1:] == sorted_keys[:-1]]).tolist():
        values, counts = np.unique(names[key_order[sorted_keys == key]], return_counts=True)
        if (counts > 1).any():
            name = bytes(values[np.argmax(counts > 1)]).decode("utf-8")
            raise archive_error(path, "holds two members of the same name; refusing it", name)
    return ZipIndex(names, fields, key_order, sorted_keys, _top_folders(names))


def _top_folders(names: np.ndarray) -> tuple[str, ...]:
    """The distinct first path components of `names` (junk left out)."""
    tops: set[bytes] = set()
    for lo in range(0, names.size, _BLOCK):
        block = names[lo : lo + _BLOCK]
        chars = _chars(block)
        slash = chars == ord("/")
        rows = np.flatnonzero(slash.any(axis=1))
        if rows.size == 0:
            continue
        first = np.argmax(slash[rows], axis=1)
        prefixes = np.where(np.arange(chars.shape[1]) < first[:, None], chars[rows], 0)
        tops.update(bytes(p) for p in np.unique(prefixes.view(f"S{chars.shape[1]}").ravel()))
    decoded = sorted(top.rstrip(b"\0").decode("utf-8") for top in tops)
    return tuple(top for top in decoded if not is_junk(top + "/"))
