"""amc-data: the AMC (CVPR 2017) keyword datasets, fetched, verified and encoded exactly as the
authors did, in formats today's tools open.

The pipeline runs one way, one sub-package per stage: `fetching` -> `archive` -> `encoding` ->
`prepare` -> `featurizing` -> `evaluation` (metrics, no torch) -> `ranking` (the torch half: model,
training, scoring, run evaluation, demo).
Everything the command line does is a function here; each returns a result object and prints
nothing. Names are imported on first use, so `import amc_data` (and the CLI) start fast and
scikit-learn is loaded only by what needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
from .lazy import lazy_names
from .version import __version__

# The public API is the block below, written once: type checkers read its imports, and at run
# time the same lines are parsed into the lazy map (name -> module), so `import amc_data` (and the
# CLI) load no stage until one of its names is used.
if TYPE_CHECKING:
    from .archive import ArchiveLimits, ZipArchive, load_id_map, open_archive
    from .encoding.config import EncodeConfig
    from .encoding.core import EncodeResult, encode
    from .encoding.dataset import EncodedSplit, load_encoded
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
    from .exporting.config import ExportConfig
    from .exporting.core import ExportResult, export
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
    from .prepare.clickture import prepare_clickture
    from .prepare.coco import prepare_coco
    from .prepare.format import PreparedDataset, load_prepared
    from .prepare.synth import synth
    from .prepare.synth_config import SynthConfig
    from .ranking.build import build_model
    from .ranking.checkpoint import LoadedModel, load_model
    from .ranking.config import TrainConfig
    from .ranking.demo import DemoResult, run_demo
    from .ranking.eval_config import EvalConfig
    from .ranking.model import Attention, ModelConfig, RankingModel
    from .ranking.runs import Evaluation, evaluate
    from .ranking.search import Searcher, SearchHit, SearchResult, search
    from .ranking.search_config import SearchConfig
    from .ranking.training import TrainResult, train
    from .ranking.word_vectors import load_word_vectors


_LAZY, __getattr__, __dir__ = lazy_names(__name__, __file__)
# Eager names: the exception types (cheap, and needed to catch errors of any stage) and these two.
_ERRORS = [
    name
    for name, value in list(globals().items())
    if isinstance(value, type) and issubclass(value, Exception)
]
__all__ = sorted([*_ERRORS, *_LAZY, "__version__", "resolve_data_dir"])
