"""Load what `encode` wrote: one split's CSR matrix, the vocabulary and the image table, in one
call, with the checks that catch a half-copied or mismatched output folder."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import scipy.sparse

from ..datadir import dataset_dir
from ..errors import InputError
from ..spec import dataset_spec
from .formats import VOCAB_HEADER, read_vocab_tsv
from .record import RECORD_NAME, read_record


@dataclass(frozen=True)
class EncodedSplit:
    """One split of an encoded dataset.

    `matrix[i, j]` counts word `vocabulary[j]` in the keywords of image `i` (rows are image ids,
    so most rows of a sparse id space are empty); `images` has one row per encoded image.
    """

    dataset: str
    split: str
    matrix: scipy.sparse.csr_matrix  # (max img_id + 1, len(vocabulary)) int32 counts
    vocabulary: list[str]
    images: pd.DataFrame  # img_id, split, source_member, tokens_seen, tokens_kept

    def keywords(self, img_id: int) -> dict[str, int]:
        """The vocabulary words of image `img_id` with their counts."""
        if not 0 <= img_id < self.matrix.shape[0]:
            return {}
        row = self.matrix[img_id]
        return {self.vocabulary[j]: int(c) for j, c in zip(row.indices, row.data, strict=True)}


def read_vocabulary(out_dir: Path) -> list[str]:
    """Words in id order, from `vocab.tsv`."""
    words, _ = read_vocab_tsv(
        out_dir / "vocab.tsv",
        VOCAB_HEADER,
        missing="run `amc-data encode` first.",
        fix="Encode again (amc-data encode --force).",
    )
    return words


def load_encoded(
    dataset: str,
    split: str,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
) -> EncodedSplit:
    """Load split `split` of an encoded `dataset` from `out` (default
    `<data_dir>/<dataset>/encoded`): CSR matrix, vocabulary and image table."""
    spec = dataset_spec(dataset)
    spec.check_split(split)
    out_dir = Path(out) if out is not None else dataset_dir(data_dir, dataset) / "encoded"
    record = read_record(out_dir)
    if record is None:
        raise InputError(
            f"{out_dir} holds no encode record ({RECORD_NAME}): run `amc-data encode {dataset}` "
            "first."
        )
    if record["dataset"] != dataset:
        found = record["dataset"]
        raise InputError(f"{out_dir} holds an encoding of {found!r}, not {dataset!r}.")
    matrix_path = out_dir / spec.csr_name(split)
    images_path = out_dir / "images.parquet"
    for path, fmt in ((matrix_path, "csr"), (images_path, "parquet")):
        if not path.exists():
            raise InputError(
                f"{path} not found: the encoding in {out_dir} was made without the {fmt} format "
                f"or has no {split} documents. Run `amc-data encode {dataset} --force` with "
                f"--formats including {fmt}."
            )
    vocabulary = read_vocabulary(out_dir)
    matrix = scipy.sparse.load_npz(matrix_path).tocsr()
    if matrix.shape[1] != len(vocabulary):
        raise InputError(
            f"{matrix_path} has {matrix.shape[1]} columns but vocab.tsv has {len(vocabulary)} "
            "words: the folder mixes two encodings. Encode again with --force."
        )
    images = pq.read_table(images_path, filters=[("split", "=", split)]).to_pandas()
    images["split"] = images["split"].astype(str)
    return EncodedSplit(dataset, split, matrix, vocabulary, images.reset_index(drop=True))
