"""Stage 5, export: a prepared folder written for other tools, as a Hugging Face dataset
(Parquet shards and a dataset card) or as webdataset tar shards for streaming training. Reads
prepared folders only; writes with pyarrow and the standard library (no `datasets` or
`webdataset` needed to write). No torch here.

The names below load their module on first use, so the command line builds its options from
`ExportConfig` without loading pandas or pyarrow."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .config import FORMATS, ExportConfig
    from .core import ExportResult, export

_LAZY, __getattr__, __dir__ = lazy_names(__name__, __file__)

__all__ = ["FORMATS", "ExportConfig", "ExportResult", "export"]
