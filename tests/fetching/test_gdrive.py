"""The Google Drive flow (folder listing, virus-scan confirmation, quota page) against a local
fake of Drive's pages: the manifest URL points at the fake, nothing else is switched."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fetch_helpers import zip_bytes
from support.servers import FakeServer, drive_confirmation_page, serve, write_manifest

from amc_data.fetching.core import FetchResult, Outcome, fetch
from amc_data.fetching.gdrive import drive_folder_id, parse_confirmation_page, parse_folder_view
from amc_data.fetching.problems import Problem

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
    return zip_bytes(seed, size)  # the Drive files are zips: recorded only when complete


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
    # A plainer layout: the link text is the name.
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
    assert result.outcome is Outcome.FAILED and result.problem is Problem.HTML
    assert "keywords_dev.zip" in result.reason
    assert "--from" in result.reason and "by hand" in result.reason
    assert "Too many users" in result.reason  # Drive's own words
    assert server.routes[f"/uc?id={DEV}"].requests == 1  # a quota page is not hammered
    assert not (tmp_path / "data" / "d" / "keywords_dev.zip").exists()


def test_file_missing_from_folder(tmp_path, server):
    url = drive_folder(server)
    [result] = run(tmp_path, ["keywords_other.zip"], url)
    assert result.outcome is Outcome.FAILED and result.problem is Problem.NOT_LISTED
    assert "keywords_dev.zip" in result.reason  # what the folder does list


def test_listing_error_is_retried(tmp_path, server):
    url = drive_folder(server)
    server.routes[f"/embeddedfolderview?id={ROOT}"].fail = {1: 503}
    server.add_drive_file(DEV, blob(5), mode="direct")
    [result] = run(tmp_path, ["keywords_dev.zip"], url)
    assert result.ok
    assert server.routes[f"/embeddedfolderview?id={ROOT}"].requests == 2


PAGE_URL = "https://drive.google.com/uc?export=download&id=1Abc"


def test_confirmation_form_of_todays_page():
    action = "https://drive.usercontent.google.com/download"
    page = parse_confirmation_page(
        drive_confirmation_page(action, "1Abc", "x.zip (1.2G)"), PAGE_URL
    )
    assert page.url == (
        "https://drive.usercontent.google.com/download?id=1Abc&export=download&confirm=t"
        "&uuid=5c3c1b4e-7d2f-4a8e-9b1c-0a1b2c3d4e5f"
    )
    assert "can't scan this file for viruses" in page.message


def test_confirmation_link_of_older_pages_and_relative_form():
    older = (
        '<html><body><p class="uc-warning-caption">Google Drive can\'t scan this file.</p>'
        '<a id="uc-download-link" class="goog-inline-block jfk-button" '
        'href="/uc?export=download&amp;confirm=AbCd&amp;id=1Abc">Download anyway</a></body></html>'
    )
    page = parse_confirmation_page(older, PAGE_URL)
    assert page.url == "https://drive.google.com/uc?export=download&confirm=AbCd&id=1Abc"
    relative = (
        '<form id="download-form" action="/download?x=1">'
        '<input type="hidden" name="id" value="a b"></form>'
    )
    assert parse_confirmation_page(relative, PAGE_URL).url == (
        "https://drive.google.com/download?x=1&id=a+b"
    )
    script = '<script>var c = {"downloadUrl":"https://drive.usercontent.google.com/d?id\\u003d1\\u0026c\\u003dt"};</script>'
    assert parse_confirmation_page(script, PAGE_URL).url == (
        "https://drive.usercontent.google.com/d?id=1&c=t"
    )


def test_quota_page_and_hostile_pages_give_no_url():
    quota = server_quota_page()
    page = parse_confirmation_page(quota, PAGE_URL)
    assert page.url is None
    assert page.message.startswith("Sorry, you can't view or download this file at this time.")
    assert "Too many users" in page.message
    for hostile in (
        '<form id="download-form" action="javascript:alert(1)"></form>',
        '<a id="uc-download-link" href="file:///etc/passwd">x</a>',
        "<html><body>nothing here</body></html>",
        '<form id="download-form" action="http://[::1">',  # an unclosed IPv6 bracket
    ):
        assert parse_confirmation_page(hostile, PAGE_URL).url is None, hostile


def server_quota_page() -> str:
    with serve() as fake:
        fake.add_drive_file("q", b"", mode="quota")
        return fake.routes["/uc?id=q"].data.decode()
