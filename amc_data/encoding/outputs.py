"""The writers of an encode's output files, fed one chunk of documents at a time: the authors'
`.npy` files, the CSR matrices, the Parquet tables and `vocab.tsv`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from ..errors import InputError
from ..machine import release_memory
from ..spec import OriginalOutput
from .formats import (
    CsrBuilder,
    NpyRowWriter,
    ParquetTableWriter,
    arrow_array,
    dictionary_array,
    original_index,
    write_vocab_tsv,
)
from .inputs import Documents
from .workers import ChunkResult

log = logging.getLogger(__name__)

PAIRS_ROW_GROUP = 1 << 21  # 2M rows of 13 bytes: ~26 MB a row group
IMAGES_ROW_GROUP = 1 << 18  # 256K rows with their member names: ~20 MB
SPLIT_TYPE = pa.dictionary(pa.int8(), pa.string())
PAIRS_SCHEMA = pa.schema(
    [
        ("split", SPLIT_TYPE),
        ("img_id", pa.int64()),
        ("word_id", pa.int32()),
        ("position", pa.int32()),
    ]
)
IMAGES_SCHEMA = pa.schema(
    [
        ("img_id", pa.int64()),
        ("split", SPLIT_TYPE),
        ("source_member", pa.string()),
        ("tokens_seen", pa.int32()),
        ("tokens_kept", pa.int32()),
    ]
)
VOCAB_SCHEMA = pa.schema([("word_id", pa.int32()), ("word", pa.string()), ("df", pa.int64())])


@dataclass
class _OriginalWriter:
    """One pair of the authors' files: the pair matrix streamed to disk, the index built from
    each document's image id and row count at the end."""

    output: OriginalOutput
    pairs: NpyRowWriter
    split_codes: list[int]
    img_ids: list[np.ndarray] = field(default_factory=list)
    row_counts: list[np.ndarray] = field(default_factory=list)

    def close(self, folder: Path, min_df: int) -> list[str]:
        self.pairs.close()
        index = original_index(_concat(self.img_ids, np.int64), _concat(self.row_counts, np.int64))
        np.save(folder / self.output.index_name(min_df), index)
        del index
        release_memory()
        return [self.output.pairs_name(min_df), self.output.index_name(min_df)]


@dataclass
class _ParquetWriters:
    pairs: ParquetTableWriter
    images: ParquetTableWriter


@dataclass(frozen=True)
class WrittenOutputs:
    """What the writers wrote: file names (in the output folder) and counts per split."""

    files: list[str]
    # split -> {"encoded": documents, "pairs": rows (words kept), "empty": encoded documents
    # with no word kept, "tokens": words seen, kept or not}
    counts: dict[str, dict[str, int]]


class OutputWriters:
    """Every output format of one encode, fed one chunk of documents at a time.

    Made by `create`, which opens the files; `add` writes a chunk, `close` finishes them.
    """

    def __init__(
        self,
        folder: Path,
        documents: Documents,
        min_df: int,
        files: list[str],
        originals: list[_OriginalWriter],
        csr: dict[int, CsrBuilder],
        parquet: _ParquetWriters | None,
    ) -> None:
        self.folder = folder
        self.documents = documents
        self.min_df = min_df
        self.files = files  # written so far
        self.originals = originals
        self.csr = csr  # split code -> builder
        self.parquet = parquet
        # Documents per split = encoded + skipped: the encoder adds the skipped at the end.
        self.counts = {
            s: {"encoded": 0, "pairs": 0, "empty": 0, "tokens": 0} for s in documents.splits
        }
        self._split_names = arrow_array(list(documents.splits), pa.string())

    @classmethod
    def create(
        cls,
        folder: Path,
        documents: Documents,
        words: list[str],
        frequencies: np.ndarray,
        formats: tuple[str, ...],
        min_df: int,
    ) -> OutputWriters:
        """Write the vocabulary files into `folder` and open a writer for each other output of
        `formats`."""
        if {"original", "csr"} & set(formats) and documents.img_id.size:
            _check_id_range(documents)
        files = ["vocab.tsv"]
        write_vocab_tsv(folder / "vocab.tsv", words, frequencies)
        originals = []
        if "original" in formats:
            originals = [
                _OriginalWriter(
                    output,
                    NpyRowWriter(folder / output.pairs_name(min_df), columns=2),
                    documents.split_codes(output.splits),
                )
                for output in documents.spec.originals
            ]
        csr = {}
        if "csr" in formats:
            csr = {
                int(code): CsrBuilder(
                    len(words), folder, documents.spec.csr_name(documents.splits[code])
                )
                for code in np.unique(documents.split_code)
            }
        parquet = None
        if "parquet" in formats:
            parquet = _ParquetWriters(
                pairs=ParquetTableWriter(
                    folder / "pairs.parquet",
                    PAIRS_SCHEMA,
                    PAIRS_ROW_GROUP,
                    dictionary_columns=["split", "word_id", "position"],
                    statistics_columns=["split", "img_id", "word_id"],
                ),
                images=ParquetTableWriter(
                    folder / "images.parquet",
                    IMAGES_SCHEMA,
                    IMAGES_ROW_GROUP,
                    dictionary_columns=["split", "tokens_seen", "tokens_kept"],
                ),
            )
            vocab = ParquetTableWriter(folder / "vocab.parquet", VOCAB_SCHEMA, 1 << 20)
            vocab.write({"word_id": np.arange(len(words)), "word": words, "df": frequencies})
            vocab.close()
            files.append("vocab.parquet")
        return cls(folder, documents, min_df, files, originals, csr, parquet)

    def _splits(self, codes: np.ndarray) -> pa.DictionaryArray:
        return dictionary_array(codes, self._split_names)

    def add(self, chunk: ChunkResult, skipped_rows: set[int]) -> None:
        """Write a chunk of encoded documents (rows from `chunk.start`), less the skipped ones."""
        lo, n = chunk.start, chunk.tokens_seen.size
        split = self.documents.split_code[lo : lo + n]
        img = self.documents.img_id[lo : lo + n]
        ok = np.ones(n, dtype=bool)
        ok[[row - lo for row in skipped_rows]] = False
        kept = chunk.tokens_kept  # zero for skipped documents: they yielded no tokens
        token_img = np.repeat(img, kept)  # (k,)
        single = split[0] == split[-1] and (split == split[0]).all()  # the usual chunk
        for code in [split[0]] if single else np.unique(split):
            in_split = split == code
            counts = self.counts[self.documents.splits[code]]
            counts["encoded"] += int((in_split & ok).sum())
            counts["pairs"] += int(kept[in_split].sum())
            counts["empty"] += int((in_split & ok & (kept == 0)).sum())
            counts["tokens"] += int(chunk.tokens_seen[in_split].sum())
        for original in self.originals:
            docs = np.isin(split, original.split_codes) & ok
            tokens = slice(None) if docs.all() else np.repeat(docs, kept)
            rows = np.empty((token_img[tokens].size, 2), dtype=np.int64)
            rows[:, 0], rows[:, 1] = token_img[tokens], chunk.word_ids[tokens]
            original.pairs.write(rows)
            original.img_ids.append(img[docs])
            original.row_counts.append(kept[docs])
        for code, builder in self.csr.items():
            docs = (split == code) & ok
            if docs.all():
                builder.add(img, chunk.csr_nnz, chunk.csr_columns, chunk.csr_values)
            elif docs.any():
                entries = np.repeat(docs, chunk.csr_nnz)
                builder.add(
                    img[docs],
                    chunk.csr_nnz[docs],
                    chunk.csr_columns[entries],
                    chunk.csr_values[entries],
                )
        if self.parquet is not None:
            self.parquet.pairs.write(
                {
                    "split": self._splits(np.repeat(split, kept)),
                    "img_id": token_img,
                    "word_id": chunk.word_ids,
                    "position": chunk.positions,
                }
            )
            good = np.flatnonzero(ok)
            self.parquet.images.write(
                {
                    "img_id": img[good],
                    "split": self._splits(split[good]),
                    "source_member": self.documents.members[lo + good],
                    "tokens_seen": chunk.tokens_seen[good],
                    "tokens_kept": chunk.tokens_kept[good],
                }
            )

    def close(self) -> WrittenOutputs:
        """Finish every file; return the file names written and the counts per split."""
        # Parquet first: it frees its buffers before the CSR matrices need memory.
        if self.parquet is not None:
            self.parquet.pairs.close()
            self.parquet.images.close()
            self.files += ["pairs.parquet", "images.parquet"]
        for original in self.originals:
            self.files += original.close(self.folder, self.min_df)
        for code, builder in self.csr.items():
            name = self.documents.spec.csr_name(self.documents.splits[code])
            builder.save(self.folder / name)
            self.files.append(name)
        return WrittenOutputs(self.files, self.counts)


MAX_IMAGE_ID = (1 << 28) - 1  # the authors' index has a row per id up to the largest: 4 GiB here


def _check_id_range(documents: Documents) -> None:
    row = int(np.argmax(documents.img_id))
    largest = int(documents.img_id[row])
    if largest > MAX_IMAGE_ID:
        item = bytes(documents.items[row]).decode("utf-8")
        split = documents.splits[documents.split_code[row]]
        raise InputError(
            f"Image id {largest:,} ({item!r}, {split}) is too "
            f"large: the authors' index and the CSR matrices have a row for every id up to the "
            f"largest, {(largest + 1) * 16 / 2**30:,.0f} GiB here. Expected ids below "
            f"{MAX_IMAGE_ID + 1:,}; check the list, or encode with --formats parquet only."
        )


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)
