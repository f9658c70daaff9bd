"""Stage 1, fetch: put every file of a dataset in its folder, verified.

`core` runs the stage (locks, `--from` copies, checksum records); `download` is the HTTP
transport, with `body` (decoding, HTML sniffing) and `partial` (what a partial download may be
continued from); `gdrive` lists Drive folders and reads Drive's confirmation page; `manifest`
reads the per-dataset TOML manifests and the checksum record (`checksums.json`); `checksums`
hashes files and streams; `zipcheck` tells a complete zip from a truncated one; `problems` names
what went wrong; `verify` re-hashes what is on disk.
"""

from __future__ import annotations

from .core import FetchResult, Outcome, fetch, fetch_manifests
from .download import HttpDownloader, UrlSource
from .problems import Problem, SourceError
from .verify import info, verify

__all__ = [
    "FetchResult",
    "HttpDownloader",
    "Outcome",
    "Problem",
    "SourceError",
    "UrlSource",
    "fetch",
    "fetch_manifests",
    "info",
    "verify",
]
