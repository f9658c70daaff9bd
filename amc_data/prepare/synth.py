"""`synth`: a small prepared dataset with a planted structure that a ranking model must exploit.

The generative story (every random choice comes from one numpy generator seeded by `seed`):

- Concepts. `concepts` words that name both a thing one can picture and a brand, as "jaguar"
  does ("puma", "shell", "falcon", ...). Each concept has a *look*: a random unit direction in
  the `dim`-dimensional feature space.
- Pixels. An image has `regions` feature vectors. It *shows* one concept, in 1 or 2 of its
  regions (the look plus noise); every other region is clutter (one of `clutter` random
  directions plus noise), and half of those also carry a faint look (strength `faint`) of some
  other concept, so the pixels are never silent about concepts.
- Tags. An image's keywords are 12-28 distractors (ordinary words and phrases drawn with Zipf
  weights, some stop words) and the name of the one concept it is *labelled* with, once
  (sometimes capitalised), in random order. The labelled concept is drawn independently of the
  shown one. A few images (`no_keywords`) have no keywords at all.
- Queries. A query names a concept and says its intent with one or two words: visual-intent
  words ask how the thing looks ("shape", "colour", "pattern", "texture", ...: "falcon
  silhouette"), textual-intent words ask whose it is ("brand", "store", "official", ...:
  "falcon official dealer"). Half the queries also carry a word both intents use ("photo",
  "poster", ...). `queries.parquet` records the `intent` (`visual` or `textual`).
- Relevance. A visual-intent query wants the images that *show* its concept; a textual-intent
  query wants the images *labelled* with it. So the same concept word needs the pixels for one
  intent and the tags for the other, and every image is a *decoy* for some queries: it shows one
  concept (a decoy for that concept's textual queries) and is labelled with another (a decoy for
  that one's visual queries).
- Splits. Queries are split train/val/test 60/20/20, and images 70/15/15, so that validation
  and test rank images that training never saw (the query texts repeat across splits: a concept
  and its intent words are what is learned). A train query has `train_positives` true matches
  among the train images (label 1). A val/test query is ranked over its `candidates` images of
  its split: up to `true_candidates` true matches (label 3), up to `decoy_candidates` decoys
  (label 0), and random other images (label 0).

What this plants: one modality alone is right for one intent and ranks the other intent's decoys
first, and a model that adds the two modalities with fixed weights mixes the decoys in, so the
weight of each modality must follow the query's intent. A concept fills 1 or 2 of the `regions`
regions and one of about 20 keywords, so mean pooling dilutes it and attention within a modality
recovers it.

A several-concept world (`shown`, `labelled` or `query_concepts` above 1; a random stream of
its own, so the one-concept world keeps its bytes):

- Each image shows `shown` distinct concepts, each in 1 or 2 regions of its own, and is labelled
  with `labelled` distinct concepts, drawn independently of the shown ones (so an image is a
  wrong-modality decoy for most of the concepts it carries); faint looks fall only on concepts
  it does not show.
- A query is written from one image of its split (its *anchor*, kept in `queries["anchor"]`):
  an intent (visual or textual, dealt evenly; `both` with P `both_intents`, from an image that
  shows a concept it is also labelled with), then 1 to `query_concepts` of the concepts the
  anchor carries in every modality the intent asks for, in random order among the intent words.
  A query's words are a bag, which cannot say which concept an intent word belongs to, so the
  intent applies to every concept it names; a `both` query wants each concept shown and named.
- Relevance is a click's: a val/test query's one relevant image (label 3) is its anchor; its
  candidates are the anchor, up to `decoy_candidates` images carrying every named concept but
  not all in the asked modality, and random others. With `candidates` at least the val and
  test splits' sizes (and at least as many val and test queries as images: each image anchors
  one), each query is ranked over its whole split instead, as COCO's captions
  are (prepared.json says `candidates: split`; the judgments hold the anchors alone), which
  `eval` and validation score as one pool. Other images that carry every named concept in the
  asked modality are indistinguishable from the anchor by anything the query says: their ties
  set the ceiling (`SynthWorld.ceiling`). A train query's positives (label 1) are the anchor
  and other train images that carry what it names, up to `train_positives`.

The truth is written beside the folder as a concepts file, `<out>.concepts.parquet`
(`concepts_frame`): which concepts (by name) each query names in which modality with its
ceiling, and which regions and keywords of each image carry which concepts.

The keywords take the real path: a keyword archive and list in the authors' Clickture layout are
written to a work folder and encoded by `amc_data.encode`; the result goes into the prepared
folder with the features, queries and judgments (`write_prepared`). The folder's bytes depend on
the settings alone (prepared.json records no creation time).

Memory. The (N, R, D) feature tensor is never whole in memory: its rows are drawn and written a
chunk at a time, straight into `features.npy` in a work folder beside the output, which is then
linked into the prepared folder. The random stream does not depend on the chunk size (rows are
drawn in order, and numpy's normal draws of k rows then m rows are those of k + m rows), so the
bytes are the same at any chunk size. What stays in memory is the world's truth, a few values
per image and region.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse

from ..checks import default_of
from ..errors import AmcDataError, ConfigError, OutputFolderError
from ..files import atomic_write, atomic_write_json
from ..machine import available_memory
from .common import PrepareResult
from .format import SPLITS
from .queries import fit_query_vocabulary
from .synth_config import CHUNK_BYTES, CONCEPTS, SynthConfig
from .writer import FeatureRows, check_output_folder, write_prepared

log = logging.getLogger(__name__)

__all__ = [
    "SynthConfig",
    "SynthWorld",
    "concepts_frame",
    "concepts_path",
    "generate_world",
    "synth",
    "write_concepts",
]

# What the rest of a query says about its intent: how the thing looks, or who makes it.
VISUAL_WORDS = ("shape", "colour", "pattern", "texture", "outline", "silhouette", "closeup")
TEXTUAL_WORDS = ("brand", "company", "store", "label", "official", "dealer", "trademark")
# Words that queries of both intents add, so they say nothing about the intent.
FILLERS = ("photo", "picture", "poster", "wallpaper", "print", "sticker", "design", "image")
# Distractor keywords, as an auto-tagger writes them: ordinary words and phrases, a few
# capitalised, a few stop words (dropped by the analyzer). Drawn with Zipf weights.
DISTRACTORS = (
    "people",
    "woman",
    "man",
    "child",
    "portrait",
    "smiling",
    "person",
    "young adult",
    "adult",
    "interior",
    "kitchen",
    "bathroom",
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
    "text",
    "illustration",
    "drawing",
    "cartoon",
    "vector",
    "marble",
    "velvet",
    "background",
    "close up",
    "modern",
    "vintage",
    "luxury",
    "small",
    "large",
    "new",
    "old",
    "home decor",
    "business",
    "office",
    "computer",
    "phone",
    "technology",
    "travel",
    "holiday",
    "summer",
    "winter",
    "autumn",
    "spring",
    "park",
    "lake",
    "river",
    "forest",
    "field",
    "farm",
    "house",
    "garage",
    "shop",
    "market",
    "restaurant",
    "hotel",
    "airport",
    "train",
    "bus",
    "bicycle",
    "boat",
    "ship",
    "plane",
    "sport",
    "football",
    "tennis",
    "music",
    "guitar",
    "piano",
    "book",
    "paper",
    "pen",
    "desk",
    "bag",
    "bottle",
    "glass",
    "cup",
    "wine",
    "beer",
    "bread",
    "cheese",
    "salad",
    "soup",
    "pizza",
    "rice",
    "meat",
    "fish",
    "chicken",
    "egg",
    "pear",
    "banana",
    "lemon",
    "tomato",
    "potato",
    "carrot",
    "sugar",
    "salt",
    "family",
    "friends",
    "wedding",
    "party",
    "birthday",
    "baby",
    "girl",
    "boy",
    "team",
    "group",
    "crowd",
    "face",
    "hand",
    "eye",
    "hair",
    "smile",
    "happy",
    "sad",
    "beautiful",
    "cute",
    "funny",
    "dark",
    "bright",
    "colorful",
    "abstract",
    "art",
    "painting",
    "photography",
    "studio",
    "light",
    "shadow",
    "reflection",
    "view",
    "landscape",
    "cityscape",
    "skyline",
    "tower",
    "church",
    "castle",
    "museum",
    "statue",
    "monument",
    "road trip",
    "sunny day",
    "cloudy",
    "rain",
    "storm",
    "wood",
    "metal",
    "stone",
    "brick",
    "concrete",
    "plastic",
    "leather",
    "cotton",
    "silk",
    "Paris",
    "London",
    "New York",
    "USA",
    "TV",
    "the",
    "and",
    "of",
    "in the kitchen",
)

INTENTS = ("visual", "textual")
_QUERY_SHARES = (0.6, 0.2, 0.2)
_IMAGE_SHARES = (0.7, 0.15, 0.15)
_DATE_TIME = (2017, 3, 1, 12, 0, 0)  # fixed zip entry time: the same seed gives the same bytes
_CHUNK_BYTES = CHUNK_BYTES  # one float64 buffer of a chunk of feature rows (a chunk uses four)


@dataclass(frozen=True)
class SynthWorld:
    """Everything `synth` decided, including the hidden truth that the files only imply."""

    config: SynthConfig
    looks: np.ndarray  # (C, D) float64 unit vectors: each concept's look
    names: tuple[str, ...]  # (C,) each concept's name
    img_ids: np.ndarray  # (N,) int64, in list order
    image_split: np.ndarray  # (N,) str
    shown: np.ndarray  # (N,) a concept that the image's pixels show (the first of `shows`)
    named: np.ndarray  # (N,) a concept that the image's tags name; -1: the image has no keywords
    regions: np.ndarray  # (N, R) bool: the region shows a concept of the image (else clutter)
    features: np.ndarray  # (N, R, D) float16, rows in img_ids order (a read-only memmap when
    # generate_world was given a file)
    keywords: tuple[tuple[str, ...], ...]  # (N,) each image's keyword list, as the tagger wrote it
    queries: pd.DataFrame  # query_id, query, split, intent, concept (index into names); in a
    # several-concept world `concepts` (a tuple of indices) and `anchor` (the row it was
    # written from) instead of `concept`, and the intent may be `both`
    judgments: pd.DataFrame  # query_id, img_id, label
    shows: np.ndarray = field(default_factory=lambda: np.empty((0, 1), np.int64))  # (N, S)
    labels: np.ndarray = field(default_factory=lambda: np.empty((0, 1), np.int64))  # (N, L); -1
    # rows: no keywords
    region_concept: np.ndarray = field(  # (N, R) the concept a region shows, -1 clutter
        default_factory=lambda: np.empty((0, 0), np.int64)
    )

    def relevant(self, concept: int, intent: str) -> np.ndarray:
        """(N,) bool: the images a query for `concept` with `intent` is about (one-concept
        worlds: every such image is a true match)."""
        return self.satisfies((concept,), intent)

    def decoys(self, concept: int, intent: str) -> np.ndarray:
        """(N,) bool: the images that match the query in the other modality only."""
        other = "textual" if intent == "visual" else "visual"
        return self.relevant(concept, other) & ~self.relevant(concept, intent)

    def satisfies(self, concepts: Sequence[int], intent: str) -> np.ndarray:
        """(N,) bool: the images that carry every one of `concepts` in every modality `intent`
        asks for (`visual`: shown, `textual`: named, `both`: both)."""
        ok = np.ones(self.img_ids.size, dtype=bool)
        for concept in concepts:
            if intent in ("visual", "both"):
                ok &= (self.shows == concept).any(axis=1)
            if intent in ("textual", "both"):
                ok &= (self.labels == concept).any(axis=1)
        return ok

    def carries_any_way(self, concepts: Sequence[int]) -> np.ndarray:
        """(N,) bool: the images that carry every one of `concepts`, shown or named."""
        ok = np.ones(self.img_ids.size, dtype=bool)
        for concept in concepts:
            ok &= (self.shows == concept).any(axis=1) | (self.labels == concept).any(axis=1)
        return ok

    def query_concepts(self) -> list[tuple[tuple[int, ...], str]]:
        """Each query's (concepts it names, intent), in the order of `queries`."""
        if "concepts" in self.queries:
            pairs = zip(self.queries["concepts"], self.queries["intent"], strict=True)
            return [(tuple(int(c) for c in cs), str(i)) for cs, i in pairs]
        pairs = zip(self.queries["concept"], self.queries["intent"], strict=True)
        return [((int(c),), str(i)) for c, i in pairs]

    @property
    def ranks_whole_split(self) -> bool:
        """Whether each val/test query is ranked over every image of its split, as COCO's are
        (a several-concept world whose `candidates` reach the val and test splits' sizes, with
        queries enough to anchor every val and test image):
        prepared.json then says `candidates: split` and the judgments hold the relevant images
        alone."""
        if not self.config.several:
            return False
        for split in ("val", "test"):
            images = self.image_split == split
            anchored = self.queries.loc[self.queries["split"] == split, "anchor"]
            if self.config.candidates < images.sum() or set(anchored) != set(
                np.flatnonzero(images).tolist()
            ):
                return False
        return True

    def ceiling(self, split: str = "test") -> dict[str, Any]:
        """The best expected NDCG@10 of any scorer on `split` (`ndcg@10`: the mean over its
        queries; `per_query`: query_id -> value), computed from the truth: nothing in a query
        tells apart the candidates that carry every concept it names in the modalities it asks
        for, so a scorer can do no better than rank them first in any order (ties averaged, as
        `amc-data eval` does). One-concept worlds judge every such candidate a true match (a
        ceiling of 1); several-concept worlds only the query's own image."""
        per_query = _ceilings(self, split)
        values = list(per_query.values())
        return {
            "ndcg@10": float(np.mean(values)) if values else float("nan"),
            "per_query": per_query,
        }


def _ceilings(world: SynthWorld, split: str) -> dict[int, float]:
    """query_id -> the best expected NDCG@10 over its candidates (see `SynthWorld.ceiling`)."""
    row_of = {int(i): r for r, i in enumerate(world.img_ids.tolist())}
    judged = world.judgments.groupby("query_id")
    discounts = 1.0 / np.log2(np.arange(2, 12))
    out: dict[int, float] = {}
    named = dict(zip(world.queries["query_id"].tolist(), world.query_concepts(), strict=True))
    in_split = world.image_split == split
    whole = world.ranks_whole_split
    for query_id in world.queries.loc[world.queries["split"] == split, "query_id"].tolist():
        group = judged.get_group(query_id)
        concepts, intent = named[query_id]
        if whole:
            tied = int((world.satisfies(concepts, intent) & in_split).sum())
        else:
            rows = np.array([row_of[i] for i in group["img_id"].tolist()], dtype=np.int64)
            tied = int(world.satisfies(concepts, intent)[rows].sum())
        relevant = int((group["label"] > 0).sum())
        if relevant == 0:
            continue
        # `relevant` of the `tied` candidates hold the gain; the ideal puts them first.
        best = relevant / tied * discounts[: min(tied, 10)].sum()
        out[int(query_id)] = float(best / discounts[: min(relevant, 10)].sum())
    return out


# -- the world -----------------------------------------------------------------------------------
def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((n, dim))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _split_labels(rng: np.random.Generator, n: int, shares: Sequence[float]) -> np.ndarray:
    """`n` split names in the given shares (rounded, every split at least one), shuffled."""
    counts = [max(1, round(share * n)) for share in shares[1:]]
    counts.insert(0, n - sum(counts))
    labels = np.repeat(np.array(SPLITS, dtype=object), counts)
    return labels[rng.permutation(n)].astype(str)


def _deal(rng: np.random.Generator, groups: np.ndarray, k: int) -> np.ndarray:
    """One of `k` values per item, dealt round-robin within each group and shuffled, so every
    group sees every value about equally often."""
    values = np.empty(groups.size, dtype=np.int64)
    for group in np.unique(groups):
        rows = np.flatnonzero(groups == group)
        values[rows] = rng.permutation(np.arange(rows.size) % k)
    return values


@dataclass(frozen=True)
class _Pixels:
    """What decides each region's feature vector, apart from its noise."""

    config: SynthConfig
    looks: np.ndarray  # (C, D)
    clutter: np.ndarray  # (K, D)
    shown: np.ndarray  # (N,)
    regions: np.ndarray  # (N, R) bool: shows the image's concept
    directions: np.ndarray  # (N, R) the clutter direction of each region
    faint: np.ndarray  # (N, R) bool: a clutter region that also shows a faint look
    others: np.ndarray  # (N, R) the concept of that faint look
    region_concept: np.ndarray | None = None  # (N, R) several-concept worlds: each region's

    # concept (-1 clutter); else every shown region shows `shown`

    def chunks(self, rng: np.random.Generator, rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, float16 rows) a chunk of `rows` at a time, drawing each chunk's noise
        from `rng` in row order. Every operation is elementwise, so a chunk's values are those
        the whole tensor would have."""
        config, n, d = self.config, self.shown.size, self.looks.shape[1]
        for start in range(0, n, rows):
            part = slice(start, min(n, start + rows))
            if self.region_concept is None:
                shown_looks = self.looks[self.shown[part]][:, None, :]
            else:
                shown_looks = self.looks[np.maximum(self.region_concept[part], 0)]
            vectors = np.where(  # (B, R, D)
                self.regions[part][..., None], shown_looks, self.clutter[self.directions[part]]
            )
            # In place, to keep a chunk to a few buffers; the same values as `a + b` and
            # `a * s` (IEEE addition is commutative).
            vectors += np.where(
                self.faint[part][..., None], config.faint * self.looks[self.others[part]], 0.0
            )
            noise = rng.standard_normal(vectors.shape)
            noise *= config.noise / np.sqrt(d)
            noise += vectors
            yield start, noise.astype(np.float16)


def _write_npy(
    path: Path, shape: tuple[int, ...], chunks: Iterator[tuple[int, np.ndarray]]
) -> np.ndarray:
    """Write float16 `chunks` (in row order) as the `.npy` file `path`; return it mapped
    read-only. The rows go through ordinary file writes, not a writable mapping: written pages
    of a mapping count in the process's resident memory until it is closed, so the peak would
    grow with the file."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=shape)
    offset = header.offset  # the same header as any .npy of this dtype and shape
    del header
    with open(path, "r+b") as file:
        file.seek(offset)
        for _, chunk in chunks:
            file.write(np.ascontiguousarray(chunk).data)
    return np.load(path, mmap_mode="r")


def _gib(size: int) -> str:
    """A size for a message: GiB with a decimal, MiB below one GiB."""
    return f"{size / 2**30:,.1f} GiB" if size >= 2**30 else f"{size / 2**20:,.0f} MiB"


def check_synth_fits(
    config: SynthConfig, out: Path | None = None, *, features_in_memory: bool = False
) -> None:
    """ConfigError, before anything is allocated, when `config` needs more memory than the
    machine has available (with `features_in_memory`, the features too), or more disk than
    there is free where `out` goes; the message names the settings, the estimate and what there
    is. Either check is skipped where the machine does not say."""
    sizes = f"images ({config.images:,}) x regions ({config.regions:,})"
    need = config.memory_estimate()
    if features_in_memory:
        need += config.images * config.regions * config.dim * 2
    if features_in_memory or config.regions * config.dim * 8 > CHUNK_BYTES:
        sizes += f" x dim ({config.dim:,})"  # rows that big count too
    have = available_memory()
    if have is not None and need > have:
        raise ConfigError(
            f"{sizes} need about {_gib(need)} of memory; this machine has "
            f"{_gib(have)} available. Choose fewer images, regions or dimensions.",
            parameter="images",
        )
    if out is None:
        return
    existing = next(folder for folder in (out, *out.parents) if folder.exists())
    need = config.disk_estimate()
    have = shutil.disk_usage(existing).free
    if need > have:
        raise ConfigError(
            f"images ({config.images:,}) x regions ({config.regions:,}) x dim "
            f"({config.dim:,}) need about {_gib(need)} of disk; {existing} has {_gib(have)} "
            "free. Choose fewer images, regions or dimensions, or an OUT on a disk with room.",
            parameter="images",
        )


def generate_world(
    config: SynthConfig,
    features_path: str | os.PathLike[str] | None = None,
    *,
    chunk_rows: int | None = None,
) -> SynthWorld:
    """Draw the whole synthetic world for `config`. The features are drawn `chunk_rows` rows at
    a time (by default, chunks of about 8 MB of float64) and held in memory, or, with
    `features_path`, written there as a `.npy` file and mapped read-only; either way they are the
    same values at any `chunk_rows`. Settings that cannot fit in memory are refused before
    anything is drawn (`check_synth_fits`)."""
    check_synth_fits(config, features_in_memory=features_path is None)
    if config.several:
        return _several_world(config, features_path, chunk_rows)
    rng = np.random.default_rng([config.seed, 7])
    c, n, r, d = config.concepts, config.images, config.regions, config.dim
    names = tuple(CONCEPTS[i] for i in np.sort(rng.permutation(len(CONCEPTS))[:c]))
    looks = _unit(rng, c, d)
    clutter = _unit(rng, config.clutter, d)

    # Image ids as a list file gives them: distinct, not sorted, up to 8 digits.
    img_ids = rng.choice(10 * n + 100_000, size=n, replace=False).astype(np.int64) + 1
    image_split = _split_labels(rng, n, _IMAGE_SHARES)
    shown = _deal(rng, image_split, c)
    named = _deal(rng, image_split, c)
    no_keywords = rng.random(n) < config.no_keywords
    named[no_keywords] = -1

    # Pixels: clutter everywhere except 1 or 2 regions that show the concept; then noise.
    directions = rng.integers(config.clutter, size=(n, r))
    width = 1 + (rng.random(n) < 0.5)
    regions = np.argsort(rng.random((n, r)), axis=1) < width[:, None]
    # Some clutter regions also show a faint look of another concept: the visual modality is
    # never silent about concepts, whatever the query asks for.
    faint = (rng.random((n, r)) < config.background) & ~regions
    others = (shown[:, None] + rng.integers(1, c, size=(n, r))) % c  # never the shown concept
    pixels = _Pixels(config, looks, clutter, shown, regions, directions, faint, others)
    # Every chunk's noise is drawn here, before the tags: the stream goes on from its end.
    features = _draw_features(pixels, rng, (n, r, d), chunk_rows, features_path)

    keywords = _tags(rng, config, names, named, no_keywords)
    queries = _queries(rng, config, names)
    world = SynthWorld(
        config=config,
        looks=looks,
        names=names,
        img_ids=img_ids,
        image_split=image_split,
        shown=shown,
        named=named,
        regions=regions,
        features=features,
        keywords=keywords,
        queries=queries,
        judgments=pd.DataFrame(),
        shows=shown[:, None],
        labels=named[:, None],
        region_concept=np.where(regions, shown[:, None], -1),
    )
    return dataclasses.replace(world, judgments=_judgments(rng, world))


# -- a several-concept world --------------------------------------------------------------------
def _draw_features(
    pixels: _Pixels,
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    chunk_rows: int | None,
    features_path: str | os.PathLike[str] | None,
) -> np.ndarray:
    """Every image's region features, drawn a chunk at a time: in memory, or written to
    `features_path` (and memory-mapped) when given."""
    _, r, d = shape
    step = chunk_rows or max(1, _CHUNK_BYTES // (r * d * 8))
    if features_path is None:
        features = np.empty(shape, dtype=np.float16)
        for start, chunk in pixels.chunks(rng, step):
            features[start : start + chunk.shape[0]] = chunk
        return features
    return _write_npy(Path(features_path), shape, pixels.chunks(rng, step))


def _deal_several(rng: np.random.Generator, groups: np.ndarray, k: int, per: int) -> np.ndarray:
    """(N, per) distinct values of `k` per item, each column dealt as `_deal` does (every group
    sees every value about equally often), repeats within an item redrawn."""
    values = np.stack([_deal(rng, groups, k) for _ in range(per)], axis=1)
    for i in np.flatnonzero([len(set(row)) < per for row in values.tolist()]).tolist():
        while len(set(values[i].tolist())) < per:
            values[i, int(rng.integers(per))] = int(rng.integers(k))
    return values


# long: one seeded story, told in order so that a seed always builds the same world
def _several_world(
    config: SynthConfig, features_path: str | os.PathLike[str] | None, chunk_rows: int | None
) -> SynthWorld:
    """`generate_world` for a several-concept world: each image shows `shown` concepts (each in
    1 or 2 regions) and is labelled with `labelled` (drawn independently, so an image often
    shows concepts it is not labelled with and the reverse); each query is written from one
    image of its split and names 1 to `query_concepts` of its concepts."""
    rng = np.random.default_rng([config.seed, 7, 2])  # not the one-concept world's stream
    c, n, r, d = config.concepts, config.images, config.regions, config.dim
    names = tuple(CONCEPTS[i] for i in np.sort(rng.permutation(len(CONCEPTS))[:c]))
    looks = _unit(rng, c, d)
    clutter = _unit(rng, config.clutter, d)
    img_ids = rng.choice(10 * n + 100_000, size=n, replace=False).astype(np.int64) + 1
    image_split = _split_labels(rng, n, _IMAGE_SHARES)
    shows = _deal_several(rng, image_split, c, config.shown)
    labels = _deal_several(rng, image_split, c, config.labelled)
    no_keywords = rng.random(n) < config.no_keywords
    labels[no_keywords] = -1

    # Pixels: each shown concept in 1 or 2 regions of its own, clutter elsewhere, and faint
    # looks of concepts the image does not show on some clutter regions.
    directions = rng.integers(config.clutter, size=(n, r))
    widths = 1 + (rng.random((n, config.shown)) < 0.5)
    order = np.argsort(rng.random((n, r)), axis=1)
    region_concept = np.full((n, r), -1, dtype=np.int64)
    ends = np.cumsum(widths, axis=1)
    for j in range(config.shown):
        start = ends[:, j] - widths[:, j]
        for offset in range(2):
            take = offset < widths[:, j]
            region_concept[np.flatnonzero(take), order[take, start[take] + offset]] = shows[take, j]
    regions = region_concept >= 0
    faint = (rng.random((n, r)) < config.background) & ~regions
    others = rng.integers(c, size=(n, r))
    for _ in range(8):  # redraw faint looks that fell on a shown concept (almost never left)
        clash = (others[..., None] == shows[:, None, :]).any(-1)
        others[clash] = rng.integers(c, size=int(clash.sum()))
    faint &= ~(others[..., None] == shows[:, None, :]).any(-1)
    pixels = _Pixels(
        config, looks, clutter, shows[:, 0], regions, directions, faint, others, region_concept
    )
    # Every chunk's noise is drawn here, before the tags: the stream goes on from its end.
    features = _draw_features(pixels, rng, (n, r, d), chunk_rows, features_path)

    keywords = _tags_several(rng, config, names, labels)
    world = SynthWorld(
        config=config,
        looks=looks,
        names=names,
        img_ids=img_ids,
        image_split=image_split,
        shown=shows[:, 0],
        named=labels[:, 0],
        regions=regions,
        features=features,
        keywords=keywords,
        queries=pd.DataFrame(),
        judgments=pd.DataFrame(),
        shows=shows,
        labels=labels,
        region_concept=region_concept,
    )
    world = dataclasses.replace(world, queries=_queries_several(rng, world))
    return dataclasses.replace(world, judgments=_judgments_several(rng, world))


def _tags_several(
    rng: np.random.Generator, config: SynthConfig, names: tuple[str, ...], labels: np.ndarray
) -> tuple[tuple[str, ...], ...]:
    """Each image's keyword list: Zipf-weighted distractors and the name of every concept it is
    labelled with, once each (sometimes capitalised), in random order."""
    weights = 1.0 / np.arange(1, len(DISTRACTORS) + 1) ** 1.05
    cdf = np.cumsum(weights) / weights.sum()
    order = rng.permutation(len(DISTRACTORS))
    low, high = config.distractors
    keywords: list[tuple[str, ...]] = []
    for row in labels.tolist():
        if row[0] < 0:
            keywords.append(())
            continue
        count = int(rng.integers(low, high + 1))
        picks = np.minimum(np.searchsorted(cdf, rng.random(count), side="right"), cdf.size - 1)
        tags = [DISTRACTORS[order[p]] for p in picks.tolist()]
        for concept in row:
            name = names[concept]
            tags.append(name.capitalize() if rng.random() < 0.3 else name)
        keywords.append(tuple(tags[j] for j in rng.permutation(len(tags))))
    return tuple(keywords)


def _query_text(rng: np.random.Generator, parts: list[str]) -> str:
    """The words in random order, sometimes with a filler word."""
    words = [parts[i] for i in rng.permutation(len(parts))]
    if rng.random() < 0.5:
        words.insert(int(rng.integers(len(words) + 1)), FILLERS[int(rng.integers(len(FILLERS)))])
    return " ".join(words)


def _intent_words(rng: np.random.Generator, config: SynthConfig, intent: str) -> list[str]:
    """One or two words for each modality the intent asks for."""
    words: list[str] = []
    for kind, vocabulary in (("visual", VISUAL_WORDS), ("textual", TEXTUAL_WORDS)):
        if intent in (kind, "both"):
            count = 1 + int(rng.random() < config.two_intent_words)
            words += [vocabulary[i] for i in rng.permutation(len(vocabulary))[:count]]
    return words


def _queries_several(rng: np.random.Generator, world: SynthWorld) -> pd.DataFrame:
    """Queries of a several-concept world, each written from one image of its split (its
    anchor): an intent (visual and textual dealt evenly, `both` with P `both_intents` where the
    split has images that show a concept they are labelled with), then 1 to `query_concepts` of
    the concepts the anchor carries in every modality the intent asks for. A bag of words cannot
    say which concept an intent word belongs to, so a query's intent applies to all its
    concepts.

    Where `candidates` reach a val or test split's size, that split is ranked whole (as COCO's
    captions are), and its first queries anchor each of its images once (in random order; an
    intent the image cannot serve falls back to visual), so that every image has a query: the
    pool's image-to-text ranks need one. `both` queries are fewer there when few images show a
    concept they are labelled with."""
    config = world.config
    n = config.queries
    split = _split_labels(rng, n, _QUERY_SHARES)
    kind = np.array(INTENTS)[_deal(rng, split, 2)].astype(object)
    kind[rng.random(n) < config.both_intents] = "both"
    overlap = (world.shows[:, :, None] == world.labels[:, None, :]).any((1, 2))
    has_keywords = world.labels[:, 0] >= 0
    serves = {"visual": np.ones_like(overlap), "textual": has_keywords, "both": overlap}
    cover = {
        name: rng.permutation(rows).tolist()
        for name in ("val", "test")
        for rows in [np.flatnonzero(world.image_split == name)]
        if config.candidates >= rows.size
    }
    texts, concepts, anchors, intents = [], [], [], []
    for query_split, intent in zip(split.tolist(), kind.tolist(), strict=True):
        in_split = world.image_split == query_split
        if cover.get(query_split):
            anchor = int(cover[query_split].pop())
            if not serves[intent][anchor]:
                intent = "visual"
        else:
            if intent == "both" and not (in_split & overlap).any():
                intent = INTENTS[int(rng.integers(2))]
            anchor = int(rng.choice(np.flatnonzero(in_split & serves[intent])))
        shows, labels = set(world.shows[anchor].tolist()), set(world.labels[anchor].tolist())
        carried = {"visual": shows, "textual": labels, "both": shows & labels}[intent]
        held = sorted(carried - {-1})
        count = int(rng.integers(1, min(config.query_concepts, len(held)) + 1))
        chosen = sorted(int(held[i]) for i in rng.permutation(len(held))[:count])
        parts = [world.names[c] for c in chosen] + _intent_words(rng, config, intent)
        texts.append(_query_text(rng, parts))
        concepts.append(tuple(chosen))
        anchors.append(anchor)
        intents.append(intent)
    return pd.DataFrame(
        {
            "query_id": np.arange(1, n + 1, dtype=np.int64),
            "query": texts,
            "split": split,
            "intent": intents,
            "concepts": concepts,
            "anchor": np.array(anchors, dtype=np.int64),
        }
    )


def _judgments_several(rng: np.random.Generator, world: SynthWorld) -> pd.DataFrame:
    """Train: the anchor and other train images that satisfy the query, up to
    `train_positives` (label 1). Val/test: the anchor (3, the only relevant image: the image
    the query was written from), up to `decoy_candidates` decoys (images carrying every named
    concept, some only in the other modality) and random others (0; those that satisfy the
    query too are the ties that keep the ceiling below 1)."""
    config = world.config
    whole = world.ranks_whole_split
    query_ids, img_ids, labels = [], [], []
    for query_id, split, intent, concepts, anchor in world.queries[
        ["query_id", "split", "intent", "concepts", "anchor"]
    ].itertuples(index=False):
        pool = world.image_split == split
        fits = pool & world.satisfies(concepts, intent)
        fits[anchor] = False
        if split == "train":
            others = np.flatnonzero(fits)
            extra = rng.choice(
                others, size=min(config.train_positives - 1, others.size), replace=False
            )
            rows = np.sort(np.concatenate([[anchor], extra]).astype(np.int64))
            grades = np.ones(rows.size, dtype=np.int32)
        elif whole:
            rows = np.array([anchor], dtype=np.int64)  # the rest of the split: label 0
            grades = np.full(1, 3, dtype=np.int32)
        else:
            decoy_pool = np.flatnonzero(
                pool & world.carries_any_way(concepts) & ~world.satisfies(concepts, intent)
            )
            decoys = rng.choice(
                decoy_pool, size=min(config.decoy_candidates, decoy_pool.size), replace=False
            )
            rest_pool = pool.copy()
            rest_pool[decoys] = False
            rest_pool[anchor] = False
            rest_pool = np.flatnonzero(rest_pool)
            size = min(config.candidates - 1 - decoys.size, rest_pool.size)
            rest = rng.choice(rest_pool, size=max(size, 0), replace=False)
            rows = np.concatenate([[anchor], decoys, rest]).astype(np.int64)
            grades = np.zeros(rows.size, dtype=np.int32)
            grades[0] = 3
            order = np.argsort(rows, kind="stable")
            rows, grades = rows[order], grades[order]
        query_ids.append(np.full(rows.size, query_id, dtype=np.int64))
        img_ids.append(world.img_ids[rows])
        labels.append(grades)
    return _judgment_frame(query_ids, img_ids, labels)


def _tags(
    rng: np.random.Generator,
    config: SynthConfig,
    names: tuple[str, ...],
    named: np.ndarray,
    no_keywords: np.ndarray,
) -> tuple[tuple[str, ...], ...]:
    """Each image's keyword list, as the tagger wrote it."""
    # Distractors drawn with Zipf weights, and the named concept once (sometimes
    # capitalised), in random order.
    weights = 1.0 / np.arange(1, len(DISTRACTORS) + 1) ** 1.05
    cdf = np.cumsum(weights) / weights.sum()
    order = rng.permutation(len(DISTRACTORS))
    low, high = config.distractors
    n = named.size
    counts = rng.integers(low, high + 1, size=n)
    capital = rng.random(n) < 0.3
    keywords: list[tuple[str, ...]] = []
    for i in range(n):
        picks = np.minimum(np.searchsorted(cdf, rng.random(counts[i]), side="right"), cdf.size - 1)
        if no_keywords[i]:
            keywords.append(())
            continue
        tags = [DISTRACTORS[order[p]] for p in picks]
        name = names[named[i]]
        tags.append(name.capitalize() if capital[i] else name)
        keywords.append(tuple(tags[j] for j in rng.permutation(len(tags))))
    return tuple(keywords)


def _queries(rng: np.random.Generator, config: SynthConfig, names: tuple[str, ...]) -> pd.DataFrame:
    """Queries: a concept's name and a word that says the intent, sometimes a filler word;
    intents and concepts dealt evenly within each split."""
    n = config.queries
    split = _split_labels(rng, n, _QUERY_SHARES)
    kind = _deal(rng, split, 2)
    concept = _deal(rng, np.char.add(split, kind.astype(str)), config.concepts)
    texts = []
    for k, c in zip(kind.tolist(), concept.tolist(), strict=True):
        words = (VISUAL_WORDS, TEXTUAL_WORDS)[k]
        # One or two intent words: how strongly the words say the intent varies, as it does in
        # real queries ("jaguar logo", "jaguar official dealer").
        chosen = rng.permutation(len(words))[: 1 + int(rng.random() < config.two_intent_words)]
        parts = [names[c], *(words[i] for i in chosen)]
        if rng.random() < 0.5:
            parts.insert(int(rng.integers(3)), FILLERS[int(rng.integers(len(FILLERS)))])
        texts.append(" ".join(parts))
    return pd.DataFrame(
        {
            "query_id": np.arange(1, n + 1, dtype=np.int64),
            "query": texts,
            "split": split,
            "intent": np.array(INTENTS)[kind],
            "concept": concept,
        }
    )


def _judgments(rng: np.random.Generator, world: SynthWorld) -> pd.DataFrame:
    """Train: positives (label 1). Val/test: true matches (3), decoys and random images (0)."""
    config = world.config
    query_ids, img_ids, labels = [], [], []
    for query_id, split, intent, concept in world.queries[
        ["query_id", "split", "intent", "concept"]
    ].itertuples(index=False):
        pool = world.image_split == split
        relevant = np.flatnonzero(pool & world.relevant(concept, intent))
        if split == "train":
            size = min(config.train_positives, relevant.size)
            rows = np.sort(rng.choice(relevant, size=size, replace=False))
            grades = np.ones(rows.size, dtype=np.int32)
        else:
            true = rng.choice(
                relevant, size=min(config.true_candidates, relevant.size), replace=False
            )
            decoy_pool = np.flatnonzero(pool & world.decoys(concept, intent))
            size = min(config.decoy_candidates, decoy_pool.size)
            decoys = rng.choice(decoy_pool, size=size, replace=False)
            others = np.flatnonzero(
                pool & ~world.relevant(concept, intent) & ~world.decoys(concept, intent)
            )
            size = min(config.candidates - true.size - decoys.size, others.size)
            rest = rng.choice(others, size=size, replace=False)
            rows = np.concatenate([true, decoys, rest])
            grades = np.zeros(rows.size, dtype=np.int32)
            grades[: true.size] = 3
            order = np.argsort(rows, kind="stable")
            rows, grades = rows[order], grades[order]
        query_ids.append(np.full(rows.size, query_id, dtype=np.int64))
        img_ids.append(world.img_ids[rows])
        labels.append(grades)
    return _judgment_frame(query_ids, img_ids, labels)


def _judgment_frame(
    query_ids: list[np.ndarray], img_ids: list[np.ndarray], labels: list[np.ndarray]
) -> pd.DataFrame:
    """judgments.parquet's rows from each query's (query ids, image ids, labels) arrays."""
    return pd.DataFrame(
        {
            "query_id": np.concatenate(query_ids),
            "img_id": np.concatenate(img_ids),
            "label": np.concatenate(labels).astype(np.int32),
        }
    )


# -- the concepts file ---------------------------------------------------------------------------
def concepts_path(out: str | os.PathLike[str]) -> Path:
    """Where `synth` writes the concepts file of the folder `out`: beside it,
    `<out>.concepts.parquet` (outside the folder, which keeps the bytes it always had)."""
    out = Path(out)
    return out.parent / f"{out.name}.concepts.parquet"


def concepts_frame(world: SynthWorld) -> pd.DataFrame:
    """The world's truth as a concepts file (`amc-data eval --concepts`): one row per concept a
    query names in a modality (`kind` query, `id` the query_id, `ceiling` its best achievable
    NDCG@10 on a val/test query), and one per concept an image carries in a modality (`kind`
    image, `id` the img_id; `regions`: the regions that show it, visual; `keyword`: the word
    that names it, textual)."""
    kinds: list[str] = []
    ids: list[int] = []
    concepts: list[str] = []
    modalities: list[str] = []
    regions: list[list[int]] = []
    keywords: list[str | None] = []
    ceilings: list[float] = []
    ceiling = {**_ceilings(world, "val"), **_ceilings(world, "test")}
    for query_id, (named, intent) in zip(
        world.queries["query_id"].tolist(), world.query_concepts(), strict=True
    ):
        for concept in named:
            for modality in INTENTS:
                if intent in (modality, "both"):
                    kinds.append("query")
                    ids.append(query_id)
                    concepts.append(world.names[concept])
                    modalities.append(modality)
                    regions.append([])
                    keywords.append(None)
                    ceilings.append(ceiling.get(query_id, np.nan))
    for row, img_id in enumerate(world.img_ids.tolist()):
        for concept in world.shows[row].tolist():
            kinds.append("image")
            ids.append(img_id)
            concepts.append(world.names[concept])
            modalities.append("visual")
            regions.append(np.flatnonzero(world.region_concept[row] == concept).tolist())
            keywords.append(None)
            ceilings.append(np.nan)
        for concept in world.labels[row].tolist():
            if concept >= 0:
                kinds.append("image")
                ids.append(img_id)
                concepts.append(world.names[concept])
                modalities.append("textual")
                regions.append([])
                keywords.append(world.names[concept])
                ceilings.append(np.nan)
    return pd.DataFrame(
        {
            "kind": kinds,
            "id": np.array(ids, dtype=np.int64),
            "concept": concepts,
            "modality": modalities,
            "regions": pd.Series(regions, dtype=object),
            "keyword": pd.Series(keywords, dtype=object),
            "ceiling": np.array(ceilings, dtype=np.float64),
        }
    )


def write_concepts(world: SynthWorld, path: str | os.PathLike[str]) -> Path:
    """Write `concepts_frame(world)` to `path` (Parquet, atomically); return the path."""
    return write_concepts_frame(concepts_frame(world), path)


def write_concepts_frame(frame: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """A concepts file (the columns `concepts_frame` gives, any planted world's) written to
    `path` as Parquet with its fixed schema, atomically; return the path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema(
        [
            ("kind", pa.string()),
            ("id", pa.int64()),
            ("concept", pa.string()),
            ("modality", pa.string()),
            ("regions", pa.list_(pa.int32())),
            ("keyword", pa.string()),
            ("ceiling", pa.float64()),
        ]
    )
    table = pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
    with atomic_write(path) as handle:
        pq.write_table(table, handle)
    return Path(path)


# -- files ---------------------------------------------------------------------------------------
def _zip_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=_DATE_TIME)
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def write_keyword_archive(world: SynthWorld, folder: Path) -> None:
    """The images' keywords in the authors' Clickture layout, as `encode` reads it:
    `keywords_dev.zip` with `keywords_dev/<8-digit id>.json` holding
    `{"tagging": {"keywords": [...]}}`, and `clickture-dev.lst` naming them in list order. Lite
    is present and empty: every synthetic image is a dev image."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{img_id:08d}" for img_id in world.img_ids.tolist()]
    with zipfile.ZipFile(folder / "keywords_dev.zip", "w") as archive:
        archive.writestr(_zip_info("keywords_dev/"), b"")
        for line, keywords in zip(lines, world.keywords, strict=True):
            record = {"tagging": {"keywords": list(keywords)}}
            data = json.dumps(record, ensure_ascii=False).encode("utf-8")
            archive.writestr(_zip_info(f"keywords_dev/{line}.json"), data)
    with zipfile.ZipFile(folder / "keywords_lite.zip", "w") as archive:
        archive.writestr(_zip_info("keywords_lite/"), b"")
    (folder / "clickture-dev.lst").write_text("".join(f"{line}\n" for line in lines))
    (folder / "clickture-lite.lst").write_text("")


def _encode_keywords(world: SynthWorld, work: Path) -> tuple[scipy.sparse.csr_matrix, Path]:
    """Encode the keyword archive with the real encoder; return the (N, V) counts in
    `world.img_ids` order and the path of its `vocab.tsv`."""
    from ..encoding.core import EncodeConfig, encode
    from ..encoding.dataset import load_encoded

    write_keyword_archive(world, work / "clickture")
    config = EncodeConfig(min_df=world.config.min_df, formats=("csr", "parquet"), jobs=1)
    result = encode("clickture", data_dir=work, out=work / "encoded", config=config)
    encoded = load_encoded("clickture", "dev", out=result.out_dir)
    return encoded.matrix[world.img_ids].tocsr(), result.out_dir / "vocab.tsv"


class _FileRows:
    """The rows of a C-ordered `.npy` file, read with ordinary file reads (`rows[a:b]`), for
    the writer's checks over the features it links: rows read through a mapping stay resident
    in the reading process, so a scan of a memmap holds the whole file by its end. It has what
    the writer asks of an array: `shape`, `ndim`, `dtype` and slices of rows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        mapped = np.load(path, mmap_mode="r")  # the header only: no row is read
        self.shape: tuple[int, ...] = mapped.shape
        self.dtype: np.dtype = mapped.dtype
        self.offset: int = mapped.offset
        self.row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        del mapped

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        if not isinstance(rows, slice) or rows.step not in (None, 1):
            raise TypeError("only slices of consecutive rows are read from the file")
        start, stop, _ = rows.indices(self.shape[0])
        out = np.empty((max(0, stop - start), *self.shape[1:]), dtype=self.dtype)
        with open(self.path, "rb") as file:
            file.seek(self.offset + start * self.row_bytes)
            if file.readinto(out.data) != out.nbytes:
                raise OSError(f"{self.path} ended before row {stop}")
        return out

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)


def _can_hardlink(folder: Path) -> bool:
    """Whether `folder`'s file system makes hard links (some network and FUSE ones do not)."""
    probe, link = folder / "link-probe", folder / "link-probe.link"
    probe.touch()
    try:
        os.link(probe, link)
    except OSError:
        return False
    link.unlink()
    return True


def _fixed_times(out_dir: Path) -> None:
    """Make the folder's bytes a function of the seed alone: no creation time in prepared.json,
    features.npy stamped with a fixed modification time (the writer records it, so that an
    untouched file is not scanned again at every load), and the features recorded as the
    folder's own file: they were linked from the work folder, which is gone, so the folder holds
    the only name of that file, as it does of a copy."""
    stamp = int(datetime(*_DATE_TIME, tzinfo=UTC).timestamp()) * 1_000_000_000
    os.utime(out_dir / "features.npy", ns=(stamp, stamp))
    path = out_dir / "prepared.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    del info["created"]
    record = {k: v for k, v in info["features"].items() if k not in ("stored", "source")}
    info["features"] = {"stored": "copy", **record, "mtime_ns": stamp}
    atomic_write_json(path, info)


def synth(
    out: str | os.PathLike[str],
    *,
    seed: int | None = None,
    images: int | None = None,
    queries: int | None = None,
    regions: int | None = None,
    dim: int | None = None,
    force: bool = False,
    config: SynthConfig | None = None,
) -> PrepareResult:
    """Write a synthetic prepared dataset to `out` (see the module's docstring for what is
    planted); the same settings give byte-identical files. A setting left None takes
    `SynthConfig`'s default; `config` overrides them all when given. An existing prepared
    folder is replaced only with `force`, and never when it holds files `synth` did not write
    (see `write_prepared`). Settings whose memory or disk needs exceed what the machine has are
    refused before anything is allocated (`check_synth_fits`).

    Memory stays bounded at any size: the features are written a chunk at a time into a work
    folder beside `out` (on its file system, so that they are linked into the folder, not
    copied) and never held whole."""
    if config is None:
        given: dict[str, Any] = {
            "seed": seed,
            "images": images,
            "queries": queries,
            "regions": regions,
            "dim": dim,
        }
        config = SynthConfig(
            **{
                name: default_of(SynthConfig, name) if value is None else value
                for name, value in given.items()
            }
        )
    started = time.perf_counter()
    target = check_output_folder(out, force)  # before the work: refused now, not at the end
    if concepts_path(target).exists() and not force:
        raise OutputFolderError(
            f"{concepts_path(target)} already exists (the concepts file of an earlier synth "
            f"into {target}): remove it, or pass force=True (--force) to replace it."
        )
    check_synth_fits(config, target)
    try:
        out_dir = _write(config, target, force)
        _fixed_times(out_dir)
    except OSError as exc:
        raise _write_error(exc, target, config) from exc
    info = json.loads((out_dir / "prepared.json").read_text(encoding="utf-8"))
    log.info("synth: %s in %.1f s", out_dir, time.perf_counter() - started)
    return PrepareResult(out=out_dir, source="synth", counts=info["counts"], features_stored="copy")


def _write(config: SynthConfig, target: Path, force: bool) -> Path:
    """The world for `config`, written as a prepared folder at `target`; return its path."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.synth-", dir=target.parent) as name:
        work = Path(name)
        world = generate_world(config, work / "features.npy")
        keywords, vocab_path = _encode_keywords(world, work)
        train = world.queries["split"] == "train"
        query_vocabulary = fit_query_vocabulary(
            world.queries.loc[train, "query"], min_count=config.query_min_count
        )
        link = _can_hardlink(work)
        if not link:
            log.info("synth: %s makes no hard links: the features are copied", work)
        out_dir = write_prepared(
            target,
            source="synth",
            features=FeatureRows(
                (_FileRows(work / "features.npy"),),  # type: ignore[arg-type]
                path=work / "features.npy",
            ),
            feature_ids=world.img_ids,
            keywords_csr=keywords,
            vocab_tsv_path=vocab_path,
            images=_images_frame(world),
            queries=world.queries[["query_id", "query", "split", "intent"]],
            judgments=world.judgments,
            query_vocabulary=query_vocabulary,
            options=config.options(),
            force=force,
            link_features=link,
            extra={
                **({"candidates": "split"} if world.ranks_whole_split else {}),
                "synth": {
                    "concepts": list(world.names),
                    "visual_words": list(VISUAL_WORDS),
                    "textual_words": list(TEXTUAL_WORDS),
                    "images_without_keywords": int((world.named < 0).sum()),
                },
            },
        )
        write_concepts(world, concepts_path(out_dir))
        del world  # its features map a file of the work folder
        features = out_dir / "features.npy"
        if features.is_symlink():
            # The hard link failed after all and the writer linked symbolically to the work
            # folder, which is about to go: the folder gets its own copy instead.
            copy = out_dir / ".features.npy.copy"
            shutil.copyfile(work / "features.npy", copy)
            os.replace(copy, features)
    return out_dir


FOLD_LIMIT = 1000  # a pool split's folds hold at most this many images (COCO's 1K protocol)


def _images_frame(world: SynthWorld) -> pd.DataFrame:
    """images.parquet's rows; a world ranked over whole splits also gets each val/test image's
    `fold`: a split of more than `FOLD_LIMIT` images is cut, in img_id order, into the fewest
    folds of at most that many (as COCO's 5,000 test images are five folds of 1,000), which the
    caption-ranking tables need."""
    frame = pd.DataFrame({"img_id": world.img_ids, "split": world.image_split})
    if not world.ranks_whole_split:
        return frame
    fold = np.full(world.img_ids.size, -1, dtype=np.int64)
    for split in ("val", "test"):
        rows = np.flatnonzero(world.image_split == split)
        rows = rows[np.argsort(world.img_ids[rows], kind="stable")]
        count = -(-rows.size // FOLD_LIMIT)
        fold[rows] = np.arange(rows.size) * count // rows.size
    return frame.assign(fold=fold)


def _write_error(exc: OSError, target: Path, config: SynthConfig) -> AmcDataError:
    """One line for a failure to write: where, why, and what to do."""
    size = config.images * config.regions * config.dim * 2
    where = f"{os.fsdecode(exc.filename)}: " if exc.filename is not None else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        advice = (
            f"the features alone take {size / 2**20:,.0f} MiB: free some space, or choose an "
            "OUT on a disk with room"
        )
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        advice = "choose an OUT where you may write"
    else:
        advice = "check the output location and run again"
    return AmcDataError(
        f"Cannot write the synthetic dataset {target} ({where}{exc.strerror or exc}); {advice}. "
        "Its work files beside it were removed."
    )
