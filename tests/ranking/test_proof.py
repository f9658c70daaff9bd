"""The paper's claim, on data where it must hold: with default options (synth's and train's), AMC
beats every baseline and its intra-attention ablation on held-out NDCG@10 by a clear margin,
beats its inter-attention ablation, and weighs the image more for visual-intent queries than for
textual ones. Two seeds, not one lucky one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amc_data.prepare.format import PreparedDataset, load_prepared  # noqa: E402
from amc_data.prepare.synth import synth  # noqa: E402
from amc_data.ranking.checkpoint import load_model  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.runs import evaluate  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

VARIANTS = {
    "amc": {},
    "no-intra": {"intra": False},
    "no-inter": {"inter": False},
    "visual": {"model": "visual"},
    "keyword": {"model": "keyword"},
    "fusion": {"model": "fusion"},
    "cca": {"model": "cca"},
}
BASELINE_MARGIN = 0.15  # NDCG@10 AMC must lead each baseline by
ABLATION_MARGIN = 0.03  # ... and each ablation by
INTENT_GAP = 0.3  # mean image weight, visual-intent minus textual-intent queries


def modality_weights_by_intent(run: Path, prepared: PreparedDataset) -> dict[str, float]:
    """AMC's mean image weight on each test query's true matches, per query intent."""
    model = load_model(run, prepared).model
    queries = prepared.split_queries("test")
    true = prepared.judgments[prepared.judgments["label"] == 3]
    weights: dict[str, list[float]] = {"visual": [], "textual": []}
    for query_id, intent in zip(queries["query_id"], queries["intent"], strict=True):
        images = true.loc[true["query_id"] == query_id, "img_id"].to_numpy(np.int64)
        if images.size == 0:
            continue
        query = query_batch(prepared, np.array([query_id]))
        grid = image_batch(prepared, images).map(lambda t: t.unsqueeze(0))  # (1, M, ...)
        with torch.no_grad():
            modality = model.explain(query, grid).modality_weights[0, :, 0]  # (M,) image weight
        weights[intent].append(float(modality.mean()))
    return {intent: float(np.mean(values)) for intent, values in weights.items()}


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1])
def test_amc_earns_its_keep_on_synth(tmp_path: Path, seed: int) -> None:
    data = tmp_path / "data"
    synth(data, seed=seed)
    runs = []
    for name, options in VARIANTS.items():
        train(data, tmp_path / name, TrainConfig(seed=seed, device="cpu", **options))
        runs.append(tmp_path / name)
    result = evaluate(runs, data, random_baseline=False, resamples=2_000, seed=seed)
    ndcg = {run.name: run.metrics["ndcg@10"] for run in result.runs}
    assert max(ndcg, key=ndcg.get) == "amc", ndcg
    # The fixed-weight ablation always costs, but by less than the margin (0.003-0.037 over
    # three training seeds on these worlds): AMC is within 0.01 of a perfect NDCG@10 here, and
    # the intra-attention can stand in for the gate by attending to an uninformative keyword or
    # region for the modality the query does not ask for (benchmarks/FIDELITY.md).
    assert ndcg["amc"] > ndcg["no-inter"], ndcg
    for name in ("visual", "keyword", "fusion", "cca"):
        assert ndcg["amc"] - ndcg[name] >= BASELINE_MARGIN, (name, ndcg)
    assert ndcg["amc"] - ndcg["no-intra"] >= ABLATION_MARGIN, ndcg
    compared = [run for run in result.runs if run.name not in ("amc", "no-inter")]
    assert all(run.p_randomization < 0.01 for run in compared if result.best == "amc"), ndcg
    weights = modality_weights_by_intent(tmp_path / "amc", load_prepared(data))
    assert weights["visual"] - weights["textual"] >= INTENT_GAP, weights
