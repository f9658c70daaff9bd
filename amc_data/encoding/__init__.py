"""Stage 3, encode: keyword files to word ids exactly as the authors' scikit-learn scripts did,
written in their `.npy` layout and as CSR and Parquet.

`analyzer` (with `stop_words`) is the tokeniser and vocabulary fit; `inputs` plans the documents
of a dataset; `policy` decides what a bad item does; `workers` reads and encodes chunks of
documents in worker processes; `core` runs the two passes (fit, then encode); `formats` and
`outputs` write the files; `record` reads and writes the encode record (`encode.json`);
`staging` owns the output folder (lock, staging folder, atomic swap); `config` holds
`EncodeConfig`, light enough for the command line to read at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

# Loaded on first use, so that the command line reads `config` without the encoder.
if TYPE_CHECKING:
    from .config import EncodeConfig
    from .core import EncodeResult, encode

_LAZY, __getattr__, __dir__ = lazy_names(__name__, __file__)

__all__ = ["EncodeConfig", "EncodeResult", "encode"]
