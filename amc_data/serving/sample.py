"""A small world to show the search page on, made offline in seconds: a synthetic prepared folder
whose 7 x 7 regions have pictures (drawn from the features, so a region's shade follows what it
holds) with file names and the features' recorded geometry, and an AMC run trained on it
(and, when asked, a baseline). The docs' screenshot and the page's browser test use it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..prepare.format import PreparedDataset, load_prepared
from ..prepare.queries import QueryVocabulary
from ..prepare.synth import synth
from ..prepare.writer import write_prepared
from .pictures import crop_box, require_pillow

GEOMETRY = {"image_size": 224, "resize": 256, "grid": 7}
# Landscape and portrait pictures, so that the crop the features saw is inset on one axis.
SHAPES = ((320, 240), (240, 320), (300, 300))
TRAIN_FAST: dict[str, Any] = {"epochs": 3, "batch_size": 32, "dim": 16, "device": "cpu"}
# For the docs' screenshot: long enough (about a minute on one core) for the attention to settle
# on the planted regions and the gate to follow the query's intent.
TRAIN_SHOWN: dict[str, Any] = {**TRAIN_FAST, "epochs": 20, "dim": 32}


@dataclass(frozen=True)
class SampleWorld:
    data: Path  # the prepared folder (file names and geometry recorded)
    pictures: Path  # the folder of its pictures
    runs: dict[str, Path]  # model kind -> run folder


def make_sample(
    root: str | os.PathLike[str],
    *,
    images: int = 240,
    queries: int = 90,
    seed: int = 0,
    baseline: str | None = None,
    training: dict[str, Any] | None = None,
) -> SampleWorld:
    """The sample world in `root` (made anew): `root/data`, `root/pictures`, `root/runs/amc`
    (and `root/runs/<baseline>`, a model kind such as "visual", when given), trained with
    `training` (TrainConfig options; default `TRAIN_FAST`)."""
    from ..ranking.training import TrainConfig, train

    root = Path(root)
    plain = root / "synth"
    synth(plain, seed=seed, images=images, queries=queries, regions=49, dim=16, force=True)
    data = with_pictures(load_prepared(plain), root / "data", root / "pictures")
    runs = {}
    for kind in ("amc", *([baseline] if baseline else [])):
        config = TrainConfig(**{**(training or TRAIN_FAST), "model": kind})
        runs[kind] = train(data, root / "runs" / kind, config, force=True).run_dir
    return SampleWorld(data=data, pictures=root / "pictures", runs=runs)


def with_pictures(prepared: PreparedDataset, out: Path, pictures: Path) -> Path:
    """`prepared` written again at `out` with a file name for each image and the features'
    geometry (`GEOMETRY`), and a PNG picture for each image in `pictures`."""
    image_module = require_pillow()
    pictures.mkdir(parents=True, exist_ok=True)
    images = prepared.images.copy()
    ids = images["img_id"].to_numpy(np.int64)
    images["file_name"] = [f"sample_{int(i):06d}.png" for i in ids]
    features = np.asarray(prepared.features[prepared.rows(ids)], dtype=np.float32)
    for k, (img_id, name) in enumerate(zip(ids, images["file_name"], strict=True)):
        width, height = SHAPES[int(img_id) % len(SHAPES)]
        pixels = _drawing(features[k], width, height)
        image_module.fromarray(pixels).save(pictures / name)
    return write_prepared(
        out,
        source="synth",
        features=np.asarray(prepared.features),
        feature_ids=prepared.feature_ids,
        keywords_csr=prepared.keywords,
        vocab_tsv_path=prepared.root / "vocab.tsv",
        images=images,
        queries=prepared.queries,
        judgments=prepared.judgments,
        query_vocabulary=QueryVocabulary.read_tsv(prepared.root / "query_vocab.tsv"),
        options=dict(prepared.info.get("options", {})),
        force=True,
        feature_geometry=GEOMETRY,
    )


def _drawing(regions: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: a grey border, and over the features' crop a 7 x 7 grid of
    cells, each coloured by its region's first three feature dimensions."""
    pixels = np.full((height, width, 3), 90, dtype=np.uint8)
    box = crop_box(width, height, GEOMETRY)
    x0, y0 = round(box["x"] * width), round(box["y"] * height)
    side_x, side_y = box["w"] * width, box["h"] * height
    grid = GEOMETRY["grid"]
    # Grey levels (the heat map's colour stands out on them), from the first two dimensions.
    shade = regions[:, :2].sum(axis=1)
    spread = float(np.abs(shade).max()) or 1.0
    colours = np.repeat(np.clip(150 + 90 * shade / spread, 0, 255).astype(np.uint8)[:, None], 3, 1)
    for r in range(grid * grid):
        row, col = divmod(r, grid)
        top, left = y0 + round(row * side_y / grid), x0 + round(col * side_x / grid)
        bottom, right = y0 + round((row + 1) * side_y / grid), x0 + round((col + 1) * side_x / grid)
        pixels[top : bottom - 1, left : right - 1] = colours[r]
    return pixels
