"""Per-query metrics of a run, and the query words a run fails on.

`per_query_metrics` gives each query's NDCG@k, its Recall@K (the share of its relevant
candidates ranked within K) and the rank of its first relevant candidate; `word_report` the
mean NDCG@10 of the queries holding each query word, worst first, so a concept the model never
learned shows on any data, planted or not.

Ranks follow amc-data's caption ranking: a tie counts against the model (a relevant candidate
ranks after every irrelevant one of its score).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from .metrics import RECALL_CUTOFFS, RankingMetrics

WORD_K = 10  # the word report's NDCG@k


def relevant_positions(frame: pd.DataFrame, relevant: int) -> pd.DataFrame:
    """The relevant rows of `frame` (`query_id`, `score`, `label`) with their 1-based `rank`
    within their query: by score descending, a relevant row after the irrelevant ones it ties."""
    is_relevant = frame["label"].to_numpy() >= relevant
    order = np.lexsort((is_relevant, -frame["score"].to_numpy(np.float64), frame["query_id"]))
    ordered = frame.iloc[order]
    rank = ordered.groupby("query_id", sort=False).cumcount().to_numpy() + 1
    keep = is_relevant[order]
    return pd.DataFrame({"query_id": ordered["query_id"].to_numpy()[keep], "rank": rank[keep]})


def per_query_metrics(
    ranking: RankingMetrics,
    frame: pd.DataFrame,
    relevant: int = 1,
    ks: Iterable[int] = RECALL_CUTOFFS,
) -> pd.DataFrame:
    """One row per query of `ranking` (ascending `query_id`): `ndcg@k` for each of its cut-offs,
    `relevant` (its candidates of label >= `relevant`), `first_relevant_rank` (0 when it has
    none) and `r@K` (a share in [0, 1]; NaN without a relevant candidate) from `frame`, the rows
    the ranking was computed from. A frame holding each query's best `n` candidates and its
    judged ones gives exact `r@K` for K <= n."""
    out = pd.DataFrame({"query_id": ranking.query_ids})
    for j, k in enumerate(ranking.ks):
        out[f"ndcg@{k}"] = ranking.ndcg[:, j]
    positions = relevant_positions(frame, relevant)
    grouped = positions.groupby("query_id")["rank"]
    count = grouped.size().reindex(out["query_id"], fill_value=0).to_numpy()
    out["relevant"] = count
    first = grouped.min().reindex(out["query_id"], fill_value=0).to_numpy()
    out["first_relevant_rank"] = first.astype(np.int64)
    for k in ks:
        within = (positions["rank"] <= k).groupby(positions["query_id"]).sum()
        hits = within.reindex(out["query_id"], fill_value=0).to_numpy()
        out[f"r@{k}"] = np.where(count > 0, hits / np.maximum(count, 1), np.nan)
    return out


def word_report(
    per_query: pd.DataFrame,
    query_words: Callable[[np.ndarray], list[list[str]]],
    min_queries: int = 5,
    k: int = WORD_K,
) -> pd.DataFrame:
    """For each query word held by at least `min_queries` of the queries of `per_query`:
    `word`, `queries` (how many hold it) and `ndcg@k` (their mean), worst first (ties by
    word). `query_words` maps query ids to each query's words (its analyzer's tokens)."""
    words = query_words(per_query["query_id"].to_numpy())
    values = per_query[f"ndcg@{k}"].to_numpy()
    pairs = pd.DataFrame(
        {
            "word": [w for ws in words for w in dict.fromkeys(ws)],  # once per query
            "value": np.repeat(values, [len(dict.fromkeys(ws)) for ws in words]),
        }
    )
    if pairs.empty:
        return pd.DataFrame({"word": [], "queries": [], f"ndcg@{k}": []})
    table = pairs.groupby("word")["value"].agg(["size", "mean"]).reset_index()
    table.columns = ["word", "queries", f"ndcg@{k}"]
    table = table[table["queries"] >= min_queries]
    return table.sort_values([f"ndcg@{k}", "word"], kind="stable", ignore_index=True)
