"""amc-data: the AMC (CVPR 2017) keyword datasets, fetched, verified and encoded exactly as the
authors did, in formats today's tools open.

The pipeline runs one way, one module per stage: `fetch` -> `archive` -> `encode` -> `dataset`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .archive import ArchiveLimits, ZipArchive, load_id_map, open_archive
from .datadir import resolve_data_dir
from .dataset import EncodedSplit, load_encoded
from .encode import EncodeConfig, EncodeResult, encode
from .errors import (
    AmcDataError,
    ArchiveError,
    ChecksumError,
    ConfigError,
    DownloadError,
    HtmlResponseError,
    InputError,
    LockTimeoutError,
    ManifestError,
    MissingDependencyError,
    UnsafePickleError,
)

try:
    __version__ = version("amc-data")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AmcDataError",
    "ArchiveError",
    "ArchiveLimits",
    "ChecksumError",
    "ConfigError",
    "DownloadError",
    "EncodeConfig",
    "EncodeResult",
    "EncodedSplit",
    "HtmlResponseError",
    "InputError",
    "LockTimeoutError",
    "ManifestError",
    "MissingDependencyError",
    "UnsafePickleError",
    "ZipArchive",
    "__version__",
    "encode",
    "load_encoded",
    "load_id_map",
    "open_archive",
    "resolve_data_dir",
]
