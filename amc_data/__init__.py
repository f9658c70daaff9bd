"""amc-data: the AMC (CVPR 2017) keyword datasets, fetched, verified and encoded exactly as the
authors did, in formats today's tools open.

The pipeline runs one way, one module per stage: `fetch` -> `archive` -> `encode` -> `dataset`.
Everything the command line does is a function here; each returns a result object and prints
nothing. Names are imported on first use, so `import amc_data` (and the CLI) start fast and
scikit-learn is loaded only by what needs it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .datadir import resolve_data_dir
from .errors import (
    AmcDataError,
    ArchiveError,
    CheckpointError,
    ChecksumError,
    ConfigError,
    DownloadError,
    FetchIncompleteError,
    HtmlResponseError,
    InputError,
    LockTimeoutError,
    ManifestError,
    MissingDependencyError,
    TrainingError,
    UnsafePickleError,
    VerificationError,
)

try:
    __version__ = version("amc-data")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

# Public name -> the module that defines it; imported on first use.
_LAZY = {
    "fetch": "fetch",
    "fetch_manifests": "fetch",
    "FetchResult": "fetch",
    "Outcome": "fetch",
    "HttpDownloader": "fetch",
    "verify": "verify",
    "info": "verify",
    "check_file": "verify",
    "FileReport": "verify",
    "FileStatus": "verify",
    "InfoReport": "verify",
    "DatasetInfo": "verify",
    "load_manifest": "manifest",
    "bundled_manifests": "manifest",
    "resolve_manifests": "manifest",
    "expected_checksums": "manifest",
    "read_lock": "manifest",
    "Manifest": "manifest",
    "FileEntry": "manifest",
    "FileChecksum": "hashes",
    "Digests": "hashes",
    "hash_file": "hashes",
    "ZipArchive": "archive",
    "ArchiveLimits": "archive",
    "open_archive": "archive",
    "load_id_map": "archive",
    "encode": "encode",
    "EncodeConfig": "encode",
    "EncodeResult": "encode",
    "load_encoded": "dataset",
    "EncodedSplit": "dataset",
    "ModelConfig": "model",
    "RankingModel": "model",
    "Attention": "model",
    "build_model": "model",
    "load_word_vectors": "model",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'amc_data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


if TYPE_CHECKING:
    from .archive import ArchiveLimits, ZipArchive, load_id_map, open_archive
    from .dataset import EncodedSplit, load_encoded
    from .encode import EncodeConfig, EncodeResult, encode
    from .fetch import FetchResult, HttpDownloader, Outcome, fetch, fetch_manifests
    from .hashes import Digests, FileChecksum, hash_file
    from .manifest import (
        FileEntry,
        Manifest,
        bundled_manifests,
        expected_checksums,
        load_manifest,
        read_lock,
        resolve_manifests,
    )
    from .model import Attention, ModelConfig, RankingModel, build_model, load_word_vectors
    from .verify import DatasetInfo, FileReport, FileStatus, InfoReport, check_file, info, verify

__all__ = [
    "AmcDataError",
    "ArchiveError",
    "ArchiveLimits",
    "Attention",
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DatasetInfo",
    "Digests",
    "DownloadError",
    "EncodeConfig",
    "EncodeResult",
    "EncodedSplit",
    "FetchIncompleteError",
    "FetchResult",
    "FileChecksum",
    "FileEntry",
    "FileReport",
    "FileStatus",
    "HtmlResponseError",
    "HttpDownloader",
    "InfoReport",
    "InputError",
    "LockTimeoutError",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "ModelConfig",
    "Outcome",
    "RankingModel",
    "TrainingError",
    "UnsafePickleError",
    "VerificationError",
    "ZipArchive",
    "__version__",
    "build_model",
    "bundled_manifests",
    "check_file",
    "encode",
    "expected_checksums",
    "fetch",
    "fetch_manifests",
    "hash_file",
    "info",
    "load_encoded",
    "load_id_map",
    "load_manifest",
    "load_word_vectors",
    "open_archive",
    "read_lock",
    "resolve_data_dir",
    "resolve_manifests",
    "verify",
]
