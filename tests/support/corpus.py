"""Synthetic keyword corpora shaped like the authors' archives, for tests and benchmarks.

- `keyword_pool()`: a Zipf-distributed pool of realistic keywords (words and phrases, capitals,
  accents, stop words, digits, and the pieces tokenisers trip on a little deeper).
- `make_clickture()`: `keywords_dev.zip`, `keywords_lite.zip`, `clickture-dev.lst`,
  `clickture-lite.lst`; `dev_lines()` (the real dev list where it is at hand, else
  `synthetic_dev_lines()`, a list of the same shape), `lite_lines()` and `place_zero()` make
  list lines.
- `make_coco()`: `keywords_coco.zip` with a Karpathy-format `dataset.json` and one keyword file
  per image in `keyword_<split>/`.
- Defects, one function each, applied to a written corpus: `break_json`, `drop_tagging`,
  `drop_keywords`, `set_keywords`, `remove_member`, `repeat_list_line`, `damage_member_crc`,
  `drop_images`, `set_split`.

Everything is deterministic for a given seed (zip entries carry a fixed timestamp). Writing is
built for volume: keywords are JSON-encoded once, choices come from a numpy generator in chunks,
and each member is one `ZipFile.writestr`. `python tests/corpus.py OUT --lite 920000` writes a
1M-document Clickture corpus and prints the time taken.
"""

from __future__ import annotations

import argparse
import functools
import json
import struct
import time
import zipfile
import zlib
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from json.encoder import encode_basestring, encode_basestring_ascii
from pathlib import Path

import numpy as np

# Fixed entry timestamp: the same seed gives the same bytes on every run.
DATE_TIME = (2017, 3, 1, 12, 0, 0)
PARTS = ("dev", "lite")
SPLITS = ("train", "restval", "val", "test")

# The authors' clickture-dev.lst, where a checkout has it beside the repository.
REAL_DEV_LIST = Path(__file__).resolve().parents[3] / "shared" / "data" / "clickture-dev.lst"
# Its shape: every id from 0 to 79,664 once, as 8 zero-padded digits, in an unsorted order
# whose first line is 00048500 and whose image 0 is line 71,587.
DEV_LIST_SIZE = 79_665
DEV_LIST_FIRST_ID = 48_500
DEV_LIST_ZERO_AT = 71_586  # 0-based

# The head of the Zipf distribution: keywords as an auto-tagger writes them. Their order is
# shuffled per pool seed, so each lands somewhere in the first ranks.
HEAD_KEYWORDS = [
    # plain words and phrases
    "white",
    "black",
    "red",
    "blue",
    "green",
    "yellow",
    "wood",
    "metal",
    "glass",
    "stone",
    "young adult",
    "adult",
    "woman",
    "man",
    "child",
    "people",
    "portrait",
    "smiling",
    "person",
    "home design",
    "interior",
    "kitchen",
    "white sink",
    "sink",
    "bathroom",
    "toilet",
    "bedroom",
    "living room",
    "furniture",
    "table",
    "chair",
    "window",
    "door",
    "floor",
    "wall",
    "lamp",
    "indoors",
    "outdoors",
    "nature",
    "sky",
    "tree",
    "water",
    "beach",
    "sea",
    "mountain",
    "snow",
    "city",
    "building",
    "architecture",
    "car",
    "road",
    "street",
    "bridge",
    "night",
    "sunset",
    "food",
    "coffee",
    "cake",
    "plate",
    "fruit",
    "flower",
    "garden",
    "grass",
    "dog",
    "cat",
    "horse",
    "bird",
    "animal",
    "clothing",
    "dress",
    "fashion",
    "shoe",
    "hat",
    "logo",
    "text",
    "illustration",
    "drawing",
    "cartoon",
    "vector",
    "pattern",
    "texture",
    "background",
    "close up",
    "modern",
    "vintage",
    "luxury",
    "small",
    "large",
    "new",
    "old",
    # capitals
    "WC",
    "USA",
    "New York",
    "London",
    "Paris",
    "TV",
    "LED",
    "iPhone",
    "McDonald's",
    # accents, composed and decomposed
    "café",
    "crème brûlée",
    "naïve",
    "São Paulo",
    "Zürich",
    "México",
    "résumé",
    "Ångström",
    "façade",
    "jalapeño",
    # stop words, alone, capitalised and inside phrases
    "the",
    "and",
    "of",
    "in the kitchen",
    "on the beach",
    "The End",
    "Fire",
    "two people",
    "one",
    "back",
    "front",
    # digits
    "2010",
    "2012",
    "3d",
    "4x4",
    "1",
    "24",
    "100 years",
    "iPhone 5",
    "B2B",
    # punctuation that splits or joins
    "close-up",
    "black-and-white",
    "children's room",
    "rock'n'roll",
    "e-mail",
    "T-shirt",
    "U.S.",
    "50%",
]

# Pieces that tokenisers trip on (see tests/test_analyzer.py). Most are outside Latin-1, which
# makes Python store a whole document in 2 or 4 bytes per character: real tagger output rarely
# has them, so by default they sit deeper in the distribution (`hostile_rank`).
HOSTILE_KEYWORDS = [
    "ΟΔΟΣ",
    "İstanbul",
    "ＷＣ",
    "ﬁre",
    "ｆｕｌｌ ｗｉｄｔｈ",
    "zero\u200dwidth",
    "ǅemal",
    "😀 smile",
    "𝐁𝐨𝐥𝐝",
    "cafe\u0301",
    "snake_case",
    "a",
    "x",
    "",
    "tab\there",
    "ß STRASSE",
]

# Made-up words: one to three syllables of these.
_ONSETS = [*"bcdfghjklmnprstvwz", "br", "cl", "st", "tr", "sh", "ch", "gr", "pl", "sp", "fl", "qu"]
_VOWELS = [*"aeiouaeioy", "ai", "ea", "oo", "ou"]
_CODAS = ["", "", "", "n", "r", "s", "t", "l", "m", "ck", "ng", "st", "rd", "x"]
_ACCENTS = {"a": "á", "e": "é", "i": "í", "o": "ö", "u": "ü", "n": "ñ", "c": "ç"}


@dataclass(frozen=True)
class KeywordPool:
    """Keywords in Zipf rank order, their JSON encodings and the cumulative sampling weights."""

    keywords: tuple[str, ...]
    json_ascii: tuple[str, ...]  # json.dumps(keyword): non-ASCII as \\u escapes
    json_utf8: tuple[str, ...]  # json.dumps(keyword, ensure_ascii=False)
    cdf: np.ndarray  # (len(keywords),) float64, ends at 1.0

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """`size` keyword indices drawn with the Zipf weights."""
        return np.minimum(
            np.searchsorted(self.cdf, rng.random(size), side="right"), len(self.keywords) - 1
        )


@functools.lru_cache(maxsize=8)
def keyword_pool(
    size: int = 100_000, exponent: float = 1.1, seed: int = 0, hostile_rank: int = 1000
) -> KeywordPool:
    """A pool of `size` distinct keywords; rank r is drawn with weight 1 / r**exponent.

    The hand-written `HEAD_KEYWORDS` take the first ranks (shuffled); `HOSTILE_KEYWORDS` take
    every 7th rank from `hostile_rank` on (pass a small one, like 10, to see them in a small
    corpus); the rest are made-up words and two-word phrases, some capitalised, accented or with
    digits.
    """
    rng = np.random.default_rng([seed, 0])
    keywords = [HEAD_KEYWORDS[i] for i in rng.permutation(len(HEAD_KEYWORDS))]
    hostile = {hostile_rank + 7 * i: word for i, word in enumerate(HOSTILE_KEYWORDS)}
    seen = set(keywords) | set(HOSTILE_KEYWORDS)
    plain = [word for word in HEAD_KEYWORDS if word.isascii() and word.isalpha()]
    if hostile_rank < len(keywords):
        # A rank inside the head: the hostile pieces go in there, every 7th rank.
        for rank in sorted(hostile):
            keywords.insert(min(rank, len(keywords)), hostile[rank])
        hostile = {}
    while len(keywords) < size:
        for word in _made_up_keywords(rng, size - len(keywords) + 64, plain):
            while len(keywords) in hostile and len(keywords) < size:
                keywords.append(hostile.pop(len(keywords)))
            if len(keywords) < size and word not in seen:
                seen.add(word)
                keywords.append(word)
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    return KeywordPool(
        keywords=tuple(keywords),
        # What json.dumps(k) and json.dumps(k, ensure_ascii=False) return for a str, faster.
        json_ascii=tuple(map(encode_basestring_ascii, keywords)),
        json_utf8=tuple(map(encode_basestring, keywords)),
        cdf=cdf,
    )


def _made_up_keywords(rng: np.random.Generator, n: int, plain: Sequence[str]) -> list[str]:
    """`n` made-up keywords (random numbers drawn in bulk: this runs 100,000 times)."""
    words = _made_up_words(rng, n)
    rolls, coins = rng.random(n).tolist(), rng.random(n).tolist()
    picks = rng.integers(len(plain), size=n).tolist()
    numbers = rng.integers(2, 3000, size=n).tolist()
    accents = rng.random((n, 24)) < 0.3
    keywords = []
    for i, word in enumerate(words[:n]):
        roll = rolls[i]
        if roll < 0.25:  # a two-word phrase, with a head word or another made-up one
            other = plain[picks[i]] if coins[i] < 0.5 else words[i - 1]
            word = f"{other} {word}" if roll < 0.125 else f"{word} {other}"
        elif roll < 0.30:
            word = word.capitalize()
        elif roll < 0.31:
            word = word.upper()
        elif roll < 0.34:
            flags = accents[i]
            word = "".join(_ACCENTS.get(c, c) if flags[j % 24] else c for j, c in enumerate(word))
        elif roll < 0.36:
            word = f"{word}{numbers[i]}"
        keywords.append(word)
    return keywords


def _made_up_words(rng: np.random.Generator, n: int) -> list[str]:
    syllables = rng.integers(1, 4, size=n).tolist()
    onsets = rng.integers(len(_ONSETS), size=(n, 3)).tolist()
    vowels = rng.integers(len(_VOWELS), size=(n, 3)).tolist()
    codas = rng.integers(len(_CODAS), size=n).tolist()
    return [
        "".join(_ONSETS[o] + _VOWELS[v] for o, v in zip(on[:k], vo[:k], strict=True)) + _CODAS[c]
        for k, on, vo, c in zip(syllables, onsets, vowels, codas, strict=True)
    ]


# --- documents --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DocumentStyle:
    """How keyword files look: list lengths, empty lists, JSON escaping."""

    keywords_per_image: tuple[int, int] = (10, 30)  # inclusive; duplicates are redrawn
    empty_fraction: float = 0.002  # share of images whose keyword list is empty
    ensure_ascii: bool = False  # True: "caf\\u00e9"; False: raw UTF-8


def _documents(
    names: Sequence[str],
    rng: np.random.Generator,
    pool: KeywordPool,
    style: DocumentStyle,
    url_prefix: str,
    empty: Collection[str] = (),
    chunk: int = 20_000,
) -> Iterator[tuple[str, bytes]]:
    """(name, JSON bytes) for each name, keywords drawn from `pool`; `empty` names get `[]`."""
    encoded = pool.json_ascii if style.ensure_ascii else pool.json_utf8
    lo, hi = style.keywords_per_image
    # Pre-rendered descending score lists, one set per list length: scores are not what is tested.
    scores = {
        k: [", ".join(f"{s:.4f}" for s in np.sort(rng.random(k))[::-1]) for _ in range(16)]
        for k in range(0, hi + 1)
    }
    empty = set(empty)
    for begin in range(0, len(names), chunk):
        batch = names[begin : begin + chunk]
        n = len(batch)
        counts = rng.integers(lo, hi + 1, size=n)
        counts[rng.random(n) < style.empty_fraction] = 0
        # Draw a few spares per image, so that dropping repeats still leaves `count` keywords.
        spare = 8
        draws = pool.draw(rng, int(counts.sum()) + spare * n).tolist()
        variants = rng.integers(0, 16, size=n).tolist()
        offset = 0
        for name, count, variant in zip(batch, counts.tolist(), variants, strict=True):
            chosen = list(dict.fromkeys(draws[offset : offset + count + spare]))[:count]
            offset += count + spare
            while len(chosen) < count:  # rare: too many repeats among the spares
                chosen = list(dict.fromkeys([*chosen, *pool.draw(rng, count).tolist()]))[:count]
            if name in empty:
                chosen = []
            keywords = ", ".join([encoded[i] for i in chosen])
            text = (
                f'{{"tagging": {{"keywords": [{keywords}], '
                f'"scores": [{scores[len(chosen)][variant]}]}}, '
                f'"url": "{url_prefix}{name}.jpg"}}'
            )
            yield name, text.encode("utf-8")


def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o644 << 16
    return info


def _write_zip(
    path: Path,
    members: Iterator[tuple[str, bytes]],
    *,
    folders: Sequence[str],
    dir_entries: bool,
    junk: Sequence[str],
    compresslevel: int,
) -> None:
    """Write `members` (full names) in the order given, then folder entries and junk."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as out:
        if dir_entries:
            for folder in folders:
                out.writestr(_zip_info(folder), b"")
        for name, data in members:
            out.writestr(_zip_info(name), data, compresslevel=compresslevel)
        for name in junk:
            out.writestr(_zip_info(name), b"\0\5\26\7\0\2\0\0Mac OS X" if "._" in name else b"")


def _order(names: Sequence[str], member_order: str) -> list[str]:
    if member_order == "sorted":
        return sorted(names)
    if member_order == "list":
        return list(names)
    if member_order == "reverse":
        return list(reversed(names))
    raise ValueError(f"member_order must be 'sorted', 'list' or 'reverse', not {member_order!r}")


def _prefix(wrap: str | None) -> str:
    return f"{wrap.strip('/')}/" if wrap else ""


def _junk(prefix: str, folders: Sequence[str], examples: Sequence[str]) -> list[str]:
    """macOS leftovers: `.DS_Store` files and an `__MACOSX/` tree of AppleDouble `._` files."""
    names = [f"{prefix}.DS_Store"] if prefix else [".DS_Store"]
    names += [f"{folder}.DS_Store" for folder in folders]
    names += ["__MACOSX/", *(f"__MACOSX/{folder}" for folder in folders)]
    for example in examples:
        folder, _, base = example.rpartition("/")
        names.append(f"__MACOSX/{folder}/._{base}")
    return names


# --- Clickture --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClicktureCorpus:
    """Where a generated Clickture corpus lies, and the names inside it."""

    folder: Path
    dev_lines: tuple[str, ...]
    lite_lines: tuple[str, ...]
    wrap: str | None

    def zip_path(self, part: str) -> Path:
        """`keywords_<part>.zip`."""
        return self.folder / f"keywords_{part}.zip"

    def list_path(self, part: str) -> Path:
        """`clickture-<part>.lst`."""
        return self.folder / f"clickture-{part}.lst"

    def lines(self, part: str) -> tuple[str, ...]:
        """The list lines of `part`, in list order."""
        return self.dev_lines if part == "dev" else self.lite_lines

    def member(self, part: str, line: str) -> str:
        """The zip member that holds the keywords of list line `line`."""
        return f"{_prefix(self.wrap)}keywords_{part}/{line}.json"


def real_dev_lines(shared_data: Path, n: int | None = None, start: int = 0) -> list[str]:
    """Lines `start` to `start + n` of the authors' real `clickture-dev.lst` (unsorted ids)."""
    lines = (Path(shared_data) / "clickture-dev.lst").read_text(encoding="ascii").splitlines()
    return lines[start : None if n is None else start + n]


@functools.cache
def synthetic_dev_lines(seed: int = 0) -> tuple[str, ...]:
    """A list shaped like the authors' `clickture-dev.lst`: ids 0 to 79,664 each once, 8
    zero-padded digits, in a seeded random order with 00048500 first and image 0 where the real
    list has it (line 71,587). Which id sits where otherwise owes nothing to the real list."""
    ids = np.random.default_rng([seed, 11]).permutation(DEV_LIST_SIZE)
    for position, img_id in ((0, DEV_LIST_FIRST_ID), (DEV_LIST_ZERO_AT, 0)):
        found = int(np.flatnonzero(ids == img_id)[0])
        ids[[position, found]] = ids[[found, position]]
    return tuple(f"{i:08d}" for i in ids.tolist())


def dev_lines(n: int | None = None, start: int = 0) -> list[str]:
    """Lines `start` to `start + n` of the real `clickture-dev.lst` where the checkout has it
    (`REAL_DEV_LIST`), else of `synthetic_dev_lines()`, which has the same shape."""
    if REAL_DEV_LIST.is_file():
        return real_dev_lines(REAL_DEV_LIST.parent, n, start)
    return list(synthetic_dev_lines()[start : None if n is None else start + n])


def lite_lines(
    n: int, seed: int = 0, *, first_id: int = 0, include_zero: bool = True, prefix: str = ""
) -> list[str]:
    """`n` Lite-style list lines: distinct 8-digit zero-padded ids, shuffled (not sorted).

    Ids are `first_id .. first_id + n - 1`, or skip 0 when `include_zero` is false. `prefix`
    (for example `"lite/"`) puts a path part before the id, exercising `int(line.split("/")[-1])`.
    """
    start = first_id if include_zero or first_id > 0 else 1
    ids = np.random.default_rng([seed, 7]).permutation(np.arange(start, start + n))
    return [f"{prefix}{i:08d}" for i in ids.tolist()]


def place_zero(lines: Sequence[str], present: bool, at: int = 0) -> list[str]:
    """`lines` without image 0, then with `00000000` inserted at position `at` when `present`.

    Image 0 decides the index quirk (`[0, -1]` when absent), so tests need both cases from any
    slice of the real list.
    """
    kept = [line for line in lines if int(line.split("/")[-1]) != 0]
    if present:
        kept.insert(at, "00000000")
    return kept


def make_clickture(
    folder: Path,
    dev_lines: Sequence[str],
    lite_lines: Sequence[str],
    seed: int = 0,
    wrap: str | None = None,
    *,
    junk: bool = False,
    dir_entries: bool = False,
    member_order: str = "sorted",
    extra_members: int = 0,
    empty_lines: Collection[str] = (),
    style: DocumentStyle = DocumentStyle(),  # frozen: sharing the default is safe
    pool: KeywordPool | None = None,
    compresslevel: int = 6,
) -> ClicktureCorpus:
    """Write a Clickture-shaped corpus into `folder`; return where everything lies.

    - `wrap`: put everything inside one top folder of that name.
    - `junk`: add `.DS_Store` files and an `__MACOSX/` tree, which readers must ignore.
    - `dir_entries`: add explicit folder entries (`keywords_dev/`), as `zip -r` does.
    - `member_order`: members in `"sorted"` name order (default; differs from the unsorted list
      order), `"list"` order or `"reverse"` list order.
    - `extra_members`: that many members per archive that no list line names (ids above all).
    - `empty_lines`: list lines whose keyword list is empty (besides the random `empty_fraction`).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pool = pool or keyword_pool()
    prefix = _prefix(wrap)
    for index, (part, lines) in enumerate((("dev", dev_lines), ("lite", lite_lines))):
        rng = np.random.default_rng([seed, 1 + index])
        top = max((int(line.split("/")[-1]) for line in lines), default=0)
        extra = [f"{top + 1 + i:08d}" for i in range(extra_members)]
        names = _order([*lines, *extra], member_order)
        base = f"{prefix}keywords_{part}/"
        documents = _documents(names, rng, pool, style, "https://example.invalid/", empty_lines)
        subfolders = sorted({line.rpartition("/")[0] for line in lines if "/" in line})
        folders = [prefix] if prefix else []
        folders += [base, *(f"{base}{sub}/" for sub in subfolders)]
        _write_zip(
            folder / f"keywords_{part}.zip",
            ((f"{base}{name}.json", data) for name, data in documents),
            folders=folders,
            dir_entries=dir_entries,
            junk=_junk(prefix, [base], [f"{base}{name}.json" for name in names[:3]])
            if junk
            else [],
            compresslevel=compresslevel,
        )
        _write_lines(folder / f"clickture-{part}.lst", lines)
    return ClicktureCorpus(folder, tuple(dev_lines), tuple(lite_lines), wrap)


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8", newline="\n")


# --- COCO -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CocoImage:
    """One image of a generated `dataset.json`."""

    imgid: int
    split: str
    filename: str


@dataclass(frozen=True)
class CocoCorpus:
    """Where a generated COCO corpus lies, and the names inside it."""

    folder: Path
    images: tuple[CocoImage, ...]  # in dataset.json order
    wrap: str | None

    @property
    def zip_path(self) -> Path:
        """`keywords_coco.zip`."""
        return self.folder / "keywords_coco.zip"

    @property
    def dataset_member(self) -> str:
        """The member name of `dataset.json`."""
        return f"{_prefix(self.wrap)}dataset.json"

    def member(self, image: CocoImage) -> str:
        """The zip member that holds `image`'s keywords."""
        stem = image.filename.removesuffix(".jpg")
        return f"{_prefix(self.wrap)}keyword_{image.split}/{stem}.json"


_CAPTION_WORDS = ["a", "the", "man", "woman", "dog", "cat", "sits", "on", "in", "with", "red"]


def make_coco(
    folder: Path,
    n_images: Mapping[str, int],
    seed: int = 0,
    wrap: str | None = None,
    *,
    junk: bool = False,
    dir_entries: bool = False,
    empty_imgids: Collection[int] = (),
    sentences_per_image: int = 5,
    style: DocumentStyle = DocumentStyle(),  # frozen: sharing the default is safe
    pool: KeywordPool | None = None,
    compresslevel: int = 6,
) -> CocoCorpus:
    """Write `keywords_coco.zip` (Karpathy `dataset.json` + `keyword_<split>/` files) in `folder`.

    `n_images` maps split (train, restval, val, test) to a count; splits are interleaved in file
    order, `imgid` is the running index. `empty_imgids`: images whose keyword list is empty. The
    members are written `dataset.json` first, then keyword files in `dataset.json` order.
    """
    unknown = set(n_images) - set(SPLITS)
    if unknown:
        raise ValueError(f"unknown splits {sorted(unknown)}; use {SPLITS}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pool = pool or keyword_pool()
    rng = np.random.default_rng([seed, 3])
    splits = [split for split in SPLITS for _ in range(n_images.get(split, 0))]
    splits = [splits[i] for i in rng.permutation(len(splits))]
    cocoids = (rng.choice(580_000, size=len(splits), replace=False) + 1).tolist()
    images, entries = [], []
    sentid = 0
    for imgid, (split, cocoid) in enumerate(zip(splits, cocoids, strict=True)):
        filepath = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
        sentences = []
        for _ in range(sentences_per_image):
            tokens = [_CAPTION_WORDS[i] for i in rng.integers(len(_CAPTION_WORDS), size=8)]
            raw = " ".join(tokens).capitalize() + "."
            sentences.append({"tokens": tokens, "raw": raw, "imgid": imgid, "sentid": sentid})
            sentid += 1
        entries.append(
            {
                "filepath": filepath,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": cocoid,
            }
        )
        images.append(CocoImage(imgid, split, filename))
    corpus = CocoCorpus(folder, tuple(images), wrap)
    prefix = _prefix(wrap)
    dataset = json.dumps({"images": entries, "dataset": "coco"}).encode()
    by_name = {image.filename.removesuffix(".jpg"): image for image in images}
    empty = {image.filename.removesuffix(".jpg") for image in images if image.imgid in empty_imgids}
    documents = _documents(list(by_name), rng, pool, style, "http://example.invalid/", empty)
    members = ((corpus.member(by_name[name]), data) for name, data in documents)
    used = [split for split in SPLITS if n_images.get(split, 0)]
    folders = ([prefix] if prefix else []) + [f"{prefix}keyword_{split}/" for split in used]
    _write_zip(
        corpus.zip_path,
        _chain_first((corpus.dataset_member, dataset), members),
        folders=folders,
        dir_entries=dir_entries,
        junk=_junk(prefix, folders[-1:], [corpus.member(images[0])]) if junk and images else [],
        compresslevel=compresslevel,
    )
    return corpus


# A 48-image COCO set of one's own: its keywords are mostly concept words, each tagging two
# images, so the authors' min_df of 6 keeps only the two generic words of the train images.
OWN_COCO_GENERIC = ["outdoor", "daylight"]
OWN_COCO_COUNTS = {"train": 16, "val": 16, "test": 16}  # the fitting set is train + test


def own_coco_keywords(position: int, split: str) -> list[str]:
    """Six concept words shared by two neighbouring images; train images also carry the
    generic words."""
    concepts = [f"concept{position // 2}x{j}" for j in range(6)]
    return (OWN_COCO_GENERIC if split == "train" else []) + concepts


def make_own_coco(data_dir: Path) -> CocoCorpus:
    """`make_coco` at `data_dir/coco` (48 images, seed 5) with every image's keywords
    replaced by `own_coco_keywords`."""
    import shutil

    made = make_coco(data_dir / "coco", OWN_COCO_COUNTS, seed=5)
    keywords = {
        made.member(image): own_coco_keywords(position, image.split)
        for position, image in enumerate(made.images)
    }
    rewritten = made.zip_path.with_suffix(".new")
    with zipfile.ZipFile(made.zip_path) as source, zipfile.ZipFile(rewritten, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if info.filename in keywords:
                record = json.loads(data)
                record["tagging"]["keywords"] = keywords[info.filename]
                data = json.dumps(record).encode()
            out.writestr(info, data)
    shutil.move(rewritten, made.zip_path)
    return made


def _chain_first(first: tuple[str, bytes], rest: Iterator[tuple[str, bytes]]):
    yield first
    yield from rest


# --- defects ----------------------------------------------------------------------------------


def rewrite_member(zip_path: Path, member: str, data: bytes | None) -> None:
    """Rewrite `zip_path` with `member` replaced by `data`, or removed when `data` is None."""
    zip_path = Path(zip_path)
    temporary = zip_path.with_name(zip_path.name + ".rewrite")
    with zipfile.ZipFile(zip_path) as source, zipfile.ZipFile(temporary, "w") as out:
        if member not in source.namelist():
            raise KeyError(f"{zip_path} has no member {member!r}")
        for info in source.infolist():
            if info.filename != member:
                out.writestr(info, source.read(info))
            elif data is not None:
                out.writestr(info, data)
    temporary.replace(zip_path)


def _edit_json(zip_path: Path, member: str, edit) -> None:
    with zipfile.ZipFile(zip_path) as source:
        value = json.loads(source.read(member))
    edit(value)
    rewrite_member(zip_path, member, json.dumps(value, ensure_ascii=False).encode())


def break_json(zip_path: Path, member: str) -> None:
    """Make `member` invalid JSON (still valid UTF-8): its closing brace is cut off."""
    with zipfile.ZipFile(zip_path) as source:
        data = source.read(member).rstrip()
    rewrite_member(zip_path, member, data[:-1])


def drop_tagging(zip_path: Path, member: str) -> None:
    """Remove the `tagging` key of a keyword file (other keys stay)."""
    _edit_json(zip_path, member, lambda value: value.pop("tagging"))


def drop_keywords(zip_path: Path, member: str) -> None:
    """Remove `tagging.keywords` of a keyword file (`tagging.scores` stays)."""
    _edit_json(zip_path, member, lambda value: value["tagging"].pop("keywords"))


def set_keywords(zip_path: Path, member: str, keywords: object = "red sink") -> None:
    """Set `tagging.keywords` to `keywords`: by default a string, not a list of strings."""
    _edit_json(zip_path, member, lambda value: value["tagging"].__setitem__("keywords", keywords))


def remove_member(zip_path: Path, member: str) -> None:
    """Delete a member, so that the list line naming it has no keyword file."""
    rewrite_member(zip_path, member, None)


def repeat_list_line(list_path: Path, index: int = 0, at: int | None = None) -> str:
    """Insert a copy of line `index` at position `at` (default: the end); return the line."""
    lines = Path(list_path).read_text(encoding="utf-8").splitlines()
    line = lines[index]
    lines.insert(len(lines) if at is None else at, line)
    _write_lines(Path(list_path), lines)
    return line


def damage_member_crc(zip_path: Path, member: str) -> int:
    """Flip one bit inside `member`'s deflated data, in place, so that reading it fails its CRC.

    The bit is chosen so that the damaged data still inflates to the same length (a flip that
    breaks the deflate stream itself would fail for another reason); the CRC-32 recorded in the
    archive then no longer matches. Returns the file offset of the changed byte.
    """
    with zipfile.ZipFile(zip_path) as archive:
        info = archive.getinfo(member)
    if info.compress_type != zipfile.ZIP_DEFLATED:
        raise ValueError(f"{member} is not deflated")
    with open(zip_path, "r+b") as f:
        f.seek(info.header_offset)
        header = f.read(30)
        name_length, extra_length = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_length + extra_length
        f.seek(start)
        data = bytearray(f.read(info.compress_size))
        middle = len(data) // 2
        # Middle first, then outwards: the block header at the start is best left alone.
        for position in sorted(range(2, len(data) - 1), key=lambda p: abs(p - middle)):
            for bit in range(8):
                data[position] ^= 1 << bit
                if _inflates_wrongly(bytes(data), info):
                    f.seek(start + position)
                    f.write(data[position : position + 1])
                    return start + position
                data[position] ^= 1 << bit
    raise RuntimeError(f"could not find a bit of {member} whose flip only breaks the CRC")


def _inflates_wrongly(data: bytes, info: zipfile.ZipInfo) -> bool:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        plain = inflater.decompress(data)
    except zlib.error:
        return False
    return (
        inflater.eof
        and not inflater.unused_data
        and len(plain) == info.file_size
        and zlib.crc32(plain) != info.CRC
    )


def drop_images(zip_path: Path, member: str) -> None:
    """Remove the `images` key of `dataset.json` (`member`: `CocoCorpus.dataset_member`)."""
    _edit_json(zip_path, member, lambda value: value.pop("images"))


def set_split(zip_path: Path, member: str, imgid: int, split: str = "holdout") -> None:
    """Give image `imgid` of `dataset.json` the split `split` (by default an unknown one)."""

    def edit(value: dict) -> None:
        value["images"][imgid]["split"] = split

    _edit_json(zip_path, member, edit)


# --- command line -----------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    """Write a benchmark-sized Clickture corpus: the dev list (the real one where it is at hand,
    else one of its shape) plus generated Lite lines."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("out", type=Path)
    parser.add_argument("--lite", type=int, default=920_335, help="Lite documents (default 920335)")
    parser.add_argument("--dev", type=int, default=None, help="first N dev lines (default all)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    corpus = make_clickture(
        args.out,
        dev_lines(args.dev),
        lite_lines(args.lite, args.seed),
        seed=args.seed,
    )
    elapsed = time.perf_counter() - began
    n = len(corpus.dev_lines) + len(corpus.lite_lines)
    sizes = ", ".join(
        f"{p.name} {p.stat().st_size / 2**20:.1f} MiB" for p in map(corpus.zip_path, PARTS)
    )
    print(f"{n} documents in {elapsed:.1f} s: {sizes}")


if __name__ == "__main__":
    main()
