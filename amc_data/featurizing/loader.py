"""Batches of decoded images, read and decoded in worker processes by a torch DataLoader.

Imported only once torch is known to be installed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import DataLoader

from .sources import ImageReader


class ImageBatch(NamedTuple):
    """One batch: the inputs it covers, the pixels of those that decoded, the others' reasons."""

    indices: list[int]  # positions in the plan of the decoded images, in order
    pixels: torch.Tensor  # (k, H, W, 3) uint8
    errors: list[tuple[int, str]]  # (position, reason) of the images that did not decode


@dataclass(frozen=True)
class Collate:
    """Stacks decoded images (in the worker, so the batch crosses to the main process as one
    shared-memory tensor)."""

    size: int

    def __call__(self, samples: Sequence[tuple[int, np.ndarray | None, str | None]]) -> ImageBatch:
        good = [(index, pixels) for index, pixels, _ in samples if pixels is not None]
        errors = [
            (index, reason or "undecodable") for index, pixels, reason in samples if pixels is None
        ]
        if good:
            pixels = torch.from_numpy(np.stack([p for _, p in good]))  # (k, H, W, 3)
        else:
            pixels = torch.zeros((0, self.size, self.size, 3), dtype=torch.uint8)
        return ImageBatch([index for index, _ in good], pixels, errors)


def _quiet_worker(_worker_id: int) -> None:
    # Workers decode with Pillow; torch threads there would only compete with the main process.
    torch.set_num_threads(1)


def image_batches(
    reader: ImageReader, batches: list[list[int]], *, workers: int, pin_memory: bool
) -> DataLoader[ImageBatch]:
    """A loader yielding `ImageBatch`es for `batches` (lists of plan positions), in order."""
    return DataLoader(
        reader,  # type: ignore[arg-type]  # a map-style dataset: __getitem__ and __len__
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=Collate(reader.transform.size),
        pin_memory=pin_memory,
        worker_init_fn=_quiet_worker if workers else None,
        prefetch_factor=4 if workers else None,
    )
