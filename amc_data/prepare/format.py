"""The prepared dataset folder: what `train` and `eval` read, whatever the source.

```
OUT/
  prepared.json      format version, source, counts per split, feature shape and dtype,
                     fingerprints, amc-data version, options
  features.npy       (N, R, D) or (N, D) float16/float32, read memory-mapped
  feature_ids.npy    (N,) int64: the img_id of each feature row
  keywords.npz       scipy CSR (N, V) int32 counts; row i = image feature_ids[i]
  vocab.tsv          keyword vocabulary (word_id, word, df), copied from the encode output
  images.parquet     img_id int64, split string, fold int8 (COCO test fold 0..4, else -1)
  queries.parquet    query_id int64, query string, split string [, intent string]
  judgments.parquet  query_id int64, img_id int64, label int32
  query_vocab.tsv    query words (word_id, word, count), fitted on the train queries
```

`write_prepared` builds the folder beside its destination and renames it into place, so a
reader sees the old folder or the new one, never half of either. `load_prepared` opens one with
every cross-check done; each failure is an `InputError` naming the file, the row or id, and what
to do.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse

from ..errors import ConfigError, InputError
from ..version import __version__
from .queries import QueryVocabulary, query_analyzer

__all__ = [
    "FEATURE_DTYPES",
    "FORMAT_VERSION",
    "SOURCES",
    "SPLITS",
    "FeatureRows",
    "PreparedDataset",
    "load_prepared",
    "write_prepared",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "amc-data prepared dataset"
FORMAT_VERSION = 1
SOURCES = ("synth", "coco", "clickture")
SPLITS = ("train", "val", "test")
FEATURE_DTYPES = ("float16", "float32")
VOCAB_HEADER = "word_id\tword\tdf"
FILES = (
    "prepared.json",
    "features.npy",
    "feature_ids.npy",
    "keywords.npz",
    "vocab.tsv",
    "images.parquet",
    "queries.parquet",
    "judgments.parquet",
    "query_vocab.tsv",
)
_CHUNK_BYTES = 64 << 20  # features are copied and scanned this much at a time
_SHOWN = 5  # ids shown in a message

IMAGES_SCHEMA = pa.schema([("img_id", pa.int64()), ("split", pa.string()), ("fold", pa.int8())])
QUERIES_SCHEMA = pa.schema(
    [("query_id", pa.int64()), ("query", pa.string()), ("split", pa.string())]
)
JUDGMENTS_SCHEMA = pa.schema(
    [("query_id", pa.int64()), ("img_id", pa.int64()), ("label", pa.int32())]
)


def _shown(values: Sequence[Any] | np.ndarray, total: int | None = None) -> str:
    """A few values for a message: `1, 2, 3, ... (40 in all)`."""
    values = list(values[:_SHOWN])
    total = len(values) if total is None else total
    text = ", ".join(str(v) for v in values)
    return text + (f", ... ({total:,} in all)" if total > len(values) else "")


def unique_ids(values: np.ndarray) -> np.ndarray:
    """The sorted distinct values of an integer array (by sorting: numpy's hash-based
    `unique` is many times slower on millions of ids)."""
    ordered = np.sort(values, kind="stable")
    if ordered.size == 0:
        return ordered
    return ordered[np.concatenate(([True], ordered[1:] != ordered[:-1]))]


def positions(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """The index in `keys` (unique) of each of `wanted`, -1 where absent (a hash lookup)."""
    return pd.Index(keys).get_indexer(wanted)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(functools.partial(file.read, 1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- features -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FeatureRows:
    """The feature rows of a prepared folder, taken from one or more arrays (usually memmaps of
    the user's files), in output order: all rows of `arrays[0]` picked by `rows[0]`, then those
    of `arrays[1]`, and so on. `rows[k]` None takes every row of `arrays[k]` in order.

    `path` names the `.npy` file behind a single array: when every row is taken in order and
    the dtype is float16 or float32, the file is linked into the folder instead of copied.
    """

    arrays: tuple[np.ndarray, ...]  # each (n_k, R, D) or (n_k, D)
    rows: tuple[np.ndarray | None, ...] = ()
    path: Path | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", tuple(self.arrays))
        rows = tuple(self.rows) or (None,) * len(self.arrays)
        if len(rows) != len(self.arrays):
            raise ConfigError("FeatureRows needs one `rows` entry (or None) per array.")
        object.__setattr__(
            self, "rows", tuple(None if r is None else np.asarray(r, np.int64) for r in rows)
        )
        shapes = {a.shape[1:] for a in self.arrays}
        if len(shapes) > 1:
            raise InputError(
                f"The feature files have different row shapes {sorted(shapes)}; every image "
                "needs features of one shape (regions, dimensions). Extract them alike."
            )

    def __len__(self) -> int:
        return sum(
            a.shape[0] if r is None else r.size for a, r in zip(self.arrays, self.rows, strict=True)
        )

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(self.arrays[0].shape[1:]) if self.arrays else (0,)

    @property
    def linkable(self) -> bool:
        if self.path is None or len(self.arrays) != 1:
            return False
        array, rows = self.arrays[0], self.rows[0]
        in_order = rows is None or np.array_equal(rows, np.arange(array.shape[0]))
        return in_order and array.dtype.name in FEATURE_DTYPES and array.ndim in (2, 3)

    def chunks(self, rows_per_chunk: int) -> Iterator[np.ndarray]:
        """The output rows, a chunk at a time (never the whole array in memory)."""
        for array, rows in zip(self.arrays, self.rows, strict=True):
            n = array.shape[0] if rows is None else rows.size
            for start in range(0, n, rows_per_chunk):
                stop = min(n, start + rows_per_chunk)
                yield np.asarray(array[start:stop] if rows is None else array[rows[start:stop]])


def _feature_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.name in FEATURE_DTYPES:
        return dtype
    if dtype.kind == "f":
        return np.dtype(np.float32)  # float64 and wider: float32 is all a model uses
    raise InputError(
        f"Features must be floating point (float16 or float32), not {dtype}. Extract them "
        "again, or convert the file with numpy."
    )


def _rows_per_chunk(row_shape: tuple[int, ...], itemsize: int) -> int:
    return max(1, _CHUNK_BYTES // max(1, int(np.prod(row_shape)) * itemsize))


def _report_nonfinite(chunk: np.ndarray, start: int, ids: np.ndarray, where: str) -> None:
    """Raise for the first row of `chunk` (rows from `start`) that holds NaN or Inf."""
    bad = ~np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(axis=1)
    rows = start + np.flatnonzero(bad)
    row = int(rows[0])
    img_id = f" (img_id {int(ids[row])})" if row < ids.size else ""
    raise InputError(
        f"{where} row {row}{img_id} holds NaN or Inf values ({rows.size} row(s) of this chunk, "
        f"first ones: {_shown(rows)}). Extract the features of those images again, or leave the "
        "images out, and prepare again."
    )


def _scan_finite(features: np.ndarray, ids: np.ndarray, where: str) -> None:
    """Check every value is finite, a chunk of rows at a time (the array may be a memmap of
    many gigabytes)."""
    step = _rows_per_chunk(features.shape[1:], features.dtype.itemsize)
    for start in range(0, features.shape[0], step):
        chunk = np.asarray(features[start : start + step])
        if not np.isfinite(chunk).all():
            _report_nonfinite(chunk, start, ids, where)


def _place_features(
    features: np.ndarray | FeatureRows, ids: np.ndarray, folder: Path, out_dir: Path, link: bool
) -> dict[str, Any]:
    """Write (or link) `features.npy` into `folder`; return what prepared.json records."""
    if not isinstance(features, FeatureRows):
        features = FeatureRows(
            (np.asarray(features) if not isinstance(features, np.memmap) else features,)
        )
    if not features.arrays or features.arrays[0].ndim not in (2, 3):
        shape = features.arrays[0].shape if features.arrays else None
        raise InputError(
            f"Features must be an array of shape (N, R, D) or (N, D); got shape {shape}."
        )
    if len(features) != ids.size:
        raise InputError(
            f"{len(features):,} feature rows but {ids.size:,} feature ids: each row needs the "
            "img_id of its image, in the same order."
        )
    target = folder / "features.npy"
    record: dict[str, Any] = {"stored": "copy"}
    if link and features.linkable:
        source = Path(features.path).resolve()  # type: ignore[arg-type]
        try:
            os.link(source, target)
            record = {"stored": "hardlink", "source": str(source)}
        except OSError as exc:
            if source.is_relative_to(out_dir):
                # A symbolic link into the folder being replaced would dangle: copy instead.
                log.info("copying %s: it lies inside %s (%s)", source, out_dir, exc)
            else:
                os.symlink(source, target)
                record = {"stored": "symlink", "source": str(source)}
                log.warning(
                    "features.npy is a symbolic link to %s (%s): moving or deleting "
                    "that file breaks the prepared folder",
                    source,
                    exc,
                )
        if record["stored"] != "copy":
            array = features.arrays[0]
            _scan_finite(array, ids, f"{source}")
            shape = (array.shape[0], 1, array.shape[1]) if array.ndim == 2 else array.shape
            record.update(shape=list(shape), file_shape=list(array.shape), dtype=array.dtype.name)
            return record
    dtype = _feature_dtype(features.arrays[0].dtype)
    row_shape = features.row_shape
    out = np.lib.format.open_memmap(
        target, mode="w+", dtype=dtype, shape=(len(features), *row_shape)
    )
    start = 0
    for chunk in features.chunks(_rows_per_chunk(row_shape, dtype.itemsize)):
        chunk = chunk.astype(dtype, copy=False)  # checked after the cast: it may overflow
        if not np.isfinite(chunk).all():
            _report_nonfinite(chunk, start, ids, "The features given (in output order):")
        out[start : start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    out.flush()
    del out
    shape = (len(features), 1, *row_shape) if len(row_shape) == 1 else (len(features), *row_shape)
    record.update(shape=list(shape), file_shape=[len(features), *row_shape], dtype=dtype.name)
    return record


# -- tables ---------------------------------------------------------------------------------------
def _table(
    frame: pd.DataFrame, schema: pa.Schema, name: str, optional: Sequence[str] = ()
) -> pa.Table:
    """`frame` as an Arrow table with `schema`'s columns first (typed), then any extra columns
    (kept as they are: `source_id`, `intent`, ...)."""
    missing = [f.name for f in schema if f.name not in frame.columns and f.name not in optional]
    if missing:
        raise ConfigError(f"{name} needs the columns {schema.names}; missing {missing}.")
    columns, fields = [], []
    for f in schema:
        if f.name not in frame.columns:
            continue
        values = frame[f.name]
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise InputError(f"{name} column {f.name!r} is empty (null) at row {row}.")
        if pa.types.is_integer(f.type):
            _check_integral(values, name, f.name)
        try:
            columns.append(_arrow_column(values, f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as exc:
            raise InputError(f"{name} column {f.name!r} does not fit {f.type}: {exc}.") from exc
        fields.append(f)
    for extra in frame.columns:
        if extra not in schema.names:
            array = _arrow_column(frame[extra], None)
            columns.append(array)
            fields.append(pa.field(extra, array.type))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields))


def _arrow_column(values: pd.Series, kind: pa.DataType | None) -> pa.Array:
    """One column as Arrow: numbers from their numpy buffer, text without a round trip through
    Python objects where pandas already holds it as Arrow."""
    if kind is not None and pa.types.is_integer(kind):
        return pa.array(values.to_numpy(), type=kind)
    if values.dtype == object or kind is not None:
        values = values.astype("string[pyarrow]") if values.dtype == object else values
        array = pa.array(values)
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        return array.cast(kind or pa.string())
    return pa.array(values.to_numpy())


def _check_integral(values: pd.Series, name: str, column: str) -> None:
    array = values.to_numpy()
    if array.dtype.kind in "iub":
        return
    if array.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(array) | (array != np.round(array)))
        if bad.size == 0:
            return
        row = int(bad[0])
        raise InputError(
            f"{name} column {column!r} must hold integers; row {row} holds {array[row].item()!r} "
            f"({bad.size:,} such rows). Labels are click counts or relevance grades: whole numbers."
        )
    raise InputError(f"{name} column {column!r} must hold integers, not {array.dtype}.")


# -- writing --------------------------------------------------------------------------------------
def _is_prepared(folder: Path) -> dict[str, Any] | None:
    """The prepared.json of `folder`, when it holds one of ours."""
    try:
        info = json.loads((folder / "prepared.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT_NAME else None


@contextlib.contextmanager
def _output_folder(out: str | os.PathLike[str], force: bool) -> Iterator[tuple[Path, Path]]:
    """Yield (destination, staging folder beside it) under a lock; the caller fills the
    staging folder and calls `_commit`. The staging folder is removed unless committed."""
    import filelock

    out_dir = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if not out_dir.name or cwd == out_dir or out_dir in cwd.parents:
        raise ConfigError(
            f"{out_dir} cannot be the prepared folder: it is replaced by a rename, and this one is "
            "(or holds) the current folder. Choose a folder of its own, such as --out ./prepared."
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"{out_dir} is a file, not a folder. Choose another --out.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out_dir.parent / f".{out_dir.name}.lock")
    with lock:
        _recover(out_dir)
        if out_dir.exists() and any(out_dir.iterdir()):
            previous = _is_prepared(out_dir)
            if previous is None:
                raise ConfigError(
                    f"{out_dir} holds files that are not a prepared dataset (no amc-data "
                    "prepared.json). A prepared folder is replaced as a whole, so this one is left "
                    "alone: choose another --out, or empty it."
                )
            if not force:
                raise ConfigError(
                    f"{out_dir} already holds a prepared dataset ({previous.get('source')}, made "
                    f"{previous.get('created', 'at an unknown time')}). Pass --force to replace "
                    "it, or choose another --out."
                )
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
        try:
            yield out_dir, staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _recover(out_dir: Path) -> None:
    """Finish what a crash between the two renames of `_commit` left, and tidy up."""
    previous = sorted(out_dir.parent.glob(f".{out_dir.name}.previous-*"))
    if previous and not out_dir.exists():
        log.warning("restoring %s from an interrupted run", out_dir)
        os.replace(previous.pop(), out_dir)
    for leftover in [*previous, *out_dir.parent.glob(f".{out_dir.name}.staging-*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def _commit(staging: Path, out_dir: Path) -> None:
    """Swap `staging` in for `out_dir` with renames: readers see all old files or all new."""
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.previous-{os.getpid()}")
        os.replace(out_dir, previous)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def _copy_vocab(source: Path, target: Path) -> int:
    """Copy the keyword `vocab.tsv`; return its number of words (checked on the way)."""
    try:
        shutil.copyfile(source, target)
    except FileNotFoundError:
        raise InputError(f"{source} not found: run `amc-data encode` first.") from None
    return len(read_keyword_vocabulary(target))


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_prepared(
    out: str | os.PathLike[str],
    *,
    source: str,
    features: np.ndarray | FeatureRows,
    feature_ids: np.ndarray,
    keywords_csr: scipy.sparse.spmatrix,
    vocab_tsv_path: str | os.PathLike[str],
    images: pd.DataFrame,
    queries: pd.DataFrame,
    judgments: pd.DataFrame,
    query_vocabulary: QueryVocabulary,
    options: dict[str, Any],
    force: bool = False,
    link_features: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a prepared dataset folder at `out`; return its resolved path.

    `features` is an `(N, R, D)` or `(N, D)` float array (a memmap is copied chunk by chunk) or
    `FeatureRows` (rows picked from the user's files; linked when already in the layout and
    `link_features`); row `i` belongs to image `feature_ids[i]`, and so does row `i` of
    `keywords_csr` (`(N, V)` counts over the words of `vocab_tsv_path`, the encode output's
    `vocab.tsv`, which is copied). `images`, `queries` and `judgments` are DataFrames with the
    columns of the format (extra columns are kept; `fold` defaults to -1). `options` (what the
    dataset was made with) and `extra` (anything else worth recording) go into prepared.json.

    Everything is written into a staging folder beside `out`, opened with `load_prepared` (every
    check), and only then renamed into place. An existing `out` is replaced only when it holds
    a prepared dataset and `force` is true; a folder holding anything else is never touched.
    """
    if source not in SOURCES:
        raise ConfigError(f"source must be one of {SOURCES}, not {source!r}.")
    ids = np.asarray(feature_ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InputError(f"feature_ids must be a 1-D integer array, not {ids.dtype} {ids.shape}.")
    ids = ids.astype(np.int64)
    images = images.copy()
    if "fold" not in images.columns:
        images["fold"] = -1
    started = time.perf_counter()
    with _output_folder(out, force) as (out_dir, staging):
        np.save(staging / "feature_ids.npy", ids)
        feature_record = _place_features(features, ids, staging, out_dir, link_features)
        n_words = _copy_vocab(Path(vocab_tsv_path), staging / "vocab.tsv")
        matrix = scipy.sparse.csr_matrix(keywords_csr)
        if matrix.shape != (ids.size, n_words):
            raise InputError(
                f"The keyword matrix has shape {matrix.shape}; expected ({ids.size}, {n_words}): "
                f"one row per feature row and one column per word of {vocab_tsv_path}."
            )
        _check_integral(pd.Series(matrix.data), "The keyword matrix", "counts")
        matrix = matrix.astype(np.int32)
        matrix.sort_indices()
        scipy.sparse.save_npz(staging / "keywords.npz", matrix, compressed=False)
        tables = {
            "images.parquet": _table(images, IMAGES_SCHEMA, "images"),
            "queries.parquet": _table(queries, QUERIES_SCHEMA, "queries"),
            "judgments.parquet": _table(judgments, JUDGMENTS_SCHEMA, "judgments"),
        }
        for name, table in tables.items():
            pq.write_table(table, staging / name)
        query_fingerprint = query_vocabulary.write_tsv(staging / "query_vocab.tsv")
        feature_file = staging / "features.npy"
        stat = feature_file.stat()
        info = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "source": source,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "amc_data": __version__,
            "counts": _counts(images, queries, judgments, ids.size),
            "features": {
                **feature_record,
                "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns,
                "checked_finite": True,
            },
            "keywords": {"vocabulary_size": n_words, "nonzeros": int(matrix.nnz)},
            "query_vocabulary": {
                "size": len(query_vocabulary),
                "min_count": query_vocabulary.min_count,
            },
            "fingerprints": {
                "keywords": sha256_file(staging / "vocab.tsv"),
                "queries": query_fingerprint,
            },
            "options": options,
            **(extra or {}),
        }
        (staging / "prepared.json").write_text(
            json.dumps(info, indent=2, default=_json_default, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        load_prepared(staging, check_features=False)  # every cross-check, before it goes live
        _commit(staging, out_dir)
    log.info("prepared %s (%s) in %.1f s", out_dir, source, time.perf_counter() - started)
    return out_dir


def _counts(
    images: pd.DataFrame, queries: pd.DataFrame, judgments: pd.DataFrame, n_features: int
) -> dict[str, Any]:
    query_split = pd.Categorical(queries["split"], categories=SPLITS).codes
    where = positions(queries["query_id"].to_numpy(), judgments["query_id"].to_numpy())
    judged = query_split[where[where >= 0]]
    return {
        "features": n_features,
        "images": {s: int((images["split"] == s).sum()) for s in SPLITS},
        "queries": {s: int((query_split == i).sum()) for i, s in enumerate(SPLITS)},
        "judgments": {s: int((judged == i).sum()) for i, s in enumerate(SPLITS)},
    }


# -- reading --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PreparedDataset:
    """A prepared dataset folder, opened and cross-checked by `load_prepared`."""

    root: Path
    info: dict[str, Any]  # prepared.json
    features: np.ndarray  # (N, R, D) memmap ((N, D) files are viewed as R = 1, no copy)
    feature_ids: np.ndarray  # (N,) int64
    keywords: scipy.sparse.csr_matrix  # (N, V) int32
    vocabulary: list[str]  # keyword words in id order
    query_vocabulary: list[str]  # query words in id order
    images: pd.DataFrame  # img_id, split, fold (+ source columns)
    queries: pd.DataFrame  # query_id, query, split[, intent]
    judgments: pd.DataFrame  # query_id, img_id, label
    fingerprints: dict[str, str] = field(default_factory=dict)

    def __getstate__(self) -> dict[str, Any]:
        # A memmap would be pickled as a full in-memory copy (worker processes started with
        # "spawn" receive the dataset this way): send the path, reopen it on the other side.
        state = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        state["features"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name, value in state.items():
            object.__setattr__(self, name, value)
        object.__setattr__(self, "features", _load_features(self.root, self.info))

    @functools.cached_property
    def _row_order(self) -> np.ndarray:
        return np.argsort(self.feature_ids, kind="stable")

    @functools.cached_property
    def _query_text(self) -> pd.Series:
        return pd.Series(self.queries["query"].to_numpy(), index=self.queries["query_id"])

    @functools.cached_property
    def _query_index(self) -> dict[str, int]:
        return {word: word_id for word_id, word in enumerate(self.query_vocabulary)}

    def rows(self, img_ids: np.ndarray) -> np.ndarray:
        """The feature (and keyword) rows of `img_ids`; `InputError` for an unknown id."""
        wanted = np.asarray(img_ids, dtype=np.int64)
        order = self._row_order
        sorted_ids = self.feature_ids[order]
        where = np.searchsorted(sorted_ids, wanted)
        where_clipped = np.minimum(where, max(0, sorted_ids.size - 1))
        found = (where < sorted_ids.size) & (sorted_ids[where_clipped] == wanted)
        if not found.all():
            unknown = unique_ids(wanted[~found])
            raise InputError(
                f"img_id(s) {_shown(unknown, unknown.size)} have no features in {self.root}. "
                "Use ids from images.parquet."
            )
        return order[where_clipped]

    def query_token_ids(self, query_ids: np.ndarray) -> list[np.ndarray]:
        """Each query's words as query-vocabulary ids (analyzer order, unknown words dropped)."""
        wanted = np.asarray(query_ids, dtype=np.int64)
        try:
            texts = self._query_text.loc[wanted].tolist()
        except KeyError:
            known = positions(self._query_text.index.to_numpy(), wanted) >= 0
            unknown = unique_ids(wanted[~known])
            raise InputError(
                f"query_id(s) {_shown(unknown, unknown.size)} are not in {self.root}/"
                "queries.parquet."
            ) from None
        analyzer, get = query_analyzer(), self._query_index.get
        return [
            np.array([i for i in map(get, analyzer(text)) if i is not None], dtype=np.int64)
            for text in texts
        ]

    def split_queries(self, split: str) -> pd.DataFrame:
        """The queries of `split` (train, val or test)."""
        _check_split(split)
        return self.queries[self.queries["split"] == split].reset_index(drop=True)

    def split_images(self, split: str) -> np.ndarray:
        """The img_ids of `split`'s pool (int64)."""
        _check_split(split)
        return self.images.loc[self.images["split"] == split, "img_id"].to_numpy(np.int64)


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"There is no split {split!r}; the splits are {', '.join(SPLITS)}.")


def read_keyword_vocabulary(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise InputError(
            f"{path} not found: expected the keyword vocabulary that `amc-data encode` writes."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read {path} as UTF-8 text ({exc}).") from exc
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != VOCAB_HEADER:
        found = repr(lines[0]) if lines else "an empty file"
        raise InputError(
            f"{path} starts with {found}, not the header {VOCAB_HEADER!r} of an encode "
            "output's vocab.tsv. Encode again, then prepare again."
        )
    words: list[str] = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] != str(len(words)):
            raise InputError(
                f"Line {number} of {path} is {line[:80]!r}; expected "
                f"'{len(words)}<TAB>word<TAB>df'. Encode again, then prepare again."
            )
        words.append(parts[1])
    return words


def _fail(root: Path, name: str, problem: str, fix: str) -> InputError:
    return InputError(f"{root / name}: {problem}. {fix}")


_REPREPARE = "Prepare the dataset again (with --force) to rebuild the folder."


def _read_info(root: Path) -> dict[str, Any]:
    path = root / "prepared.json"
    if not root.is_dir():
        raise InputError(f"{root} is not a folder. Pass the folder `amc-data prepare` wrote.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{path} not found: {root} is not a prepared dataset. Make one with `amc-data prepare "
            "coco|clickture` or `amc-data synth`."
        ) from None
    except (OSError, ValueError) as exc:
        raise _fail(root, "prepared.json", f"unreadable ({exc})", _REPREPARE) from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
        raise _fail(root, "prepared.json", "is not an amc-data prepared.json", _REPREPARE)
    version = info.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise _fail(
            root,
            "prepared.json",
            f"has format version {version!r}, and this amc-data "
            f"({__version__}) reads version {FORMAT_VERSION} at most",
            "Upgrade amc-data, or prepare the dataset again with this version.",
        )
    if info.get("source") not in SOURCES:
        raise _fail(
            root,
            "prepared.json",
            f"has source {info.get('source')!r}, not one of {SOURCES}",
            _REPREPARE,
        )
    missing = [name for name in FILES if not (root / name).exists()]
    if missing:
        dangling = [n for n in missing if (root / n).is_symlink()]
        hint = (
            f" ({', '.join(dangling)} is a link to a file that was moved or deleted: "
            f"{os.readlink(root / dangling[0])})"
            if dangling
            else ""
        )
        raise InputError(
            f"{root} lacks {', '.join(missing)}{hint}: the folder is incomplete. {_REPREPARE}"
        )
    return info


def _load_features(root: Path, info: dict[str, Any]) -> np.ndarray:
    path = root / "features.npy"
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise _fail(
            root, "features.npy", f"is not a readable .npy file ({exc})", _REPREPARE
        ) from exc
    if array.ndim not in (2, 3) or array.dtype.name not in FEATURE_DTYPES:
        raise _fail(
            root,
            "features.npy",
            f"holds {array.dtype} {array.shape}; expected float16 or "
            "float32 of shape (N, R, D) or (N, D)",
            _REPREPARE,
        )
    features = array[:, None, :] if array.ndim == 2 else array  # a view: R = 1, nothing copied
    recorded = info.get("features", {})
    if list(features.shape) != recorded.get("shape") or array.dtype.name != recorded.get("dtype"):
        raise _fail(
            root,
            "features.npy",
            f"holds {array.dtype} {list(features.shape)} but prepared.json "
            f"records {recorded.get('dtype')} {recorded.get('shape')}: the file was replaced",
            _REPREPARE,
        )
    return features


def load_prepared(
    path: str | os.PathLike[str], *, check_features: bool | None = None
) -> PreparedDataset:
    """Open a prepared dataset folder with every cross-check done.

    Checked: the files are all there and prepared.json is ours and not newer than this
    amc-data; shapes and dtypes; feature ids unique and matching images.parquet both ways (no
    image without features, no features without an image); the keyword matrix's shape against
    both vocabularies' sizes; vocab.tsv and query_vocab.tsv against their recorded sha256
    fingerprints; unique img_ids and query_ids; only train/val/test splits; integer labels;
    judgments naming known queries and images; every query judged at least once; train queries
    judged on train images only and val/test queries never on train images; the counts of
    prepared.json. Each failure is an `InputError` naming the file, row or id, and the fix.

    NaN/Inf in the features are looked for chunk by chunk over the memory-mapped file:
    `check_features=True` always, `False` never, `None` (default) only when the file's size or
    modification time differs from what prepared.json recorded after the writer's own scan
    (so an untouched folder opens without reading gigabytes).
    """
    root = Path(path).expanduser().resolve()
    info = _read_info(root)
    features = _load_features(root, info)
    ids = _load_ids(root, features.shape[0])
    stat = (root / "features.npy").stat()
    recorded = info.get("features", {})
    changed = (stat.st_size, stat.st_mtime_ns) != (recorded.get("size"), recorded.get("mtime_ns"))
    if check_features or (check_features is None and changed):
        _scan_finite(features, ids, str(root / "features.npy"))
    vocabulary = read_keyword_vocabulary(root / "vocab.tsv")
    query_vocabulary = QueryVocabulary.read_tsv(root / "query_vocab.tsv")
    fingerprints = {
        "keywords": sha256_file(root / "vocab.tsv"),
        "queries": sha256_file(root / "query_vocab.tsv"),
    }
    for kind, name in (("keywords", "vocab.tsv"), ("queries", "query_vocab.tsv")):
        expected = info.get("fingerprints", {}).get(kind)
        if fingerprints[kind] != expected:
            raise _fail(
                root,
                name,
                f"has sha256 {fingerprints[kind]}, but prepared.json records "
                f"{expected}: the vocabulary changed after the dataset was prepared, so word ids "
                "(and any model trained on them) no longer match",
                _REPREPARE,
            )
    keywords = _load_keywords(root, ids.size, len(vocabulary))
    images = _load_images(root, ids)
    queries = _load_queries(root)
    judgments = _load_judgments(root, queries, images)
    dataset = PreparedDataset(
        root=root,
        info=info,
        features=features,
        feature_ids=ids,
        keywords=keywords,
        vocabulary=vocabulary,
        query_vocabulary=list(query_vocabulary.words),
        images=images,
        queries=queries,
        judgments=judgments,
        fingerprints=fingerprints,
    )
    counts = _counts(images, queries, judgments, ids.size)
    if info.get("counts") != counts:
        raise _fail(
            root,
            "prepared.json",
            f"records counts {info.get('counts')}, but the files "
            f"hold {counts}: files of two preparations are mixed",
            _REPREPARE,
        )
    return dataset


def _load_ids(root: Path, n: int) -> np.ndarray:
    try:
        ids = np.load(root / "feature_ids.npy")
    except (OSError, ValueError) as exc:
        raise _fail(
            root, "feature_ids.npy", f"is not a readable .npy file ({exc})", _REPREPARE
        ) from exc
    if ids.ndim != 1 or ids.dtype != np.int64:
        raise _fail(
            root,
            "feature_ids.npy",
            f"holds {ids.dtype} {ids.shape}; expected int64 (N,)",
            _REPREPARE,
        )
    if ids.size != n:
        kind = "feature rows without an id" if n > ids.size else "ids without a feature row"
        raise _fail(
            root,
            "feature_ids.npy",
            f"has {ids.size:,} ids but features.npy has {n:,} rows ({kind})",
            _REPREPARE,
        )
    order = np.argsort(ids, kind="stable")
    repeated = order[1:][ids[order][1:] == ids[order][:-1]]
    if repeated.size:
        row = int(repeated.min())
        first = int(np.flatnonzero(ids == ids[row])[0])
        raise _fail(
            root,
            "feature_ids.npy",
            f"lists img_id {int(ids[row])} twice (rows {first} "
            f"and {row}; {repeated.size:,} repeats in all)",
            "Each image needs one feature row: drop the repeats and prepare again.",
        )
    return ids


def _load_keywords(root: Path, n: int, n_words: int) -> scipy.sparse.csr_matrix:
    try:
        matrix = scipy.sparse.load_npz(root / "keywords.npz")
    except (OSError, ValueError) as exc:
        raise _fail(
            root, "keywords.npz", f"is not a scipy sparse .npz ({exc})", _REPREPARE
        ) from exc
    matrix = matrix.tocsr()
    if matrix.shape != (n, n_words):
        raise _fail(
            root,
            "keywords.npz",
            f"has shape {matrix.shape}; expected ({n}, {n_words}): "
            "one row per feature row, one column per word of vocab.tsv",
            _REPREPARE,
        )
    if matrix.dtype != np.int32 or (matrix.data < 0).any():
        raise _fail(
            root,
            "keywords.npz",
            f"holds {matrix.dtype} values (min "
            f"{matrix.data.min(initial=0)}); expected int32 counts >= 0",
            _REPREPARE,
        )
    return matrix


def _read_table(root: Path, name: str) -> pd.DataFrame:
    try:
        return pq.read_table(root / name).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise _fail(root, name, f"is not a readable Parquet file ({exc})", _REPREPARE) from exc


def _check_columns(root: Path, name: str, frame: pd.DataFrame, schema: pa.Schema) -> None:
    for f in schema:
        if f.name not in frame.columns:
            raise _fail(
                root, name, f"has no column {f.name!r} (columns: {list(frame.columns)})", _REPREPARE
            )
        dtype = frame[f.name].dtype
        if pa.types.is_integer(f.type):
            expected = np.dtype(f.type.to_pandas_dtype())
            if dtype != expected:
                hint = ""
                if f.name == "label" and dtype.kind == "f":
                    values = frame[f.name].to_numpy()
                    bad = np.flatnonzero(values != np.round(values))
                    if bad.size:
                        value = values[bad[0]].item()
                        hint = f"; row {int(bad[0])} holds {value!r}, not a whole number"
                raise _fail(
                    root,
                    name,
                    f"column {f.name!r} is {dtype}, expected {expected}{hint}",
                    "Labels and ids must be integers: " + _REPREPARE,
                )


def _check_splits(root: Path, name: str, frame: pd.DataFrame, id_column: str) -> None:
    split = frame["split"].astype(str)
    frame["split"] = split
    bad = np.flatnonzero(~split.isin(SPLITS).to_numpy())
    if bad.size:
        row = int(bad[0])
        raise _fail(
            root,
            name,
            f"row {row} ({id_column} {frame[id_column].iloc[row]}) has split "
            f"{split.iloc[row]!r}; the splits are {', '.join(SPLITS)} ({bad.size:,} such rows)",
            _REPREPARE,
        )


def _check_unique(root: Path, name: str, values: np.ndarray, column: str) -> None:
    ordered = np.sort(values)
    repeated = unique_ids(ordered[1:][ordered[1:] == ordered[:-1]])
    if repeated.size:
        rows = np.flatnonzero(values == repeated[0])[:2].tolist()
        raise _fail(
            root,
            name,
            f"lists {column} {int(repeated[0])} more than once (rows {rows}; "
            f"{repeated.size:,} repeated {column}s in all)",
            f"Each {column} must appear once: " + _REPREPARE,
        )


def _load_images(root: Path, ids: np.ndarray) -> pd.DataFrame:
    images = _read_table(root, "images.parquet")
    _check_columns(root, "images.parquet", images, IMAGES_SCHEMA)
    img_ids = images["img_id"].to_numpy()
    _check_unique(root, "images.parquet", img_ids, "img_id")
    _check_splits(root, "images.parquet", images, "img_id")
    without_features = unique_ids(img_ids[positions(ids, img_ids) < 0])
    if without_features.size:
        raise _fail(
            root,
            "images.parquet",
            f"lists {without_features.size:,} image(s) with no "
            f"row in feature_ids.npy: img_id {_shown(without_features, without_features.size)}",
            "Every image needs features: " + _REPREPARE,
        )
    without_image = unique_ids(ids[positions(img_ids, ids) < 0])
    if without_image.size:
        raise _fail(
            root,
            "feature_ids.npy",
            f"holds features of {without_image.size:,} image(s) "
            f"that images.parquet does not list: img_id "
            f"{_shown(without_image, without_image.size)}",
            _REPREPARE,
        )
    return images


def _load_queries(root: Path) -> pd.DataFrame:
    queries = _read_table(root, "queries.parquet")
    _check_columns(root, "queries.parquet", queries, QUERIES_SCHEMA)
    _check_unique(root, "queries.parquet", queries["query_id"].to_numpy(), "query_id")
    _check_splits(root, "queries.parquet", queries, "query_id")
    return queries


def _load_judgments(root: Path, queries: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    name = "judgments.parquet"
    judgments = _read_table(root, name)
    _check_columns(root, name, judgments, JUDGMENTS_SCHEMA)
    query_ids = queries["query_id"].to_numpy()
    judged_queries = judgments["query_id"].to_numpy()
    judged_images = judgments["img_id"].to_numpy()
    query_row = positions(query_ids, judged_queries)
    image_row = positions(images["img_id"].to_numpy(), judged_images)
    for values, where, what, table in (
        (judged_queries, query_row, "query_id", "queries.parquet"),
        (judged_images, image_row, "img_id", "images.parquet"),
    ):
        unknown = where < 0
        if unknown.any():
            row = int(np.flatnonzero(unknown)[0])
            raise _fail(
                root,
                name,
                f"row {row} names {what} {int(values[row])}, which {table} "
                f"does not list ({int(unknown.sum()):,} such rows)",
                _REPREPARE,
            )
    unjudged = query_ids[np.bincount(query_row, minlength=query_ids.size) == 0]
    if unjudged.size:
        first = queries.loc[queries["query_id"] == unjudged[0]].iloc[0]
        raise _fail(
            root,
            "queries.parquet",
            f"query_id {int(unjudged[0])} ({first['query']!r}, "
            f"{first['split']}) has no judgment ({unjudged.size:,} queries without one: "
            f"{_shown(unjudged, unjudged.size)})",
            "Every query needs at least one judged image: drop such queries and prepare again.",
        )
    # One int64 key per (query, image) pair: row numbers in the two tables.
    pair = query_row.astype(np.int64) * max(1, len(images)) + image_row
    order = np.argsort(pair, kind="stable")
    same = pair[order][1:] == pair[order][:-1]
    if same.any():
        row = int(order[1:][same].min())
        raise _fail(
            root,
            name,
            f"row {row} repeats the judgment of query_id "
            f"{int(judged_queries[row])} on img_id {int(judged_images[row])} "
            f"({int(same.sum()):,} repeats)",
            "Each (query, image) pair is judged once: " + _REPREPARE,
        )
    train_query = (queries["split"] == "train").to_numpy()[query_row]
    train_image = (images["split"] == "train").to_numpy()[image_row]
    leak = train_query != train_image
    if leak.any():
        row = int(np.flatnonzero(leak)[0])
        q_split = queries["split"].iloc[int(query_row[row])]
        i_split = images["split"].iloc[int(image_row[row])]
        raise _fail(
            root,
            name,
            f"row {row} judges img_id {int(judged_images[row])} ({i_split}) for "
            f"query_id {int(judged_queries[row])} ({q_split}); train queries are judged on "
            f"train images only, val/test queries never on train images ({int(leak.sum()):,} "
            "such rows)",
            "Keep the splits apart: " + _REPREPARE,
        )
    return judgments
