"""Features resident on the training device: any byte order, no warning, and a size check on the
CPU as on a GPU."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import amc_data.ranking.resident as resident  # noqa: E402
from amc_data import load_prepared, synth  # noqa: E402
from amc_data.errors import ConfigError  # noqa: E402
from amc_data.ranking.checkpoint import read_checkpoint  # noqa: E402
from amc_data.ranking.config import TrainConfig  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402

OPTIONS = dict(loss="pool", pool_negatives=16, epochs=1, seed=1, device="cpu", dim=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "data"
    synth(out, seed=5, images=240, queries=90)
    return out


def _big_endian_copy(data: Path, tmp_path: Path) -> Path:
    """The prepared folder `data` with its features rewritten in big-endian byte order."""
    import shutil

    copy = tmp_path / "big-endian"
    shutil.copytree(data, copy)
    features = np.load(copy / "features.npy")
    np.save(copy / "features.npy", features.astype(features.dtype.newbyteorder(">")))
    assert np.load(copy / "features.npy", mmap_mode="r").dtype.byteorder == ">"
    return copy


def test_big_endian_features_train_on_the_device_as_from_the_file(
    data: Path, tmp_path: Path
) -> None:
    swapped = _big_endian_copy(data, tmp_path)
    host = train(data, tmp_path / "host", TrainConfig(features_on="host", **OPTIONS))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning included
        device = train(swapped, tmp_path / "device", TrainConfig(features_on="device", **OPTIONS))
    a = read_checkpoint(host.run_dir / "last.pt")["model"]
    b = read_checkpoint(device.run_dir / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_features_larger_than_the_free_memory_are_refused_on_the_cpu_before_allocating(
    data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared = load_prepared(data)
    room = prepared.features.nbytes - 1
    monkeypatch.setattr(resident, "available_memory", lambda: room)
    monkeypatch.setattr(torch, "empty", lambda *a, **k: pytest.fail("allocated anyway"))
    with pytest.raises(ConfigError, match=r"^features_on device: the features of .* take") as info:
        resident.ResidentFeatures(prepared, torch.device("cpu"))
    assert info.value.parameter == "features_on"
    assert "features_on host" in str(info.value)
