"""The output folder of an encode: one encode at a time (a lock beside it), outputs written into
a staging folder beside it and swapped in whole, and nothing deleted that encode did not write.

The swap exchanges the two folders in one atomic step where the system can (`renameat2` with
`RENAME_EXCHANGE`, Linux 3.15+ on most local file systems), so `encode.json` and the outputs are
always there, old or new. Elsewhere it takes two renames (the old folder aside, the new one in),
and for that moment the folder is missing; a run that dies between the two is repaired by the
next one, which puts the old folder back.

Names beside the output folder `<out>`: `.<out>.lock` (the lock), `.<out>.staging-*` (being
written, or the old folder just swapped out), `.<out>.previous-*` (the old folder during the
two-rename fallback), `.<out>.kept-*` (an old folder that held files encode did not write:
never deleted, reported).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from ..errors import AmcDataError, InputError, OutputFolderError
from ..machine import exchange_paths
from .record import read_record, record_outputs

log = logging.getLogger(__name__)

# In a staging folder until its outputs are complete: a folder holding it is all encode's own.
IN_PROGRESS = ".amc-data-staging"


def os_error(exc: OSError, out_dir: Path) -> AmcDataError:
    """A one-line error for an operating-system failure during an encode: writing the output
    folder (or its lock or staging folder beside it), or, for a path elsewhere, reading an
    input. Says what to do."""
    path = Path(os.fsdecode(exc.filename)) if exc.filename is not None else None
    if path is not None and not _is_output_path(path, out_dir):
        return InputError(f"Cannot read the input {path}: {exc.strerror or exc}.")
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        advice = "free some space (or choose an --out on a disk with room) and run again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "choose an --out where you may write"
    else:
        advice = "check the output location and run again"
    where = f"{path}: " if path is not None else ""
    return AmcDataError(
        f"Cannot write the encode output {out_dir} ({where}{exc.strerror or exc}); {advice}. "
        "The previous outputs, if any, are untouched."
    )


def _is_output_path(path: Path, out_dir: Path) -> bool:
    """`path` is the output folder, inside it, a folder above it (made on the way), or one of
    the names encode keeps beside it (lock, staging folders)."""
    path = Path(os.path.abspath(path))
    if path == out_dir or out_dir in path.parents or path in out_dir.parents:
        return True
    beside = path.relative_to(out_dir.parent).parts if out_dir.parent in path.parents else ()
    return bool(beside) and beside[0].startswith(f".{out_dir.name}.")


@contextlib.contextmanager
def output_lock(out_dir: Path, dataset: str) -> Iterator[dict | None]:
    """Hold the output folder's lock and yield its encode record (None: a new or empty folder).

    On the way in: repair what an interrupted run left; refuse the current folder, or one
    holding another dataset's encoding. `out_dir` must be resolved (no symbolic link, no `.`):
    it is replaced beside itself.
    """
    cwd = Path.cwd().resolve()
    if not out_dir.name or cwd == out_dir or out_dir in cwd.parents:
        raise OutputFolderError(
            f"{out_dir} cannot be the output folder: encode replaces its output folder whole, "
            "and this one is (or holds) the current folder. Choose a folder of its own, such as "
            "--out ./encoded."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out_dir.parent / f".{out_dir.name}.lock")
    try:
        lock.acquire(timeout=1)
    except filelock.Timeout:
        log.warning("waiting for another encode writing %s", out_dir)
        lock.acquire()
    try:
        _recover(out_dir)
        previous = read_record(out_dir)
        if previous is not None and previous.get("dataset") != dataset:
            raise OutputFolderError(
                f"Output folder {out_dir} holds the {previous.get('dataset')} encoding; encoding "
                f"{dataset} there would replace it. Choose another --out (with 'all', each "
                "dataset gets its own folder), or delete that one first."
            )
        yield previous
    finally:
        lock.release()


def foreign_files(out_dir: Path, record: dict | None) -> list[str]:
    """Names in `out_dir` that its encode record does not list (every name, without one)."""
    try:
        names = sorted(os.listdir(out_dir))
    except FileNotFoundError:
        return []
    owned = set(record_outputs(record))
    return [name for name in names if name not in owned]


def check_foreign_files(out_dir: Path, record: dict | None) -> None:
    """ConfigError naming the files in `out_dir` that encode did not write: it replaces the
    folder whole, and will not take them with it."""
    foreign = foreign_files(out_dir, record)
    if not foreign:
        return
    shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
    if record is None:
        found = f"holds files amc-data did not write ({shown}) and no encode record (encode.json)"
    else:
        found = f"holds files amc-data did not write: its encode record does not list {shown}"
    raise OutputFolderError(
        f"Output folder {out_dir} {found}. Encode replaces its output folder whole and never "
        "deletes what it did not write: move them elsewhere, or choose another --out."
    )


@contextlib.contextmanager
def staging_folder(
    out_dir: Path, discard: Callable[[Path, Path], None] | None = None
) -> Iterator[Path]:
    """A fresh folder beside `out_dir`, with the mode the umask gives a new folder; removed
    again unless it was swapped in. Swapped out, it holds the old output, cut short while being
    discarded: `discard(folder, out_dir)` (default: encode's) finishes that, deleting only
    what its writer owns."""
    while True:
        staging = out_dir.with_name(f".{out_dir.name}.staging-{secrets.token_hex(4)}")
        try:
            staging.mkdir()  # mode 0o777 less the umask, as for any new folder
            break
        except FileExistsError:
            continue
    (staging / IN_PROGRESS).touch()
    try:
        yield staging
    finally:
        if (staging / IN_PROGRESS).exists():
            shutil.rmtree(staging, ignore_errors=True)
        elif staging.exists():  # swapped out: the old folder, cut short while being discarded
            (discard or _discard_old)(staging, out_dir)


def swap_in(staging: Path, out_dir: Path, previous: dict | None) -> None:
    """Put the complete outputs in `staging` in place of `out_dir`, then delete the old outputs
    (only the files the old record lists)."""
    # Checked again at the last moment: a file may have been added during the encode.
    check_foreign_files(out_dir, previous)
    replace_folder(staging, out_dir, _discard_old)


def replace_folder(staging: Path, out_dir: Path, discard: Callable[[Path, Path], None]) -> None:
    """Put the complete `staging` folder in place of `out_dir` (atomically where the system
    exchanges two paths), then `discard(old folder, out_dir)` the old output."""
    (staging / IN_PROGRESS).unlink()
    if not out_dir.exists():
        os.rename(staging, out_dir)
        return
    if exchange_paths(staging, out_dir):
        discard(staging, out_dir)  # the old folder now sits at the staging name
        return
    aside = out_dir.with_name(f".{out_dir.name}.previous-{os.getpid()}")
    os.rename(out_dir, aside)
    os.rename(staging, out_dir)  # between these two renames the output folder is missing
    discard(aside, out_dir)


def _discard_old(folder: Path, out_dir: Path) -> None:
    """Delete the files `folder`'s encode record lists, then the folder; a folder that still
    holds anything (files encode did not write) is kept, renamed `.<out>.kept-*` so that no
    later run mistakes it for its own leftovers, and reported."""
    try:
        record = read_record(folder)
    except AmcDataError:
        record = None
    for name in record_outputs(record):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        kept = out_dir.with_name(f".{out_dir.name}.kept-{secrets.token_hex(4)}")
        os.rename(folder, kept)
        log.warning(
            "%s held files amc-data did not write: kept them in %s (%s)",
            out_dir,
            kept,
            ", ".join(sorted(os.listdir(kept))[:5]),
        )


def _recover(out_dir: Path) -> None:
    """Finish what an interrupted run left beside `out_dir`: put the old folder back if the
    two-rename fallback was cut between its renames, delete staging folders still in progress
    (all encode's own), and discard old folders (only the files their records list)."""
    parent, name = out_dir.parent, out_dir.name
    previous = sorted(parent.glob(f".{name}.previous-*"))
    if previous and not out_dir.exists():
        log.warning("restoring %s from an interrupted run", out_dir)
        os.rename(previous.pop(), out_dir)
    for path in [*previous, *parent.glob(f".{name}.staging-*")]:
        if path.is_symlink() or not path.is_dir():
            continue  # not a folder encode made: left alone
        if (path / IN_PROGRESS).exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            _discard_old(path, out_dir)
