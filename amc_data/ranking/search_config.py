"""The options of `amc-data search` and of `search.Searcher`, and the longest query either
takes, in a module without torch, so the CLI builds its flags from them and checks them (and a
query's length) before torch loads."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Literal

from ..checks import check_config, option
from ..errors import ConfigError, InputError
from ..spec import PREPARED_SPLITS
from .config import DEVICES

ALL_IMAGES = "all"  # split "all": every image of the prepared folder
# The longest query text taken, in characters: far above any query a person types (the model
# reads a query's first 32 known words), far below what would flood a terminal or a page with
# its words. Every way in (the CLI, `search`, `Searcher`, a search page) is held to this one.
MAX_QUERY_CHARS = 1000
# Test first: the split searched by default.
SEARCH_SPLITS = (*reversed(PREPARED_SPLITS), ALL_IMAGES)
SHORTLIST_INDEXES = ("flat", "ivf", "hnsw")
COMPILE_CHOICES = ("auto", "on", "off")
# `compile` "auto": from this many images searched on the CPU. Measured on the 2-core machine
# (49 regions, dim 64, float16 index): compiling takes ~4.5 s with torch's cache on disk warm
# (10-25 s cold), and saves ~2 us an image a query (1,000,000 images: 3.6 s -> 1.55 s).
COMPILE_IMAGES = 500_000


@dataclass(frozen=True)
class SearchConfig:
    """Which images a search ranks, how many it returns, and where it scores. Every option is
    checked here, once, whoever builds the config."""

    split: Literal["test", "val", "train", "all"] = option(
        "test",
        "The images to rank: one split's, or all of the prepared folder's.",
        choices=SEARCH_SPLITS,
    )
    top: int = option(10, "How many images to show.", low=1)
    device: Literal["auto", "cpu", "cuda"] = option(
        "cpu", "Where to score (one query is fast on the CPU).", choices=DEVICES
    )
    exact: bool = option(
        False, "Score the images from their raw features (no index): the reference path."
    )
    shortlist: int = option(
        0,
        "Two-stage search: score exactly only the best K images of a FAISS shortlist "
        "(0: score every image; needs the search extra).",
        low=0,
    )
    threads: int = option(
        0,
        "CPU threads scoring side by side, one torch thread each (0: torch's thread "
        "count; 1: one, with torch's own threads).",
        low=0,
    )
    shortlist_index: Literal["flat", "ivf", "hnsw"] = option(
        "flat",
        "The shortlist's FAISS index: exact inner product, or approximate.",
        choices=SHORTLIST_INDEXES,
    )
    compile: Literal["auto", "on", "off"] = option(
        "auto",
        "Compile the index search's kernel for a few queries at a time (torch.compile: one "
        "pass over the index, several times faster; needs a C++ compiler; the first query "
        f"waits seconds for it). auto: on the CPU from {COMPILE_IMAGES:,} images, for a "
        "searcher that answers many queries (the search page, `Searcher`); a single query "
        "(the search command's, `search()`) is scored eagerly: compiling takes as long as it "
        "saves once.",
        choices=COMPILE_CHOICES,
    )

    def __post_init__(self) -> None:
        check_config(self)
        # Options the search would not use are refused, not ignored.
        if self.exact and self.shortlist:
            raise ConfigError(
                "shortlist goes with the index search, and exact scans every image from its "
                "raw features: drop one of them.",
                parameter="shortlist",
            )
        if self.shortlist_index != "flat" and not self.shortlist:
            raise ConfigError(
                f"shortlist_index {self.shortlist_index!r} goes with a shortlist (shortlist K): "
                "give one, or drop shortlist_index.",
                parameter="shortlist_index",
            )


def check_query(text: object) -> str:
    """`text` if it is a query `search` takes: text of at most `MAX_QUERY_CHARS` characters;
    else an `InputError` saying what it found. Checked before the query is read word by word."""
    if not isinstance(text, str):
        raise InputError(f"A query is text, not {type(text).__name__}.")
    if len(text) > MAX_QUERY_CHARS:
        raise InputError(
            f"The query is {len(text):,} characters long; a query may have at most "
            f"{MAX_QUERY_CHARS:,}. Search with a few words (the model reads a query's first "
            "32 known words)."
        )
    return text


def with_options(config: SearchConfig, options: dict[str, Any]) -> SearchConfig:
    """`config` with the fields named in `options` changed (checked); a name that is not an
    option is a `ConfigError` naming it and the options there are."""
    known = [f.name for f in fields(SearchConfig)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"{unknown[0]} is not a search option ({', '.join(unknown)} unknown); the options "
            f"are {', '.join(known)}.",
            parameter=unknown[0],
        )
    return replace(config, **options)
