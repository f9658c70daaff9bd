"""Pre-trained word vectors (word2vec / GloVe text files) for the query word embeddings."""

from __future__ import annotations

import logging
from pathlib import Path

from .._optional import require
from ..errors import ConfigError, InputError

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
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise ConfigError(f"The word-vector dimension must be a positive integer, got {dim!r}.")
    wanted = {word: i for i, word in enumerate(vocabulary)}
    exact: dict[int, list[float]] = {}
    lowered: dict[int, list[float]] = {}
    first = True
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                try:
                    parts = raw.decode("utf-8").split()
                except UnicodeDecodeError as error:
                    raise InputError(
                        f"{path}, line {number}: not UTF-8 text ({error.reason}); word vectors "
                        "must be a UTF-8 text file."
                    ) from None
                if not parts:
                    continue
                if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                    if int(parts[1]) != dim:
                        raise InputError(
                            f"{path}: the header line says {parts[1]}-dimensional vectors, "
                            f"expected {dim}: pass the file's dimension "
                            f"(`amc-data train --dim {parts[1]}`)."
                        )
                    continue
                # A few files hold tokens with spaces (the last `dim` fields are the values); the
                # first vector must be plain, which catches a file of another dimension early.
                if len(parts) < dim + 1 or (first and len(parts) != dim + 1):
                    raise InputError(
                        f"{path}, line {number}: {len(parts) - 1} fields after the word, expected "
                        f"{dim} numbers (a word2vec/GloVe text file of {dim}-dimensional vectors; "
                        "for another size pass it with `amc-data train --dim N`)."
                    )
                first = False
                word = " ".join(parts[:-dim])
                index, target = wanted.get(word), exact
                if index is None:
                    index, target = wanted.get(word.lower()), lowered
                if index is None or index in target:
                    continue
                try:
                    target[index] = [float(v) for v in parts[-dim:]]
                except ValueError:
                    raise InputError(
                        f"{path}, line {number}: a value of the vector of {word!r} is not a number."
                    ) from None
                if not all(abs(v) <= _FLOAT32_MAX for v in target[index]):  # NaN fails too
                    raise InputError(
                        f"{path}, line {number}: the vector of {word!r} holds NaN, an infinity or "
                        "a value beyond float32's range; fix or drop that line."
                    )
    except OSError as error:
        raise InputError(
            f"Cannot read the word vectors {path}: {error.strerror or error}."
        ) from None
    found = {**lowered, **exact}
    if vocabulary and not found:
        raise InputError(
            f"{path} holds none of the {len(vocabulary)} query words (e.g. {vocabulary[0]!r}): "
            "is it a word-vector file for this language?"
        )
    table = torch.zeros(len(vocabulary) + 1, dim)
    spread = EMBEDDING_STD
    if found:
        rows = torch.tensor(list(found)) + 1
        table[rows] = torch.tensor(list(found.values()), dtype=torch.float32)
        if len(found) > 1:
            spread = float(table[rows].std())
    missing = [i + 1 for i in range(len(vocabulary)) if i not in found]
    if missing:
        generator = torch.Generator().manual_seed(seed)
        table[missing] = torch.randn(len(missing), dim, generator=generator) * 0.1 * spread
    log.info("word vectors: %d of %d query words found in %s", len(found), len(vocabulary), path)
    return table
