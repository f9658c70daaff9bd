"""The search page's tests share one sample world (a synthetic prepared folder with pictures, an
AMC run and a visual baseline, made once) and one `amc-data serve` running as a real process on
a loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("torch")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("PIL")

from serve_helpers import Served, start_serve

from amc_data.serving.sample import SampleWorld, make_sample


@pytest.fixture(scope="session")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleWorld:
    return make_sample(tmp_path_factory.mktemp("serve-sample"), baseline="visual")


@pytest.fixture(scope="session")
def served(sample: SampleWorld) -> Iterator[Served]:
    """AMC and the visual baseline side by side, with the pictures."""
    running = start_serve(
        sample.runs["amc"],
        sample.runs["visual"],
        "--data",
        sample.data,
        "--images",
        sample.pictures,
    )
    yield running
    running.stop()
