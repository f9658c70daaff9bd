"""Two `amc-data fetch` processes on one data folder at once both end with verified files, and
each file is downloaded once: the second run waits for the first, then finds it present."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import threading

from support.servers import serve, write_manifest

from amc_data.fetching.verify import FileStatus, verify

WAITING = "another amc-data process is fetching it; waiting"


def test_two_processes_same_data_folder(tmp_path):
    hashed = random.Random(11).randbytes(1_000_000)
    free = random.Random(12).randbytes(400_000)
    release = threading.Event()
    with serve() as server:
        # The bodies are held back until the second run is seen waiting, so the runs overlap.
        hashed_route = server.add("/hashed.bin", hashed, hold=release)
        free_route = server.add("/free.bin", free, hold=release)
        manifest = write_manifest(
            tmp_path / "c.toml",
            "c",
            [
                {
                    "name": "hashed.bin",
                    "urls": [server.url("/hashed.bin")],
                    "size": len(hashed),
                    "sha256": hashlib.sha256(hashed).hexdigest(),
                },
                {"name": "free.bin", "urls": [server.url("/free.bin")]},
            ],
        )
        command = [
            sys.executable,
            "-m",
            "amc_data",
            "fetch",
            "--manifest",
            str(manifest),
            "--data-dir",
            str(tmp_path / "data"),
            "--backoff",
            "0",
            "--jobs",
            "2",
        ]
        first = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for route in (hashed_route, free_route):  # both bodies held: both file locks are held
            if not route.holding.wait(60):
                release.set()
                raise AssertionError(
                    f"the first run never asked for the files: {first.communicate(timeout=60)[0]}"
                )
        second = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        waiting = threading.Event()
        seen: list[str] = []
        reader = threading.Thread(target=_read_lines, args=(second, seen, waiting), daemon=True)
        reader.start()  # the second run's output, read aside so no read can block the test
        waiting.wait(60)  # it says it waits for the first (or it ended, or a minute passed)
        release.set()
        outputs = [first.communicate(timeout=60)[0]]
        second.wait(timeout=60)
        reader.join(timeout=60)
        outputs.append("".join(seen))
    for run, output in zip((first, second), outputs, strict=True):
        assert run.returncode == 0, output
    assert WAITING in outputs[1]
    assert hashed_route.requests == 1 and hashed_route.bytes_sent == len(hashed)
    assert free_route.requests == 1 and free_route.bytes_sent == len(free)
    outcomes = [
        {line.split()[0]: line.split()[-1] for line in output.splitlines() if line[:2] == "c/"}
        for output in outputs
    ]
    assert outcomes[0] == {"c/hashed.bin": "downloaded", "c/free.bin": "recorded"}
    assert outcomes[1] == {"c/hashed.bin": "present", "c/free.bin": "present"}
    reports = verify(data_dir=tmp_path / "data", manifest_paths=[manifest])
    assert [r.status for r in reports] == [FileStatus.OK, FileStatus.OK]


def _read_lines(process: subprocess.Popen, seen: list[str], waiting: threading.Event) -> None:
    """Collect a process's output; set `waiting` at the line saying it waits, or at its end."""
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line)
        if WAITING in line:
            waiting.set()
    waiting.set()
