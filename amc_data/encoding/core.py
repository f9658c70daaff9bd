"""`encode`: the authors' keyword encoding, exactly, streaming and in parallel.

Two passes over the documents, each spread over `jobs` worker processes (`workers`) that read
members straight from the archives: the first counts document frequencies over the fitting set
and fixes the vocabulary; the second turns every document into word ids. Results come back in
order, a chunk at a time, and go straight to the writers (`outputs`); everything is written into
a staging folder that is swapped in whole (`staging`), so a crash or Ctrl-C leaves the previous
outputs as they were.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..datadir import dataset_dir
from ..fetching.manifest import resolve_manifests
from ..machine import cpu_count, release_memory
from ..progress import progress_bar
from ..spec import DatasetSpec, dataset_spec
from .analyzer import (
    AUTHORS_MIN_DF,
    Analyzer,
    fit_vocabulary,
    load_stop_words,
)
from .config import EncodeConfig
from .inputs import Documents, input_files, plan_parts
from .outputs import OutputWriters
from .policy import ErrorPolicy, SkippedItem
from .record import input_identity, input_records, package_versions, write_record
from .staging import check_foreign_files, os_error, output_lock, staging_folder, swap_in
from .workers import Counts, count_chunk, encode_chunk, ordered_map, tasks, worker_pool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodeResult:
    """What an encode produced (or found already up to date)."""

    dataset: str
    out_dir: Path
    up_to_date: bool
    vocabulary_size: int
    # split -> documents, encoded, skipped, pairs (words kept), empty (encoded documents left
    # with no word of the vocabulary)
    counts: dict[str, dict[str, int]]
    skipped: tuple[SkippedItem, ...] = ()
    outputs: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)
    # What min_df kept and dropped (see `vocabulary_report`); empty for an encode recorded by an
    # older version.
    vocabulary: dict[str, int] = field(default_factory=dict)


def vocabulary_report(
    min_df: int,
    fitting_documents: int,
    words_seen: int,
    words_kept: int,
    written: dict[str, dict[str, int]],
) -> dict[str, int]:
    """What the vocabulary kept and dropped: distinct words of the fitting documents kept and
    dropped by `min_df`, word occurrences (analyzer tokens) of all the encoded documents and
    how many of them fell outside the vocabulary, and the encoded documents left empty."""
    occurrences = sum(counts["tokens"] for counts in written.values())
    return {
        "min_df": min_df,
        "fitting_documents": fitting_documents,
        "words_kept": words_kept,
        "words_dropped": words_seen - words_kept,
        "word_occurrences": occurrences,
        "word_occurrences_dropped": occurrences - sum(c["pairs"] for c in written.values()),
        "documents": sum(counts["encoded"] for counts in written.values()),
        "documents_empty": sum(counts["empty"] for counts in written.values()),
    }


def vocabulary_warning(dataset: str, report: dict[str, int]) -> str | None:
    """A warning when min_df dropped most of the word occurrences or left most documents
    empty, as it does on a dataset much smaller than the authors'; None otherwise.

    Measured on occurrences, not distinct words: keyword and caption vocabularies have long
    tails of rare words, so most distinct words fall below min_df even where the kept words
    carry nearly all the text."""
    dropped, occurrences = report["word_occurrences_dropped"], report["word_occurrences"]
    empty, documents = report["documents_empty"], report["documents"]
    if 2 * dropped <= occurrences and 2 * empty <= documents:
        return None
    return (
        f"{dataset}: min_df={report['min_df']} kept {report['words_kept']:,} words and dropped "
        f"{report['words_dropped']:,} (found in fewer than {report['min_df']} of the "
        f"{report['fitting_documents']:,} fitting documents): {dropped:,} of {occurrences:,} "
        f"word occurrences are dropped, and {empty:,} of {documents:,} documents are left with "
        "no keyword. The vocabulary is fitted on this dataset's own documents, so a dataset "
        "much smaller than the authors' needs a lower min_df: encode again with a lower "
        f"--min-df (the authors used {AUTHORS_MIN_DF} on tens of thousands of images)."
    )


def encode(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    config: EncodeConfig | None = None,
) -> EncodeResult:
    """Encode `dataset` ("clickture" or "coco") from `<data_dir>/<dataset>/` into `out`
    (default `<data_dir>/<dataset>/encoded/`); return what was written."""
    spec = dataset_spec(dataset)
    config = config or EncodeConfig()
    folder = dataset_dir(data_dir, dataset)
    # Resolved, so that a symbolic link is written through and `.` has a name and a parent.
    out_dir = (Path(out) if out is not None else folder / "encoded").expanduser().resolve()
    try:
        inputs = input_files(spec, folder)
        (manifest,) = resolve_manifests([dataset], config.manifest_paths)  # a bad one fails now
        analyzer = Analyzer(load_stop_words(config.stop_words))  # a bad list fails here, clearly
        fingerprint = _fingerprint(dataset, inputs, config)
        with output_lock(out_dir, dataset) as previous:
            if not config.force:
                current = _up_to_date(out_dir, previous, fingerprint)
                if current is not None:
                    log.info("%s is up to date with its inputs; nothing to do", out_dir)
                    return current
            check_foreign_files(out_dir, previous)  # before the work, not only after it
            with staging_folder(out_dir) as staging:
                result, record = _encode_into(staging, spec, folder, inputs, config, analyzer)
                record["inputs"] = input_records(folder, manifest, inputs)
                record["fingerprint"] = fingerprint
                write_record(staging, record)
                swap_in(staging, out_dir, previous)
    except OSError as exc:  # a full disk, a read-only location, ...: one line, no traceback
        raise os_error(exc, out_dir) from exc
    return replace(result, out_dir=out_dir)


def _fit(
    parts: Iterator[Documents],
    analyzer: Analyzer,
    config: EncodeConfig,
    policy: ErrorPolicy,
    jobs: int,
) -> tuple[list[str], np.ndarray, Documents, tuple[int, int]]:
    """Plan the documents and count document frequencies over the fitting set; return the
    vocabulary, its document frequencies, all the documents, and the number of fitting
    documents and of distinct words in them.

    The workers start before planning does (planning uses threads, and processes must not be
    forked beside them) and count the fitting set (all in the plan's first part) while the rest
    is planned. Bad documents stop the run here under `on_error="fail"`; under "skip" they are
    left out of the counts and recorded by the encoding pass, which meets them again.
    """
    frequency: Counter[str] = Counter()
    n_documents = 0
    with worker_pool(jobs, analyzer, []) as executor:
        first = next(parts)
        fit_tasks = list(tasks(first, np.flatnonzero(first.fit)))
        if executor is None:
            results: Iterable[Counts] = map(count_chunk, fit_tasks)
        else:  # a few dozen tasks: all submitted at once, so the workers start right away
            futures = [executor.submit(count_chunk, task) for task in fit_tasks]
            results = (future.result() for future in futures)
        documents = Documents.concat([first, *parts])
        release_memory()  # planning's temporaries
        with progress_bar(
            total=int(first.fit.sum()),
            desc="fitting vocabulary",
            unit="doc",
            enabled=config.progress,
        ) as bar:
            for task, counts in zip(fit_tasks, results, strict=True):
                for offset, message in counts.errors:
                    item = first.skipped_item(task.start + offset, message)
                    policy.problem(item, record=False)  # the encoding pass records it
                frequency.update(counts.document_frequency)
                n_documents += counts.documents
                bar.update(counts.documents + len(counts.errors))
    words = fit_vocabulary(frequency, n_documents, config.min_df)
    frequencies = np.array([frequency[word] for word in words], dtype=np.int64)
    return words, frequencies, documents, (n_documents, len(frequency))


def _fingerprint(dataset: str, inputs: list[Path], config: EncodeConfig) -> dict[str, Any]:
    """What decides the outputs: input identities, parameters, and this package's version."""
    from ..version import __version__

    stop_words = config.stop_words
    if stop_words not in ("english", "none"):
        stat = Path(stop_words).stat()
        stop_words = f"{Path(stop_words).resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return {
        "dataset": dataset,
        "inputs": [{"name": path.name, **input_identity(path)} for path in inputs],
        "min_df": config.min_df,
        "stop_words": stop_words,
        "formats": sorted(config.formats),
        "on_error": config.on_error,
        "amc_data": __version__,
    }


def _encode_into(
    staging: Path,
    spec: DatasetSpec,
    folder: Path,
    inputs: list[Path],
    config: EncodeConfig,
    analyzer: Analyzer,
) -> tuple[EncodeResult, dict[str, Any]]:
    jobs = config.jobs or cpu_count()
    seconds: dict[str, float] = {}
    began = time.perf_counter()
    policy = ErrorPolicy(config.on_error)
    parts = plan_parts(spec, folder, policy)
    words, frequencies, documents, (fitting, words_seen) = _fit(
        parts, analyzer, config, policy, jobs
    )
    seconds["plan_and_fit"] = time.perf_counter() - began

    mark = time.perf_counter()
    writers = OutputWriters.create(
        staging, documents, words, frequencies, config.formats, config.min_df
    )
    rows = np.arange(len(documents))
    with (
        worker_pool(jobs, analyzer, words) as executor,
        progress_bar(
            total=len(documents),
            desc=f"encoding {spec.name}",
            unit="doc",
            enabled=config.progress,
        ) as bar,
    ):
        for chunk in ordered_map(executor, encode_chunk, tasks(documents, rows), 2 * jobs):
            for offset, message in chunk.errors:
                policy.problem(documents.skipped_item(chunk.start + offset, message))
            writers.add(chunk, {chunk.start + offset for offset, _ in chunk.errors})
            bar.update(chunk.tokens_seen.size)
    documents.locations = documents.locations[:0]  # not needed to finish the files
    release_memory()
    written = writers.close()
    seconds["encode"] = time.perf_counter() - mark
    seconds["total"] = time.perf_counter() - began

    skipped = tuple(policy.skipped)  # planning's, then the encoding pass's, in document order
    counts = _split_counts(written.counts, skipped)
    vocabulary = vocabulary_report(config.min_df, fitting, words_seen, len(words), written.counts)
    warning = vocabulary_warning(spec.name, vocabulary)
    if warning is not None:
        log.warning("%s", warning)
    result = EncodeResult(
        dataset=spec.name,
        out_dir=staging,
        up_to_date=False,
        vocabulary_size=len(words),
        counts=counts,
        skipped=skipped,
        outputs=(*written.files, "encode.json"),
        seconds=seconds,
        vocabulary=vocabulary,
    )
    return result, _record(result, documents, config, jobs)


def _split_counts(
    written: dict[str, dict[str, int]], skipped: tuple[SkippedItem, ...]
) -> dict[str, dict[str, int]]:
    """The result's counts per split: the writers' (`written`) with the skipped items."""
    counts = {}
    for split, split_counts in written.items():
        n_skipped = sum(item.split == split for item in skipped)
        counts[split] = {
            "documents": split_counts["encoded"] + n_skipped,
            "encoded": split_counts["encoded"],
            "skipped": n_skipped,
            "pairs": split_counts["pairs"],
            "empty": split_counts["empty"],
        }
    return counts


def _record(
    result: EncodeResult, documents: Documents, config: EncodeConfig, jobs: int
) -> dict[str, Any]:
    """The encode record of `result`, less its inputs and fingerprint (the caller adds them)."""
    return {
        "dataset": result.dataset,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": [],
        "parameters": {
            "min_df": config.min_df,
            "stop_words": config.stop_words,
            "formats": list(config.formats),
            "on_error": config.on_error,
            "jobs": jobs,
        },
        "packages": package_versions(),
        "vocabulary_size": result.vocabulary_size,
        "vocabulary": result.vocabulary,
        "counts": result.counts,
        "absent_splits": list(documents.absent_splits),
        "skipped": [asdict(item) for item in result.skipped],
        "seconds": {key: round(value, 3) for key, value in result.seconds.items()},
        "outputs": list(result.outputs),
    }


def _up_to_date(
    out_dir: Path, previous: dict[str, Any] | None, fingerprint: dict[str, Any]
) -> EncodeResult | None:
    """The result recorded in `previous` when the outputs are up to date with `fingerprint`
    and all there; None otherwise (a record missing what a result needs included)."""
    if not previous or previous.get("fingerprint") != fingerprint:
        return None
    if not all((out_dir / name).exists() for name in previous.get("outputs", [None])):
        return None
    try:
        return EncodeResult(
            dataset=previous["dataset"],
            out_dir=out_dir,
            up_to_date=True,
            vocabulary_size=int(previous["vocabulary_size"]),
            counts=dict(previous["counts"]),
            skipped=tuple(SkippedItem(**item) for item in previous.get("skipped", [])),
            outputs=tuple(previous["outputs"]),
            seconds={},
            vocabulary=dict(previous.get("vocabulary", {})),
        )
    except (KeyError, TypeError, ValueError):
        return None
