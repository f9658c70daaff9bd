"""Pre-trained word vectors (word2vec / GloVe text files) for the query word embeddings."""

from __future__ import annotations

import logging
from pathlib import Path

from .._optional import require
from ..checks import whole_number
from ..errors import InputError

require("torch", "the ranking models")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from .model import EMBEDDING_STD  # noqa: E402

log = logging.getLogger(__name__)
_FLOAT32_MAX = 3.4028234663852886e38


def load_word_vectors(
    path: str | Path, vocabulary: list[str], dim: int, *, seed: int = 0
) -> Tensor:
    """Word vectors for `vocabulary` from a word2vec/GloVe text file ("word v1 ... v_dim" per
    line, optionally a first line "count dim"), as a `(len(vocabulary) + 1, dim)` float32 table
    whose row `i + 1` is word `i` and row 0 the padding row (zeros).

    A word found only with other capitals is taken from its lower-cased form. Words the file
    lacks get small random vectors (a tenth of the found vectors' spread; reproducible for
    `seed`). A line with too few values, a first line of the wrong dimension, a value that is not
    a number, or bytes that are not UTF-8 are an `InputError` naming the file and line.
    """
    path = Path(path)
    whole_number("dim", dim, low=1, why="It is the word vectors' dimension.")
    exact, lowered = _read_vectors(path, {word: i for i, word in enumerate(vocabulary)}, dim)
    found = {**lowered, **exact}
    if vocabulary and not found:
        raise InputError(
            f"{path} holds none of the {len(vocabulary)} query words (e.g. {vocabulary[0]!r}): "
            "is it a word-vector file for this language?"
        )
    table = _vector_table(found, len(vocabulary), dim, seed)
    log.info("word vectors: %d of %d query words found in %s", len(found), len(vocabulary), path)
    return table


def _read_vectors(
    path: Path, wanted: dict[str, int], dim: int
) -> tuple[dict[int, list[float]], dict[int, list[float]]]:
    """The vectors of the `wanted` words (word -> index) in the file, by index: those found with
    the same capitals, and those found only lower-cased. The first of each counts."""
    exact: dict[int, list[float]] = {}
    lowered: dict[int, list[float]] = {}
    first = True
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                parts = _vector_fields(path, number, raw, dim, first)
                if parts is None:
                    continue
                first = False
                word = " ".join(parts[:-dim])
                index, target = wanted.get(word), exact
                if index is None:
                    index, target = wanted.get(word.lower()), lowered
                if index is None or index in target:
                    continue
                target[index] = _vector_values(path, number, word, parts[-dim:])
    except OSError as error:
        raise InputError(
            f"Cannot read the word vectors {path}: {error.strerror or error}."
        ) from None
    return exact, lowered


def _vector_fields(path: Path, number: int, raw: bytes, dim: int, first: bool) -> list[str] | None:
    """The fields of line `number` (word, then `dim` values), or None for a blank line or the
    "count dim" header; an `InputError` for a line that is not UTF-8 or has too few fields, or a
    header of another dimension. `first`: no vector line has been read yet."""
    try:
        parts = raw.decode("utf-8").split()
    except UnicodeDecodeError as error:
        raise InputError(
            f"{path}, line {number}: not UTF-8 text ({error.reason}); word vectors "
            "must be a UTF-8 text file."
        ) from None
    if not parts:
        return None
    if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
        if int(parts[1]) != dim:
            raise InputError(
                f"{path}: the header line says {parts[1]}-dimensional vectors, "
                f"expected {dim}: pass the file's dimension "
                f"(`amc-data train --dim {parts[1]}`)."
            )
        return None
    # A few files hold tokens with spaces (the last `dim` fields are the values); the
    # first vector must be plain, which catches a file of another dimension early.
    if len(parts) < dim + 1 or (first and len(parts) != dim + 1):
        raise InputError(
            f"{path}, line {number}: {len(parts) - 1} fields after the word, expected "
            f"{dim} numbers (a word2vec/GloVe text file of {dim}-dimensional vectors; "
            "for another size pass it with `amc-data train --dim N`)."
        )
    return parts


def _vector_values(path: Path, number: int, word: str, fields: list[str]) -> list[float]:
    """The numbers of `word`'s vector on line `number`; an `InputError` for one that is not a
    number or not a finite float32."""
    try:
        values = [float(v) for v in fields]
    except ValueError:
        raise InputError(
            f"{path}, line {number}: a value of the vector of {word!r} is not a number."
        ) from None
    if not all(abs(v) <= _FLOAT32_MAX for v in values):  # NaN fails too
        raise InputError(
            f"{path}, line {number}: the vector of {word!r} holds NaN, an infinity or "
            "a value beyond float32's range; fix or drop that line."
        )
    return values


def _vector_table(found: dict[int, list[float]], words: int, dim: int, seed: int) -> Tensor:
    """The `(words + 1, dim)` table: row `i + 1` the vector found for word `i`, row 0 zeros, and
    the missing words small random vectors (a tenth of the found vectors' spread)."""
    table = torch.zeros(words + 1, dim)
    spread = EMBEDDING_STD
    if found:
        rows = torch.tensor(list(found)) + 1
        table[rows] = torch.tensor(list(found.values()), dtype=torch.float32)
        if len(found) > 1:
            spread = float(table[rows].std())
    missing = [i + 1 for i in range(words) if i not in found]
    if missing:
        generator = torch.Generator().manual_seed(seed)
        table[missing] = torch.randn(len(missing), dim, generator=generator) * 0.1 * spread
    return table
