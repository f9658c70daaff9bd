"""Score a split's queries against their candidates with any ranking model, in batched forward
passes with bounded memory. Used by training (validation) and by evaluation.

Candidates are a query's judged images (Clickture, synth) or, for a prepared folder whose
candidates are the whole split (COCO), every image of the split; there only the best `keep`
images of each query are kept, plus every judged one (enough for NDCG@k up to `keep` and for
the ranks of the true images).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from .data import image_batch, query_batch

if TYPE_CHECKING:
    from .model import RankingModel
    from .prepare.format import PreparedDataset


def precision_context(device: torch.device, amp: bool) -> AbstractContextManager[object]:
    """bf16 autocast on CUDA when `amp`; nothing elsewhere (the same code runs on the CPU)."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


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
    batch_queries: int = 64,
    pool_chunk: int = 1024,
    keep: int = 100,
    query_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """A frame of `query_id`, `img_id`, `score`, `label` (label 0 for unjudged pool images)."""
    device = torch.device(device)
    model.eval()
    queries = prepared.split_queries(split)["query_id"].to_numpy(np.int64)
    if query_ids is not None:
        queries = queries[np.isin(queries, query_ids)]
    judged = prepared.judgments[prepared.judgments["query_id"].isin(queries)]
    if len(queries) == 0:
        return pd.DataFrame({"query_id": [], "img_id": [], "score": [], "label": []}).astype(
            {"query_id": "int64", "img_id": "int64", "score": "float32", "label": "int32"}
        )
    if candidates_are_split(prepared):
        return _score_pool(
            model, prepared, split, queries, judged, device, amp, batch_queries, pool_chunk, keep
        )
    return _score_judged(model, prepared, judged, device, amp, batch_queries)


def _score_judged(
    model: RankingModel,
    prepared: PreparedDataset,
    judged: pd.DataFrame,
    device: torch.device,
    amp: bool,
    batch_queries: int,
) -> pd.DataFrame:
    judged = judged.sort_values(["query_id", "img_id"], kind="stable")
    query_ids = judged["query_id"].to_numpy(np.int64)
    img_ids = judged["img_id"].to_numpy(np.int64)
    starts = np.flatnonzero(np.r_[True, query_ids[1:] != query_ids[:-1]])
    ends = np.r_[starts[1:], len(query_ids)]
    scores = np.empty(len(query_ids), dtype=np.float32)
    for first in range(0, len(starts), batch_queries):
        lo, hi = starts[first : first + batch_queries], ends[first : first + batch_queries]
        width = int((hi - lo).max())
        # Pad each query's candidates to the widest by repeating its first; dropped afterwards.
        offsets = np.minimum(lo[:, None] + np.arange(width)[None, :], hi[:, None] - 1)  # (B, M)
        query = query_batch(prepared, query_ids[lo]).to(device, non_blocking=True)
        flat = image_batch(prepared, img_ids[offsets.reshape(-1)])  # (B * M, ...)
        images = flat.map(_as_grid(len(lo), width))  # (B, M, ...)
        images = images.to(device, non_blocking=True)
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


def _as_grid(rows: int, cols: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """View a flat `(rows * cols, ...)` tensor as `(rows, cols, ...)`."""
    return lambda tensor: tensor.reshape(rows, cols, *tensor.shape[1:])


def score_matrix(
    model: RankingModel,
    prepared: PreparedDataset,
    query_ids: np.ndarray,
    img_ids: np.ndarray,
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
    batch_queries: int = 64,
    pool_chunk: int = 1024,
) -> np.ndarray:
    """Every query against every image: a `(Q, N)` float32 matrix (COCO's caption ranking)."""
    device = torch.device(device)
    model.eval()
    out = np.empty((len(query_ids), len(img_ids)), dtype=np.float32)
    with torch.no_grad():
        for lo in range(0, len(img_ids), pool_chunk):
            images = image_batch(prepared, img_ids[lo : lo + pool_chunk]).to(device)
            for q in range(0, len(query_ids), batch_queries):
                query = query_batch(prepared, query_ids[q : q + batch_queries]).to(device)
                with precision_context(device, amp):
                    block = model.score_pool(query, images)  # (Q, N)
                out[q : q + batch_queries, lo : lo + pool_chunk] = block.float().cpu().numpy()
    return out


def _score_pool(
    model: RankingModel,
    prepared: PreparedDataset,
    split: str,
    queries: np.ndarray,
    judged: pd.DataFrame,
    device: torch.device,
    amp: bool,
    batch_queries: int,
    pool_chunk: int,
    keep: int,
) -> pd.DataFrame:
    pool = np.sort(prepared.split_images(split))
    matrix = score_matrix(
        model, prepared, queries, pool, device=device, amp=amp,
        batch_queries=batch_queries, pool_chunk=pool_chunk,
    )  # fmt: skip
    keep = min(keep, len(pool))
    top = np.argpartition(-matrix, keep - 1, axis=1)[:, :keep]  # (Q, keep)
    rows = pd.DataFrame({"query_id": np.repeat(queries, keep), "img_id": pool[top.reshape(-1)]})
    judged_rows = judged[["query_id", "img_id"]]
    rows = pd.concat([rows, judged_rows], ignore_index=True).drop_duplicates()
    q_index = (
        np.searchsorted(queries, rows["query_id"].to_numpy())
        if _is_sorted(queries)
        else (pd.Index(queries).get_indexer(rows["query_id"].to_numpy()))
    )
    i_index = np.searchsorted(pool, rows["img_id"].to_numpy())
    rows["score"] = matrix[q_index, i_index]
    labels = rows.merge(judged, on=["query_id", "img_id"], how="left")["label"]
    rows["label"] = labels.fillna(0).to_numpy(np.int32)
    return rows.reset_index(drop=True)


def _is_sorted(values: np.ndarray) -> bool:
    return bool(np.all(values[1:] >= values[:-1]))
