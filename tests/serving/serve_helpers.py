"""`amc-data serve` as a real process on a loopback port, for the search page's tests."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

COMMAND = [sys.executable, "-m", "amc_data"]
START_SECONDS = 120.0


@dataclass
class Served:
    """A running `amc-data serve` process and its address."""

    process: subprocess.Popen
    url: str
    lines: queue.Queue = field(default_factory=queue.Queue)

    def get(self, path: str, **params: Any) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of a GET of `path` (`params` encoded as its query)."""
        address = self.url.rstrip("/") + path
        if params:
            address += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(address, timeout=60) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def api(self, path: str, **params: Any) -> tuple[int, Any]:
        status, _, body = self.get(path, **params)
        return status, json.loads(body)

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, str]:
        """Send `sig`, wait for the exit; (exit code, standard error)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            _, err = self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            _, err = self.process.communicate()
            pytest.fail(f"serve did not stop within 60 s of signal {sig}: {err}")
        return self.process.returncode, err


def _ctrl_c_as_at_a_terminal() -> None:
    """In the child before it starts: SIGINT back to its default. A suite started in the
    background by a non-interactive shell (`cmd &`) inherits SIGINT ignored, and a Python
    started so never turns Ctrl-C into KeyboardInterrupt; the tests play a user at a terminal."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_serve(*args: str | Path) -> Served:
    """`amc-data serve ARGS --port 0` started; returns once it says its address."""
    process = subprocess.Popen(
        [*COMMAND, "serve", *map(str, args), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        preexec_fn=_ctrl_c_as_at_a_terminal,
    )
    lines: queue.Queue = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        first = lines.get(timeout=START_SECONDS)
    except queue.Empty:
        process.kill()
        pytest.fail(f"serve said nothing in {START_SECONDS:.0f} s: {process.communicate()[1]}")
    if " at http://" not in first:
        process.kill()
        pytest.fail(f"serve did not start: {first!r} {process.communicate()[1]}")
    url = first.split(" at ", 1)[1].split()[0]
    return Served(process, url, lines)


def sample_queries(data: Path) -> list[str]:
    """The test queries of the prepared folder `data` (text a run trained on it knows)."""
    from amc_data import load_prepared

    return [str(q) for q in load_prepared(data).split_queries("test")["query"]]
