"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
from pathlib import Path

# Under `pytest -n auto` every core runs a worker; torch's own thread pool on top of that makes
# the small models of the tests several times slower (threads spinning against each other).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder with the authors' real side files (`../shared/data`), or skip."""
    if not (SHARED_DATA / "clickture-dev.lst").is_file():
        pytest.skip(f"the real side files are absent: {SHARED_DATA} does not exist")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_data_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Never let a test touch the user's real data folder."""
    monkeypatch.setenv("AMC_DATA_HOME", str(tmp_path_factory.mktemp("amc-data-home")))
