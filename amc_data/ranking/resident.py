"""Region features resident on the training device, gathered there.

At the real datasets' size the loader's work is dominated by reading a batch's regions from the
memory-mapped file, converting them to float32 and copying them to the device (49 x 2,048 values
an image). When the whole features array fits in the device's memory (COCO's 25 GB in float16
fits an H200 many times), it is copied there once, in its file's dtype, a chunk at a time; the
loader then sends only feature row numbers, and each batch is gathered on the device. On the CPU
the same code serves as a resident copy in RAM (tested there; the memmap is as good on a CPU).
Gathered regions are exactly the memmap path's values (float16 -> float32 is exact).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import torch

from ..errors import ConfigError
from ..machine import available_memory
from ..prepare.format import PreparedDataset
from .batch import TrainBatch

log = logging.getLogger(__name__)

# Features are copied to the device this many bytes at a time (bounded host memory).
CHUNK_BYTES = 256 * 2**20
# "auto" keeps the features resident when they take at most this share of the free memory.
AUTO_SHARE = 0.5


def features_fit(prepared: PreparedDataset, device: torch.device) -> bool:
    """Whether `prepared`'s features fit on the GPU `device` with room to train."""
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return prepared.features.nbytes <= AUTO_SHARE * free


class ResidentFeatures:
    """The `(N, R, D)` features of a prepared folder as one tensor on `device`."""

    def __init__(self, prepared: PreparedDataset, device: torch.device) -> None:
        array = prepared.features
        array = array[:, None, :] if array.ndim == 2 else array  # (N, R, D)
        _check_room(prepared, array, device)
        self.tensor = torch.empty(array.shape, dtype=_torch_dtype(array.dtype), device=device)
        # Each chunk is copied out of the memmap in this machine's byte order: torch reads no
        # other (a big-endian file is as valid as a native one), and a writable copy spares
        # torch's warning about read-only memory.
        native = array.dtype.newbyteorder("=")
        rows = max(1, CHUNK_BYTES // max(1, array[0].nbytes))
        for start in range(0, array.shape[0], rows):
            chunk = torch.from_numpy(np.array(array[start : start + rows], dtype=native))
            self.tensor[start : start + rows].copy_(chunk, non_blocking=False)
        log.info("features resident on %s: %s %s", device, tuple(array.shape), array.dtype)

    def fill(self, batch: TrainBatch) -> TrainBatch:
        """`batch` with its regions gathered here from its feature rows, as float32."""
        if batch.rows is None:
            raise ConfigError("A batch for resident features needs its feature rows.")
        regions = self.tensor[batch.rows].float()  # (*S, R, D)
        images = dataclasses.replace(
            batch.images,
            regions=regions,
            region_mask=torch.ones(regions.shape[:-1], dtype=torch.bool, device=regions.device),
        )
        return dataclasses.replace(batch, images=images)


def _check_room(prepared: PreparedDataset, array: np.ndarray, device: torch.device) -> None:
    """Refuse features larger than the free memory of `device` (the GPU's, or the machine's for
    the CPU) before allocating them: the allocation would fail halfway or push the machine into
    swapping."""
    if device.type == "cuda":
        free: int | None = torch.cuda.mem_get_info(device)[0]
        where = f"the free memory of {device}"
    else:
        free = available_memory()
        where = "the memory this machine has available"
    if free is not None and array.nbytes > free:
        raise ConfigError(
            f"features_on device: the features of {prepared.root} take "
            f"{array.nbytes / 2**30:.1f} GiB, more than {where} ({free / 2**30:.1f} GiB). Use "
            "features_on host (or auto), which reads them from the file as it goes.",
            parameter="features_on",
        )


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return {"float16": torch.float16, "float32": torch.float32}.get(dtype.name, torch.float32)
