"""Stage 4, prepare: the prepared dataset folder that `train` and `eval` read, whatever the
source (`synth`, `coco`, `clickture`, a registered dataset), and the commands that make it. No
torch here.

The names below load their module on first use: the command line imports the light modules
(`registry`, `synth_config`) at start-up, and those must not pull in pandas through this
package."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .format import PreparedDataset, load_prepared
    from .queries import QueryVocabulary, fit_query_vocabulary, tokenize_queries
    from .writer import FeatureRows, write_prepared

_LAZY, __getattr__, __dir__ = lazy_names(__name__, __file__)

__all__ = [
    "FeatureRows",
    "PreparedDataset",
    "QueryVocabulary",
    "fit_query_vocabulary",
    "load_prepared",
    "tokenize_queries",
    "write_prepared",
]
