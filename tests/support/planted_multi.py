"""A planted COCO-shaped world where every image and caption holds several concepts, built apart
from `planted_coco` and `synth`, through the real `encode coco` and `prepare coco`.

The story (one numpy generator, seeded):

- Two sets of made-up concept words: `visual` concepts, which only the pixels carry, and
  `textual` ones, which only the keywords carry. Every concept has a *look* (a random unit
  direction in feature space) and a name.
- Pixels: an image is a grid of `grid` x `grid` regions (7 x 7 by default). It *shows*
  `per_image[0]` visual concepts, each in 1-3 cells; the other cells are clutter (a few shared
  directions plus noise). One more cell shows the look of a textual concept the image does not
  carry (a wrong-modality decoy).
- Keywords: 8-20 filler keywords and phrases (Zipf-weighted common words), the names of the
  `per_image[1]` textual concepts the image *carries*, and the name of one visual concept it does
  not show (a wrong-modality decoy), in random order.
- Captions: five per image; each names every concept the image carries among 4-8 filler words,
  except that a share `partial` of them names one only (either kind, evenly). A caption's one
  relevant image is its own.

What a model must learn: per concept word, which modality to trust (a visual concept's name in
the keywords is a decoy, a textual concept's look in the pixels is one), and within it the few
cells or the one keyword that carry the concept; a caption naming both kinds of concept needs
both modalities, one naming only one kind needs that modality only (the modality gate's job).

The ceiling (`ceiling`) comes from the truth: the captions say nothing about an image beyond the
concepts they name, so every test image that carries all of them in the right modality is as
likely as the caption's own; with `n` such images the best expected NDCG@10 is
`(1/n) * sum_{r<=min(n,10)} 1/log2(r+1)` (ties averaged, as `amc-data eval` does) and R@10
`min(n,10)/n`.

`write_concepts` writes the truth as a concepts file for `amc-data eval --concepts`.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .planted_coco import _DISTRACTORS, _FILLERS, _SYLLABLES

SPLITS = ("train", "restval", "val", "test")


@dataclass(frozen=True)
class MultiConfig:
    """The world's shape; the defaults are the issue's world at a size that trains in about a
    minute on one CPU thread (1,000 test images: the 1K protocol)."""

    seed: int = 0
    visual: int = 100  # visual concepts
    textual: int = 100  # textual concepts
    per_image: tuple[int, int] = (1, 1)  # visual, textual concepts each image carries
    images: tuple[int, int, int, int] = (2000, 0, 500, 1000)  # train, restval, val, test
    captions: int = 5
    grid: int = 7  # regions: grid x grid
    cells: tuple[int, int] = (1, 3)  # cells a shown concept fills, inclusive
    dim: int = 32
    clutter: int = 24
    noise: float = 0.35
    keywords: tuple[int, int] = (8, 20)  # filler keywords per image, inclusive
    filler_words: tuple[int, int] = (4, 8)
    partial: float = 0.2  # P(a caption names one of its image's concepts only)
    decoys: bool = True  # one wrong-modality decoy in each modality

    def __post_init__(self) -> None:
        v, t = self.per_image
        if v < 1 or t < 1:
            raise ValueError("per_image needs at least one concept of each kind")
        if v * self.cells[1] + 1 > self.grid * self.grid:
            raise ValueError("the grid is too small for the concepts' cells")


@dataclass(frozen=True)
class MultiWorld:
    """The files written and the truth behind them. Concept ids: visual 0..V-1, textual
    V..V+T-1."""

    config: MultiConfig
    data_dir: Path
    features: Path
    feature_ids: Path
    names: tuple[str, ...]  # (V + T,)
    split: np.ndarray  # (N,) Karpathy split, row = imgid
    shown: np.ndarray  # (N, per_image[0]) visual concepts the pixels show
    named: np.ndarray  # (N, per_image[1]) textual concepts the keywords name
    cell_concept: np.ndarray  # (N, R) the shown concept a cell holds, -1 none (decoy cells: -1)
    decoy_look: np.ndarray  # (N,) the textual concept one cell fakes, -1 none
    decoy_name: np.ndarray  # (N,) the visual concept one keyword fakes, -1 none
    captions: dict[int, tuple[int, tuple[int, ...]]] = field(
        repr=False
    )  # sentid -> (row, concepts)

    @property
    def visual_count(self) -> int:
        return self.config.visual

    def is_visual(self, concept: int) -> bool:
        return concept < self.config.visual

    def carries(self, rows: np.ndarray, concepts: tuple[int, ...]) -> np.ndarray:
        """(len(rows),) bool: the images carry every one of `concepts` in its own modality."""
        ok = np.ones(len(rows), dtype=bool)
        for c in concepts:
            held = self.shown[rows] if self.is_visual(c) else self.named[rows]
            ok &= (held == c).any(1)
        return ok


def _names(rng: np.random.Generator, count: int) -> tuple[str, ...]:
    taken = set(_FILLERS) | {w for d in _DISTRACTORS for w in d.split()}
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


def _deal(rng: np.random.Generator, split: np.ndarray, count: int, per: int) -> np.ndarray:
    """(N, per) distinct concepts per image, every concept about equally often in each split."""
    out = np.empty((split.size, per), dtype=np.int64)
    for name in SPLITS:
        rows = np.flatnonzero(split == name)
        for j in range(per):
            out[rows, j] = rng.permutation(np.arange(rows.size) % count)
        for i in rows:  # redraw repeats within an image
            while len(set(out[i].tolist())) < per:
                out[i, int(rng.integers(per))] = int(rng.integers(count))
    return out


def _other(rng: np.random.Generator, low: int, high: int, avoid: np.ndarray) -> int:
    choice = int(rng.integers(low, high))
    while choice in avoid:
        choice = int(rng.integers(low, high))
    return choice


# long: one seeded story, told in order so that a seed always builds the same world
def build_world(folder: Path, config: MultiConfig = MultiConfig()) -> MultiWorld:
    """Write `<folder>/coco/keywords_coco.zip` and the features, and return the truth."""
    rng = np.random.default_rng([config.seed, 2026])
    v, t = config.visual, config.textual
    r, d = config.grid * config.grid, config.dim
    names = _names(rng, v + t)
    looks = _unit(rng, v + t, d)
    clutter = _unit(rng, config.clutter, d)
    split = np.repeat(np.array(SPLITS), config.images)
    n = split.size
    split = split[rng.permutation(n)]
    shown = _deal(rng, split, v, config.per_image[0])
    named = _deal(rng, split, t, config.per_image[1]) + v

    vectors = clutter[rng.integers(config.clutter, size=(n, r))]
    cell_concept = np.full((n, r), -1, dtype=np.int64)
    decoy_look = np.full(n, -1, dtype=np.int64)
    decoy_name = np.full(n, -1, dtype=np.int64)
    low, high = config.cells
    for i in range(n):
        order = rng.permutation(r)
        used = 0
        for c in shown[i]:
            width = int(rng.integers(low, high + 1))
            cells = order[used : used + width]
            used += width
            cell_concept[i, cells] = c
            vectors[i, cells] = looks[c]
        if config.decoys:
            decoy_look[i] = _other(rng, v, v + t, named[i])
            vectors[i, order[used]] = looks[decoy_look[i]]
            decoy_name[i] = _other(rng, 0, v, shown[i])
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
    entries, members = [], []
    captions: dict[int, tuple[int, tuple[int, ...]]] = {}
    sentid = 0
    cocoids = rng.choice(600_000, size=n, replace=False) + 1
    for i in range(n):
        folder_name = "train2014" if split[i] == "train" else "val2014"
        filename = f"COCO_{folder_name}_{cocoids[i]:012d}.jpg"
        carried = [int(c) for c in shown[i]] + [int(c) for c in named[i]]
        sentences = []
        for _ in range(config.captions):
            said = carried
            if rng.random() < config.partial:
                pool = shown[i] if rng.random() < 0.5 else named[i]
                said = [int(pool[rng.integers(pool.size)])]
            lo, hi = config.filler_words
            words = [
                _FILLERS[j] for j in rng.integers(len(_FILLERS), size=rng.integers(lo, hi + 1))
            ]
            for c in rng.permutation(said):
                words.insert(int(rng.integers(len(words) + 1)), names[c])
            raw = " ".join(words).capitalize() + "."
            sentences.append({"tokens": words, "raw": raw, "imgid": i, "sentid": sentid})
            captions[sentid] = (i, tuple(sorted(said)))
            sentid += 1
        entries.append(
            {
                "filepath": folder_name,
                "sentids": [s["sentid"] for s in sentences],
                "filename": filename,
                "imgid": i,
                "split": str(split[i]),
                "sentences": sentences,
                "cocoid": int(cocoids[i]),
            }
        )
        lo, hi = config.keywords
        count = int(rng.integers(lo, hi + 1))
        tags = list(dict.fromkeys(rng.choice(len(_DISTRACTORS), size=count, p=weights).tolist()))
        keywords = [_DISTRACTORS[j] for j in tags]
        planted = [names[c] for c in named[i]]
        if config.decoys:
            planted.append(names[decoy_name[i]])
        for word in planted:
            keywords.insert(int(rng.integers(len(keywords) + 1)), word)
        record = {"tagging": {"keywords": keywords, "scores": [0.9] * len(keywords)}}
        member = f"keyword_{split[i]}/{filename.removesuffix('.jpg')}.json"
        members.append((member, json.dumps(record).encode()))
    dataset = json.dumps({"images": entries, "dataset": "coco"}).encode()
    with zipfile.ZipFile(out / "coco" / "keywords_coco.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(zipfile.ZipInfo("dataset.json", (2017, 3, 1, 0, 0, 0)), dataset)
        for member, data in members:
            archive.writestr(zipfile.ZipInfo(member, (2017, 3, 1, 0, 0, 0)), data)
    return MultiWorld(
        config=config,
        data_dir=out,
        features=features,
        feature_ids=feature_ids,
        names=names,
        split=split,
        shown=shown,
        named=named,
        cell_concept=cell_concept,
        decoy_look=decoy_look,
        decoy_name=decoy_name,
        captions=captions,
    )


def prepare_world(folder: Path, config: MultiConfig = MultiConfig()) -> tuple[MultiWorld, Path]:
    """Build the world in `folder`, then `encode coco` and `prepare coco` it for real; returns
    the world and the prepared folder (test folds of 1,000 images, or the whole test split)."""
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
            fold_size=min(test, 1000), min_query_count=1, captions_per_image=config.captions
        ),
    )
    return world, result.out


def ties(world: MultiWorld, split: str = "test", fold_size: int = 1000) -> dict[int, int]:
    """sentid -> how many images of its fold carry every concept its caption names (its own
    included): the images nothing in the caption tells apart."""
    rows = np.flatnonzero(world.split == split)  # ascending imgid: the order folds are cut in
    fold = np.full(world.split.size, -1)
    fold[rows] = np.arange(rows.size) // fold_size
    members = {int(k): rows[fold[rows] == k] for k in np.unique(fold[rows])}
    out = {}
    for sentid, (row, concepts) in world.captions.items():
        if world.split[row] == split:
            out[sentid] = int(world.carries(members[int(fold[row])], concepts).sum())
    return out


def ceiling(world: MultiWorld, split: str = "test", fold_size: int = 1000) -> dict[str, float]:
    """The best expected NDCG@10 and R@10 of any scorer (mean over the split's captions), and
    per caption (`per_query`: sentid -> NDCG@10)."""
    counts = ties(world, split, fold_size)
    gains = 1.0 / np.log2(np.arange(2, 12))
    per = {s: float(gains[: min(n, 10)].sum() / n) for s, n in counts.items()}
    recall = [min(n, 10) / n for n in counts.values()]
    return {
        "ndcg@10": float(np.mean(list(per.values()))),
        "r@10": float(np.mean(recall)),
        "per_query": per,  # type: ignore[dict-item]
    }


def oracle_scores(
    world: MultiWorld, split: str = "test"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scorer that knows the truth and breaks no ties: (sentids, imgids, scores (Q, N)), 1 where
    the image carries every concept the caption names, else the share of them it carries."""
    rows = np.flatnonzero(world.split == split)
    sentids = np.array(
        sorted(s for s, (row, _) in world.captions.items() if world.split[row] == split)
    )
    scores = np.zeros((sentids.size, rows.size))
    for q, s in enumerate(sentids):
        _, concepts = world.captions[int(s)]
        share = sum(world.carries(rows, (c,)).astype(float) for c in concepts) / len(concepts)
        scores[q] = share
    return sentids, rows, scores


def concepts_frame(world: MultiWorld, fold_size: int | None = None) -> pd.DataFrame:
    """The world's truth as a concepts file (`amc_data.evaluation.concepts`): a row per concept
    each caption names (its modality is the concept's kind; `ceiling` on val and test captions,
    over folds of `fold_size` images, default the whole split: the pool `eval` ranks), and a
    row per concept each image carries (the cells that show a visual one, the keyword that names
    a textual one). Decoys are not concepts an image carries, so they have no rows."""
    ceilings: dict[int, float] = {}
    for split in ("val", "test"):
        size = fold_size or max(1, int((world.split == split).sum()))
        ceilings |= ceiling(world, split, size)["per_query"]  # type: ignore[arg-type]
    rows: list[tuple] = []
    for sentid, (_, concepts) in sorted(world.captions.items()):
        for c in concepts:
            modality = "visual" if world.is_visual(c) else "textual"
            rows.append(
                ("query", sentid, world.names[c], modality, [], None, ceilings.get(sentid, np.nan))
            )
    for row in range(world.split.size):
        for c in world.shown[row].tolist():
            cells = np.flatnonzero(world.cell_concept[row] == c).tolist()
            rows.append(("image", row, world.names[c], "visual", cells, None, np.nan))
        for c in world.named[row].tolist():
            rows.append(("image", row, world.names[c], "textual", [], world.names[c], np.nan))
    columns = ["kind", "id", "concept", "modality", "regions", "keyword", "ceiling"]
    return pd.DataFrame(rows, columns=columns).astype({"id": np.int64, "ceiling": np.float64})


def write_concepts(world: MultiWorld, path: Path, fold_size: int | None = None) -> Path:
    """Write `concepts_frame(world, fold_size)` as a concepts file at `path` (synth's writer,
    the one schema); return the path."""
    from amc_data.prepare.synth import write_concepts_frame

    return write_concepts_frame(concepts_frame(world, fold_size), path)
