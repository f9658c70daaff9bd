"""The options of `amc-data eval` and of `runs.evaluate`, in a module without torch (nor numpy
or pandas), so the CLI builds its flags from them and checks them before anything heavy loads.

One `EvalConfig` serves both kinds of input: trained runs scored on a prepared split
(`runs.evaluate` reads every field but `max_rows`) and rankers' scores files (`relevant`,
`resamples`, `seed` and `max_rows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..checks import check_config, option
from ..evaluation.protocol import GAINS, MAX_ROWS, SIGNIFICANCE_K
from ..spec import PREPARED_SPLITS
from .config import DEVICES

# The CLI lists the splits test first: the one evaluated by default.
EVAL_SPLITS = tuple(reversed(PREPARED_SPLITS))
TABLE_FORMATS = ("text", "markdown", "latex", "csv")
TREC_DEPTH = 1000  # `evaluation.trec.TREC_DEPTH`


@dataclass(frozen=True)
class EvalConfig:
    """How `eval` scores and compares rankers. Every option is checked here, once, whoever
    builds the config; paths may be given as strings."""

    split: Literal["test", "val", "train"] = option(
        "test", "With RUN folders: the queries to evaluate.", choices=EVAL_SPLITS
    )
    out: Path | None = option(  # option() is a dataclasses.field()
        None,
        "With RUN folders: write OUT/<run>/metrics.json, scores.parquet, per_query.parquet, "
        "words.parquet (and concepts.parquet with --concepts) "
        "(default: RUN/eval-<split>/; for a checkpoint file RUN/X.pt, RUN/X-eval-<split>/).",
    )
    json_path: Path | None = option(  # option() is a dataclasses.field()
        None, "Also write every row's metrics to this file: {name: {metric: value}}.", flag="--json"
    )
    plot_dir: Path | None = option(  # option() is a dataclasses.field()
        None,
        "With RUN folders: draw roc.png and attention-<query>.png into this folder.",
        flag="--plot",
    )
    examples: int = option(3, "Queries whose attention --plot draws.", low=0)
    device: Literal["auto", "cpu", "cuda"] = option(
        "auto", "With RUN folders: where to score.", choices=DEVICES
    )
    random_baseline: bool = option(
        True, "With RUN folders: add a random ranker's row.", flag="--random/--no-random"
    )
    relevant: int = option(1, "For AUC, a pair is relevant when its label is at least N.", low=1)
    resamples: int = option(
        10_000,
        f"Sign flips of the paired randomisation test (per-query NDCG@{SIGNIFICANCE_K}, "
        "each row against the first).",
        low=1,
    )
    seed: int = option(0, "Seed of the randomisation test and of the random ranker.")
    max_rows: int = option(
        MAX_ROWS,
        "With --scores: refuse a file of more rows than this (they are held in memory, "
        "32 bytes a row; files are read and checked a block at a time).",
        low=1,
    )
    gain: Literal["exp", "linear"] = option(
        "exp",
        "NDCG's gain: exp, 2**label - 1 (the paper's and MSR-Bing's); linear, the label "
        "(trec_eval's). The challenge's DCG@25 always uses exp.",
        choices=GAINS,
    )
    table_format: Literal["text", "markdown", "latex", "csv"] = option(
        "text", "How the tables are printed.", choices=TABLE_FORMATS, flag="--format"
    )
    trec: Path | None = option(  # option() is a dataclasses.field()
        None,
        "With RUN folders: write TREC files into this folder: qrels.txt (the split's "
        "judgments) and <run>.run (each query's best --trec-depth images and its judged ones).",
    )
    trec_depth: int = option(
        TREC_DEPTH, "With --trec: the images of each query's ranking written.", low=1
    )
    words: int = option(
        0,
        "With RUN folders: print the N query words with the lowest mean NDCG@10 per run "
        "(words.parquet holds them all).",
        low=0,
    )
    word_min_queries: int = option(
        5, "A query word is reported when at least N queries hold it.", low=1
    )
    concepts: Path | None = option(  # option() is a dataclasses.field()
        None,
        "With RUN folders: a concepts file (which concepts each query names and where each "
        "image carries them; `amc-data synth` writes OUT.concepts.parquet): write "
        "concepts.parquet per run (per concept: NDCG@10, its share of the ceiling, attention "
        "mass on its own regions or keyword, over every query naming it and over those naming "
        "no other concept in that modality) and print the weakest concepts.",
    )
    threads: int = option(
        0,
        "CPU threads scoring side by side, one torch thread each (0: torch's thread "
        "count; 1: one, with torch's own threads).",
        low=0,
    )
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("out", "json_path", "plot_dir", "trec", "concepts"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        check_config(self)
