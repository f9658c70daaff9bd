"""The planted COCO world of `planted_coco` plants what its docstring says, in both forms: the
fidelity tests read their truth from it."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support import planted_coco


def _captions(world: planted_coco.PlantedCoco) -> dict[int, list[list[str]]]:
    with zipfile.ZipFile(world.data_dir / "coco" / "keywords_coco.zip") as archive:
        images = json.loads(archive.read("dataset.json"))["images"]
    return {entry["imgid"]: [s["tokens"] for s in entry["sentences"]] for entry in images}


@pytest.mark.parametrize("carrier", planted_coco.CARRIERS)
def test_one_modality_carries_each_image_s_concept_and_the_other_fakes_another(
    tmp_path: Path, carrier: str
) -> None:
    config = planted_coco.PlantedConfig(concepts=8, images=(80, 0, 16, 16), carrier=carrier)
    world = planted_coco.build_world(tmp_path, config)
    rows = np.arange(world.concept.size)
    visual = world.visual(rows)
    assert ((world.shown == world.concept) == visual).all()
    assert ((world.named == world.concept) == ~visual).all()
    # The regions marked as showing a concept hold its look (estimated as the mean of those
    # regions over every image showing it); the other regions, clutter, mostly do not.
    features = np.load(world.features).astype(np.float64)[np.argsort(np.load(world.feature_ids))]
    unit = features / np.linalg.norm(features, axis=-1, keepdims=True)
    marked = world.concept_regions
    looks = np.stack([unit[(world.shown == c)[:, None] & marked].mean(0) for c in range(8)])
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    fit = np.einsum("nrd,nd->nr", unit, looks[world.shown])
    assert fit[marked].min() > 0.8 and fit[~marked].mean() < 0.3
    if carrier == "concept":  # the concept's kind decides, and decoys come from the same kind
        assert (world.image_kinds == world.kinds[world.concept]).all()
        assert (world.kinds[world.named[visual]] == 0).all()
        assert (world.kinds[world.shown[~visual]] == 1).all()
    else:  # half of each concept's images in each split, either way
        for split in planted_coco.SPLITS:
            for concept in range(config.concepts):
                kinds = world.image_kinds[(world.split == split) & (world.concept == concept)]
                assert abs(int((kinds == 0).sum()) - int((kinds == 1).sum())) <= 1


def test_caption_cues_say_which_modality_carries_the_concept(tmp_path: Path) -> None:
    config = planted_coco.PlantedConfig(concepts=8, images=(80, 0, 16, 16), carrier="caption")
    world = planted_coco.build_world(tmp_path, config)
    looks, texts = set(planted_coco._LOOK_CUES), set(planted_coco._TEXT_CUES)
    for img, captions in _captions(world).items():
        for tokens in captions:
            assert world.names[world.concept[img]] in tokens
            cues = looks if world.image_kinds[img] == 0 else texts
            others = texts if world.image_kinds[img] == 0 else looks
            assert len(cues & set(tokens)) == 1 and not others & set(tokens), tokens
    plain = planted_coco.build_world(tmp_path / "plain", planted_coco.PlantedConfig(concepts=8))
    for captions in _captions(plain).values():
        assert all(not (looks | texts) & set(tokens) for tokens in captions)


def test_an_unknown_carrier_is_refused() -> None:
    with pytest.raises(ValueError, match="carrier must be one of"):
        planted_coco.PlantedConfig(carrier="intent")
