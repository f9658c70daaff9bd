"""Writing a prepared dataset folder (the format is described in `format`): built in a
staging folder beside its destination, checked by `load_prepared`, then renamed into place, so a
reader sees the old folder or the new one, never half of either. A folder that is not a
prepared one is never replaced, and neither is a prepared one that holds anything the writer
did not write (its `FILES`): replacing the folder whole would delete it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse

from ..errors import ConfigError, InputError, OutputFolderError
from ..version import __version__
from .format import (
    FEATURE_DTYPES,
    FEATURE_PART,
    FILE_NAME,
    FILES,
    FORMAT_NAME,
    FORMAT_VERSION,
    IMAGES_SCHEMA,
    JUDGMENTS_SCHEMA,
    QUERIES_SCHEMA,
    check_integral,
    counts_per_split,
    feature_dtype,
    is_feature_part,
    is_source_name,
    load_prepared,
    read_keyword_vocabulary,
    report_nonfinite,
    rows_per_chunk,
    scan_finite,
    sha256_file,
)
from .queries import QueryVocabulary

__all__ = ["FeatureRows", "check_output_folder", "write_prepared"]

log = logging.getLogger(__name__)


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


def _as_parts(features: np.ndarray | FeatureRows | Sequence[FeatureRows]) -> list[FeatureRows]:
    """The feature files to write: one `FeatureRows` each."""
    if isinstance(features, FeatureRows):
        return [features]
    if isinstance(features, (list, tuple)) and all(isinstance(f, FeatureRows) for f in features):
        if not features:
            raise InputError("No feature files were given: expected one or more.")
        return list(features)
    array = features if isinstance(features, np.memmap) else np.asarray(features)
    return [FeatureRows((array,))]


def _place_features(
    features: np.ndarray | FeatureRows | Sequence[FeatureRows],
    ids: np.ndarray,
    folder: Path,
    out_dir: Path,
    link: bool,
) -> dict[str, Any]:
    """Write (or link) the features into `folder`: `features.npy`, or with several parts one
    file each (`features-0.npy`, ...); return what prepared.json records."""
    parts = _as_parts(features)
    for part in parts:
        if not part.arrays or part.arrays[0].ndim not in (2, 3):
            shape = part.arrays[0].shape if part.arrays else None
            raise InputError(
                f"Features must be an array of shape (N, R, D) or (N, D); got shape {shape}."
            )
    total = sum(len(part) for part in parts)
    if total != ids.size:
        raise InputError(
            f"{total:,} feature rows but {ids.size:,} feature ids: each row needs the "
            "img_id of its image, in the same order."
        )
    if len(parts) == 1:
        return _place_file(parts[0], ids, folder / "features.npy", out_dir, link)
    dtype = feature_dtype(parts[0].arrays[0].dtype)  # every part takes the first one's type
    files, start = [], 0
    for k, part in enumerate(parts):
        name = FEATURE_PART.format(k)
        record = _place_file(
            part, ids[start : start + len(part)], folder / name, out_dir, link, dtype
        )
        files.append({"name": name, "rows": len(part), **record})
        start += len(part)
    row_shapes = {tuple(f["shape"][1:]) for f in files}
    if len(row_shapes) > 1:
        raise InputError(
            f"The feature files have different row shapes {sorted(row_shapes)}; every image "
            "needs features of one shape (regions, dimensions). Extract them alike."
        )
    stored = {f["stored"] for f in files}
    for f in files:
        del f["shape"], f["dtype"]
    return {
        "stored": stored.pop() if len(stored) == 1 else "mixed",
        "shape": [total, *row_shapes.pop()],
        "dtype": dtype.name,
        "files": files,
    }


def _place_file(
    features: FeatureRows,
    ids: np.ndarray,
    target: Path,
    out_dir: Path,
    link: bool,
    dtype: np.dtype | None = None,
) -> dict[str, Any]:
    """Write (or link) one feature file at `target` (its rows' `ids`), as `dtype` (default:
    its own float16/float32 type); return what prepared.json records of it."""
    record: dict[str, Any] = {"stored": "copy"}
    same_type = dtype is None or features.arrays[0].dtype == dtype
    if link and features.linkable and same_type:
        record = _link(Path(features.path).resolve(), target, out_dir)  # type: ignore[arg-type]
        if record["stored"] != "copy":
            array = features.arrays[0]
            scan_finite(array, ids, record["source"])
            shape = (array.shape[0], 1, array.shape[1]) if array.ndim == 2 else array.shape
            record.update(shape=list(shape), file_shape=list(array.shape), dtype=array.dtype.name)
            return _stamped(record, target)
    dtype = dtype if dtype is not None else feature_dtype(features.arrays[0].dtype)
    row_shape = features.row_shape
    out = np.lib.format.open_memmap(
        target, mode="w+", dtype=dtype, shape=(len(features), *row_shape)
    )
    start = 0
    for chunk in features.chunks(rows_per_chunk(row_shape, dtype.itemsize)):
        chunk = chunk.astype(dtype, copy=False)  # checked after the cast: it may overflow
        if not np.isfinite(chunk).all():
            report_nonfinite(chunk, start, ids, "The features given (in output order):")
        out[start : start + chunk.shape[0]] = chunk
        start += chunk.shape[0]
    out.flush()
    del out
    shape = (len(features), 1, *row_shape) if len(row_shape) == 1 else (len(features), *row_shape)
    record.update(shape=list(shape), file_shape=[len(features), *row_shape], dtype=dtype.name)
    return _stamped(record, target)


def _link(source: Path, target: Path, out_dir: Path) -> dict[str, Any]:
    """Hard-link `source` at `target`, else link it symbolically; `{"stored": "copy"}` when
    neither may be done (the caller copies)."""
    try:
        os.link(source, target)
        return {"stored": "hardlink", "source": str(source)}
    except OSError as exc:
        if source.is_relative_to(out_dir):
            # A symbolic link into the folder being replaced would dangle: copy instead.
            log.info("copying %s: it lies inside %s (%s)", source, out_dir, exc)
            return {"stored": "copy"}
        os.symlink(source, target)
        log.warning(
            "%s is a symbolic link to %s (%s): moving or deleting that file breaks the "
            "prepared folder",
            target.name,
            source,
            exc,
        )
        return {"stored": "symlink", "source": str(source)}


def _stamped(record: dict[str, Any], target: Path) -> dict[str, Any]:
    """`record` with the size and modification time of `target` (a later load scans the file
    for NaN/Inf again only when they change)."""
    stat = target.stat()
    return {**record, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


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
            check_integral(values, name, f.name)
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


# -- writing --------------------------------------------------------------------------------------
def _is_prepared(folder: Path) -> dict[str, Any] | None:
    """The prepared.json of `folder`, when it holds one of ours."""
    try:
        info = json.loads((folder / "prepared.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == FORMAT_NAME else None


def foreign_entries(out_dir: Path) -> list[str]:
    """The names in `out_dir` that the writer did not write (any but `FILES`), sorted."""
    try:
        names = sorted(os.listdir(out_dir))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [name for name in names if name not in FILES and not is_feature_part(name)]


def _check_foreign(out_dir: Path) -> None:
    """OutputFolderError naming what `out_dir` holds that the writer did not write."""
    foreign = foreign_entries(out_dir)
    if foreign:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise OutputFolderError(
            f"{out_dir} holds a prepared dataset and files amc-data did not write there "
            f"({shown}). A prepared folder is replaced whole, and never deletes what it did not "
            "write: move them elsewhere, or choose another --out."
        )


def check_output_folder(out: str | os.PathLike[str], force: bool) -> Path:
    """The resolved destination `out`, if a prepared folder may be written there with `force`
    as given; else the `OutputFolderError` the writer would raise (checked again, under a lock, when
    it writes). Cheap: call it before work that takes long."""
    out_dir = Path(out).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if not out_dir.name or cwd == out_dir or out_dir in cwd.parents:
        raise OutputFolderError(
            f"{out_dir} cannot be the prepared folder: it is replaced by a rename, and this one is "
            "(or holds) the current folder. Choose a folder of its own, such as --out ./prepared."
        )
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(f"{out_dir} is a file, not a folder. Choose another --out.")
    if out_dir.exists() and any(out_dir.iterdir()):
        previous = _is_prepared(out_dir)
        if previous is None:
            raise OutputFolderError(
                f"{out_dir} holds files that are not a prepared dataset (no amc-data "
                "prepared.json). A prepared folder is replaced as a whole, so this one is left "
                "alone: choose another --out, or empty it."
            )
        if not force:
            raise OutputFolderError(
                f"{out_dir} already holds a prepared dataset ({previous.get('source')}, made "
                f"{previous.get('created', 'at an unknown time')}). Pass --force to replace "
                "it, or choose another --out."
            )
        _check_foreign(out_dir)
    return out_dir


@contextlib.contextmanager
def _output_folder(out: str | os.PathLike[str], force: bool) -> Iterator[tuple[Path, Path]]:
    """Yield (destination, staging folder beside it) under a lock; the caller fills the
    staging folder and calls `_commit`. The staging folder is removed unless committed."""
    import filelock

    out_dir = check_output_folder(out, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out_dir.parent / f".{out_dir.name}.lock")
    with lock:
        _recover(out_dir)
        check_output_folder(out_dir, force)  # again: another process may have written it
        staging = _new_folder(out_dir.parent, f".{out_dir.name}.staging-")
        try:
            yield out_dir, staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _new_folder(parent: Path, prefix: str) -> Path:
    """A new folder `parent/<prefix><random>` with the mode the umask gives any new folder (it
    becomes the prepared folder; `tempfile.mkdtemp` would make it private, 0700)."""
    while True:
        folder = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue


def _recover(out_dir: Path) -> None:
    """Finish what a crash between the two renames of `_commit` left, and tidy up."""
    previous = sorted(out_dir.parent.glob(f".{out_dir.name}.previous-*"))
    if previous and not out_dir.exists():
        log.warning("restoring %s from an interrupted run", out_dir)
        os.replace(previous.pop(), out_dir)
    for old in previous:
        _discard(old, out_dir)
    for staging in out_dir.parent.glob(f".{out_dir.name}.staging-*"):
        shutil.rmtree(staging, ignore_errors=True)  # only ever holds what the writer wrote


def _commit(staging: Path, out_dir: Path) -> None:
    """Swap `staging` in for `out_dir` with renames: readers see all old files or all new."""
    if out_dir.exists():
        _check_foreign(out_dir)  # again, at the last moment: one may have appeared meanwhile
        previous = out_dir.with_name(f".{out_dir.name}.previous-{os.getpid()}")
        os.replace(out_dir, previous)
        os.replace(staging, out_dir)
        _discard(previous, out_dir)
    else:
        os.replace(staging, out_dir)


def _discard(folder: Path, out_dir: Path) -> None:
    """Delete the old prepared folder `folder` (moved aside from `out_dir`): the files the
    writer writes, then the folder. Anything else in it (put there after the last check) is
    kept, in the folder renamed `.<out>.kept-*`, and reported."""
    parts = [name for name in os.listdir(folder) if is_feature_part(name)]
    for name in [*FILES, *parts]:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        kept = out_dir.with_name(f".{out_dir.name}.kept-{secrets.token_hex(4)}")
        os.replace(folder, kept)
        log.warning(
            "%s held files amc-data did not write (%s); they are kept in %s",
            out_dir,
            ", ".join(sorted(os.listdir(kept))[:5]),
            kept,
        )


def _copy_vocab(source: Path, target: Path) -> int:
    """Copy the keyword `vocab.tsv`; return its number of words (checked on the way)."""
    try:
        shutil.copyfile(source, target)
    except FileNotFoundError:
        raise InputError(f"{source} not found: run `amc-data encode` first.") from None
    return len(read_keyword_vocabulary(target))


def _write_keywords(
    staging: Path, ids: np.ndarray, keywords_csr: scipy.sparse.spmatrix, vocab_tsv_path: Path
) -> tuple[int, int]:
    """Copy `vocab.tsv` and write `keywords.npz` (int32 counts, one row per feature row, sorted
    indices); return the number of words and of stored counts."""
    n_words = _copy_vocab(vocab_tsv_path, staging / "vocab.tsv")
    matrix = scipy.sparse.csr_matrix(keywords_csr)
    if matrix.shape != (ids.size, n_words):
        raise InputError(
            f"The keyword matrix has shape {matrix.shape}; expected ({ids.size}, {n_words}): "
            f"one row per feature row and one column per word of {vocab_tsv_path}."
        )
    check_integral(pd.Series(matrix.data), "The keyword matrix", "counts")
    matrix = matrix.astype(np.int32)
    matrix.sort_indices()
    scipy.sparse.save_npz(staging / "keywords.npz", matrix, compressed=False)
    return n_words, int(matrix.nnz)


def _tables(
    images: pd.DataFrame, queries: pd.DataFrame, judgments: pd.DataFrame
) -> dict[str, pa.Table]:
    """The three tables as Arrow, by file name, each checked against its schema."""
    if FILE_NAME not in images.columns:
        images = images.assign(**{FILE_NAME: pd.Series([None] * len(images), dtype=object)})
    names = images[FILE_NAME]
    if not (names.isna() | names.map(lambda v: isinstance(v, str))).all():
        row = int(np.flatnonzero(~(names.isna() | names.map(lambda v: isinstance(v, str))))[0])
        raise InputError(
            f"images column {FILE_NAME!r} holds {names.iloc[row]!r} at row {row}: a file name "
            "is text (or null where the picture's name is not known)."
        )
    text = names.astype(object).where(names.notna(), None)
    images = images.assign(**{FILE_NAME: pd.Series(list(text), index=images.index, dtype=object)})
    return {
        "images.parquet": _table(images, IMAGES_SCHEMA, "images"),
        "queries.parquet": _table(queries, QUERIES_SCHEMA, "queries"),
        "judgments.parquet": _table(judgments, JUDGMENTS_SCHEMA, "judgments"),
    }


def _feature_ids(feature_ids: np.ndarray) -> np.ndarray:
    """The feature ids as int64, refused unless a 1-D integer array."""
    ids = np.asarray(feature_ids)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise InputError(f"feature_ids must be a 1-D integer array, not {ids.dtype} {ids.shape}.")
    return ids.astype(np.int64)


def _info(
    staging: Path,
    source: str,
    counts: dict[str, Any],
    feature_record: dict[str, Any],
    keywords: tuple[int, int],
    query_vocabulary: QueryVocabulary,
    query_fingerprint: str,
    options: dict[str, Any],
    extra: dict[str, Any] | None,
) -> dict[str, Any]:
    """prepared.json of the folder being staged (`keywords`: words and stored counts)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "source": source,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "amc_data": __version__,
        "counts": counts,
        "features": {**feature_record, "checked_finite": True},
        "keywords": {"vocabulary_size": keywords[0], "nonzeros": keywords[1]},
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
    features: np.ndarray | FeatureRows | Sequence[FeatureRows],
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
    feature_geometry: dict[str, int] | None = None,
) -> Path:
    """Write a prepared dataset folder at `out`; return its resolved path.

    `features` is an `(N, R, D)` or `(N, D)` float array (a memmap is copied chunk by chunk) or
    `FeatureRows` (rows picked from the user's files; linked when already in the layout and
    `link_features`), or several `FeatureRows`, written (or linked) as one file each and read
    back as one array (`format.FeatureFiles`); row `i` belongs to image `feature_ids[i]`, and so
    does row `i` of `keywords_csr` (`(N, V)` counts over the words of `vocab_tsv_path`, the
    encode output's `vocab.tsv`, which is copied). `images`, `queries` and `judgments` are
    DataFrames with the columns of the format (extra columns are kept; `fold` defaults to -1).
    `options` (what the dataset was made with) and `extra` (anything else worth recording) go
    into prepared.json, and so does `feature_geometry` (`image_size`, `resize`, `grid` of
    features from `amc-data features`), as `features.geometry`. `images` may have a `file_name`
    column (text or null: the picture's file name or key); it is written null where absent.

    Everything is written into a staging folder beside `out`, opened with `load_prepared` (every
    check), and only then renamed into place. An existing `out` is replaced only when it holds
    a prepared dataset and `force` is true; a folder holding anything else is never touched.
    Nor is a prepared folder holding anything the writer did not write (any name but
    `format.FILES`: a user's notes, evaluation results, a features report): the replacement
    would delete it, so it is refused with an `OutputFolderError` naming those entries, before any
    work and again just before the swap. Should one appear in the instant between that last
    check and the swap, the old folder is kept aside as `.<out>.kept-*` with it, not deleted.
    """
    if not is_source_name(source):
        raise ConfigError(
            f"source must be the name of the dataset (such as 'coco'), a non-empty text without "
            f"white space at either end, not {source!r}.",
            parameter="source",
        )
    ids = _feature_ids(feature_ids)
    images = images.copy()
    if "fold" not in images.columns:
        images["fold"] = -1
    started = time.perf_counter()
    with _output_folder(out, force) as (out_dir, staging):
        np.save(staging / "feature_ids.npy", ids)
        feature_record = _place_features(features, ids, staging, out_dir, link_features)
        if feature_geometry:
            feature_record["geometry"] = dict(feature_geometry)
        n_words, nonzeros = _write_keywords(staging, ids, keywords_csr, Path(vocab_tsv_path))
        for name, table in _tables(images, queries, judgments).items():
            pq.write_table(table, staging / name)
        query_fingerprint = query_vocabulary.write_tsv(staging / "query_vocab.tsv")
        info = _info(
            staging,
            source,
            counts_per_split(images, queries, judgments, ids.size),
            feature_record,
            (n_words, nonzeros),
            query_vocabulary,
            query_fingerprint,
            options,
            extra,
        )
        (staging / "prepared.json").write_text(
            json.dumps(info, indent=2, default=_json_default, ensure_ascii=False) + "\n",
            encoding="utf-8",
        )
        load_prepared(staging, check_features=False)  # every cross-check, before it goes live
        _commit(staging, out_dir)
    log.info("prepared %s (%s) in %.1f s", out_dir, source, time.perf_counter() - started)
    return out_dir
