"""What both export formats take from a prepared folder: each split's rows of the images,
queries and judgments tables (with each image's keywords as words), and its feature rows a
block at a time (the features are a memory map that may hold tens of gigabytes)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from ..prepare.format import SPLITS, PreparedDataset, positions, rows_per_chunk

__all__ = ["SplitRows", "feature_blocks", "keyword_lists", "split_rows"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SplitRows:
    """The rows of one split: images (in images.parquet's order, keywords added), the feature
    rows of those images (same order), queries, and the judgments of those queries."""

    split: str
    images: pa.Table
    feature_rows: np.ndarray  # (n_images,) row of each image in features.npy
    queries: pa.Table
    judgments: pa.Table


def _arrow(frame: object) -> pa.Table:
    table = pa.Table.from_pandas(frame, preserve_index=False)
    return table.replace_schema_metadata(None)  # no pandas metadata in the export's files


def _plain_columns(table: pa.Table, name: str) -> pa.Table:
    """Columns of a type both formats carry as they are (numbers, true/false, text); any other
    (a date, a nested value a source added) is carried as text, and logged."""
    for index, field in enumerate(table.schema):
        kind = field.type
        plain = (
            pa.types.is_integer(kind)
            or pa.types.is_floating(kind)
            or pa.types.is_boolean(kind)
            or pa.types.is_string(kind)
            or pa.types.is_large_string(kind)
        )
        if pa.types.is_large_string(kind):  # pandas' text: plain `string` in the export
            table = table.set_column(index, field.name, table.column(index).cast(pa.string()))
        elif not plain:
            log.warning("%s column %r (%s) is exported as text", name, field.name, kind)
            table = table.set_column(index, field.name, table.column(index).cast(pa.string()))
    return table


def keyword_lists(dataset: PreparedDataset, rows: np.ndarray) -> tuple[pa.Array, pa.Array]:
    """The keywords of feature rows `rows` as two list columns: the words (vocabulary order)
    and their counts."""
    matrix = dataset.keywords[rows]
    matrix.sort_indices()
    offsets = pa.array(matrix.indptr.astype(np.int64), type=pa.int64())
    vocabulary = pa.array(dataset.vocabulary, type=pa.string())
    words = vocabulary.take(pa.array(matrix.indices.astype(np.int64)))
    counts = pa.array(matrix.data.astype(np.int32), type=pa.int32())
    return (
        pa.LargeListArray.from_arrays(offsets, words).cast(pa.list_(pa.string())),
        pa.LargeListArray.from_arrays(offsets, counts).cast(pa.list_(pa.int32())),
    )


def split_rows(dataset: PreparedDataset) -> Iterator[SplitRows]:
    """Each split's rows, in the order train, val, test (a split without images or queries
    included: its tables are empty)."""
    images = _plain_columns(_arrow(dataset.images), "images.parquet")
    queries = _plain_columns(_arrow(dataset.queries), "queries.parquet")
    judgments = _plain_columns(_arrow(dataset.judgments), "judgments.parquet")
    image_split = dataset.images["split"].to_numpy()
    query_split = dataset.queries["split"].to_numpy()
    judged_split = query_split[
        positions(dataset.queries["query_id"].to_numpy(), dataset.judgments["query_id"].to_numpy())
    ]  # every judged query is listed: load_prepared checked it
    for split in SPLITS:
        where = np.flatnonzero(image_split == split)
        split_images = images.take(pa.array(where))
        rows = dataset.rows(dataset.images["img_id"].to_numpy()[where])
        words, counts = keyword_lists(dataset, rows)
        split_images = split_images.append_column("keywords", words)
        split_images = split_images.append_column("keyword_counts", counts)
        yield SplitRows(
            split=split,
            images=split_images,
            feature_rows=rows,
            queries=queries.take(pa.array(np.flatnonzero(query_split == split))),
            judgments=judgments.take(pa.array(np.flatnonzero(judged_split == split))),
        )


def feature_row_bytes(dataset: PreparedDataset) -> int:
    """Bytes of one image's features (R x D values)."""
    return int(np.prod(dataset.features.shape[1:])) * dataset.features.dtype.itemsize


def feature_blocks(
    dataset: PreparedDataset, rows: np.ndarray, block: int | None = None
) -> Iterator[np.ndarray]:
    """The features of `rows` (in that order), `block` rows at a time (by default about 64 MB):
    each block is read from the memory map in file order, then put in `rows`' order."""
    features = dataset.features
    step = block or rows_per_chunk(features.shape[1:], features.dtype.itemsize)
    for start in range(0, rows.size, step):
        wanted = rows[start : start + step]
        order = np.argsort(wanted, kind="stable")
        values = np.empty((wanted.size, *features.shape[1:]), dtype=features.dtype)
        values[order] = features[wanted[order]]
        yield values
