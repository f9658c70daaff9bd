"""The query vocabulary: fitted on the training queries with the keyword analyzer (lower-case,
tokens of two or more word characters, scikit-learn's English stop words dropped), and the
tokenisation of queries into its ids.

Using the keyword analyzer for queries means a query word and a keyword word are the same
string whenever they are the same word, which is what lets a model tie the two vocabularies.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checks import whole_number
from ..encoding.analyzer import Analyzer
from ..encoding.formats import read_vocab_tsv
from ..errors import ConfigError, InputError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "QUERY_VOCAB_HEADER",
    "QueryVocabulary",
    "fit_query_vocabulary",
    "query_analyzer",
    "tokenize_queries",
    "vocabulary_report",
]

log = logging.getLogger(__name__)

QUERY_VOCAB_HEADER = "word_id\tword\tcount"


@functools.cache
def query_analyzer() -> Analyzer:
    """The analyzer queries go through: the keyword analyzer with the English stop words."""
    return Analyzer()


@dataclass(frozen=True)
class QueryVocabulary:
    """Query words in id order (code-point order, as the keyword vocabulary), each with the
    number of times it occurs in the training queries (repeats within a query counted)."""

    words: tuple[str, ...]
    counts: tuple[int, ...]
    min_count: int = 1
    # What the fit left out (0 for a vocabulary read back from its file): distinct words seen
    # fewer than `min_count` times, and their occurrences.
    dropped_words: int = field(default=0, compare=False)
    dropped_occurrences: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "words", tuple(self.words))
        object.__setattr__(self, "counts", tuple(int(c) for c in self.counts))
        if len(self.words) != len(self.counts):
            raise ConfigError(
                f"A query vocabulary needs one count per word: {len(self.words)} words, "
                f"{len(self.counts)} counts."
            )
        if len(set(self.words)) != len(self.words):
            raise ConfigError("A query vocabulary lists a word twice; words must be unique.")

    def __len__(self) -> int:
        return len(self.words)

    @functools.cached_property
    def index(self) -> dict[str, int]:
        """Word -> id."""
        return {word: word_id for word_id, word in enumerate(self.words)}

    def encode(self, query: str, analyzer: Analyzer | None = None) -> np.ndarray:
        """The ids of `query`'s tokens, in analyzer order, repeats kept, unknown words dropped."""
        get = self.index.get
        tokens = (analyzer or query_analyzer())(query)
        ids = [i for i in map(get, tokens) if i is not None]
        return np.array(ids, dtype=np.int64)

    def write_tsv(self, path: str | os.PathLike[str]) -> str:
        """Write `query_vocab.tsv` (`word_id\\tword\\tcount`, with that header); return its
        sha256."""
        lines = [QUERY_VOCAB_HEADER]
        lines += [
            f"{i}\t{w}\t{c}" for i, (w, c) in enumerate(zip(self.words, self.counts, strict=True))
        ]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        Path(path).write_bytes(data)
        return hashlib.sha256(data).hexdigest()

    @classmethod
    def read_tsv(cls, path: str | os.PathLike[str]) -> QueryVocabulary:
        """Read a `query_vocab.tsv`; `InputError` naming the line when it is malformed."""
        words, counts = read_vocab_tsv(
            Path(path),
            QUERY_VOCAB_HEADER,
            missing="the prepared folder is incomplete.",
            fix="Prepare the dataset again.",
        )
        return cls(tuple(words), tuple(counts))


def fit_query_vocabulary(
    queries: Iterable[str], min_count: int = 1, analyzer: Analyzer | None = None
) -> QueryVocabulary:
    """Fit the query vocabulary on `queries` (the training queries): every token that occurs
    at least `min_count` times in all, ids in code-point order."""
    whole_number("min_count", min_count, low=1)
    analyzer = analyzer or query_analyzer()
    counter: Counter[str] = Counter()
    counter.update(chain.from_iterable(map(analyzer, queries)))
    words = sorted(word for word, count in counter.items() if count >= min_count)
    if not words:
        raise InputError(
            f"No query word occurs at least {min_count} times in the training queries "
            f"({len(counter)} distinct words in all), so the query vocabulary would be empty. "
            "Lower the minimum count, or check that the training queries hold text."
        )
    kept = [counter[w] for w in words]
    return QueryVocabulary(
        tuple(words),
        tuple(kept),
        min_count,
        dropped_words=len(counter) - len(words),
        dropped_occurrences=counter.total() - sum(kept),
    )


def tokenize_queries(
    queries: Sequence[str], vocabulary: QueryVocabulary, analyzer: Analyzer | None = None
) -> list[np.ndarray]:
    """Each query as an int64 array of query-vocabulary ids (analyzer order, unknown words
    dropped; a query may come out empty)."""
    analyzer = analyzer or query_analyzer()
    return [vocabulary.encode(query, analyzer) for query in queries]


def vocabulary_report(
    vocabulary: QueryVocabulary,
    queries: pd.DataFrame,
    keyword_rows: int,
    keyword_rows_empty: int,
) -> dict[str, Any]:
    """What a prepared folder's vocabularies keep and drop, and a logged warning when most is
    dropped: the query words kept and dropped by `min_count` (distinct, and the dropped
    words' occurrences in the training queries), the queries (the `query` and `split` columns
    of `queries`) left with no word of the vocabulary, and the `keyword_rows` (one per feature
    row) left empty."""
    words = vocabulary.index.keys()
    analyzer = query_analyzer()
    texts = queries["query"].tolist()
    empty_rows = np.fromiter(
        map(words.isdisjoint, map(analyzer, texts)), dtype=bool, count=len(texts)
    )
    empty: Counter[str] = Counter(queries["split"].astype(str).to_numpy()[empty_rows].tolist())
    report: dict[str, Any] = {
        "min_count": vocabulary.min_count,
        "query_words_kept": len(vocabulary),
        "query_words_dropped": vocabulary.dropped_words,
        "query_word_occurrences": sum(vocabulary.counts) + vocabulary.dropped_occurrences,
        "query_word_occurrences_dropped": vocabulary.dropped_occurrences,
        "queries": len(texts),
        "queries_empty": empty.total(),
        "queries_empty_per_split": dict(sorted(empty.items())),
        "keyword_rows": keyword_rows,
        "keyword_rows_empty": keyword_rows_empty,
    }
    for warning in _report_warnings(report):
        log.warning("%s", warning)
    return report


def _report_warnings(report: dict[str, Any]) -> list[str]:
    """Warnings for a report where most query words, queries or keyword rows are dropped.

    Measured on occurrences, not distinct words: captions have long tails of rare words, and
    the usual `min_count` of 4 drops most distinct COCO caption words, nearly none of the text."""
    warnings = []
    dropped, occurrences = (
        report["query_word_occurrences_dropped"],
        report["query_word_occurrences"],
    )
    empty, queries = report["queries_empty"], report["queries"]
    if 2 * dropped > occurrences or 2 * empty > queries:
        warnings.append(
            f"min_count={report['min_count']} kept {report['query_words_kept']:,} query words "
            f"and dropped {report['query_words_dropped']:,} (seen fewer than "
            f"{report['min_count']} times in the training queries): {dropped:,} of "
            f"{occurrences:,} training query word occurrences are dropped, and {empty:,} of "
            f"{queries:,} queries are left with no word. Prepare again with a lower "
            "--min-query-count."
        )
    rows, empty_rows = report["keyword_rows"], report["keyword_rows_empty"]
    if 2 * empty_rows > rows:
        warnings.append(
            f"{empty_rows:,} of {rows:,} images have no keyword in the encode output's "
            "vocabulary (an empty keyword row). If encode dropped most words, encode again with "
            "a lower --min-df (and --force), then prepare again."
        )
    return warnings
