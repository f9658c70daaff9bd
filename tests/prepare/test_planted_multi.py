"""The several-concepts world of `planted_multi` plants what its docstring says, and its ceiling
is what the real evaluation gives a scorer that knows the truth and cannot break its ties."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import planted_multi

from amc_data.evaluation.scores import evaluate_scores
from amc_data.prepare import load_prepared

SMALL = planted_multi.MultiConfig(visual=12, textual=10, images=(240, 0, 60, 300))


def _archive(world: planted_multi.MultiWorld) -> tuple[dict, dict]:
    with zipfile.ZipFile(world.data_dir / "coco" / "keywords_coco.zip") as archive:
        images = json.loads(archive.read("dataset.json"))["images"]
        keywords = {
            e["imgid"]: json.loads(
                archive.read(f"keyword_{e['split']}/{e['filename'].removesuffix('.jpg')}.json")
            )["tagging"]["keywords"]
            for e in images
        }
    return {e["imgid"]: [s["tokens"] for s in e["sentences"]] for e in images}, keywords


@pytest.mark.parametrize("per_image", [(1, 1), (2, 2)])
def test_every_image_carries_concepts_of_both_kinds_and_fakes_one_of_each(
    tmp_path: Path, per_image: tuple[int, int]
) -> None:
    config = planted_multi.MultiConfig(
        visual=12, textual=10, per_image=per_image, images=(120, 0, 20, 20)
    )
    world = planted_multi.build_world(tmp_path, config)
    captions, keywords = _archive(world)
    names = np.array(world.names)
    partial = 0
    for img, tokens_of in captions.items():
        carried = set(names[world.shown[img]]) | set(names[world.named[img]])
        assert len(carried) == sum(per_image)
        # The keywords name the textual concepts and one visual concept the pixels do not show.
        assert set(names[world.named[img]]) <= set(keywords[img])
        assert names[world.decoy_name[img]] in keywords[img]
        assert world.decoy_name[img] not in world.shown[img]
        assert world.decoy_look[img] not in world.named[img]
        for tokens in tokens_of:
            said = set(tokens) & set(names)
            assert said <= carried and said
            partial += said != carried
    share = partial / (len(captions) * config.captions)
    assert 0.1 < share < 0.3  # config.partial = 0.2
    # The cells marked with a concept hold its look; the decoy cell another; the rest clutter.
    features = np.load(world.features).astype(np.float64)[np.argsort(np.load(world.feature_ids))]
    unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
    marked = world.cell_concept >= 0
    looks = {
        c: unit[world.cell_concept == c].mean(0) for c in np.unique(world.cell_concept[marked])
    }
    fit = np.array(
        [
            unit[i, r] @ looks[c] / np.linalg.norm(looks[c])
            for i, r in zip(*np.nonzero(marked), strict=True)
            for c in [world.cell_concept[i, r]]
        ]
    )
    assert fit.min() > 0.8
    assert marked.sum(1).min() >= per_image[0] and marked.sum(1).max() <= 3 * per_image[0]


def _oracle_frame(world: planted_multi.MultiWorld, prepared) -> pd.DataFrame:
    sentids, rows, scores = planted_multi.oracle_scores(world)
    relevant = prepared.judgments[prepared.judgments["label"] > 0]
    own = set(zip(relevant["query_id"], relevant["img_id"], strict=True))
    q, m = np.meshgrid(sentids, rows, indexing="ij")  # the generator's imgid is its row
    labels = np.array([(a, b) in own for a, b in zip(q.ravel(), m.ravel(), strict=True)])
    return pd.DataFrame(
        {"query_id": q.ravel(), "img_id": m.ravel(), "score": scores.ravel(), "label": labels}
    )


@pytest.mark.parametrize("per_image", [(1, 1), (2, 2)])
def test_the_ceiling_is_what_eval_gives_a_scorer_that_knows_the_truth(
    tmp_path: Path, per_image: tuple[int, int]
) -> None:
    from dataclasses import replace

    world, out = planted_multi.prepare_world(tmp_path, replace(SMALL, per_image=per_image))
    prepared = load_prepared(out)
    test = prepared.split_queries("test")["query_id"].to_numpy()
    assert set(test) == {s for s, (row, _) in world.captions.items() if world.split[row] == "test"}
    ceiling = planted_multi.ceiling(world)
    got = evaluate_scores(_oracle_frame(world, prepared))
    assert got["queries"] == len(test)
    assert got["ndcg@10"] == pytest.approx(ceiling["ndcg@10"], abs=1e-9)
    # Below 1: captions naming one concept tie with every image carrying it, and so do
    # several images carrying the same pair.
    assert ceiling["ndcg@10"] < 0.99
    per = ceiling["per_query"]
    assert min(per.values()) < 0.5 and max(per.values()) == 1.0
