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
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse

from ..checks import check_config, option
from ..datadir import dataset_dir
from ..errors import InputError
from .clickture_files import (
    TsvLayout,
    column_hint,
    line_examples,
    load_key_map,
    map_keys,
    numpy_column,
    read_tsv,
)
from .common import (
    EXAMPLES,
    Missing,
    OnError,
    PrepareResult,
    Problems,
    encode_summary,
    encoded_keyword_rows,
    feature_geometry,
    feature_rows,
    force_option,
    min_query_count_option,
    missing_features,
    missing_option,
    on_error_option,
    open_features,
    shown,
    write_folder,
)
from .format import FILE_NAME, SPLITS, read_keyword_vocabulary, unique_ids
from .queries import (
    QueryVocabulary,
    fit_query_vocabulary,
    query_analyzer,
    vocabulary_report,
)
from .registry import FileInput, PrepareRecipe
from .writer import FeatureRows, check_output_folder

__all__ = [
    "CLICK_COLUMNS",
    "DATASET",
    "DEV_ID_OFFSET",
    "GRADES",
    "LABEL_COLUMNS",
    "ClicktureConfig",
    "TsvLayout",
    "TsvOptions",
    "config_from_options",
    "prepare_clickture",
    "split_dev_queries",
]

log = logging.getLogger(__name__)

CLICK_COLUMNS = ("query", "key", "clicks")
LABEL_COLUMNS = ("query", "key", "grade")
GRADES = {"excellent": 3, "good": 2, "bad": 0, "3": 3, "2": 2, "0": 0}
DEV_ID_OFFSET = 1_000_000_000  # dev image 48500 is img_id 1_000_048_500 in the prepared folder
_BATCH = 1 << 16  # click-log queries turned into Python strings at a time (a log has millions)


@dataclass(frozen=True)
class ClicktureConfig:
    """How `prepare_clickture` reads its inputs and splits the dev queries."""

    clicks_layout: TsvLayout = field(default_factory=lambda: TsvLayout(CLICK_COLUMNS))
    labels_layout: TsvLayout = field(default_factory=lambda: TsvLayout(LABEL_COLUMNS))
    val_fraction: float = option(
        0.5, "Share of the dev queries that go to val.", low=0, high=1, above=True, below=True
    )  # the rest are test
    split_seed: int = option(0, "Seed of the val/test split of the dev queries.")
    min_query_count: int = min_query_count_option()
    # bad lines, unknown keys or grades, train/dev query overlap
    on_error: OnError = on_error_option()
    missing: Missing = missing_option()
    force: bool = force_option()

    def __post_init__(self) -> None:
        self.clicks_layout.check(CLICK_COLUMNS, "--clicks-columns")
        self.labels_layout.check(LABEL_COLUMNS, "--labels-columns")
        check_config(self)


@dataclass(frozen=True)
class TsvOptions:
    """The two TSV layouts of `ClicktureConfig` as the command line spells them: columns as
    one comma-separated text each, the headers as switches, one encoding for both."""

    clicks_columns: str = option(
        ",".join(CLICK_COLUMNS), "The click log's columns in file order; '-' skips a column."
    )
    labels_columns: str = option(
        ",".join(LABEL_COLUMNS), "The dev judgments' columns in file order; '-' skips a column."
    )
    clicks_header: bool = option(False, "The click log's first line is a header.")
    labels_header: bool = option(False, "The dev judgments' first line is a header.")
    encoding: str = option("utf-8", "Text encoding of both TSV files.")

    def __post_init__(self) -> None:
        check_config(self)

    def layouts(self) -> tuple[TsvLayout, TsvLayout]:
        """The click log's layout and the dev judgments'."""

        def columns(text: str) -> tuple[str, ...]:
            return tuple(part.strip() for part in text.split(","))

        return (
            TsvLayout(columns(self.clicks_columns), self.clicks_header, self.encoding),
            TsvLayout(columns(self.labels_columns), self.labels_header, self.encoding),
        )


def config_from_options(values: dict[str, Any]) -> ClicktureConfig:
    """The config from the values of the command's options (`TsvOptions`' fields and
    `ClicktureConfig`'s own), by name."""
    names = {f.name for f in fields(TsvOptions)}
    clicks_layout, labels_layout = TsvOptions(
        **{name: values.pop(name) for name in names if name in values}
    ).layouts()
    return ClicktureConfig(clicks_layout=clicks_layout, labels_layout=labels_layout, **values)


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
    codes = numpy_column(stripped.indices).astype(np.int64)[numpy_column(raw.indices)]
    texts = stripped.dictionary
    empty_code = numpy_column(pc.equal(texts, ""))
    empty = empty_code[codes]
    if empty.any():
        lines = numpy_column(table["line"])[empty].tolist()
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
        counts = numpy_column(pc.cast(table["clicks"], pa.int64()))
        whole = counts >= 0
    except pa.ArrowInvalid:
        text = pc.utf8_trim_whitespace(table["clicks"])
        whole = numpy_column(pc.match_substring_regex(text, r"^[0-9]{1,18}$"))
        counts = np.zeros(table.num_rows, dtype=np.int64)
        counts[whole] = numpy_column(pc.cast(text.filter(pa.array(whole)), pa.int64()))
    if not whole.all():
        examples = line_examples(table, ~whole, "clicks")
        problems.report(
            "click log: click counts that are not whole numbers >= 0",
            int((~whole).sum()),
            examples,
            f"{int((~whole).sum()):,} lines of {path} have a click count that is not a whole "
            f"number >= 0: {shown(examples, int((~whole).sum()))}.",
            hint=column_hint(table, layout, "clicks", "--clicks-columns"),
        )
        table, counts = table.filter(pa.array(whole)), counts[whole]
    return table, counts


def _clicks(
    path: Path, key_map: pd.Series, map_path: Path, config: ClicktureConfig, problems: Problems
) -> tuple[_Judged, list[str]]:
    layout = config.clicks_layout
    table = read_tsv(path, layout, "click log", "--clicks-columns", problems)
    table, clicks = _click_counts(table, path, layout, problems)
    table = table.append_column("count", pa.array(clicks))
    table = map_keys(table, key_map, path, map_path, problems, DEV_ID_OFFSET)
    table, query, texts = _queries(table, path, "click log", problems)
    clicks, img_id = numpy_column(table["count"]), numpy_column(table["img_id"])
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
    table = read_tsv(path, config.labels_layout, "dev judgments", "--labels-columns", problems)
    grade = pc.utf8_lower(pc.utf8_trim_whitespace(table["grade"]))
    label = np.full(table.num_rows, -1, dtype=np.int64)
    for name, value in GRADES.items():
        label[numpy_column(pc.equal(grade, name))] = value
    unknown = label < 0
    if unknown.any():
        examples = line_examples(table, unknown, "grade")
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
    table = map_keys(table, key_map, path, map_path, problems, DEV_ID_OFFSET)
    table, query, texts = _queries(table, path, "dev judgments", problems)
    label, img_id = numpy_column(table["label"]), numpy_column(table["img_id"])
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
        examples = line_examples(table, rows, "query")
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


def _read_as(texts: Sequence[str]) -> list[str]:
    """Each query as the model reads it: its analyzer tokens (lower-cased, punctuation and stop
    words dropped, order and repeats kept), joined by one space. Tokens hold no space, so two
    queries give the same string exactly when they give the same tokens."""
    analyzer = query_analyzer()
    return list(map(" ".join, map(analyzer, texts)))


def _without_shared_queries(
    train: _Judged, dev: _Judged, dev_split: np.ndarray, clicks: Path, problems: Problems
) -> _Judged:
    """`train` less the queries the model cannot tell from a dev query (a problem: evaluating
    on queries seen in training inflates the scores). Queries are compared as the model reads
    them, so "dog!", "The DOG" and "dog" are one query."""
    dev_read = pa.array(_read_as(dev.texts.to_pylist()), pa.large_string())
    leaked = np.zeros(len(train.texts), dtype=bool)
    twin: dict[str, str] = {}  # a dev query's reading -> the first click-log query read alike
    for start in range(0, len(train.texts), _BATCH):
        texts = train.texts.slice(start, _BATCH).to_pylist()
        read = pa.array(_read_as(texts), pa.large_string())
        hits = np.flatnonzero(numpy_column(pc.is_in(read, value_set=dev_read)))
        leaked[start + hits] = True
        for i in hits.tolist():
            twin.setdefault(read[i].as_py(), texts[i])
    shared = numpy_column(pc.is_in(dev_read, value_set=pa.array(list(twin), pa.large_string())))
    if not shared.any():
        return train
    texts = dev.texts.filter(pa.array(shared)).to_pylist()
    readings = dev_read.filter(pa.array(shared)).to_pylist()
    splits, counts = np.unique(dev_split[shared], return_counts=True)
    where = ", ".join(f"{n:,} {s}" for s, n in zip(splits, counts, strict=True))
    pairs = [
        repr(t) if twin[r] == t else f"{t!r} (click log: {twin[r]!r})"
        for t, r in zip(texts, readings, strict=True)
    ]
    problems.report(
        "queries in both train and val/test",
        len(texts),
        texts[:EXAMPLES],
        f"{len(texts):,} dev queries ({where}) also appear in the click log {clicks}, compared "
        "as the model reads queries (lower-cased, punctuation and stop words dropped): "
        f"{shown(pairs, len(texts))}. Evaluating on queries the model was trained on inflates "
        "the scores.",
    )
    return train.keep(~leaked[train.query])


def _batches(texts: pa.Array, size: int = _BATCH) -> Iterator[str]:
    """The texts as Python strings, a slice at a time (a click log has millions)."""
    for start in range(0, len(texts), size):
        yield from texts.slice(start, size).to_pylist()


# -- the command, step by step -----------------------------------------------------------------
# A features file opened by common.open_features: (memmap, ids, path).
_Opened = tuple[np.ndarray, np.ndarray, Path]


@dataclass(frozen=True)
class _Paths:
    """Where `prepare_clickture` reads (in the order prepared.json's options record them) and
    where it writes."""

    clicks: Path
    dev_labels: Path
    features: Path
    feature_ids: Path
    dev_features: Path
    dev_feature_ids: Path
    id_map: Path
    dev_id_map: Path
    encoded: Path
    out: Path

    def options(self) -> dict[str, str]:
        """Every input, resolved, for prepared.json."""
        return {
            name: str(getattr(self, name).resolve())
            for name in self.__dataclass_fields__
            if name != "out"
        }

    def opened_features(self) -> tuple[_Opened, _Opened]:
        """The Lite images' and the dev images' features with their ids, memory-mapped."""
        lite = open_features(self.features, self.feature_ids)
        return lite, open_features(self.dev_features, self.dev_feature_ids)


@dataclass(frozen=True)
class _Rows:
    """The prepared folder's rows: features and keywords, Lite then dev, each in the user's row
    order."""

    features: FeatureRows
    ids: np.ndarray  # (N,) int64: prepared img_ids (dev ones offset)
    keywords: scipy.sparse.csr_matrix  # (N, V) int32
    without_keywords: int


def _read_judgments(
    paths: _Paths,
    key_maps: tuple[pd.Series, pd.Series],
    config: ClicktureConfig,
    problems: Problems,
) -> tuple[_Judged, _Judged, list[str]]:
    """The click log (train) and the dev judgments, each through its id map (`key_maps`: Lite's
    and dev's, image key -> img_id)."""
    train, notes = _clicks(paths.clicks, key_maps[0], paths.id_map, config, problems)
    dev, dev_notes = _dev_labels(paths.dev_labels, key_maps[1], paths.dev_id_map, config, problems)
    return train, dev, notes + dev_notes


def _keys_of(key_map: pd.Series, img_ids: np.ndarray) -> list[str | None]:
    """The image key of each of `img_ids` (the first key the map gives it; None if none)."""
    by_id = pd.Series(key_map.index.astype(str), index=key_map.to_numpy())
    by_id = by_id[~by_id.index.duplicated(keep="first")]
    found = by_id.reindex(img_ids)
    return [None if pd.isna(key) else str(key) for key in found.tolist()]


def _query_tables(
    train: _Judged, dev: _Judged, dev_split: np.ndarray
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """queries.parquet (train in click-log order, then dev in judgment order) and
    judgments.parquet (dev images in their own id range)."""
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
    judgments = pd.DataFrame(
        {
            "query_id": np.concatenate([train.query, n_train + dev.query]),
            "img_id": np.concatenate([train.img_id, dev.img_id + DEV_ID_OFFSET]),
            "label": np.concatenate([train.label, dev.label]).astype(np.int32),
        }
    )
    return queries, judgments


def _image_table(
    train: _Judged,
    dev: _Judged,
    dev_split: np.ndarray,
    key_maps: tuple[pd.Series, pd.Series],
    notes: list[str],
) -> pd.DataFrame:
    """images.parquet: the clicked Lite images (train), the judged dev images (test where any
    test query judges them, else val), each with its image key as its file name."""
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
    return pd.DataFrame(
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
            FILE_NAME: _keys_of(key_maps[0], lite_ids) + _keys_of(key_maps[1], dev_ids),
        }
    )


def _rows(
    lite: tuple[np.ndarray, np.ndarray, Path],
    dev: tuple[np.ndarray, np.ndarray, Path],
    train: _Judged,
    judged: _Judged,
    encoded: Path,
    notes: list[str],
) -> _Rows:
    """The feature rows of the judged images (Lite, then dev) and their keyword rows (over the
    words of the encode output's vocab.tsv)."""
    n_words = len(read_keyword_vocabulary(encoded / "vocab.tsv"))
    (lite_array, lite_have, lite_path), (dev_array, dev_have, _) = lite, dev
    lite_rows = np.flatnonzero(np.isin(lite_have, unique_ids(train.img_id)))
    dev_rows = np.flatnonzero(np.isin(dev_have, unique_ids(judged.img_id)))
    keywords = scipy.sparse.vstack(
        [
            encoded_keyword_rows(encoded, "clickture", "lite", lite_have[lite_rows], n_words),
            encoded_keyword_rows(encoded, "clickture", "dev", dev_have[dev_rows], n_words),
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
    return _Rows(
        features=feature_rows([lite_array, dev_array], [lite_rows, dev_rows], lite_path),
        ids=np.concatenate([lite_have[lite_rows], dev_have[dev_rows] + DEV_ID_OFFSET]),
        keywords=keywords,
        without_keywords=without_keywords,
    )


def _vocabularies(
    train: _Judged, queries: pd.DataFrame, rows: _Rows, config: ClicktureConfig
) -> tuple[QueryVocabulary, dict[str, Any]]:
    """The query vocabulary (fitted on the click log's queries) and the report of what the
    vocabularies keep and drop (`vocabulary_report`)."""
    query_vocabulary = fit_query_vocabulary(_batches(train.texts), config.min_query_count)
    report = vocabulary_report(
        query_vocabulary, queries, rows.keywords.shape[0], rows.without_keywords
    )
    return query_vocabulary, report


def _details(config: ClicktureConfig, without_keywords: int) -> dict[str, Any]:
    """What prepared.json records of Clickture: the id space, the grades, the dev split."""
    return {
        "id_space": {"lite": {"offset": 0}, "dev": {"offset": DEV_ID_OFFSET}},
        "grades": {"Excellent": 3, "Good": 2, "Bad": 0},
        "dev_split": {
            "val_fraction": config.val_fraction,
            "seed": config.split_seed,
            "rule": "dev queries ordered by sha256('<seed>\\0<normalised query>'); the "
            "first round(val_fraction * n) are val",
        },
        "images_without_keywords": without_keywords,
    }


def _geometry(
    lite: tuple[np.ndarray, np.ndarray, Path], dev: tuple[np.ndarray, np.ndarray, Path]
) -> dict[str, int] | None:
    """How the pictures were cut for the features, when both files were extracted alike by
    `amc-data features` (see `feature_geometry`)."""
    lite_geometry = feature_geometry(lite[2], lite[0])
    return lite_geometry if lite_geometry == feature_geometry(dev[2], dev[0]) else None


def _drop_without_features(
    train: _Judged,
    judged: _Judged,
    lite_ids: np.ndarray,
    dev_ids: np.ndarray,
    paths: _Paths,
    config: ClicktureConfig,
) -> tuple[_Judged, _Judged, dict[str, dict[str, Any]]]:
    """Images without features: stop, or drop them with their judgments (and record them)."""
    skipped: dict[str, dict[str, Any]] = {}
    train = _with_features(
        train, lite_ids, "Lite images of the click log", paths.feature_ids, config.missing, skipped
    )
    judged = _with_features(
        judged,
        dev_ids,
        "dev images of the judgments",
        paths.dev_feature_ids,
        config.missing,
        skipped,
    )
    return train, judged, skipped


def _split_dev(
    train: _Judged, judged: _Judged, paths: _Paths, config: ClicktureConfig, problems: Problems
) -> tuple[_Judged, np.ndarray]:
    """Each dev query's split (val or test, by query), and `train` less the queries a dev query
    shares (a leak); both must keep some judgments."""
    dev_split = split_dev_queries(judged.texts, config.val_fraction, config.split_seed)
    train = _without_shared_queries(train, judged, dev_split, paths.clicks, problems)
    if len(train) == 0:
        raise InputError(f"No training judgment is left from {paths.clicks}.")
    if len(judged) == 0:
        raise InputError(f"No dev judgment is left from {paths.dev_labels}.")
    return train, dev_split


# long: the command's steps in order, one call each, with the docstring of its inputs
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
    paths = _Paths(
        clicks=Path(clicks),
        dev_labels=Path(dev_labels),
        features=Path(features),
        feature_ids=Path(feature_ids),
        dev_features=Path(dev_features),
        dev_feature_ids=Path(dev_feature_ids),
        id_map=Path(id_map) if id_map is not None else folder / "img_id_map.pkl",
        dev_id_map=Path(dev_id_map) if dev_id_map is not None else folder / "img_id_map_dev.pkl",
        encoded=Path(encoded) if encoded is not None else folder / "encoded",
        out=Path(out) if out is not None else folder / "prepared",
    )
    check_output_folder(paths.out, config.force)  # before the long work, not after it
    problems = Problems(config.on_error)
    record = encode_summary(paths.encoded, "clickture")
    lite, dev = paths.opened_features()
    key_maps = (load_key_map(paths.id_map), load_key_map(paths.dev_id_map))
    train, judged, notes = _read_judgments(paths, key_maps, config, problems)

    train, judged, skipped = _drop_without_features(train, judged, lite[1], dev[1], paths, config)
    train, dev_split = _split_dev(train, judged, paths, config, problems)

    queries, judgments = _query_tables(train, judged, dev_split)
    images = _image_table(train, judged, dev_split, key_maps, notes)
    rows = _rows(lite, dev, train, judged, paths.encoded, notes)
    query_vocabulary, vocabulary = _vocabularies(train, queries, rows, config)
    written = write_folder(
        paths.out,
        "clickture",
        features=rows.features,
        feature_ids=rows.ids,
        keywords=rows.keywords,
        vocab_path=paths.encoded / "vocab.tsv",
        images=images,
        queries=queries,
        judgments=judgments,
        query_vocabulary=query_vocabulary,
        options={**asdict(config), **paths.options()},
        force=config.force,
        link_features=False,
        encoded=record,
        details={**_details(config, rows.without_keywords), "vocabulary": vocabulary},
        skipped={**problems.recorded, **skipped},
        notes=notes,
        geometry=_geometry(lite, dev),
    )
    return replace(written, vocabulary=vocabulary)


DATASET = PrepareRecipe(
    name="clickture",
    config=ClicktureConfig,
    prepare=prepare_clickture,
    help="""Clickture: train on the Lite click log (label = clicks), validate and test on the dev
    judgments (Excellent 3, Good 2, Bad 0), dev queries split val/test by a seeded hash.

    --features/--feature-ids are the Lite images', --dev-features/--dev-feature-ids the dev
    images', each with the ids of the id maps. Dev images get img_id 1,000,000,000 + id in the
    prepared folder (Lite and dev ids overlap); images.parquet keeps source and source_id.
    """,
    options=(
        FileInput(
            "clicks",
            "The click log (Clickture-Lite): TSV of query, image key, click count.",
            required=True,
        ),
        FileInput(
            "dev_labels",
            "The dev judgments: TSV of query, image key, Excellent/Good/Bad.",
            required=True,
        ),
        FileInput("dev_features", "Features of the dev images.", required=True),
        FileInput("dev_feature_ids", "Their image ids.", required=True),
        FileInput(
            "id_map",
            "Lite key -> id: img_id_map.pkl or a key<TAB>id TSV "
            "(default <data-dir>/clickture/img_id_map.pkl).",
        ),
        FileInput("dev_id_map", "Dev key -> id (default <data-dir>/clickture/img_id_map_dev.pkl)."),
        "clicks_columns",
        "labels_columns",
        "clicks_header",
        "labels_header",
        "encoding",
        "val_fraction",
        "split_seed",
    ),
    settings=TsvOptions,
    make_config=config_from_options,
)
