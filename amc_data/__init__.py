"""amc-data: the AMC (CVPR 2017) keyword datasets, fetched, verified and encoded exactly as the
authors did, in formats today's tools open.

The pipeline runs one way, one sub-package or module per stage: `fetch` -> `archive` ->
`encode` -> `dataset`.
Everything the command line does is a function here; each returns a result object and prints
nothing. Names are imported on first use, so `import amc_data` (and the CLI) start fast and
scikit-learn is loaded only by what needs it.
"""

from __future__ import annotations

import importlib
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
from .version import __version__

# Public name -> the module that defines it; imported on first use.
_LAZY = {
    "train": "training",
    "TrainConfig": "train_config",
    "TrainResult": "training",
    "load_model": "checkpoint",
    "LoadedModel": "checkpoint",
    "evaluate": "evaluation.runs",
    "Evaluation": "evaluation.runs",
    "run_demo": "demo",
    "DemoResult": "demo",
    "synth": "prepare.synth",
    "fetch": "fetching.core",
    "fetch_manifests": "fetching.core",
    "FetchResult": "fetching.core",
    "Outcome": "fetching.core",
    "HttpDownloader": "fetching.download",
    "Problem": "fetching.problems",
    "verify": "fetching.verify",
    "info": "fetching.verify",
    "check_file": "fetching.verify",
    "FileReport": "fetching.verify",
    "FileStatus": "fetching.verify",
    "InfoReport": "fetching.verify",
    "DatasetInfo": "fetching.verify",
    "load_manifest": "fetching.manifest",
    "bundled_manifests": "fetching.manifest",
    "resolve_manifests": "fetching.manifest",
    "expected_checksums": "fetching.manifest",
    "read_checksums": "fetching.manifest",
    "read_lock": "fetching.manifest",
    "Manifest": "fetching.manifest",
    "FileEntry": "fetching.manifest",
    "FileChecksum": "fetching.checksums",
    "Digests": "fetching.checksums",
    "hash_file": "fetching.checksums",
    "ZipArchive": "archive.zipreader",
    "ArchiveLimits": "archive.members",
    "open_archive": "archive",
    "load_id_map": "archive.pickles",
    "encode": "encoding.core",
    "EncodeConfig": "encoding.core",
    "EncodeResult": "encoding.core",
    "load_encoded": "dataset",
    "EncodedSplit": "dataset",
    "evaluate_scores": "evaluation",
    "read_scores": "evaluation",
    "scores_metrics": "evaluation",
    "ranking_metrics": "evaluation",
    "RankingMetrics": "evaluation",
    "ndcg_at_k": "evaluation",
    "roc_curve": "evaluation",
    "roc_auc": "evaluation",
    "RocCurve": "evaluation",
    "caption_ranking": "evaluation",
    "CaptionRanking": "evaluation",
    "RecallAtK": "evaluation",
    "paired_test": "evaluation",
    "PairedTest": "evaluation",
    "compare_to_baseline": "evaluation",
    "extract_features": "featurizing.core",
    "FeatureConfig": "featurizing.core",
    "FeatureResult": "featurizing.core",
    "load_prepared": "prepare.format",
    "PreparedDataset": "prepare.format",
    "prepare_coco": "prepare.coco",
    "prepare_clickture": "prepare.clickture",
    "SynthConfig": "prepare.synth",
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
    from .checkpoint import LoadedModel, load_model
    from .dataset import EncodedSplit, load_encoded
    from .demo import DemoResult, run_demo
    from .encoding.core import EncodeConfig, EncodeResult, encode
    from .evaluation import (
        CaptionRanking,
        PairedTest,
        RankingMetrics,
        RecallAtK,
        RocCurve,
        caption_ranking,
        compare_to_baseline,
        evaluate_scores,
        ndcg_at_k,
        paired_test,
        ranking_metrics,
        read_scores,
        roc_auc,
        roc_curve,
        scores_metrics,
    )
    from .evaluation.runs import Evaluation, evaluate
    from .featurizing.core import FeatureConfig, FeatureResult, extract_features
    from .fetching.checksums import Digests, FileChecksum, hash_file
    from .fetching.core import FetchResult, HttpDownloader, Outcome, fetch, fetch_manifests
    from .fetching.manifest import (
        FileEntry,
        Manifest,
        bundled_manifests,
        expected_checksums,
        load_manifest,
        read_checksums,
        read_lock,
        resolve_manifests,
    )
    from .fetching.problems import Problem
    from .fetching.verify import (
        DatasetInfo,
        FileReport,
        FileStatus,
        InfoReport,
        check_file,
        info,
        verify,
    )
    from .model import Attention, ModelConfig, RankingModel, build_model, load_word_vectors
    from .prepare.clickture import prepare_clickture
    from .prepare.coco import prepare_coco
    from .prepare.format import PreparedDataset, load_prepared
    from .prepare.synth import synth
    from .train_config import TrainConfig
    from .training import TrainResult, train

__all__ = [
    "AmcDataError",
    "ArchiveError",
    "ArchiveLimits",
    "Attention",
    "CaptionRanking",
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DatasetInfo",
    "DemoResult",
    "Digests",
    "DownloadError",
    "EncodeConfig",
    "EncodeResult",
    "EncodedSplit",
    "Evaluation",
    "FeatureConfig",
    "FeatureResult",
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
    "LoadedModel",
    "LockTimeoutError",
    "Manifest",
    "ManifestError",
    "MissingDependencyError",
    "ModelConfig",
    "Outcome",
    "PairedTest",
    "PreparedDataset",
    "Problem",
    "RankingMetrics",
    "RankingModel",
    "RecallAtK",
    "RocCurve",
    "SynthConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "UnsafePickleError",
    "VerificationError",
    "ZipArchive",
    "__version__",
    "build_model",
    "bundled_manifests",
    "caption_ranking",
    "check_file",
    "compare_to_baseline",
    "encode",
    "evaluate",
    "evaluate_scores",
    "expected_checksums",
    "extract_features",
    "fetch",
    "fetch_manifests",
    "hash_file",
    "info",
    "load_encoded",
    "load_id_map",
    "load_manifest",
    "load_model",
    "load_prepared",
    "load_word_vectors",
    "ndcg_at_k",
    "open_archive",
    "paired_test",
    "prepare_clickture",
    "prepare_coco",
    "ranking_metrics",
    "read_checksums",
    "read_lock",
    "read_scores",
    "resolve_data_dir",
    "resolve_manifests",
    "roc_auc",
    "roc_curve",
    "run_demo",
    "scores_metrics",
    "synth",
    "train",
    "verify",
]
