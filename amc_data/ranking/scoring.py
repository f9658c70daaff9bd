"""Score a split's queries against their candidates with any ranking model, in batched forward
passes with bounded memory. Used by training (validation) and by evaluation.

Candidates are a query's judged images (Clickture, synth) or, for a prepared folder whose
candidates are the whole split (COCO), every image of the split. There the `(queries, images)`
matrix is scored tile by tile by the kernel (`kernel.PoolScorer`), and a frame keeps the best
`keep` images of each query plus every judged one (enough for NDCG@k up to `keep`); evaluation
folds the same tiles into the AUC and the caption-ranking metrics. `score_matrix` and
`pool_frame` build the whole matrix: for small pools and tests only.

Batches are bounded in elements, not queries: a batch holds at most `BATCH_ELEMENTS` region
values (queries x candidates x regions x feature size), so wide grids and long candidate lists
take fewer queries at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ..evaluation.streaming import PoolReduction
from ..progress import progress_bar
from .data import image_batch, query_batch
from .kernel import BATCH_ELEMENTS, PoolScorer, precision_context, reduce_pool

if TYPE_CHECKING:
    from ..prepare.format import PreparedDataset
    from .model import RankingModel


def candidates_are_split(prepared: PreparedDataset) -> bool:
    """True when each query is ranked over every image of its split (COCO)."""
    mode = prepared.info.get("candidates")
    if mode is not None:
        return mode == "split"
    return prepared.info.get("source") == "coco"


@torch.no_grad()
def score_split(
    model: RankingModel,
    prepared: PreparedDataset,
    split: str,
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    keep: int = 100,
    query_ids: np.ndarray | None = None,
    max_keywords: int = 64,
    progress: bool = False,
    workers: int | None = None,
) -> pd.DataFrame:
    """A frame of `query_id`, `img_id`, `score`, `label` (label 0 for unjudged pool images),
    for the queries of `split` (those of `query_ids` only, when given); `workers` threads
    score side by side (default: torch's thread count)."""
    device = torch.device(device)
    model.eval()
    queries = split_query_ids(prepared, split, query_ids)
    judged = prepared.judgments[prepared.judgments["query_id"].isin(queries)]
    if len(queries) == 0:
        return pd.DataFrame({"query_id": [], "img_id": [], "score": [], "label": []}).astype(
            {"query_id": "int64", "img_id": "int64", "score": "float32", "label": "int32"}
        )
    if candidates_are_split(prepared):
        return _score_pool_split(
            model,
            prepared,
            split,
            queries,
            judged,
            device,
            amp,
            keep,
            max_keywords,
            progress,
            workers,
        )
    return _score_judged(model, prepared, judged, device, amp, max_keywords, progress)


def _score_pool_split(
    model: RankingModel,
    prepared: PreparedDataset,
    split: str,
    queries: np.ndarray,
    judged: pd.DataFrame,
    device: torch.device,
    amp: bool,
    keep: int,
    max_keywords: int,
    progress: bool,
    workers: int | None,
) -> pd.DataFrame:
    """Every query against every image of the split, through the tiled kernel: only each
    query's best `keep` images and the judged pairs are kept, never the whole matrix."""
    pool = np.sort(prepared.split_images(split))
    scorer = PoolScorer(
        model,
        prepared,
        queries,
        pool,
        device=device,
        amp=amp,
        max_keywords=max_keywords,
        workers=workers,
    )
    inside = judged[judged["img_id"].isin(pool)]
    reduction = PoolReduction(scorer.grid, queries, pool, inside, keep=keep, metrics=False)
    return reduce_pool(scorer, reduction, progress).frame()


def split_query_ids(
    prepared: PreparedDataset, split: str, query_ids: np.ndarray | None = None
) -> np.ndarray:
    """The ids of `split`'s queries, ascending (only those in `query_ids`, when given)."""
    queries = np.sort(prepared.split_queries(split)["query_id"].to_numpy(np.int64))
    return queries if query_ids is None else queries[np.isin(queries, query_ids)]


def _region_values(prepared: PreparedDataset) -> int:
    return int(np.prod(prepared.features.shape[1:]))  # R * D


def _score_judged(
    model: RankingModel,
    prepared: PreparedDataset,
    judged: pd.DataFrame,
    device: torch.device,
    amp: bool,
    max_keywords: int,
    progress: bool = False,
) -> pd.DataFrame:
    judged = judged.sort_values(["query_id", "img_id"], kind="stable")
    query_ids = judged["query_id"].to_numpy(np.int64)
    img_ids = judged["img_id"].to_numpy(np.int64)
    starts = np.flatnonzero(np.r_[True, query_ids[1:] != query_ids[:-1]])
    ends = np.r_[starts[1:], len(query_ids)]
    scores = np.empty(len(query_ids), dtype=np.float32)
    widest = int((ends - starts).max())
    batch = max(1, BATCH_ELEMENTS // (widest * _region_values(prepared)))
    bar = progress_bar(total=len(starts), desc="scoring", unit="query", enabled=progress)
    for first in bar_steps(bar, range(0, len(starts), batch), batch):
        lo, hi = starts[first : first + batch], ends[first : first + batch]
        width = int((hi - lo).max())
        # Pad each query's candidates to the widest by repeating its first; dropped afterwards.
        offsets = np.minimum(lo[:, None] + np.arange(width)[None, :], hi[:, None] - 1)  # (B, M)
        query = query_batch(prepared, query_ids[lo]).to(device, non_blocking=True)
        flat = image_batch(prepared, img_ids[offsets.reshape(-1)], max_keywords)  # (B * M, ...)
        images = flat.map(_as_grid(len(lo), width)).to(device, non_blocking=True)  # (B, M, ...)
        with precision_context(device, amp):
            block = model(query, images).float().cpu().numpy()  # (B, M)
        valid = np.arange(width)[None, :] < (hi - lo)[:, None]
        scores[offsets[valid]] = block[valid]
    return pd.DataFrame(
        {
            "query_id": query_ids,
            "img_id": img_ids,
            "score": scores,
            "label": judged["label"].to_numpy(np.int32),
        }
    )


def bar_steps(bar: Any, starts: range, step: int) -> Iterator[int]:
    """`starts`, advancing `bar` by each step's size (the last may be short); closes it."""
    with bar:
        for start in starts:
            yield start
            bar.update(min(step, starts.stop - start))


def _as_grid(rows: int, cols: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """View a flat `(rows * cols, ...)` tensor as `(rows, cols, ...)`."""
    return lambda tensor: tensor.reshape(rows, cols, *tensor.shape[1:])


@torch.no_grad()
def score_matrix(
    model: RankingModel,
    prepared: PreparedDataset,
    query_ids: np.ndarray,
    img_ids: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    max_keywords: int = 64,
    progress: bool = False,
) -> np.ndarray:
    """Every query against every image: a `(Q, N)` float32 matrix (COCO's caption ranking).
    Images are read and projected a chunk at a time, queries scored against each chunk."""
    device = torch.device(device)
    model.eval()
    out = np.empty((len(query_ids), len(img_ids)), dtype=np.float32)
    chunk = max(1, min(4096, BATCH_ELEMENTS // _region_values(prepared)))
    bar = progress_bar(total=len(img_ids), desc="scoring", unit="image", enabled=progress)
    for lo in bar_steps(bar, range(0, len(img_ids), chunk), chunk):
        images = image_batch(prepared, img_ids[lo : lo + chunk], max_keywords).to(device)
        for q in range(0, len(query_ids), 256):
            query = query_batch(prepared, query_ids[q : q + 256]).to(device)
            with precision_context(device, amp):
                block = model.score_pool(query, images)  # (Q, N)
            out[q : q + 256, lo : lo + chunk] = block.float().cpu().numpy()
    return out


def pool_frame(
    matrix: np.ndarray,
    queries: np.ndarray,
    pool: np.ndarray,
    judged: pd.DataFrame,
    keep: int = 100,
) -> pd.DataFrame:
    """The rows of a `(queries, pool)` score matrix worth keeping: each query's best `keep`
    images and every judged pair. `queries` and `pool` ascending."""
    keep = min(keep, len(pool))
    top = np.empty((len(queries), keep), dtype=np.int64)
    for lo in range(0, len(queries), 1024):  # bounded temporaries
        block = matrix[lo : lo + 1024]
        top[lo : lo + 1024] = np.argpartition(-block, keep - 1, axis=1)[:, :keep]
    rows = pd.DataFrame({"query_id": np.repeat(queries, keep), "img_id": pool[top.reshape(-1)]})
    inside = judged[judged["img_id"].isin(pool)]
    rows = pd.concat([rows, inside[["query_id", "img_id"]]], ignore_index=True).drop_duplicates()
    q_index = np.searchsorted(queries, rows["query_id"].to_numpy())
    i_index = np.searchsorted(pool, rows["img_id"].to_numpy())
    rows["score"] = matrix[q_index, i_index]
    labels = rows.merge(inside, on=["query_id", "img_id"], how="left")["label"]
    rows["label"] = labels.fillna(0).to_numpy(np.int32)
    return rows.reset_index(drop=True)
