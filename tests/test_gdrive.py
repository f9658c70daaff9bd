"""The Google Drive flow (folder listing, virus-scan confirmation, quota page) against a local
fake of Drive's pages: the manifest URL points at the fake, nothing else is switched."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from servers import FakeServer, serve, write_manifest

from amc_data.fetching.core import FetchResult, Outcome, fetch
from amc_data.fetching.gdrive import drive_folder_id, parse_folder_view

ROOT = "1x4HAg5Mitx9sWo1XoQJ8aDKuMjObSgiX"
SUB = "1SubFolderSubFolderSubFolderAbc"
DEV = "1DevDevDevDevDevDevDevDevDevDevAa"
COCO = "1CocoCocoCocoCocoCocoCocoCocoCoBb"
LITE = "1LiteLiteLiteLiteLiteLiteLiteLiCc"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with serve() as fake:
        yield fake


def blob(seed: int, size: int = 200_000) -> bytes:
    return random.Random(seed).randbytes(size)


def run(tmp_path: Path, names: list[str], folder_url: str, **options) -> list[FetchResult]:
    files = [{"name": name, "urls": [folder_url]} for name in names]
    manifest = write_manifest(tmp_path / "d.toml", "d", files)
    options = {"retries": 2, "backoff": 0.01, "timeout": 5, "jobs": 1, **options}
    return fetch(data_dir=tmp_path / "data", manifest_paths=[manifest], **options)


def drive_folder(server: FakeServer) -> str:
    server.add_drive_folder(SUB, [("file", LITE, "keywords_lite.zip")])
    return server.add_drive_folder(
        ROOT,
        [
            ("file", DEV, "keywords_dev.zip"),
            ("folder", SUB, "more"),
            ("file", COCO, "keywords_coco.zip"),
        ],
    )


def test_parse_folder_view_reads_files_and_folders(server):
    url = drive_folder(server)
    assert drive_folder_id(url) == ROOT
    page = server.routes[f"/embeddedfolderview?id={ROOT}"].data.decode()
    assert parse_folder_view(page) == [
        ("file", DEV, "keywords_dev.zip"),
        ("folder", SUB, "more"),
        ("file", COCO, "keywords_coco.zip"),
    ]
    # gdown's plainer layout: the link text is the name.
    plain = '<a href="https://drive.google.com/file/d/abc/view?usp=sharing">a &amp; b.zip</a>'
    assert parse_folder_view(plain) == [("file", "abc", "a & b.zip")]


def test_drive_url_recognised_only_by_path():
    assert drive_folder_id("https://drive.google.com/drive/u/0/folders/xyz-1_2") == "xyz-1_2"
    assert drive_folder_id("http://127.0.0.1:8000/drive/folders/abc") == "abc"
    assert drive_folder_id("https://drive.google.com/file/d/abc/view") is None


def test_confirmation_page_direct_file_and_sub_folder(tmp_path, server):
    url = drive_folder(server)
    dev, coco, lite = blob(1), blob(2), blob(3)
    confirmed = server.add_drive_file(DEV, dev, mode="confirm")
    server.add_drive_file(COCO, coco, mode="direct")
    server.add_drive_file(LITE, lite, mode="confirm")
    names = ["keywords_dev.zip", "keywords_coco.zip", "keywords_lite.zip"]
    results = run(tmp_path, names, url, jobs=3)
    assert [r.outcome for r in results] == [Outcome.RECORDED] * 3  # Drive publishes no hashes
    for name, data in zip(names, (dev, coco, lite), strict=True):
        assert (tmp_path / "data" / "d" / name).read_bytes() == data
    assert confirmed.requests == 1
    assert server.routes[f"/embeddedfolderview?id={ROOT}"].requests == 1  # listed once per run
    assert server.routes[f"/embeddedfolderview?id={SUB}"].requests == 1


def test_resume_through_the_confirmation_page(tmp_path, server):
    url = drive_folder(server)
    dev = blob(4)
    data_route = server.add_drive_file(DEV, dev, mode="confirm", drop_after={1: 90_000})
    [result] = run(tmp_path, ["keywords_dev.zip"], url)
    assert result.outcome is Outcome.RECORDED
    assert (tmp_path / "data" / "d" / "keywords_dev.zip").read_bytes() == dev
    assert server.routes[f"/uc?id={DEV}"].requests == 2  # the confirmed URL is re-resolved
    assert data_route.ranges_asked == [None, "bytes=90000-"]
    assert data_route.bytes_sent == len(dev)


def test_quota_page_says_download_by_hand(tmp_path, server):
    url = drive_folder(server)
    server.add_drive_file(DEV, b"", mode="quota")
    [result] = run(tmp_path, ["keywords_dev.zip"], url)
    assert result.outcome is Outcome.FAILED
    assert "keywords_dev.zip" in result.reason
    assert "quota or confirmation page" in result.reason
    assert "--from" in result.reason and "by hand" in result.reason
    assert "Too many users" in result.reason  # Drive's own words
    assert server.routes[f"/uc?id={DEV}"].requests == 1  # a quota page is not hammered
    assert not (tmp_path / "data" / "d" / "keywords_dev.zip").exists()


def test_file_missing_from_folder(tmp_path, server):
    url = drive_folder(server)
    [result] = run(tmp_path, ["keywords_other.zip"], url)
    assert result.outcome is Outcome.FAILED
    assert "no file named 'keywords_other.zip'" in result.reason
    assert "keywords_dev.zip" in result.reason  # what the folder does list


def test_listing_error_is_retried(tmp_path, server):
    url = drive_folder(server)
    server.routes[f"/embeddedfolderview?id={ROOT}"].fail = {1: 503}
    server.add_drive_file(DEV, blob(5), mode="direct")
    [result] = run(tmp_path, ["keywords_dev.zip"], url)
    assert result.ok
    assert server.routes[f"/embeddedfolderview?id={ROOT}"].requests == 2
