"""Stage 4, prepare: the prepared dataset folder that `train` and `eval` read, whatever the
source (`synth`, `coco`, `clickture`, a registered dataset), and the commands that make it. No
torch here.

The names below load their module on first use: the command line imports the light modules
(`registry`, `synth_config`) at start-up, and those must not pull in pandas through this
package."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .format import PreparedDataset, load_prepared
    from .queries import QueryVocabulary, fit_query_vocabulary, tokenize_queries
    from .writer import FeatureRows, write_prepared

_LAZY = {
    "FeatureRows": "writer",
    "PreparedDataset": "format",
    "QueryVocabulary": "queries",
    "fit_query_vocabulary": "queries",
    "load_prepared": "format",
    "tokenize_queries": "queries",
    "write_prepared": "writer",
}

__all__ = [
    "FeatureRows",
    "PreparedDataset",
    "QueryVocabulary",
    "fit_query_vocabulary",
    "load_prepared",
    "tokenize_queries",
    "write_prepared",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
