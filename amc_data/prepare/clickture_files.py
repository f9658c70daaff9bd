"""Reading Clickture's tab-separated inputs (the click log, the dev judgments, a user's id map)
and mapping their image keys to img_ids.

Fields are split at tabs only: no quoting, no escapes, so a `"` in a query is kept. Files are
read column-wise by Arrow (a click log has tens of millions of lines), and each problem (a line
with another number of fields, an unknown key) is reported with its line numbers through
`Problems`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..archive import load_id_map
from ..errors import ConfigError, InputError
from .common import EXAMPLES, Problems, shown

__all__ = [
    "TsvLayout",
    "column_hint",
    "line_examples",
    "load_key_map",
    "map_keys",
    "numpy_column",
    "read_tsv",
]

_IGNORED = ("-", "_")  # a column name that means "ignore this column"


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


def numpy_column(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False))


def line_examples(table: pa.Table, mask: np.ndarray, column: str) -> list[str]:
    """`line N: 'value'` for the first few rows of `mask`."""
    rows = table.take(pa.array(np.flatnonzero(mask)[:EXAMPLES]))
    pairs = zip(rows["line"].to_pylist(), rows[column].to_pylist(), strict=True)
    return [f"line {n}: {value!r}" for n, value in pairs]


def read_tsv(path: Path, layout: TsvLayout, what: str, option: str, problems: Problems) -> pa.Table:
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
    blank = np.logical_and.reduce([numpy_column(pc.equal(table[c], "")) for c in wanted])
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


def column_hint(table: pa.Table, layout: TsvLayout, numeric: str, option: str) -> str:
    """Where the numbers seem to be, when not in the column named `numeric`."""
    head = table.slice(0, 200)
    for name in head.column_names:
        if name in (numeric, "line"):
            continue
        if numpy_column(pc.match_substring_regex(head[name], r"^[0-9]+$")).all():
            columns = [
                numeric if c == name else (name if c == numeric else c) for c in layout.columns
            ]
            return (
                f" The numbers seem to be in the {name!r} column: try {option} {','.join(columns)}."
            )
    return ""


def load_key_map(path: Path) -> pd.Series:
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


def map_keys(
    table: pa.Table,
    key_map: pd.Series,
    path: Path,
    map_path: Path,
    problems: Problems,
    id_limit: int,
) -> pa.Table:
    """`table` less the lines whose key the map lacks (a problem), with an `img_id` column;
    an id of `id_limit` or more is refused (the prepared folder's ids of the other part start
    there)."""
    keys = pc.dictionary_encode(table["key"].combine_chunks())
    where = key_map.index.get_indexer(keys.dictionary.to_pandas())
    known = where >= 0
    per_key = np.where(known, key_map.to_numpy()[where], -1)
    ids = per_key[numpy_column(keys.indices)]
    unknown = ids < 0
    if unknown.any():
        examples = line_examples(table, unknown, "key")
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
    if ids.size and int(ids.max()) >= id_limit:
        raise InputError(
            f"{map_path} maps an image to id {int(ids.max()):,}, but the prepared folder puts "
            f"dev images at ids from {id_limit:,} up, so ids must stay below that. "
            "Check the id map."
        )
    return table.filter(pa.array(~unknown)).append_column("img_id", pa.array(ids))
