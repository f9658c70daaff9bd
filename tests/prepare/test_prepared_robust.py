"""A prepared folder that is damaged or crowded: a keyword matrix whose CSR arrays do not hold
together is refused when the folder is opened (not deep in training), and a folder being
replaced keeps what amc-data did not write in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from support.prepare_helpers import write_small

import amc_data.prepare.format as prepared_format
from amc_data.errors import InputError
from amc_data.prepare import load_prepared


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return write_small(tmp_path / "prepared", tmp_path)


def _rewrite_csr(folder: Path, edit) -> None:
    """Save keywords.npz again with its raw CSR arrays edited (as a damaged or hand-made file
    would hold them; scipy's own constructors would refuse some of these)."""
    matrix = scipy.sparse.load_npz(folder / "keywords.npz").tocsr()
    arrays = {"indptr": matrix.indptr.copy(), "indices": matrix.indices.copy()}
    edit(arrays)
    np.savez(
        folder / "keywords.npz",
        data=matrix.data,
        indices=arrays["indices"],
        indptr=arrays["indptr"],
        format=b"csr",
        shape=np.array(matrix.shape),
    )


def _refused(folder: Path, *parts: str) -> str:
    with pytest.raises(InputError) as caught:
        load_prepared(folder)
    message = str(caught.value)
    assert "\n" not in message
    for part in (str(folder / "keywords.npz"), "Prepare the dataset again", *parts):
        assert part in message, message
    return message


def _row_with_words(folder: Path, at_least: int = 0) -> int:
    """The first row from `at_least` on that has a stored count."""
    lengths = np.diff(scipy.sparse.load_npz(folder / "keywords.npz").tocsr().indptr)
    return at_least + int(np.flatnonzero(lengths[at_least:] > 0)[0])


def test_a_word_index_past_the_vocabulary_is_refused_naming_its_row(prepared):
    row = _row_with_words(prepared, 5)

    def edit(arrays):
        arrays["indices"][arrays["indptr"][row]] = 5  # the vocabulary has 5 words: 0..4

    _rewrite_csr(prepared, edit)
    _refused(prepared, "array indices", f"row {row} names word 5", "5 words")


def test_a_negative_word_index_is_refused(prepared):
    row = _row_with_words(prepared)

    def edit(arrays):
        arrays["indices"][arrays["indptr"][row]] = -1

    _rewrite_csr(prepared, edit)
    _refused(prepared, "array indices", f"row {row} names word -1")


def test_row_pointers_going_backwards_are_refused_naming_the_row(prepared):
    row = _row_with_words(prepared, 3)

    def edit(arrays):  # the row's first pointer past its next one: a negative row length
        arrays["indptr"][row] = arrays["indptr"][row + 1] + 1

    _rewrite_csr(prepared, edit)
    _refused(prepared, "array indptr goes backwards at row")


def test_the_check_finds_the_first_bad_row_past_the_first_chunk(prepared, monkeypatch):
    monkeypatch.setattr(prepared_format, "_CSR_CHUNK", 3)  # several chunks in a small file
    load_prepared(prepared)  # a sound matrix opens, checked chunk by chunk
    row = _row_with_words(prepared, 7)

    def edit(arrays):
        arrays["indices"][arrays["indptr"][row + 1] - 1] = 99  # the row's last stored word

    _rewrite_csr(prepared, edit)
    _refused(prepared, f"row {row} names word 99")
