"""The per-concept report of a run, where the concepts are known: a *concepts file* says which
concepts each query names and in which modality, and where each image carries them.

The concepts file (Parquet; `amc-data synth` writes one beside its folder, the test suite's
planted worlds write theirs) has one row per fact:

    kind      string   "query" or "image"
    id        int64    the query_id (kind query) or the img_id (kind image)
    concept   string   the concept's name
    modality  string   "visual" (pixels) or "textual" (keywords)
    regions   list<int32>  image rows, visual: the regions (0-based, in the features' order)
                           that show the concept; empty otherwise
    keyword   string   image rows, textual: the vocabulary word that names the concept;
                       null otherwise
    ceiling   float64  query rows: the query's best achievable NDCG@10 (from the world's
                       truth), the same on each of its rows; null where unknown

A query row says the query asks for the concept in that modality (a query asking for a concept
in both modalities has two rows). The report (`concept_report`) has one row per (concept,
modality) that the split's queries name: how many queries name it, their mean NDCG@10 and its
share of their mean ceiling, and, measured on each (query, relevant image) pair where the image
carries the concept in that modality, the median attention mass on the concept's own regions or
keyword against its chance level (the share of the image's regions or keywords the concept
holds) and the median weight of the visual modality. A query naming two concepts in one
modality rightly splits the attention between them, so the median over every pair can flag a
concept the model does find; `mass_alone` is the median over the pairs whose query names no
other concept in that modality: what the attention gives the concept when nothing else is
asked for beside it.
`gate_by_named` gives the visual weight by what a query names: visual concepts only, textual
only, or both.

Torch-free: the attention itself is measured by `amc_data.ranking.concepts`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

__all__ = [
    "CONCEPT_COLUMNS",
    "ConceptTruth",
    "concept_report",
    "gate_by_named",
    "read_concepts",
    "relevant_pairs",
]

CONCEPT_COLUMNS = ("kind", "id", "concept", "modality", "regions", "keyword", "ceiling")
MODALITIES = ("visual", "textual")
KINDS = ("query", "image")
NAMED_GROUPS = ("visual_only", "textual_only", "both")
REPORT_K = 10  # the report's NDCG@k
# What each measured pair holds (`amc_data.ranking.concepts.attention_on_concepts`).
MEASURED_COLUMNS = ("query_id", "img_id", "concept", "modality", "mass", "chance", "visual_weight")


@dataclass(frozen=True)
class ConceptTruth:
    """A concepts file, read and checked: its query rows and its image rows."""

    path: Path
    queries: pd.DataFrame  # query_id, concept, modality, ceiling
    images: pd.DataFrame  # img_id, concept, modality, regions (tuple of int), keyword


def read_concepts(path: str | os.PathLike[str]) -> ConceptTruth:
    """Read and check the concepts file `path` (see the module docstring); InputError naming
    the file, the column and what was found when it is not one."""
    path = Path(path)
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"Cannot read the concepts file {path} as Parquet ({exc}); give the file "
            "`amc-data synth` wrote beside its folder (OUT.concepts.parquet), or one with the "
            f"columns {', '.join(CONCEPT_COLUMNS)}."
        ) from exc
    _check(frame, path)
    queries = frame[frame["kind"] == "query"]
    images = frame[frame["kind"] == "image"]
    return ConceptTruth(
        path=path,
        queries=pd.DataFrame(
            {
                "query_id": queries["id"].to_numpy(np.int64),
                "concept": queries["concept"].astype(str).to_numpy(),
                "modality": queries["modality"].astype(str).to_numpy(),
                "ceiling": pd.to_numeric(queries["ceiling"]).to_numpy(np.float64),
            }
        ),
        images=pd.DataFrame(
            {
                "img_id": images["id"].to_numpy(np.int64),
                "concept": images["concept"].astype(str).to_numpy(),
                "modality": images["modality"].astype(str).to_numpy(),
                "regions": [
                    tuple(int(r) for r in (cells if cells is not None else ()))
                    for cells in images["regions"]
                ],
                "keyword": images["keyword"].to_numpy(object),
            }
        ),
    )


def _check(frame: pd.DataFrame, path: Path) -> None:
    """InputError when `frame` is not a concepts file."""
    missing = [c for c in CONCEPT_COLUMNS if c not in frame.columns]
    if missing:
        raise InputError(
            f"The concepts file {path} lacks the column(s) {', '.join(missing)}; expected "
            f"{', '.join(CONCEPT_COLUMNS)}, found {', '.join(map(str, frame.columns))}."
        )
    for column, allowed in (("kind", KINDS), ("modality", MODALITIES)):
        bad = sorted(set(frame[column].astype(str)) - set(allowed))
        if bad:
            raise InputError(
                f"The concepts file {path}: column {column} holds {', '.join(bad[:5])}; "
                f"expected only {' or '.join(allowed)}."
            )
    if frame["concept"].isna().any() or frame["id"].isna().any():
        row = int(np.flatnonzero(frame["concept"].isna() | frame["id"].isna())[0])
        raise InputError(
            f"The concepts file {path}: row {row} has no concept or no id; every row names one."
        )
    textual = frame[(frame["kind"] == "image") & (frame["modality"] == "textual")]
    if textual["keyword"].isna().any():
        row = int(textual.index[textual["keyword"].isna()][0])
        raise InputError(
            f"The concepts file {path}: row {row} (image {int(frame.loc[row, 'id'])}, textual "
            f"concept {frame.loc[row, 'concept']}) has no keyword; a textual image row names "
            "the vocabulary word that carries its concept."
        )


def relevant_pairs(
    truth: ConceptTruth, judgments: pd.DataFrame, query_ids: np.ndarray, relevant: int = 1
) -> pd.DataFrame:
    """The (query, relevant image, concept, modality) facts to measure: for each query of
    `query_ids`, each of its judged images of label >= `relevant`, and each concept the query
    names in a modality where the image carries it there (`regions`, `keyword`: where)."""
    judged = judgments[judgments["query_id"].isin(query_ids) & (judgments["label"] >= relevant)][
        ["query_id", "img_id"]
    ]
    named = truth.queries[truth.queries["query_id"].isin(query_ids)][
        ["query_id", "concept", "modality"]
    ]
    pairs = judged.merge(named, on="query_id").merge(
        truth.images, on=["img_id", "concept", "modality"]
    )
    return pairs.sort_values(["query_id", "img_id", "concept", "modality"], ignore_index=True)


def concept_report(
    per_query: pd.DataFrame, truth: ConceptTruth, measured: pd.DataFrame | None = None
) -> pd.DataFrame:
    """One row per (concept, modality) the queries of `per_query` name (see the module
    docstring), weakest first (lowest share of the ceiling, else lowest NDCG@10): `concept`,
    `modality`, `queries`, `ndcg@10`, `ceiling`, `share` (of the ceiling), `pairs` (measured),
    `mass`, `chance` and `visual_weight` (medians over the pairs; NaN where none were measured,
    as for a model without attention), and `pairs_alone`, `mass_alone`: the same over the pairs
    whose query names no other concept in that modality (NaN where there are none)."""
    column = f"ndcg@{REPORT_K}"
    scored = per_query[["query_id", column]]
    named = truth.queries.merge(scored, on="query_id")
    groups = named.groupby(["concept", "modality"], sort=True)
    report = groups.agg(
        queries=("query_id", "nunique"), ndcg=(column, "mean"), ceiling=("ceiling", "mean")
    ).reset_index()
    report = report.rename(columns={"ndcg": column})
    report["share"] = report[column] / report["ceiling"]
    if measured is None or measured.empty:
        measured = pd.DataFrame({c: [] for c in MEASURED_COLUMNS})
    measured = measured[measured["query_id"].isin(per_query["query_id"])]
    medians = (
        measured.groupby(["concept", "modality"])
        .agg(
            pairs=("mass", "size"),
            mass=("mass", "median"),
            chance=("chance", "median"),
            visual_weight=("visual_weight", "median"),
        )
        .reset_index()
    )
    # Where a query names several concepts in one modality, their share of the attention is
    # split between them: measured alone, a concept's mass says whether the attention finds it.
    named_in_modality = truth.queries.groupby(["query_id", "modality"]).size()
    alone = named_in_modality[named_in_modality == 1].reset_index()[["query_id", "modality"]]
    alone_medians = (
        measured.merge(alone, on=["query_id", "modality"])
        .groupby(["concept", "modality"])
        .agg(pairs_alone=("mass", "size"), mass_alone=("mass", "median"))
        .reset_index()
    )
    report = report.merge(medians, on=["concept", "modality"], how="left")
    report = report.merge(alone_medians, on=["concept", "modality"], how="left")
    for name in ("pairs", "pairs_alone"):
        report[name] = report[name].fillna(0).astype(np.int64)
    for name in ("mass", "chance", "visual_weight", "mass_alone"):
        report[name] = report[name].astype(np.float64)
    key = np.where(report["share"].notna(), report["share"], report[column])
    order = np.lexsort((report["modality"], report["concept"], key))
    return report.iloc[order].reset_index(drop=True)


def named_groups(truth: ConceptTruth, query_ids: np.ndarray) -> pd.Series:
    """query_id -> what it names: `visual_only`, `textual_only` or `both` (queries the file
    does not name are left out)."""
    named = truth.queries[truth.queries["query_id"].isin(query_ids)]
    kinds = named.groupby("query_id")["modality"].agg(lambda m: frozenset(m))
    return kinds.map(
        lambda m: "both" if len(m) == 2 else ("visual_only" if "visual" in m else "textual_only")
    )


def gate_by_named(truth: ConceptTruth, measured: pd.DataFrame) -> dict[str, float]:
    """The mean weight of the visual modality (each query's mean over its measured pairs, then
    the mean over queries) by what the query names: `gate_visual_weight_<group>` and
    `gate_queries_<group>` for each group of `NAMED_GROUPS` that has queries measured."""
    out: dict[str, float] = {}
    if measured.empty or measured["visual_weight"].isna().all():
        return out
    per_pair = measured.drop_duplicates(["query_id", "img_id"])
    per_query = per_pair.groupby("query_id")["visual_weight"].mean()
    groups = named_groups(truth, per_query.index.to_numpy())
    for group in NAMED_GROUPS:
        values = per_query[groups.reindex(per_query.index) == group]
        if len(values):
            out[f"gate_visual_weight_{group}"] = float(values.mean())
            out[f"gate_queries_{group}"] = float(len(values))
    return out
