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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import scipy.sparse

from ..archive import load_id_map
from ..datadir import dataset_dir
from ..dataset import load_encoded
from ..errors import ConfigError, InputError
from .common import (
    EXAMPLES,
    Missing,
    OnError,
    PrepareResult,
    Problems,
    feature_rows,
    missing_features,
    open_features,
    shown,
)
from .format import read_keyword_vocabulary, write_prepared
from .queries import fit_query_vocabulary

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
def _read_tsv(
    path: Path, layout: TsvLayout, what: str, option: str, problems: Problems
) -> pd.DataFrame:
    """The named columns of a TSV file as strings, with `line` (1-based line number). Lines with
    another number of fields are problems."""
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
                use_threads=False,
            ),
            parse_options=pacsv.ParseOptions(
                delimiter="\t",
                quote_char=False,
                escape_char=False,
                invalid_row_handler=invalid,
                ignore_empty_lines=False,  # kept as rows (dropped below) so lines can be counted
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
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
    frame = table.to_pandas()
    # Line numbers: the rows (blank lines included) fill the lines the invalid ones left.
    invalid_lines = np.array(sorted(n for n, _, _ in bad if n is not None), dtype=np.int64)
    first = 1 + int(layout.header)
    lines = np.arange(first, first + len(frame) + invalid_lines.size, dtype=np.int64)
    frame["line"] = np.setdiff1d(lines, invalid_lines, assume_unique=True)[: len(frame)]
    blank = np.logical_and.reduce([(frame[c].fillna("") == "").to_numpy() for c in wanted])
    frame = frame.loc[~blank].reset_index(drop=True)
    examples = [f"line {n}: {text[:60]!r} ({k} fields)" for n, text, k in bad]
    problems.report(
        f"{what}: lines with {len(layout.columns)} fields expected",
        len(bad),
        examples,
        f"{len(bad):,} lines of {path} do not have {len(layout.columns)} tab-separated fields "
        f"({', '.join(layout.columns)}): {shown(examples, len(bad))}. If the file has other "
        f"columns, describe them with {option}.",
    )
    if frame.empty:
        raise InputError(f"The {what} {path} holds no line with {', '.join(layout.columns)}.")
    return frame


def _column_hint(frame: pd.DataFrame, layout: TsvLayout, numeric: str, option: str) -> str:
    """Where the numbers seem to be, when not in the column named `numeric`."""
    head = frame.head(200)
    for name in head.columns:
        if name not in (numeric, "line") and head[name].str.fullmatch(r"\d+").all():
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
    frame: pd.DataFrame, key_map: pd.Series, path: Path, map_path: Path, problems: Problems
) -> pd.DataFrame:
    codes, uniques = pd.factorize(frame["key"])
    mapped = key_map.reindex(uniques)
    ids = mapped.to_numpy(dtype=np.float64)[codes]
    unknown = np.isnan(ids)
    if unknown.any():
        rows = frame.loc[unknown]
        examples = [
            f"line {n}: {k!r}"
            for n, k in zip(rows["line"][:EXAMPLES], rows["key"][:EXAMPLES], strict=True)
        ]
        problems.report(
            f"{path.name}: unknown image keys",
            int(unknown.sum()),
            examples,
            f"{int(unknown.sum()):,} lines of {path} name an image key that {map_path} does not "
            f"map ({int(np.isnan(mapped.to_numpy(np.float64)).sum()):,} distinct keys): "
            f"{shown(examples, int(unknown.sum()))}. Check that the id map belongs to this file "
            "(img_id_map.pkl: Lite; img_id_map_dev.pkl: dev).",
        )
    frame = frame.loc[~unknown].copy()
    frame["img_id"] = ids[~unknown].astype(np.int64)
    return frame


def normalize_query(texts: pd.Series) -> pd.Series:
    """How queries are compared between train and dev: stripped, lower-case, runs of white
    space made one space."""
    return texts.str.strip().str.lower().str.replace(r"\s+", " ", regex=True)


def split_dev_queries(queries: pd.Series, val_fraction: float, seed: int) -> np.ndarray:
    """`"val"` or `"test"` for each distinct dev query: the queries are ordered by the sha256 of
    `"<seed>\\0<normalised query>"` and the first `round(val_fraction * n)` go to val. The
    split depends on the query texts alone (not on file order), and a seed gives another."""
    normalized = normalize_query(queries)
    keys = [hashlib.sha256(f"{seed}\0{q}".encode()).digest() for q in normalized]
    order = sorted(range(len(keys)), key=keys.__getitem__)
    split = np.full(len(keys), "test", dtype=object)
    split[order[: round(val_fraction * len(keys))]] = "val"
    return split.astype(str)


# -- the two inputs ----------------------------------------------------------------------------
def _without_empty_queries(
    frame: pd.DataFrame, path: Path, what: str, problems: Problems
) -> pd.DataFrame:
    """`frame` with its queries stripped, less the lines whose query is empty (a problem)."""
    frame = frame.assign(query=frame["query"].str.strip())
    empty = (frame["query"] == "").to_numpy()
    lines = frame.loc[empty, "line"].tolist()
    problems.report(
        f"{what}: empty queries",
        len(lines),
        lines[:EXAMPLES],
        f"{len(lines):,} lines of {path} have an empty query (lines {shown(lines, len(lines))}).",
    )
    return frame.loc[~empty]


def _clicks(
    path: Path, key_map: pd.Series, map_path: Path, config: ClicktureConfig, problems: Problems
) -> tuple[pd.DataFrame, list[str]]:
    layout = config.clicks_layout
    frame = _read_tsv(path, layout, "click log", "--clicks-columns", problems)
    clicks = pd.to_numeric(frame["clicks"], errors="coerce")
    bad = (clicks.isna() | (clicks < 0) | (clicks != clicks.round())).to_numpy()
    if bad.any():
        rows = frame.loc[bad]
        examples = [
            f"line {n}: {c!r}"
            for n, c in zip(rows["line"][:EXAMPLES], rows["clicks"][:EXAMPLES], strict=True)
        ]
        problems.report(
            "click log: click counts that are not whole numbers >= 0",
            int(bad.sum()),
            examples,
            f"{int(bad.sum()):,} lines of {path} have a click count that is not a whole number "
            f">= 0: {shown(examples, int(bad.sum()))}.",
            hint=_column_hint(frame, layout, "clicks", "--clicks-columns"),
        )
    frame = frame.loc[~bad].assign(clicks=clicks[~bad].astype(np.int64))
    frame = _without_empty_queries(frame, path, "click log", problems)
    frame = _map_keys(frame, key_map, path, map_path, problems)
    notes = []
    grouped = frame.groupby(["query", "img_id"], sort=False, as_index=False).agg(
        clicks=("clicks", "sum"), line=("line", "first")
    )
    if len(grouped) < len(frame):
        notes.append(
            f"{len(frame) - len(grouped):,} click-log lines repeat a (query, image) pair; their "
            "clicks were added up."
        )
    return grouped, notes


def _dev_labels(
    path: Path, key_map: pd.Series, map_path: Path, config: ClicktureConfig, problems: Problems
) -> tuple[pd.DataFrame, list[str]]:
    frame = _read_tsv(path, config.labels_layout, "dev judgments", "--labels-columns", problems)
    grade = frame["grade"].str.strip().str.lower().map(GRADES)
    unknown = grade.isna().to_numpy()
    if unknown.any():
        rows = frame.loc[unknown]
        examples = [
            f"line {n}: {g!r}"
            for n, g in zip(rows["line"][:EXAMPLES], rows["grade"][:EXAMPLES], strict=True)
        ]
        problems.report(
            "dev judgments: unknown grades",
            int(unknown.sum()),
            examples,
            f"{int(unknown.sum()):,} lines of {path} have a grade other than Excellent, Good or "
            f"Bad: {shown(examples, int(unknown.sum()))}.",
        )
    frame = frame.loc[~unknown].assign(label=grade[~unknown].astype(np.int32))
    frame = _without_empty_queries(frame, path, "dev judgments", problems)
    frame = _map_keys(frame, key_map, path, map_path, problems)
    notes = []
    labels = frame.groupby(["query", "img_id"], sort=False)["label"]
    conflicting = (labels.transform("nunique") > 1).to_numpy()
    if conflicting.any():
        rows = frame.loc[conflicting]
        examples = [
            f"line {n}: {q!r}"
            for n, q in zip(rows["line"][:EXAMPLES], rows["query"][:EXAMPLES], strict=True)
        ]
        problems.report(
            "dev judgments: conflicting grades",
            int(conflicting.sum()),
            examples,
            f"{int(conflicting.sum()):,} lines of {path} grade a (query, image) pair that another "
            f"line grades differently: {shown(examples, int(conflicting.sum()))}.",
        )
        frame = frame.loc[~conflicting]
    deduped = frame.drop_duplicates(["query", "img_id"])
    if len(deduped) < len(frame):
        notes.append(f"{len(frame) - len(deduped):,} dev lines repeat a judgment; kept once.")
    return deduped, notes


# -- keywords and features ---------------------------------------------------------------------
def _encode_record(encoded: Path) -> dict[str, Any]:
    path = encoded / "encode.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(
            f"{path} not found: the keywords come from the encode output. Run `amc-data encode "
            "clickture` first (or pass --encoded with its folder)."
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"{path} is unreadable ({exc}). Run `amc-data encode clickture --force`."
        ) from exc
    if manifest.get("dataset") != "clickture":
        raise InputError(
            f"{encoded} holds an encoding of {manifest.get('dataset')!r}, not clickture."
        )
    return {
        "path": str(encoded),
        "fingerprint": manifest.get("fingerprint", {}),
        "encode_json_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "vocabulary_size": manifest.get("vocabulary_size"),
        "counts": manifest.get("counts", {}),
    }


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
    frame: pd.DataFrame,
    have: np.ndarray,
    what: str,
    ids_path: Path,
    missing: Missing,
    skipped: dict[str, dict[str, Any]],
) -> pd.DataFrame:
    """`frame` less the judgments of images without features (or an `InputError`)."""
    wanted = np.unique(frame["img_id"].to_numpy())
    present = missing_features(wanted, have, missing, what, ids_path)
    if present.all():
        return frame
    absent = wanted[~present]
    skipped[f"{what} without features"] = {
        "count": int(absent.size),
        "examples": absent[:EXAMPLES].tolist(),
    }
    return frame.loc[~frame["img_id"].isin(absent)]


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
    record = _encode_record(encoded_dir)
    lite_array, lite_have, lite_features_path = open_features(features, feature_ids)
    dev_array, dev_have, _ = open_features(dev_features, dev_feature_ids)
    train, notes = _clicks(
        clicks_path, _load_key_map(lite_map_path), lite_map_path, config, problems
    )
    dev, dev_notes = _dev_labels(
        labels_path, _load_key_map(dev_map_path), dev_map_path, config, problems
    )
    notes += dev_notes
    for ids, name in ((train["img_id"], lite_map_path), (dev["img_id"], dev_map_path)):
        if len(ids) and int(ids.max()) >= DEV_ID_OFFSET:
            raise InputError(
                f"{name} maps an image to id {int(ids.max()):,}, but the prepared folder puts "
                f"dev images at ids from {DEV_ID_OFFSET:,} up, so ids must stay below that. "
                "Check the id map."
            )

    # Images without features: stop, or drop them with their judgments.
    skipped: dict[str, dict[str, Any]] = {}
    train = _with_features(
        train, lite_have, "Lite images of the click log", Path(feature_ids), config.missing, skipped
    )
    dev = _with_features(
        dev, dev_have, "dev images of the judgments", Path(dev_feature_ids), config.missing, skipped
    )

    # Dev queries: val or test by query; a dev query that is also a train query is a leak.
    dev_queries = pd.Series(dev["query"].unique())
    dev_split = pd.Series(
        split_dev_queries(dev_queries, config.val_fraction, config.split_seed),
        index=dev_queries.to_numpy(),
    )
    train_normalized = normalize_query(train["query"])
    dev_normalized = pd.Series(
        normalize_query(dev_queries).to_numpy(), index=dev_queries.to_numpy()
    )
    shared = dev_normalized[dev_normalized.isin(set(train_normalized.unique()))]
    if len(shared):
        by_split = dev_split.loc[shared.index].value_counts().to_dict()
        where = ", ".join(f"{n:,} {s}" for s, n in sorted(by_split.items()))
        problems.report(
            "queries in both train and val/test",
            len(shared),
            shared.index[:EXAMPLES].tolist(),
            f"{len(shared):,} dev queries ({where}) also appear in the click log "
            f"{clicks_path} (compared lower-cased, spaces collapsed): "
            f"{shown([repr(q) for q in shared.index[:EXAMPLES]], len(shared))}. Evaluating on "
            "queries the model was trained on inflates the scores.",
        )
        train = train.loc[~train_normalized.isin(set(shared.to_numpy())).to_numpy()]
    if train.empty:
        raise InputError(f"No training judgment is left from {clicks_path}.")
    if dev.empty:
        raise InputError(f"No dev judgment is left from {labels_path}.")

    # Queries: train in click-log order, then dev in judgment order.
    train_codes, train_texts = pd.factorize(train["query"])
    dev_codes, dev_texts = pd.factorize(dev["query"])
    n_train = len(train_texts)
    queries = pd.DataFrame(
        {
            "query_id": np.arange(n_train + len(dev_texts), dtype=np.int64),
            "query": np.concatenate(
                [np.asarray(train_texts, dtype=object), np.asarray(dev_texts, dtype=object)]
            ),
            "split": np.concatenate(
                [
                    np.full(n_train, "train", dtype=object),
                    dev_split.loc[np.asarray(dev_texts, dtype=object)].to_numpy(object),
                ]
            ),
        }
    )
    dev_img = dev["img_id"].to_numpy(np.int64) + DEV_ID_OFFSET
    judgments = pd.DataFrame(
        {
            "query_id": np.concatenate([train_codes, n_train + dev_codes]).astype(np.int64),
            "img_id": np.concatenate([train["img_id"].to_numpy(np.int64), dev_img]),
            "label": np.concatenate([train["clicks"].to_numpy(), dev["label"].to_numpy()]).astype(
                np.int32
            ),
        }
    )

    # Images: the clicked Lite images (train), the judged dev images (test where any test
    # query judges them, else val).
    lite_ids = np.unique(train["img_id"].to_numpy(np.int64))
    dev_ids = np.unique(dev["img_id"].to_numpy(np.int64))
    judged_in = queries["split"].to_numpy()[n_train + dev_codes]  # each dev judgment's split
    judged_by_test = np.unique(dev_img[judged_in == "test"])
    dev_image_split = np.where(np.isin(dev_ids + DEV_ID_OFFSET, judged_by_test), "test", "val")
    both = int(np.isin(np.unique(dev_img[judged_in == "val"]), judged_by_test).sum())
    if both:
        notes.append(
            f"{both:,} dev images are judged by both val and test queries; their split is test."
        )
    images = pd.DataFrame(
        {
            "img_id": np.concatenate([lite_ids, dev_ids + DEV_ID_OFFSET]),
            "split": np.concatenate(
                [np.full(lite_ids.size, "train", dtype=object), dev_image_split.astype(object)]
            ),
            "fold": np.int8(-1),
            "source": np.concatenate(
                [
                    np.full(lite_ids.size, "lite", dtype=object),
                    np.full(dev_ids.size, "dev", dtype=object),
                ]
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

    query_vocabulary = fit_query_vocabulary(
        queries.loc[queries["split"] == "train", "query"], config.min_query_count
    )
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
