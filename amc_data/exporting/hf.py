"""The Hugging Face layout: one Parquet folder per config, a split's rows cut into shards of
bounded size, read back by `datasets.load_dataset(DIR, CONFIG)` with the features the dataset
card declares.

```
DIR/
  README.md                         dataset card: configs, features, splits, licences, records
  images/train-00000-of-00001.parquet   img_id, split, fold[, source columns], keywords,
                                        keyword_counts
  features/train-00000-of-00004.parquet img_id, features (Array2D (R, D)), the images' order
  queries/train-00000-of-00001.parquet  query_id, query, split[, intent]
  judgments/train-00000-of-00001.parquet query_id, img_id, label (split: the query's)
  vocabulary/vocab.tsv, vocabulary/query_vocab.tsv
  export.json                       what was written, from which prepared folder
```

The features have a config of their own: they are most of the bytes (tens of gigabytes for
Clickture-Lite), and a reader of the keywords or judgments need not fetch them. Row `i` of
`features[split]` is the image of row `i` of `images[split]`.

Written with pyarrow alone; the features a block of rows at a time (a row group each).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..prepare.format import PreparedDataset
from .tables import SplitRows, feature_blocks, feature_row_bytes

__all__ = ["CONFIGS", "ConfigFiles", "hf_features", "write_hf"]

# Feature rows per Parquet row group: about this many bytes. Arrow's Parquet writer holds
# several times a row group's bytes while it encodes a nested (list of lists) column, so the
# groups stay small enough to keep that bounded.
_ROW_GROUP_BYTES = 8 << 20

#: The configs, in the order the card lists them; `images` is the default.
CONFIGS = ("images", "features", "queries", "judgments")


@dataclass
class ConfigFiles:
    """One config's features (the card's `dataset_info`) and, per split, its shards and rows."""

    name: str
    features: list[dict[str, Any]] = field(default_factory=list)
    shards: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    bytes: dict[str, int] = field(default_factory=dict)  # in memory (Arrow), as the card says


def _value_dtype(kind: pa.DataType) -> str:
    """The `datasets.Value` dtype of a plain Arrow type."""
    names = {pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64"}
    return names.get(kind, str(kind))


def hf_features(schema: pa.Schema, row_shape: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    """A table's features in the dataset card's form (`dataset_info.features`): a list column
    is a `sequence`, the `features` column an `array2_d` of `row_shape`."""
    found: list[dict[str, Any]] = []
    for column in schema:
        if column.name == "features" and row_shape:
            inner = column.type
            while pa.types.is_list(inner):
                inner = inner.value_type
            dtype = {"array2_d": {"shape": list(row_shape), "dtype": _value_dtype(inner)}}
            found.append({"name": column.name, "dtype": dtype})
        elif pa.types.is_list(column.type):
            found.append({"name": column.name, "sequence": _value_dtype(column.type.value_type)})
        else:
            found.append({"name": column.name, "dtype": _value_dtype(column.type)})
    return found


def _shard_names(config: str, split: str, shards: int) -> list[str]:
    return [f"{config}/{split}-{i:05d}-of-{shards:05d}.parquet" for i in range(shards)]


def _write_table(
    staging: Path, files: ConfigFiles, split: str, table: pa.Table, shard_bytes: int
) -> None:
    """A split of an in-memory table, cut into shards of about `shard_bytes`."""
    if table.num_rows == 0:
        return
    per_row = max(1, math.ceil(table.nbytes / table.num_rows))
    per_shard = max(1, shard_bytes // per_row)
    names = _shard_names(files.name, split, math.ceil(table.num_rows / per_shard))
    for index, name in enumerate(names):
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(index * per_shard, per_shard), path)
    files.features = hf_features(table.schema)
    files.shards[split] = names
    files.rows[split] = table.num_rows
    files.bytes[split] = table.nbytes


def feature_array(block: np.ndarray) -> pa.Array:
    """(n, R, D) values as Arrow list<list<value>>: the storage of a `datasets.Array2D`."""
    n, regions, dim = block.shape
    values = pa.array(np.ascontiguousarray(block).reshape(-1))
    inner = pa.ListArray.from_arrays(
        np.arange(0, n * regions * dim + 1, dim, dtype=np.int32), values
    )
    return pa.ListArray.from_arrays(np.arange(0, n * regions + 1, regions, dtype=np.int32), inner)


def _feature_schema(dataset: PreparedDataset) -> pa.Schema:
    value = pa.from_numpy_dtype(dataset.features.dtype)
    return pa.schema([("img_id", pa.int64()), ("features", pa.list_(pa.list_(value)))])


def _write_features(
    staging: Path,
    files: ConfigFiles,
    dataset: PreparedDataset,
    rows: SplitRows,
    shard_bytes: int,
    advance: Callable[[int], object],
) -> None:
    """A split's features, shards of about `shard_bytes`, a row group per block read;
    `advance(rows)` after each block."""
    n = rows.feature_rows.size
    if n == 0:
        return
    row_shape = tuple(dataset.features.shape[1:])
    per_shard = max(1, shard_bytes // feature_row_bytes(dataset))
    names = _shard_names(files.name, rows.split, math.ceil(n / per_shard))
    schema = _feature_schema(dataset)
    img_ids = rows.images.column("img_id").to_numpy()
    for index, name in enumerate(names):
        start, stop = index * per_shard, min(n, (index + 1) * per_shard)
        path = staging / name
        path.parent.mkdir(parents=True, exist_ok=True)
        # Neither a dictionary nor min/max statistics help float features; both cost time.
        only_ids = ["img_id"]
        with pq.ParquetWriter(
            path, schema, use_dictionary=only_ids, write_statistics=only_ids
        ) as writer:
            done = start
            group = max(1, _ROW_GROUP_BYTES // feature_row_bytes(dataset))
            for block in feature_blocks(dataset, rows.feature_rows[start:stop], group):
                ids = pa.array(img_ids[done : done + block.shape[0]], type=pa.int64())
                writer.write_table(pa.Table.from_arrays([ids, feature_array(block)], schema=schema))
                done += block.shape[0]
                advance(block.shape[0])
    files.features = hf_features(schema, row_shape)
    files.shards[rows.split] = names
    files.rows[rows.split] = n
    files.bytes[rows.split] = n * (feature_row_bytes(dataset) + 8 + 4 * (1 + row_shape[0]))


def write_hf(
    staging: Path,
    dataset: PreparedDataset,
    split_rows: list[SplitRows],
    shard_bytes: int,
    advance: Callable[[int], object],
) -> dict[str, ConfigFiles]:
    """Write the configs' shards into `staging` (`advance(rows)` as feature rows are written);
    return what each config holds."""
    configs = {name: ConfigFiles(name) for name in CONFIGS}
    for rows in split_rows:
        _write_table(staging, configs["images"], rows.split, rows.images, shard_bytes)
        _write_table(staging, configs["queries"], rows.split, rows.queries, shard_bytes)
        _write_table(staging, configs["judgments"], rows.split, rows.judgments, shard_bytes)
        _write_features(staging, configs["features"], dataset, rows, shard_bytes, advance)
    return configs
