"""Stage 2, archive: read members of the authors' zips (or the folders they unzip to) safely,
without extracting them, and load the authors' id-map pickles without running code."""

from __future__ import annotations

from .reader import Archive, ArchiveLimits, ZipArchive, load_id_map, open_archive

__all__ = ["Archive", "ArchiveLimits", "ZipArchive", "load_id_map", "open_archive"]
