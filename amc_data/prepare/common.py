"""What `prepare coco` and `prepare clickture` share: the result they return, the way problems
in the inputs are reported (stop, or leave the items out and record them), the user's
feature files (opened memory-mapped, matched to the images by id), the keyword rows taken from
the encode output, and the last step (write the folder, read back what it records)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import scipy.sparse

from ..checks import option
from ..encoding.dataset import load_encoded
from ..encoding.record import RECORD_NAME, read_record
from ..errors import ConfigError, InputError
from .queries import QueryVocabulary
from .writer import FeatureRows, write_prepared

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]
Missing = Literal["fail", "skip"]
EXAMPLES = 5  # examples kept per kind of problem


# The options every `prepare` config declares, written once: each config calls these at the
# place of the field in its own field order (prepared.json records the fields in that order).
def missing_option() -> Any:
    """The `missing` field: what images without features do."""
    return option(
        "fail",
        "Images without features: stop, or leave them (and their queries) out.",
        choices=("fail", "skip"),
    )


def on_error_option() -> Any:
    """The `on_error` field: what a bad input line or entry does."""
    return option(
        "fail",
        "Bad input lines or entries: stop (write nothing), or leave them out and record them in "
        "prepared.json.",
        choices=("fail", "skip"),
    )


def min_query_count_option(default: int = 4) -> Any:
    """The `min_query_count` field: the query vocabulary's threshold (4, as VSE++ on COCO)."""
    return option(
        default, "Keep a query word seen at least this often in the train queries.", low=1
    )


def force_option() -> Any:
    """The `force` field: replace an existing prepared folder."""
    return option(False, "Replace an existing prepared folder (never anything else).")


@dataclass(frozen=True)
class PrepareResult:
    """What a `prepare` command wrote."""

    out: Path
    source: str
    # prepared.json "counts": features, and images/queries/judgments per split
    counts: dict[str, Any]
    features_stored: str  # copy, hardlink or symlink
    skipped: dict[str, dict[str, Any]] = field(default_factory=dict)  # kind -> count, examples
    notes: tuple[str, ...] = ()  # other things worth telling the user
    # words kept and dropped, queries and keyword rows left empty (prepare/queries.py's report)
    vocabulary: dict[str, Any] = field(default_factory=dict)


def shown(values: Sequence[Any], total: int) -> str:
    """`a, b, c, ... (40 in all)`."""
    head = ", ".join(str(v) for v in list(values)[:EXAMPLES])
    return head + (f", ... ({total:,} in all)" if total > EXAMPLES else "")


class Problems:
    """Problems found in the inputs: with `on_error="fail"` the first one stops the run (nothing
    is written); with `"skip"` each kind is recorded (count and examples), logged, and the
    items are left out by the caller."""

    def __init__(
        self, on_error: OnError, hint: str = "Pass --on-error skip to leave them out."
    ) -> None:
        if on_error not in ("fail", "skip"):
            raise ConfigError(f"on_error must be 'fail' or 'skip', not {on_error!r}.")
        self.on_error = on_error
        self.hint = hint
        self.recorded: dict[str, dict[str, Any]] = {}

    def report(
        self, kind: str, count: int, examples: Sequence[Any], message: str, hint: str = ""
    ) -> None:
        """`message` says what, where, how many (`count`), with a few `examples`; `hint` is
        added when the run stops."""
        if count == 0:
            return
        if self.on_error == "fail":
            raise InputError(f"{message}{hint} {self.hint}")
        log.warning("%s Left out.", message)
        entry = self.recorded.setdefault(kind, {"count": 0, "examples": []})
        entry["count"] += int(count)
        entry["examples"] = (entry["examples"] + [str(e) for e in examples])[:EXAMPLES]


def open_features(
    features: str | os.PathLike[str], feature_ids: str | os.PathLike[str]
) -> tuple[np.ndarray, np.ndarray, Path]:
    """The user's feature file (memory-mapped, `(N, R, D)` or `(N, D)`) and its ids (int64
    `(N,)`), checked against each other."""
    path, ids_path = Path(features), Path(feature_ids)
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise InputError(f"The feature file {path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path} is not a .npy array ({exc}). Expected features of shape (N, R, D) or (N, D), "
            "as `amc-data features` writes them."
        ) from exc
    if array.ndim not in (2, 3) or array.dtype.kind != "f":
        raise InputError(
            f"{path} holds {array.dtype} of shape {array.shape}; expected floating-point "
            "features of shape (N, R, D) or (N, D)."
        )
    try:
        ids = np.load(ids_path)
    except FileNotFoundError:
        raise InputError(f"The feature id file {ids_path} does not exist.") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{ids_path} is not a .npy array ({exc}).") from exc
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InputError(
            f"{ids_path} holds {ids.dtype} of shape {ids.shape}; expected one integer image id "
            "per feature row."
        )
    if ids.size != array.shape[0]:
        raise InputError(
            f"{path} has {array.shape[0]:,} rows but {ids_path} has {ids.size:,} ids; each "
            "feature row needs the id of its image, in the same order."
        )
    ids = ids.astype(np.int64)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = unique[counts > 1]
        rows = np.flatnonzero(ids == repeated[0])[:2].tolist()
        raise InputError(
            f"{ids_path} lists image id {int(repeated[0])} more than once (rows {rows}; "
            f"{repeated.size:,} repeated ids). Each image needs one feature row."
        )
    return array, ids, path


GEOMETRY_KEYS = ("image_size", "resize", "grid")


def feature_geometry(features: Path, array: np.ndarray) -> dict[str, int] | None:
    """How the pictures were cut for the features at `features` (`image_size`, `resize`,
    `grid`), from the report `amc-data features` writes beside them (`features.json` beside
    `features.npy`), when there is one that describes this file (its recorded shape is the
    file's); else None (features extracted elsewhere, such as detector boxes, have no grid)."""
    report_path = features.with_suffix(".json")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or report.get("shape") != list(array.shape):
        return None
    if not all(type(report.get(key)) is int and report[key] > 0 for key in GEOMETRY_KEYS):
        return None
    values: dict[str, int] = {key: report[key] for key in GEOMETRY_KEYS}
    if array.ndim != 3 or array.shape[1] != values["grid"] ** 2:
        return None
    return values


def missing_features(
    wanted: np.ndarray, have: np.ndarray, missing: Missing, what: str, where: Path
) -> np.ndarray:
    """A mask over `wanted` ids of those with features. Ids without: an `InputError` (count and
    a few ids), or with `missing="skip"` left out with a warning."""
    if missing not in ("fail", "skip"):
        raise ConfigError(f"missing must be 'fail' or 'skip', not {missing!r}.")
    present = np.isin(wanted, have)
    absent = wanted[~present]
    if absent.size and missing == "fail":
        raise InputError(
            f"{absent.size:,} of {wanted.size:,} {what} have no row in {where}: id "
            f"{shown(absent.tolist(), absent.size)}. Extract their features, or pass "
            "--missing skip to leave those images (and their queries) out."
        )
    if absent.size:
        log.warning(
            "%d of %d %s have no features and are left out (--missing skip): %s",
            absent.size,
            wanted.size,
            what,
            shown(absent.tolist(), absent.size),
        )
    return present


def feature_rows(
    arrays: Sequence[np.ndarray], rows: Sequence[np.ndarray], path: Path | None
) -> FeatureRows:
    """`FeatureRows` taking `rows[k]` of `arrays[k]`; a single file whose every row is taken, in
    order, stays linkable."""
    picked = tuple(
        None if r.size == a.shape[0] and np.array_equal(r, np.arange(a.shape[0])) else r
        for a, r in zip(arrays, rows, strict=True)
    )
    return FeatureRows(tuple(arrays), picked, path if len(arrays) == 1 else None)


def encoded_keyword_rows(
    encoded: Path, dataset: str, split: str, ids: np.ndarray, n_words: int
) -> scipy.sparse.csr_matrix:
    """Rows `ids` (in that order) of the encode output's `split` matrix, as int32 counts; an id
    beyond the matrix (an image encode never saw) gets an empty row."""
    matrix = load_encoded(dataset, split, out=encoded).matrix
    if matrix.shape[1] != n_words:
        raise InputError(
            f"{encoded}: the {split} matrix has {matrix.shape[1]} columns, vocab.tsv {n_words} "
            "words. Encode again with --force."
        )
    padded = scipy.sparse.vstack(
        [matrix, scipy.sparse.csr_matrix((1, n_words), dtype=matrix.dtype)], format="csr"
    )  # row matrix.shape[0] is empty: where ids beyond the matrix point
    return padded[np.where(ids < matrix.shape[0], ids, matrix.shape[0])].astype(np.int32)


def encode_summary(encoded: Path, dataset: str) -> dict[str, Any]:
    """What `prepared.json` records of the encode output the keywords come from: its folder,
    fingerprint, the sha256 of its encode record, vocabulary size, counts and absent splits."""
    record = read_record(encoded)
    if record is None:
        raise InputError(
            f"{encoded / RECORD_NAME} not found: the keywords come from the encode output. Run "
            f"`amc-data encode {dataset}` first (or pass --encoded with its folder)."
        )
    if record.get("dataset") != dataset:
        raise InputError(
            f"{encoded} holds an encoding of {record.get('dataset')!r}, not {dataset}; pass "
            f"--encoded with the folder of `amc-data encode {dataset}`."
        )
    return {
        "path": str(encoded),
        "fingerprint": record.get("fingerprint", {}),
        "encode_json_sha256": hashlib.sha256((encoded / RECORD_NAME).read_bytes()).hexdigest(),
        "vocabulary_size": record.get("vocabulary_size"),
        "absent_splits": record.get("absent_splits", []),
        "counts": record.get("counts", {}),
    }


def write_folder(
    out: Path,
    source: str,
    *,
    features: FeatureRows | Sequence[FeatureRows],
    feature_ids: np.ndarray,
    keywords: scipy.sparse.csr_matrix,
    vocab_path: Path,
    images: pd.DataFrame,
    queries: pd.DataFrame,
    judgments: pd.DataFrame,
    query_vocabulary: QueryVocabulary,
    options: dict[str, Any],
    force: bool,
    link_features: bool,
    encoded: dict[str, Any],
    details: dict[str, Any],
    skipped: dict[str, dict[str, Any]],
    notes: list[str],
    geometry: dict[str, int] | None = None,
) -> PrepareResult:
    """Write the prepared folder of a real source (`write_prepared`), recording beside the
    tables the encode output the keywords come from (`encoded`), the source's own `details`,
    what was left out (`skipped`), the `notes` and how the pictures were cut for the
    features (`geometry`, see `feature_geometry`); return what the folder records."""
    path = write_prepared(
        out,
        source=source,
        features=features,
        feature_ids=feature_ids,
        keywords_csr=keywords,
        vocab_tsv_path=vocab_path,
        images=images,
        queries=queries,
        judgments=judgments,
        query_vocabulary=query_vocabulary,
        options=options,
        force=force,
        link_features=link_features,
        extra={"encoded": encoded, source: details, "skipped": skipped, "notes": notes},
        feature_geometry=geometry,
    )
    info = json.loads((path / "prepared.json").read_text(encoding="utf-8"))
    return PrepareResult(
        path, source, info["counts"], info["features"]["stored"], skipped, tuple(notes)
    )
