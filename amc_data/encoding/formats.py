"""Writers for the encoded outputs: the authors' `.npy` files (exactly), scipy CSR matrices,
Parquet tables and `vocab.tsv`. Each writer streams: rows arrive in chunks and go to disk or to
compact numpy buffers, never to Python lists of rows."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import InputError

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
    """Collects per-document word counts and writes a CSR matrix whose row `i` is image `i`.

    The counts wait on disk, in `spill_dir`, until `save`: a million documents make tens of
    millions of entries, which would otherwise sit in memory while the workers run.
    """

    def __init__(self, n_columns: int, spill_dir: Path, name: str) -> None:
        self.n_columns = n_columns
        self._column_type = np.uint16 if n_columns <= 1 << 16 else np.int32
        self._value_type: type = np.uint16
        self._img_ids: list[np.ndarray] = []
        self._row_nnz: list[np.ndarray] = []
        self._spill = {part: spill_dir / f".{name}.{part}.tmp" for part in ("columns", "values")}
        self._files = {part: open(path, "wb") for part, path in self._spill.items()}  # noqa: SIM115

    def add(
        self, img_ids: np.ndarray, row_nnz: np.ndarray, columns: np.ndarray, values: np.ndarray
    ) -> None:
        """Documents with their counts: `row_nnz[d]` (column, value) pairs each, in order."""
        if values.max(initial=0) >= 1 << 16 and self._value_type is np.uint16:
            self._widen_values()
        self._img_ids.append(img_ids.astype(np.int64))
        self._row_nnz.append(row_nnz.astype(np.int32))
        columns.astype(self._column_type).tofile(self._files["columns"])
        values.astype(self._value_type).tofile(self._files["values"])

    def _widen_values(self) -> None:
        """A count over 65535 (never seen in keyword data): store the values as int32 from now."""
        self._files["values"].close()
        widened = np.fromfile(self._spill["values"], dtype=np.uint16).astype(np.int32)
        self._files["values"] = open(self._spill["values"], "wb")  # noqa: SIM115
        widened.tofile(self._files["values"])
        self._value_type = np.int32

    def _load(self, part: str, dtype: type) -> np.ndarray:
        self._files[part].close()
        array: np.ndarray = np.fromfile(self._spill[part], dtype=dtype)
        self._spill[part].unlink()
        return array

    @staticmethod
    def _take(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        """Concatenate `parts` into `dtype`, emptying the list as it goes."""
        out: np.ndarray = np.empty(sum(p.size for p in parts), dtype=dtype)
        position = 0
        while parts:
            part = parts.pop(0)
            out[position : position + part.size] = part
            position += part.size
        return out

    def save(self, path: Path) -> tuple[int, int]:
        """Write the matrix (rows `0..max img_id`; documents sharing an id add up) as a
        `scipy.sparse.save_npz` file; return its shape.

        Rows are gathered into image-id order a slice at a time and streamed into the file, so
        the full matrix never sits in memory beside the collected counts.
        """
        img_ids = self._take(self._img_ids, np.int64)
        row_nnz = self._take(self._row_nnz, np.int64)
        columns = self._load("columns", self._column_type)
        values = self._load("values", self._value_type)
        n_rows = int(img_ids.max()) + 1 if img_ids.size else 0
        shape = (n_rows, self.n_columns)
        order = np.argsort(img_ids, kind="stable")
        if img_ids.size and np.any(np.diff(img_ids[order]) == 0):
            import scipy.sparse  # only here: a second or so of start-up for every run otherwise

            rows = np.repeat(img_ids, row_nnz)
            coo = (values.astype(np.int32), (rows, columns.astype(np.int32)))
            matrix = scipy.sparse.coo_matrix(coo, shape=shape).tocsr()
            matrix.sum_duplicates()
            scipy.sparse.save_npz(path, matrix, compressed=False)
            return shape
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        indptr[img_ids + 1] = row_nnz
        np.cumsum(indptr, out=indptr)
        source_starts = np.cumsum(row_nnz) - row_nnz

        def in_row_order(source: np.ndarray) -> Iterator[np.ndarray]:
            for lo in range(0, order.size, 65536):
                docs = order[lo : lo + 65536]
                counts = row_nnz[docs]
                target = indptr[img_ids[docs]]
                gather = np.repeat(source_starts[docs] - (target - target[0]), counts)
                yield source[gather + np.arange(gather.size)]

        index_type = np.int32 if columns.size < 1 << 31 and n_rows < 1 << 31 else np.int64
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as npz:
            _npz_member(npz, "indices", index_type, (columns.size,), in_row_order(columns))
            _npz_member(npz, "indptr", index_type, indptr.shape, [indptr])
            _npz_member(npz, "format", np.dtype("S3"), (), [np.array(b"csr")])
            _npz_member(npz, "shape", np.int64, (2,), [np.array(shape)])
            _npz_member(npz, "data", np.int32, (values.size,), in_row_order(values))
        return shape


def _npz_member(
    npz: zipfile.ZipFile,
    name: str,
    dtype: type | np.dtype,
    shape: tuple[int, ...],
    blocks: Iterable[np.ndarray],
) -> None:
    """One `.npy` member of an `.npz` file, written from blocks of its values in order."""
    kind = np.dtype(dtype)
    with npz.open(f"{name}.npy", "w", force_zip64=True) as member:
        header = {
            "descr": np.lib.format.dtype_to_descr(kind),
            "fortran_order": False,
            "shape": shape,
        }
        np.lib.format.write_array_header_1_0(member, header)
        for block in blocks:
            member.write(np.ascontiguousarray(block, dtype=kind).tobytes())


_NUMPY_TYPES = {
    pa.int8(): np.int8,
    pa.int16(): np.int16,
    pa.int32(): np.int32,
    pa.int64(): np.int64,
    pa.float64(): np.float64,
}


def arrow_array(values: np.ndarray | Sequence[str] | pa.Array, type: pa.DataType) -> pa.Array:
    """A pyarrow array built straight from numpy buffers.

    `pyarrow.array` on numpy input imports pandas (a third of a second and some 50 MB, in every
    encode); numbers, strings (a numpy bytes array or a list of str) and dictionary-encoded
    strings need nothing of it.
    """
    if isinstance(values, pa.Array):
        return values
    if type in _NUMPY_TYPES:
        data = np.ascontiguousarray(values, dtype=_NUMPY_TYPES[type])
        return pa.Array.from_buffers(type, data.size, [None, pa.py_buffer(data)])
    if type == pa.string():
        if not isinstance(values, np.ndarray):
            values = np.array([v.encode("utf-8") for v in values], dtype=bytes)
        values = np.ascontiguousarray(values)
        width = max(values.dtype.itemsize, 1)
        chars = (
            values.view(np.uint8).reshape(values.size, -1)
            if values.size
            else np.zeros((0, width), np.uint8)
        )
        inside = chars != 0  # names and words hold no NUL: the rest is numpy's padding
        offsets = np.zeros(values.size + 1, dtype=np.int32)
        np.cumsum(inside.sum(axis=1), out=offsets[1:])
        data = np.ascontiguousarray(chars[inside])
        array = pa.Array.from_buffers(
            pa.string(), values.size, [None, pa.py_buffer(offsets), pa.py_buffer(data)]
        )
        array.validate(full=True)  # UTF-8 checked, as pyarrow.array would
        return array
    raise TypeError(f"arrow_array does not build {type}")


def dictionary_array(codes: np.ndarray, dictionary: pa.Array) -> pa.DictionaryArray:
    """Dictionary-encoded values: `dictionary[codes[i]]`, with int8 codes."""
    return pa.DictionaryArray.from_arrays(arrow_array(codes, pa.int8()), dictionary)


class ParquetTableWriter:
    """Buffers column chunks and writes one row group per `row_group_rows` rows."""

    def __init__(
        self,
        path: Path,
        schema: pa.Schema,
        row_group_rows: int,
        dictionary_columns: Sequence[str] | bool = True,
        statistics_columns: Sequence[str] | bool = True,
    ) -> None:
        self.path = path
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.rows = 0
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        # Dictionary-encoding a column of distinct values (image ids, names) is wasted work.
        # Statistics let readers skip row groups (by split, by image); only where they do.
        self._writer = pq.ParquetWriter(
            path,
            schema,
            compression="zstd",
            use_dictionary=dictionary_columns,
            write_statistics=statistics_columns,
        )

    def write(self, columns: dict[str, np.ndarray | pa.Array | Sequence[object]]) -> None:
        """Append rows given column by column (names and order as in the schema)."""
        batch = pa.record_batch(
            [arrow_array(columns[f.name], f.type) for f in self.schema], schema=self.schema
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


VOCAB_HEADER = "word_id\tword\tdf"


def write_vocab_tsv(path: Path, words: Sequence[str], document_frequency: np.ndarray) -> None:
    """`word_id<TAB>word<TAB>df`, one word per line, with a header line."""
    with open(path, "w", encoding="utf-8", newline="\n") as file:
        file.write(VOCAB_HEADER + "\n")
        rows = enumerate(zip(words, document_frequency, strict=True))
        file.writelines(f"{word_id}\t{word}\t{df}\n" for word_id, (word, df) in rows)


def read_vocab_tsv(
    path: Path, header: str, *, missing: str, fix: str
) -> tuple[list[str], list[int]]:
    """Words in id order and their counts, from a `word_id<TAB>word<TAB>number` file with the
    header line `header` (the keyword `vocab.tsv`, the query `query_vocab.tsv`). Each problem
    is an `InputError` naming the file (and line); `missing` and `fix` say what to do."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise InputError(f"{path} not found: {missing}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read {path} as UTF-8 text ({exc}).") from exc
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or lines[0] != header:
        found = repr(lines[0]) if lines else "an empty file"
        raise InputError(f"{path} starts with {found}, not the header {header!r}. {fix}")
    column = header.rsplit("\t", 1)[-1]
    words: list[str] = []
    numbers: list[int] = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) != 3 or parts[0] != str(len(words)) or not parts[2].isdigit():
            raise InputError(
                f"Line {number} of {path} is {line[:80]!r}; expected "
                f"'{len(words)}<TAB>word<TAB>{column}'. {fix}"
            )
        words.append(parts[1])
        numbers.append(int(parts[2]))
    return words, numbers
