"""Stage 3, encode: keyword files to word ids exactly as the authors' scikit-learn scripts did,
written in their `.npy` layout and as CSR and Parquet.

`analyzer` is the tokeniser and vocabulary fit; `inputs` plans the documents of a dataset;
`core` runs the two passes (fit, then encode) over worker processes; `formats` and `outputs`
write the files and the encode record.
"""

from __future__ import annotations

from .core import EncodeConfig, EncodeResult, encode

__all__ = ["EncodeConfig", "EncodeResult", "encode"]
