"""The prepared dataset folder: what `train` and `eval` read, whatever the source.

```
OUT/
  prepared.json      format version, source, counts per split, feature shape and dtype,
                     fingerprints, amc-data version, options
  features.npy       (N, R, D) or (N, D) float16/float32, read memory-mapped
  feature_ids.npy    (N,) int64: the img_id of each feature row
  keywords.npz       scipy CSR (N, V) int32 counts; row i = image feature_ids[i]
  vocab.tsv          keyword vocabulary (word_id, word, df), copied from the encode output
  images.parquet     img_id int64, split string, fold int8 (COCO test fold 0..4, else -1),
                     file_name string or null (version 2: the picture's file name or key)
  queries.parquet    query_id int64, query string, split string [, intent string]
  judgments.parquet  query_id int64, img_id int64, label int32
  query_vocab.tsv    query words (word_id, word, count), fitted on the train queries
```

Version 2 adds, beside the `file_name` column:
- `features.files` in prepared.json: the features held as several files `features-0.npy`,
  `features-1.npy`, ... (each `(n_k, R, D)`, its rows following the previous file's), each
  entry with its `name`, `rows`, `file_shape`, `stored` (copy, hardlink, symlink), `source`,
  `size` and `mtime_ns`; they are read as one `(N, R, D)` array (`FeatureFiles`), nothing
  copied. Without it the features are `features.npy`, as in version 1.
- `features.geometry` (when the features came from `amc-data features`): `image_size`,
  `resize` and `grid`: the shorter side of each picture was scaled to `resize`, the centre
  `image_size` square cut, and its feature map pooled to `grid` x `grid` cells (row-major:
  region r is cell (r // grid, r % grid)).
Version-1 folders are read as before (their images get a null `file_name`).

`load_prepared` opens one with every cross-check done; each failure is an `InputError` naming
the file, the row or id, and what to do. `amc_data.prepare.writer.write_prepared` writes one.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse

from ..encoding.formats import VOCAB_HEADER, read_vocab_tsv
from ..errors import ConfigError, InputError
from ..spec import PREPARED_SPLITS
from ..version import __version__
from .queries import QueryVocabulary, query_analyzer

__all__ = [
    "FEATURE_DTYPES",
    "FORMAT_VERSION",
    "SPLITS",
    "FeatureFiles",
    "PreparedDataset",
    "is_source_name",
    "load_prepared",
    "map_features",
]

log = logging.getLogger(__name__)

FORMAT_NAME = "amc-data prepared dataset"
FORMAT_VERSION = 2
SPLITS = PREPARED_SPLITS
FEATURE_DTYPES = ("float16", "float32")
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
#: The name of feature file k when the features are held as several files (version 2).
FEATURE_PART = "features-{}.npy"
_FEATURE_PART = re.compile(r"features-(0|[1-9][0-9]*)\.npy")
#: images.parquet's column of picture file names (or keys): text, null where unknown.
FILE_NAME = "file_name"
#: The highest label of a val/test judgment, and of any label the metrics take: the gain
#: 2**label - 1 must fit a float64 (2**1024 overflows it). Train labels (click counts) only
#: need to be 0 or more.
MAX_EVAL_LABEL = 1000
_CHUNK_BYTES = 64 << 20  # features are copied and scanned this much at a time
_SHOWN = 5  # ids shown in a message

IMAGES_SCHEMA = pa.schema([("img_id", pa.int64()), ("split", pa.string()), ("fold", pa.int8())])
QUERIES_SCHEMA = pa.schema(
    [("query_id", pa.int64()), ("query", pa.string()), ("split", pa.string())]
)
JUDGMENTS_SCHEMA = pa.schema(
    [("query_id", pa.int64()), ("img_id", pa.int64()), ("label", pa.int32())]
)


def is_source_name(value: Any) -> bool:
    """Whether `value` can be a prepared folder's `source`: the name of the dataset it was
    prepared from (`synth`, `coco`, a registered dataset's name), a non-empty text without white
    space at either end. Any such name is read: a dataset need not be known to this amc-data."""
    return isinstance(value, str) and bool(value) and value == value.strip()


def shown_ids(values: Sequence[Any] | np.ndarray, total: int | None = None) -> str:
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


def feature_dtype(dtype: np.dtype) -> np.dtype:
    if dtype.name in FEATURE_DTYPES:
        return dtype
    if dtype.kind == "f":
        return np.dtype(np.float32)  # float64 and wider: float32 is all a model uses
    raise InputError(
        f"Features must be floating point (float16 or float32), not {dtype}. Extract them "
        "again, or convert the file with numpy."
    )


def rows_per_chunk(row_shape: tuple[int, ...], itemsize: int) -> int:
    return max(1, _CHUNK_BYTES // max(1, int(np.prod(row_shape)) * itemsize))


def report_nonfinite(chunk: np.ndarray, start: int, ids: np.ndarray, where: str) -> None:
    """Raise for the first row of `chunk` (rows from `start`) that holds NaN or Inf."""
    bad = ~np.isfinite(chunk.reshape(chunk.shape[0], -1)).all(axis=1)
    rows = start + np.flatnonzero(bad)
    row = int(rows[0])
    img_id = f" (img_id {int(ids[row])})" if row < ids.size else ""
    raise InputError(
        f"{where} row {row}{img_id} holds NaN or Inf values ({rows.size} row(s) of this chunk, "
        f"first ones: {shown_ids(rows)}). Extract the features of those images again, or leave the "
        "images out, and prepare again."
    )


def scan_finite(features: np.ndarray, ids: np.ndarray, where: str) -> None:
    """Check every value is finite, a chunk of rows at a time (the array may be a memmap of
    many gigabytes)."""
    step = rows_per_chunk(features.shape[1:], features.dtype.itemsize)
    for start in range(0, features.shape[0], step):
        chunk = np.asarray(features[start : start + step])
        if not np.isfinite(chunk).all():
            report_nonfinite(chunk, start, ids, where)


def check_integral(values: pd.Series, name: str, column: str) -> None:
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


def counts_per_split(
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


def is_feature_part(name: str) -> bool:
    """Whether `name` is one of the feature files of a folder that holds several
    (`features-0.npy`, `features-1.npy`, ...)."""
    return _FEATURE_PART.fullmatch(name) is not None


class FeatureFiles:
    """Several memory-mapped `(n_k, R, D)` arrays read as one `(N, R, D)` array, rows of the
    first file first: nothing is copied until rows are asked for, and then only those rows.

    It has what the readers of `PreparedDataset.features` use: `shape`, `ndim`, `dtype`,
    `nbytes`, `len()`, and `[...]` with an integer, a slice or an integer array of rows (any
    order, repeats allowed), optionally followed by indices of the other axes. `np.asarray`
    gives the whole array (a copy of every row: meant for small folders)."""

    def __init__(self, arrays: Sequence[np.ndarray]) -> None:
        if not arrays:
            raise ConfigError("FeatureFiles needs at least one array.")
        arrays = tuple(a[:, None, :] if a.ndim == 2 else a for a in arrays)
        shapes = {a.shape[1:] for a in arrays}
        dtypes = {a.dtype for a in arrays}
        if len(shapes) > 1 or len(dtypes) > 1:
            raise InputError(
                f"The feature files hold rows of different shapes or types "
                f"({sorted(map(str, shapes))}, {sorted(map(str, dtypes))}); they must agree."
            )
        self.arrays = arrays
        self.starts = np.cumsum([0, *(a.shape[0] for a in arrays)]).astype(np.int64)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.starts[-1]), *self.arrays[0].shape[1:])

    @property
    def ndim(self) -> int:
        return 3

    @property
    def dtype(self) -> np.dtype:
        return self.arrays[0].dtype

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            n = self.shape[0]
            row = int(key) + n if int(key) < 0 else int(key)
            if not 0 <= row < n:
                raise IndexError(f"row {int(key)} is out of range for {n} feature rows")
            part = int(np.searchsorted(self.starts, row, side="right")) - 1
            out = np.asarray(self.arrays[part][row - self.starts[part]])
        elif isinstance(key, slice):
            out = self._rows(np.arange(*key.indices(self.shape[0]), dtype=np.int64))
        else:
            rows = np.asarray(key)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
            if rows.dtype.kind not in "iu":
                raise IndexError(f"feature rows are indexed by integers, not {rows.dtype}")
            out = self._rows(rows.astype(np.int64))
        return out[(slice(None), *rest)] if rest else out

    def _rows(self, rows: np.ndarray) -> np.ndarray:
        """`rows` (any shape) of the whole, gathered file by file."""
        n = self.shape[0]
        flat = rows.reshape(-1)
        flat = np.where(flat < 0, flat + n, flat)
        if flat.size and (flat.min() < 0 or flat.max() >= n):
            raise IndexError(f"feature rows out of range for {n} rows")
        out = np.empty((flat.size, *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.starts, flat, side="right") - 1
        for k in np.unique(part):
            mine = np.flatnonzero(part == k)
            local = flat[mine] - self.starts[k]
            if local.size and np.all(local[1:] == local[:-1] + 1):
                out[mine] = self.arrays[k][local[0] : local[-1] + 1]  # a run: one slice
            else:
                out[mine] = self.arrays[k][local]
        return out.reshape(*rows.shape, *self.shape[1:])

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


# -- reading --------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PreparedDataset:
    """A prepared dataset folder, opened and cross-checked by `load_prepared`."""

    root: Path
    info: dict[str, Any]  # prepared.json
    # (N, R, D) memmap ((N, D) files are viewed as R = 1, no copy), or `FeatureFiles` when the
    # folder holds its features as several files: typed as the array it stands in for (its
    # readers use shape, dtype, nbytes and rows by index)
    features: np.ndarray
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
                f"img_id(s) {shown_ids(unknown, unknown.size)} have no features in {self.root}. "
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
                f"query_id(s) {shown_ids(unknown, unknown.size)} are not in {self.root}/"
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
    """The keyword words in id order, from an encode output's `vocab.tsv`."""
    words, _ = read_vocab_tsv(
        path,
        VOCAB_HEADER,
        missing="expected the keyword vocabulary that `amc-data encode` writes.",
        fix="Encode again, then prepare again.",
    )
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
    if type(version) is not int or version > FORMAT_VERSION:
        raise _fail(
            root,
            "prepared.json",
            f"has format version {version!r}, and this amc-data "
            f"({__version__}) reads version {FORMAT_VERSION} at most",
            "Upgrade amc-data, or prepare the dataset again with this version.",
        )
    if not is_source_name(info.get("source")):
        raise _fail(
            root,
            "prepared.json",
            f"has source {info.get('source')!r}, not the name of a dataset",
            _REPREPARE,
        )
    _check_fields(root, info)
    names = [n for n in FILES if n != "features.npy"]
    names += [entry["name"] for entry in _feature_entries(root, info)]
    missing = [name for name in names if not (root / name).exists()]
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


# The prepared.json fields this package reads, with their JSON type; each is checked when
# present (a missing one is reported where it is used).
_FIELDS: tuple[tuple[str, type], ...] = (
    ("features", dict),
    ("features.shape", list),
    ("features.file_shape", list),
    ("features.dtype", str),
    ("features.stored", str),
    ("features.size", int),
    ("features.mtime_ns", int),
    ("features.geometry", dict),
    ("fingerprints", dict),
    ("fingerprints.keywords", str),
    ("fingerprints.queries", str),
    ("counts", dict),
    ("candidates", str),
)
_JSON_TYPES = {dict: "an object", list: "a list", str: "text", int: "a whole number"}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "true/false"
    if value is None:
        return "null"
    for kind, described in _JSON_TYPES.items():
        if isinstance(value, kind):
            return described
    return "a number with a fraction" if isinstance(value, float) else type(value).__name__


def _check_fields(root: Path, info: dict[str, Any]) -> None:
    """`InputError` naming the first field of `_FIELDS` whose value has another type."""
    for dotted, kind in _FIELDS:
        *parents, leaf = dotted.split(".")
        holder: Any = info
        for parent in parents:
            holder = holder.get(parent)  # a parent is checked (a dict) before its children
        if holder is None or leaf not in holder:
            continue
        value = holder[leaf]
        fine = isinstance(value, kind) and not isinstance(value, bool)
        if fine and kind is list:  # shapes: lists of whole numbers >= 0
            fine = all(type(v) is int and v >= 0 for v in value)
            if not fine:
                raise _fail(
                    root,
                    "prepared.json",
                    f"'{dotted}' is {value!r}, expected a list of whole numbers >= 0",
                    _REPREPARE,
                )
        if not fine:
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            raise _fail(
                root,
                "prepared.json",
                f"'{dotted}' is {_json_type(value)} ({shown}), expected {_JSON_TYPES[kind]}",
                _REPREPARE,
            )


def _feature_entries(root: Path, info: dict[str, Any]) -> list[dict[str, Any]]:
    """The feature files of the folder, each a dict with `name` (and, as recorded, `rows`,
    `file_shape`, `size`, `mtime_ns`): the entries of `features.files`, else `features.npy`
    with the size and time recorded for it."""
    record = info.get("features") or {}
    if "files" not in record:
        return [{"name": "features.npy", **{k: record.get(k) for k in ("size", "mtime_ns")}}]
    files = record["files"]
    if not isinstance(files, list) or not files:
        raise _fail(
            root, "prepared.json", f"'features.files' is {files!r}, expected a list", _REPREPARE
        )
    for k, entry in enumerate(files):
        fine = isinstance(entry, dict) and entry.get("name") == FEATURE_PART.format(k)
        fine = fine and type(entry.get("rows")) is int and entry["rows"] >= 0
        if not fine:
            raise _fail(
                root,
                "prepared.json",
                f"'features.files' entry {k} is {entry!r}, expected an object with name "
                f"{FEATURE_PART.format(k)!r} and its number of rows",
                _REPREPARE,
            )
    return files


def _open_feature_file(root: Path, name: str) -> np.ndarray:
    """One feature file of the folder, memory-mapped, `(n, R, D)` (an `(n, D)` file viewed as
    R = 1, no copy)."""
    try:
        array = np.load(root / name, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise _fail(root, name, f"is not a readable .npy file ({exc})", _REPREPARE) from exc
    if array.ndim not in (2, 3) or array.dtype.name not in FEATURE_DTYPES:
        raise _fail(
            root,
            name,
            f"holds {array.dtype} {array.shape}; expected float16 or "
            "float32 of shape (N, R, D) or (N, D)",
            _REPREPARE,
        )
    return array[:, None, :] if array.ndim == 2 else array  # a view: R = 1, nothing copied


def _load_features(root: Path, info: dict[str, Any]) -> np.ndarray:
    entries = _feature_entries(root, info)
    arrays = [_open_feature_file(root, entry["name"]) for entry in entries]
    for entry, array in zip(entries, arrays, strict=True):
        if "rows" in entry and array.shape[0] != entry["rows"]:
            raise _fail(
                root,
                entry["name"],
                f"holds {array.shape[0]:,} rows but prepared.json records {entry['rows']:,}: "
                "the file was replaced",
                _REPREPARE,
            )
    try:
        features: Any = arrays[0] if len(arrays) == 1 else FeatureFiles(arrays)
    except InputError as exc:
        raise _fail(root, entries[0]["name"], str(exc).rstrip("."), _REPREPARE) from None
    recorded = info.get("features", {})
    name = entries[0]["name"] if len(entries) == 1 else "the feature files"
    shown = list(features.shape)
    if shown != recorded.get("shape") or features.dtype.name != recorded.get("dtype"):
        raise _fail(
            root,
            name,
            f"holds {features.dtype} {shown} but prepared.json "
            f"records {recorded.get('dtype')} {recorded.get('shape')}: the file was replaced",
            _REPREPARE,
        )
    return features


def map_features(path: str | os.PathLike[str]) -> np.ndarray:
    """The features of the prepared folder at `path`, memory-mapped (`(N, R, D)`), without the
    other checks of `load_prepared`: for a process that reopens a folder already loaded (a
    data loader's worker)."""
    root = Path(path)
    return _load_features(root, _read_info(root))


def _scan_changed(
    root: Path,
    info: dict[str, Any],
    features: np.ndarray,
    ids: np.ndarray,
    check_features: bool | None,
) -> None:
    """Look for NaN/Inf in each feature file: always (`check_features=True`), never (False),
    or (None) only in a file whose size or modification time differs from what prepared.json
    recorded after the writer's own scan."""
    arrays = features.arrays if isinstance(features, FeatureFiles) else (features,)
    start = 0
    for entry, array in zip(_feature_entries(root, info), arrays, strict=True):
        stop = start + array.shape[0]
        stat = (root / entry["name"]).stat()
        changed = (stat.st_size, stat.st_mtime_ns) != (entry.get("size"), entry.get("mtime_ns"))
        if check_features or (check_features is None and changed):
            scan_finite(array, ids[start:stop], str(root / entry["name"]))
        start = stop


def load_prepared(
    path: str | os.PathLike[str], *, check_features: bool | None = None
) -> PreparedDataset:
    """Open a prepared dataset folder with every cross-check done.

    Checked: the files are all there and prepared.json is ours and not newer than this
    amc-data; shapes and dtypes; feature ids unique and matching images.parquet both ways (no
    image without features, no features without an image); the keyword matrix's shape against
    both vocabularies' sizes; vocab.tsv and query_vocab.tsv against their recorded sha256
    fingerprints; unique img_ids and query_ids; only train/val/test splits; integer labels,
    0 or more (val/test at most `MAX_EVAL_LABEL`);
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
    where = "features.npy" if not isinstance(features, FeatureFiles) else "the feature files"
    ids = _load_ids(root, features.shape[0], where)
    _scan_changed(root, info, features, ids, check_features)
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
    counts = counts_per_split(images, queries, judgments, ids.size)
    if info.get("counts") != counts:
        raise _fail(
            root,
            "prepared.json",
            f"records counts {info.get('counts')}, but the files "
            f"hold {counts}: files of two preparations are mixed",
            _REPREPARE,
        )
    return dataset


def _load_ids(root: Path, n: int, where: str = "features.npy") -> np.ndarray:
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
            f"has {ids.size:,} ids but {where} has {n:,} rows ({kind})",
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
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        # A truncated or damaged zip, or one without the members of a sparse matrix.
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
    if matrix.dtype != np.int32 or matrix.data.min(initial=0) < 0:
        raise _fail(
            root,
            "keywords.npz",
            f"holds {matrix.dtype} values (min "
            f"{matrix.data.min(initial=0)}); expected int32 counts >= 0",
            _REPREPARE,
        )
    _check_csr(root, matrix, n_words)
    return matrix


_CSR_CHUNK = 1 << 22  # entries of indptr or indices checked at a time (a few tens of MB)


def _check_csr(root: Path, matrix: scipy.sparse.csr_matrix, n_words: int) -> None:
    """The CSR arrays hold together: row pointers never going backwards, and every word index
    within the vocabulary. scipy loads a matrix without these checks, and a bad one fails much
    later (an index error deep in training). Checked a chunk at a time: memory stays bounded at
    any size."""
    # scipy has checked that indptr starts at 0 and ends within the indices (and cut them to
    # its end), but not the rows between, nor the indices themselves.
    indptr, indices = matrix.indptr, matrix.indices
    nnz = indices.size
    for start in range(0, indptr.size - 1, _CSR_CHUNK):
        steps = np.diff(indptr[start : start + _CSR_CHUNK + 1])
        if (steps < 0).any():
            row = start + int(np.flatnonzero(steps < 0)[0])
            raise _fail(
                root,
                "keywords.npz",
                f"array indptr goes backwards at row {row} (from {int(indptr[row])} to "
                f"{int(indptr[row + 1])})",
                _REPREPARE,
            )
    if nnz == 0 or (indices.min() >= 0 and indices.max() < n_words):  # no temporary array
        return
    for start in range(0, nnz, _CSR_CHUNK):
        part = indices[start : start + _CSR_CHUNK]
        bad = (part < 0) | (part >= n_words)
        if bad.any():
            position = start + int(np.flatnonzero(bad)[0])
            row = int(np.searchsorted(indptr, position, side="right")) - 1
            raise _fail(
                root,
                "keywords.npz",
                f"array indices: row {row} names word {int(indices[position])}, but vocab.tsv "
                f"has {n_words:,} words (0 to {n_words - 1:,})",
                _REPREPARE,
            )


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
    if FILE_NAME not in images.columns:  # a version-1 folder: no picture is known by name
        images[FILE_NAME] = pd.Series([None] * len(images), dtype=object)
    else:
        kind = pq.read_schema(root / "images.parquet").field(FILE_NAME).type
        if not (
            pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)
        ):
            raise _fail(
                root, "images.parquet", f"column {FILE_NAME!r} holds {kind}, not text", _REPREPARE
            )
        names = images[FILE_NAME]
        images[FILE_NAME] = names.astype(object).where(names.notna(), None)  # null: None
    img_ids = images["img_id"].to_numpy()
    _check_unique(root, "images.parquet", img_ids, "img_id")
    _check_splits(root, "images.parquet", images, "img_id")
    without_features = unique_ids(img_ids[positions(ids, img_ids) < 0])
    if without_features.size:
        raise _fail(
            root,
            "images.parquet",
            f"lists {without_features.size:,} image(s) with no "
            f"row in feature_ids.npy: img_id {shown_ids(without_features, without_features.size)}",
            "Every image needs features: " + _REPREPARE,
        )
    without_image = unique_ids(ids[positions(img_ids, ids) < 0])
    if without_image.size:
        raise _fail(
            root,
            "feature_ids.npy",
            f"holds features of {without_image.size:,} image(s) "
            f"that images.parquet does not list: img_id "
            f"{shown_ids(without_image, without_image.size)}",
            _REPREPARE,
        )
    return images


def _load_queries(root: Path) -> pd.DataFrame:
    queries = _read_table(root, "queries.parquet")
    _check_columns(root, "queries.parquet", queries, QUERIES_SCHEMA)
    _check_query_text(root, queries)
    _check_unique(root, "queries.parquet", queries["query_id"].to_numpy(), "query_id")
    _check_splits(root, "queries.parquet", queries, "query_id")
    return queries


def _check_query_text(root: Path, queries: pd.DataFrame) -> None:
    """Every query a text: the analyzer reads each one when a model encodes it."""
    name = "queries.parquet"
    kind = pq.read_schema(root / name).field("query").type  # the file's type, not pandas'
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise _fail(root, name, f"column 'query' holds {kind}, not text", _REPREPARE)
    missing = queries["query"].isna().to_numpy()
    if missing.any():
        row = int(np.flatnonzero(missing)[0])
        raise _fail(
            root,
            name,
            f"row {row} (query_id {int(queries['query_id'].iloc[row])}) has no query text "
            f"(null) ({int(missing.sum()):,} such rows)",
            _REPREPARE,
        )


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
    _check_labels(root, judgments, queries["split"].to_numpy()[query_row])
    _check_every_query_judged(root, queries, query_row)
    _check_pairs(root, name, judgments, queries, images, query_row, image_row)
    return judgments


def _check_every_query_judged(root: Path, queries: pd.DataFrame, query_row: np.ndarray) -> None:
    """Every query has at least one judgment (`query_row`: each judgment's query row)."""
    query_ids = queries["query_id"].to_numpy()
    unjudged = query_ids[np.bincount(query_row, minlength=query_ids.size) == 0]
    if unjudged.size:
        first = queries.loc[queries["query_id"] == unjudged[0]].iloc[0]
        raise _fail(
            root,
            "queries.parquet",
            f"query_id {int(unjudged[0])} ({first['query']!r}, "
            f"{first['split']}) has no judgment ({unjudged.size:,} queries without one: "
            f"{shown_ids(unjudged, unjudged.size)})",
            "Every query needs at least one judged image: drop such queries and prepare again.",
        )


def _check_pairs(
    root: Path,
    name: str,
    judgments: pd.DataFrame,
    queries: pd.DataFrame,
    images: pd.DataFrame,
    query_row: np.ndarray,
    image_row: np.ndarray,
) -> None:
    """Each (query, image) pair is judged once, and train queries on train images only."""
    judged_queries = judgments["query_id"].to_numpy()
    judged_images = judgments["img_id"].to_numpy()
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


def _check_labels(root: Path, judgments: pd.DataFrame, split: np.ndarray) -> None:
    """Labels 0 or more everywhere, at most `MAX_EVAL_LABEL` in val/test (`split`: each
    judgment's query split), so eval never stops on them after scoring."""
    labels = judgments["label"].to_numpy()
    evaluated = split != "train"
    for bad, allowed in (
        (labels < 0, "labels are 0 or more (0 = not relevant)"),
        (
            evaluated & (labels > MAX_EVAL_LABEL),
            f"val/test labels are relevance grades of at most {MAX_EVAL_LABEL} (eval's gain "
            "2**label - 1 must fit a float; Clickture: Excellent 3, Good 2, Bad 0)",
        ),
    ):
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise _fail(
                root,
                "judgments.parquet",
                f"row {row} (query_id {int(judgments['query_id'].iloc[row])}, {split[row]}; "
                f"img_id {int(judgments['img_id'].iloc[row])}) has label "
                f"{int(labels[row])}; {allowed} ({int(bad.sum()):,} such rows)",
                "Fix the labels of the input (train: click counts or 1; val/test: grades) and "
                "prepare the dataset again.",
            )
