"""The output folder of an export: one export at a time (a lock beside it), everything written
into a staging folder beside it and swapped in whole, and nothing deleted that an export did not
write.

The folder's record, `export.json`, lists every file the export wrote (paths relative to the
folder): those files are the export's own, and `--force` replaces them. A file it does not list
is the user's, so a folder holding one is refused even with `--force`: the folder is replaced
whole, and such a file would go with it.

Names beside the output folder `<out>`: `.<out>.lock` (the lock), `.<out>.staging-*` (being
written, or the old folder just swapped out), `.<out>.previous-*` (the old folder during the
two-rename fallback), `.<out>.kept-*` (an old folder that held files no export wrote: never
deleted, reported).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock

from ..encoding.staging import IN_PROGRESS, replace_folder, staging_folder
from ..errors import InputError, OutputFolderError
from ..files import atomic_write_json

__all__ = ["RECORD_NAME", "claim_output", "read_record", "swap_in", "write_record"]

log = logging.getLogger(__name__)

RECORD_NAME = "export.json"
RECORD_FORMAT = "amc-data export"
# In a staging folder until its files are complete: a folder holding it is all the export's own.
_SHOWN = 5


def read_record(folder: Path) -> dict[str, Any] | None:
    """The export record of `folder`, None where there is none (or it is not ours)."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise InputError(
            f"The export record {folder / RECORD_NAME} cannot be read ({exc}), so amc-data "
            f"cannot tell which files of {folder} an export wrote. Move that folder aside (or "
            "choose another DIR) and export again."
        ) from exc
    if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
        return None
    outputs = record.get("outputs")
    if not isinstance(outputs, list) or not all(_is_relative_name(o) for o in outputs):
        raise InputError(
            f"The export record {folder / RECORD_NAME} lists outputs that are not relative file "
            f"paths inside {folder}. Move that folder aside (or choose another DIR) and export "
            "again."
        )
    return record


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write `record` (listing every file written into `folder`) as the folder's record."""
    atomic_write_json(folder / RECORD_NAME, {"format": RECORD_FORMAT, **record})


def _is_relative_name(name: object) -> bool:
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    parts = name.split("/")
    return not name.startswith("/") and all(p not in ("", ".", "..") for p in parts)


def _owned(record: dict[str, Any] | None) -> set[str]:
    return set() if record is None else {*record.get("outputs", []), RECORD_NAME}


def foreign_files(out_dir: Path, record: dict[str, Any] | None) -> list[str]:
    """The paths under `out_dir` (relative) that its export record does not list: files, links,
    and folders holding nothing of the export's."""
    if not out_dir.is_dir():
        return []
    owned = _owned(record)
    folders = {str(Path(name).parent) for name in owned}
    found = []
    for path in sorted(out_dir.rglob("*")):
        name = path.relative_to(out_dir).as_posix()
        if path.is_dir() and not path.is_symlink():
            if not any(f == name or f.startswith(name + "/") for f in folders):
                found.append(name + "/")
        elif name not in owned:
            found.append(name)
    return found


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def check_output(out_dir: Path, force: bool) -> dict[str, Any] | None:
    """The record of the earlier export in `out_dir` (None: missing or empty); `OutputFolderError`
    when it may not be written: it holds files no export wrote, or an export and not `force`."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputFolderError(f"out: {out_dir} is a file, not a folder. Choose another DIR.")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    record = read_record(out_dir)
    foreign = foreign_files(out_dir, record)
    if foreign:
        raise OutputFolderError(
            f"out: {out_dir} holds files that amc-data export did not write ({_shown(foreign)}). "
            "An export replaces its folder whole and never deletes what it did not write, even "
            "with --force: choose an empty or new DIR, or move those files elsewhere."
        )
    if not force:
        raise OutputFolderError(
            f"out: {out_dir} already holds an export ({record.get('to') if record else '?'} of "
            f"{(record or {}).get('data', '?')}). Pass --force to replace it, or choose another "
            "DIR."
        )
    return record


@contextlib.contextmanager
def claim_output(out_dir: Path, data: Path, force: bool) -> Iterator[Path]:
    """Hold `out_dir`'s lock and yield a fresh staging folder beside it, after refusing an
    output that may not be written (`check_output`); the staging folder is removed unless it
    was swapped in. `out_dir` and `data` must be resolved."""
    cwd = Path.cwd().resolve()
    if not out_dir.name or cwd == out_dir or out_dir in cwd.parents:
        raise OutputFolderError(
            f"out: {out_dir} cannot be the export folder: an export replaces its folder whole, "
            "and this one is (or holds) the current folder. Choose a folder of its own, such as "
            "./export."
        )
    if out_dir == data or data in out_dir.parents or out_dir in data.parents:
        raise OutputFolderError(
            f"out: {out_dir} is, holds or lies inside the prepared folder {data}; preparing it "
            "again would delete the export (or the export the data). Choose a folder beside it."
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(out_dir.parent / f".{out_dir.name}.lock")
    try:
        lock.acquire(timeout=1)
    except filelock.Timeout:
        log.warning("waiting for another export writing %s", out_dir)
        lock.acquire()
    try:
        _recover(out_dir)
        check_output(out_dir, force)
        with staging_folder(out_dir, discard=_discard_old) as staging:
            yield staging
    finally:
        lock.release()


def swap_in(staging: Path, out_dir: Path, force: bool) -> None:
    """Put the complete export in `staging` in place of `out_dir`, then delete the old export
    (only the files its record lists)."""
    check_output(out_dir, force)  # again at the last moment: a file may have been added since
    replace_folder(staging, out_dir, _discard_old)


def _discard_old(folder: Path, out_dir: Path) -> None:
    """Delete the files `folder`'s record lists, then its emptied folders; a folder still
    holding anything is kept as `.<out>.kept-*` and reported."""
    try:
        record = read_record(folder)
    except InputError:
        record = None
    for name in _owned(record):
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            (folder / name).unlink()
    (folder / IN_PROGRESS).unlink(missing_ok=True)
    for sub in sorted((p for p in folder.rglob("*") if p.is_dir()), reverse=True):
        with contextlib.suppress(OSError):
            sub.rmdir()  # only an empty one goes
    try:
        folder.rmdir()
    except FileNotFoundError:
        pass
    except OSError:
        kept = out_dir.with_name(f".{out_dir.name}.kept-{secrets.token_hex(4)}")
        os.rename(folder, kept)
        log.warning("%s held files amc-data export did not write: kept them in %s", out_dir, kept)


def _recover(out_dir: Path) -> None:
    """Finish what an interrupted export left beside `out_dir`: the old folder put back if the
    two-rename fallback was cut between its renames, staging folders still in progress deleted,
    old folders discarded (only the files their records list)."""
    parent, name = out_dir.parent, out_dir.name
    previous = sorted(parent.glob(f".{name}.previous-*"))
    if previous and not out_dir.exists():
        log.warning("restoring %s from an interrupted export", out_dir)
        os.rename(previous.pop(), out_dir)
    for path in [*previous, *parent.glob(f".{name}.staging-*")]:
        if path.is_symlink() or not path.is_dir():
            continue  # not a folder an export made: left alone
        if (path / IN_PROGRESS).exists():
            shutil.rmtree(path, ignore_errors=True)
        else:
            _discard_old(path, out_dir)
