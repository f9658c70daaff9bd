"""Stage 1, fetch: put every file of a dataset in its folder, verified.

`core` runs the stage (locks, `--from` copies, checksum records); `download` is the HTTP
transport; `gdrive` lists Drive folders and passes Drive's confirmation page; `manifest` reads
the per-dataset TOML manifests and the checksum record; `checksums` hashes files and streams;
`verify` re-hashes what is on disk.
"""

from __future__ import annotations

from .core import FetchResult, Outcome, fetch, fetch_manifests
from .download import HttpDownloader, UrlSource
from .verify import info, verify

__all__ = [
    "FetchResult",
    "HttpDownloader",
    "Outcome",
    "UrlSource",
    "fetch",
    "fetch_manifests",
    "info",
    "verify",
]
