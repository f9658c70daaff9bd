"""Stage 2, archive: read members of the authors' zips (or the folders they unzip to) safely,
without extracting them, and load the authors' id-map pickles without running code.

`members` holds what both kinds of archive share (the member record, the caps, the rules for
member names), `zipindex` the checked central directory, `zipreader` and `folder` the two
readers, `pickles` the id-map loader.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ArchiveError
from .folder import DirectoryArchive
from .members import Archive, ArchiveLimits, Member, MemberLayout, find_layout, repeated_rows
from .pickles import load_id_map
from .zipreader import ZipArchive

__all__ = [
    "Archive",
    "ArchiveLimits",
    "DirectoryArchive",
    "Member",
    "MemberLayout",
    "ZipArchive",
    "find_layout",
    "load_id_map",
    "open_archive",
    "repeated_rows",
]


def open_archive(path: str | os.PathLike[str], limits: ArchiveLimits | None = None) -> Archive:
    """Open a zip archive, or a folder holding what it unzips to."""
    path = Path(path)
    if path.is_dir():
        return DirectoryArchive(path, limits)
    if not path.exists():
        raise ArchiveError(f"Archive {path} does not exist. Run `amc-data fetch` first.")
    if not path.is_file():
        raise ArchiveError(f"Archive {path} is not a regular file or folder; expected a zip.")
    return ZipArchive(path, limits)
