"""The prepared folder's pictures, found in the user's `--images` folders and shrunk for the page.

A picture is asked for by img_id only: its file name comes from the prepared folder
(images.parquet's `file_name`), never from the request, and the file must lie inside one of the
folders given (a name that leads outside, through `..` or a link, is not served). Shrunk
pictures are kept in a bounded in-memory cache, never written into a prepared or run folder.

`crop_box` says where on a picture the features' centre crop lies (`features.geometry` of the
prepared folder), so that a heat map of the grid's cells is drawn on the part the model saw.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._optional import require
from .config import CACHE_BYTES

log = logging.getLogger(__name__)


def require_pillow() -> Any:
    """PIL.Image, or a one-line error saying how to install it."""
    return require("PIL.Image", "showing the pictures", extra="serve")


@dataclass(frozen=True)
class Picture:
    """A shrunk picture, ready to send, and the size of the original."""

    data: bytes
    media_type: str
    width: int  # of the original picture, in pixels
    height: int


def crop_box(width: int, height: int, geometry: Mapping[str, int]) -> dict[str, float]:
    """The square the features saw, as fractions of a `width` x `height` picture (`x`, `y`:
    its top left corner; `w`, `h`: its size): the picture's shorter side scaled to
    `geometry["resize"]`, the centre `geometry["image_size"]` square cut, with the rounding
    `amc-data features` uses (`featurizing.sources.CenterCrop`)."""
    resize, size = int(geometry["resize"]), int(geometry["image_size"])
    short, long = (width, height) if width <= height else (height, width)
    scaled_long = max(resize, int(resize * long / short))
    scaled = (resize, scaled_long) if width <= height else (scaled_long, resize)
    left = round((scaled[0] - size) / 2.0)
    top = round((scaled[1] - size) / 2.0)
    return {
        "x": left / scaled[0],
        "y": top / scaled[1],
        "w": size / scaled[0],
        "h": size / scaled[1],
    }


class Pictures:
    """The pictures of a prepared folder's images that lie in `folders`, by img_id."""

    def __init__(
        self,
        folders: Sequence[Path],
        file_names: Mapping[int, str],
        cache_bytes: int = CACHE_BYTES,
    ) -> None:
        self.folders = [Path(f).resolve() for f in folders]
        self._names = dict(file_names)
        self._cache: OrderedDict[tuple[int, int], Picture] = OrderedDict()
        self._cached_bytes = 0
        self._cache_limit = cache_bytes
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.folders) and bool(self._names)

    def path(self, img_id: int) -> Path | None:
        """The file of image `img_id`: its recorded name in the first folder that has it as a
        regular file inside that folder; None for an image the prepared folder does not name,
        or whose file is in none of the folders."""
        name = self._names.get(img_id)
        if not name:
            return None
        for folder in self.folders:
            try:
                candidate = (folder / name).resolve()
                # A recorded name is data too: one that leads outside the folder is not followed.
                if candidate.is_relative_to(folder) and candidate.is_file():
                    return candidate
            except (OSError, ValueError, RuntimeError):  # a link loop, a NUL: no such picture
                continue
        return None

    def picture(self, img_id: int, longest: int) -> Picture | None:
        """Image `img_id` shrunk to at most `longest` pixels on its longer side (JPEG; PNG when
        it has transparency), from the cache when shown before; None when there is no file for
        it (see `path`) or it is not a picture Pillow can read."""
        key = (img_id, longest)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                return found
        path = self.path(img_id)
        if path is None:
            return None
        made = _shrink(path, longest)
        if made is None:
            return None
        with self._lock:
            if key not in self._cache and len(made.data) <= self._cache_limit:
                self._cache[key] = made
                self._cached_bytes += len(made.data)
                while self._cached_bytes > self._cache_limit:
                    _, dropped = self._cache.popitem(last=False)
                    self._cached_bytes -= len(dropped.data)
        return made

    @property
    def cached_bytes(self) -> int:
        return self._cached_bytes


def _shrink(path: Path, longest: int) -> Picture | None:
    image_module = require_pillow()
    try:
        with image_module.open(path) as image:
            width, height = image.size
            image.draft("RGB", (longest, longest))  # JPEG: decode at a reduced scale (faster)
            has_alpha = image.mode in ("RGBA", "LA") or "transparency" in image.info
            shown = image.convert("RGBA" if has_alpha else "RGB")
            shown.thumbnail((longest, longest), image_module.Resampling.BILINEAR)
            out = io.BytesIO()
            if has_alpha:
                shown.save(out, format="PNG")
            else:
                shown.save(out, format="JPEG", quality=85)
    except Exception as exc:  # Pillow raises many types for a damaged or foreign file
        log.warning("cannot show %s: %s: %s", path, type(exc).__name__, exc)
        return None
    media_type = "image/png" if has_alpha else "image/jpeg"
    return Picture(out.getvalue(), media_type, width, height)
