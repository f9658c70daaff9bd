"""`amc-data example coco DIR`: a small example of the files `encode coco` and `prepare coco`
read, in the layout of the authors' COCO archive, for people who bring their own data.

What it writes into DIR (a new or empty folder):

- `coco/keywords_coco/dataset.json`: Karpathy's split file, `{"images": [...], "dataset":
  "coco"}`, one entry per image with `filename`, `filepath`, `imgid` (0, 1, 2, ... in file
  order), `cocoid`, `split` (`train`, `restval`, `val`, `test`), `sentids` and `sentences` (5
  captions, each with `raw`, `tokens`, `imgid`, `sentid`).
- `coco/keywords_coco/keyword_<split>/<file stem>.json`: each image's keywords as the authors'
  tagger wrote them, `{"tagging": {"keywords": [...], "scores": [...]}}`, where `<file stem>` is
  the `filename` without `.jpg`. (The folder is what `keywords_coco.zip` unzips to; `encode`
  reads either.)
- `features.npy`, `(N, regions, dim)` float16, and `feature_ids.npy`, `(N,)` int64: the Karpathy
  `imgid` of each feature row, in an order of their own (rows need not follow `dataset.json`).

The content is planted so that training learns something: every image is about one of a few
concepts, its captions name the concept, its keywords usually name it, and one of its regions
shows the concept's look. It is a format example, not a benchmark.

A foundation module: numpy and the standard library only, no stage.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checks import check_config, option
from .errors import ConfigError
from .files import atomic_write_bytes

__all__ = ["EXAMPLE_DATASETS", "ExampleConfig", "ExampleResult", "write_example"]

EXAMPLE_DATASETS = ("coco",)
SPLITS = ("train", "restval", "val", "test")

# Things COCO pictures, one word each so that a caption's concept is one token.
_CONCEPTS = ("giraffe", "pizza", "kite", "clock", "surfboard", "umbrella", "bicycle", "zebra")
_ADJECTIVES = ("small", "large", "old", "bright", "red", "white", "wooden", "colourful")
_PLACES = ("street", "field", "kitchen", "beach", "park", "table", "window", "room")
_PEOPLE = ("man", "woman", "child", "people", "group", "couple")
_TEMPLATES = (
    "a {adj} {concept} near the {place}",
    "a {person} looking at a {concept} in the {place}",
    "there is a {concept} by the {place}",
    "{person} standing next to a {adj} {concept}",
    "a photo of a {concept} on a {place}",
    "the {adj} {concept} in front of a {place}",
)
# The tagger's other keywords: common words, some also caption words.
_DISTRACTORS = (
    "outdoor", "indoor", "people", "street", "sky", "tree", "building", "car", "food", "table",
    "dog", "cat", "grass", "water", "light", "city", "beach", "snow", "wood", "metal", "white",
    "black", "red", "green", "blue", "day", "night", "window", "road", "chair",
)  # fmt: skip


@dataclass(frozen=True)
class ExampleConfig:
    """What `example coco` writes: a dataset small enough to encode, prepare, train and
    evaluate in seconds."""

    seed: int = option(
        0, "Seed of every random choice; the same settings give the same bytes.", low=0
    )
    images: int = option(
        48,
        "Images in all, split train/restval/val/test about 58/8/17/17 percent.",
        low=24,
        high=100_000,
    )
    regions: int = option(4, "Feature vectors (regions) per image.", low=1, high=64)
    dim: int = option(16, "Dimensions of a region's feature vector.", low=2, high=4096)

    def __post_init__(self) -> None:
        check_config(self)

    def split_sizes(self) -> dict[str, int]:
        """Images per Karpathy split."""
        test = val = self.images // 6
        restval = self.images // 12
        return {"train": self.images - test - val - restval, "restval": restval, "val": val}


@dataclass(frozen=True)
class ExampleResult:
    """Where the example went."""

    out: Path
    data_dir: Path  # what `--data-dir` names: encode finds `coco/keywords_coco/` in it
    keywords: Path  # the folder keywords_coco.zip unzips to
    features: Path
    feature_ids: Path
    images: int
    splits: dict[str, int]


def _split_column(config: ExampleConfig, rng: np.random.Generator) -> list[str]:
    sizes = config.split_sizes()
    sizes["test"] = config.images - sum(sizes.values())
    column = [split for split in SPLITS for _ in range(sizes[split])]
    return [column[i] for i in rng.permutation(len(column))]


def _caption(rng: np.random.Generator, concept: str) -> str:
    template = _TEMPLATES[rng.integers(len(_TEMPLATES))]
    return template.format(
        concept=concept,
        adj=_ADJECTIVES[rng.integers(len(_ADJECTIVES))],
        place=_PLACES[rng.integers(len(_PLACES))],
        person=_PEOPLE[rng.integers(len(_PEOPLE))],
    )


def _keywords(rng: np.random.Generator, concept: str) -> list[str]:
    count = int(rng.integers(6, 13))
    keywords = [str(w) for w in rng.choice(_DISTRACTORS, size=count, replace=False)]
    if rng.random() < 0.85:  # the tagger sees the concept most of the time, not always
        keywords.insert(int(rng.integers(len(keywords) + 1)), concept)
    return keywords


def _entries(
    config: ExampleConfig, rng: np.random.Generator
) -> tuple[list[dict[str, object]], dict[str, bytes], np.ndarray]:
    """dataset.json's entries, the keyword files (member name -> JSON bytes), and each image's
    concept."""
    splits = _split_column(config, rng)
    concepts = np.empty(config.images, dtype=np.int64)
    for split in SPLITS:  # every split shows every concept about equally often
        rows = np.flatnonzero(np.array(splits) == split)
        concepts[rows] = rng.permutation(np.arange(rows.size) % len(_CONCEPTS))
    cocoids = rng.choice(580_000, size=config.images, replace=False) + 1
    entries: list[dict[str, object]] = []
    files: dict[str, bytes] = {}
    sentid = 0
    for imgid, split in enumerate(splits):
        concept = _CONCEPTS[concepts[imgid]]
        filepath = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{filepath}_{int(cocoids[imgid]):012d}.jpg"
        sentences = []
        for _ in range(5):
            raw = _caption(rng, concept)
            tokens = raw.split()
            sentences.append(
                {"tokens": tokens, "raw": raw.capitalize() + ".", "imgid": imgid, "sentid": sentid}
            )
            sentid += 1
        entries.append(
            {
                "filepath": filepath,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentences": sentences,
                "cocoid": int(cocoids[imgid]),
            }
        )
        keywords = _keywords(rng, concept)
        scores = np.sort(rng.random(len(keywords)))[::-1].round(4).tolist()
        record = {"tagging": {"keywords": keywords, "scores": scores}}
        member = f"keyword_{split}/{filename.removesuffix('.jpg')}.json"
        files[member] = json.dumps(record).encode("utf-8")
    return entries, files, concepts


def _features(
    config: ExampleConfig, rng: np.random.Generator, concepts: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(N, R, D) float16 features, one region of each image showing its concept's look, and the
    imgid of each row, rows shuffled."""
    n, r, d = config.images, config.regions, config.dim
    looks = rng.standard_normal((len(_CONCEPTS), d))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    vectors = rng.standard_normal((n, r, d)) * (0.4 / np.sqrt(d))
    vectors += rng.standard_normal((n, r, d)) / np.sqrt(d)  # clutter
    shown = rng.integers(r, size=n)
    vectors[np.arange(n), shown] = looks[concepts] + rng.standard_normal((n, d)) * 0.2 / np.sqrt(d)
    order = rng.permutation(n)
    return vectors[order].astype(np.float16), order.astype(np.int64)


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        what = "a folder that is not empty" if out.is_dir() else "a file"
        raise ConfigError(
            f"out: {out} is {what}; the example is written only into a new or empty folder. "
            "Choose another folder, or delete this one first.",
            parameter="out",
        )


def write_example(
    dataset: str, out: str | os.PathLike[str], config: ExampleConfig | None = None
) -> ExampleResult:
    """Write a small example of `dataset`'s input layout (only "coco" so far) into `out`, a new
    or empty folder: it is built beside `out` and renamed into place, so a failure leaves
    nothing half-written."""
    if dataset not in EXAMPLE_DATASETS:
        raise ConfigError(
            f"dataset must be one of {', '.join(EXAMPLE_DATASETS)}, not {dataset!r}.",
            parameter="dataset",
        )
    config = config or ExampleConfig()
    out = Path(out)
    _check_out(out)
    rng = np.random.default_rng([config.seed, 2017])
    entries, files, concepts = _entries(config, rng)
    features, feature_ids = _features(config, rng, concepts)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        keywords = staging / "coco" / "keywords_coco"
        dataset_json = json.dumps({"images": entries, "dataset": "coco"}, indent=1)
        atomic_write_bytes(keywords / "dataset.json", dataset_json.encode("utf-8"))
        for member, data in files.items():
            atomic_write_bytes(keywords / member, data)
        np.save(staging / "features.npy", features)
        np.save(staging / "feature_ids.npy", feature_ids)
        os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 is not what a new folder gets
        _check_out(out)  # again: nothing appeared there meanwhile
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    counts = {split: sum(e["split"] == split for e in entries) for split in SPLITS}
    return ExampleResult(
        out=out,
        data_dir=out,
        keywords=out / "coco" / "keywords_coco",
        features=out / "features.npy",
        feature_ids=out / "feature_ids.npy",
        images=config.images,
        splits=counts,
    )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
