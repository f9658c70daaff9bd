"""TREC run and qrels files: the standard columns, a strict order that trec_eval's own sort
keeps, the depth plus every judged pair, and figures that ranx and pytrec_eval re-compute."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from amc_data.evaluation.metrics import ranking_metrics
from amc_data.evaluation.per_query import per_query_metrics
from amc_data.evaluation.trec import run_rows, write_qrels, write_run


def _frame(seed: int = 0, queries: int = 30, candidates: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "query_id": np.repeat(np.arange(queries) * 3 + 1, candidates),
            "img_id": np.tile(rng.permutation(1000)[:candidates] + 5, queries),
            "score": rng.normal(size=queries * candidates).astype(np.float32),
            "label": rng.choice([0, 0, 0, 1, 2, 3], size=queries * candidates),
        }
    )


def test_run_file_lines_are_six_columns_in_score_then_docno_descending_order(tmp_path: Path):
    frame = pd.DataFrame(
        {
            "query_id": [7, 7, 7, 7, 2],
            "img_id": [9, 10, 30, 4, 1],
            "score": np.array([0.5, 0.5, 0.9, 0.5, 0.1], dtype=np.float32),
            "label": [1, 0, 0, 0, 1],
        }
    )
    write_run(tmp_path / "a.run", run_rows(frame, frame), "my run")
    lines = (tmp_path / "a.run").read_text().splitlines()
    assert lines == [
        "2 Q0 1 1 0.100000001 my_run",
        "7 Q0 30 1 0.899999976 my_run",
        "7 Q0 9 2 0.5 my_run",  # ties: docno descending as text ("9" > "4" > "10")
        "7 Q0 4 3 0.5 my_run",
        "7 Q0 10 4 0.5 my_run",
    ]
    write_qrels(tmp_path / "q.txt", frame)
    assert (tmp_path / "q.txt").read_text().splitlines()[:2] == ["2 0 1 1", "7 0 4 0"]


def test_depth_keeps_the_best_and_every_judged_pair():
    frame = _frame()
    judged = frame[frame["label"] > 0]
    rows = run_rows(frame, judged, depth=5)
    for query, mine in rows.groupby("query_id"):
        assert list(mine["rank"]) == list(range(1, len(mine) + 1))
        best = frame[frame["query_id"] == query].nlargest(5, "score")["img_id"]
        assert set(best) <= set(mine["img_id"])
        assert set(judged.loc[judged["query_id"] == query, "img_id"]) <= set(mine["img_id"])
        assert (np.diff(mine["score"].to_numpy()) <= 0).all()


@pytest.mark.parametrize("gain", ["exp", "linear"])
def test_ranx_recomputes_ndcg_and_recall_from_the_files(tmp_path: Path, gain: str):
    ranx = pytest.importorskip("ranx")
    frame = _frame(1)
    write_run(tmp_path / "r.run", run_rows(frame, frame, depth=25), "r")
    write_qrels(tmp_path / "qrels.txt", frame)
    qrels = ranx.Qrels.from_file(str(tmp_path / "qrels.txt"), kind="trec")
    run = ranx.Run.from_file(str(tmp_path / "r.run"), kind="trec")
    ranking = ranking_metrics(frame["query_id"], frame["score"], frame["label"], gain=gain)
    per_query = per_query_metrics(ranking, frame)
    ndcg = "ndcg_burges" if gain == "exp" else "ndcg"  # ranx's names of the two gains
    for k in (5, 10, 25):
        assert ranx.evaluate(qrels, run, f"{ndcg}@{k}") == pytest.approx(
            ranking.ndcg_at(k).mean(), abs=1e-6
        )
    for k in (1, 5, 10):
        assert ranx.evaluate(qrels, run, f"recall@{k}") == pytest.approx(
            per_query[f"r@{k}"].mean(), abs=1e-6
        )


def test_pytrec_eval_recomputes_linear_ndcg_and_recall(tmp_path: Path):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    frame = _frame(2)
    rows = run_rows(frame, frame, depth=25)
    run: dict[str, dict[str, float]] = {}
    for q, d, s in zip(rows["query_id"], rows["img_id"], rows["score"], strict=True):
        run.setdefault(str(q), {})[str(d)] = float(s)
    qrels: dict[str, dict[str, int]] = {}
    for q, d, label in zip(frame["query_id"], frame["img_id"], frame["label"], strict=True):
        qrels.setdefault(str(q), {})[str(d)] = int(label)
    measures = {"ndcg_cut.5,10", "recall.5,10"}
    found = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    ranking = ranking_metrics(frame["query_id"], frame["score"], frame["label"], gain="linear")
    per_query = per_query_metrics(ranking, frame).set_index("query_id")
    for k in (5, 10):
        mine = ranking.ndcg_at(k)
        theirs = np.array([found[str(q)][f"ndcg_cut_{k}"] for q in ranking.query_ids])
        np.testing.assert_allclose(theirs, mine, atol=1e-6)
        recall = np.array([found[str(q)][f"recall_{k}"] for q in per_query.index])
        np.testing.assert_allclose(recall, per_query[f"r@{k}"].fillna(0), atol=1e-6)
