"""Prepared folders to export, and what an export of one must hold, read from the folder itself
with `load_prepared`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.prepare_helpers import small_parts

import amc_data
from amc_data.prepare.format import load_prepared
from amc_data.prepare.writer import write_prepared


@pytest.fixture(scope="session")
def synth_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic prepared folder: (N, 8, 32) float16 features, keyword counts up to 10."""
    out = tmp_path_factory.mktemp("export-synth") / "prepared"
    amc_data.synth(out, seed=3, images=240, queries=90)
    return out


@pytest.fixture(scope="session")
def coco_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny COCO-shaped prepared folder: (N, D) float32 features, test folds, a `source_id`
    column, and images.parquet listing the images in another order than the feature rows."""
    tmp = tmp_path_factory.mktemp("export-coco")
    parts = small_parts(tmp, n_images=16, regions=1, dim=6, seed=5)
    parts["features"] = parts["features"][:, 0, :]  # (N, D): read back as R = 1
    images = parts["images"].iloc[::-1].reset_index(drop=True)
    images["fold"] = np.where(images["split"] == "test", np.arange(len(images)) % 5, -1).astype(
        np.int8
    )
    images["source_id"] = images["img_id"] * 7
    parts.update(source="coco", images=images, options={"fold_size": 1000})
    return write_prepared(tmp / "prepared", **parts, extra={"encoded": {"dataset": "coco"}})


def expected_images(data: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """Per split, per img_id: the image's row (as written in images.parquet), its keywords
    (words, counts) and its features (the prepared dtype)."""
    dataset = load_prepared(data)
    found: dict[str, dict[int, dict[str, Any]]] = {"train": {}, "val": {}, "test": {}}
    for record in dataset.images.to_dict("records"):
        row = int(dataset.rows(np.array([record["img_id"]]))[0])
        keywords = dataset.keywords[row]
        found[record["split"]][int(record["img_id"])] = {
            **{k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()},
            "keywords": [dataset.vocabulary[i] for i in keywords.indices],
            "keyword_counts": keywords.data.tolist(),
            "features": np.asarray(dataset.features[row]),
        }
    return found


def expected_tables(data: Path) -> dict[str, dict[str, list[tuple]]]:
    """Per split, the queries and judgments as sorted tuples (a judgment's split: its query's)."""
    dataset = load_prepared(data)
    split_of = dict(zip(dataset.queries["query_id"], dataset.queries["split"], strict=True))
    found: dict[str, dict[str, list[tuple]]] = {}
    for split in ("train", "val", "test"):
        queries = dataset.queries[dataset.queries["split"] == split]
        judged = dataset.judgments[dataset.judgments["query_id"].map(split_of) == split]
        found[split] = {
            "queries": sorted(map(tuple, queries.itertuples(index=False))),
            "judgments": sorted(map(tuple, judged.itertuples(index=False))),
        }
    return found


@pytest.fixture
def expected() -> Any:
    """The two readers above, for the tests."""
    return expected_images, expected_tables
