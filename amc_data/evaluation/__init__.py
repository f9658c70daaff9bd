"""Evaluation: the paper's metrics (plain numpy) and scores files from any ranker.

`metrics` holds pure functions vectorised over queries (NDCG@k, the challenge DCG@25, ROC/AUC,
COCO Recall@K both ways); `streaming` the same metrics of a score matrix folded in tile by tile
(exact, in bounded memory); `significance` the paired tests between two rankers; `scores` reads
and checks `query_id, img_id, score, label` files and evaluates them; `protocol` the fixed
numbers they share. None imports torch; names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

# The public names are the block below, written once: type checkers read its imports, and at run
# time the same lines are parsed into the lazy map (name -> module), so importing one light
# module of this package (`protocol`, which the CLI reads for its help) loads no numpy or pandas.
if TYPE_CHECKING:
    from .metrics import (
        CHALLENGE_SCALE,
        NDCG_CUTOFFS,
        RECALL_CUTOFFS,
        CaptionRanking,
        RankingMetrics,
        RecallAtK,
        RocCurve,
        annotation_ranks,
        caption_ranking,
        matrix_auc,
        ndcg_at_k,
        ranking_metrics,
        recall_at_k,
        retrieval_ranks,
        roc_auc,
        roc_curve,
    )
    from .scores import evaluate_scores, read_scores, scores_metrics
    from .significance import (
        PairedTest,
        compare_to_baseline,
        paired_by_query,
        paired_t_test,
        paired_test,
        randomization_test,
    )
    from .streaming import CaptionRanks, PooledAuc, PoolReduction, TileGrid, TopK, tile_grid


_LAZY, __getattr__, __dir__ = lazy_names(__name__, __file__)

__all__ = [
    "CHALLENGE_SCALE",
    "NDCG_CUTOFFS",
    "RECALL_CUTOFFS",
    "CaptionRanking",
    "CaptionRanks",
    "PairedTest",
    "PoolReduction",
    "PooledAuc",
    "RankingMetrics",
    "RecallAtK",
    "RocCurve",
    "TileGrid",
    "TopK",
    "annotation_ranks",
    "caption_ranking",
    "compare_to_baseline",
    "evaluate_scores",
    "matrix_auc",
    "ndcg_at_k",
    "paired_by_query",
    "paired_t_test",
    "paired_test",
    "randomization_test",
    "ranking_metrics",
    "read_scores",
    "recall_at_k",
    "retrieval_ranks",
    "roc_auc",
    "roc_curve",
    "scores_metrics",
    "tile_grid",
]
