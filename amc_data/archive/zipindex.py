"""A zip archive's central directory, parsed into numpy arrays and checked before anything is read.

The Lite archive has a million members. `zipfile.ZipFile` spends about 9 s and several hundred
MB building a `ZipInfo` per member; here the directory is read in one piece, the entries are
found and decoded column-wise with numpy, and the names are kept as one sorted byte array
(about 30 MB) that answers a million lookups with one `searchsorted`. Directories that the
column-wise path cannot handle (zip64 sizes in entries, cp437 names, a signature inside a name)
take a plain loop to the same arrays. The loop is kept rather than handing those directories to
`zipfile`: every entry past 4 GiB carries zip64 fields, so an archive that large would take the
loop for most of its members, and there `zipfile` is several times slower (on 100,000 zip64
entries: 0.5 to 0.6 s for the loop, 1.5 to 3.2 s for `zipfile`, with nearly twice the memory).

Checks made here, before any member is read: no absolute names, no `..` components, no NUL, no
two members of one name, no two members sharing bytes (many directory entries pointing at one
deflate stream is how the worst zip bombs multiply); declared sizes and compression ratios
within `ArchiveLimits`.
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
from .members import ArchiveLimits, NameIndex, is_junk, unsafe_reason
from .members import chars as name_chars

FLAG_ENCRYPTED, FLAG_UTF8 = 0x1, 0x800
_EOCD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s4xHH4xLLLHHH8xL")  # the central header fields we use
_CENTRAL_SIGNATURE = 0x02014B50
_LOCAL_HEADER_SIZE = 30  # the fixed part of a member's local header, before its name
_BLOCK = 1 << 16  # rows gathered at a time: bounds the temporary index arrays


def archive_error(path: Path, what: str, member: str | None = None) -> ArchiveError:
    where = f"{path} (member {member!r})" if member else str(path)
    return ArchiveError(
        f"Archive {where} {what}. The file is damaged, truncated or not what it should be: "
        "run `amc-data verify` and fetch it again."
    )


@dataclass(frozen=True)
class ZipIndex:
    """The file members of an archive (folders left out), in directory order, with a hash
    index for lookups by name."""

    names: np.ndarray  # (n,) bytes (dtype S): names encoded as UTF-8
    fields: np.ndarray  # (n, 6) int64: offset, compressed size, size, crc, method, flags
    lookup: NameIndex
    top_folders: tuple[str, ...]

    def rows(self, names: Sequence[str] | np.ndarray) -> np.ndarray:
        """(len(names),) int64: each name's row, or -1 where the archive has no such member.

        `names` are strings, or UTF-8 bytes in a numpy array (the fast way for a million).
        """
        if not isinstance(names, np.ndarray):
            names = np.array([name.encode("utf-8") for name in names], dtype=bytes)
        return self.lookup.rows(names)

    def name(self, row: int) -> str:
        return bytes(self.names[row]).decode("utf-8")


def read_index(path: Path, limits: ArchiveLimits) -> ZipIndex:
    """Read and check the central directory of the zip file at `path`."""
    try:
        with open(path, "rb") as file:
            size = os.fstat(file.fileno()).st_size
            directory, count, shift, directory_start = _read_directory(path, file.fileno(), size)
    except OSError as exc:
        raise ArchiveError(f"Cannot read archive {path}: {exc}.") from exc
    try:
        names, fields = _parse_columns(directory, count) or _parse_loop(path, directory, count)
    except (struct.error, StopIteration, UnicodeDecodeError, IndexError) as exc:
        raise archive_error(path, f"has a damaged central directory ({exc})") from None
    del directory  # tens of MB for a million members: gone before the checks allocate theirs
    fields[:, 0] += shift
    return _checked(path, names, fields, limits, directory_start)


def _read_directory(path: Path, fd: int, size: int) -> tuple[bytes, int, int, int]:
    """The central directory's bytes, its entry count, the shift of all offsets, and where the
    directory starts in the file (member data lies before it)."""
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
    return directory, count, shift, cd_offset + shift


def _parse_columns(directory: bytes, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The column-wise parse, or None when this directory needs the loop."""
    if count == 0 or len(directory) < 46 * count:
        return None
    data = np.frombuffer(directory, dtype=np.uint8)
    starts = np.sort(
        np.concatenate(
            [
                np.flatnonzero(
                    np.frombuffer(directory, "<u4", (len(directory) - a) // 4, a)
                    == _CENTRAL_SIGNATURE
                )
                * 4
                + a
                for a in range(4)
            ]
        )
    )
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
    path: Path, names: np.ndarray, fields: np.ndarray, limits: ArchiveLimits, data_end: int
) -> ZipIndex:
    """Refuse unsafe or undecodable names, duplicates, members sharing bytes, oversized members
    and data beyond `data_end` (the start of the central directory); drop folder entries; index
    by name."""
    suspicious, non_ascii, is_folder = _classify_names(names)
    _check_names(path, names, suspicious, non_ascii)
    _check_no_overlap(path, names, fields, data_end)
    _check_sizes(path, names, fields, limits)
    keep = np.flatnonzero(~is_folder)
    names, fields = (names[keep], fields[keep]) if keep.size < names.size else (names, fields)
    lookup = NameIndex.build(names)
    repeated = lookup.repeats()
    if repeated.size:
        name = bytes(names[repeated[0]]).decode("utf-8")
        raise archive_error(path, "holds two members of the same name; refusing it", name)
    return ZipIndex(names, fields, lookup, _top_folders(names))


def _classify_names(names: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per member name: whether it may be unsafe (a closer look is needed), whether it holds
    bytes beyond ASCII (so must be checked as UTF-8), and whether it names a folder."""
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
            (first == 0)
            | (first == ord("/"))
            | (first == ord("\\"))
            | (second == ord(":"))
            | dots.any(axis=1)
        )
        non_ascii[lo : lo + _BLOCK] = (block >= 0x80).any(axis=1)
        last = np.maximum((block != 0).sum(axis=1) - 1, 0)
        is_folder[lo : lo + _BLOCK] = block[np.arange(block.shape[0]), last] == ord("/")
    return suspicious, non_ascii, is_folder


def _check_names(
    path: Path, names: np.ndarray, suspicious: np.ndarray, non_ascii: np.ndarray
) -> None:
    """Refuse a member name that is not UTF-8, or that could write or read outside its folder."""
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


def _check_sizes(path: Path, names: np.ndarray, fields: np.ndarray, limits: ArchiveLimits) -> None:
    """Refuse a member over the size or compression-ratio cap, or an archive over the total cap."""
    sizes, compressed = fields[:, 2], np.maximum(fields[:, 1], 1)
    for bad, what in (
        (
            sizes > limits.max_member_size,
            f"declares {{size:,}} bytes for one member, over the cap of {limits.max_member_size:,}",
        ),
        (
            (sizes > limits.ratio_floor) & (sizes > limits.max_ratio * compressed),
            "declares a compression ratio of {ratio:,.0f}:1, over the cap of "
            f"{limits.max_ratio:,.0f}:1 (a zip bomb?)",
        ),
    ):
        if bad.any():
            at = int(np.argmax(bad))
            ratio = sizes[at] / compressed[at]
            message = what.format(size=int(sizes[at]), ratio=ratio)
            raise archive_error(path, message, bytes(names[at]).decode("utf-8"))
    total = int(sizes.sum())
    if total > limits.max_total_size:
        raise archive_error(
            path,
            f"declares {total:,} bytes uncompressed in all, over the cap of "
            f"{limits.max_total_size:,}",
        )


def _check_no_overlap(path: Path, names: np.ndarray, fields: np.ndarray, data_end: int) -> None:
    """Refuse members whose bytes (local header and data) run into the next member's or into
    the central directory.

    A well-formed zip stores each member once, one after another. Directory entries that share
    one deflate stream let a few KB inflate to gigabytes, once per entry; entries that point
    past the data are truncation or a crafted size.
    """
    if fields.shape[0] == 0:
        return
    offsets = fields[:, 0]
    order = None if (offsets[1:] >= offsets[:-1]).all() else np.argsort(offsets, kind="stable")
    starts = offsets if order is None else offsets[order]
    ends = starts + _LOCAL_HEADER_SIZE + (fields[:, 1] if order is None else fields[order, 1])
    beyond = ends > data_end
    if beyond.any():
        row = int(np.argmax(beyond))
        row = row if order is None else int(order[row])
        raise archive_error(
            path,
            "declares data beyond the end of the file or into its central directory "
            "(truncated, or a crafted size)",
            bytes(names[row]).decode("utf-8"),
        )
    overlapping = np.flatnonzero(ends[:-1] > starts[1:])
    if overlapping.size:
        first, second = int(overlapping[0]), int(overlapping[0]) + 1
        if order is not None:
            first, second = int(order[first]), int(order[second])
        other = bytes(names[second]).decode("utf-8")
        raise archive_error(
            path,
            f"has members that share bytes (this one and {other!r}); a zip stores each member "
            "once, so this is a crafted archive (a zip bomb?); refusing it",
            bytes(names[first]).decode("utf-8"),
        )


def _top_folders(names: np.ndarray) -> tuple[str, ...]:
    """The distinct first path components of `names` (junk left out)."""
    tops: set[bytes] = set()
    for lo in range(0, names.size, _BLOCK):
        block = names[lo : lo + _BLOCK]
        chars = name_chars(block)
        slash = chars == ord("/")
        rows = np.flatnonzero(slash.any(axis=1))
        if rows.size == 0:
            continue
        first = np.argmax(slash[rows], axis=1)
        prefixes = np.where(np.arange(chars.shape[1]) < first[:, None], chars[rows], 0)
        tops.update(bytes(p) for p in np.unique(prefixes.view(f"S{chars.shape[1]}").ravel()))
    decoded = sorted(top.rstrip(b"\0").decode("utf-8") for top in tops)
    return tuple(top for top in decoded if not is_junk(top + "/"))
