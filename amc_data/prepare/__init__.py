"""Stage 4, prepare: the prepared dataset folder that `train` and `eval` read, whatever the
source (`synth`, `coco`, `clickture`), and the commands that make it. No torch here."""

from __future__ import annotations

from .format import PreparedDataset, load_prepared
from .queries import QueryVocabulary, fit_query_vocabulary, tokenize_queries
from .writer import FeatureRows, write_prepared

__all__ = [
    "FeatureRows",
    "PreparedDataset",
    "QueryVocabulary",
    "fit_query_vocabulary",
    "load_prepared",
    "tokenize_queries",
    "write_prepared",
]
