"""The fixed numbers of the evaluation protocol that several places use (the scores reader, run
evaluation, the CLI's help), in a module that loads nothing, so the CLI shows them before numpy
or pandas load."""

from __future__ import annotations

MAX_ROWS = 100_000_000  # rows a scores file may have (3.2 GB of checked columns)
SIGNIFICANCE_K = 10  # per-query NDCG@10 drives the paired tests between rankers
# The gains of NDCG: "exp" is 2**label - 1 (the paper's, MSR-Bing's, scikit-learn's on 0/1
# labels), "linear" the label itself (trec_eval's and torchmetrics'); equal on 0/1 labels.
GAINS: tuple[str, ...] = ("exp", "linear")
