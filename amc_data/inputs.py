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
from typing import Literal

import numpy as np

from .archive import Archive, MemberLayout, find_layout, open_archive
from .errors import ConfigError, InputError

log = logging.getLogger(__name__)

OnError = Literal["fail", "skip"]
DATASETS = ("clickture", "coco")
FORMATS = ("original", "csr", "parquet")  # what `encode` can write beside vocab.tsv
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


@dataclass
class _Candidates:
    """Images a list names, before their members are looked up: parallel columns, since a
    million objects would cost more than the lookups."""

    splits: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)  # list line, or file name in dataset.json
    img_ids: list[int] = field(default_factory=list)
    expected: list[str] = field(default_factory=list)  # the member the authors' scripts open
    places: list[str] = field(default_factory=list)  # message template, e.g. "Line {} of ..."
    numbers: list[int] = field(default_factory=list)

    def add(self, split: str, item: str, img_id: int, expected: str, place: str, number: int):
        self.splits.append(split)
        self.items.append(item)
        self.img_ids.append(img_id)
        self.expected.append(expected)
        self.places.append(place)
        self.numbers.append(number)


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
        self, found: _Candidates, archive_of: dict[str, int], absent: tuple[str, ...]
    ) -> Documents:
        """Look every candidate's member up (with its split's layout) and build the columns."""
        splits = SPLITS[self.dataset]
        codes = np.array([splits.index(s) for s in found.splits], dtype=np.uint8)
        archive_index = np.array([archive_of[s] for s in splits], dtype=np.uint8)[codes]
        names = list(found.expected)
        keep = ~np.isin(codes, [splits.index(s) for s in absent])
        for code, split in enumerate(splits):
            rows = np.flatnonzero(codes == code)
            if split in absent or rows.size == 0:
                continue
            archive = self.archives[archive_of[split]]
            layout = find_layout(archive, [names[r] for r in rows[:_LAYOUT_SAMPLE]])
            if layout != MemberLayout():
                for r in rows.tolist():
                    names[r] = layout.name(names[r])
        locations = np.full((len(names), 6), -1, dtype=np.int64)
        for index, archive in enumerate(self.archives):
            rows = np.flatnonzero((archive_index == index) & keep)
            locations[rows] = archive.locations([names[r] for r in rows.tolist()])
        for r in np.flatnonzero(keep & (locations[:, 2] < 0)).tolist():
            archive = self.archives[archive_index[r]]
            where = found.places[r].format(found.numbers[r])
            self.problem(
                found.splits[r],
                found.items[r],
                names[r],
                f"{where} names {found.items[r]!r}, but {archive.path} has no member "
                f"{names[r]!r}. Expected one keyword file per listed image; the archive may be "
                "incomplete (run `amc-data verify`).",
            )
            keep[r] = False
        rows = np.flatnonzero(keep)
        return Documents(
            dataset=self.dataset,
            splits=splits,
            archives=self.archives,
            split=codes[rows],
            img_id=np.array(found.img_ids, dtype=np.int64)[rows],
            archive=archive_index[rows],
            members=[names[r] for r in rows.tolist()],
            locations=locations[rows],
            skipped=self.skipped,
            absent_splits=absent,
        )


def _list_candidates(path: Path, split: str, planner: _Planner, found: _Candidates) -> None:
    """One candidate per list line; image id `int(line.split("/")[-1])`, as the scripts did.

    Written column-wise, with the per-line checks skipped when a whole-list check passes: a
    Lite list has a million lines.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the list {path}: {exc}.") from exc
    numbered = [(n, line) for n, raw in enumerate(text.split("\n"), 1) if (line := raw.strip())]
    tails = [line.rpartition("/")[2] for _, line in numbered]
    joined = "".join(tails)
    all_ids = joined.isascii() and joined.isdigit() and all(tails)
    unique = len({line for _, line in numbered}) == len(numbered)
    place = f"Line {{}} of {path}"
    if not (all_ids and unique):
        numbered, tails = _check_lines(numbered, tails, split, place, planner)
    found.splits += [split] * len(numbered)
    found.items += [line for _, line in numbered]
    found.img_ids += map(int, tails)
    found.expected += [f"keywords_{split}/{line}.json" for _, line in numbered]
    found.places += [place] * len(numbered)
    found.numbers += [number for number, _ in numbered]


def _check_lines(
    numbered: list[tuple[int, str]], tails: list[str], split: str, place: str, planner: _Planner
) -> tuple[list[tuple[int, str]], list[str]]:
    """The lines that are image ids and not repeats; a problem reported for each other one."""
    member = f"keywords_{split}/<line>.json"
    first_seen: dict[str, int] = {}
    good: list[tuple[int, str]] = []
    good_tails: list[str] = []
    for (number, line), tail in zip(numbered, tails, strict=True):
        if not (tail.isascii() and tail.isdigit()):
            planner.problem(
                split,
                line,
                member,
                f"{place.format(number)} is {line!r}, not an image id (expected digits, "
                "optionally after a folder, such as '00048500').",
            )
        elif line in first_seen:
            planner.problem(
                split,
                line,
                member,
                f"{place.format(number)} repeats line {first_seen[line]} ({line!r}); each image "
                "must be listed once.",
            )
        else:
            first_seen[line] = number
            good.append((number, line))
            good_tails.append(tail)
    return good, good_tails


def _plan_clickture(folder: Path, on_error: OnError) -> Documents:
    archives = (
        open_archive(_archive_path(folder, "keywords_dev")),
        open_archive(_archive_path(folder, "keywords_lite")),
    )
    planner = _Planner("clickture", archives, on_error)
    found = _Candidates()
    for split in ("dev", "lite"):
        _list_candidates(_file_path(folder, f"clickture-{split}.lst"), split, planner, found)
    return planner.documents(found, {"dev": 0, "lite": 1}, absent=())


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


def _coco_candidates(archive: Archive, planner: _Planner) -> _Candidates:
    images, json_name = _load_dataset_json(archive)
    splits = SPLITS["coco"]
    found = _Candidates()
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
            found.add(split, filename, img_id, expected, place, position)
    return found


def _absent_splits(archive: Archive, found: _Candidates) -> tuple[str, ...]:
    """Splits outside the fitting set for which the archive holds no keyword file at all.

    The authors' scripts read train and test only, so an archive without the other splits'
    files is complete for them: such a split is left out with a warning, not an error.
    """
    absent = []
    for split in SPLITS["coco"]:
        names = [e for s, e in zip(found.splits, found.expected, strict=True) if s == split]
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
    found = _coco_candidates(archive, planner)
    archive_of = dict.fromkeys(SPLITS["coco"], 0)
    return planner.documents(found, archive_of, _absent_splits(archive, found))


def plan_documents(dataset: str, folder: Path, on_error: OnError = "fail") -> Documents:
    """Read `dataset`'s image list from `folder` and tie each image to its keyword member."""
    check_dataset(dataset)
    if on_error not in ("fail", "skip"):
        raise ConfigError(f"on_error must be 'fail' or 'skip', not {on_error!r}.")
    if dataset == "clickture":
        return _plan_clickture(folder, on_error)
    return _plan_coco(folder, on_error)
