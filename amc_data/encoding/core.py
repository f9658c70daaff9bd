"""`encode`: the authors' keyword encoding (SPEC §2), exactly, streaming and in parallel.

Two passes over the documents, each spread over `jobs` worker processes that read members
straight from the archives: the first counts document frequencies over the fitting set and fixes
the vocabulary; the second turns every document into word ids. Results come back in order, a
chunk at a time, and go straight to the writers in `formats`; everything is written into a
staging folder that replaces the output folder in one rename, so a crash or Ctrl-C leaves the
previous outputs as they were.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import multiprocessing
import os
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

from ..archive import Archive
from ..datadir import dataset_dir
from ..errors import AmcDataError, ArchiveError, ConfigError, InputError
from ..machine import cpu_count, release_memory
from ..progress import progress_bar
from .analyzer import (
    Analyzer,
    KeywordTokenIds,
    count_document_frequencies,
    document_from_keywords,
    fit_vocabulary,
    load_stop_words,
)
from .inputs import (
    FORMATS,
    SKIP_HINT,
    Documents,
    OnError,
    SkippedItem,
    check_dataset,
    input_files,
    plan_parts,
)
from .outputs import (
    OutputWriters,
    commit_outputs,
    input_records,
    output_lock,
    package_versions,
    read_manifest,
    staging_folder,
)

log = logging.getLogger(__name__)

_CHUNK = 4096  # documents per task: small enough for smooth progress, large enough to amortise IPC


@dataclass(frozen=True)
class EncodeConfig:
    """What `encode` does; the defaults are the authors' settings."""

    min_df: int = 6
    stop_words: str = "english"  # "english", "none", or the path of a word list
    formats: tuple[str, ...] = FORMATS
    on_error: OnError = "fail"
    jobs: int | None = None  # worker processes; None: all cores
    force: bool = False
    progress: bool = False

    def __post_init__(self) -> None:
        # A path is welcome as stop_words; kept as a string, so encode.json can record it.
        object.__setattr__(self, "stop_words", os.fspath(self.stop_words))
        object.__setattr__(self, "formats", tuple(self.formats))
        unknown = sorted(set(self.formats) - set(FORMATS))
        if unknown or not self.formats:
            raise ConfigError(
                f"Unknown output format(s) {unknown or '(none given)'}; choose from "
                f"{', '.join(FORMATS)}."
            )
        if self.on_error not in ("fail", "skip"):
            raise ConfigError(f"on_error must be 'fail' or 'skip', not {self.on_error!r}.")
        if isinstance(self.min_df, bool) or not isinstance(self.min_df, int) or self.min_df < 1:
            raise ConfigError(
                f"min_df must be a whole number of documents >= 1 (the authors used 6), not "
                f"{self.min_df!r}."
            )
        if self.jobs is not None and (type(self.jobs) is not int or self.jobs < 1):
            raise ConfigError(f"jobs must be a whole number >= 1, not {self.jobs!r}.")


@dataclass(frozen=True)
class EncodeResult:
    """What an encode produced (or found already up to date)."""

    dataset: str
    out_dir: Path
    up_to_date: bool
    vocabulary_size: int
    counts: dict[str, dict[str, int]]  # split -> documents, encoded, skipped, pairs
    skipped: tuple[SkippedItem, ...] = ()
    outputs: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)


# -- worker side ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Task:
    start: int  # index of the chunk's first document
    archive: Archive  # pickles as its path: a worker opens the file itself
    members: np.ndarray  # (n,) bytes
    locations: np.ndarray  # (n, 6)


_state: dict[str, Any] = {}  # per worker process: archives, analyzer, vocabulary table


def _init_worker_process(*initargs: Any) -> None:
    # A worker builds only acyclic data (parsed JSON, lists of ids): the cyclic garbage
    # collector would spend its time scanning them for nothing.
    gc.disable()
    _init_worker(*initargs)


def _init_worker(analyzer: Analyzer, words: list[str]) -> None:
    _state["analyzer"] = analyzer
    _state["token_ids"] = KeywordTokenIds(analyzer, words)
    _state["n_words"] = len(words)


class _BadDocument(Exception):
    pass


def _parse_json(data: bytes) -> Any:
    """The file read as UTF-8 text and parsed by `json`, sped up by orjson: for anything orjson
    accepts the result is the same, and what it refuses (NaN, lone surrogates, deep nesting)
    goes to `json`, which decides. Like the reference, a BOM or another encoding is an error."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data.decode("utf-8"))


def _keywords(archive: Archive, name: str, location: list[int]) -> list[str]:
    """The member's keywords, or `_BadDocument` saying what is wrong with it."""
    try:
        record = _parse_json(archive.read_at(name, location))
    except ArchiveError as exc:
        raise _BadDocument(str(exc)) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise _BadDocument(f"{archive.path} member {name!r} is not valid JSON ({exc}).") from None
    tagging = record.get("tagging") if type(record) is dict else None
    keywords = tagging.get("keywords") if type(tagging) is dict else None
    if type(keywords) is list:
        try:
            document_from_keywords(keywords)  # the quickest check that every item is a string
            return keywords
        except TypeError:
            pass
    where = f"{archive.path} member {name!r}"
    expected = 'expected {"tagging": {"keywords": [strings]}}'
    if type(record) is not dict:
        found = f"a JSON {type(record).__name__}"
    elif type(tagging) is not dict:
        found = "no 'tagging' object"
    elif keywords is None:
        found = "no 'keywords'"
    else:
        found = f"keywords {json.dumps(keywords, ensure_ascii=False)[:120]}"
    raise _BadDocument(f"{where} holds {found}; {expected}.")


def _documents(task: _Task, errors: list[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """(offset in the chunk, keywords) of each good document; bad ones go to `errors`."""
    archive = task.archive
    locations = task.locations.tolist()  # plain ints: numpy scalars are slow to unpack
    names = [name.decode("utf-8") for name in task.members.tolist()]
    for offset, (name, location) in enumerate(zip(names, locations, strict=True)):
        try:
            yield offset, _keywords(archive, name, location)
        except _BadDocument as exc:
            errors.append((offset, str(exc)))


@dataclass
class _Counts:
    document_frequency: Counter[str]
    documents: int
    errors: list[tuple[int, str]]


def _count_chunk(task: _Task) -> _Counts:
    errors: list[tuple[int, str]] = []
    documents = [document_from_keywords(keywords) for _, keywords in _documents(task, errors)]
    counter = count_document_frequencies(_state["analyzer"], documents)
    return _Counts(counter, len(documents), errors)


@dataclass
class ChunkResult:
    """Word ids of a chunk of documents, as flat arrays (no Python list per document)."""

    start: int
    tokens_seen: np.ndarray  # (n,) int32
    tokens_kept: np.ndarray  # (n,) int32
    word_ids: np.ndarray  # (k,) int32, in document then token order
    positions: np.ndarray  # (k,) int32: index of the token among the document's tokens
    csr_nnz: np.ndarray  # (n,) int32: distinct words per document
    csr_columns: np.ndarray  # (u,) int32
    csr_values: np.ndarray  # (u,) int32: counts
    errors: list[tuple[int, str]]


def _encode_chunk(task: _Task) -> ChunkResult:
    n = len(task.members)
    errors: list[tuple[int, str]] = []
    extend_ids = _state["token_ids"].extend_ids
    flat: list[int] = []
    offsets: list[int] = []
    ends: list[int] = []
    for offset, keywords in _documents(task, errors):
        extend_ids(flat, keywords)
        offsets.append(offset)
        ends.append(len(flat))
    tokens_seen = np.zeros(n, dtype=np.int32)
    tokens_seen[offsets] = np.diff(ends, prepend=0)
    ids = np.array(flat, dtype=np.int32)  # (t,): one per analyzer token, -1 outside the vocab
    del flat
    token_doc = np.repeat(np.arange(n), tokens_seen)  # (t,)
    doc_start = np.cumsum(tokens_seen, dtype=np.int64) - tokens_seen
    positions = np.arange(ids.size, dtype=np.int64) - doc_start[token_doc]
    keep = ids >= 0  # in the vocabulary
    word_ids, kept_doc = ids[keep], token_doc[keep]
    # Counts per (document, word) for the CSR matrices: one sort per chunk.
    n_words = max(_state["n_words"], 1)
    keys, counts = np.unique(kept_doc.astype(np.int64) * n_words + word_ids, return_counts=True)
    return ChunkResult(
        start=task.start,
        tokens_seen=tokens_seen,
        tokens_kept=np.bincount(kept_doc, minlength=n).astype(np.int32),
        word_ids=word_ids,
        positions=positions[keep].astype(np.int32),
        csr_nnz=np.bincount(keys // n_words, minlength=n).astype(np.int32),
        csr_columns=(keys % n_words).astype(np.int32),
        csr_values=counts.astype(np.int32),
        errors=errors,
    )


# -- main side -----------------------------------------------------------------------------------
def _tasks(documents: Documents, rows: np.ndarray) -> Iterator[_Task]:
    """Chunks of the given document rows; a chunk never spans two archives."""
    if rows.size == 0:
        return
    boundaries = np.flatnonzero(np.diff(documents.archive[rows])) + 1
    for run in np.split(rows, boundaries):
        for lo in range(0, run.size, _CHUNK):
            chunk = run[lo : lo + _CHUNK]
            yield _Task(
                start=int(chunk[0]),
                archive=documents.archives[documents.archive[chunk[0]]],
                members=documents.members[chunk],
                locations=documents.locations[chunk],
            )


T = TypeVar("T")
R = TypeVar("R")


def _ordered_map(
    executor: Executor | None, fn: Callable[[T], R], tasks: Iterable[T], window: int
) -> Iterator[R]:
    """`map` in order with at most `window` tasks in flight, so results never pile up."""
    if executor is None:
        yield from map(fn, tasks)
        return
    pending: deque[Any] = deque()
    iterator = iter(tasks)
    for task in iterator:
        pending.append(executor.submit(fn, task))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def _worker_pool(jobs: int, initargs: tuple[Any, ...]) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes, or None to work in this process (jobs=1); shut down on exit."""
    if jobs == 1:
        _init_worker(*initargs)
        try:
            yield None
        finally:
            _state.clear()  # the keyword cache can be large: not kept after the run
        return
    # On Linux, fork shares the parent's imports and data; elsewhere fork is unsafe or absent
    # and the platform's default start method is used.
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)
    # What the workers inherit stays shared only if nothing writes to it: keep the garbage
    # collector's bookkeeping off those objects while the workers live.
    gc.freeze()
    try:
        with ProcessPoolExecutor(
            jobs, mp_context=context, initializer=_init_worker_process, initargs=initargs
        ) as executor:
            # Start every worker now, while this process runs no other thread: forking a
            # process with threads can deadlock the child.
            for _ in executor.map(_started, range(jobs)):
                pass
            yield executor
    except BrokenProcessPool as exc:
        raise AmcDataError(
            "A worker process died before finishing its part (out of memory, or killed). "
            "Nothing was written. Run again with fewer --jobs."
        ) from exc
    finally:
        gc.unfreeze()


def _started(_: int) -> None:
    """A task that does nothing: submitting it makes the pool start its processes."""


def _handle_errors(
    errors: list[tuple[int, str]],
    start: int,
    documents: Documents,
    config: EncodeConfig,
    skipped: dict[int, SkippedItem],
) -> None:
    for offset, message in errors:
        if config.on_error == "fail":
            raise InputError(f"{message} {SKIP_HINT}")
        row = start + offset
        split = documents.splits[documents.split[row]]
        member = bytes(documents.members[row]).decode("utf-8")
        item = bytes(documents.items[row]).decode("utf-8")
        skipped[row] = SkippedItem(split, item, member, message)


def _fit(
    parts: Iterator[Documents], analyzer: Analyzer, config: EncodeConfig, jobs: int
) -> tuple[list[str], np.ndarray, Documents]:
    """Plan the documents and count document frequencies over the fitting set; return the
    vocabulary, its document frequencies, and all the documents.

    The workers start before planning does (planning uses threads, and processes must not be
    forked beside them) and count the fitting set (all in the plan's first part) while the rest
    is planned. Bad documents stop the run here under `on_error="fail"`; under "skip" they are
    left out of the counts and recorded by the encoding pass, which meets them again.
    """
    frequency: Counter[str] = Counter()
    n_documents = 0
    with _worker_pool(jobs, (analyzer, [])) as executor:
        first = next(parts)
        tasks = list(_tasks(first, np.flatnonzero(first.fit)))
        if executor is None:
            results: Iterable[_Counts] = map(_count_chunk, tasks)
        else:  # a few dozen tasks: all submitted at once, so the workers start right away
            futures = [executor.submit(_count_chunk, task) for task in tasks]
            results = (future.result() for future in futures)
        documents = Documents.concat([first, *parts])
        release_memory()  # planning's temporaries
        with progress_bar(
            total=int(first.fit.sum()), desc="fitting vocabulary", unit="doc",
            enabled=config.progress,
        ) as bar:  # fmt: skip
            for counts in results:
                if counts.errors and config.on_error == "fail":
                    raise InputError(f"{counts.errors[0][1]} {SKIP_HINT}")
                frequency.update(counts.document_frequency)
                n_documents += counts.documents
                bar.update(counts.documents + len(counts.errors))
    words = fit_vocabulary(frequency, n_documents, config.min_df)
    return words, np.array([frequency[word] for word in words], dtype=np.int64), documents


def _fingerprint(dataset: str, inputs: list[Path], config: EncodeConfig) -> dict[str, Any]:
    """What decides the outputs: input identities, parameters, and this package's version."""
    from ..version import __version__

    stop_words = config.stop_words
    if stop_words not in ("english", "none"):
        stat = Path(stop_words).stat()
        stop_words = f"{Path(stop_words).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return {
        "dataset": dataset,
        "inputs": [{"name": path.name, **_identity(path)} for path in inputs],
        "min_df": config.min_df,
        "stop_words": stop_words,
        "formats": sorted(config.formats),
        "on_error": config.on_error,
        "amc_data": __version__,
    }


def _identity(path: Path) -> dict[str, int]:
    """Size and modification time: of the file, or summed over a folder's files (an unzipped
    archive changes inside, not at its top)."""
    if not path.is_dir():
        stat = path.stat()
        return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    files = size = newest = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            stat = os.stat(os.path.join(folder, name))
            files, size, newest = files + 1, size + stat.st_size, max(newest, stat.st_mtime_ns)
    return {"files": files, "size": size, "mtime_ns": newest}


def encode(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    config: EncodeConfig | None = None,
) -> EncodeResult:
    """Encode `dataset` ("clickture" or "coco") from `<data_dir>/<dataset>/` into `out`
    (default `<data_dir>/<dataset>/encoded/`); return what was written."""
    check_dataset(dataset)
    config = config or EncodeConfig()
    folder = dataset_dir(data_dir, dataset)
    # Resolved, so that a symbolic link is written through and `.` has a name and a parent.
    out_dir = (Path(out) if out is not None else folder / "encoded").expanduser().resolve()
    inputs = input_files(dataset, folder)
    analyzer = Analyzer(load_stop_words(config.stop_words))  # a bad list fails here, clearly
    fingerprint = _fingerprint(dataset, inputs, config)
    with output_lock(out_dir, dataset):
        previous = read_manifest(out_dir)
        if not config.force and _up_to_date(out_dir, previous, fingerprint):
            log.info("%s is up to date with its inputs; nothing to do", out_dir)
            return _result_from_manifest(out_dir, previous)
        with staging_folder(out_dir) as staging:
            result, manifest = _encode_into(staging, dataset, folder, inputs, config, analyzer)
            manifest["fingerprint"] = fingerprint
            (staging / "encode.json").write_text(json.dumps(manifest, indent=2) + "\n")
            commit_outputs(staging, out_dir)
    return replace(result, out_dir=out_dir)


def _encode_into(
    staging: Path,
    dataset: str,
    folder: Path,
    inputs: list[Path],
    config: EncodeConfig,
    analyzer: Analyzer,
) -> tuple[EncodeResult, dict[str, Any]]:
    jobs = config.jobs or cpu_count()
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    skipped_rows: dict[int, SkippedItem] = {}
    parts = plan_parts(dataset, folder, config.on_error)
    words, frequencies, documents = _fit(parts, analyzer, config, jobs)
    seconds["plan_and_fit"] = time.perf_counter() - began

    mark = time.perf_counter()
    writers = OutputWriters(staging, documents, words, frequencies, config.formats, config.min_df)
    rows = np.arange(len(documents))
    with (
        _worker_pool(jobs, (analyzer, words)) as executor,
        progress_bar(
            total=len(documents), desc=f"encoding {dataset}", unit="doc", enabled=config.progress
        ) as bar,
    ):
        for chunk in _ordered_map(executor, _encode_chunk, _tasks(documents, rows), 2 * jobs):
            _handle_errors(chunk.errors, chunk.start, documents, config, skipped_rows)
            writers.add(chunk, {chunk.start + offset for offset, _ in chunk.errors})
            bar.update(chunk.tokens_seen.size)
    documents.locations = documents.locations[:0]  # not needed to finish the files
    release_memory()
    outputs, counts = writers.close()
    seconds["encode"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - began

    skipped = (*documents.skipped, *(skipped_rows[row] for row in sorted(skipped_rows)))
    for split, split_counts in counts.items():
        split_counts["skipped"] = sum(item.split == split for item in skipped)
        split_counts["documents"] = split_counts["encoded"] + split_counts["skipped"]
        counts[split] = {key: split_counts[key] for key in ("documents", "encoded", "skipped",
                                                            "pairs")}  # fmt: skip
    result = EncodeResult(
        dataset=dataset,
        out_dir=staging,
        up_to_date=False,
        vocabulary_size=len(words),
        counts=counts,
        skipped=tuple(skipped),
        outputs=(*outputs, "encode.json"),
        seconds=seconds,
    )
    return result, _manifest(result, documents, inputs, folder, config, jobs)


def _manifest(
    result: EncodeResult,
    documents: Documents,
    inputs: list[Path],
    folder: Path,
    config: EncodeConfig,
    jobs: int,
) -> dict[str, Any]:
    return {
        "dataset": result.dataset,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": input_records(folder, result.dataset, inputs),
        "parameters": {
            "min_df": config.min_df,
            "stop_words": config.stop_words,
            "formats": list(config.formats),
            "on_error": config.on_error,
            "jobs": jobs,
        },
        "packages": package_versions(),
        "vocabulary_size": result.vocabulary_size,
        "counts": result.counts,
        "absent_splits": list(documents.absent_splits),
        "skipped": [asdict(item) for item in result.skipped],
        "seconds": {key: round(value, 3) for key, value in result.seconds.items()},
        "outputs": list(result.outputs),
    }


def _up_to_date(out_dir: Path, previous: dict[str, Any] | None, fingerprint: dict) -> bool:
    if not previous or previous.get("fingerprint") != fingerprint:
        return False
    return all((out_dir / name).exists() for name in previous.get("outputs", []))


def _result_from_manifest(out_dir: Path, manifest: dict[str, Any]) -> EncodeResult:
    return EncodeResult(
        dataset=manifest["dataset"],
        out_dir=out_dir,
        up_to_date=True,
        vocabulary_size=manifest["vocabulary_size"],
        counts=manifest["counts"],
        skipped=tuple(SkippedItem(**item) for item in manifest.get("skipped", [])),
        outputs=tuple(manifest.get("outputs", [])),
        seconds={},
    )
