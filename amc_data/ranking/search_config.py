"""The options of `amc-data search` and of `search.Searcher`, in a module without torch, so the
CLI builds its flags from them and checks them before torch loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..checks import check_config, option
from ..spec import PREPARED_SPLITS
from .config import DEVICES

ALL_IMAGES = "all"  # split "all": every image of the prepared folder
# Test first: the split searched by default.
SEARCH_SPLITS = (*reversed(PREPARED_SPLITS), ALL_IMAGES)


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

    def __post_init__(self) -> None:
        check_config(self)
