"""A prepared folder that is damaged or crowded: a keyword matrix whose CSR arrays do not hold
together is refused when the folder is opened (not deep in training), and a folder being
replaced keeps what amc-data did not write in it."""

from __future__ import annotations

import inspect
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse
from amc_data_cli.main import cli
from click.testing import CliRunner
from support.prepare_helpers import write_small

import amc_data.prepare.format as prepared_format
import amc_data.prepare.writer as writer_module
from amc_data.errors import InputError, OutputFolderError
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


# -- replacing a prepared folder keeps what amc-data did not write ---------------------------------
def _crowd(folder: Path) -> dict[str, bytes]:
    """A user's notes and an evaluation's outputs, written into a prepared folder."""
    (folder / "NOTES.txt").write_text("which features these were\n")
    (folder / "results").mkdir()
    (folder / "results" / "metrics.json").write_text("{}\n")
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_force_refuses_to_replace_a_folder_holding_files_it_did_not_write(tmp_path, prepared):
    before = _crowd(prepared)
    with pytest.raises(OutputFolderError) as caught:
        write_small(prepared, tmp_path, force=True, options={"seed": 1})
    message = str(caught.value)
    assert "NOTES.txt, results" in message and "did not write" in message
    assert "\n" not in message
    assert {p.name: p.read_bytes() for p in prepared.iterdir() if p.is_file()} == before
    assert (prepared / "results" / "metrics.json").read_text() == "{}\n"
    assert load_prepared(prepared).info["options"] == {"seed": 0}  # the old folder, whole
    (prepared / "NOTES.txt").unlink()
    shutil.rmtree(prepared / "results")
    write_small(prepared, tmp_path, force=True, options={"seed": 1})  # moved away: replaced
    assert load_prepared(prepared).info["options"] == {"seed": 1}


def test_synth_force_keeps_the_users_notes_and_eval_outputs(tmp_path):
    runner = CliRunner()
    out = tmp_path / "d"
    args = ["synth", str(out), "--images", "240", "--queries", "30", "--quiet"]
    assert runner.invoke(cli, args).exit_code == 0
    before = _crowd(out)
    (out / "plots").mkdir()
    forced = runner.invoke(cli, [*args, "--force", "--seed", "5"])
    assert forced.exit_code == 1, forced.output
    assert "NOTES.txt, plots, results" in forced.stderr and "Traceback" not in forced.output
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert (out / "plots").is_dir() and (out / "results" / "metrics.json").is_file()
    assert not list(tmp_path.glob(".d.*synth-*"))  # refused before any work


def test_a_file_that_appears_during_the_write_is_refused_or_kept(tmp_path, prepared, monkeypatch):
    load = writer_module.load_prepared

    def load_then_add_notes(folder, **options):  # runs on the staging folder, before the swap
        (prepared / "NOTES.txt").write_text("written meanwhile\n")
        return load(folder, **options)

    monkeypatch.setattr(writer_module, "load_prepared", load_then_add_notes)
    with pytest.raises(OutputFolderError, match=r"NOTES\.txt"):
        write_small(prepared, tmp_path, force=True)
    assert (prepared / "NOTES.txt").read_text() == "written meanwhile\n"
    assert not list(tmp_path.glob(".prepared.staging-*"))
    monkeypatch.undo()
    (prepared / "NOTES.txt").unlink()

    # Added in the instant after the last check: the old folder is set aside with it, whole.
    check = writer_module._check_foreign

    def check_then_add_notes(folder):
        check(folder)
        if inspect.stack()[1].function == "_commit":  # the last check, just before the swap
            (folder / "NOTES.txt").write_text("written meanwhile\n")

    monkeypatch.setattr(writer_module, "_check_foreign", check_then_add_notes)
    write_small(prepared, tmp_path, force=True, options={"seed": 2})
    assert load_prepared(prepared).info["options"] == {"seed": 2}
    (kept,) = tmp_path.glob(".prepared.kept-*")
    assert [p.name for p in kept.iterdir()] == ["NOTES.txt"]
