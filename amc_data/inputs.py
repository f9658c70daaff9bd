"""What an encode reads: find a dataset's input files, read its image list (the Clickture list
files, or COCO's `dataset.json`), and turn it into a table of documents, each tied to the archive
member that holds its keywords (SPEC §2).

Planning problems (a list line that is no image id, a repeated line, a member the archive lacks,
an image of an unknown split) either stop the encode or, with `on_error="skip"`, are recorded
and the document left out.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from .archive import Archive, find_layout, open_archive
from .errors import ConfigError, InputError

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]
DATASETS = ("clickture", "coco")
SPLITS = {"clickture": ("dev", "lite"), "coco": ("train", "restval", "val", "test")}
# The documents the vocabulary is fitted on, which are also those of the authors' COCO outputs.
FIT_SPLITS = {"clickture": ("dev",), "coco": ("train", "test")}
SKIP_HINT = "Use --on-error skip to leave such items out and record them in encode.json."
_LAYOUT_SAMPLE = 200


@dataclass(frozen=True)
class SkippedItem:
    """A document left out under `on_error="skip"`, and why."""

    split: str
    item: str  # the list line, or the image's file name in dataset.json
    member: str
    reason: str


@dataclass(frozen=True)
class OriginalOutput:
    """One pair of the authors' output files and the splits whose documents it holds."""

    stem: str  # "clickture_dev", "coco"
    index_suffix: str  # "_sparse" for Clickture, "" for COCO, as the scripts named them
    splits: tuple[str, ...]

    def pairs_name(self, min_df: int) -> str:
        return f"img_keyword_rec_{self.stem}_sk_{min_df}.npy"

    def index_name(self, min_df: int) -> str:
        return f"img_keyword_ind_{self.stem}_sk_{min_df}{self.index_suffix}.npy"


ORIGINAL_OUTPUTS = {
    "clickture": (
        OriginalOutput("clickture_dev", "_sparse", ("dev",)),
        OriginalOutput("clickture_lite", "_sparse", ("lite",)),
    ),
    "coco": (OriginalOutput("coco", "", ("train", "test")),),
}


@dataclass
class Documents:
    """The documents of one dataset, in the authors' order, as parallel columns."""

    dataset: str
    splits: tuple[str, ...]
    archives: tuple[Archive, ...]
    split: np.ndarray  # (n,) uint8: index into `splits`
    img_id: np.ndarray  # (n,) int64
    archive: np.ndarray  # (n,) uint8: index into `archives`
    members: list[str]  # (n,) member names
    locations: np.ndarray  # (n, 6) int64: where each member lies, for `Archive.read_at`
    skipped: list[SkippedItem] = field(default_factory=list)
    absent_splits: tuple[str, ...] = ()  # splits whose keyword files the archive lacks

    def __len__(self) -> int:
        return len(self.members)

    def split_codes(self, names: tuple[str, ...]) -> list[int]:
        return [self.splits.index(name) for name in names]

    @property
    def fit(self) -> np.ndarray:
        """(n,) bool: the document belongs to the vocabulary's fitting set."""
        return np.isin(self.split, self.split_codes(FIT_SPLITS[self.dataset]))


def check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ConfigError(f"Unknown dataset {dataset!r}; choose one of: {', '.join(DATASETS)}.")


def _archive_path(folder: Path, stem: str) -> Path:
    """`<stem>.zip`, or the folder `<stem>/` it unzips to."""
    for candidate in (folder / f"{stem}.zip", folder / stem):
        if candidate.exists():
            return candidate
    raise InputError(
        f"Input {folder / (stem + '.zip')} not found (nor the folder {folder / stem} it unzips "
        f"to). Run `amc-data fetch {folder.name}` first, or place the file there."
    )


def _file_path(folder: Path, name: str) -> Path:
    path = folder / name
    if not path.is_file():
        raise InputError(
            f"Input {path} not found. Run `amc-data fetch {folder.name}` first, or place the "
            "file there."
        )
    return path


def input_files(dataset: str, folder: Path) -> list[Path]:
    """The files (or unzipped folders) an encode of `dataset` reads, without reading them."""
    check_dataset(dataset)
    if dataset == "clickture":
        return [
            _archive_path(folder, "keywords_dev"),
            _archive_path(folder, "keywords_lite"),
            _file_path(folder, "clickture-dev.lst"),
            _file_path(folder, "clickture-lite.lst"),
        ]
    return [_archive_path(folder, "keywords_coco")]


class _Candidate(NamedTuple):
    """An image the list names, before its member is looked up (a million of these: a tuple)."""

    split: str
    item: str
    img_id: int
    expected: str  # the member name the authors' scripts open
    place: str  # a template for messages, such as "Line {} of .../clickture-dev.lst"
    number: int

    @property
    def where(self) -> str:
        return self.place.format(self.number)


class _Planner:
    """Builds the document columns, honouring `on_error` for every problem found."""

    def __init__(self, dataset: str, archives: tuple[Archive, ...], on_error: OnError) -> None:
        self.dataset = dataset
        self.archives = archives
        self.on_error = on_error
        self.skipped: list[SkippedItem] = []

    def problem(self, split: str, item: str, member: str, message: str) -> None:
        if self.on_error == "fail":
            raise InputError(f"{message} {SKIP_HINT}")
        self.skipped.append(SkippedItem(split, item, member, message))

    def documents(
        self, candidates: list[_Candidate], archive_of: dict[str, int], absent: tuple[str, ...]
    ) -> Documents:
        """Look every candidate's member up (with each split's layout) and build the columns."""
        splits = SPLITS[self.dataset]
        layouts = {}
        for split in splits:
            sample = [c.expected for c in candidates if c.split == split][:_LAYOUT_SAMPLE]
            layouts[split] = find_layout(self.archives[archive_of[split]], sample)
        kept: list[_Candidate] = []
        members: list[str] = []
        for candidate in candidates:
            if candidate.split in absent:
                continue
            archive = self.archives[archive_of[candidate.split]]
            name = layouts[candidate.split].name(candidate.expected)
            if name not in archive:
                self.problem(
                    candidate.split,
                    candidate.item,
                    name,
                    f"{candidate.where} names {candidate.item!r}, but {archive.path} has no "
                    f"member {name!r}. Expected one keyword file per listed image; the archive "
                    "may be incomplete (run `amc-data verify`).",
                )
                continue
            kept.append(candidate)
            members.append(name)
        archive_index = np.array([archive_of[c.split] for c in kept], dtype=np.uint8)
        locations = np.full((len(kept), 6), -1, dtype=np.int64)
        for index, archive in enumerate(self.archives):
            rows = np.flatnonzero(archive_index == index)
            locations[rows] = archive.locations([members[r] for r in rows])
        return Documents(
            dataset=self.dataset,
            splits=splits,
            archives=self.archives,
            split=np.array([splits.index(c.split) for c in kept], dtype=np.uint8),
            img_id=np.array([c.img_id for c in kept], dtype=np.int64),
            archive=archive_index,
            members=members,
            locations=locations,
            skipped=self.skipped,
            absent_splits=absent,
        )


def _list_candidates(path: Path, split: str, planner: _Planner) -> list[_Candidate]:
    """One candidate per list line; image id `int(line.split("/")[-1])`, as the scripts did."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the list {path}: {exc}.") from exc
    candidates: list[_Candidate] = []
    first_seen: dict[str, int] = {}
    member = f"keywords_{split}/<line>.json"
    place = f"Line {{}} of {path}"
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line:
            continue
        tail = line.split("/")[-1]
        where = place.format(number)
        if not (tail.isascii() and tail.isdigit()):
            planner.problem(
                split,
                line,
                member,
                f"{where} is {line!r}, not an image id (expected digits, optionally after a "
                "folder, such as '00048500').",
            )
        elif line in first_seen:
            planner.problem(
                split,
                line,
                member,
                f"{where} repeats line {first_seen[line]} ({line!r}); each image must be listed "
                "once.",
            )
        else:
            first_seen[line] = number
            expected = f"keywords_{split}/{line}.json"
            candidates.append(_Candidate(split, line, int(tail), expected, place, number))
    return candidates


def _plan_clickture(folder: Path, on_error: OnError) -> Documents:
    archives = (
        open_archive(_archive_path(folder, "keywords_dev")),
        open_archive(_archive_path(folder, "keywords_lite")),
    )
    planner = _Planner("clickture", archives, on_error)
    candidates: list[_Candidate] = []
    for split in ("dev", "lite"):
        list_path = _file_path(folder, f"clickture-{split}.lst")
        candidates += _list_candidates(list_path, split, planner)
    return planner.documents(candidates, {"dev": 0, "lite": 1}, absent=())


def _load_dataset_json(archive: Archive) -> tuple[list[object], str]:
    name = find_layout(archive, ["dataset.json"]).name("dataset.json")
    if name not in archive:
        raise InputError(
            f"{archive.path} has no dataset.json (Karpathy's split file). Expected it beside the "
            "keyword_<split>/ folders; fetch the archive again."
        )
    try:
        content = json.loads(archive.read(name))
    except ValueError as exc:
        raise InputError(f"{archive.path} member {name!r} is not valid JSON ({exc}).") from exc
    images = content.get("images") if isinstance(content, dict) else None
    if not isinstance(images, list):
        found = f"keys {sorted(content)[:10]}" if isinstance(content, dict) else type(content)
        raise InputError(
            f"{archive.path} member {name!r} has no 'images' list (found {found}). Expected "
            "Karpathy's split file: {'images': [{'filename', 'imgid', 'split', ...}, ...]}."
        )
    return images, name


def _coco_candidates(archive: Archive, planner: _Planner) -> list[_Candidate]:
    images, json_name = _load_dataset_json(archive)
    splits = SPLITS["coco"]
    candidates: list[_Candidate] = []
    seen_ids: dict[int, int] = {}
    place = f"images[{{}}] of {archive.path} member {json_name!r}"
    for position, image in enumerate(images):
        where = place.format(position)
        record = image if isinstance(image, dict) else {}
        filename, img_id, split = record.get("filename"), record.get("imgid"), record.get("split")
        item = filename if isinstance(filename, str) else f"images[{position}]"
        if not isinstance(filename, str) or type(img_id) is not int or img_id < 0:
            found = json.dumps(image)[:200]
            message = f"{where} lacks a string 'filename' or an integer 'imgid' >= 0 ({found})."
            planner.problem(str(split), item, json_name, message)
        elif split not in splits:
            message = f"{where} ({filename}) has split {split!r}; expected one of {splits}."
            planner.problem(str(split), item, json_name, message)
        elif img_id in seen_ids:
            message = f"{where} ({filename}) repeats imgid {img_id} of images[{seen_ids[img_id]}]."
            planner.problem(split, item, json_name, message)
        else:
            seen_ids[img_id] = position
            expected = f"keyword_{split}/{filename.removesuffix('.jpg')}.json"
            candidates.append(_Candidate(split, filename, img_id, expected, place, position))
    return candidates


def _absent_splits(archive: Archive, candidates: list[_Candidate]) -> tuple[str, ...]:
    """Splits outside the fitting set for which the archive holds no keyword file at all.

    The authors' scripts read train and test only, so an archive without the other splits'
    files is complete for them: such a split is left out with a warning, not an error.
    """
    absent = []
    for split in SPLITS["coco"]:
        names = [c.expected for c in candidates if c.split == split]
        if not names or split in FIT_SPLITS["coco"]:
            continue
        layout = find_layout(archive, names[:_LAYOUT_SAMPLE])
        if not any(layout.name(name) in archive for name in names):
            log.warning("%s has no keyword_%s/ files: its %d images are left out.",
                        archive.path, split, len(names))  # fmt: skip
            absent.append(split)
    return tuple(absent)


def _plan_coco(folder: Path, on_error: OnError) -> Documents:
    archive = open_archive(_archive_path(folder, "keywords_coco"))
    planner = _Planner("coco", (archive,), on_error)
    candidates = _coco_candidates(archive, planner)
    archive_of = dict.fromkeys(SPLITS["coco"], 0)
    return planner.documents(candidates, archive_of, _absent_splits(archive, candidates))


def plan_documents(dataset: str, folder: Path, on_error: OnError = "fail") -> Documents:
    """Read `dataset`'s image list from `folder` and tie each image to its keyword member."""
    check_dataset(dataset)
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error must be 'fail' or 'skip', not {on_error!r}.")
    if dataset == "clickture":
        return _plan_clickture(folder, on_error)
    return _plan_coco(folder, on_error)
