"""What every archive shares: the member record, the reader protocol, the size caps, and the
rules for member names (which are unsafe, which are junk, how a million are looked up, where an
archive keeps the files a script expects).

Each rule lives here once; the zip reader, the folder reader and the encoder's planner call it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np

GiB = 1 << 30
MiB = 1 << 20
STORED, DEFLATED = 0, 8
_BLOCK = 1 << 16  # rows hashed at a time: bounds the temporary arrays


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


# -- names that are unsafe or junk -------------------------------------------------------------
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


# -- a million names, looked up through hash keys ----------------------------------------------
def chars(names: np.ndarray) -> np.ndarray:
    """A numpy bytes array seen as a `(n, width)` uint8 matrix (NUL-padded), without a copy."""
    names = np.ascontiguousarray(names)
    return names.view(np.uint8).reshape(names.size, names.dtype.itemsize)


def name_keys(names: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-1a hash of each name (numpy bytes; the NUL padding is not hashed).

    Sorting and searching a million integers is several times faster than sorting and searching
    a million strings. A key is never trusted alone: `NameIndex` compares the names themselves
    wherever keys are equal, so a collision can never make a wrong match.
    """
    keys = np.full(names.size, 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    for lo in range(0, names.size, _BLOCK):
        block_chars = chars(names[lo : lo + _BLOCK])
        lengths = (block_chars != 0).sum(axis=1)
        block = keys[lo : lo + _BLOCK]
        for column in range(block_chars.shape[1]):
            mixed = (block ^ block_chars[:, column]) * prime
            np.copyto(block, mixed, where=column < lengths)
    return keys


@dataclass(frozen=True)
class NameIndex:
    """Names (numpy bytes) indexed by their hash keys: exact lookups and exact repeats, with
    names compared only where keys collide."""

    names: np.ndarray  # (n,) bytes (dtype S)
    key_order: np.ndarray  # (n,) int64: rows sorted by `name_keys`, stable
    sorted_keys: np.ndarray  # (n,) uint64: the keys in that order

    @classmethod
    def build(cls, names: np.ndarray) -> NameIndex:
        keys = name_keys(names)
        key_order = np.argsort(keys, kind="stable")
        return cls(names, key_order, keys[key_order])

    def rows(self, query: np.ndarray) -> np.ndarray:
        """(len(query),) int64: the row of each queried name (numpy bytes), -1 where absent.
        With repeated names, the first row."""
        if query.size == 0 or self.names.size == 0:
            return np.full(query.size, -1, dtype=np.int64)
        keys = name_keys(query)
        at = np.searchsorted(self.sorted_keys, keys).clip(max=self.names.size - 1)
        rows = self.key_order[at]
        same_key = self.sorted_keys[at] == keys
        found = same_key & (self.names[rows] == query)
        # Two names with one key (about never): walk the run of equal keys for the rest.
        for i in np.flatnonzero(same_key & ~found).tolist():
            position = int(at[i]) + 1
            while position < self.names.size and self.sorted_keys[position] == keys[i]:
                if self.names[self.key_order[position]] == query[i]:
                    rows[i], found[i] = self.key_order[position], True
                    break
                position += 1
        return np.where(found, rows, -1)

    def repeats(self) -> np.ndarray:
        """Rows whose name equals an earlier row's, ascending. Only names whose key occurs more
        than once are compared, so a million distinct names cost one hash and one sort."""
        shared = np.zeros(self.names.size, dtype=bool)
        equal = self.sorted_keys[1:] == self.sorted_keys[:-1]
        shared[1:] |= equal
        shared[:-1] |= equal
        first_seen: set[bytes] = set()
        repeated = []
        for row in np.sort(self.key_order[shared]).tolist():
            name = bytes(self.names[row])
            if name in first_seen:
                repeated.append(row)
            else:
                first_seen.add(name)
        return np.array(repeated, dtype=np.int64)


def repeated_rows(names: np.ndarray) -> np.ndarray:
    """Rows of `names` (numpy bytes) equal to an earlier row, ascending."""
    return NameIndex.build(names).repeats()


# -- where an archive keeps the files a script expects -----------------------------------------
@dataclass(frozen=True)
class MemberLayout:
    """How an archive's member names relate to the names the authors' scripts expect.

    Archives are sometimes zipped with one wrapping folder around everything, or without the
    folder level the scripts expect (a folder unzipped in place); `name` maps an expected
    relative name such as `keywords_dev/00048500.json` to the member that holds it.
    """

    prefix: str = ""
    strip_first_folder: bool = False

    def head(self, folder: str) -> str:
        """What goes before a file name for the expected `folder/<file>`."""
        return self.prefix if self.strip_first_folder else f"{self.prefix}{folder}/"

    def name(self, expected: str) -> str:
        """The member that holds the expected relative name (`folder/file` or `file`)."""
        folder, slash, rest = expected.partition("/")
        return self.head(folder) + rest if slash else self.prefix + expected

    def names(self, folder: str, files: np.ndarray) -> np.ndarray:
        """`name(f"{folder}/{file}")` for each of `files` (numpy UTF-8 bytes), column-wise."""
        head = self.head(folder).encode("utf-8")
        return np.char.add(head, files) if head else files


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
