"""`fetch` against what a hostile review found: bytes are recorded as the truth only when they are
complete and structurally valid, and a machine without a network fails fast and says why.

Every server here is the real loopback server of `servers.py`; every unreachable address is a
name under `.invalid` (which never resolves) or a closed port on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import random
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support.fetch_helpers import entry, folder, run, visible, zip_bytes
from support.servers import FakeServer, serve, write_manifest

from amc_data.fetching.core import Outcome, fetch_manifests
from amc_data.fetching.download import HttpDownloader
from amc_data.fetching.manifest import CHECKSUMS_FILE_NAME, load_manifest
from amc_data.fetching.problems import Problem

SIZE = 300_000
DATA = random.Random(21).randbytes(SIZE)
OTHER = random.Random(22).randbytes(SIZE)  # the same file, "version 2"
PAGE = b"<!DOCTYPE html><html><head><title>Sign in</title></head><body>" + b" " * 3000 + b"</html>"


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with serve() as fake:
        yield fake


def recorded(tmp_path: Path) -> dict:
    path = folder(tmp_path) / CHECKSUMS_FILE_NAME
    return json.loads(path.read_text())["files"] if path.exists() else {}


# --------------------------------------------------------------------------- short bodies


def test_206_whose_total_exceeds_the_body_is_a_short_body(tmp_path, server):
    # The server answers every request with a 206 of 100,000 bytes out of 300,000.
    route = server.add("/f.bin", DATA, piece=100_000)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], None)])
    assert result.outcome is Outcome.RECORDED
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA  # not the first 100,000 bytes
    assert route.ranges_asked == [None, "bytes=100000-", "bytes=200000-"]
    assert result.problems == ()


# --------------------------------------------------------------------------- HTML sniffing


@pytest.mark.parametrize(
    ("body", "segments"),
    [(b"\n" + PAGE, (1,)), (PAGE, (1,)), (b"\xef\xbb\xbf" + b" " * 500 + PAGE, (3, 1, 600))],
    ids=["first read one newline", "first read one byte", "bom and blanks over reads"],
)
def test_html_is_caught_however_its_first_bytes_arrive(tmp_path, server, body, segments):
    route = server.add("/f.bin", body, segments=segments)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], None)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.HTML
    assert route.requests == 1
    assert visible(tmp_path) == [] and recorded(tmp_path) == {}


def test_data_arriving_a_byte_at_a_time_is_not_html(tmp_path, server):
    body = b"\n<not html, a list>\n" + DATA
    server.add("/f.lst", body, segments=(1, 1, 1))
    [result] = run(tmp_path, [entry("f.lst", [server.url("/f.lst")], None)])
    assert result.outcome is Outcome.RECORDED
    assert (folder(tmp_path) / "f.lst").read_bytes() == body


# --------------------------------------------------------------------------- resume validators


def _interrupted(tmp_path: Path, server: FakeServer, **route_options) -> tuple:
    """A first run whose body breaks after 100,000 bytes of version 1 (no hash known)."""
    route = server.add("/f.bin", DATA, drop_after={1: 100_000}, **route_options)
    files = [entry("f.bin", [server.url("/f.bin")], None)]
    [first] = run(tmp_path, files, retries=0)
    assert first.outcome is Outcome.FAILED and first.problem is Problem.NETWORK
    return route, files, first


@pytest.mark.parametrize("if_range", ["honour", "ignore"])
def test_resume_across_a_changed_file_starts_over(tmp_path, server, if_range):
    route, files, _ = _interrupted(tmp_path, server, if_range=if_range)
    first_etag = route.current_etag()
    route.data = OTHER  # the file changed on the server between the runs
    [result] = run(tmp_path, files)
    assert result.outcome is Outcome.RECORDED
    assert (folder(tmp_path) / "f.bin").read_bytes() == OTHER  # never v1's head + v2's tail
    assert recorded(tmp_path)["f.bin"]["sha256"] == hashlib.sha256(OTHER).hexdigest()
    assert route.if_ranges[1] == first_etag  # the resume carried the first answer's validator


def test_resume_with_last_modified_only(tmp_path, server):
    stamp = "Wed, 21 Oct 2015 07:28:00 GMT"
    route, files, _ = _interrupted(tmp_path, server, etag=False, last_modified=stamp)
    [result] = run(tmp_path, files)
    assert result.outcome is Outcome.RECORDED  # resumed, and recorded: no hash was known
    assert route.ranges_asked[1] == "bytes=100000-" and route.if_ranges[1] == stamp
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA


def test_no_validator_means_no_resume(tmp_path, server):
    route, files, first = _interrupted(tmp_path, server, etag=False)
    assert "cannot be resumed" in first.reason  # what happened to the bytes, said truly
    [result] = run(tmp_path, files)
    assert result.outcome is Outcome.RECORDED
    assert route.ranges_asked == [None, None]  # the held bytes were not trusted
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA


def _held_at_resume(asked: str | None) -> int:
    assert asked is not None and asked.startswith("bytes=") and asked.endswith("-")
    return int(asked.removeprefix("bytes=").removesuffix("-"))


def test_a_published_hash_lets_a_file_resume_without_a_validator(tmp_path, server):
    size = 3_000_000
    data = random.Random(23).randbytes(size)
    route = server.add("/f.bin", data, etag=False, drop_after={1: 1_200_000})
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], data)])
    assert result.outcome is Outcome.RESUMED and result.problems == ()
    assert (folder(tmp_path) / "f.bin").read_bytes() == data
    assert route.ranges_asked[0] is None and route.if_ranges[1] is None  # nothing to send
    held = _held_at_resume(route.ranges_asked[1])
    assert 0 < held <= 1_200_000
    assert route.bytes_sent == 1_200_000 + size - held < size + 1_200_000  # only the rest again
    assert visible(tmp_path) == ["f.bin"]  # the resume state went with the partial


def test_a_partial_with_a_hash_but_no_validator_survives_a_failed_run(tmp_path, server):
    route = server.add("/f.bin", DATA, etag=False, drop_after={1: 100_000})
    files = [entry("f.bin", [server.url("/f.bin")], DATA)]
    [failed] = run(tmp_path, files, retries=0)
    assert failed.problem is Problem.NETWORK and "kept for resuming" in failed.reason
    [result] = run(tmp_path, files)
    assert result.outcome is Outcome.RESUMED
    assert 0 < _held_at_resume(route.ranges_asked[1]) <= 100_000
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA


def test_a_resume_spliced_onto_another_file_starts_over_once(tmp_path, server):
    # The second answer (the resume) is the rest of another version of the file; the third
    # answer is the expected file again.
    route = server.add("/f.bin", DATA, etag=False, drop_after={1: 100_000}, data_for={2: OTHER})
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], DATA)])
    assert result.outcome is Outcome.DOWNLOADED and result.problems == ()
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA  # not v1's head + v2's tail
    assert route.ranges_asked[1] is not None and route.ranges_asked[2] is None  # from zero
    assert route.requests == 3
    assert visible(tmp_path) == ["f.bin"]


def test_a_source_that_keeps_serving_another_file_fails_clearly(tmp_path, server):
    route = server.add(
        "/f.bin", DATA, etag=False, drop_after={1: 100_000}, data_for={2: OTHER, 3: OTHER}
    )
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], DATA)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.WRONG_FILE
    assert "not the expected file" in result.reason and "sha256" in result.reason
    assert route.requests == 3  # one start over from zero, no more
    assert route.ranges_asked[2] is None
    assert visible(tmp_path) == []  # nothing at the final name, no partial kept


def test_a_file_with_only_a_size_still_needs_a_validator(tmp_path, server):
    route = server.add("/f.bin", DATA, etag=False, drop_after={1: 100_000})
    [result] = run(tmp_path, [{"name": "f.bin", "urls": [server.url("/f.bin")], "size": SIZE}])
    assert result.outcome is Outcome.RECORDED
    assert route.ranges_asked == [None, None]  # a size alone cannot catch a spliced file
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA


# --------------------------------------------------------------------------- content encoding


@pytest.mark.parametrize("hashes", ["none", "all"])
def test_gzip_body_is_decoded_before_hashing(tmp_path, server, hashes):
    server.add("/f.bin", DATA, content_encoding="gzip")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], DATA, hashes=hashes)])
    assert result.ok and result.size == SIZE
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA
    if hashes == "none":
        assert recorded(tmp_path)["f.bin"]["sha256"] == hashlib.sha256(DATA).hexdigest()


def test_gzip_html_page_is_caught_as_html(tmp_path, server):
    route = server.add("/f.bin", PAGE, content_encoding="gzip")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], None)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.HTML
    assert route.requests == 1 and recorded(tmp_path) == {}


def test_gzip_body_cut_short_is_short(tmp_path, server):
    packed = gzip.compress(DATA)
    cut = {n: len(packed) // 2 for n in range(1, 5)}
    server.add("/f.bin", DATA, content_encoding="gzip", close_delimited=True, drop_after=cut)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], None)], retries=1)
    assert result.outcome is Outcome.FAILED and result.problem is Problem.SHORT_BODY
    assert recorded(tmp_path) == {} and not (folder(tmp_path) / "f.bin").exists()


def test_unknown_encoding_is_refused(tmp_path, server):
    route = server.add("/f.bin", DATA, content_encoding="br")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], None)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.ENCODING
    assert route.requests == 1 and "'br'" in result.reason


# --------------------------------------------------------------------------- archives with no hash


GOOD_ZIP = zip_bytes(5, 50_000)
CUT_ZIP = GOOD_ZIP[:-100]  # what a truncated download leaves


def test_truncated_zip_is_never_recorded(tmp_path, server):
    server.add("/a.zip", CUT_ZIP)  # served as if complete: right Content-Length, no error
    [result] = run(tmp_path, [entry("a.zip", [server.url("/a.zip")], None)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.INVALID_ARCHIVE
    assert "not a complete zip archive" in result.reason
    assert visible(tmp_path) == []  # no file, no partial, no record


def test_truncated_zip_falls_back_to_the_mirror(tmp_path, server):
    server.add("/cut.zip", CUT_ZIP)
    server.add("/a.zip", GOOD_ZIP)
    urls = [server.url("/cut.zip"), server.url("/a.zip")]
    [result] = run(tmp_path, [entry("a.zip", urls, None)])
    assert result.outcome is Outcome.RECORDED and result.origin == urls[1]
    assert result.problems == (Problem.INVALID_ARCHIVE,)
    assert recorded(tmp_path)["a.zip"]["sha256"] == hashlib.sha256(GOOD_ZIP).hexdigest()


def test_truncated_zip_given_with_from_is_refused(tmp_path, server):
    route = server.add("/a.zip", GOOD_ZIP)
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "a.zip").write_bytes(CUT_ZIP)
    files = [entry("a.zip", [server.url("/a.zip")], None)]
    [result] = run(tmp_path, files, from_dir=tmp_path / "given")
    assert result.outcome is Outcome.FAILED and result.problem is Problem.INVALID_ARCHIVE
    assert result.origin == str(tmp_path / "given" / "a.zip")
    assert route.requests == 0 and recorded(tmp_path) == {}


def test_truncated_zip_in_place_is_replaced_not_recorded(tmp_path, server):
    server.add("/a.zip", GOOD_ZIP)
    folder(tmp_path).mkdir(parents=True)
    (folder(tmp_path) / "a.zip").write_bytes(CUT_ZIP)
    [result] = run(tmp_path, [entry("a.zip", [server.url("/a.zip")], None)])
    assert result.outcome is Outcome.RECORDED and result.problems == (Problem.INVALID_ARCHIVE,)
    assert (folder(tmp_path) / "a.zip").read_bytes() == GOOD_ZIP
    assert recorded(tmp_path)["a.zip"]["size"] == len(GOOD_ZIP)


# --------------------------------------------------------------------------- what servers do


def test_reason_phrase_is_escaped(tmp_path, server):
    server.add("/f.bin", status=404, reason="Not Found\x1b[2J\x1b]0;owned\x07")
    [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], None)])
    assert result.outcome is Outcome.FAILED and result.problem is Problem.HTTP_STATUS
    assert "\x1b" not in result.reason and "\x07" not in result.reason
    assert "Not Found\\x1b[2J" in result.reason  # shown, escaped


@pytest.mark.parametrize(
    "target", ["/loop.bin", "ftp://nonexistent.invalid/f.bin", "file:///etc/passwd"]
)
def test_redirect_loop_or_away_from_http_fails_at_once(tmp_path, server, target):
    route = server.add("/loop.bin", redirect=target)
    [result] = run(tmp_path, [entry("f.bin", [server.url("/loop.bin")], None)], retries=3)
    assert result.outcome is Outcome.FAILED and result.problem is Problem.REDIRECT
    assert route.requests == (11 if target == "/loop.bin" else 1)  # one attempt, not four


def test_deadline_bounds_a_download_that_stalls(tmp_path, server):
    release = threading.Event()
    route = server.add("/f.bin", DATA, hold=release, hold_after=100_000)  # then nothing more
    try:
        [result] = run(tmp_path, [entry("f.bin", [server.url("/f.bin")], DATA)], deadline=0.5)
    finally:
        release.set()
    assert result.outcome is Outcome.FAILED and result.problem is Problem.DEADLINE
    assert "deadline of 0.5 s" in result.reason and "kept for resuming" in result.reason
    assert route.requests == 1


def test_cli_deadline_option(tmp_path, server):
    release = threading.Event()
    server.add("/f.bin", DATA, hold=release)  # headers, then nothing
    manifest = write_manifest(
        tmp_path / "t.toml", "t", [entry("f.bin", [server.url("/f.bin")], DATA)]
    )
    args = ["fetch", "--manifest", str(manifest), "--data-dir", str(tmp_path / "data")]
    try:
        result = CliRunner().invoke(cli, [*args, "--deadline", "0.3", "--backoff", "0"])
    finally:
        release.set()
    assert result.exit_code == 1
    assert "within the deadline of 0.3 s; no bytes were kept" in result.stderr


def test_body_of_unknown_length_is_capped(tmp_path, server):
    server.add("/endless.bin", DATA, close_delimited=True)
    server.add("/announced.bin", DATA)
    manifest = load_manifest(
        write_manifest(
            tmp_path / "t.toml",
            "t",
            [
                entry(name, [server.url(f"/{name}")], None)
                for name in ("endless.bin", "announced.bin")
            ],
        )
    )
    downloader = HttpDownloader(retries=2, backoff=0.01, timeout=5, max_unknown_size=100_000)
    results = fetch_manifests([manifest], data_dir=tmp_path / "data", jobs=1, downloader=downloader)
    assert [r.problem for r in results] == [Problem.TOO_LARGE, Problem.TOO_LARGE]
    assert [server.routes[f"/{r.name}"].requests for r in results] == [1, 1]  # not retried
    assert visible(tmp_path) == []  # nothing kept to resume from


def test_partial_of_unknown_length_is_not_resumed_from(tmp_path, server):
    release = threading.Event()
    route = server.add("/f.bin", DATA, close_delimited=True, hold=release, hold_after=50_000)
    files = [entry("f.bin", [server.url("/f.bin")], None)]
    try:
        [stalled] = run(tmp_path, files, deadline=0.5)
    finally:
        release.set()
    assert stalled.problem is Problem.DEADLINE and "cannot be resumed" in stalled.reason
    [result] = run(tmp_path, files)
    assert route.ranges_asked[-1] is None  # started over: the junk partial was not continued
    assert result.outcome is Outcome.RECORDED
    assert (folder(tmp_path) / "f.bin").read_bytes() == DATA


# --------------------------------------------------------------------------- no network


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _offline_manifest(tmp_path: Path) -> Path:
    """The bundled manifests' shape (three archives with a mirror each, four side files), every
    URL pointing where nothing answers."""
    refused = f"http://127.0.0.1:{_closed_port()}"
    side_files = ("clickture-dev.lst", "clickture-lite.lst", "img_id_map_dev.pkl", "img_id_map.pkl")
    archives = [
        {
            "name": f"keywords_{n}.zip",
            "urls": [f"http://nonexistent.invalid/drive/{n}", f"{refused}/mirror/{n}"],
        }
        for n in ("dev", "lite", "coco")
    ]
    side = [{"name": n, "urls": [f"http://nonexistent.invalid/raw/{n}"]} for n in side_files]
    files = archives + side
    return write_manifest(tmp_path / "offline.toml", "offline", files)


def test_no_network_fails_each_host_fast(tmp_path, caplog):
    manifest = load_manifest(_offline_manifest(tmp_path))
    downloader = HttpDownloader(retries=5, backoff=0.01, timeout=5)
    with caplog.at_level(logging.DEBUG, logger="amc_data.fetching.download"):
        results = fetch_manifests(
            [manifest], data_dir=tmp_path / "data", jobs=1, downloader=downloader
        )
    assert all(r.outcome is Outcome.FAILED for r in results)
    assert all(set(r.problems) == {Problem.UNREACHABLE} for r in results)
    attempts = [r.getMessage() for r in caplog.records if "bytes held" in r.getMessage()]
    assert sum("nonexistent.invalid" in a for a in attempts) == 2  # one retry, then never again
    assert sum("127.0.0.1" in a for a in attempts) == 2
    for r in results:
        assert "could not be reached" in r.reason and "kept" not in r.reason
    assert "its name does not resolve" in results[0].reason
    assert "the connection was refused" in results[0].reason
    assert not any((tmp_path / "data" / "offline").glob(".*.part"))


def test_cli_without_network_is_short_and_points_to_from(tmp_path):
    args = ["fetch", "--manifest", str(_offline_manifest(tmp_path))]
    result = CliRunner().invoke(
        cli, [*args, "--data-dir", str(tmp_path / "data"), "--backoff", "0.01"]
    )
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert len(lines) < 20, result.output
    assert sum("failed" in line for line in result.stdout.splitlines()) == 7  # the table stays
    assert "could not be reached" in result.stderr and "kept" not in result.output
    assert "No source could be reached" in result.stderr and "--from" in result.stderr
    assert "Traceback" not in result.output and "Max retries" not in result.output
