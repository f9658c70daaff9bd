"""Where features go: a memory-mapped `.npy` written chunk by chunk under a temporary name, a
progress record beside it that a later run resumes from, and the final rename.

Files, for `--out DIR/features.npy`:
  DIR/features.npy.partial         the features while they are written (a valid .npy)
  DIR/features.npy.progress.json   inputs done, rows written, images skipped so far (under
                                   torchrun, one `features.npy.progress.R-of-W.json` per rank)
  DIR/features.npy                 (N, R, D) float16/float32, renamed into place at the end
  DIR/feature_ids.npy              (N,) int64, the img_id of each row (else `<stem>_ids.npy`)
  DIR/features.json                the report: options, shape, skipped images, timings
  DIR/features_pooled.npy          (N, E) float16/float32, each image's pooled embedding, for a
                                   backbone that has one (CLIP; `<stem>_pooled.npy`), written
                                   beside the features as they are (`.partial` meanwhile)
Nothing exists at a final name until it is complete. Under torchrun each rank writes the rows of
its shard of the images (`shards`) into the one partial file, from the row where its shard
starts; rank 0 closes the gaps that skipped images leave between shards before the final cut.
Rows are written with positioned writes of exactly their bytes, not through a memory map: two
ranks on two hosts sharing the file over a network file system then never write back each
other's half of the page where their shards meet.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import filelock
import numpy as np

from ..errors import InputError, LockTimeoutError
from ..files import atomic_write_json
from .sources import SkippedImage

log = logging.getLogger(__name__)

PROGRESS_VERSION = 1
_COPY_ROWS = 4096  # rows per chunk when a partial file must be copied rather than truncated


@dataclass(frozen=True)
class OutputPaths:
    """The files one extraction reads and writes."""

    features: Path
    ids: Path
    report: Path
    partial: Path
    progress: Path
    lock: Path
    pooled: Path
    pooled_partial: Path

    @classmethod
    def for_output(
        cls, out: str | os.PathLike[str], ids: str | os.PathLike[str] | None = None
    ) -> OutputPaths:
        """Paths for features at `out`; ids at `ids`, else `feature_ids.npy` beside
        `features.npy` (the prepared-dataset names) or `<stem>_ids.npy` beside any other name."""
        out = Path(out)
        if out.suffix != ".npy":
            raise InputError(f"{out}: the features file must end in .npy (it is a numpy array).")
        if ids is None:
            ids = out.with_name(
                "feature_ids.npy" if out.name == "features.npy" else f"{out.stem}_ids.npy"
            )
        ids = Path(ids)
        if ids.resolve() == out.resolve():
            raise InputError(
                f"The ids file {ids} cannot be the features file; choose another --ids."
            )
        return cls(
            features=out,
            ids=ids,
            report=out.with_suffix(".json"),
            partial=out.with_name(out.name + ".partial"),
            progress=out.with_name(out.name + ".progress.json"),
            lock=out.with_name(f".{out.name}.lock"),
            pooled=out.with_name(f"{out.stem}_pooled.npy"),
            pooled_partial=out.with_name(f"{out.stem}_pooled.npy.partial"),
        )

    def progress_of(self, rank: int, world_size: int) -> Path:
        """The progress record of one rank's shard (`progress` itself for a single process)."""
        if world_size == 1:
            return self.progress
        return self.features.with_name(f"{self.features.name}.progress.{rank}-of-{world_size}.json")

    def progress_records(self) -> list[Path]:
        """Every progress record there is for this output, of any number of processes."""
        shards = sorted(self.features.parent.glob(f"{self.features.name}.progress.*-of-*.json"))
        return [path for path in [self.progress, *shards] if path.is_file()]


@contextlib.contextmanager
def output_lock(paths: OutputPaths) -> Iterator[None]:
    """Hold the output's lock for the whole run: two runs never write the same partial file."""
    paths.features.parent.mkdir(parents=True, exist_ok=True)
    paths.ids.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(paths.lock)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        raise LockTimeoutError(
            f"Another amc-data features run is writing {paths.features} (it holds {paths.lock}). "
            "Wait for it to finish, or choose another --out."
        ) from None
    try:
        yield
    finally:
        lock.release()


@dataclass(frozen=True)
class Progress:
    """What one shard has done so far: its inputs `[start, next_input)` handled, and their rows
    written at `[start, start + rows)` of the partial file. A single process has one shard, the
    whole plan; under torchrun rank r has shard r of `bounds` (shard r is `[b[r], b[r+1])`)."""

    fingerprint: str  # of the inputs and of every option that changes the numbers
    shape: tuple[int, int, int]  # of the partial file: (planned images, R, D)
    dtype: str
    next_input: int = 0
    rows: int = 0
    skipped: list[SkippedImage] = field(default_factory=list)  # while decoding
    rank: int = 0
    world_size: int = 1
    bounds: tuple[int, ...] = ()  # where each shard starts, then the planned count
    pooled_dim: int = 0  # E of the pooled embeddings written beside the rows; 0: none

    @property
    def pooled_shape(self) -> tuple[int, int] | None:
        """The shape of the pooled partial file, when there is one."""
        return (self.shape[0], self.pooled_dim) if self.pooled_dim else None

    @property
    def start(self) -> int:
        """The shard's first input, and the partial file's row its rows start at."""
        return self.bounds[self.rank] if self.bounds else 0

    @property
    def stop(self) -> int:
        """One past the shard's last input."""
        return self.bounds[self.rank + 1] if self.bounds else self.shape[0]

    @property
    def done(self) -> bool:
        return self.next_input >= self.stop


def load_progress(paths: OutputPaths, record_path: Path | None = None) -> Progress | None:
    """A progress record of an interrupted run (`paths.progress` unless `record_path` is given),
    if it is readable and its partial file is there."""
    path = record_path or paths.progress
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable progress record %s: %s", path, exc)
        return None
    if record.get("version") != PROGRESS_VERSION or not paths.partial.is_file():
        log.warning("ignoring %s: no partial file beside it, or another format", path)
        return None
    try:
        shape = tuple(int(v) for v in record["shape"])
        progress = Progress(
            fingerprint=str(record["fingerprint"]),
            shape=shape,  # type: ignore[arg-type]
            dtype=str(record["dtype"]),
            next_input=int(record["next_input"]),
            rows=int(record["rows"]),
            skipped=[SkippedImage(**item) for item in record["skipped"]],
            rank=int(record.get("rank", 0)),
            world_size=int(record.get("world_size", 1)),
            bounds=tuple(int(v) for v in record.get("bounds", (0, shape[0]))),
            pooled_dim=int(record.get("pooled_dim", 0)),
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        log.warning("ignoring malformed progress record %s: %s", path, exc)
        return None
    bounds = progress.bounds
    if (
        len(bounds) != progress.world_size + 1
        or not 0 <= progress.rank < progress.world_size
        or list(bounds) != sorted(bounds)
        or not progress.start <= progress.next_input <= progress.stop
        or not 0 <= progress.rows <= progress.next_input - progress.start
    ):
        log.warning("ignoring inconsistent progress record %s", path)
        return None
    return progress


def save_progress(paths: OutputPaths, progress: Progress) -> None:
    """Write the record atomically (temp file, then rename): a crash leaves the old one whole."""
    record = {"version": PROGRESS_VERSION, **asdict(progress)}
    write_json(paths.progress_of(progress.rank, progress.world_size), record)


def write_json(path: Path, content: dict[str, Any]) -> None:
    """Write JSON to a temporary name beside `path` and rename it into place."""
    atomic_write_json(path, content, indent=1)


def discard(paths: OutputPaths) -> None:
    """Forget an interrupted run: remove its partial file and progress records."""
    for path in (paths.partial, paths.pooled_partial, *paths.progress_records()):
        path.unlink(missing_ok=True)


def close_gaps(path: Path, shards: list[tuple[int, int]]) -> int:
    """Move each shard's rows, given as (first row, rows), right after the previous shard's, in
    the flushed, unmapped partial file `path`; return the rows in all. Rows only move towards the
    start, in order, so none is overwritten before it is moved. Nothing moves when no image was
    skipped before the last shard (and never for a single process)."""
    offset = 0
    moves = []
    for start, rows in shards:
        if start != offset and rows:
            moves.append((start, offset, rows))
        offset += rows
    if moves:
        array = np.lib.format.open_memmap(path, mode="r+")
        for start, target, rows in moves:
            for done in range(0, rows, _COPY_ROWS):
                count = min(_COPY_ROWS, rows - done)
                array[target + done : target + done + count] = array[
                    start + done : start + done + count
                ]
        array.flush()
        del array
    return offset


class PartialRows:
    """Writes rows of the partial `.npy` at their positions; `flush` makes them durable.

    A context manager: the file is closed on leaving it."""

    def __init__(self, path: Path, header_length: int, shape: tuple[int, ...], dtype: np.dtype):
        self.shape = shape
        self.dtype = dtype
        self._header_length = header_length
        self._row_bytes = int(np.prod(shape[1:])) * dtype.itemsize
        self._fd = os.open(path, os.O_WRONLY)

    def __enter__(self) -> PartialRows:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, row: int, rows: np.ndarray) -> None:
        """Write `rows` (k, R, D) of this file's dtype from row `row` on."""
        if rows.shape[1:] != self.shape[1:] or not 0 <= row <= self.shape[0] - len(rows):
            raise ValueError(f"rows {rows.shape} at {row} do not fit {self.shape}")
        data = np.ascontiguousarray(rows, dtype=self.dtype).data.cast("B")
        offset = self._header_length + row * self._row_bytes
        while data:  # pwrite may write less than asked
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class PartialOutput:
    """The partial files of one extraction: the regions and, for a backbone that has them, the
    pooled embeddings, written row for row together. A context manager: both are closed on
    leaving it."""

    def __init__(self, regions: PartialRows, pooled: PartialRows | None) -> None:
        self.regions = regions
        self.pooled = pooled

    def __enter__(self) -> PartialOutput:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def write(self, row: int, regions: np.ndarray, pooled: np.ndarray | None) -> None:
        """Write `regions` (k, R, D), and `pooled` (k, E) where this output has them."""
        if (pooled is None) != (self.pooled is None):
            raise ValueError("pooled embeddings given to an output without them, or missing")
        self.regions.write(row, regions)
        if self.pooled is not None and pooled is not None:
            self.pooled.write(row, pooled)

    def flush(self) -> None:
        self.regions.flush()
        if self.pooled is not None:
            self.pooled.flush()

    def close(self) -> None:
        self.regions.close()
        if self.pooled is not None:
            self.pooled.close()


def open_partial(paths: OutputPaths, progress: Progress, *, fresh: bool) -> PartialOutput:
    """The partial features file (and the pooled one, where the progress has pooled
    embeddings), created (`fresh`: a header, then zeros) or opened for writing where it
    stopped."""
    dtype = np.dtype(progress.dtype)
    regions = _open_rows(paths.partial, progress.shape, dtype, fresh=fresh)
    pooled_shape = progress.pooled_shape
    if pooled_shape is None:
        return PartialOutput(regions, None)
    try:
        return PartialOutput(
            regions, _open_rows(paths.pooled_partial, pooled_shape, dtype, fresh=fresh)
        )
    except BaseException:
        regions.close()
        raise


def _open_rows(path: Path, shape: tuple[int, ...], dtype: np.dtype, *, fresh: bool) -> PartialRows:
    if fresh:
        array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        array.flush()
        del array
    try:
        with open(path, "rb") as file:
            version = np.lib.format.read_magic(file)
            found_shape, fortran, found = _read_header(file, version)
            header_length = file.tell()
            size = os.fstat(file.fileno()).st_size
    except FileNotFoundError:
        raise InputError(
            f"{path} is missing beside the rest of an interrupted run. Start again with "
            "--no-resume."
        ) from None
    except ValueError as exc:
        raise InputError(
            f"{path} is not a .npy file ({exc}). Start again with --no-resume."
        ) from exc
    expected_size = header_length + int(np.prod(shape)) * dtype.itemsize
    if tuple(found_shape) != shape or found != dtype or fortran or size != expected_size:
        raise InputError(
            f"{path} is {tuple(found_shape)} {found} ({size} bytes), but its progress record "
            f"says {shape} {dtype}. Start again with --no-resume."
        )
    return PartialRows(path, header_length, shape, dtype)


def finish(
    paths: OutputPaths,
    shape: tuple[int, ...],
    dtype: np.dtype,
    ids: np.ndarray,
    report: dict[str, Any],
    pooled_dim: int = 0,
) -> None:
    """Cut the partial files (flushed, no longer mapped) to the `shape[0]` rows written, then
    rename ids, pooled embeddings, features and report into place (the report last: its
    presence says the others are complete)."""
    _shrink_rows(paths.partial, shape, dtype)
    if pooled_dim:
        _shrink_rows(paths.pooled_partial, (shape[0], pooled_dim), dtype)
        _fsync(paths.pooled_partial)
    temporary_ids = paths.ids.with_name(f".{paths.ids.name}.tmp-{os.getpid()}")
    with open(temporary_ids, "wb") as file:
        np.save(file, np.ascontiguousarray(ids, dtype=np.int64))
    _fsync(paths.partial)
    os.replace(temporary_ids, paths.ids)
    if pooled_dim:
        os.replace(paths.pooled_partial, paths.pooled)
    os.replace(paths.partial, paths.features)
    write_json(paths.report, report)
    for record in paths.progress_records():
        record.unlink(missing_ok=True)


def _shrink_rows(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Make the .npy at `path` hold only its first `shape[0]` rows.

    numpy pads a header so the first axis can change in place, so this rewrites the header and
    truncates: the result is byte for byte what `open_memmap` writes for `shape`. Should the
    header length differ, the rows are copied into a new file instead."""
    with open(path, "r+b") as file:
        version = np.lib.format.read_magic(file)
        old_shape, _, _ = _read_header(file, version)
        header_length = file.tell()
        if tuple(old_shape) == tuple(shape):
            return
        header = io.BytesIO()
        description = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": shape,
        }
        if version == (1, 0):
            np.lib.format.write_array_header_1_0(header, description)
        else:
            np.lib.format.write_array_header_2_0(header, description)
        if len(header.getvalue()) == header_length:
            file.seek(0)
            file.write(header.getvalue())
            file.truncate(header_length + int(np.prod(shape)) * dtype.itemsize)
            return
    source = np.load(path, mmap_mode="r")
    copy_path = path.with_name(path.name + ".copy")
    target = np.lib.format.open_memmap(copy_path, mode="w+", dtype=dtype, shape=shape)
    for start in range(0, shape[0], _COPY_ROWS):
        target[start : start + _COPY_ROWS] = source[start : start + _COPY_ROWS]
    target.flush()
    del source, target
    os.replace(copy_path, path)


def _read_header(file: Any, version: tuple[int, int]) -> tuple[tuple[int, ...], bool, np.dtype]:
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(file)
    return np.lib.format.read_array_header_2_0(file)


def _fsync(path: Path) -> None:
    with open(path, "rb") as file:
        os.fsync(file.fileno())


def read_report(paths: OutputPaths) -> dict[str, Any] | None:
    """The report of a finished run at these paths, if its features and ids are still there."""
    try:
        report = json.loads(paths.report.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not (paths.features.is_file() and paths.ids.is_file()):
        return None
    try:
        features = np.load(paths.features, mmap_mode="r")
        ids = np.load(paths.ids, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if list(features.shape) != report.get("shape") or ids.shape != (features.shape[0],):
        return None
    if report.get("pooled") is not None:  # the pooled embeddings must be there too
        try:
            pooled = np.load(paths.pooled, mmap_mode="r")
        except (OSError, ValueError):
            return None
        if list(pooled.shape) != report["pooled"].get("shape"):
            return None
    return report
