"""SIGTERM (kill, timeout, job schedulers) stops every command as Ctrl-C does: a clean exit with a
message, nothing half-written left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

COMMAND = [sys.executable, "-c", "from amc_data_cli.main import main; main()"]


def _terminate_when(process: subprocess.Popen, ready, timeout: float = 60.0) -> tuple[int, str]:
    """SIGTERM `process` as soon as `ready()` holds; its exit code and standard error."""
    deadline = time.monotonic() + timeout
    while not ready():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"the command ended or stalled before the signal: {process.communicate()}")
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return process.returncode, err


def test_sigterm_during_synth_leaves_no_work_folder(tmp_path: Path) -> None:
    out = tmp_path / "data"
    process = subprocess.Popen(
        [*COMMAND, "synth", str(out), "--images", "400000", "--queries", "2000", "-q"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    code, err = _terminate_when(process, lambda: any(tmp_path.glob(".data.synth-*")))
    assert code == 128 + signal.SIGTERM, err
    assert "Stopped by SIGTERM; nothing half-written was left behind." in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_sigterm_during_training_leaves_whole_checkpoints_and_no_temporary_file(
    tmp_path: Path,
) -> None:
    pytest.importorskip("torch")
    from amc_data import synth
    from amc_data.ranking.checkpoint import read_checkpoint

    data = tmp_path / "data"
    synth(data, seed=2, images=600, queries=200)
    run = tmp_path / "run"
    process = subprocess.Popen(
        [*COMMAND, "train", str(data), "--out", str(run), "--epochs", "500", "--dim", "8"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    code, err = _terminate_when(process, lambda: (run / "best.pt").is_file())
    assert code == 128 + signal.SIGTERM, err
    assert "Stopped by SIGTERM" in err and "Traceback" not in err
    # What is saved, and the command that continues it.
    assert f"{run} holds " in err and "of 500 epochs; continue with amc-data train" in err
    assert "--resume" in err
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert read_checkpoint(run / "last.pt")["epoch"] >= 1
