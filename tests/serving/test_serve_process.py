"""`amc-data serve` as a process: it stops cleanly on SIGTERM and Ctrl-C (SIGINT), answering what
it was asked before, and refuses what it cannot serve with a message."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import urllib.error
import urllib.request

import pytest
from serve_helpers import COMMAND, sample_queries, start_serve

from amc_data.serving.sample import SampleWorld


@pytest.mark.parametrize(
    ("sig", "code", "says"),
    [
        (signal.SIGTERM, 128 + signal.SIGTERM, "Stopped by SIGTERM"),
        (signal.SIGINT, 130, "Interrupted"),
    ],
)
def test_a_signal_stops_the_server_cleanly(
    sample: SampleWorld, sig: int, code: int, says: str
) -> None:
    served = start_serve(sample.runs["amc"], "--data", sample.data)
    status, body = served.api("/api/search", q=sample_queries(sample.data)[0], top=3)
    assert status == 200 and len(body["results"]) == 3
    exit_code, err = served.stop(sig)
    assert exit_code == code, err
    assert says in err and "Traceback" not in err
    with pytest.raises(urllib.error.URLError):  # nothing listens there any more
        urllib.request.urlopen(served.url, timeout=5)


def test_a_port_in_use_is_refused_with_a_message(sample: SampleWorld) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(
            [
                *COMMAND,
                "serve",
                str(sample.runs["amc"]),
                "--data",
                str(sample.data),
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode != 0
    assert f"Cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr
    assert "Traceback" not in done.stderr


def test_more_than_two_runs_are_refused(sample: SampleWorld) -> None:
    run = str(sample.runs["amc"])
    done = subprocess.run(
        [*COMMAND, "serve", run, run, run, "--data", str(sample.data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "one run or two" in done.stderr


@pytest.mark.slow
def test_the_demo_ends_with_a_serve_command_that_serves_its_run(tmp_path) -> None:
    done = subprocess.run(
        [
            *COMMAND,
            "demo",
            str(tmp_path / "demo"),
            "--images",
            "240",
            "--queries",
            "90",
            "--epochs",
            "1",
            "-q",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert "http://127.0.0.1:8000/" in last
    command = last.split("amc-data serve ", 1)[1].split(", then open")[0].split()
    assert command[:2] == [str(tmp_path / "demo" / "runs" / k) for k in ("amc", "visual")]
    served = start_serve(*command)
    try:
        status, body = served.api("/api/search", q=sample_queries(tmp_path / "demo" / "data")[0])
        assert status == 200 and body["results"][0]["region_weights"] is not None
        assert served.api("/api/info")[1]["runs"] == ["amc", "visual"]
    finally:
        served.stop()
