"""The worker side of an encode: chunks of documents read straight from the archives, turned
into document frequencies (the fitting pass) or word ids (the encoding pass), in a pool of
processes that die with the process that started them.

`ChunkResult` is what the encoding pass hands to the writers in `outputs`.
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import orjson

from ..archive import Archive
from ..errors import AmcDataError, ArchiveError
from ..machine import die_with_parent
from .analyzer import (
    MAX_KEYWORD_LENGTH,
    Analyzer,
    KeywordTokenIds,
    count_document_frequencies,
    document_from_keywords,
)
from .inputs import Documents

CHUNK = 4096  # documents per task: small enough for smooth progress, large enough to amortise IPC


@dataclass(frozen=True)
class Task:
    """A chunk of consecutive documents, all in one archive."""

    start: int  # index of the chunk's first document
    archive: Archive  # pickles as its path: a worker opens the file itself
    members: np.ndarray  # (n,) bytes
    locations: np.ndarray  # (n, 6)


def tasks(documents: Documents, rows: np.ndarray) -> Iterator[Task]:
    """Chunks of the given document rows; a chunk never spans two archives."""
    if rows.size == 0:
        return
    boundaries = np.flatnonzero(np.diff(documents.archive_code[rows])) + 1
    for run in np.split(rows, boundaries):
        for lo in range(0, run.size, CHUNK):
            chunk = run[lo : lo + CHUNK]
            yield Task(
                start=int(chunk[0]),
                archive=documents.archives[documents.archive_code[chunk[0]]],
                members=documents.members[chunk],
                locations=documents.locations[chunk],
            )


@dataclass
class Counts:
    """Document frequencies of a chunk's good documents."""

    document_frequency: Counter[str]
    documents: int
    errors: list[tuple[int, str]]  # (offset in the chunk, what is wrong)


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
    errors: list[tuple[int, str]]  # (offset in the chunk, what is wrong)


_state: dict[str, Any] = {}  # per worker process: analyzer, vocabulary table


def _init_worker_process(parent_pid: int, *initargs: Any) -> None:
    # Killed with the process that started the pool, even by SIGKILL: no orphans left reading.
    die_with_parent(parent_pid)
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
        data = archive.read_at(name, location)
        record = _parse_json(data)
    except ArchiveError as exc:
        raise _BadDocument(str(exc)) from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeDecodeError alike
        raise _BadDocument(f"{archive.path} member {name!r} is not valid JSON ({exc}).") from None
    tagging = record.get("tagging") if type(record) is dict else None
    keywords = tagging.get("keywords") if type(tagging) is dict else None
    if type(keywords) is list:
        try:
            document_from_keywords(keywords)  # the quickest check that every item is a string
        except TypeError:
            pass
        else:
            # A keyword that long needs a file at least that long: most files are shorter.
            longest = MAX_KEYWORD_LENGTH
            if len(data) > longest and max(map(len, keywords), default=0) > longest:
                longest = max(keywords, key=len)
                raise _BadDocument(
                    f"{archive.path} member {name!r} holds a keyword of {len(longest):,} "
                    f"characters ({longest[:40]!r}...); expected keywords of at most "
                    f"{MAX_KEYWORD_LENGTH:,} characters (words and short phrases)."
                )
            return keywords
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


def _documents(task: Task, errors: list[tuple[int, str]]) -> Iterator[tuple[int, list[str]]]:
    """(offset in the chunk, keywords) of each good document; bad ones go to `errors`."""
    archive = task.archive
    locations = task.locations.tolist()  # plain ints: numpy scalars are slow to unpack
    names = [name.decode("utf-8") for name in task.members.tolist()]
    for offset, (name, location) in enumerate(zip(names, locations, strict=True)):
        try:
            yield offset, _keywords(archive, name, location)
        except _BadDocument as exc:
            errors.append((offset, str(exc)))


def count_chunk(task: Task) -> Counts:
    """The fitting pass over one chunk: document frequencies of its good documents."""
    errors: list[tuple[int, str]] = []
    documents = [document_from_keywords(keywords) for _, keywords in _documents(task, errors)]
    counter = count_document_frequencies(_state["analyzer"], documents)
    return Counts(counter, len(documents), errors)


def encode_chunk(task: Task) -> ChunkResult:
    """The encoding pass over one chunk: every document's word ids, positions and counts."""
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


T = TypeVar("T")
R = TypeVar("R")


def ordered_map(
    executor: Executor | None, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """`map` in order with at most `window` tasks in flight, so results never pile up."""
    if executor is None:
        yield from map(fn, items)
        return
    pending: deque[Any] = deque()
    for item in items:
        pending.append(executor.submit(fn, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


@contextlib.contextmanager
def worker_pool(
    jobs: int, analyzer: Analyzer, words: list[str]
) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes, or None to work in this process (jobs=1); shut down on exit."""
    if jobs == 1:
        _init_worker(analyzer, words)
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
            jobs,
            mp_context=context,
            initializer=_init_worker_process,
            initargs=(os.getpid(), analyzer, words),
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
