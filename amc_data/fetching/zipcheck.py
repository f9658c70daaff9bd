"""Does a file open as a complete zip archive? Checked before the bytes of an archive that has no
published hash are recorded as the truth.

Complete means: the end-of-central-directory record (zip64 included) sits at the very end of the
file, the central directory it points to ends exactly where that record begins, and walking the
directory finds as many entries as the record announces, each one pointing before the directory.
A truncated download loses its end record; junk after it, or a directory cut short, breaks the
arithmetic. Members are not decompressed: that is `encode`'s job.
"""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

_EOCD = struct.Struct(
    "<4s4H2LH"
)  # signature, disk, cd disk, entries here, entries, cd size, cd offset, comment length
_ZIP64_LOCATOR = struct.Struct("<4sLQL")  # signature, disk, zip64 record offset, disks
_ZIP64_EOCD = struct.Struct("<4sQ2H2L4Q")  # ..., entries here, entries, cd size, cd offset
_CENTRAL = struct.Struct("<4s24xHHH8xL")  # signature, name/extra/comment lengths, local offset
_EOCD_SIG, _LOCATOR_SIG, _ZIP64_SIG, _CENTRAL_SIG = b"PK\5\6", b"PK\6\7", b"PK\6\6", b"PK\1\2"
_MAX_COMMENT = 0xFFFF


def zip_problem(path: str | os.PathLike[str]) -> str | None:
    """Why the file at `path` is not a complete zip archive, in words; None when it is one."""
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size < _EOCD.size:
            return f"it is {size} bytes long, shorter than the smallest zip archive"
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _problem(data, size)


def _problem(data: mmap.mmap, size: int) -> str | None:
    eocd_at = _find_end_record(data, size)
    if eocd_at is None:
        return (
            "it has no end-of-central-directory record at its end: it is truncated, or not a "
            "zip archive"
        )
    _, disk, cd_disk, here, entries, cd_size, cd_offset, _ = _EOCD.unpack_from(data, eocd_at)
    directory_end = eocd_at
    if 0xFFFF in (here, entries) or 0xFFFFFFFF in (cd_size, cd_offset):
        zip64 = _zip64_record(data, eocd_at)
        if zip64 is None:
            return "its end record points to a zip64 record that is missing or damaged"
        directory_end, disk, cd_disk, here, entries, cd_size, cd_offset = zip64
    if disk or cd_disk or here != entries:
        return "it is one part of an archive split over several files"
    if cd_offset + cd_size != directory_end:
        return (
            f"its end record places the central directory at bytes {cd_offset} to "
            f"{cd_offset + cd_size}, but the directory must end at byte {directory_end}, where "
            "the end record begins: the file is truncated or damaged"
        )
    return _walk_directory(data, cd_offset, cd_size, entries)


def _find_end_record(data: mmap.mmap, size: int) -> int | None:
    """Offset of the end record whose comment runs exactly to the end of the file."""
    start = max(0, size - _EOCD.size - _MAX_COMMENT)
    at = data.rfind(_EOCD_SIG, start, size - _EOCD.size + 4)
    while at >= 0:
        comment = struct.unpack_from("<H", data, at + 20)[0]
        if at + _EOCD.size + comment == size:
            return at
        at = data.rfind(_EOCD_SIG, start, at + 3)  # an earlier signature, inside the comment
    return None


def _zip64_record(data: mmap.mmap, eocd_at: int) -> tuple[int, ...] | None:
    """(where the zip64 record begins, disk, directory's disk, entries here, entries, directory
    size, directory offset), None when the record is missing or damaged."""
    locator_at = eocd_at - _ZIP64_LOCATOR.size
    if locator_at < 0:
        return None
    signature, _, record_at, _ = _ZIP64_LOCATOR.unpack_from(data, locator_at)
    if signature != _LOCATOR_SIG or record_at + _ZIP64_EOCD.size > locator_at:
        return None
    fields = _ZIP64_EOCD.unpack_from(data, record_at)
    if fields[0] != _ZIP64_SIG:
        return None
    return (record_at, *fields[4:10])


def _walk_directory(data: mmap.mmap, offset: int, size: int, entries: int) -> str | None:
    """Check that the directory holds `entries` well-formed entries filling exactly `size`."""
    at, end = offset, offset + size
    for number in range(entries):
        if at + _CENTRAL.size > end:
            return f"its central directory ends after {number} of the {entries} entries announced"
        signature, name, extra, comment, local = _CENTRAL.unpack_from(data, at)
        if signature != _CENTRAL_SIG:
            return f"entry {number} of its central directory is damaged (no entry signature)"
        if local != 0xFFFFFFFF and local >= offset:  # zip64 offsets live in the extra field
            return f"entry {number} of its central directory points past the archive's data"
        at += _CENTRAL.size + name + extra + comment
    if at != end:
        return (
            f"its central directory holds {at - offset} bytes of entries, but the end record "
            f"says {size}"
        )
    return None


def is_zip_name(name: str) -> bool:
    """True for a file name that says the file is a zip archive."""
    return Path(name).suffix.lower() == ".zip"
