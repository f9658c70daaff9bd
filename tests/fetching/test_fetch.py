"""`fetch` against a real loopback HTTP server that misbehaves on purpose."""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from filelock import FileLock
from support.fetch_helpers import entry, folder, git_sha1, run, visible
from support.servers import FakeServer, serve

from amc_data.errors import ConfigError
from amc_data.fetching.body import looks_like_html
from amc_data.fetching.checksums import FileChecksum
from amc_data.fetching.core import Outcome
from amc_data.fetching.download import HttpDownloader, UrlSource
from amc_data.fetching.manifest import CHECKSUMS_FILE_NAME
from amc_data.fetching.problems import Problem

SIZE = 300_000


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with serve() as fake:
        yield fake


@pytest.fixture
def data() -> bytes:
    return random.Random(7).randbytes(SIZE)


def test_download_then_present_without_network(tmp_path, server, data):
    route = server.add("/f.bin", data)
    files = [entry("f.bin", [server.url("/f.bin")], data)]
    [result] = run(tmp_path, files)
    assert result.outcome is Outcome.DOWNLOADED and result.ok
    assert (folder(tmp_path) / "f.bin").read_bytes() == data
    assert visible(tmp_path) == ["f.bin"]  # no partial, no checksum record: the manifest vouches
    [again] = run(tmp_path, files)
    assert again.outcome is Outcome.PRESENT
    assert route.requests == 1


def test_resume_after_dropped_connection_resends_less(tmp_path, server, data):
    route = server.add("/f.bin", data, drop_after={1: 120_000})
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.RESUMED
    assert (folder(tmp_path) / "f.bin").read_bytes() == data
    assert route.requests == 2
    assert route.ranges_asked[0] is None
    held = int(route.ranges_asked[1].removeprefix("bytes=").removesuffix("-"))
    assert 0 < held <= 120_000  # resumed from the bytes the dropped connection delivered
    resent = route.bytes_sent - 120_000
    assert resent == SIZE - held < SIZE  # the second request sent only what was missing


def test_partial_survives_a_failed_run_and_the_next_run_resumes(tmp_path, server, data):
    route = server.add("/f.bin", data, drop_after={1: 150_000})
    files = [entry("f.bin", [server.url("/f.bin")], data)]
    [failed] = run(tmp_path, files, retries=0)
    assert failed.outcome is Outcome.FAILED and failed.problems == (Problem.NETWORK,)
    assert "kept for resuming" in failed.reason
    assert not (folder(tmp_path) / "f.bin").exists()  # nothing incomplete at the final name
    held = (folder(tmp_path) / ".f.bin.part").stat().st_size
    assert 0 < held < SIZE
    [result] = run(tmp_path, files)
    assert result.outcome is Outcome.RESUMED
    assert route.ranges_asked[1] == f"bytes={held}-"
    assert (folder(tmp_path) / "f.bin").read_bytes() == data


def test_server_ignoring_range_restarts_from_zero(tmp_path, server, data):
    route = server.add("/f.bin", data, drop_after={1: 100_000}, ranges="ignore")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.DOWNLOADED  # the 200 body was taken as the whole file
    assert (folder(tmp_path) / "f.bin").read_bytes() == data
    assert route.requests == 2
    assert route.ranges_asked[1] == "bytes=100000-"  # a resume was asked for, and answered 200


def test_206_starting_elsewhere_is_not_appended(tmp_path, server, data):
    route = server.add("/f.bin", data, drop_after={1: 100_000}, ranges="wrong-start")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.ok
    assert (folder(tmp_path) / "f.bin").read_bytes() == data
    assert route.ranges_asked[1] is not None  # the resume was asked for ...
    assert route.ranges_asked[2] is None  # ... refused, and the whole file asked for again


def test_503_twice_then_success(tmp_path, server, data):
    route = server.add("/f.bin", data, fail={1: 503, 2: 503})
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.DOWNLOADED
    assert route.requests == 3


def test_retries_run_out(tmp_path, server, data):
    route = server.add("/f.bin", data, fail={1: 503, 2: 429, 3: 503})
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)], retries=2)
    assert result.outcome is Outcome.FAILED and result.problem is Problem.SERVER_ERROR
    assert "503" in result.reason
    assert route.requests == 3


def test_404_is_not_retried_and_the_mirror_is_used(tmp_path, server, data):
    dead = server.add("/dead.bin", status=404)
    server.add("/f.bin", data)
    urls = [server.url("/dead.bin"), server.url("/f.bin")]
    [result] = run(tmp_path, [entry("f.bin", urls, data)])
    assert result.outcome is Outcome.DOWNLOADED
    assert result.origin == urls[1]
    assert result.problems == (Problem.HTTP_STATUS,)  # the dead mirror is reported
    assert "404" in result.reason
    assert dead.requests == 1


@pytest.mark.parametrize("dead", ["503 always", "wrong bytes", "html page"])
def test_mirror_fallback_after_a_bad_first_source(tmp_path, server, data, dead):
    if dead == "503 always":
        bad = server.add("/bad.bin", status=503)
    elif dead == "wrong bytes":
        bad = server.add("/bad.bin", bytes(len(data)))
    else:
        bad = server.add("/bad.bin", b"<!DOCTYPE html><html>moved</html>", content_type="text/html")
    good = server.add("/f.bin", data)
    urls = [server.url("/bad.bin"), server.url("/f.bin")]
    [result] = run(tmp_path, [entry("f.bin", urls, data)], retries=1)
    assert result.outcome is Outcome.DOWNLOADED and result.origin == urls[1]
    assert urls[0] in result.reason  # what went wrong with the first source is kept
    assert result.problems == (
        {"503 always": Problem.SERVER_ERROR, "wrong bytes": Problem.WRONG_FILE}.get(
            dead, Problem.HTML
        ),
    )
    assert bad.requests == (2 if dead == "503 always" else 1)  # only transient errors retried
    assert good.requests == 1 and good.ranges_asked == [None]  # nothing of the bad one resumed
    assert (folder(tmp_path) / "f.bin").read_bytes() == data


def test_close_delimited_short_body_never_lands(tmp_path, server, data):
    route = server.add("/f.bin", data[:-1000], close_delimited=True)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)], retries=1)
    assert result.outcome is Outcome.FAILED and result.problem is Problem.SHORT_BODY
    assert not (folder(tmp_path) / "f.bin").exists()
    assert route.requests >= 2  # a short body is retried


def test_body_shorter_than_content_length_every_time(tmp_path, server, data):
    route = server.add("/f.bin", data, drop_after={n: 1000 for n in range(1, 10)}, ranges="ignore")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)], retries=2)
    assert result.outcome is Outcome.FAILED and result.problem is Problem.NETWORK
    assert "kept for resuming" in result.reason
    assert route.requests == 3  # a broken body is retried, as many times as asked
    assert not (folder(tmp_path) / "f.bin").exists()  # never at the final name ...
    assert (folder(tmp_path) / ".f.bin.part").stat().st_size == 1000  # ... but kept beside it


def test_wrong_bytes_of_the_right_size(tmp_path, server, data):
    wrong = bytes(b ^ 0xFF for b in data)
    server.add("/f.bin", wrong)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.WRONG_FILE
    assert hashlib.sha256(data).hexdigest() in result.reason  # expected
    assert hashlib.sha256(wrong).hexdigest() in result.reason  # found
    assert visible(tmp_path) == []


def test_a_file_in_place_is_never_destroyed_by_a_bad_download(tmp_path, server, data):
    server.add("/f.bin", bytes(len(data)))
    target = folder(tmp_path) / "f.bin"
    target.parent.mkdir(parents=True)
    old = data[:-1] + b"x"  # what a user had: not the manifest's file, but theirs
    target.write_bytes(old)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.FAILED
    assert result.problems == (Problem.WRONG_FILE, Problem.WRONG_FILE)  # in place, then served
    assert str(target) in result.reason
    assert target.read_bytes() == old


def test_good_file_in_place_costs_no_request(tmp_path, server, data):
    route = server.add("/f.bin", bytes(len(data)))
    target = folder(tmp_path) / "f.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.PRESENT
    assert route.requests == 0
    assert target.read_bytes() == data


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"<html><body>Sign in</body></html>", "text/html"),
        (b"\xef\xbb\xbf \n <!DOCTYPE html><html>quota</html>" + bytes(SIZE), "application/zip"),
    ],
    ids=["html type", "zip type, bom and blanks"],
)
def test_html_page_instead_of_data(tmp_path, server, data, body, content_type):
    route = server.add("/f.bin", body, content_type=content_type)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data, hashes="none")])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.HTML
    assert "--from" in result.reason  # the way out
    assert route.requests == 1  # not retried
    assert visible(tmp_path) == []  # no partial, no file, no record


def test_looks_like_html():
    assert looks_like_html(b"  \r\n<!doctype HTML>")
    assert looks_like_html(b"\xef\xbb\xbf<html lang='en'>")
    assert looks_like_html(b"PK\x03\x04", "text/html; charset=utf-8")
    assert not looks_like_html(b"PK\x03\x04<html>")
    assert not looks_like_html(b"00048500\n00048501\n")


@pytest.mark.parametrize("layout", ["flat", "per-dataset"])
def test_from_folder_good_file_costs_no_request(tmp_path, server, data, layout):
    route = server.add("/f.bin", data)
    given = tmp_path / "given" / ("t" if layout == "per-dataset" else "")
    given.mkdir(parents=True)
    (given / "f.bin").write_bytes(data)
    files = [entry("f.bin", [server.url("/f.bin")], data)]
    [result] = run(tmp_path, files, from_dir=tmp_path / "given")
    assert result.outcome is Outcome.COPIED
    assert result.origin == str(given / "f.bin")
    assert (folder(tmp_path) / "f.bin").read_bytes() == data
    assert route.requests == 0


def test_from_folder_bad_file_fails_without_network(tmp_path, server, data):
    route = server.add("/f.bin", data)
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "f.bin").write_bytes(data[:-10])
    files = [entry("f.bin", [server.url("/f.bin")], data)]
    [result] = run(tmp_path, files, from_dir=tmp_path / "given")
    assert result.outcome is Outcome.FAILED and result.problem is Problem.WRONG_FILE
    assert result.origin == str(tmp_path / "given" / "f.bin")
    assert "--from" in result.reason and "not downloaded" in result.reason
    assert route.requests == 0
    assert not (folder(tmp_path) / "f.bin").exists()


def test_missing_from_folder_is_a_config_error(tmp_path, data):
    with pytest.raises(ConfigError, match="does not exist"):
        run(tmp_path, [entry("f.bin", ["http://127.0.0.1:9/f"], data)], from_dir=tmp_path / "no")


@pytest.mark.parametrize(
    ("options", "words"),
    [({"jobs": 0}, "jobs"), ({"retries": -1}, "retries"), ({"timeout": 0}, "timeout")],
)
def test_bad_settings_are_config_errors(tmp_path, data, options, words):
    with pytest.raises(ConfigError, match=words):
        run(tmp_path, [entry("f.bin", ["http://127.0.0.1:9/f"], data)], **options)


def test_file_without_hash_is_recorded_and_then_held_to_it(tmp_path, server, data):
    route = server.add("/f.bin", data)
    files = [entry("f.bin", [server.url("/f.bin")], data, hashes="none")]
    [result] = run(tmp_path, files)
    assert result.outcome is Outcome.RECORDED
    lock = json.loads((folder(tmp_path) / CHECKSUMS_FILE_NAME).read_text())
    assert lock["files"]["f.bin"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert lock["files"]["f.bin"]["size"] == SIZE
    # The file changes on disk: the next fetch sees it and puts the recorded file back.
    target = folder(tmp_path) / "f.bin"
    target.write_bytes(b"\0" + data[1:])
    [again] = run(tmp_path, files)
    assert again.outcome is Outcome.DOWNLOADED
    assert target.read_bytes() == data
    assert route.requests == 2
    # And a server that now serves other bytes is refused.
    target.unlink()
    route.data = bytes(len(data))
    [changed] = run(tmp_path, files)
    assert changed.outcome is Outcome.FAILED and changed.problem is Problem.WRONG_FILE
    assert "sha256" in changed.reason


def test_git_blob_sha1_only(tmp_path, server, data):
    server.add("/f.bin", data, close_delimited=True)  # size unknown until the end
    server.add("/g.bin", data)
    files = [
        entry("f.bin", [server.url("/f.bin")], data, hashes="git"),
        entry("g.bin", [server.url("/g.bin")], data[::-1], hashes="git"),
    ]
    ok, bad = run(tmp_path, files)
    assert ok.outcome is Outcome.DOWNLOADED  # vouched for by git: not "recorded"
    lock = json.loads((folder(tmp_path) / CHECKSUMS_FILE_NAME).read_text())
    assert lock["files"]["f.bin"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert bad.outcome is Outcome.FAILED and bad.problem is Problem.WRONG_FILE
    assert git_sha1(data[::-1]) in bad.reason


def test_announced_size_differs_from_manifest(tmp_path, server, data):
    server.add("/f.bin", data + b"extra")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.WRONG_FILE
    assert str(SIZE) in result.reason


def test_parallel_jobs(tmp_path, server):
    blobs = {f"f{i}.bin": random.Random(i).randbytes(50_000 + i) for i in range(6)}
    for name, blob in blobs.items():
        server.add(f"/{name}", blob, fail={1: 503})
    files = [entry(name, [server.url(f"/{name}")], blob) for name, blob in blobs.items()]
    results = run(tmp_path, files, jobs=3)
    assert [r.name for r in results] == list(blobs)  # manifest order
    assert all(r.outcome is Outcome.DOWNLOADED for r in results)
    for name, blob in blobs.items():
        assert (folder(tmp_path) / name).read_bytes() == blob


def test_parallel_records_all_land_in_the_checksum_record(tmp_path, server):
    blobs = {f"f{i}.bin": random.Random(i).randbytes(10_000) for i in range(8)}
    for name, blob in blobs.items():
        server.add(f"/{name}", blob)
    files = [entry(name, [server.url(f"/{name}")], None) for name in blobs]
    results = run(tmp_path, files, jobs=4)
    assert all(r.outcome is Outcome.RECORDED for r in results)
    lock = json.loads((folder(tmp_path) / CHECKSUMS_FILE_NAME).read_text())
    assert sorted(lock["files"]) == sorted(blobs)


def test_lock_held_elsewhere_times_out(tmp_path, server, data):
    route = server.add("/f.bin", data)
    folder(tmp_path).mkdir(parents=True)
    with FileLock(folder(tmp_path) / ".f.bin.lock"):  # another process at work on the file
        [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)], lock_timeout=0)
    assert result.outcome is Outcome.FAILED and result.problem is Problem.LOCKED
    assert "--lock-timeout" in result.reason
    assert route.requests == 0


class _Signal(logging.Handler):
    """Sets an event when a log message containing `words` is emitted."""

    def __init__(self, words: str, event: threading.Event) -> None:
        super().__init__()
        self.words, self.event = words, event

    def emit(self, record: logging.LogRecord) -> None:
        if self.words in record.getMessage():
            self.event.set()


def test_a_run_waits_for_the_lock_then_finds_the_file(tmp_path, server, data):
    route = server.add("/f.bin", data)
    files = [entry("f.bin", [server.url("/f.bin")], data)]
    [first] = run(tmp_path, files)
    assert first.outcome is Outcome.DOWNLOADED
    waiting = threading.Event()
    lock = FileLock(folder(tmp_path) / ".f.bin.lock", thread_local=False)  # freed by a thread
    lock.acquire()  # another process at work on the file, until the run says it waits
    releaser = threading.Thread(target=lambda: (waiting.wait(60), lock.release()))
    releaser.start()
    signal = _Signal("another amc-data process is fetching it; waiting", waiting)
    logging.getLogger("amc_data.fetching.core").addHandler(signal)
    try:
        [second] = run(tmp_path, files, lock_timeout=60)
    finally:
        logging.getLogger("amc_data.fetching.core").removeHandler(signal)
        releaser.join(60)
    assert waiting.is_set()
    assert second.outcome is Outcome.PRESENT and route.requests == 1


def test_cancel_stops_a_download_and_keeps_the_partial(tmp_path, server, data):
    release = threading.Event()
    route = server.add("/f.bin", data, hold=release, hold_after=100_000)
    part = tmp_path / ".f.bin.part"
    cancel = threading.Event()
    failures: list[BaseException] = []

    def download() -> None:
        with requests.Session() as session:
            try:
                HttpDownloader(retries=0, timeout=30)(
                    UrlSource(server.url("/f.bin"), "f.bin"),
                    part,
                    FileChecksum(),
                    session=session,
                    cancel=cancel,
                )
            except BaseException as exc:
                failures.append(exc)

    worker = threading.Thread(target=download)
    worker.start()
    assert route.holding.wait(30)  # the server sent 100,000 bytes and waits
    deadline = time.monotonic() + 30
    while not (part.exists() and part.stat().st_size > 0):  # some of them are on disk
        assert time.monotonic() < deadline, "nothing of the body was written"
        time.sleep(0.01)
    cancel.set()
    release.set()
    worker.join(30)
    assert [type(exc) for exc in failures] == [KeyboardInterrupt]
    assert 0 < part.stat().st_size <= 100_000  # what arrived before the cancel is kept
