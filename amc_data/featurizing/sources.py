"""What to extract features from: the images of a folder, or the base64 images of a TSV (the
Clickture distribution), each tied to the img_id it will have in the prepared dataset.

Nothing here needs torch. Planning reads names and keys only; the pixels are read and decoded
later, one image at a time, by `ImageReader` in the loader's worker processes. Only regular files
are read (a link to one is followed): a FIFO named like an image would block the read forever, and
a device would be read until memory runs out, so anything else is refused by name unopened.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..archive import load_id_map, open_archive
from ..archive.folder import read_regular_file
from ..archive.members import is_junk
from ..errors import ArchiveError, InputError
from ..machine import pread
from .deps import require_pillow

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
ID_SOURCES = ("name", "dataset-json", "id-map", "tsv")
IdSource = Literal["name", "dataset-json", "id-map", "tsv"]
OnError = Literal["fail", "skip"]
_EXAMPLES = 5  # problems quoted in an error message
_COCO_NAME = re.compile(r"COCO_(train|val|test)20\d\d_\d+\.jpg$")
MAX_IMAGE_BYTES = 1 << 30  # one image file; far above any photo, below what exhausts a worker
MAX_MAPPING_BYTES = 4 << 30  # a dataset.json or key<TAB>img_id file (COCO's is about 150 MB)


@dataclass(frozen=True)
class SkippedImage:
    """An image left out of the output, and why (recorded in the report)."""

    source: str  # "file a/b.jpg" or "TSV line 12 (key 'k')"
    img_id: int | None  # None when no id could be given to it
    reason: str


@dataclass(frozen=True)
class Plan:
    """The images to extract, in output order, with their ids (skipped ones already left out)."""

    kind: Literal["folder", "tsv"]
    root: Path  # the folder, or the TSV file
    names: list[str]  # file path relative to the folder, or the TSV key
    img_ids: np.ndarray  # (n,) int64
    lines: np.ndarray  # (n,) int64: TSV line number (1-based); -1 for files
    offsets: np.ndarray  # (n,) int64: byte offset of the TSV line; -1 for files
    lengths: np.ndarray  # (n,) int64: byte length of the TSV line; -1 for files
    image_column: int = 1  # TSV column holding the base64 image
    skipped: list[SkippedImage] = field(default_factory=list)
    # sha256 of the size, mtime and ctime of every planned image file (of the TSV file), when
    # planned: an image replaced under the same name changes it, even one given its
    # predecessor's mtime. A finished output is up to date only while it is unchanged.
    stamp: str = ""

    def __len__(self) -> int:
        return len(self.names)

    def describe(self, index: int) -> str:
        """Where image `index` comes from, for messages: a file path or a TSV line."""
        if self.kind == "folder":
            return f"file {self.root / self.names[index]}"
        return f"{self.root} line {int(self.lines[index])} (key {self.names[index]!r})"

    def digest(self) -> str:
        """sha256 of the names and ids, in order: what a resumed run must find again (an image
        not yet read may still be fixed or replaced in between; `stamp` is left out)."""
        digest = hashlib.sha256()
        digest.update("\n".join(self.names).encode("utf-8", "surrogateescape"))
        digest.update(np.ascontiguousarray(self.img_ids, dtype="<i8").tobytes())
        return digest.hexdigest()


def plan_inputs(
    images: str | os.PathLike[str],
    *,
    id_source: IdSource = "name",
    id_file: str | os.PathLike[str] | None = None,
    tsv_columns: tuple[int, int] = (0, 1),
    on_error: OnError = "fail",
) -> Plan:
    """List the images of a folder (recursively, sorted by path) or the lines of a base64 TSV,
    and give each its img_id.

    Ids come from the name (`name`: the last run of digits in a file's stem, e.g. 391895 for
    `COCO_val2014_000000391895.jpg`; a TSV key must be an integer), or from a mapping:
    `dataset-json` (Karpathy's file: `filename` -> `imgid`), `id-map` (the authors'
    `img_id_map*.pkl`), `tsv` (lines `key<TAB>img_id`). An image without an id, a repeated id or
    a malformed TSV line is an `InputError` listing them, or with `on_error="skip"` is left out
    and recorded in `Plan.skipped`.
    """
    root = Path(images)
    mapping = _load_mapping(id_source, None if id_file is None else Path(id_file))
    kind, entries = _list_entries(root, tsv_columns)
    keep, ids, problems = _assign_ids(entries, kind, mapping, id_source)
    if problems and on_error == "fail":
        shown = "; ".join(f"{p.source}: {p.reason}" for p in problems[:_EXAMPLES])
        more = f" (and {len(problems) - _EXAMPLES} more)" if len(problems) > _EXAMPLES else ""
        raise InputError(
            f"{len(problems)} of the {len(entries)} images in {root} cannot be used: "
            f"{shown}{more}. Fix them (the names, the mapping given with --ids-from, or the "
            "lines), or pass --on-error skip to leave them out (they are listed in the report)."
        )
    if problems:
        log.warning("%d image(s) of %s left out (listed in the report)", len(problems), root)
    if id_source == "name" and kind == "folder" and _COCO_NAME.search(entries[0].name):
        log.warning(
            "%s holds COCO file names: their number is COCO's image id, not the `imgid` of "
            "Karpathy's dataset.json that the COCO keywords and `prepare coco` use; pass "
            "--ids-from dataset-json PATH for those",
            root,
        )
    if not keep:
        raise InputError(f"None of the {len(entries)} images in {root} has a usable img_id.")
    return Plan(
        kind=kind,
        root=root,
        names=[entry.name for entry in keep],
        img_ids=np.array(ids, dtype=np.int64),
        lines=np.array([entry.line for entry in keep], dtype=np.int64),
        offsets=np.array([entry.offset for entry in keep], dtype=np.int64),
        lengths=np.array([entry.length for entry in keep], dtype=np.int64),
        image_column=tsv_columns[1],
        skipped=problems,
        stamp=_stamp(root, kind, [entry.name for entry in keep]),
    )


def _stamp(root: Path, kind: Literal["folder", "tsv"], names: list[str]) -> str:
    """sha256 of the size, mtime and ctime of each planned file (the TSV file itself for a
    TSV), as `encode` judges its inputs: the names alone miss an image replaced by another of
    the same name. A file that cannot be stat'ed is stamped as missing (its read fails later)."""
    digest = hashlib.sha256()
    for name in names if kind == "folder" else [""]:
        path = root / name if name else root
        try:
            info = os.stat(path)  # follows a link: the image it points at is what is read
            stamp = f"{info.st_size}\0{info.st_mtime_ns}\0{info.st_ctime_ns}"
        except OSError:
            stamp = "missing"
        digest.update(f"{name}\0{stamp}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _list_entries(
    root: Path, tsv_columns: tuple[int, int]
) -> tuple[Literal["folder", "tsv"], list[_Entry]]:
    """What `root` is (a folder of images or a base64 TSV) and its entries, at least one."""
    kind: Literal["folder", "tsv"]
    if root.is_dir():
        entries = list(_folder_entries(root))
        kind = "folder"
    elif root.is_file():
        entries = list(_tsv_entries(root, tsv_columns))
        kind = "tsv"
    elif root.exists():  # a FIFO, a device, a socket: never opened
        raise InputError(
            f"{root} is neither a folder nor a regular file (a FIFO, a device or a socket). "
            "Expected a folder of images or a base64 TSV."
        )
    else:
        raise InputError(f"{root} does not exist. Expected a folder of images or a base64 TSV.")
    if not entries:
        raise InputError(
            f"{root} holds no images (looked for {', '.join(IMAGE_SUFFIXES)} files)"
            if kind == "folder"
            else f"{root} has no lines. Expected `key<TAB>base64 image` lines."
        )
    return kind, entries


def _assign_ids(
    entries: list[_Entry],
    kind: Literal["folder", "tsv"],
    mapping: dict[str, int] | None,
    id_source: IdSource,
) -> tuple[list[_Entry], list[int], list[SkippedImage]]:
    """The entries with a usable img_id and their ids, in order, and those without one (no id,
    a repeated id, a malformed line), each with its reason."""
    keep: list[_Entry] = []
    ids: list[int] = []
    problems: list[SkippedImage] = []
    seen: dict[int, str] = {}
    for entry in entries:
        if entry.problem is None:
            img_id, reason = _img_id(entry, kind, mapping, id_source)
        else:
            img_id, reason = None, entry.problem
        if img_id is not None and img_id in seen:
            reason = f"repeats img_id {img_id} of {seen[img_id]}"
        if reason is not None or img_id is None:
            problems.append(SkippedImage(entry.source, img_id, reason or "no img_id"))
            continue
        seen[img_id] = entry.source
        keep.append(entry)
        ids.append(img_id)
    return keep, ids, problems


@dataclass(frozen=True)
class _Entry:
    name: str
    source: str
    line: int = -1
    offset: int = -1
    length: int = -1
    problem: str | None = None


def _folder_entries(root: Path) -> Iterator[_Entry]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [name for name in dirnames if not name.startswith(".")]
        for filename in filenames:
            if filename.lower().endswith(IMAGE_SUFFIXES) and not filename.startswith("."):
                relative = Path(dirpath, filename).relative_to(root).as_posix()
                if not is_junk(relative):
                    found.append(relative)
    for relative in sorted(found):
        yield _Entry(name=relative, source=f"file {root / relative}")


def _tsv_entries(path: Path, columns: tuple[int, int]) -> Iterator[_Entry]:
    key_column, image_column = columns
    needed = max(columns) + 1
    offset = 0
    try:
        with open(path, "rb") as file:
            for number, raw in enumerate(file, 1):
                line = raw.rstrip(b"\r\n")
                if line.strip():
                    fields = line.split(b"\t", needed)
                    whole = len(fields) >= needed
                    key = fields[key_column].decode("utf-8", "replace") if whole else ""
                    source = f"{path} line {number}" + (f" (key {key!r})" if key else "")
                    problem = None
                    if not whole:
                        problem = (
                            f"has {len(fields)} tab-separated column(s); expected the key in "
                            f"column {key_column} and the base64 image in column {image_column} "
                            "(0-based; --tsv-columns changes them)"
                        )
                    elif not key.strip():
                        problem = "has an empty key"
                    yield _Entry(key, source, number, offset, len(raw), problem)
                offset += len(raw)
    except OSError as exc:
        raise InputError(f"Cannot read {path}: {exc}.") from exc


def _img_id(
    entry: _Entry, kind: str, mapping: dict[str, int] | None, id_source: str
) -> tuple[int | None, str | None]:
    """The entry's img_id, or None and the reason it has none."""
    if mapping is None:
        if kind == "tsv":
            if entry.name.isascii() and entry.name.isdigit():
                return int(entry.name), None
            return None, "its key is not an integer; give a mapping with --ids-from"
        numbers = re.findall(r"\d+", Path(entry.name).stem)
        if numbers:
            return int(numbers[-1]), None
        return None, "its file name has no number; give a mapping with --ids-from"
    candidates = [entry.name] if kind == "tsv" else [Path(entry.name).name, Path(entry.name).stem]
    for candidate in candidates:
        if candidate in mapping:
            return mapping[candidate], None
    return None, f"{candidates[0]!r} is not in the {id_source} mapping"


# -- id mappings -------------------------------------------------------------------------------
def _load_mapping(id_source: str, id_file: Path | None) -> dict[str, int] | None:
    if id_source == "name":
        return None
    if id_file is None:
        raise InputError(f"--ids-from {id_source} needs the path of the mapping file.")
    loaders: dict[str, Callable[[Path], dict[str, int]]] = {
        "dataset-json": _dataset_json_ids,
        "id-map": load_id_map,
        "tsv": _tsv_ids,
    }
    if id_source not in loaders:
        raise InputError(f"Unknown id source {id_source!r}; expected one of {ID_SOURCES}.")
    return loaders[id_source](id_file)


def _dataset_json_ids(path: Path) -> dict[str, int]:
    """filename -> imgid from Karpathy's dataset.json, or from the archive that holds it."""
    from ..encoding.inputs import load_dataset_json, parse_dataset_json

    if path.suffix.lower() == ".json":
        where = str(path)
        images = parse_dataset_json(
            read_regular_file(path, MAX_MAPPING_BYTES, InputError, "file"), where
        )
    else:  # keywords_coco.zip, or the folder it unzips to, found as `encode` finds it
        try:
            images, member = load_dataset_json(open_archive(path))
        except ArchiveError as exc:
            raise InputError(f"Cannot read dataset.json from {path}: {exc}") from exc
        where = f"{path} member {member!r}"
    ids: dict[str, int] = {}
    for position, image in enumerate(images):
        record = image if isinstance(image, dict) else {}
        filename, img_id = record.get("filename"), record.get("imgid")
        if not isinstance(filename, str) or type(img_id) is not int or img_id < 0:
            raise InputError(
                f"images[{position}] of {where} lacks a string 'filename' or an integer "
                f"'imgid' >= 0 ({json.dumps(image)[:200]})."
            )
        ids[filename] = img_id
    return ids


def _tsv_ids(path: Path) -> dict[str, int]:
    """`key<TAB>img_id` lines; a first line whose id is not an integer is a header."""
    ids: dict[str, int] = {}
    try:
        text = read_regular_file(path, MAX_MAPPING_BYTES, InputError, "file").decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"Cannot read {path} as UTF-8 text: {exc}.") from exc
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        value = fields[1].strip() if len(fields) > 1 else ""
        if not re.fullmatch(r"-?\d+", value):
            if number == 1:
                continue
            raise InputError(
                f"{path} line {number} is {line[:100]!r}; expected `key<TAB>img_id` with an "
                "integer img_id."
            )
        ids[fields[0]] = int(value)
    return ids


# -- reading and decoding ----------------------------------------------------------------------
class UndecodableImage(Exception):
    """An image's bytes could not be read or decoded (turned into a report line or an error)."""


@dataclass(frozen=True)
class CenterCrop:
    """Decode with Pillow, convert to RGB, scale the shorter side to `resize` (bilinear, with
    antialiasing), and cut the centre `size` x `size` square: ImageNet's evaluation transform.
    Normalisation happens on the device, after the uint8 pixels have travelled."""

    size: int = 224
    resize: int = 256
    # Pillow's filter for the resize: bilinear for torchvision's ImageNet transform, bicubic for
    # CLIP's preprocessing.
    resample: Literal["bilinear", "bicubic"] = "bilinear"
    # Decode a large JPEG at a reduced scale (faster); off where the features must match a
    # reference preprocessing that decodes every image in full (open_clip's).
    draft: bool = True

    def __call__(self, data: bytes) -> np.ndarray:
        """(size, size, 3) uint8 pixels of the encoded image `data`."""
        image_module = require_pillow()
        try:
            with image_module.open(io.BytesIO(data)) as image:
                # JPEG only: decode at the smallest 1/2^k scale still at least `resize` (much
                # faster for large photos; same result every run).
                if self.draft:
                    image.draft("RGB", (self.resize, self.resize))
                rgb = image.convert("RGB")
        except image_module.UnidentifiedImageError as exc:
            raise UndecodableImage("not in an image format Pillow knows, or damaged") from exc
        except Exception as exc:  # Pillow raises many types for damaged data
            raise UndecodableImage(f"{type(exc).__name__}: {exc}") from exc
        width, height = rgb.size
        if width < 1 or height < 1:
            raise UndecodableImage(f"the image is {width}x{height} pixels")
        short, long = (width, height) if width <= height else (height, width)
        scaled_long = max(self.resize, int(self.resize * long / short))
        target = (self.resize, scaled_long) if width <= height else (scaled_long, self.resize)
        if target != rgb.size:
            resampling = image_module.Resampling
            filter_ = resampling.BICUBIC if self.resample == "bicubic" else resampling.BILINEAR
            rgb = rgb.resize(target, filter_)
        left = round((target[0] - self.size) / 2.0)
        top = round((target[1] - self.size) / 2.0)
        rgb = rgb.crop((left, top, left + self.size, top + self.size))
        return np.asarray(rgb, dtype=np.uint8)  # (size, size, 3)


@dataclass(frozen=True)
class ImageReader:
    """Reads and decodes the planned images by position; what the loader's workers run.

    `reader[i]` is `(i, pixels, None)`, or `(i, None, reason)` for an image that could not be
    read or decoded: the caller decides whether that stops the run.
    """

    plan: Plan
    transform: CenterCrop

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, index: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return index, self.transform(self.read(index)), None
        except UndecodableImage as exc:
            return index, None, str(exc)

    def read(self, index: int) -> bytes:
        """The encoded bytes of image `index` (a file's content, or a TSV line's base64 decoded)."""
        plan = self.plan
        if plan.kind == "folder":
            path = plan.root / plan.names[index]
            try:
                return read_regular_file(path, MAX_IMAGE_BYTES, InputError, "image")
            except InputError as exc:  # a FIFO, a device, a folder, too large, unreadable
                raise UndecodableImage(str(exc).rstrip(".")) from exc
        try:
            with open(plan.root, "rb") as file:
                line = pread(file.fileno(), int(plan.lengths[index]), int(plan.offsets[index]))
        except OSError as exc:
            raise UndecodableImage(f"cannot be read ({exc})") from exc
        fields = line.rstrip(b"\r\n").split(b"\t")
        if len(fields) <= plan.image_column:
            raise UndecodableImage("the line changed since it was indexed; run again")
        try:
            return base64.b64decode(fields[plan.image_column].strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UndecodableImage(
                f"column {plan.image_column} is not valid base64 ({exc})"
            ) from exc
