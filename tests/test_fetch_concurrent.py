"""Two `amc-data fetch` processes on one data folder at once both end with verified files, and
the file is downloaded once: the second run waits for the first, then finds it present."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys

from servers import serve, write_manifest

from amc_data.verify import FileStatus, verify


def test_two_processes_same_data_folder(tmp_path):
    hashed = random.Random(11).randbytes(1_000_000)
    free = random.Random(12).randbytes(400_000)
    with serve() as server:
        # Slow enough (about half a second per file) that the two runs overlap.
        hashed_route = server.add("/hashed.bin", hashed, chunk_delay=0.03)
        free_route = server.add("/free.bin", free, chunk_delay=0.05)
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
            sys.executable, "-m", "amc_data", "fetch", "--manifest", str(manifest),
            "--data-dir", str(tmp_path / "data"), "--backoff", "0", "--jobs", "2",
        ]  # fmt: skip
        runs = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)
        ]
        outputs = [run.communicate(timeout=60)[0] for run in runs]
    for run, output in zip(runs, outputs, strict=True):
        assert run.returncode == 0, output
    assert hashed_route.requests == 1 and hashed_route.bytes_sent == len(hashed)
    assert free_route.requests == 1 and free_route.bytes_sent == len(free)
    # One run downloaded (or recorded) each file, the other found it present.
    assert sum(" present" in output for output in outputs) >= 1
    reports = verify(data_dir=tmp_path / "data", manifest_paths=[manifest])
    assert [r.status for r in reports] == [FileStatus.OK, FileStatus.OK]
