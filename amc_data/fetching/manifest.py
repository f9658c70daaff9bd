"""Manifests (where each file of a dataset comes from and what it must be) and the checksum record
(the size and sha256 recorded on first download for files whose manifest has none).

A manifest is a TOML file, one per dataset:

    name = "coco"
    [[files]]
    name = "keywords_coco.zip"   # lands at <data-dir>/coco/keywords_coco.zip
    urls = ["https://...", "https://..."]   # tried in order
    size = 123                   # optional
    sha256 = "..."               # optional
    git_blob_sha1 = "..."        # optional
    note = "..."                 # optional, shown by `amc-data info`
    optional = "precomp"         # optional: fetched only when asked (`fetch --with precomp`)

A file with `optional` belongs to that named group: `fetch`, `verify` and `info` leave it out
unless the group is asked for (`resolve_manifests(..., with_optional=("precomp",))`).

The checksum record, `<data-dir>/<dataset>/checksums.json`, holds what amc-data recorded for
files the manifest gives no hash for; later runs and `verify` hold those files to it. Earlier
versions called it `amc-data.lock.json`: that name is still read, and `fetch` moves its records
into `checksums.json`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import os
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit

from filelock import FileLock, Timeout

from ..errors import ConfigError, LockTimeoutError, ManifestError
from ..files import atomic_write_bytes
from .checksums import FileChecksum

log = logging.getLogger(__name__)

CHECKSUMS_FILE_NAME = "checksums.json"
LEGACY_CHECKSUMS_FILE_NAME = "amc-data.lock.json"  # its earlier name: read, then migrated
LOCK_FILE_NAME = CHECKSUMS_FILE_NAME  # the old constant's name, kept importable for now
CHECKSUMS_FORMAT = 1
GUARD_WAIT_S = 60.0  # writers hold the record's guard for milliseconds; a minute means trouble

_DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")  # whole name: fullmatch
_HEX = {"sha256": 64, "git_blob_sha1": 40}
_RESERVED_NAMES = (CHECKSUMS_FILE_NAME, LEGACY_CHECKSUMS_FILE_NAME)
_TOP_KEYS = {"name", "description", "note", "files"}
_FILE_KEYS = {"name", "urls", "size", "sha256", "git_blob_sha1", "note", "optional"}
_GROUP_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")  # an optional group: whole name


@dataclass(frozen=True)
class FileEntry:
    """One file of a dataset: its name in the dataset folder, its sources, what it must be."""

    name: str
    urls: tuple[str, ...]
    size: int | None = None
    sha256: str | None = None
    git_blob_sha1: str | None = None
    note: str | None = None
    optional: str | None = None  # the group that asks for it; None: always fetched

    @property
    def checksum(self) -> FileChecksum:
        """The manifest's own expectations for this file."""
        known = self.size is not None or self.sha256 is not None or self.git_blob_sha1 is not None
        return FileChecksum(
            size=self.size,
            sha256=self.sha256,
            git_blob_sha1=self.git_blob_sha1,
            source="manifest" if known else "none",
        )


@dataclass(frozen=True)
class Manifest:
    """A dataset's manifest. `source` is where it was read from; `bundled` says whether it ships
    with amc-data or was given by the user (`--manifest`)."""

    name: str
    files: tuple[FileEntry, ...]
    source: str
    bundled: bool = False
    description: str | None = None
    note: str | None = None

    def file(self, name: str) -> FileEntry:
        """The entry called `name` (KeyError when there is none)."""
        for entry in self.files:
            if entry.name == name:
                return entry
        raise KeyError(name)

    @property
    def optional_groups(self) -> tuple[str, ...]:
        """The groups of optional files, sorted."""
        return tuple(sorted({e.optional for e in self.files if e.optional is not None}))

    def selecting(self, groups: Iterable[str]) -> Manifest:
        """This manifest with its optional files left out, but for those of `groups`."""
        wanted = set(groups)
        files = tuple(e for e in self.files if e.optional is None or e.optional in wanted)
        return dataclasses.replace(self, files=files)


# --------------------------------------------------------------------------- manifest loading


def load_manifest(path: str | os.PathLike[str], *, bundled: bool = False) -> Manifest:
    """Read and validate the manifest at `path` (ManifestError names the file and the key)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ManifestError(f"Cannot read the manifest {path}: {exc.strerror or exc}.") from exc
    return parse_manifest(data, source=str(path), bundled=bundled)


def parse_manifest(data: bytes | str, *, source: str, bundled: bool = False) -> Manifest:
    """Validate manifest TOML text; `source` names it in error messages."""
    text = data.decode("utf-8", errors="replace") if isinstance(data, bytes) else data
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"The manifest {source} is not valid TOML: {exc}.") from exc
    return _validate(raw, source, bundled)


def _fail(source: str, key: str, problem: str) -> ManifestError:
    return ManifestError(f"The manifest {source} is invalid at `{key}`: {problem}.")


def _validate(raw: Mapping[str, Any], source: str, bundled: bool) -> Manifest:
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        allowed = ", ".join(sorted(_TOP_KEYS))
        raise _fail(source, unknown[0], f"unknown key (allowed at the top level: {allowed})")
    name = raw.get("name")
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name):
        raise _fail(
            source,
            "name",
            "expected a dataset name of letters, digits, '.', '_' or '-' (it names the "
            f"dataset's folder), found {name!r}",
        )
    files = raw.get("files")
    if not isinstance(files, list) or not files:
        raise _fail(source, "files", "expected one or more [[files]] tables")
    entries = tuple(_validate_file(item, f"files[{i}]", source) for i, item in enumerate(files))
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        if entry.name in seen:
            raise _fail(source, f"files[{i}].name", f"{entry.name!r} is listed twice")
        seen.add(entry.name)
    return Manifest(
        name=name,
        files=entries,
        source=source,
        bundled=bundled,
        description=_optional_str(raw, "description", "description", source),
        note=_optional_str(raw, "note", "note", source),
    )


def _validate_file(item: Any, where: str, source: str) -> FileEntry:
    if not isinstance(item, dict):
        raise _fail(source, where, "expected a table with `name` and `urls`")
    unknown = sorted(set(item) - _FILE_KEYS)
    if unknown:
        allowed = ", ".join(sorted(_FILE_KEYS))
        raise _fail(source, f"{where}.{unknown[0]}", f"unknown key (allowed: {allowed})")
    name = item.get("name")
    if (
        not isinstance(name, str)
        or not name
        or not name.isprintable()  # a NUL or a control character
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or name in _RESERVED_NAMES
        or len(name) > 200
    ):
        raise _fail(
            source,
            f"{where}.name",
            "expected a plain file name (printable characters, no folders, not starting with '.', "
            f"not {' or '.join(map(repr, _RESERVED_NAMES))}), found {name!r}",
        )
    urls = item.get("urls")
    if not isinstance(urls, list) or not urls:
        raise _fail(source, f"{where}.urls", "expected a non-empty list of http(s) URLs")
    for j, url in enumerate(urls):
        parts = _url_parts(url)
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise _fail(source, f"{where}.urls[{j}]", f"expected an http(s) URL, found {url!r}")
    size = item.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise _fail(source, f"{where}.size", f"expected a whole number of bytes, found {size!r}")
    hashes: dict[str, str | None] = {}
    for key, length in _HEX.items():
        value = item.get(key)
        if value is not None and (
            not isinstance(value, str) or not re.fullmatch(f"[0-9a-fA-F]{{{length}}}", value)
        ):
            raise _fail(
                source, f"{where}.{key}", f"expected {length} hexadecimal digits, found {value!r}"
            )
        hashes[key] = value.lower() if value is not None else None
    return FileEntry(
        name=name,
        urls=tuple(urls),
        optional=_optional_group(item, where, source),
        size=size,
        sha256=hashes["sha256"],
        git_blob_sha1=hashes["git_blob_sha1"],
        note=_optional_str(item, "note", f"{where}.note", source),
    )


def _optional_group(item: Mapping[str, Any], where: str, source: str) -> str | None:
    """The entry's `optional` group: a short lower-case name, or None (always fetched)."""
    optional = item.get("optional")
    if optional is not None and (
        not isinstance(optional, str) or not _GROUP_NAME.fullmatch(optional)
    ):
        raise _fail(
            source,
            f"{where}.optional",
            "expected the name of a group of optional files (lower-case letters, digits, '-', "
            f"'_'), found {optional!r}",
        )
    return optional


def _url_parts(url: object) -> SplitResult | None:
    """The parts of a URL written as one printable word, else None."""
    if not isinstance(url, str) or not url.isprintable() or " " in url:
        return None
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return None


def _optional_str(raw: Mapping[str, Any], key: str, where: str, source: str) -> str | None:
    value = raw.get(key)
    if value is not None and not isinstance(value, str):
        raise _fail(source, where, f"expected text, found {value!r}")
    return value


def bundled_manifests() -> dict[str, Manifest]:
    """The manifests that ship with amc-data, by dataset name."""
    found: dict[str, Manifest] = {}
    for name, data, source in _bundled_manifest_files():
        manifest = parse_manifest(data, source=source, bundled=True)
        if manifest.name in found:
            raise ManifestError(
                f"Two bundled manifests name the dataset {manifest.name!r}: "
                f"{found[manifest.name].source} and {source} ({name})."
            )
        found[manifest.name] = manifest
    return dict(sorted(found.items()))


def _bundled_manifest_files() -> list[tuple[str, bytes, str]]:
    """(file name, bytes, location) of each bundled manifest: from the installed package
    `amc_data.manifests`, else (a source tree that was never installed) the repo's `manifests/`."""
    try:
        folder: Any = resources.files("amc_data.manifests")
        items = [item for item in folder.iterdir() if item.name.endswith(".toml")]
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        items = []
    if not items:
        repo_folder = Path(__file__).resolve().parents[2] / "manifests"
        items = sorted(repo_folder.glob("*.toml"))
    return [(item.name, item.read_bytes(), str(item)) for item in sorted(items, key=_name)]


def _name(item: Any) -> str:
    return str(item.name)


def resolve_manifests(
    datasets: Iterable[str] = (),
    manifest_paths: Iterable[str | os.PathLike[str]] = (),
    with_optional: Iterable[str] = (),
) -> list[Manifest]:
    """The manifests a command works on, their optional files left out but for the groups
    named in `with_optional` (a group no chosen manifest has is a ConfigError naming those
    there are).

    Manifests given by path replace the bundled ones of the same name. With no dataset named:
    the given manifests if any, else every bundled one. A name nobody knows is a ConfigError that
    lists the known ones.
    """
    groups = list(dict.fromkeys(with_optional))
    chosen = _chosen_manifests(datasets, manifest_paths)
    known = sorted({g for manifest in chosen for g in manifest.optional_groups})
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise ConfigError(
            f"No file of the chosen datasets belongs to the optional group "
            f"{', '.join(map(repr, unknown))}; the groups there are: {', '.join(known) or 'none'}.",
            parameter="with_optional",
        )
    return [manifest.selecting(groups) for manifest in chosen]


def _chosen_manifests(
    datasets: Iterable[str], manifest_paths: Iterable[str | os.PathLike[str]]
) -> list[Manifest]:
    """The manifests named (see `resolve_manifests`), whole."""
    given = [load_manifest(path) for path in manifest_paths]
    available = bundled_manifests()
    available.update({manifest.name: manifest for manifest in given})
    wanted = list(dict.fromkeys(datasets))
    if not wanted:
        return given or list(available.values())
    unknown = [name for name in wanted if name not in available]
    if unknown:
        known = ", ".join(available) or "none"
        raise ConfigError(
            f"Unknown dataset {', '.join(map(repr, unknown))}. Known datasets: {known}. "
            "To use another, pass its manifest with --manifest PATH."
        )
    return [available[name] for name in wanted]


# --------------------------------------------------------------------------- checksum record


def checksums_path(dataset_folder: str | os.PathLike[str]) -> Path:
    """Where a dataset folder's checksum record lives."""
    return Path(dataset_folder) / CHECKSUMS_FILE_NAME


def read_checksums(dataset_folder: str | os.PathLike[str]) -> dict[str, FileChecksum]:
    """The recorded checksums of a dataset folder, by file name (empty when none was recorded).
    Records still under the legacy name `amc-data.lock.json` are read too."""
    records = _read_all(Path(dataset_folder))
    return {
        name: FileChecksum(size=rec["size"], sha256=rec["sha256"], source="recorded")
        for name, rec in records.items()
    }


read_lock = read_checksums  # the old name, kept importable for now


def _read_all(folder: Path) -> dict[str, dict[str, Any]]:
    """The records of `checksums.json`, over those of the legacy file (a record in the new file
    wins)."""
    legacy = _read_records(folder / LEGACY_CHECKSUMS_FILE_NAME)
    return {**legacy, **_read_records(checksums_path(folder))}


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    """A checksum file's `files` table as stored, every key kept (empty when there is no such
    file). A malformed file is a ManifestError, never silently overwritten."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ManifestError(
            f"The checksum record {path} cannot be read ({exc}). It holds the checksums recorded "
            "on first download; delete it to record them again on the next `amc-data fetch`."
        ) from exc
    files = raw.get("files") if isinstance(raw, dict) else None
    if not isinstance(files, dict):
        raise ManifestError(
            f"The checksum record {path} has no `files` table. Delete it to record the checksums "
            "again on the next `amc-data fetch`."
        )
    for name, rec in files.items():
        size, sha256 = (rec.get("size"), rec.get("sha256")) if isinstance(rec, dict) else (0, 0)
        if not isinstance(size, int) or not isinstance(sha256, str) or len(sha256) != 64:
            raise ManifestError(
                f"The checksum record {path} has a malformed record for {name!r} (expected "
                f"`size` and `sha256`, found {rec!r}). Delete the record or the file to record "
                "it again."
            )
    return files


@contextmanager
def _guarded(folder: Path) -> Iterator[None]:
    """Hold the checksum record's guard: one writer at a time, across threads and processes."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(folder / f".{CHECKSUMS_FILE_NAME}.lock", timeout=GUARD_WAIT_S):
            yield
    except Timeout as exc:
        raise LockTimeoutError(
            f"Waited {GUARD_WAIT_S:.0f} s to update {checksums_path(folder)}; another amc-data "
            "process holds it. Try again when it is done."
        ) from exc


def _write_all(folder: Path, records: dict[str, dict[str, Any]]) -> None:
    """Write every record to `checksums.json`, then retire the legacy file (its records are
    all in the new one by then)."""
    body = {"format": CHECKSUMS_FORMAT, "files": dict(sorted(records.items()))}
    atomic_write_bytes(checksums_path(folder), (json.dumps(body, indent=2) + "\n").encode("utf-8"))
    legacy = folder / LEGACY_CHECKSUMS_FILE_NAME
    if legacy.exists():
        legacy.unlink()
        log.info("moved the records of %s into %s", legacy, CHECKSUMS_FILE_NAME)


def record_checksum(
    dataset_folder: str | os.PathLike[str], name: str, size: int, sha256: str, origin: str
) -> None:
    """Record a file's size and sha256 in the dataset folder's checksum record (atomic; safe
    against parallel jobs and other processes). `origin` says where the file came from."""
    folder = Path(dataset_folder)
    with _guarded(folder):
        records = _read_all(folder)  # other records keep every key they have
        records[name] = {
            "size": size,
            "sha256": sha256,
            "origin": origin,
            "recorded_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        _write_all(folder, records)
    log.info("recorded %s: %d bytes, sha256 %s", name, size, sha256)


def migrate_checksums(dataset_folder: str | os.PathLike[str]) -> None:
    """Move the records of a legacy `amc-data.lock.json` into `checksums.json` (nothing to do
    when there is no legacy file)."""
    folder = Path(dataset_folder)
    if not (folder / LEGACY_CHECKSUMS_FILE_NAME).exists():
        return
    with _guarded(folder):
        if (folder / LEGACY_CHECKSUMS_FILE_NAME).exists():  # another process may have done it
            _write_all(folder, _read_all(folder))


def expected_checksums(
    dataset_folder: str | os.PathLike[str], manifest: Manifest
) -> dict[str, FileChecksum]:
    """What each file of `manifest` must be in `dataset_folder`, without hashing anything.

    Manifest values win; values the manifest lacks come from the checksum record. `source` is
    "manifest" when the manifest gives any value, "recorded" when only the record does, "none"
    when nothing is known yet (the file cannot be verified).
    """
    records = read_checksums(dataset_folder)
    result: dict[str, FileChecksum] = {}
    for entry in manifest.files:
        own = entry.checksum
        rec = records.get(entry.name)
        if rec is None:
            result[entry.name] = own
            continue
        result[entry.name] = FileChecksum(
            size=own.size if own.size is not None else rec.size,
            sha256=own.sha256 if own.sha256 is not None else rec.sha256,
            git_blob_sha1=own.git_blob_sha1,
            source="manifest" if own.source == "manifest" else "recorded",
        )
    return result
