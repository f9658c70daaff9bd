"""The encode record, `encode.json` in the output folder: what was read (inputs with their
identities and the sha256 fetch holds them to), with which parameters and package versions,
what came out (counts, skipped items, the files written), and the fingerprint that tells a
later run whether the outputs are up to date.

The record's `outputs` is also the list of files encode owns in its folder: nothing else there
is ever deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import stat
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..fetching.manifest import Manifest, expected_checksums

RECORD_NAME = "encode.json"


def read_record(out_dir: Path) -> dict[str, Any] | None:
    """The encode record in `out_dir`, or None where there is none.

    A record that cannot be read, is not a JSON object, or lists output files that are not
    plain names is an `InputError`: the folder's content cannot be trusted or cleaned up.
    """
    path = out_dir / RECORD_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        problem: str | None = f"cannot be read ({exc})"
    else:
        problem = _record_problem(record)
        if problem is None:
            return record
    raise InputError(
        f"The encode record {path} {problem}, so amc-data cannot tell what {out_dir} holds. "
        "Delete that folder (or choose another --out) and encode again."
    )


def _record_problem(record: object) -> str | None:
    if not isinstance(record, dict):
        return f"is a JSON {type(record).__name__}, not an object"
    outputs = record.get("outputs", [])
    if not isinstance(outputs, list) or not all(map(is_plain_name, outputs)):
        return "has an `outputs` entry that is not a list of plain file names"
    if not isinstance(record.get("dataset"), str):
        return "names no dataset"
    return None


def is_plain_name(name: object) -> bool:
    """A file name inside one folder: no separator, not `.` or `..`, no NUL."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
    )


def record_outputs(record: dict[str, Any] | None) -> list[str]:
    """The files a record says its encode wrote (the record itself included)."""
    if record is None:
        return []
    return [*record.get("outputs", []), RECORD_NAME]


def write_record(folder: Path, record: dict[str, Any]) -> None:
    """Write `record` as the folder's `encode.json`."""
    (folder / RECORD_NAME).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def input_identity(path: Path) -> dict[str, Any]:
    """What says an input is unchanged, without reading it: size, modification and change
    times of a file; for a folder (an unzipped archive), its file count, total size and a digest
    of every file's relative name, size, mtime and ctime, so that a file renamed or swapped
    inside it (which leaves count, total and newest mtime alone, but not names or ctimes) is
    noticed."""
    info = _stat(path)
    if not stat.S_ISDIR(info.st_mode):
        return {"size": info.st_size, "mtime_ns": info.st_mtime_ns, "ctime_ns": info.st_ctime_ns}
    digest = hashlib.sha256()
    files = total = 0
    folders = [("", os.fspath(path))]  # (name relative to `path`, with a final "/"; location)
    while folders:
        relative, location = folders.pop()
        try:
            with os.scandir(location) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)  # a fixed order
        except OSError as exc:
            raise InputError(f"Cannot read the input {location}: {exc.strerror or exc}.") from exc
        lines = []
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                folders.append((f"{relative}{entry.name}/", entry.path))
                continue
            if entry.is_dir():  # a link to a folder: not followed, as os.walk does not
                continue
            try:
                info = entry.stat()
            except FileNotFoundError:  # a dangling link: its own identity (reading it fails)
                info = entry.stat(follow_symlinks=False)
            lines.append(
                f"{relative}{entry.name}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}\n"
            )
            total += info.st_size
        files += len(lines)
        digest.update("".join(lines).encode("utf-8", "surrogateescape"))
    return {"files": files, "size": total, "digest": digest.hexdigest()}


def _stat(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except OSError as exc:
        raise InputError(f"Cannot read the input {path}: {exc.strerror or exc}.") from exc


def input_records(folder: Path, manifest: Manifest, inputs: list[Path]) -> list[dict[str, Any]]:
    """Name, path, size, and the sha256 `fetch` holds each input to (from `manifest`, or from
    the checksums recorded on download), given only when the file still has the size fetch
    saw: encode does not re-hash its inputs, and must not vouch for a file swapped since."""
    known = expected_checksums(folder, manifest)
    records = []
    for path in inputs:
        size = path.stat().st_size if path.is_file() else None
        checksum = known.get(path.name)
        vouched = checksum is not None and bool(checksum.sha256) and checksum.size in (None, size)
        records.append(
            {
                "name": path.name,
                "path": str(path),
                "size": size,
                "sha256": checksum.sha256 if checksum is not None and vouched else None,
                "sha256_source": checksum.source if checksum is not None and vouched else None,
            }
        )
    return records


def package_versions() -> dict[str, str]:
    """Python's version and those of the packages the outputs depend on."""
    versions = {"python": platform.python_version()}
    for name in ("amc-data", "numpy", "scipy", "pyarrow", "scikit-learn"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions
