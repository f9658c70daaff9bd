"""`prepare clickture`: Clickture-Lite's click log for training and Clickture-dev's graded
judgments for validation and test, as a prepared dataset folder.

Assumed inputs (Microsoft distributes Clickture as tab-separated text, images base64-encoded
in a separate file that this command never reads); every assumption can be overridden:

- click log: one line per (query, image) pair, columns `query`, `key` (image key), `clicks`
  (a whole number >= 0), no header, UTF-8;
- dev judgments: columns `query`, `key`, `grade` (Excellent, Good or Bad, any case; 3, 2, 0
  are accepted as already mapped), no header, UTF-8;
- fields are split at tabs only: no quoting, no escapes, so a `"` in a query is kept.

Image keys become img_ids through the authors' id maps (`img_id_map.pkl` for Lite,
`img_id_map_dev.pkl` for dev, read with `load_id_map`) or a user's TSV of `key<TAB>img_id`.
Lite and dev ids overlap, so the prepared folder gives dev images `DEV_ID_OFFSET + id`
(`source`/`source_id` in images.parquet keep the original).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import scipy.sparse

from ..archive import load_id_map
from ..datadir import dataset_dir
from ..encoding.dataset import load_encoded
from ..errors import ConfigError, InputError
from .common import (
    EXAMPLES,
    Missing,
    OnError,
    PrepareResult,
    Problems,
    encode_summary,
    feature_rows,
    missing_features,
    open_features,
    shown,
)
from .format import SPLITS, read_keyword_vocabulary, unique_ids
from .queries import fit_query_vocabulary
from .writer import write_prepared

__all__ = [
    "CLICK_COLUMNS",
    "DEV_ID_OFFSET",
    "GRADES",
    "LABEL_COLUMNS",
    "ClicktureConfig",
    "TsvLayout",
    "prepare_clickture",
    "split_dev_queries",
]

log = logging.getLogger(__name__)

CLICK_COLUMNS = ("query", "key", "clicks")
LABEL_COLUMNS = ("query", "key", "grade")
GRADES = {"excellent": 3, "good": 2, "bad": 0, "3": 3, "2": 2, "0": 0}
DEV_ID_OFFSET = 1_000_000_000  # dev image 48500 is img_id 1_000_048_500 in the prepared folder
_IGNORED = ("-", "_")


@dataclass(frozen=True)
class TsvLayout:
    """How a tab-separated input is laid out: its column names in file order (`-` for a column
    to ignore), whether its first line is a header, and its text encoding."""

    columns: tuple[str, ...]
    header: bool = False
    encoding: str = "utf-8"

    def check(self, required: tuple[str, ...], option: str) -> None:
        named = [c for c in self.columns if c not in _IGNORED]
        if sorted(named) != sorted(required):
            raise ConfigError(
                f"{option} must name the columns {', '.join(required)} once each, in file order, "
                f"with '-' for any column to ignore (for example "
                f"{','.join(required)}); got {','.join(self.columns)!r}."
            )


@dataclass(frozen=True)
class ClicktureConfig:
    """How `prepare_clickture` reads its inputs and splits the dev queries."""

    clicks_layout: TsvLayout = field(default_factory=lambda: TsvLayout(CLICK_COLUMNS))
    labels_layout: TsvLayout = field(default_factory=lambda: TsvLayout(LABEL_COLUMNS))
    val_fraction: float = 0.5  # of the dev queries; the rest are test
    split_seed: int = 0
    min_query_count: int = 4
    on_error: OnError = "fail"  # bad lines, unknown keys or grades, train/dev query overlap
    missing: Missing = "fail"  # images without features
    force: bool = False

    def __post_init__(self) -> None:
        self.clicks_layout.check(CLICK_COLUMNS, "--clicks-columns")
        self.labels_layout.check(LABEL_COLUMNS, "--labels-columns")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"val_fraction must lie strictly between 0 and 1, not {self.val_fraction!r}."
            )
        for name in ("on_error", "missing"):
            if getattr(self, name) not in ("fail", "skip"):
                raise ConfigError(f"{name} must be 'fail' or 'skip', not {getattr(self, name)!r}.")
        if (
            isinstance(self.min_query_count, bool)
            or not isinstance(self.min_query_count, int)
            or self.min_query_count < 1
        ):
            raise ConfigError(
                f"min_query_count must be a whole number >= 1, not {self.min_query_count!r}."
            )
        if type(self.split_seed) is not int:
            raise ConfigError(f"split_seed must be an integer, not {self.split_seed!r}.")


# -- reading the TSV files ---------------------------------------------------------------------
def _numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False))


def _examples(table: pa.Table, mask: np.ndarray, column: str) -> list[str]:
    """`line N: 'value'` for the first few rows of `mask`."""
    rows = table.take(pa.array(np.flatnonzero(mask)[:EXAMPLES]))
    pairs = zip(rows["line"].to_pylist(), rows[column].to_pylist(), strict=True)
    return [f"line {n}: {value!r}" for n, value in pairs]


def _read_tsv(
    path: Path, layout: TsvLayout, what: str, option: str, problems: Problems
) -> pa.Table:
    """The named columns of a TSV file as text, with `line` (its 1-based line number); blank
    lines dropped, lines with another number of fields a problem. Read column-wise by Arrow:
    a click log has tens of millions of lines."""
    names = [c if c not in _IGNORED else f"_ignored_{i}" for i, c in enumerate(layout.columns)]
    wanted = [c for c in layout.columns if c not in _IGNORED]
    bad: list[tuple[int | None, str, int]] = []

    def invalid(row: Any) -> str:
        bad.append((row.number, row.text, row.actual_columns))
        return "skip"

    if not path.is_file():
        raise InputError(f"The {what} {path} does not exist.")
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(
                column_names=names,
                skip_rows=int(layout.header),
                encoding=layout.encoding,
                use_threads=False,  # invalid lines then come with their line numbers
            ),
            parse_options=pacsv.ParseOptions(
                delimiter="\t",
                quote_char=False,
                escape_char=False,
                invalid_row_handler=invalid,
                ignore_empty_lines=False,  # kept as rows (dropped below) so lines can be counted
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.large_string() for n in names},
                include_columns=wanted,
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except LookupError as exc:  # an encoding Python does not know
        raise ConfigError(f"Unknown text encoding {layout.encoding!r} for {path}: {exc}.") from exc
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(
            f"Cannot read the {what} {path} as {layout.encoding} tab-separated text ({exc}). "
            f"Pass its encoding with --encoding (for example latin-1)."
        ) from exc
    # Line numbers: the rows (blank lines included) fill the lines the invalid ones left.
    invalid_lines = np.array(sorted(n for n, _, _ in bad if n is not None), dtype=np.int64)
    first = 1 + int(layout.header)
    lines = np.arange(first, first + table.num_rows + invalid_lines.size, dtype=np.int64)
    lines = np.setdiff1d(lines, invalid_lines, assume_unique=True)[: table.num_rows]
    table = table.append_column("line", pa.array(lines))
    blank = np.logical_and.reduce([_numpy(pc.equal(table[c], "")) for c in wanted])
    table = table.filter(pa.array(~blank))
    examples = [f"line {n}: {text[:60]!r} ({k} fields)" for n, text, k in bad]
    problems.report(
        f"{what}: lines with {len(layout.columns)} fields expected",
        len(bad),
        examples,
        f"{len(bad):,} lines of {path} do not have {len(layout.columns)} tab-separated fields "
        f"({', '.join(layout.columns)}): {shown(examples, len(bad))}. If the file has other "
        f"columns, describe them with {option}.",
    )
    if table.num_rows == 0:
        raise InputError(f"The {what} {path} holds no line with {', '.join(layout.columns)}.")
    return table


def _column_hint(table: pa.Table, layout: TsvLayout, numeric: str, option: str) -> str:
    """Where the numbers seem to be, when not in the column named `numeric`."""
    head = table.slice(0, 200)
    for name in head.column_names:
        if name in (numeric, "line"):
            continue
        if _numpy(pc.match_substring_regex(head[name], r"^[0-9]+$")).all():
            columns = [
                numeric if c == name else (name if c == numeric else c) for c in layout.columns
            ]
            return (
                f" The numbers seem to be in the {name!r} column: try {option} {','.join(columns)}."
            )
    return ""


def _load_key_map(path: Path) -> pd.Series:
    """Image key -> img_id, from an authors' `img_id_map*.pkl` or a `key<TAB>img_id` TSV."""
    if not path.is_file():
        raise InputError(
            f"The image id map {path} does not exist. Run `amc-data fetch clickture` for the "
            "authors' img_id_map*.pkl, or pass a TSV of key<TAB>img_id."
        )
    if path.suffix == ".pkl":
        mapping = load_id_map(path)
        return pd.Series(np.fromiter(mapping.values(), np.int64, len(mapping)), index=list(mapping))
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=["key", "img_id"], use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False),
            convert_options=pacsv.ConvertOptions(
                column_types={"key": pa.string(), "img_id": pa.string()}
            ),
        ).to_pandas()
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        raise InputError(f"{path} is not a UTF-8 TSV of key<TAB>img_id ({exc}).") from exc
    if len(table) and not table["img_id"].iloc[0].isdigit():
        table = table.iloc[1:]  # a header line
    if table.empty:
        raise InputError(f"{path} maps no image key; expected lines of key<TAB>img_id.")
    ids = pd.to_numeric(table["img_id"], errors="coerce")
    bad = np.flatnonzero(ids.isna().to_numpy() | (ids < 0).to_numpy())
    if bad.size:
        row = table.iloc[int(bad[0])]
        raise InputError(
            f"{path}: the img_id of key {row['key']!r} is {row['img_id']!r}, not a whole "
            "number >= 0."
        )
    series = pd.Series(ids.to_numpy(np.int64), index=table["key"].to_numpy())
    if series.index.has_duplicates:
        key = series.index[series.index.duplicated()][0]
        raise InputError(f"{path} maps the key {key!r} more than once.")
    return series


def _map_keys(
    table: pa.Table, key_map: pd.Series, path: Path, map_path: Path, problems: Problems
) -> pa.Table:
    """`table` less the lines whose key the map lacks (a problem), with an `img_id` column."""
    keys = pc.dictionary_encode(table["key"].combine_chunks())
    where = key_map.index.get_indexer(keys.dictionary.to_pandas())
    known = where >= 0
    per_key = np.where(known, key_map.to_numpy()[where], -1)
    ids = per_key[_numpy(keys.indices)]
    unknown = ids < 0
    if unknown.any():
        examples = _examples(table, unknown, "key")
        problems.report(
            f"{path.name}: unknown image keys",
            int(unknown.sum()),
            examples,
            f"{int(unknown.sum()):,} lines of {path} name an image key that {map_path} does not "
            f"map ({int((~known).sum()):,} distinct keys): "
            f"{shown(examples, int(unknown.sum()))}. Check that the id map belongs to this file "
            "(img_id_map.pkl: Lite; img_id_map_dev.pkl: dev).",
        )
    ids = ids[~unknown]
    if ids.size and int(ids.max()) >= DEV_ID_OFFSET:
        raise InputError(
            f"{map_path} maps an image to id {int(ids.max()):,}, but the prepared folder puts "
            f"dev images at ids from {DEV_ID_OFFSET:,} up, so ids must stay below that. "
            "Check the id map."
        )
    return table.filter(pa.array(~unknown)).append_column("img_id", pa.array(ids))


def normalize_query(texts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """How queries are compared between train and dev: lower-case, runs of white space made
    one space, no white space at either end."""
    collapsed = pc.replace_substring_regex(pc.utf8_lower(texts), r"\s+", " ")
    return pc.utf8_trim_whitespace(collapsed)


def split_dev_queries(
    queries: Sequence[str] | pa.Array, val_fraction: float, seed: int
) -> np.ndarray:
    """`"val"` or `"test"` for each distinct dev query: the queries are ordered by the sha256 of
    `"<seed>\\0<normalised query>"` and the first `round(val_fraction * n)` go to val. The
    split depends on the query texts alone (not on file order), and a seed gives another."""
    texts = queries if isinstance(queries, pa.Array) else pa.array(list(queries), pa.string())
    normalized = normalize_query(texts).to_pylist()
    keys = [hashlib.sha256(f"{seed}\0{q}".encode()).digest() for q in normalized]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    split = np.full(len(keys), "test", dtype="<U5")
    split[order[: round(val_fraction * len(keys))]] = "val"
    return split


# -- the two inputs ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _Judged:
    """Judgments read from one file, one row per (query, image) pair, as numpy columns; each
    distinct query text once, in order of first appearance."""

    query: np.ndarray  # (n,) int64: index into texts
    img_id: np.ndarray  # (n,) int64
    label: np.ndarray  # (n,) int64
    texts: pa.Array  # distinct queries

    def __len__(self) -> int:
        return self.query.size

    def keep(self, rows: np.ndarray) -> _Judged:
        """Only the rows of mask `rows`; texts no row uses any more are dropped."""
        query = self.query[rows]
        used = np.zeros(len(self.texts), dtype=bool)
        used[query] = True
        renumber = np.cumsum(used) - 1
        texts = self.texts.filter(pa.array(used))
        return _Judged(renumber[query], self.img_id[rows], self.label[rows], texts)


def _pairs(query: np.ndarray, img_id: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group rows by (query, image): the rows sorted by pair, where each group starts in that
    order, and each group's first row in the file."""
    pair = query.astype(np.int64) * DEV_ID_OFFSET + img_id  # img_id < DEV_ID_OFFSET
    order = np.argsort(pair, kind="stable")
    ordered = pair[order]
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    return order, starts, order[starts]


def _queries(
    table: pa.Table, path: Path, what: str, problems: Problems
) -> tuple[pa.Table, np.ndarray, pa.Array]:
    """Each line's query as a code into the distinct stripped query texts (in order of first
    appearance); lines whose query is empty are a problem and left out."""
    raw = pc.dictionary_encode(table["query"].combine_chunks())
    # Strip the distinct texts, not every line: a click log repeats its queries many times.
    stripped = pc.dictionary_encode(pc.utf8_trim_whitespace(raw.dictionary))
    codes = _numpy(stripped.indices).astype(np.int64)[_numpy(raw.indices)]
    texts = stripped.dictionary
    empty_code = _numpy(pc.equal(texts, ""))
    empty = empty_code[codes]
    if empty.any():
        lines = _numpy(table["line"])[empty].tolist()
        problems.report(
            f"{what}: empty queries",
            len(lines),
            lines[:EXAMPLES],
            f"{len(lines):,} lines of {path} have an empty query (lines "
            f"{shown(lines, len(lines))}).",
        )
        table, codes = table.filter(pa.array(~empty)), codes[~empty]
    return table, codes, texts


def _click_counts(
    table: pa.Table, path: Path, layout: TsvLayout, problems: Problems
) -> tuple[pa.Table, np.ndarray]:
    """Each line's click count; lines whose count is not a whole number >= 0 are a problem and
    left out."""
    try:  # the common case, in one pass
        counts = _numpy(pc.cast(table["clicks"], pa.int64()))
        whole = counts >= 0
    except pa.ArrowInvalid:
        text = pc.utf8_trim_whitespace(table["clicks"])
        whole = _numpy(pc.match_substring_regex(text, r"^[0-9]{1,18}$"))
        counts = np.zeros(table.num_rows, dtype=np.int64)
        counts[whole] = _numpy(pc.cast(text.filter(pa.array(whole)), pa.int64()))
    if not whole.all():
        examples = _examples(table, ~whole, "clicks")
        problems.report(
            "click log: click counts that are not whole numbers >= 0",
            int((~whole).sum()),
            examples,
            f"{int((~whole).sum()):,} lines of {path} have a click count that is not a whole "
            f"number >= 0: {shown(examples, int((~whole).sum()))}.",
            hint=_column_hint(table, layout, "clicks", "--clicks-columns"),
        )
        table, counts = table.filter(pa.array(whole)), counts[whole]
    return table, counts


def _clicks(
    path: Path, key_map: pd.Series, map_path: Path, config: ClicktureConfig, problems: Problems
) -> tuple[_Judged, list[str]]:
    layout = config.clicks_layout
    table = _read_tsv(path, layout, "click log", "--clicks-columns", problems)
    table, clicks = _click_counts(table, path, layout, problems)
    table = table.append_column("count", pa.array(clicks))
    table = _map_keys(table, key_map, path, map_path, problems)
    table, query, texts = _queries(table, path, "click log", problems)
    clicks, img_id = _numpy(table["count"]), _numpy(table["img_id"])
    order, starts, first = _pairs(query, img_id)
    sums = np.add.reduceat(clicks[order], starts) if starts.size else clicks[:0]
    appear = np.argsort(first, kind="stable")  # pairs in the order the log first names them
    notes = []
    if starts.size < query.size:
        notes.append(
            f"{query.size - starts.size:,} click-log lines repeat a (query, image) pair; their "
            "clicks were added up."
        )
    judged = _Judged(query[first][appear], img_id[first][appear], sums[appear], texts)
    return judged.keep(np.ones(len(judged), dtype=bool)), notes


def _dev_labels(
    path: Path, key_map: pd.Series, map_path: Path, config: ClicktureConfig, problems: Problems
) -> tuple[_Judged, list[str]]:
    table = _read_tsv(path, config.labels_layout, "dev judgments", "--labels-columns", problems)
    grade = pc.utf8_lower(pc.utf8_trim_whitespace(table["grade"]))
    label = np.full(table.num_rows, -1, dtype=np.int64)
    for name, value in GRADES.items():
        label[_numpy(pc.equal(grade, name))] = value
    unknown = label < 0
    if unknown.any():
        examples = _examples(table, unknown, "grade")
        problems.report(
            "dev judgments: unknown grades",
            int(unknown.sum()),
            examples,
            f"{int(unknown.sum()):,} lines of {path} have a grade other than Excellent, Good or "
            f"Bad: {shown(examples, int(unknown.sum()))}.",
        )
        table = table.filter(pa.array(~unknown))
        label = label[~unknown]
    table = table.append_column("label", pa.array(label))
    table = _map_keys(table, key_map, path, map_path, problems)
    table, query, texts = _queries(table, path, "dev judgments", problems)
    label, img_id = _numpy(table["label"]), _numpy(table["img_id"])
    order, starts, first = _pairs(query, img_id)
    lowest = np.minimum.reduceat(label[order], starts)
    highest = np.maximum.reduceat(label[order], starts)
    notes = []
    conflict = lowest != highest
    if conflict.any():
        boundary = np.zeros(query.size, dtype=bool)
        boundary[starts] = True
        group = np.empty(query.size, dtype=np.int64)
        group[order] = np.cumsum(boundary) - 1
        rows = conflict[group]
        examples = _examples(table, rows, "query")
        problems.report(
            "dev judgments: conflicting grades",
            int(rows.sum()),
            examples,
            f"{int(rows.sum()):,} lines of {path} grade a (query, image) pair that another "
            f"line grades differently: {shown(examples, int(rows.sum()))}.",
        )
    if starts.size < query.size:
        notes.append(f"{query.size - starts.size:,} dev lines repeat a judgment; kept once.")
    first = first[~conflict]
    appear = np.sort(first)
    judged = _Judged(query[appear], img_id[appear], label[appear], texts)
    return judged.keep(np.ones(appear.size, dtype=bool)), notes


# -- keywords and features ---------------------------------------------------------------------
def _keyword_rows(
    encoded: Path, part: str, ids: np.ndarray, n_words: int
) -> scipy.sparse.csr_matrix:
    matrix = load_encoded("clickture", part, out=encoded).matrix
    if matrix.shape[1] != n_words:
        raise InputError(
            f"{encoded}: the {part} matrix has {matrix.shape[1]} columns, vocab.tsv {n_words} "
            "words. Encode again with --force."
        )
    padded = scipy.sparse.vstack(
        [matrix, scipy.sparse.csr_matrix((1, n_words), dtype=matrix.dtype)], format="csr"
    )
    return padded[np.where(ids < matrix.shape[0], ids, matrix.shape[0])].astype(np.int32)


def _with_features(
    judged: _Judged,
    have: np.ndarray,
    what: str,
    ids_path: Path,
    missing: Missing,
    skipped: dict[str, dict[str, Any]],
) -> _Judged:
    """`judged` less the judgments of images without features (or an `InputError`)."""
    wanted = unique_ids(judged.img_id)
    present = missing_features(wanted, have, missing, what, ids_path)
    if present.all():
        return judged
    absent = wanted[~present]
    skipped[f"{what} without features"] = {
        "count": int(absent.size),
        "examples": absent[:EXAMPLES].tolist(),
    }
    return judged.keep(~np.isin(judged.img_id, absent))


def _without_shared_queries(
    train: _Judged, dev: _Judged, dev_split: np.ndarray, clicks: Path, problems: Problems
) -> _Judged:
    """`train` less the queries that are also dev queries (a problem: evaluating on queries
    seen in training inflates the scores)."""
    train_normalized = normalize_query(train.texts)
    dev_normalized = normalize_query(dev.texts)
    shared = _numpy(pc.is_in(dev_normalized, value_set=train_normalized))
    if not shared.any():
        return train
    texts = dev.texts.filter(pa.array(shared)).to_pylist()
    splits, counts = np.unique(dev_split[shared], return_counts=True)
    where = ", ".join(f"{n:,} {s}" for s, n in zip(splits, counts, strict=True))
    problems.report(
        "queries in both train and val/test",
        len(texts),
        texts[:EXAMPLES],
        f"{len(texts):,} dev queries ({where}) also appear in the click log {clicks} (compared "
        f"lower-cased, spaces collapsed): {shown([repr(t) for t in texts], len(texts))}. "
        "Evaluating on queries the model was trained on inflates the scores.",
    )
    leaked = _numpy(pc.is_in(train_normalized, value_set=dev_normalized.filter(pa.array(shared))))
    return train.keep(~leaked[train.query])


def _batches(texts: pa.Array, size: int = 1 << 16) -> Iterator[str]:
    """The texts as Python strings, a slice at a time (a click log has millions)."""
    for start in range(0, len(texts), size):
        yield from texts.slice(start, size).to_pylist()


# -- the command -------------------------------------------------------------------------------
def prepare_clickture(
    clicks: str | os.PathLike[str],
    dev_labels: str | os.PathLike[str],
    *,
    features: str | os.PathLike[str],
    feature_ids: str | os.PathLike[str],
    dev_features: str | os.PathLike[str],
    dev_feature_ids: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    encoded: str | os.PathLike[str] | None = None,
    id_map: str | os.PathLike[str] | None = None,
    dev_id_map: str | os.PathLike[str] | None = None,
    config: ClicktureConfig | None = None,
) -> PrepareResult:
    """Prepare Clickture: train on the click log (Lite images), validate and test on the dev
    judgments (dev images), into `out` (default `<data_dir>/clickture/prepared`).

    `features`/`feature_ids` hold the Lite images' features and their ids (the id map's values),
    `dev_features`/`dev_feature_ids` the dev images'. Keywords come from the encode output
    (default `<data_dir>/clickture/encoded`); id maps default to the authors' pickles in
    `<data_dir>/clickture/`.
    """
    config = config or ClicktureConfig()
    folder = dataset_dir(data_dir, "clickture")
    out_dir = Path(out) if out is not None else folder / "prepared"
    encoded_dir = Path(encoded) if encoded is not None else folder / "encoded"
    lite_map_path = Path(id_map) if id_map is not None else folder / "img_id_map.pkl"
    dev_map_path = Path(dev_id_map) if dev_id_map is not None else folder / "img_id_map_dev.pkl"
    clicks_path, labels_path = Path(clicks), Path(dev_labels)
    problems = Problems(config.on_error)
    record = encode_summary(encoded_dir, "clickture")
    lite_array, lite_have, lite_features_path = open_features(features, feature_ids)
    dev_array, dev_have, _ = open_features(dev_features, dev_feature_ids)
    train, notes = _clicks(
        clicks_path, _load_key_map(lite_map_path), lite_map_path, config, problems
    )
    dev, dev_notes = _dev_labels(
        labels_path, _load_key_map(dev_map_path), dev_map_path, config, problems
    )
    notes += dev_notes

    # Images without features: stop, or drop them with their judgments.
    skipped: dict[str, dict[str, Any]] = {}
    train = _with_features(
        train, lite_have, "Lite images of the click log", Path(feature_ids), config.missing, skipped
    )
    dev = _with_features(
        dev, dev_have, "dev images of the judgments", Path(dev_feature_ids), config.missing, skipped
    )
    # Dev queries: val or test by query; a dev query that is also a train query is a leak.
    dev_split = split_dev_queries(dev.texts, config.val_fraction, config.split_seed)
    train = _without_shared_queries(train, dev, dev_split, clicks_path, problems)
    if len(train) == 0:
        raise InputError(f"No training judgment is left from {clicks_path}.")
    if len(dev) == 0:
        raise InputError(f"No dev judgment is left from {labels_path}.")

    # Queries: train in click-log order, then dev in judgment order.
    n_train, n_dev = len(train.texts), len(dev.texts)
    split_code = np.concatenate(
        [np.zeros(n_train, dtype=np.int8), np.where(dev_split == "val", 1, 2).astype(np.int8)]
    )
    texts = pa.concat_arrays(
        [train.texts.cast(pa.large_string()), dev.texts.cast(pa.large_string())]
    )
    queries = pd.DataFrame(
        {
            "query_id": np.arange(n_train + n_dev, dtype=np.int64),
            "query": texts.to_pandas(),
            "split": pd.Categorical.from_codes(split_code, categories=SPLITS),
        }
    )
    dev_img = dev.img_id + DEV_ID_OFFSET
    judgments = pd.DataFrame(
        {
            "query_id": np.concatenate([train.query, n_train + dev.query]),
            "img_id": np.concatenate([train.img_id, dev_img]),
            "label": np.concatenate([train.label, dev.label]).astype(np.int32),
        }
    )

    # Images: the clicked Lite images (train), the judged dev images (test where any test
    # query judges them, else val).
    lite_ids = unique_ids(train.img_id)
    dev_ids = unique_ids(dev.img_id)
    judged_in = dev_split[dev.query]  # each dev judgment's split
    judged_by_test = unique_ids(dev.img_id[judged_in == "test"])
    dev_test = np.isin(dev_ids, judged_by_test)
    both = int(np.isin(unique_ids(dev.img_id[judged_in == "val"]), judged_by_test).sum())
    if both:
        notes.append(
            f"{both:,} dev images are judged by both val and test queries; their split is test."
        )
    images = pd.DataFrame(
        {
            "img_id": np.concatenate([lite_ids, dev_ids + DEV_ID_OFFSET]),
            "split": pd.Categorical.from_codes(
                np.concatenate([np.zeros(lite_ids.size, np.int8), np.where(dev_test, 2, 1)]),
                categories=SPLITS,
            ),
            "fold": np.int8(-1),
            "source": pd.Categorical.from_codes(
                np.repeat([0, 1], [lite_ids.size, dev_ids.size]), categories=["lite", "dev"]
            ),
            "source_id": np.concatenate([lite_ids, dev_ids]),
        }
    )

    # Features and keyword rows, Lite then dev, each in the user's row order.
    lite_rows = np.flatnonzero(np.isin(lite_have, lite_ids))
    dev_rows = np.flatnonzero(np.isin(dev_have, dev_ids))
    out_ids = np.concatenate([lite_have[lite_rows], dev_have[dev_rows] + DEV_ID_OFFSET])
    vocab_path = encoded_dir / "vocab.tsv"
    n_words = len(read_keyword_vocabulary(vocab_path))
    keywords = scipy.sparse.vstack(
        [
            _keyword_rows(encoded_dir, "lite", lite_have[lite_rows], n_words),
            _keyword_rows(encoded_dir, "dev", dev_have[dev_rows], n_words),
        ],
        format="csr",
    )
    without_keywords = int((np.diff(keywords.indptr) == 0).sum())
    if without_keywords:
        notes.append(
            f"{without_keywords:,} images have no keyword in the vocabulary (or were not "
            "encoded); they get empty keyword rows."
        )
    extra_rows = lite_have.size - lite_rows.size + dev_have.size - dev_rows.size
    if extra_rows:
        notes.append(f"{extra_rows:,} feature rows belong to no judged image and were left out.")

    query_vocabulary = fit_query_vocabulary(_batches(train.texts), config.min_query_count)
    options = {
        **asdict(config),
        "clicks": str(clicks_path.resolve()),
        "dev_labels": str(labels_path.resolve()),
        "features": str(Path(features).resolve()),
        "feature_ids": str(Path(feature_ids).resolve()),
        "dev_features": str(Path(dev_features).resolve()),
        "dev_feature_ids": str(Path(dev_feature_ids).resolve()),
        "id_map": str(lite_map_path.resolve()),
        "dev_id_map": str(dev_map_path.resolve()),
        "encoded": str(encoded_dir.resolve()),
    }
    skipped = {**problems.recorded, **skipped}
    path = write_prepared(
        out_dir,
        source="clickture",
        features=feature_rows([lite_array, dev_array], [lite_rows, dev_rows], lite_features_path),
        feature_ids=out_ids,
        keywords_csr=keywords,
        vocab_tsv_path=vocab_path,
        images=images,
        queries=queries,
        judgments=judgments,
        query_vocabulary=query_vocabulary,
        options=options,
        force=config.force,
        link_features=False,
        extra={
            "encoded": record,
            "clickture": {
                "id_space": {"lite": {"offset": 0}, "dev": {"offset": DEV_ID_OFFSET}},
                "grades": {"Excellent": 3, "Good": 2, "Bad": 0},
                "dev_split": {
                    "val_fraction": config.val_fraction,
                    "seed": config.split_seed,
                    "rule": "dev queries ordered by sha256('<seed>\\0<normalised query>'); the "
                    "first round(val_fraction * n) are val",
                },
                "images_without_keywords": without_keywords,
            },
            "skipped": skipped,
            "notes": notes,
        },
    )
    info = json.loads((path / "prepared.json").read_text(encoding="utf-8"))
    return PrepareResult(
        path, "clickture", info["counts"], info["features"]["stored"], skipped, tuple(notes)
    )
