"""Validation's choice of the best epoch uses the NDCG gain the run names (exp or linear)."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from support.prepare_helpers import small_parts  # noqa: E402

from amc_data import load_prepared  # noqa: E402
from amc_data.evaluation.metrics import ndcg_at_k  # noqa: E402
from amc_data.prepare.writer import write_prepared  # noqa: E402
from amc_data.ranking.checkpoint import load_model  # noqa: E402
from amc_data.ranking.config import TrainConfig  # noqa: E402
from amc_data.ranking.scoring import score_split  # noqa: E402
from amc_data.ranking.training import train  # noqa: E402


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small prepared folder whose validation queries are judged on every validation image
    with graded labels (0-3), so that the two gains rank epochs differently."""
    tmp = tmp_path_factory.mktemp("graded")
    parts = small_parts(tmp, n_images=40)
    images, queries = parts["images"], parts["queries"]
    rng = np.random.default_rng(0)
    judged = [parts["judgments"][queries["split"].to_numpy() == "train"]]
    for split in ("val", "test"):
        pairs = queries[queries["split"] == split][["query_id"]].merge(
            images[images["split"] == split][["img_id"]], how="cross"
        )
        judged.append(pairs.assign(label=rng.integers(0, 4, len(pairs)).astype(np.int32)))
    parts["judgments"] = pd.concat(judged, ignore_index=True)
    return write_prepared(tmp / "data", **parts)


@pytest.mark.parametrize("gain", ["exp", "linear"])
def test_the_logged_validation_ndcg_uses_the_runs_gain(data: Path, tmp_path: Path, gain: str):
    result = train(data, tmp_path / gain, TrainConfig(epochs=1, dim=8, device="cpu", gain=gain))
    prepared = load_prepared(data)
    model = load_model(result.run_dir / "last.pt", prepared).model
    frame = score_split(model, prepared, "val")
    expected = {
        g: ndcg_at_k(frame["score"], frame["label"], 10, query_ids=frame["query_id"], gain=g)
        for g in ("exp", "linear")
    }
    assert expected["exp"] != pytest.approx(expected["linear"])
    assert result.log[-1]["ndcg@10"] == pytest.approx(expected[gain], rel=1e-6)
