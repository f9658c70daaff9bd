"""Writers for the encoded outputs: the authors' `.npy` files (exactly), scipy CSR matrices,
Parquet tables and `vocab.tsv`. Each writer streams: rows arrive in chunks and go to disk or to
compact numpy buffers, never to Python lists of rows."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse

_NPY_HEADER_BYTES = 128  # what numpy writes for any 2-D int64 shape with fewer than ~40 digits


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


class NpyRowWriter:
    """Streams rows of a 2-D array into a `.npy` file whose bytes equal `numpy.save`'s.

    The header is written last, over space reserved up front, once the row count is known.
    """

    def __init__(self, path: Path, columns: int, dtype: np.dtype | type = np.int64) -> None:
        self.path = path
        self.columns = columns
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.rows = 0
        self._file = open(path, "wb")  # noqa: SIM115 -- closed in close()
        self._file.write(b"\0" * _NPY_HEADER_BYTES)

    def write(self, rows: np.ndarray) -> None:
        """Append rows (shape `(k, columns)`)."""
        rows = np.ascontiguousarray(rows, dtype=self.dtype)
        if rows.ndim != 2 or rows.shape[1] != self.columns:
            raise ValueError(f"expected rows of {self.columns} columns, got shape {rows.shape}")
        self._file.write(rows.data)
        self.rows += rows.shape[0]

    def close(self) -> None:
        """Write the header for the final shape and close the file."""
        header = _npy_header((self.rows, self.columns), self.dtype)
        if len(header) != _NPY_HEADER_BYTES:  # only for absurd row counts
            raise ValueError(f"unexpected .npy header size {len(header)} for {self.path}")
        self._file.seek(0)
        self._file.write(header)
        self._file.close()


def original_index(img_ids: np.ndarray, row_counts: np.ndarray) -> np.ndarray:
    """The authors' "index" array for a pair matrix, reproduced exactly.

    `img_ids[d]` and `row_counts[d]` describe document `d`'s block of rows, in pair-matrix order.
    The scripts walk the pair rows with a current image starting at 0 and a block start at 0,
    and write `[start, end]` (inclusive) into row `current` each time the image id changes.
    Hence: shape `(max id among rows + 1, 2)`; images without rows `[-1, -1]`; image 0, when
    absent, `[0, -1]`; adjacent blocks of one id merge; a later block of an id overwrites an
    earlier one.
    """
    present = row_counts > 0
    ids = img_ids[present].astype(np.int64)
    counts = row_counts[present].astype(np.int64)
    if ids.size == 0:
        return np.zeros((0, 2), dtype=np.int64)  # no rows: no image to index
    ends = np.cumsum(counts) - 1
    starts = ends - counts + 1
    # Merge runs of one id: the walk only notices a change of id.
    run_first = np.concatenate(([True], ids[1:] != ids[:-1]))
    run_last = np.concatenate((ids[1:] != ids[:-1], [True]))
    run_ids, run_starts, run_ends = ids[run_first], starts[run_first], ends[run_last]
    index = np.full((int(ids.max()) + 1, 2), -1, dtype=np.int64)
    if run_ids[0] != 0:
        index[0] = (0, -1)  # the walk's first "change" closes an empty block of image 0
    # Where an id has several runs the last one wins, as in the walk.
    reversed_ids = run_ids[::-1]
    _, last_from_end = np.unique(reversed_ids, return_index=True)
    last = run_ids.size - 1 - last_from_end
    index[run_ids[last], 0] = run_starts[last]
    index[run_ids[last], 1] = run_ends[last]
    return index


class CsrBuilder:
    """Collects per-document word counts and builds a CSR matrix whose row `i` is image `i`."""

    def __init__(self, n_columns: int) -> None:
        self.n_columns = n_columns
        # Held compactly until `build`: a million documents make tens of millions of entries.
        self._column_type = np.uint16 if n_columns <= 1 << 16 else np.int32
        self._img_ids: list[np.ndarray] = []
        self._row_nnz: list[np.ndarray] = []
        self._columns: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def add(
        self, img_ids: np.ndarray, row_nnz: np.ndarray, columns: np.ndarray, values: np.ndarray
    ) -> None:
        """Documents with their counts: `row_nnz[d]` (column, value) pairs each, in order."""
        self._img_ids.append(img_ids.astype(np.int64))
        self._row_nnz.append(row_nnz.astype(np.int32))
        self._columns.append(columns.astype(self._column_type))
        small = values.max(initial=0) < 1 << 16
        self._values.append(values.astype(np.uint16 if small else np.int32))

    @staticmethod
    def _take(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        """Concatenate `parts` into `dtype`, emptying the list as it goes."""
        out = np.empty(sum(p.size for p in parts), dtype=dtype)
        position = 0
        while parts:
            part = parts.pop(0)
            out[position : position + part.size] = part
            position += part.size
        return out

    def build(self) -> scipy.sparse.csr_matrix:
        """The matrix, rows `0..max img_id`; documents sharing an image id add up."""
        img_ids = self._take(self._img_ids, np.int64)
        row_nnz = self._take(self._row_nnz, np.int64)
        columns = self._take(self._columns, self._column_type)
        values = self._take(self._values, np.int32)
        n_rows = int(img_ids.max()) + 1 if img_ids.size else 0
        shape = (n_rows, self.n_columns)
        order = np.argsort(img_ids, kind="stable")
        if img_ids.size and np.any(np.diff(img_ids[order]) == 0):
            rows = np.repeat(img_ids, row_nnz)
            coo = (values, (rows, columns.astype(np.int32)))
            matrix = scipy.sparse.coo_matrix(coo, shape=shape).tocsr()
            matrix.sum_duplicates()
            return matrix
        # Distinct ids: move each document's block to its image's row, a slice of rows at a time
        # so the gather index never holds more than a slice's entries.
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        indptr[img_ids + 1] = row_nnz
        np.cumsum(indptr, out=indptr)
        source_starts = np.concatenate(([0], np.cumsum(row_nnz)[:-1])) if row_nnz.size else row_nnz
        out_columns = np.empty(columns.size, dtype=np.int32)
        out_values = np.empty_like(values)
        for lo in range(0, order.size, 65536):
            docs = order[lo : lo + 65536]
            counts = row_nnz[docs]
            total = int(counts.sum())
            if total == 0:
                continue
            target_starts = indptr[img_ids[docs]]
            first = int(target_starts[0])
            gather = np.repeat(source_starts[docs] - (target_starts - first), counts)
            gather += np.arange(total)
            out_columns[first : first + total] = columns[gather]
            out_values[first : first + total] = values[gather]
        index_dtype = np.int32 if columns.size < np.iinfo(np.int32).max else np.int64
        return scipy.sparse.csr_matrix(
            (out_values, out_columns.astype(index_dtype, copy=False), indptr.astype(index_dtype)),
            shape=shape,
        )


def save_csr(path: Path, matrix: scipy.sparse.csr_matrix) -> None:
    """Save with `scipy.sparse.save_npz` (uncompressed: loads faster, and counts compress badly)."""
    scipy.sparse.save_npz(path, matrix, compressed=False)


class ParquetTableWriter:
    """Buffers column chunks and writes one row group per `row_group_rows` rows."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int) -> None:
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer = pq.ParquetWriter(path, schema, compression="zstd")

    def write(self, columns: dict[str, np.ndarray | pa.Array | Sequence[object]]) -> None:
        """Append rows given column by column (names and order as in the schema)."""
        batch = pa.record_batch(
            [pa.array(columns[f.name], type=f.type) for f in self.schema], schema=self.schema
        )
        self._pending.append(batch)
        self._pending_rows += batch.num_rows
        self.rows += batch.num_rows
        while self._pending_rows >= self.row_group_rows:
            self._flush(self.row_group_rows)

    def _flush(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        head, rest = table.slice(0, rows), table.slice(rows)
        self._writer.write_table(head, row_group_size=rows)
        self._pending = rest.to_batches()
        self._pending_rows = rest.num_rows

    def close(self) -> None:
        """Write what is left and the file footer."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()


def write_vocab_tsv(path: Path, words: Sequence[str], document_frequency: np.ndarray) -> None:
    """`word_id<TAB>word<TAB>df`, one word per line, with a header line."""
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        file.write("word_id\tword\tdf\n")
        rows = enumerate(zip(words, document_frequency, strict=True))
        file.writelines(f"{word_id}\t{word}\t{df}\n" for word_id, (word, df) in rows)
