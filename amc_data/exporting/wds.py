"""The webdataset layout: tar shards of one split's images, one sample per image, for streaming
training; the queries and judgments (small) in Parquet beside them.

```
DIR/
  README.md                     dataset card: layout, splits, licences, records
  images-train-000000.tar ...   per image <img_id>.features.npy ((R, D), the prepared dtype),
                                <img_id>.keywords.json ({"keywords": [...], "keyword_counts":
                                [...]}), <img_id>.json (img_id, split, fold[, source columns])
  queries.parquet               query_id, query, split[, intent]
  judgments.parquet             query_id, img_id, label, split (the query's)
  vocabulary/vocab.tsv, vocabulary/query_vocab.tsv
  export.json                   what was written, from which prepared folder
```

Written with the standard library's `tarfile`, the bytes fixed by the data alone (members in
sample order, time 0, owner 0, mode 0644, ustar headers), a block of feature rows at a time.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..prepare.format import PreparedDataset
from .tables import SplitRows, feature_blocks

__all__ = ["write_wds"]


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _npy(values: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(values), allow_pickle=False)
    return buffer.getvalue()


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode("utf-8")


class _ShardWriter:
    """Tar shards `images-<split>-NNNNNN.tar`, a new one when the next sample would take the
    current one past `shard_bytes` (a shard holds at least one sample)."""

    def __init__(self, staging: Path, split: str, shard_bytes: int) -> None:
        self.staging, self.split, self.shard_bytes = staging, split, shard_bytes
        self.names: list[str] = []
        self._file: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        # Each member takes a 512-byte header and its data padded to 512 bytes.
        size = sum(512 + -(-len(data) // 512) * 512 for _, data in members)
        if self._tar is None or (
            self._file is not None and self._file.tell() + size > self.shard_bytes
        ):
            self._open()
        assert self._tar is not None
        for extension, data in members:
            _member(self._tar, f"{key}.{extension}", data)

    def _open(self) -> None:
        self.close()
        name = f"images-{self.split}-{len(self.names):06d}.tar"
        self.names.append(name)
        self._file = open(self.staging / name, "wb")  # noqa: SIM115 (closed by close())
        self._tar = tarfile.open(  # noqa: SIM115 (closed by close())
            fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT
        )

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
        if self._file is not None:
            self._file.close()
        self._tar = self._file = None


def _write_split(
    staging: Path,
    dataset: PreparedDataset,
    rows: SplitRows,
    shard_bytes: int,
    advance: Callable[[int], object],
) -> list[str]:
    writer = _ShardWriter(staging, rows.split, shard_bytes)
    try:
        done = 0
        for block in feature_blocks(dataset, rows.feature_rows):
            for offset, record in enumerate(rows.images.slice(done, block.shape[0]).to_pylist()):
                keywords = {k: record.pop(k) for k in ("keywords", "keyword_counts")}
                writer.add(
                    str(record["img_id"]),
                    [
                        ("features.npy", _npy(block[offset])),
                        ("json", _json(record)),
                        ("keywords.json", _json(keywords)),
                    ],
                )
            done += block.shape[0]
            advance(block.shape[0])
    finally:
        writer.close()
    return writer.names


def write_wds(
    staging: Path,
    dataset: PreparedDataset,
    split_rows: list[SplitRows],
    shard_bytes: int,
    advance: Callable[[int], object],
) -> dict[str, list[str]]:
    """Write the shards of each split and the two side tables into `staging` (`advance(rows)`
    as feature rows are written); return each split's shard names."""
    shards = {}
    queries, judgments = [], []
    for rows in split_rows:
        shards[rows.split] = _write_split(staging, dataset, rows, shard_bytes, advance)
        queries.append(rows.queries)
        split = pa.array([rows.split] * rows.judgments.num_rows, type=pa.string())
        judgments.append(rows.judgments.append_column("split", split))
    pq.write_table(pa.concat_tables(queries), staging / "queries.parquet")
    pq.write_table(pa.concat_tables(judgments), staging / "judgments.parquet")
    return shards
