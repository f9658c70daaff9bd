"""`verify` and `info` (library), and the `fetch` / `verify` / `info` commands through Click."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support.servers import FakeServer, serve, write_manifest

from amc_data.fetching.checksums import FileChecksum
from amc_data.fetching.manifest import record_checksum
from amc_data.fetching.verify import FileStatus, check_file, info, verify

DATA = random.Random(3).randbytes(100_000)
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with serve() as fake:
        yield fake


def manifest(tmp_path: Path, url: str = "http://127.0.0.1:9/x") -> Path:
    return write_manifest(
        tmp_path / "v.toml",
        "v",
        [
            {"name": "good.bin", "urls": [url], "size": len(DATA), "sha256": SHA},
            {"name": "free.bin", "urls": [url]},
        ],
    )


def place(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / "data" / "v" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def statuses(tmp_path: Path) -> dict[str, FileStatus]:
    reports = verify(data_dir=tmp_path / "data", manifest_paths=[manifest(tmp_path)])
    return {r.name: r.status for r in reports}


def test_verify_states(tmp_path):
    assert statuses(tmp_path) == {"good.bin": FileStatus.MISSING, "free.bin": FileStatus.MISSING}
    place(tmp_path, "good.bin", DATA)
    place(tmp_path, "free.bin", b"anything")
    assert statuses(tmp_path) == {"good.bin": FileStatus.OK, "free.bin": FileStatus.UNVERIFIABLE}
    sha = hashlib.sha256(b"anything").hexdigest()
    record_checksum(tmp_path / "data" / "v", "free.bin", 8, sha, "test")
    assert statuses(tmp_path)["free.bin"] is FileStatus.OK
    place(tmp_path, "free.bin", b"anythinG")  # a corrupted byte, same size
    place(tmp_path, "good.bin", DATA[:-1])
    assert statuses(tmp_path) == {
        "good.bin": FileStatus.SIZE_MISMATCH,
        "free.bin": FileStatus.HASH_MISMATCH,
    }


def test_check_file_details(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    wrong = FileChecksum(size=3, sha256="0" * 64, source="manifest")
    report = check_file("d", path, wrong)
    assert report.status is FileStatus.HASH_MISMATCH
    assert "sha256: expected " + "0" * 64 in report.detail
    assert report.actual.sha256 == hashlib.sha256(b"abc").hexdigest()
    fast = check_file("d", path, wrong, hash_it=False)
    assert fast.status is FileStatus.NOT_HASHED and fast.actual is None


@pytest.mark.parametrize("kind", ["folder", "symlink loop"])
def test_unreadable_file_is_a_status_not_a_traceback(tmp_path, kind):
    path = tmp_path / "data" / "v" / "good.bin"
    path.parent.mkdir(parents=True)
    if kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(path)  # stat() fails with "too many levels of symbolic links"
    assert statuses(tmp_path)["good.bin"] is FileStatus.UNREADABLE
    args = ["--data-dir", str(tmp_path / "data"), "--manifest", str(manifest(tmp_path))]
    for command in ("verify", "info"):
        result = invoke(command, *args)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.output  # a clean exit, not an exception
        )
        [row] = [line for line in result.stdout.splitlines() if "good.bin" in line]
        assert "unreadable" in row
    assert invoke("verify", *args).exit_code == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_is_unreadable(tmp_path):
    path = place(tmp_path, "good.bin", DATA)
    path.chmod(0)
    try:
        report = check_file("v", path, FileChecksum(size=len(DATA), sha256=SHA))
    finally:
        path.chmod(0o600)
    assert report.status is FileStatus.UNREADABLE and "ermission" in report.detail


def test_info_reports_folders_and_states(tmp_path):
    place(tmp_path, "good.bin", DATA)
    report = info(data_dir=tmp_path / "data", manifest_paths=[manifest(tmp_path)])
    assert report.data_dir == tmp_path / "data"
    [ds] = report.datasets
    assert ds.folder == tmp_path / "data" / "v" and not ds.manifest.bundled
    assert [f.status for f in ds.files] == [FileStatus.OK, FileStatus.MISSING]
    fast = info(data_dir=tmp_path / "data", manifest_paths=[manifest(tmp_path)], hash_files=False)
    assert [f.status for f in fast.datasets[0].files] == [FileStatus.NOT_HASHED, FileStatus.MISSING]


# --------------------------------------------------------------------------- the commands


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_cli_fetch_table_and_exit_codes(tmp_path, server):
    server.add("/good.bin", DATA)
    server.add("/free.bin", b"free bytes")
    path = write_manifest(
        tmp_path / "v.toml",
        "v",
        [
            {"name": "good.bin", "urls": [server.url("/good.bin")], "sha256": SHA},
            {"name": "free.bin", "urls": [server.url("/free.bin")]},
        ],
    )
    common = ["--data-dir", str(tmp_path / "data"), "--manifest", str(path), "--backoff", "0"]
    result = invoke("fetch", *common)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["file", "size", "outcome"]
    assert any(line.split()[::3] == ["v/good.bin", "downloaded"] for line in lines)
    assert any("v/free.bin" in line and "recorded" in line for line in lines)
    assert "checksums.json" in result.stdout
    again = invoke("fetch", *common, "--quiet")
    assert again.exit_code == 0 and again.stdout == ""
    # A failure: exit 1, the table says failed, the reason and a summary go to stderr.
    server.routes["/good.bin"].data = bytes(len(DATA))
    (tmp_path / "data" / "v" / "good.bin").unlink()
    failed = invoke("fetch", *common, "--retries", "0")
    assert failed.exit_code == 1
    assert any("v/good.bin" in line and "failed" in line for line in failed.stdout.splitlines())
    assert "sha256: expected " + SHA in failed.stderr
    assert "1 of 2 file(s) are not in place" in failed.stderr


def test_cli_fetch_unknown_dataset_lists_known(tmp_path):
    result = invoke("fetch", "flickr", "--data-dir", str(tmp_path))
    assert result.exit_code == 2
    assert "Unknown dataset 'flickr'" in result.stderr and "clickture, coco" in result.stderr


def test_cli_fetch_from_folder(tmp_path):
    (tmp_path / "given").mkdir()
    (tmp_path / "given" / "good.bin").write_bytes(DATA)
    (tmp_path / "given" / "free.bin").write_bytes(b"by hand")
    args = ["--data-dir", str(tmp_path / "data"), "--manifest", str(manifest(tmp_path))]
    result = invoke("fetch", *args, "--from", str(tmp_path / "given"))
    assert result.exit_code == 0, result.output
    assert "copied" in result.stdout and "recorded" in result.stdout
    assert (tmp_path / "data" / "v" / "good.bin").read_bytes() == DATA


def test_cli_verify_catches_corruption(tmp_path):
    args = ["--data-dir", str(tmp_path / "data"), "--manifest", str(manifest(tmp_path))]
    place(tmp_path, "good.bin", DATA)
    place(tmp_path, "free.bin", b"x")
    ok = invoke("verify", *args)
    assert ok.exit_code == 0, ok.output  # unverifiable is reported, not a failure
    assert "unverifiable" in ok.stdout and "ok" in ok.stdout
    place(tmp_path, "good.bin", b"\1" + DATA[1:])
    bad = invoke("verify", *args)
    assert bad.exit_code == 1
    assert "hash mismatch" in bad.stdout and "1 of 2 file(s)" in bad.stderr
    quiet = invoke("verify", *args, "--quiet")
    assert "free.bin" not in quiet.stdout and "good.bin" in quiet.stdout


def test_cli_info(tmp_path):
    place(tmp_path, "good.bin", DATA)
    result = invoke("info", "--data-dir", str(tmp_path / "data"))
    assert result.exit_code == 0, result.output
    assert f"data folder: {tmp_path / 'data'}" in result.stdout
    assert "clickture" in result.stdout and "manifest (bundled)" in result.stdout
    given = invoke(
        "info",
        "--data-dir",
        str(tmp_path / "data"),
        "--manifest",
        str(manifest(tmp_path)),
        "--no-hash",
    )
    assert given.exit_code == 0
    assert "manifest (given)" in given.stdout and "clickture" not in given.stdout
    assert "1 of 2 file(s) present (not hashed" in given.stdout
    hashed = invoke(
        "info", "--data-dir", str(tmp_path / "data"), "--manifest", str(manifest(tmp_path))
    )
    assert "1 of 2 file(s) present and verified" in hashed.stdout
