"""TREC run and qrels files of an evaluation, so other tools (trec_eval, pytrec_eval, ranx) can
re-compute amc-data's figures or compute others.

- The run file has the standard six columns, `topic Q0 docno rank score tag`: a topic is a
  query (a COCO caption: text -> image), a document an image, `tag` the run's name.
- The qrels file has the standard four, `topic 0 docno relevance`: every judgment of the
  split, label 0 included.
- Order: within a topic, score descending, then docno descending as text: the order trec_eval
  itself sorts a run into (it ignores the rank column), so a tool re-sorting the lines by score
  ranks exactly as the file does. `rank` counts the lines of the topic from 1.
- Depth: a topic's best `depth` images and every judged image of the topic (whatever its
  rank), so NDCG@k and Recall@k for k <= depth re-computed from the files are the ones of the
  whole ranking. Scores are float32 written with 9 significant digits (they read back exactly).

amc-data's own NDCG averages over every order of tied scores and its Recall counts a tie
against the model; the files hold one order, so the figures agree exactly wherever no relevant
image ties another image within the cut-off (trained models' float scores practically never
tie).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..files import atomic_write

TREC_DEPTH = 1000  # the usual depth of a TREC run


def run_order(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` (`query_id`, `img_id`, `score`) sorted as the run file lists it: by topic, score
    descending, then docno descending as text; with a `rank` column (1-based within a topic)."""
    docno = frame["img_id"].astype(str)
    ordered = frame.assign(_docno=docno).sort_values(
        ["query_id", "score", "_docno"], ascending=[True, False, False], kind="stable"
    )
    ordered = ordered.drop(columns="_docno").reset_index(drop=True)
    ordered["rank"] = ordered.groupby("query_id").cumcount().to_numpy() + 1
    return ordered


def run_rows(frame: pd.DataFrame, judged: pd.DataFrame, depth: int = TREC_DEPTH) -> pd.DataFrame:
    """The rows a run file holds: each topic's best `depth` rows of `frame` and every judged
    pair of `judged` (`query_id`, `img_id`) found in `frame`, in run order."""
    ordered = run_order(frame[["query_id", "img_id", "score"]])
    keys = pd.MultiIndex.from_frame(ordered[["query_id", "img_id"]])
    is_judged = keys.isin(pd.MultiIndex.from_frame(judged[["query_id", "img_id"]]))
    kept = ordered[(ordered["rank"].to_numpy() <= depth) | is_judged]
    kept = kept.reset_index(drop=True)
    kept["rank"] = kept.groupby("query_id").cumcount().to_numpy() + 1
    return kept


LINES_PER_WRITE = 1 << 20  # lines formatted at a time: a COCO run is millions of lines


def write_run(path: Path, rows: pd.DataFrame, tag: str) -> None:
    """The six-column run file of `rows` (in run order, with `rank`), atomically. `tag` is
    the run's name, its spaces and other characters outside `-_.#` letters and digits made
    `_` (a line's columns are split on white space)."""
    tag = "".join(c if c.isalnum() or c in "-_.#" else "_" for c in tag) or "run"
    with atomic_write(path) as handle:
        for start in range(0, len(rows), LINES_PER_WRITE):
            part = rows.iloc[start : start + LINES_PER_WRITE]
            scores = np.asarray(part["score"], dtype=np.float32).tolist()
            lines = [
                f"{q} Q0 {d} {r} {s:.9g} {tag}\n"
                for q, d, r, s in zip(
                    part["query_id"].tolist(),
                    part["img_id"].tolist(),
                    part["rank"].tolist(),
                    scores,
                    strict=True,
                )
            ]
            handle.write("".join(lines).encode())


def write_qrels(path: Path, judged: pd.DataFrame) -> None:
    """The four-column qrels file of `judged` (`query_id`, `img_id`, `label`), atomically,
    sorted by topic and docno."""
    ordered = judged.sort_values(["query_id", "img_id"], kind="stable")
    lines = [
        f"{q} 0 {d} {int(label)}\n"
        for q, d, label in zip(
            ordered["query_id"].tolist(),
            ordered["img_id"].tolist(),
            ordered["label"].tolist(),
            strict=True,
        )
    ]
    with atomic_write(path) as handle:
        handle.write("".join(lines).encode())
