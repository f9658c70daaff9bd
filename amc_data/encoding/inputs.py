"""What an encode reads: find a dataset's input files, read its image list (the Clickture list
files, or COCO's `dataset.json`), and turn it into a table of documents, each tied to the archive
member that holds its keywords, as the authors' scripts did.

Planning problems (a list line that is no image id, a repeated line, a member the archive lacks,
an image of an unknown split) either stop the encode or, with `on_error="skip"`, are recorded
and the document left out.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..archive import (
    Archive,
    DirectoryArchive,
    MemberLayout,
    ZipArchive,
    find_layout,
    open_archive,
    repeated_rows,
)
from ..archive.members import is_junk
from ..errors import InputError
from ..spec import DatasetSpec
from .policy import ErrorPolicy, SkippedItem

log = logging.getLogger(__name__)

_LAYOUT_SAMPLE = 200
_NAMES_SHOWN = 3  # file names a message shows of a folder, or of the names expected
_INT64_MAX = (1 << 63) - 1


@dataclass
class Documents:
    """The documents of one dataset, in the authors' order, as parallel columns.

    `splits` and `archives` name the splits and archives; per document, `split_code` and
    `archive_code` index into them.
    """

    spec: DatasetSpec
    archives: tuple[Archive, ...]
    split_code: np.ndarray  # (n,) uint8: index into `splits`
    img_id: np.ndarray  # (n,) int64
    archive_code: np.ndarray  # (n,) uint8: index into `archives`
    members: np.ndarray  # (n,) bytes: member names, UTF-8
    items: np.ndarray  # (n,) bytes: the list line, or the file name in dataset.json
    locations: np.ndarray  # (n, 6) int64: where each member lies, for `Archive.read_at`
    absent_splits: tuple[str, ...] = ()  # splits whose keyword files the archive lacks

    @property
    def dataset(self) -> str:
        return self.spec.name

    @property
    def splits(self) -> tuple[str, ...]:
        return self.spec.splits

    def __len__(self) -> int:
        return len(self.members)

    @staticmethod
    def concat(parts: list[Documents]) -> Documents:
        """One table of the parts' documents, in order (parts of one plan share archives)."""
        if len(parts) == 1:
            return parts[0]
        first = parts[0]
        return Documents(
            spec=first.spec,
            archives=first.archives,
            split_code=np.concatenate([p.split_code for p in parts]),
            img_id=np.concatenate([p.img_id for p in parts]),
            archive_code=np.concatenate([p.archive_code for p in parts]),
            members=np.concatenate([p.members for p in parts]),
            items=np.concatenate([p.items for p in parts]),
            locations=np.concatenate([p.locations for p in parts]),
            absent_splits=tuple(dict.fromkeys(s for p in parts for s in p.absent_splits)),
        )

    def split_codes(self, names: tuple[str, ...]) -> list[int]:
        return [self.splits.index(name) for name in names]

    @property
    def fit(self) -> np.ndarray:
        """(n,) bool: the document belongs to the vocabulary's fitting set."""
        return np.isin(self.split_code, self.split_codes(self.spec.fit_splits))

    def skipped_item(self, row: int, reason: str) -> SkippedItem:
        """Document `row` as an item left out for `reason`."""
        return SkippedItem(
            split=self.splits[self.split_code[row]],
            item=bytes(self.items[row]).decode("utf-8"),
            member=bytes(self.members[row]).decode("utf-8"),
            reason=reason,
        )


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


def input_files(spec: DatasetSpec, folder: Path) -> list[Path]:
    """The files (or unzipped folders) an encode of a dataset reads, without reading them."""
    return [
        *(_archive_path(folder, stem) for stem in spec.archives),
        *(_file_path(folder, name) for name in spec.lists),
    ]


@dataclass
class _Candidates:
    """Images a list names, before their members are looked up: numpy columns, since a Lite
    list has a million lines. The member the authors' scripts open for candidate `i` is
    `<folder of its split>/<stems[i]>.json`."""

    split: np.ndarray  # (n,) uint8: index into the dataset's splits
    items: np.ndarray  # (n,) bytes: the list line, or the file name in dataset.json
    stems: np.ndarray  # (n,) bytes
    img_id: np.ndarray  # (n,) int64
    numbers: np.ndarray  # (n,) int64: line number, or position in dataset.json
    places: dict[int, str]  # split code -> message template, "Line {} of .../clickture-dev.lst"

    def where(self, row: int) -> str:
        return self.places[int(self.split[row])].format(int(self.numbers[row]))

    def item(self, row: int) -> str:
        return bytes(self.items[row]).decode("utf-8")


def _member_folder(spec: DatasetSpec, split: str) -> str:
    """The folder of a split's keyword files, as the scripts name it."""
    return spec.member_folder(split)


def _member_names(layout: MemberLayout, folder: str, stems: np.ndarray) -> np.ndarray:
    """The members holding `<folder>/<stem>.json` under `layout`, as UTF-8 bytes."""
    return layout.names(folder, np.char.add(stems, b".json"))


class _Planner:
    """Builds the document columns, honouring `on_error` for every problem found."""

    def __init__(self, spec: DatasetSpec, archives: tuple[Archive, ...], policy: ErrorPolicy):
        self.dataset = spec  # the dataset, as its spec
        self.splits = spec.splits
        self.archives = archives
        self.policy = policy

    def problem(self, split: str, item: str, member: str, message: str) -> None:
        self.policy.problem(SkippedItem(split, item, member, message))

    def layout(self, archive: Archive, folder: str, stems: np.ndarray) -> MemberLayout:
        sample = [f"{folder}/{bytes(stem).decode('utf-8')}.json" for stem in stems[:_LAYOUT_SAMPLE]]
        return find_layout(archive, sample)

    def documents(
        self, found: _Candidates, archive_of: dict[str, int], absent: tuple[str, ...] = ()
    ) -> Documents:
        """Look every candidate's member up (with its split's layout) and build the columns."""
        n = found.split.size
        archive_index = np.array([archive_of[s] for s in self.splits], dtype=np.uint8)[found.split]
        names = np.zeros(n, dtype="S1")
        keep = np.ones(n, dtype=bool)
        locations = np.full((n, 6), -1, dtype=np.int64)
        for code, split in enumerate(self.splits):
            rows = np.flatnonzero(found.split == code)
            if rows.size == 0:
                continue
            if split in absent:
                keep[rows] = False
                continue
            archive = self.archives[archive_of[split]]
            folder = _member_folder(self.dataset, split)
            layout = self.layout(archive, folder, found.stems[rows])
            split_names = _member_names(layout, folder, found.stems[rows])
            if split_names.dtype.itemsize > names.dtype.itemsize:
                names = names.astype(split_names.dtype)
            names[rows] = split_names
            locations[rows] = archive.locations(split_names)
        for row in np.flatnonzero(keep & (locations[:, 2] < 0)).tolist():
            archive = self.archives[archive_index[row]]
            name = bytes(names[row]).decode("utf-8")
            item = found.item(row)
            self.problem(
                self.splits[found.split[row]],
                item,
                name,
                f"{found.where(row)} names {item!r}, but {archive.path} has no member {name!r}. "
                "Expected one keyword file per listed image; the archive may be incomplete (run "
                "`amc-data verify`).",
            )
            keep[row] = False
        for code in np.unique(found.split).tolist():
            # Drop the parsed directory: workers read by location alone.
            self.archives[archive_of[self.splits[code]]].close()
        rows = np.flatnonzero(keep)
        return Documents(
            spec=self.dataset,
            archives=self.archives,
            split_code=found.split[rows],
            img_id=found.img_id[rows],
            archive_code=archive_index[rows],
            members=names[rows],
            items=found.items[rows],
            locations=locations[rows],
            absent_splits=absent,
        )


def _read_lines(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A list file's non-empty lines (stripped, as UTF-8 bytes) and their line numbers."""
    try:
        data = path.read_bytes()
        data.decode("utf-8")  # a clear error for a file that is not text
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"Cannot read the list {path} as UTF-8 text: {exc}.") from exc
    raw = data.split(b"\n")
    if any(space in data for space in (b" ", b"\t", b"\r", b"\x0b", b"\x0c")):
        raw = [line.strip() for line in raw]
    numbers = np.flatnonzero(np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))) + 1
    lines = np.array([raw[i - 1] for i in numbers.tolist()], dtype=bytes)
    return lines.astype("S1") if lines.size == 0 else lines, numbers


def _list_candidates(path: Path, split: str, planner: _Planner) -> _Candidates:
    """One candidate per list line; image id `int(line.split("/")[-1])`, as the scripts did.

    Checked column-wise: a Lite list has a million lines.
    """
    lines, numbers = _read_lines(path)
    code = planner.splits.index(split)
    place = f"Line {{}} of {path}"
    tails = lines
    if (lines.view(np.uint8) == ord("/")).any():
        tails = np.array([line.rpartition(b"/")[2] for line in lines.tolist()], dtype=bytes)
    # An id is 1 to 18 ASCII digits (18 fit an int64); a repeated line is a problem too.
    bad_id = ~np.char.isdigit(tails) | (np.char.str_len(tails) > 18)
    problems = set(np.flatnonzero(bad_id).tolist()) | set(repeated_rows(lines).tolist())
    folder = _member_folder(planner.dataset, split)
    for row in sorted(problems):
        line = bytes(lines[row]).decode("utf-8")
        member = f"{folder}/{line}.json"
        where = place.format(int(numbers[row]))
        if bad_id[row]:
            message = (
                f"{where} is {line!r}, not an image id (expected digits, optionally after a "
                "folder, such as '00048500')."
            )
        else:
            first = int(numbers[np.flatnonzero(lines == lines[row])[0]])
            message = f"{where} repeats line {first} ({line!r}); each image must be listed once."
        planner.problem(split, line, member, message)
    keep = np.ones(lines.size, dtype=bool)
    keep[list(problems)] = False
    return _Candidates(
        split=np.full(int(keep.sum()), code, dtype=np.uint8),
        items=lines[keep],
        stems=lines[keep],
        img_id=tails[keep].astype(np.int64),
        numbers=numbers[keep],
        places={code: place},
    )


def _plan_lists(spec: DatasetSpec, folder: Path, policy: ErrorPolicy) -> Iterator[Documents]:
    """A dataset whose splits each have a list file and an archive (Clickture), split by split,
    in the spec's order: the fitting split (dev) comes first."""
    stems = spec.archives
    archives = tuple(open_archive(_archive_path(folder, stem)) for stem in stems)
    archive_of = {split: stems.index(spec.archive_of(split)) for split in spec.splits}
    planner = _Planner(spec, archives, policy)
    # Parse the archives' directories (mostly numpy, which lets go of the GIL) in threads while
    # this one reads the lists, and hand over dev (the fitting set) before Lite is planned.
    with ThreadPoolExecutor(len(archives)) as pool:
        parsed = [pool.submit(_prefetch, archive) for archive in archives]
        for split, list_name in zip(spec.splits, spec.lists, strict=True):
            found = _list_candidates(_file_path(folder, list_name), split, planner)
            parsed[archive_of[split]].result()
            yield planner.documents(found, archive_of)


def _prefetch(archive: Archive) -> None:
    if isinstance(archive, ZipArchive):
        archive.index()


def parse_dataset_json(data: bytes | str, where: str) -> list[object]:
    """The `images` list of Karpathy's `dataset.json` (`where` names it in errors)."""
    try:
        content = json.loads(data)
    except ValueError as exc:
        raise InputError(f"{where} is not valid JSON ({exc}).") from exc
    images = content.get("images") if isinstance(content, dict) else None
    if not isinstance(images, list):
        found = f"keys {sorted(content)[:10]}" if isinstance(content, dict) else type(content)
        raise InputError(
            f"{where} has no 'images' list (found {found}). Expected Karpathy's split file: "
            "{'images': [{'filename', 'imgid', 'split', 'sentences', ...}, ...]}."
        )
    return images


def load_dataset_json(archive: Archive) -> tuple[list[object], str]:
    """The `images` list of Karpathy's `dataset.json` in a COCO archive, and its member name."""
    name = find_layout(archive, ["dataset.json"]).name("dataset.json")
    member = archive.member(name)
    if member is None:
        raise InputError(
            f"{archive.path} has no dataset.json (Karpathy's split file). Expected it beside the "
            "keyword_<split>/ folders; fetch the archive again."
        )
    return parse_dataset_json(archive.read_member(member), f"{archive.path} member {name!r}"), name


def _coco_candidates(archive: Archive, planner: _Planner) -> _Candidates:
    images, json_name = load_dataset_json(archive)
    splits = planner.splits
    columns: dict[str, list] = {"split": [], "items": [], "img_id": [], "numbers": []}
    seen_ids: dict[object, int] = {}
    place = f"images[{{}}] of {archive.path} member {json_name!r}"
    for position, image in enumerate(images):
        where = place.format(position)
        record = image if isinstance(image, dict) else {}
        filename, img_id, split = record.get("filename"), record.get("imgid"), record.get("split")
        item = filename if isinstance(filename, str) else f"images[{position}]"
        good_id = type(img_id) is int and 0 <= img_id <= _INT64_MAX  # an int64, as written out
        if not isinstance(filename, str) or not good_id:
            shown = json.dumps(image)[:200]
            message = (
                f"{where} lacks a string 'filename' or an integer 'imgid' from 0 to 2**63 - 1 "
                f"({shown})."
            )
            planner.problem(str(split), item, json_name, message)
        elif split not in splits:
            message = f"{where} ({filename}) has split {split!r}; expected one of {splits}."
            planner.problem(str(split), item, json_name, message)
        elif img_id in seen_ids:
            message = f"{where} ({filename}) repeats imgid {img_id} of images[{seen_ids[img_id]}]."
            planner.problem(split, item, json_name, message)
        else:
            seen_ids[img_id] = position
            columns["split"].append(splits.index(split))
            columns["items"].append(filename.encode("utf-8"))
            columns["img_id"].append(img_id)
            columns["numbers"].append(position)
    items = np.array(columns["items"], dtype=bytes) if images else np.zeros(0, "S1")
    stems = np.array([item.removesuffix(b".jpg") for item in columns["items"]], dtype=items.dtype)
    return _Candidates(
        split=np.array(columns["split"], dtype=np.uint8),
        items=items,
        stems=stems,
        img_id=np.array(columns["img_id"], dtype=np.int64),
        numbers=np.array(columns["numbers"], dtype=np.int64),
        places=dict.fromkeys(range(len(splits)), place),
    )


def _absent_splits(planner: _Planner, found: _Candidates) -> tuple[str, ...]:
    """Splits outside the fitting set for which the archive holds no keyword file at all.

    The authors' scripts read train and test only, so an archive without the other splits'
    files is complete for them: such a split is left out with a warning, not an error.
    """
    archive = planner.archives[0]
    absent = []
    for code, split in enumerate(planner.splits):
        stems = found.stems[found.split == code]
        if stems.size == 0 or split in planner.dataset.fit_splits:
            continue
        folder = _member_folder(planner.dataset, split)
        layout = planner.layout(archive, folder, stems)
        if (archive.locations(_member_names(layout, folder, stems))[:, 2] < 0).all():
            log.warning(
                "%s has none of the keyword files of the %d %s images: they are left out. %s",
                archive.path,
                stems.size,
                split,
                _absent_files_hint(archive, folder, stems),
            )
            absent.append(split)
    return tuple(absent)


def _absent_files_hint(archive: Archive, folder: str, stems: np.ndarray) -> str:
    """What names were expected for a split's keyword files, and what its folder holds
    instead (a count and a few names), so that misnamed files are told from absent ones."""
    expected = [f"{folder}/{bytes(stem).decode('utf-8')}.json" for stem in stems[:_NAMES_SHOWN]]
    wanted = (
        f"Expected {folder}/<file name>.json for each image's 'filename' in dataset.json "
        f"(minus .jpg), such as {', '.join(expected)}"
    )
    count, names = _folder_files(archive, folder)
    if not count:
        return f"{wanted}; the archive has no {folder}/ folder with files in it."
    return (
        f"{wanted}; but {folder}/ holds {count:,} other file(s), such as {', '.join(names)}. "
        "Rename the files after dataset.json's file names, or fix the file names in "
        "dataset.json."
    )


def _folder_files(archive: Archive, folder: str) -> tuple[int, list[str]]:
    """How many files lie under `folder/` (at the archive's root or inside a top folder), and
    the first few of their names, as the archive spells them."""
    heads = [f"{folder}/", *(f"{top}/{folder}/" for top in archive.top_folders())]
    if isinstance(archive, ZipArchive):
        names = archive.index().names
        inside = np.zeros(names.size, dtype=bool)
        for head in heads:
            inside |= np.char.startswith(names, head.encode("utf-8"))
        found = [bytes(name).decode("utf-8") for name in names[inside].tolist()]
    elif isinstance(archive, DirectoryArchive):
        found = []
        for head in heads:
            for root, _, files in os.walk(archive.path / head):
                relative = Path(root).relative_to(archive.path).as_posix()
                found += sorted(f"{relative}/{name}" for name in files)
    else:
        return 0, []
    found = [name for name in found if not is_junk(name)]
    return len(found), found[:_NAMES_SHOWN]


def _plan_dataset_json(spec: DatasetSpec, folder: Path, policy: ErrorPolicy) -> Documents:
    """A dataset whose one archive holds every split and `dataset.json` (COCO)."""
    (stem,) = spec.archives
    archive = open_archive(_archive_path(folder, stem))
    planner = _Planner(spec, (archive,), policy)
    found = _coco_candidates(archive, planner)
    archive_of = dict.fromkeys(spec.splits, 0)
    return planner.documents(found, archive_of, _absent_splits(planner, found))


def plan_parts(spec: DatasetSpec, folder: Path, policy: ErrorPolicy) -> Iterator[Documents]:
    """Read a dataset's image list from `folder` and tie each image to its keyword member, in
    parts (`Documents.concat` joins them): the fitting set's part first, so that the vocabulary
    can be counted while the rest is planned. Problems go to `policy`."""
    if spec.lists:
        yield from _plan_lists(spec, folder, policy)
    else:
        yield _plan_dataset_json(spec, folder, policy)
