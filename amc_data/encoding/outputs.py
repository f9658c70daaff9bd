"""The output folder of an encode: the writers for each format fed chunk by chunk, the staging
folder that is swapped in whole, the lock that keeps two encodes apart, and `encode.json`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import filelock
import numpy as np
import pyarrow as pa

from ..errors import ConfigError, InputError
from ..fetching.manifest import bundled_manifests, expected_checksums
from ..machine import release_memory
from .formats import (
    CsrBuilder,
    NpyRowWriter,
    ParquetTableWriter,
    arrow_array,
    dictionary_array,
    original_index,
    write_vocab_tsv,
)
from .inputs import ORIGINAL_OUTPUTS, Documents

if TYPE_CHECKING:
    from .core import ChunkResult

log = logging.getLogger(__name__)

PAIRS_ROW_GROUP = 1 << 21  # 2M rows of 13 bytes: ~26 MB a row group
IMAGES_ROW_GROUP = 1 << 18  # 256K rows with their member names: ~20 MB
SPLIT_TYPE = pa.dictionary(pa.int8(), pa.string())
PAIRS_SCHEMA = pa.schema(
    [("split", SPLIT_TYPE), ("img_id", pa.int64()), ("word_id", pa.int32()),
     ("position", pa.int32())]
)  # fmt: skip
IMAGES_SCHEMA = pa.schema(
    [("img_id", pa.int64()), ("split", SPLIT_TYPE), ("source_member", pa.string()),
     ("tokens_seen", pa.int32()), ("tokens_kept", pa.int32())]
)  # fmt: skip
VOCAB_SCHEMA = pa.schema([("word_id", pa.int32()), ("word", pa.string()), ("df", pa.int64())])


def csr_name(dataset: str, split: str) -> str:
    return f"{dataset}_{split}_csr.npz"


class OutputWriters:
    """Every output format of one encode, fed one chunk of documents at a time."""

    def __init__(
        self,
        folder: Path,
        documents: Documents,
        words: list[str],
        frequencies: np.ndarray,
        formats: tuple[str, ...],
        min_df: int,
    ) -> None:
        if {"original", "csr"} & set(formats) and documents.img_id.size:
            _check_id_range(documents)
        self.folder = folder
        self.documents = documents
        self.min_df = min_df
        self.outputs: list[str] = ["vocab.tsv"]
        # Documents per split = encoded + skipped: the encoder adds the skipped at the end.
        self.counts = {s: {"encoded": 0, "pairs": 0} for s in documents.splits}
        self._split_names = arrow_array(list(documents.splits), pa.string())
        write_vocab_tsv(folder / "vocab.tsv", words, frequencies)
        self.originals = []
        if "original" in formats:
            for output in ORIGINAL_OUTPUTS[documents.dataset]:
                writer = NpyRowWriter(folder / output.pairs_name(min_df), columns=2)
                codes = documents.split_codes(output.splits)
                self.originals.append((output, writer, codes, [], []))
        self.csr = {}
        if "csr" in formats:
            present = np.unique(documents.split)
            self.csr = {
                int(code): CsrBuilder(
                    len(words), folder, csr_name(documents.dataset, documents.splits[code])
                )
                for code in present
            }
        self.pairs = self.images = None
        if "parquet" in formats:
            self.pairs = ParquetTableWriter(
                folder / "pairs.parquet", PAIRS_SCHEMA, PAIRS_ROW_GROUP,
                dictionary_columns=["split", "word_id", "position"],
                statistics_columns=["split", "img_id", "word_id"],
            )  # fmt: skip
            self.images = ParquetTableWriter(
                folder / "images.parquet", IMAGES_SCHEMA, IMAGES_ROW_GROUP,
                dictionary_columns=["split", "tokens_seen", "tokens_kept"],
            )  # fmt: skip
            vocab = ParquetTableWriter(folder / "vocab.parquet", VOCAB_SCHEMA, 1 << 20)
            vocab.write({"word_id": np.arange(len(words)), "word": words, "df": frequencies})
            vocab.close()
            self.outputs.append("vocab.parquet")

    def _splits(self, codes: np.ndarray) -> pa.DictionaryArray:
        return dictionary_array(codes, self._split_names)

    def add(self, chunk: ChunkResult, skipped_rows: set[int]) -> None:
        """Write a chunk of encoded documents (rows from `chunk.start`), less the skipped ones."""
        lo, n = chunk.start, chunk.tokens_seen.size
        split = self.documents.split[lo : lo + n]
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
        for _output, writer, codes, index_ids, index_counts in self.originals:
            docs = np.isin(split, codes) & ok
            tokens = slice(None) if docs.all() else np.repeat(docs, kept)
            rows = np.empty((token_img[tokens].size, 2), dtype=np.int64)
            rows[:, 0], rows[:, 1] = token_img[tokens], chunk.word_ids[tokens]
            writer.write(rows)
            index_ids.append(img[docs])
            index_counts.append(kept[docs])
        for code, builder in self.csr.items():
            docs = (split == code) & ok
            if docs.all():
                builder.add(img, chunk.csr_nnz, chunk.csr_columns, chunk.csr_values)
            elif docs.any():
                entries = np.repeat(docs, chunk.csr_nnz)
                builder.add(
                    img[docs], chunk.csr_nnz[docs], chunk.csr_columns[entries],
                    chunk.csr_values[entries],
                )  # fmt: skip
        if self.pairs is not None and self.images is not None:
            self.pairs.write(
                {
                    "split": self._splits(np.repeat(split, kept)),
                    "img_id": token_img,
                    "word_id": chunk.word_ids,
                    "position": chunk.positions,
                }
            )
            rows = np.flatnonzero(ok)
            members = self.documents.members
            self.images.write(
                {
                    "img_id": img[rows],
                    "split": self._splits(split[rows]),
                    "source_member": members[lo + rows],
                    "tokens_seen": chunk.tokens_seen[rows],
                    "tokens_kept": chunk.tokens_kept[rows],
                }
            )

    def close(self) -> tuple[list[str], dict[str, dict[str, int]]]:
        """Finish every file; return the file names written and the counts per split."""
        # Parquet first: it frees its buffers before the CSR matrices need memory.
        for name, writer in (("pairs.parquet", self.pairs), ("images.parquet", self.images)):
            if writer is not None:
                writer.close()
                self.outputs.append(name)
        for output, writer, _codes, index_ids, index_counts in self.originals:
            writer.close()
            index = original_index(_concat(index_ids, np.int64), _concat(index_counts, np.int64))
            np.save(self.folder / output.index_name(self.min_df), index)
            del index
            release_memory()
            self.outputs += [output.pairs_name(self.min_df), output.index_name(self.min_df)]
        for code, builder in self.csr.items():
            name = csr_name(self.documents.dataset, self.documents.splits[code])
            builder.save(self.folder / name)
            self.outputs.append(name)
        return self.outputs, self.counts


MAX_IMAGE_ID = (1 << 28) - 1  # the authors' index has a row per id up to the largest: 4 GiB here


def _check_id_range(documents: Documents) -> None:
    row = int(np.argmax(documents.img_id))
    largest = int(documents.img_id[row])
    if largest > MAX_IMAGE_ID:
        item = bytes(documents.items[row]).decode("utf-8")
        raise InputError(
            f"Image id {largest:,} ({item!r}, {documents.splits[documents.split[row]]}) is too "
            f"large: the authors' index and the CSR matrices have a row for every id up to the "
            f"largest, {(largest + 1) * 16 / 2**30:,.0f} GiB here. Expected ids below "
            f"{MAX_IMAGE_ID + 1:,}; check the list, or encode with --formats parquet only."
        )


def _concat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
    return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype=dtype)


# -- the output folder ---------------------------------------------------------------------------
@contextlib.contextmanager
def output_lock(out_dir: Path, dataset: str) -> Iterator[None]:
    """Hold the output folder's lock; restore an interrupted swap; refuse a folder amc-data did
    not write, or one that holds another dataset's encoding. `out_dir` must be resolved (no
    symbolic link, no `.`): it is replaced by a rename beside it."""
    cwd = Path.cwd().resolve()
    if not out_dir.name or cwd == out_dir or out_dir in cwd.parents:
        raise ConfigError(
            f"{out_dir} cannot be the output folder: encode replaces its output folder with a "
            "rename, and this one is (or holds) the current folder. Choose a folder of its own, "
            "such as --out ./encoded."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out_dir.parent / f".{out_dir.name}.lock")
    try:
        lock.acquire(timeout=1)
    except filelock.Timeout:
        log.warning("waiting for another encode writing %s", out_dir)
        lock.acquire()
    try:
        _recover(out_dir)
        previous = read_manifest(out_dir)
        if out_dir.exists() and previous is None and any(out_dir.iterdir()):
            raise ConfigError(
                f"Output folder {out_dir} holds files amc-data did not write (no encode.json). "
                "Encode replaces its output folder as a whole, so it will not touch this one: "
                "choose another --out, or empty the folder."
            )
        if previous is not None and previous.get("dataset") != dataset:
            raise ConfigError(
                f"Output folder {out_dir} holds the {previous.get('dataset')} encoding; encoding "
                f"{dataset} there would replace it. Choose another --out (with 'all', each "
                "dataset gets its own folder), or delete that one first."
            )
        yield
    finally:
        lock.release()


def _recover(out_dir: Path) -> None:
    """Finish what a crash between the two renames of `commit_outputs` left, and tidy up."""
    leftovers = sorted(out_dir.parent.glob(f".{out_dir.name}.previous-*"))
    if leftovers and not out_dir.exists():
        log.warning("restoring %s from an interrupted run", out_dir)
        os.replace(leftovers.pop(), out_dir)
    for path in [*leftovers, *out_dir.parent.glob(f".{out_dir.name}.staging-*")]:
        if path.is_symlink():
            path.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A fresh folder beside `out_dir`, removed again unless it was committed."""
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.staging-", dir=out_dir.parent))
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def commit_outputs(staging: Path, out_dir: Path) -> None:
    """Replace `out_dir` by `staging` whole: readers see all old files or all new ones."""
    if out_dir.exists():
        previous = out_dir.with_name(f".{out_dir.name}.previous-{os.getpid()}")
        os.replace(out_dir, previous)
        os.replace(staging, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(staging, out_dir)


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    """The `encode.json` of an earlier run, or None."""
    try:
        return json.loads((out_dir / "encode.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", out_dir / "encode.json", exc)
        return None


def input_records(folder: Path, dataset: str, inputs: list[Path]) -> list[dict[str, Any]]:
    """Name, size, and the sha256 `fetch` holds the file to (from the manifest or the lock
    file's record), given only when the file still has the size fetch saw: encode does not
    re-hash its inputs, and must not vouch for a file that was swapped since."""
    manifest = bundled_manifests().get(dataset)
    known = expected_checksums(folder, manifest) if manifest is not None else {}
    records = []
    for path in inputs:
        size = path.stat().st_size if path.is_file() else None
        checksum = known.get(path.name)
        vouched = checksum is not None and checksum.sha256 and checksum.size in (None, size)
        records.append(
            {
                "name": path.name,
                "path": str(path),
                "size": size,
                "sha256": checksum.sha256 if vouched else None,
                "sha256_source": checksum.source if vouched else None,
            }
        )
    return records


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("amc-data", "numpy", "scipy", "pyarrow", "scikit-learn"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
