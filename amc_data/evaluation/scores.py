"""Scores files: any ranker's output, read, checked and evaluated (as trec_eval is for TREC).

A scores file has one row per (query, candidate image): columns `query_id`, `img_id`, `score`
(higher ranks first) and `label` (graded relevance, 0 = not relevant), as Parquet or as
tab-separated text with a header line (optionally gzip-compressed, `.tsv.gz`). Extra columns
are ignored. Every malformed file gets one `InputError` that names the file, the row (the
1-based line of a TSV file, the 0-based row index of a Parquet file) and the fix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from collections.abc import Callable, Generator, Iterable, Iterator
from pathlib import Path
from typing import TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from amc_data.checks import whole_number
from amc_data.errors import InputError
from amc_data.prepare.format import MAX_EVAL_LABEL

from .metrics import NDCG_CUTOFFS, RankingMetrics, ranking_metrics
from .protocol import MAX_ROWS

COLUMNS = ("query_id", "img_id", "score", "label")
_PARQUET_MAGIC = b"PAR1"
_TSV_TYPES = {"score": pa.float64(), "label": pa.float64()}  # labels checked whole afterwards
# Files are read a block at a time and each block checked as it arrives, so a malformed row is
# found without holding what follows it; the checked rows are kept as four numpy columns.
_BLOCK_BYTES = 16 << 20  # of TSV text
_BATCH_ROWS = 1 << 20  # of a Parquet file

Source: TypeAlias = str | Path | pd.DataFrame
Locate: TypeAlias = Callable[[int], str]


@dataclasses.dataclass(frozen=True)
class _Checked:
    """The four validated columns of a scores table, as numpy arrays."""

    query_ids: np.ndarray  # (n,) int64, or object (strings)
    img_ids: np.ndarray  # (n,)
    scores: np.ndarray  # (n,) float64, finite
    labels: np.ndarray  # (n,) int64, >= 0


def _is_parquet(path: Path) -> bool:
    with open(path, "rb") as file:
        return file.read(4) == _PARQUET_MAGIC


def _physical_line(path: Path, nth_line: int) -> int:
    """The 1-based line number of the `nth_line`-th non-empty line (the CSV reader skips empty
    lines, so its row numbers need this to point at the line an editor shows). Reads lines one
    at a time: only as far as that line."""
    seen = 0
    with pa.input_stream(str(path), compression="detect") as stream:
        lines = io.BufferedReader(stream, buffer_size=1 << 20)
        for number, line in enumerate(lines, start=1):
            if line.rstrip(b"\r\n"):
                seen += 1
                if seen == nth_line:
                    return number
    return nth_line


def _tsv_locate(path: Path) -> Locate:
    # Data row i is non-empty line i + 2: the header is the first.
    return lambda row: f"line {_physical_line(path, row + 2)}"


class _TypeChange(Exception):
    """A TSV column's values changed kind after the first block (ids: numbers, then text)."""


def _tsv_batches(path: Path, types: dict[str, pa.DataType]) -> Iterator[pa.RecordBatch]:
    """The rows of a TSV scores file, a block at a time (memory bounded by the block, not the
    file), with the columns of `types` converted to those types (the others inferred from the
    first block)."""
    invalid: list[pacsv.InvalidRow] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        invalid.append(row)
        return "error"  # stop at the first one: it is reported below

    try:
        # Closed on every way out (the last block, a bad row, the caller stopping early): an
        # open reader's read-ahead thread could outlive the interpreter and abort the exit.
        with pacsv.open_csv(
            path,
            # Row numbers of bad rows are only known when one thread reads.
            read_options=pacsv.ReadOptions(use_threads=False, block_size=_BLOCK_BYTES),
            parse_options=pacsv.ParseOptions(delimiter="\t", invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(column_types=types),
        ) as reader:
            yield from _at_least_one(reader, reader.schema)
    except pa.ArrowInvalid as exc:
        if invalid:
            row = invalid[0]
            where = f"line {_physical_line(path, row.number)}" if row.number else "a row"
            raise InputError(
                f"{path}, {where}: expected {row.expected_columns} tab-separated fields, found "
                f"{row.actual_columns} ({row.text[:80]!r}). Give every row one value per header "
                "column, separated by tabs."
            ) from None
        if all(types.get(c) == pa.string() for c in COLUMNS):
            raise InputError(
                f"{path} is not a readable tab-separated scores file ({exc}). Write it with a "
                f"header line `{chr(9).join(COLUMNS)}` and one tab-separated row per pair."
            ) from exc
        raise _TypeChange from exc  # a value that is not a number, or ids that change kind


def _at_least_one(blocks: Iterable[pa.RecordBatch], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """`blocks`, or one empty block of `schema` when there are none (a file with no rows)."""
    empty = True
    for block in blocks:
        empty = False
        yield block
    if empty:
        yield pa.RecordBatch.from_pylist([], schema=schema)


def _parquet_batches(path: Path) -> Iterator[pa.RecordBatch]:
    try:
        with pq.ParquetFile(path) as file:  # closed however the reading ends, as a TSV reader
            names = file.schema_arrow.names
            wanted = [c for c in COLUMNS if c in names]
            schema = pa.schema([file.schema_arrow.field(c) for c in wanted]) if wanted else None
            if schema is None:  # nothing to read: an empty block that names what the file has
                yield pa.RecordBatch.from_pylist([], schema=file.schema_arrow)
                return
            batches = file.iter_batches(batch_size=_BATCH_ROWS, columns=wanted)
            yield from _at_least_one(batches, schema)
    except (pa.ArrowException, OSError) as exc:
        raise InputError(
            f"{path} starts like a Parquet file but cannot be read ({exc}); write it again."
        ) from exc


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _plain(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A dictionary-encoded column (what pandas writes for a categorical one) as its values;
    any other column as it is."""
    if pa.types.is_dictionary(column.type):
        return column.cast(column.type.value_type)
    return column


def _decimal_floats(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Decimals as the nearest float64s, through their text: a direct cast scales by a power of
    ten in floating point, and 0.6 becomes 0.6000000000000001."""
    return column.cast(pa.string()).cast(pa.float64())


def _is_text(kind: pa.DataType) -> bool:
    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _numbers(
    column: pa.ChunkedArray, name: str, what: str, source: str, locate: Locate
) -> np.ndarray:
    """A column as float64, with the first missing or non-numeric value named."""
    column = _plain(column)
    if column.null_count:
        row = _first(column.is_null().to_numpy(zero_copy_only=False))
        raise InputError(
            f"{source}, {locate(row)}: {name} is missing (empty, NA or NaN). Give every row {what}."
        )
    kind = column.type
    if pa.types.is_decimal(kind):  # what pandas writes for a column of decimal.Decimal
        column, kind = _decimal_floats(column), pa.float64()
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return column.to_numpy().astype(np.float64, copy=False)
    if _is_text(kind):
        text = pd.Series(column.to_numpy(zero_copy_only=False), dtype=object)
        values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
        bad = np.isnan(values)
        if bad.any():
            row = _first(bad)
            raise InputError(
                f"{source}, {locate(row)}: {name} is {text.iloc[row]!r}, not a number. Give every "
                f"row {what}."
            )
        return values
    raise InputError(f"{source}: column {name} holds {kind}; it must hold numbers ({what}).")


def _ids(column: pa.ChunkedArray, name: str, source: str, locate: Locate) -> np.ndarray:
    column = _plain(column)
    if column.null_count:
        row = _first(column.is_null().to_numpy(zero_copy_only=False))
        raise InputError(f"{source}, {locate(row)}: {name} is missing. Give every row its {name}.")
    kind = column.type
    if pa.types.is_integer(kind):
        return column.to_numpy().astype(np.int64, copy=False)
    if _is_text(kind):
        return column.to_numpy(zero_copy_only=False)
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        values = (_decimal_floats(column) if pa.types.is_decimal(kind) else column).to_numpy()
        whole = np.isfinite(values) & (values == np.floor(values))
        if whole.all():
            return values.astype(np.int64)
        row = _first(~whole)
        raise InputError(
            f"{source}, {locate(row)}: {name} is {values[row]}; ids must be whole numbers or text."
        )
    raise InputError(f"{source}: column {name} holds {kind}; ids must be integers or text.")


def _check_names(names: list[str], source: str) -> None:
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        found = ", ".join(names) or "none"
        hint = (
            " The header looks comma-separated: scores text files must be tab-separated."
            if len(names) == 1 and "," in names[0]
            else ""
        )
        raise InputError(
            f"{source} lacks the column(s) {', '.join(missing)} (found: {found}).{hint} A scores "
            f"file needs the columns {', '.join(COLUMNS)}, named in its header."
        )


def _check_block(block: pa.RecordBatch | pa.Table, source: str, locate: Locate) -> _Checked:
    """One block of rows checked value by value (`locate` numbers rows within the block)."""
    query_ids = _ids(block["query_id"], "query_id", source, locate)
    img_ids = _ids(block["img_id"], "img_id", source, locate)
    scores = _numbers(block["score"], "score", "a finite number as its score", source, locate)
    infinite = ~np.isfinite(scores)
    if infinite.any():
        row = _first(infinite)
        raise InputError(
            f"{source}, {locate(row)}: score is {scores[row]}; every score must be a finite "
            "number. Clip or replace infinite scores."
        )
    labels = _numbers(
        block["label"], "label", "a whole-number label (0 = not relevant)", source, locate
    )
    whole = labels == np.floor(labels)
    if not whole.all():
        row = _first(~whole)
        raise InputError(
            f"{source}, {locate(row)}: label is {labels[row]}, not a whole number. Labels are "
            "graded relevance (Clickture: Excellent 3, Good 2, Bad 0)."
        )
    if labels.size and labels.min() < 0:
        row = _first(labels < 0)
        raise InputError(
            f"{source}, {locate(row)}: label is {labels[row]:g}; labels must be 0 (not relevant) "
            "or more."
        )
    if labels.size and labels.max() > MAX_EVAL_LABEL:
        row = _first(labels > MAX_EVAL_LABEL)
        raise InputError(
            f"{source}, {locate(row)}: label is {labels[row]:g}; the gain 2**label - 1 of a "
            f"label above {MAX_EVAL_LABEL} does not fit a float. Labels are relevance grades "
            "(Clickture: Excellent 3, Good 2, Bad 0)."
        )
    return _Checked(query_ids, img_ids, scores, labels.astype(np.int64))


def _check_blocks(
    blocks: Iterable[pa.RecordBatch | pa.Table],
    source: str,
    locate: Locate,
    max_rows: int,
    keep: bool = True,
) -> _Checked | None:
    """Every block checked as it arrives (a bad row stops the reading there), at most
    `max_rows` rows kept, compactly; then the checks that need all rows. Without `keep`, only
    the blocks' own checks (a scan that holds nothing)."""
    with contextlib.ExitStack() as stack:
        if isinstance(blocks, Generator):  # a reader: closed now, even when a block is refused
            stack.callback(blocks.close)
        return _check_all(blocks, source, locate, max_rows, keep)


def _check_all(
    blocks: Iterable[pa.RecordBatch | pa.Table],
    source: str,
    locate: Locate,
    max_rows: int,
    keep: bool,
) -> _Checked | None:
    parts: list[_Checked] = []
    total = 0
    named = False
    for block in blocks:
        if not named:
            _check_names(block.schema.names, source)
            named = True
        if block.num_rows == 0:
            continue
        if total + block.num_rows > max_rows:
            raise InputError(
                f"{source} has more than {max_rows:,} rows, the most a scores file may have "
                f"(they are held in memory, 32 bytes a row). Split it by query, or raise the "
                f"limit (max_rows=, eval --max-rows) if this machine has the memory."
            )
        checked = _check_block(block, source, _shifted(locate, total))
        if keep:
            parts.append(checked)
        total += block.num_rows
    if total == 0:
        raise InputError(
            f"{source} has no rows. Write one row per (query, candidate image) pair under the "
            f"header {', '.join(COLUMNS)}."
        )
    if not keep:
        return None
    checked = _Checked(
        *(
            _concatenate([getattr(part, name) for part in parts])
            for name in ("query_ids", "img_ids", "scores", "labels")
        )
    )
    repeated = _first_repeat(checked.query_ids, checked.img_ids)
    if repeated is not None:
        earlier, later = repeated
        raise InputError(
            f"{source}, {locate(earlier)} and {locate(later)}: both score query "
            f"{checked.query_ids[later]}, image {checked.img_ids[later]}. Keep one row per "
            "(query, image) pair."
        )
    return checked


def _shifted(locate: Locate, start: int) -> Locate:
    return lambda row: locate(start + row)


def _concatenate(arrays: list[np.ndarray]) -> np.ndarray:
    # Integer ids in one block and text in another cannot happen (a TSV whose ids change kind
    # is read as text throughout), but keep object arrays whole if they do.
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


def _offsets(ids: np.ndarray) -> np.ndarray:
    """Non-negative int64 codes, equal exactly where the ids are: offsets from the smallest
    integer id (order kept, no hashing), or hash codes for text ids."""
    if ids.dtype.kind in "iu" and int(ids.max()) - int(ids.min()) < 2**62:
        return ids.astype(np.int64) - ids.min()
    return pd.factorize(ids)[0].astype(np.int64)


def _first_repeat(query_ids: np.ndarray, img_ids: np.ndarray) -> tuple[int, int] | None:
    """The rows of the first repeated (query, image) pair, or None."""
    queries, images = _offsets(query_ids), _offsets(img_ids)
    if (int(queries.max()) + 1) * (int(images.max()) + 1) >= 2**62:  # the key would overflow
        queries, images = (pd.factorize(ids)[0].astype(np.int64) for ids in (query_ids, img_ids))
    pair = queries * (int(images.max()) + 1) + images  # (n,) one value per (query, image)
    # Files come grouped by query, so a stable (run-merging) sort is nearly linear here.
    ordered = np.sort(pair, kind="stable")
    if not (ordered[1:] == ordered[:-1]).any():
        return None
    later = _first(pd.Series(pair).duplicated().to_numpy())
    return _first(pair == pair[later]), later


def _load(source: Source, max_rows: int = MAX_ROWS) -> _Checked:
    whole_number("max_rows", max_rows, 1)
    if isinstance(source, pd.DataFrame):
        table = pa.Table.from_pandas(source, preserve_index=False)
        locate = _shifted(lambda row: f"row {row} (counting from 0)", 0)
        return _kept(_check_blocks([table], "the scores table", locate, max_rows))
    path = Path(source)
    if not path.is_file():
        raise InputError(f"{path}: no such scores file. Check the path.")
    if path.stat().st_size == 0:
        raise InputError(
            f"{path} is empty (0 bytes). Write a header line {chr(9).join(COLUMNS)!r} and one "
            "row per (query, candidate image) pair, or a Parquet file with those columns."
        )
    if _is_parquet(path):
        locate = _shifted(lambda row: f"row index {row}", 0)
        return _kept(_check_blocks(_parquet_batches(path), str(path), locate, max_rows))
    try:
        return _load_tsv(path, max_rows)
    except OSError as exc:  # a damaged gzip stream: "Truncated compressed stream", ...
        raise InputError(
            f"{path} cannot be read as a (gzip-compressed) tab-separated scores file: "
            f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__}"
            ". Write or copy it again."
        ) from None


def _load_tsv(path: Path, max_rows: int) -> _Checked:
    source, locate = str(path), _tsv_locate(path)
    try:
        return _kept(_check_blocks(_tsv_batches(path, _TSV_TYPES), source, locate, max_rows))
    except _TypeChange:
        pass  # outside the handler, so that the rows kept so far are freed before reading again
    # Read as text, keeping nothing, to say exactly where a value is not a number; if none is,
    # the ids changed kind (numbers, then text): they are text throughout.
    text = dict.fromkeys(COLUMNS, pa.string())
    _check_blocks(_tsv_batches(path, text), source, locate, max_rows, keep=False)
    text_ids = {**_TSV_TYPES, "query_id": pa.string(), "img_id": pa.string()}
    return _kept(_check_blocks(_tsv_batches(path, text_ids), source, locate, max_rows))


def _kept(checked: _Checked | None) -> _Checked:
    assert checked is not None  # keep=True always returns the rows
    return checked


def read_scores(source: Source, max_rows: int = MAX_ROWS) -> pd.DataFrame:
    """Read and check a scores file (Parquet or TSV) or table; raise `InputError` if malformed.

    Returns columns `query_id`, `img_id`, `score` (float64) and `label` (int64), in file order.
    Files are read and checked a block at a time; one of more than `max_rows` rows is refused
    before it is read whole.
    """
    checked = _load(source, max_rows)
    return pd.DataFrame(
        {
            "query_id": checked.query_ids,
            "img_id": checked.img_ids,
            "score": checked.scores,
            "label": checked.labels,
        }
    )


def scores_metrics(
    source: Source,
    relevant: int = 1,
    ks: tuple[int, ...] = NDCG_CUTOFFS,
    max_rows: int = MAX_ROWS,
    gain: str = "exp",
) -> RankingMetrics:
    """Per-query and mean metrics of a scores file or table (see `ranking_metrics`)."""
    checked = _load(source, max_rows)
    if checked.query_ids.dtype.kind in "iu":
        return ranking_metrics(
            checked.query_ids, checked.scores, checked.labels, relevant=relevant, ks=ks, gain=gain
        )
    # Text ids: rank by their codes (in id order), then name the queries again.
    codes, values = pd.factorize(checked.query_ids, sort=True)
    result = ranking_metrics(
        codes, checked.scores, checked.labels, relevant=relevant, ks=ks, gain=gain
    )
    return dataclasses.replace(result, query_ids=np.asarray(values)[result.query_ids])


def evaluate_scores(
    source: Source, relevant: int = 1, max_rows: int = MAX_ROWS
) -> dict[str, float]:
    """The Clickture metrics of a scores file (Parquet or TSV) or table, as flat keys.

    `ndcg@5` ... `ndcg@25` (per-query NDCG averaged over queries, gain `2**label - 1`, tied
    scores averaged over their orders), `dcg@25_challenge` (0.01757 * DCG@25, averaged), `auc`
    (pairs with `label >= relevant` are relevant; NaN if one class is absent), `queries`,
    `pairs` and `queries_without_relevant` (no label above 0: NDCG 0, counted in the means).
    """
    return scores_metrics(source, relevant, max_rows=max_rows).summary()
