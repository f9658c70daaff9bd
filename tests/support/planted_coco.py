"""A planted COCO-shaped world, built independently of `synth`, that goes through the real
`encode coco` and `prepare coco`.

The story (one numpy generator, seeded):

- Concepts: `concepts` made-up words ("dovira", "kelmot", ...), each with a *kind*, visual or
  textual (half each), and a *look*, a random unit direction in feature space.
- Every image is *about* one concept (dealt evenly within each split). Its five captions name
  that concept among filler words ("a man sitting near the dovira on a table"); the query is
  the caption, its one relevant image its own.
- Which modality carries the concept depends on the concept (`carrier="concept"`, the default):
  the pixels of an image about a visual concept show it in 1 or 2 of its regions; the keywords of
  an image about a textual concept name it once among 8-16 distractor keywords.
- Decoys fake a concept in the modality that does not carry it: the keywords of an image about a
  visual concept name another visual concept, and the pixels of an image about a textual
  concept show another textual concept. A model that trusts the wrong modality for a concept
  ranks those decoys with the true images; one that averages both modalities mixes them in.
- Regions that do not show a concept are clutter (a few shared directions plus noise), some with
  a faint look of a random concept; distractor keywords are common words, several of them also
  caption filler words, so the words of a caption other than the concept match keywords at
  random.

What a model must learn: per concept word, which modality to trust, and within a modality the
one or two regions or the one keyword that carry it (the intra-attention). Since the modality
follows the concept word itself, the query's embedding can learn it as well as a modality gate
can: fixed modality weights do as well here (benchmarks/FIDELITY.md).

`carrier="caption"` builds the variant that needs the gate: every concept can be carried by
either modality, image by image (half each), and every caption of an image says which with a
cue word among its fillers ("a dovira pictured on a table", "a dovira written on a wall").
Decoys fake the concept in the other modality as before, so the same concept word must read the
pixels after one cue and the keywords after the other: a product of two words that no fixed
weighting of the two modalities expresses.
`PlantedCoco` keeps the truth: each image's concept, kind, the concept's regions, and the
concept's keyword, so tests can measure where the attention goes.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPLITS = ("train", "restval", "val", "test")
KINDS = ("visual", "textual")
_SYLLABLES = (
    "ba",
    "do",
    "ki",
    "lu",
    "me",
    "no",
    "pa",
    "ri",
    "so",
    "tu",
    "va",
    "ze",
    "mo",
    "fe",
    "gi",
    "ha",
    "ju",
    "ko",
    "la",
    "ni",
    "ro",
    "sa",
    "ti",
    "vu",
    "ya",
    "zo",
    "bel",
    "dor",
    "kam",
    "vin",
)
_FILLERS = (
    "a",
    "the",
    "an",
    "of",
    "on",
    "in",
    "with",
    "near",
    "next",
    "to",
    "by",
    "some",
    "two",
    "man",
    "woman",
    "people",
    "person",
    "child",
    "sitting",
    "standing",
    "holding",
    "looking",
    "table",
    "street",
    "room",
    "field",
    "water",
    "grass",
    "wall",
    "window",
    "road",
    "group",
    "small",
    "large",
    "white",
    "black",
    "red",
    "green",
    "blue",
    "old",
    "young",
    "big",
    "picture",
    "photo",
    "view",
    "front",
    "side",
    "top",
    "close",
    "shown",
    "there",
    "is",
)
# The cue words of `carrier="caption"`: neither fillers nor keywords.
_LOOK_CUES = ("pictured", "seen", "visible", "depicted", "photographed", "shows")
_TEXT_CUES = ("written", "labelled", "printed", "lettering", "reading", "says")
CARRIERS = ("concept", "caption")
_DISTRACTORS = (
    "people",
    "man",
    "woman",
    "table",
    "street",
    "room",
    "grass",
    "water",
    "wall",
    "window",
    "road",
    "indoor",
    "outdoor",
    "sky",
    "tree",
    "building",
    "car",
    "food",
    "plate",
    "dog",
    "cat",
    "horse",
    "bird",
    "chair",
    "floor",
    "light",
    "night",
    "city",
    "beach",
    "snow",
    "mountain",
    "kitchen",
    "bathroom",
    "bedroom",
    "furniture",
    "clothing",
    "shirt",
    "hat",
    "bag",
    "bottle",
    "cup",
    "glass",
    "wood",
    "metal",
    "stone",
    "red",
    "white",
    "black",
    "green",
    "blue",
    "small",
    "large",
    "old",
    "young",
    "sport",
    "ball",
    "train",
    "bus",
    "boat",
    "plane",
    "bicycle",
    "flower",
    "fruit",
    "pizza",
    "cake",
    "sign",
    "clock",
    "phone",
    "computer",
    "book",
    "desk",
    "lamp",
    "door",
    "fence",
    "field",
    "park",
    "river",
    "lake",
    "sand",
    "cloud",
    "sunset",
    "close up",
    "living room",
    "young adult",
    "dining table",
    "traffic light",
)


@dataclass(frozen=True)
class PlantedConfig:
    """The world's size; the defaults build, encode and prepare in a few seconds."""

    seed: int = 0
    concepts: int = 40
    images: tuple[int, int, int, int] = (800, 0, 200, 200)  # train, restval, val, test
    captions: int = 5
    regions: int = 8
    dim: int = 32
    clutter: int = 24
    noise: float = 0.35
    faint: float = 0.7  # strength of a faint look in a clutter region
    background: float = 0.7  # P(a clutter region shows a faint look)
    distractors: tuple[int, int] = (8, 16)
    filler_words: tuple[int, int] = (5, 9)
    # "concept": a concept's kind decides which modality carries it; "caption": each image's
    # does, and its captions say which with a cue word.
    carrier: str = "concept"

    def __post_init__(self) -> None:
        if self.carrier not in CARRIERS:
            raise ValueError(f"carrier must be one of {CARRIERS}, not {self.carrier!r}")


@dataclass(frozen=True)
class PlantedCoco:
    """The files written and the truth behind them."""

    config: PlantedConfig
    data_dir: Path  # <data_dir>/coco/keywords_coco.zip and, once encoded, coco/encoded
    features: Path  # (N, R, D) float16, rows in img_ids order
    feature_ids: Path
    names: tuple[str, ...]  # (C,) concept words
    kinds: np.ndarray  # (C,) 0 visual, 1 textual (carrier "concept")
    image_kinds: np.ndarray  # (N,) 0 the pixels carry the image's concept, 1 the keywords
    img_ids: np.ndarray  # (N,) Karpathy imgid, dataset.json order
    split: np.ndarray  # (N,) Karpathy split
    concept: np.ndarray  # (N,) what the image is about
    shown: np.ndarray  # (N,) the concept its pixels show
    named: np.ndarray  # (N,) the concept its keywords name
    concept_regions: np.ndarray  # (N, R) bool: regions showing `shown`
    captions: dict[int, int]  # sentid -> row of its image

    def visual(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows),) bool: the pixels carry the image's concept."""
        return self.image_kinds[rows] == 0

    def carrier_regions(self, row: int) -> np.ndarray:
        """(R,) bool: the regions that carry the image's own concept (none for a textual one)."""
        return self.concept_regions[row] & (self.shown[row] == self.concept[row])


def _names(rng: np.random.Generator, count: int) -> tuple[str, ...]:
    taken = set(_FILLERS) | set(_DISTRACTORS)
    names: list[str] = []
    while len(names) < count:
        word = "".join(_SYLLABLES[i] for i in rng.integers(len(_SYLLABLES), size=3))
        if word not in taken:
            taken.add(word)
            names.append(word)
    return tuple(names)


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _other(rng: np.random.Generator, pool: np.ndarray, avoid: int) -> int:
    """A member of `pool` other than `avoid`."""
    choice = int(pool[rng.integers(pool.size)])
    while choice == avoid:
        choice = int(pool[rng.integers(pool.size)])
    return choice


def build_world(folder: Path, config: PlantedConfig = PlantedConfig()) -> PlantedCoco:
    """Write `<folder>/coco/keywords_coco.zip` and the features, and return the truth."""
    rng = np.random.default_rng([config.seed, 2017])
    c, r, d = config.concepts, config.regions, config.dim
    names = _names(rng, c)
    kinds = rng.permutation(np.arange(c) % 2)
    looks = _unit(rng, c, d)
    clutter = _unit(rng, config.clutter, d)
    by_kind = [np.flatnonzero(kinds == k) for k in range(2)]

    split = np.repeat(np.array(SPLITS), config.images)
    n = split.size
    split = split[rng.permutation(n)]
    concept = np.empty(n, dtype=np.int64)
    for name in SPLITS:  # every split holds every concept about equally often
        rows = np.flatnonzero(split == name)
        concept[rows] = rng.permutation(np.arange(rows.size) % c)
    if config.carrier == "concept":
        image_kinds = kinds[concept]
        decoys = by_kind
    else:  # half of each concept's images in each split carry it in each modality
        image_kinds = np.empty(n, dtype=kinds.dtype)
        for name in SPLITS:
            for k in range(c):
                rows = np.flatnonzero((split == name) & (concept == k))
                image_kinds[rows] = rng.permutation(np.arange(rows.size) % 2)
        decoys = [np.arange(c), np.arange(c)]
    visual = image_kinds == 0
    shown = concept.copy()
    named = concept.copy()
    for i in range(n):
        if visual[i]:
            named[i] = _other(rng, decoys[0], concept[i])
        else:
            shown[i] = _other(rng, decoys[1], concept[i])

    # Pixels: 1 or 2 regions show `shown`, the rest is clutter, some with a faint look.
    width = 1 + (rng.random(n) < 0.5)
    regions = np.argsort(rng.random((n, r)), axis=1) < width[:, None]
    vectors = np.where(
        regions[..., None],
        looks[shown][:, None],
        clutter[rng.integers(config.clutter, size=(n, r))],
    )
    faint = (rng.random((n, r)) < config.background) & ~regions
    vectors = vectors + np.where(
        faint[..., None], config.faint * looks[rng.integers(c, size=(n, r))], 0
    )
    vectors = vectors + rng.standard_normal((n, r, d)) * (config.noise / np.sqrt(d))
    img_ids = np.arange(n, dtype=np.int64)
    out = Path(folder)
    (out / "coco").mkdir(parents=True, exist_ok=True)
    features, feature_ids = out / "features.npy", out / "feature_ids.npy"
    order = rng.permutation(n)  # the features' rows need not follow dataset.json
    np.save(features, vectors[order].astype(np.float16))
    np.save(feature_ids, img_ids[order])

    weights = 1.0 / np.arange(1, len(_DISTRACTORS) + 1)
    weights /= weights.sum()
    entries, members, captions = [], [], {}
    sentid = 0
    cocoids = rng.choice(600_000, size=n, replace=False) + 1
    for i in range(n):
        folder_name = "train2014" if split[i] == "train" else "val2014"
        filename = f"COCO_{folder_name}_{cocoids[i]:012d}.jpg"
        sentences = []
        for _ in range(config.captions):
            low, high = config.filler_words
            words = [
                _FILLERS[j] for j in rng.integers(len(_FILLERS), size=rng.integers(low, high + 1))
            ]
            words.insert(int(rng.integers(len(words) + 1)), names[concept[i]])
            if config.carrier == "caption":
                cues = _LOOK_CUES if visual[i] else _TEXT_CUES
                words.insert(int(rng.integers(len(words) + 1)), cues[rng.integers(len(cues))])
            raw = " ".join(words).capitalize() + "."
            sentences.append({"tokens": words, "raw": raw, "imgid": int(i), "sentid": sentid})
            captions[sentid] = i
            sentid += 1
        entries.append(
            {
                "filepath": folder_name,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": int(i),
                "split": str(split[i]),
                "sentences": sentences,
                "cocoid": int(cocoids[i]),
            }
        )
        low, high = config.distractors
        count = int(rng.integers(low, high + 1))
        tags = list(dict.fromkeys(rng.choice(len(_DISTRACTORS), size=count, p=weights).tolist()))
        keywords = [_DISTRACTORS[j] for j in tags]
        keywords.insert(int(rng.integers(len(keywords) + 1)), names[named[i]])
        record = {"tagging": {"keywords": keywords, "scores": [0.9] * len(keywords)}}
        member = f"keyword_{split[i]}/{filename.removesuffix('.jpg')}.json"
        members.append((member, json.dumps(record).encode()))
    dataset = json.dumps({"images": entries, "dataset": "coco"}).encode()
    with zipfile.ZipFile(out / "coco" / "keywords_coco.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("dataset.json", (2017, 3, 1, 0, 0, 0)), dataset)
        for member, data in members:
            archive.writestr(zipfile.ZipInfo(member, (2017, 3, 1, 0, 0, 0)), data)
    return PlantedCoco(
        config=config,
        data_dir=out,
        features=features,
        feature_ids=feature_ids,
        names=names,
        kinds=kinds,
        image_kinds=image_kinds,
        img_ids=img_ids,
        split=split,
        concept=concept,
        shown=shown,
        named=named,
        concept_regions=regions,
        captions=captions,
    )


def prepare_world(
    folder: Path, config: PlantedConfig = PlantedConfig(), *, fold_size: int | None = None
) -> tuple[PlantedCoco, Path]:
    """Build the world in `folder`, then `encode coco` and `prepare coco` it for real; returns
    the world and the prepared folder."""
    from amc_data import EncodeConfig, encode, prepare_coco
    from amc_data.prepare.coco import CocoConfig

    world = build_world(folder, config)
    encode("coco", data_dir=world.data_dir, config=EncodeConfig(jobs=1, min_df=2))
    test = int(config.images[3])
    result = prepare_coco(
        world.features,
        world.feature_ids,
        folder / "prepared",
        data_dir=world.data_dir,
        config=CocoConfig(
            fold_size=fold_size or test, min_query_count=1, captions_per_image=config.captions
        ),
    )
    return world, result.out
