"""The output folder of an encode: its mode, the files it never deletes, the swap that never
leaves it without its encode record, one-line errors when it cannot be written, and worker
processes that never outlive the encode."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support.encode_helpers import encode_record, small_clickture, snapshot

import amc_data.encoding.staging
from amc_data import load_encoded
from amc_data.encoding.core import EncodeConfig, encode
from amc_data.encoding.formats import NpyRowWriter
from amc_data.errors import InputError
from amc_data.machine import exchange_paths


@pytest.fixture
def clickture(tmp_path):
    made = small_clickture(tmp_path, n_dev=120, n_lite=80, seed=21)
    return tmp_path, made


def run(data_dir, *args):
    arguments = ["encode", "clickture", *args, "--data-dir", str(data_dir), "--jobs", "1"]
    return CliRunner().invoke(cli, arguments)


def _one_line_error(result, *texts):
    assert result.exit_code != 0
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    for text in texts:
        assert text in result.stderr, (text, result.stderr)


def _beside(out_dir: Path) -> list[str]:
    return sorted(p.name for p in out_dir.parent.iterdir() if p.name.startswith(f".{out_dir.name}"))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_output_folder_gets_the_mode_the_umask_gives(clickture, umask):
    data_dir, _made = clickture
    old = os.umask(umask)
    try:
        assert run(data_dir).exit_code == 0
        assert run(data_dir, "--force").exit_code == 0  # a replaced folder too
    finally:
        os.umask(old)
    out_dir = data_dir / "clickture" / "encoded"
    assert stat.S_IMODE(out_dir.stat().st_mode) == 0o777 & ~umask
    assert stat.S_IMODE((out_dir / "vocab.tsv").stat().st_mode) == 0o666 & ~umask


def test_files_encode_did_not_write_are_kept_and_named(clickture):
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    assert run(data_dir).exit_code == 0
    (out_dir / "notes.txt").write_text("mine")
    (out_dir / "plots").mkdir()
    before = snapshot(out_dir)
    assert "up to date" in run(data_dir).output  # nothing to replace: nothing to refuse
    result = run(data_dir, "--force")
    assert result.exit_code == 1
    assert "notes.txt" in result.stderr and "plots" in result.stderr
    assert "did not write" in result.stderr
    assert snapshot(out_dir) == before and (out_dir / "plots").is_dir()
    assert _beside(out_dir) == [".encoded.lock"]


def test_a_file_added_during_the_encode_is_kept(clickture, monkeypatch):
    """Checked again at the swap: a file that appeared while encoding stops the swap."""
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    before = snapshot(out_dir)
    original_close = NpyRowWriter.close

    def close_and_meddle(self):
        original_close(self)
        (out_dir / "late.txt").write_text("added meanwhile")

    monkeypatch.setattr(NpyRowWriter, "close", close_and_meddle)
    result = run(data_dir, "--force")
    assert result.exit_code == 1 and "late.txt" in result.stderr
    assert snapshot(out_dir) == {**before, "late.txt": b"added meanwhile"}
    assert _beside(out_dir) == [".encoded.lock"]


def test_an_old_folder_left_by_a_crash_loses_only_encode_files(clickture):
    """The old folder of an interrupted swap is cleaned up by the next run, file by file, as
    its record lists them: anything else in it is kept, under a visible name."""
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    old = out_dir.with_name(".encoded.previous-4242")
    shutil.copytree(out_dir, old)
    (old / "precious.txt").write_text("mine")
    result = encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    assert result.up_to_date
    (kept,) = [p for p in out_dir.parent.iterdir() if p.name.startswith(".encoded.kept-")]
    assert sorted(p.name for p in kept.iterdir()) == ["precious.txt"]


def _can_exchange(folder: Path) -> bool:
    first, second = folder / "exchange-first", folder / "exchange-second"
    first.mkdir()
    second.mkdir()
    return exchange_paths(first, second)


def test_the_swap_never_leaves_the_folder_without_its_record(clickture, monkeypatch, tmp_path):
    """Every rename and deletion encode makes is checked: `encode.json` is there after each."""
    if not _can_exchange(tmp_path):
        pytest.skip("no atomic exchange here: the documented fallback renames twice")
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    operations = []

    def checked(function):
        def wrapper(*args, **kwargs):
            value = function(*args, **kwargs)
            operations.append((function.__name__, args[0]))
            assert (out_dir / "encode.json").exists(), operations
            return value

        return wrapper

    for name in ("rename", "replace", "rmdir", "unlink"):
        monkeypatch.setattr(os, name, checked(getattr(os, name)))
    monkeypatch.setattr(shutil, "rmtree", checked(shutil.rmtree))
    result = encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1, force=True))
    assert not result.up_to_date and operations
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(result.outputs)
    assert _beside(out_dir) == [".encoded.lock"]


def test_without_an_exchange_two_renames_do_the_swap(clickture, monkeypatch):
    """The fallback where the system cannot exchange two folders in one step."""
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    monkeypatch.setattr(amc_data.encoding.staging, "exchange_paths", lambda a, b: False)
    encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1, min_df=3))
    result = encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(result.outputs)
    assert (out_dir / "img_keyword_rec_clickture_dev_sk_6.npy").exists()
    assert _beside(out_dir) == [".encoded.lock"]


def test_a_full_disk_is_one_line_and_keeps_the_previous_outputs(clickture, monkeypatch):
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    assert run(data_dir).exit_code == 0
    before = snapshot(out_dir)

    def full(self, rows):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(NpyRowWriter, "write", full)
    result = run(data_dir, "--force")
    _one_line_error(result, str(out_dir), "No space left on device", "free some space")
    assert snapshot(out_dir) == before
    assert _beside(out_dir) == [".encoded.lock"]


def test_a_read_only_output_location_is_one_line(clickture, monkeypatch):
    data_dir, _made = clickture
    locked = data_dir / "read-only"
    locked.mkdir()
    locked.chmod(0o555)
    if os.geteuid() == 0:  # permissions do not stop root: make the folder read-only by hand
        for name in ("open", "mkdir"):
            real = getattr(os, name)

            def refuse(path, *args, _real=real, **kwargs):
                if str(path).startswith(str(locked)):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
                return _real(path, *args, **kwargs)

            monkeypatch.setattr(os, name, refuse)
    try:
        result = run(data_dir, "--out", str(locked / "encoded"))
    finally:
        monkeypatch.undo()
        locked.chmod(0o755)
    _one_line_error(result, str(locked / "encoded"), "choose an --out where you may write")
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("content", ["[1, 2]", '"encode"', "null", "{broken"])
def test_an_encode_record_that_is_not_an_object_is_one_line(clickture, content):
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    assert run(data_dir).exit_code == 0
    (out_dir / "encode.json").write_text(content)
    result = run(data_dir)
    _one_line_error(result, str(out_dir / "encode.json"), "Delete that folder")
    assert (out_dir / "encode.json").read_text() == content
    with pytest.raises(InputError, match="encode record"):
        load_encoded("clickture", "dev", data_dir=data_dir)


def test_a_record_listing_paths_outside_its_folder_is_refused(clickture):
    """Encode deletes the files its record lists: a record must never reach beyond its folder."""
    data_dir, _made = clickture
    out_dir = data_dir / "clickture" / "encoded"
    assert run(data_dir).exit_code == 0
    victim = data_dir / "victim.txt"
    victim.write_text("mine")
    record = encode_record(out_dir)
    record["outputs"].append("../../victim.txt")
    (out_dir / "encode.json").write_text(json.dumps(record))
    _one_line_error(run(data_dir, "--force"), "plain file names")
    assert victim.read_text() == "mine"


WORKER_SCRIPT = """
import os, sys, time
import amc_data.encoding.core as core
import amc_data.encoding.workers as workers

pids, data_dir = sys.argv[1], sys.argv[2]
start_worker = workers._init_worker

def announced(*args):
    open(os.path.join(pids, str(os.getpid())), "w").close()
    start_worker(*args)

def stuck(task):
    time.sleep(600)

workers._init_worker = announced
core.count_chunk = stuck
core.encode("clickture", data_dir=data_dir, config=core.EncodeConfig(jobs=2))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has ended: only its exit status is left


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_die_with_the_main_process(clickture, tmp_path):
    data_dir, _made = clickture
    pids = tmp_path / "pids"
    pids.mkdir()
    main = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WORKER_SCRIPT), str(pids), str(data_dir)]
    )
    workers: list[int] = []
    try:
        assert _wait_for(lambda: len(os.listdir(pids)) == 2 or main.poll() is not None, 120)
        workers = [int(name) for name in os.listdir(pids)]
        assert len(workers) == 2 and all(map(_alive, workers))
        main.send_signal(signal.SIGKILL)  # no chance to clean up: the kernel must do it
        main.wait(timeout=60)
        assert _wait_for(lambda: not any(map(_alive, workers)), 60), "workers outlived the encode"
    finally:
        if main.poll() is None:
            main.kill()
            main.wait()
        for pid in workers:  # only what this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_exchange_paths_swaps_two_folders_or_changes_nothing(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "inside").touch()
    if exchange_paths(first, second):
        assert [p.name for p in second.iterdir()] == ["inside"] and not any(first.iterdir())
        with pytest.raises(FileNotFoundError):
            exchange_paths(first, tmp_path / "missing")
    else:  # no such facility here: nothing moved, the caller falls back to renames
        assert [p.name for p in first.iterdir()] == ["inside"]
