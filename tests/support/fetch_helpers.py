"""Helpers shared by the fetch tests: manifest entries and a `fetch` run into a temporary folder."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from pathlib import Path

from support.servers import write_manifest

from amc_data.fetching.core import FetchResult, fetch

DATASET = "t"


def git_sha1(data: bytes) -> str:
    """The git blob sha1 of `data`, as git computes it."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def entry(name: str, urls: list[str], data: bytes | None, *, hashes: str = "all") -> dict:
    """A manifest entry; `hashes`: "all", "git" (git blob sha1 only) or "none"."""
    item: dict[str, object] = {"name": name, "urls": urls}
    if data is not None and hashes == "all":
        item.update(size=len(data), sha256=hashlib.sha256(data).hexdigest())
    if data is not None and hashes in ("all", "git"):
        item["git_blob_sha1"] = git_sha1(data)
    return item


def run(tmp_path: Path, files: list[dict], **options) -> list[FetchResult]:
    """`fetch` the manifest of `files` into `tmp_path/data/t`, with quick retries."""
    manifest = write_manifest(tmp_path / "t.toml", DATASET, files)
    options = {"retries": 3, "backoff": 0.01, "timeout": 5, "jobs": 1, **options}
    return fetch([DATASET], data_dir=tmp_path / "data", manifest_paths=[manifest], **options)


def folder(tmp_path: Path) -> Path:
    """The dataset folder `run` fetches into."""
    return tmp_path / "data" / DATASET


def visible(tmp_path: Path) -> list[str]:
    """The files of the dataset folder, file locks left out."""
    return sorted(p.name for p in folder(tmp_path).iterdir() if not p.name.endswith(".lock"))


def zip_bytes(seed: int, size: int = 200_000) -> bytes:
    """A complete zip archive of about `size` bytes (one stored member of random bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("keyword/00000001.json", random.Random(seed).randbytes(size))
    return buffer.getvalue()
