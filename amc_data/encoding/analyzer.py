"""scikit-learn's `CountVectorizer` word analyzer and vocabulary fit, as small pure code.

The authors encoded keywords with `CountVectorizer(min_df=6, stop_words="english")` and its
defaults. This module reproduces exactly what that does, without calling scikit-learn per
document:

- preprocessing is `str.lower()` (no accent stripping, no Unicode normalisation);
- tokens are the non-overlapping matches of `(?u)\\b\\w\\w+\\b` with Python's `re`, in order;
- tokens that are in the stop list, compared as given (after lower-casing the text, not the
  list), are dropped; everything else is kept, repeats included;
- the vocabulary is every token whose document frequency is at least `min_df` (`max_df=1.0`
  prunes nothing), and a word's id is its rank in code-point order (`sorted`).

Each piece is what scikit-learn's own source does (`sklearn/feature_extraction/text.py`:
`_preprocess`, `build_tokenizer`, `_word_ngrams`, `_count_vocab`, `fit_transform`,
`_limit_features`, `_sort_features`); the tests compare against `CountVectorizer` itself.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain, filterfalse, repeat
from pathlib import Path

from ..checks import whole_number
from ..errors import ConfigError, InputError
from .stop_words import ENGLISH_STOP_WORDS

__all__ = [
    "AUTHORS_MIN_DF",
    "MAX_KEYWORD_LENGTH",
    "MIN_DF_LOW",
    "MIN_DF_WHY",
    "TOKEN_PATTERN",
    "Analyzer",
    "KeywordTokenIds",
    "check_min_df",
    "count_document_frequencies",
    "document_from_keywords",
    "fit_vocabulary",
    "load_stop_words",
]

log = logging.getLogger(__name__)

#: CountVectorizer's default `token_pattern`: two or more word characters between word boundaries.
TOKEN_PATTERN = r"(?u)\b\w\w+\b"
# The same matches, about a quarter faster: `findall` only ever starts a match at the first word
# character of a run (a match consumes its whole run, greedily; a failed start is followed by a
# non-word character), and `\b` is defined by the same `\w`, so both boundaries always hold.
# The tests check it against scikit-learn on hostile and random text.
_TOKEN_RE = re.compile(r"\w\w+")
_findall = _TOKEN_RE.findall

#: The longest keyword accepted, in characters. Taggers write words and short phrases (tens of
#: characters); a longer keyword is bad input, because every distinct word is held several times
#: over (token caches, document-frequency counters in each worker and in the main process), so a
#: few thousand files of one unique huge word each would otherwise cost gigabytes.
MAX_KEYWORD_LENGTH = 1000
# Keywords up to this length are cached by `KeywordTokenIds`: a hostile corpus of long unique
# keywords then cannot grow the cache past `max_keywords` times this size.
_CACHED_LENGTH = 100


def english_stop_words() -> frozenset[str]:
    """scikit-learn's `ENGLISH_STOP_WORDS`, the list the authors used (a copy; see
    `stop_words`)."""
    return ENGLISH_STOP_WORDS


def load_stop_words(spec: str | os.PathLike[str]) -> frozenset[str]:
    """The stop words named by `spec`: `"english"`, `"none"`, or a word-list file.

    - `"english"` (the string): scikit-learn's own `ENGLISH_STOP_WORDS`, the list the authors used.
    - `"none"` (the string): no stop words.
    - anything else (a string or a path): a UTF-8 text file, one word per line. Surrounding
      whitespace is stripped; blank lines and lines whose first non-blank character is `#` are
      skipped; a UTF-8 byte-order mark is ignored. Words are kept exactly as written, case
      included, because that is how `CountVectorizer(stop_words=[...])` compares them: against
      the already lower-cased tokens. An entry the analyzer can never produce (upper-case
      letters, or not exactly one token) therefore never matches; such entries are logged as a
      warning, as scikit-learn warns about them, and kept.

    Raises `ConfigError` when the file cannot be read or decoded.
    """
    if isinstance(spec, str) and spec == "english":
        return english_stop_words()
    if isinstance(spec, str) and spec == "none":
        return frozenset()
    path = Path(spec)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(
            f"The stop-word list {str(path)!r} does not exist. Pass 'english' for scikit-learn's "
            "English list (what the authors used), 'none' for no stop words, or the path of a "
            "UTF-8 text file with one word per line."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"The stop-word list {str(path)!r} could not be read as UTF-8 text ({exc}). Pass "
            "'english', 'none', or the path of a readable UTF-8 file with one word per line."
        ) from exc
    words = frozenset(
        word for word in map(str.strip, text.splitlines()) if word and not word.startswith("#")
    )
    never = sorted(word for word in words if _findall(word.lower()) != [word])
    if never:
        log.warning(
            "%d entries of the stop-word list %s can never match a token (tokens are lower-case "
            "runs of 2+ word characters), so they remove nothing: %s",
            len(never),
            path,
            ", ".join(repr(word) for word in never[:20]) + (" ..." if len(never) > 20 else ""),
        )
    return words


def document_from_keywords(keywords: list[str]) -> str:
    """One image's document, as the authors built it: its keywords joined by one space."""
    return " ".join(keywords)


@dataclass(frozen=True)
class Analyzer:
    """`CountVectorizer(stop_words=...).build_analyzer()` for the default word analyzer.

    `analyzer(document)` returns the document's tokens in order, repeats kept, stop words dropped.
    The hot path is three C calls: `str.lower`, `Pattern.findall`, and a `filterfalse` over the
    stop set's `__contains__`.
    """

    stop_words: frozenset[str] = field(default_factory=english_stop_words)
    # Bound methods looked up once, not per call: this object is called a million times.
    _is_stop: Callable[[object], bool] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if isinstance(self.stop_words, str):  # frozenset("english") would be a set of letters
            raise TypeError("stop_words must be a collection of words; see load_stop_words()")
        # A list or set given by a caller is frozen here, so the analyzer can never change.
        if not isinstance(self.stop_words, frozenset):
            object.__setattr__(self, "stop_words", frozenset(self.stop_words))
        object.__setattr__(self, "_is_stop", self.stop_words.__contains__)

    def __repr__(self) -> str:
        english = " (scikit-learn English)" if self.stop_words == english_stop_words() else ""
        return f"Analyzer(<{len(self.stop_words)} stop words{english}>)"

    def __call__(self, document: str) -> list[str]:
        """The document's tokens: lower-cased, in order, with repeats, without stop words."""
        return list(filterfalse(self._is_stop, _findall(document.lower())))

    def token_set(self, document: str) -> set[str]:
        """The distinct tokens of a document (what counts towards document frequency)."""
        tokens = set(_findall(document.lower()))
        tokens.difference_update(self.stop_words)
        return tokens


class KeywordTokenIds(dict[str, tuple[int, ...]]):
    """Keyword -> the vocabulary ids of its tokens (-1 for a token outside the vocabulary),
    worked out once per distinct keyword.

    `document_ids(keywords)` equals `[ids.get(t, -1) for t in analyzer(" ".join(keywords))]`:
    the authors' document is the keywords joined by spaces, and a space is neither a word
    character (tokens cannot span it) nor cased or case-ignorable (lower-casing, final sigma
    included, cannot see across it), so a document's tokens are its keywords' tokens in turn.
    Keywords repeat heavily (taggers draw from a fixed vocabulary), so this turns a regex pass
    per document into a dictionary lookup per keyword.
    """

    def __init__(self, analyzer: Analyzer, vocabulary: Sequence[str], max_keywords: int = 1 << 20):
        super().__init__()
        self.analyzer = analyzer
        self.max_keywords = max_keywords
        self._get = {word: word_id for word_id, word in enumerate(vocabulary)}.get

    def __missing__(self, keyword: str) -> tuple[int, ...]:
        ids = tuple(map(self._get, self.analyzer(keyword), repeat(-1)))
        # Bounded in count and size: a corpus of unique or huge keywords cannot grow it.
        if len(self) < self.max_keywords and len(keyword) <= _CACHED_LENGTH:
            self[keyword] = ids
        return ids

    def document_ids(self, keywords: list[str]) -> list[int]:
        """The ids of the document made of `keywords`, one per analyzer token, in order."""
        ids: list[int] = []
        self.extend_ids(ids, keywords)
        return ids

    def extend_ids(self, ids: list[int], keywords: list[str]) -> None:
        """Append the document's ids to `ids` (what a worker does for a chunk of documents)."""
        ids.extend(chain.from_iterable(map(self.__getitem__, keywords)))


def count_document_frequencies(
    analyzer: Analyzer, documents: Iterable[str], counter: Counter[str] | None = None
) -> Counter[str]:
    """Add one to `counter[token]` for each document that contains `token`; return the counter.

    Pass the same counter again to keep counting over batches, or merge the counters of several
    workers with `+=`. The counter's keys are exactly the words `CountVectorizer.fit` would see.
    """
    if counter is None:
        counter = Counter()
    # One `update` per batch over a chain of per-document sets runs the counting loop in C.
    counter.update(chain.from_iterable(map(analyzer.token_set, documents)))
    return counter


#: The authors' `min_df`, and the least a whole-number `min_df` may be (scikit-learn reads an
#: integer as a count of documents, and a count below 1 keeps nothing it would not keep at 1).
AUTHORS_MIN_DF = 6
MIN_DF_LOW = 1
MIN_DF_WHY = f"The authors used {AUTHORS_MIN_DF}."


def check_min_df(min_df: object) -> int:
    """`min_df` if it is a whole number of documents >= 1, as scikit-learn wants of an integer
    `min_df`; else a `ConfigError` naming it."""
    return whole_number("min_df", min_df, MIN_DF_LOW, why=MIN_DF_WHY)


def fit_vocabulary(
    document_frequency: Mapping[str, int], n_documents: int, min_df: int
) -> list[str]:
    """The fitted vocabulary, words in id order, as `CountVectorizer(min_df=min_df).fit` keeps it.

    `document_frequency` maps each token seen in the `n_documents` fitting documents to the number
    of documents that contain it (see `count_document_frequencies`). A word is kept when its
    frequency is at least `min_df`; its id is its position in the returned list (code-point
    order, as scikit-learn's `sorted`). With an integer `min_df` and the default `max_df=1.0`
    nothing else is pruned.

    Raises `InputError` where scikit-learn raises `ValueError`, checked in scikit-learn's order:
    no words at all ("empty vocabulary"); fewer documents than `min_df` ("max_df corresponds to <
    documents than min_df"); no word reaching `min_df` ("After pruning, no terms remain").
    Raises `ConfigError` for a `min_df` that is not an integer >= 1 (scikit-learn refuses it too).
    """
    check_min_df(min_df)
    if n_documents < 0:
        raise ValueError(f"n_documents must be >= 0, got {n_documents}")
    if not document_frequency:
        raise InputError(
            f"No words to build a vocabulary from: the {n_documents} fitting documents are empty "
            "or contain only stop words (scikit-learn stops here with 'empty vocabulary; perhaps "
            "the documents only contain stop words'). Check that the keyword files hold keywords, "
            "or choose other stop words."
        )
    if n_documents < min_df:
        raise InputError(
            f"Only {n_documents} fitting documents, fewer than min_df={min_df}, so no word could "
            "reach min_df (scikit-learn stops here with 'max_df corresponds to < documents than "
            "min_df'). Lower min_df or fit on more documents."
        )
    kept = []
    for word, df in document_frequency.items():
        # A count outside 1..n_documents cannot come from counting documents: a caller's bug.
        if not 1 <= df <= n_documents:
            raise ValueError(
                f"document frequency of {word!r} is {df}, outside 1..{n_documents} (n_documents)"
            )
        if df >= min_df:
            kept.append(word)
    if not kept:
        top = max(document_frequency.values())
        raise InputError(
            f"No word occurs in at least min_df={min_df} of the {n_documents} fitting documents "
            f"(the most frequent occurs in {top}), so no terms remain after pruning "
            "(scikit-learn: 'After pruning, no terms remain'). Lower min_df or fit on more "
            "documents."
        )
    kept.sort()
    return kept
