"""SCAN's and VSE++'s precomputed COCO features (`coco_precomp`), read for `prepare coco
--precomp DIR`.

The folder holds, for each of its splits `train` (Karpathy's train and restval), `dev`
(Karpathy's val), `test` (the first 1,000 images of `testall`) and `testall` (Karpathy's test):

- `{split}_ims.npy`: `(N, 36, 2048)` float32, the bottom-up-attention boxes of each image;
- `{split}_caps.txt`: five captions per image, one a line, image after image;
- `{split}_ids.txt`: the COCO image id (`cocoid`) of the rows, either one line per image or one
  per caption line (each id five times in a row), as the releases differ.

SCAN's, VSE++'s and VSE∞'s loaders read caption `i` with image row `i // 5` when the captions
outnumber the images; the ids are read the same way here. The features stay where they are:
`prepare` links the files (or copies only what it must).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

__all__ = ["CAPTIONS_PER_IMAGE", "PRECOMP_PARTS", "PrecompPart", "read_precomp", "same_captions"]

CAPTIONS_PER_IMAGE = 5
#: The files read, in the prepared folder's row order, with the split each becomes.
PRECOMP_PARTS = (("train", "train"), ("dev", "val"), ("testall", "test"))
_WORD = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class PrecompPart:
    """One split of a precomp folder, read."""

    name: str  # train, dev or testall
    path: Path  # {name}_ims.npy
    array: np.ndarray  # (N, R, D), memory-mapped
    cocoids: np.ndarray  # (N,) int64: the COCO image id of each row
    captions: list[list[str]]  # the five captions of each row
    ids_per: str  # "image" or "caption": how the ids file lists them


def read_precomp(folder: str | Path) -> list[PrecompPart]:
    """The `train`, `dev` and `testall` parts of a precomp folder, checked."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(
            f"{root} is not a folder. Pass the coco_precomp folder of SCAN's data.zip (it holds "
            "train_ims.npy, train_caps.txt, train_ids.txt, ...)."
        )
    parts = [_read_part(root, name) for name, _ in PRECOMP_PARTS]
    seen: dict[int, str] = {}
    for part in parts:
        for cocoid in part.cocoids.tolist():
            if cocoid in seen:
                raise InputError(
                    f"{root}: COCO id {cocoid} is listed by both {seen[cocoid]}_ids.txt and "
                    f"{part.name}_ids.txt; each image belongs to one split. Check the folder "
                    "holds one release of the files."
                )
            seen[cocoid] = part.name
    return parts


def _read_part(root: Path, name: str) -> PrecompPart:
    path = root / f"{name}_ims.npy"
    try:
        array = np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise InputError(
            f"{path} not found: a precomp folder holds {name}_ims.npy, {name}_caps.txt and "
            f"{name}_ids.txt (SCAN's coco_precomp). Unzip the whole data.zip."
        ) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path} is not a .npy array ({exc}).") from exc
    if array.ndim not in (2, 3) or array.dtype.kind != "f":
        raise InputError(
            f"{path} holds {array.dtype} {array.shape}; expected float features (N, R, D)."
        )
    rows = int(array.shape[0])
    captions = _read_captions(root / f"{name}_caps.txt", rows)
    cocoids, per = _read_ids(root / f"{name}_ids.txt", rows)
    return PrecompPart(name, path, array, cocoids, captions, per)


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path} not found: the precomp folder is incomplete.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read {path} as UTF-8 text: {exc}.") from exc
    return text.splitlines()


def _read_captions(path: Path, rows: int) -> list[list[str]]:
    lines = _lines(path)
    if len(lines) != CAPTIONS_PER_IMAGE * rows:
        raise InputError(
            f"{path} has {len(lines):,} lines; expected {CAPTIONS_PER_IMAGE} captions for each "
            f"of the {rows:,} rows of {path.name.replace('_caps.txt', '_ims.npy')} "
            f"({CAPTIONS_PER_IMAGE * rows:,} lines). The files belong to different releases."
        )
    per = CAPTIONS_PER_IMAGE
    return [lines[i * per : (i + 1) * per] for i in range(rows)]


def _read_ids(path: Path, rows: int) -> tuple[np.ndarray, str]:
    """The COCO id of each image row, from one line per row or one per caption line."""
    lines = [line.strip() for line in _lines(path)]
    bad = next((i for i, line in enumerate(lines) if not line.isdigit()), None)
    if bad is not None:
        raise InputError(
            f"{path} line {bad + 1} is {lines[bad]!r}, not a COCO image id (a whole number)."
        )
    ids = np.array([int(line) for line in lines], dtype=np.int64)
    if ids.size == rows:
        return ids, "image"
    if ids.size == CAPTIONS_PER_IMAGE * rows:
        grouped = ids.reshape(rows, CAPTIONS_PER_IMAGE)
        differ = np.flatnonzero((grouped != grouped[:, :1]).any(axis=1))
        if differ.size:
            row = int(differ[0])
            raise InputError(
                f"{path} lists one id per caption, but lines {row * CAPTIONS_PER_IMAGE + 1} to "
                f"{(row + 1) * CAPTIONS_PER_IMAGE} (image row {row}) name different images "
                f"{sorted(set(grouped[row].tolist()))}: each image's five captions share its id."
            )
        return grouped[:, 0].copy(), "caption"
    raise InputError(
        f"{path} has {ids.size:,} ids; expected one per image row ({rows:,}) or one per "
        f"caption line ({CAPTIONS_PER_IMAGE * rows:,})."
    )


def _words(text: str) -> str:
    """A caption as its lower-case words (punctuation and spacing differ between copies)."""
    return " ".join(_WORD.findall(text.lower()))


def same_captions(ours: list[str], theirs: list[str]) -> bool:
    """Whether two lists of one image's captions say the same, in any order, up to case,
    punctuation and spacing."""
    return sorted(map(_words, ours)) == sorted(map(_words, theirs))
