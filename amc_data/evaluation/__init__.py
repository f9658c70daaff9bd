"""Evaluation: the paper's metrics (plain numpy) and scores files from any ranker.

`metrics` holds pure functions vectorised over queries (NDCG@k, the challenge DCG@25, ROC/AUC,
COCO Recall@K both ways); `significance` the paired tests between two rankers; `scores` reads
and checks `query_id, img_id, score, label` files and evaluates them; `protocol` the fixed
numbers they share. None imports torch; names load on first use.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def _lazy_map() -> dict[str, str]:
    """Public name -> defining module, read from this file's `if TYPE_CHECKING:` block."""
    tree = ast.parse(Path(__file__).read_text(encoding="utf-8"))
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If)
        and isinstance(node.test, ast.Name)
        and node.test.id == "TYPE_CHECKING"
    )
    return {
        alias.name: str(statement.module)
        for statement in block.body
        if isinstance(statement, ast.ImportFrom)
        for alias in statement.names
    }


_LAZY = _lazy_map()


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "CHALLENGE_SCALE",
    "NDCG_CUTOFFS",
    "RECALL_CUTOFFS",
    "CaptionRanking",
    "PairedTest",
    "RankingMetrics",
    "RecallAtK",
    "RocCurve",
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
]
