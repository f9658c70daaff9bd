"""`synth` with several concepts an image: each image shows some concepts and is labelled with
others, each query names a subset of its image's concepts with one intent, and the world's ceiling
(from its truth) is what the real evaluation gives a scorer that knows the truth and cannot break
its ties. The truth is written beside the folder as a concepts file; the default settings keep the
folder's bytes."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data.errors import ConfigError, OutputFolderError
from amc_data.evaluation.scores import evaluate_scores
from amc_data.prepare import load_prepared
from amc_data.prepare.queries import query_analyzer
from amc_data.prepare.synth import (
    FILLERS,
    TEXTUAL_WORDS,
    VISUAL_WORDS,
    SynthConfig,
    SynthWorld,
    concepts_path,
    generate_world,
    synth,
)

SEVERAL = SynthConfig(
    seed=1,
    images=1200,
    queries=1200,  # at least as many val and test queries as images: every image anchors one
    regions=16,
    concepts=12,
    shown=2,
    labelled=2,
    query_concepts=2,
    candidates=1000,  # every image of the split: the 1K protocol's shape
)


def _unit(features: np.ndarray) -> np.ndarray:
    values = np.asarray(features, dtype=np.float64)
    return values / np.linalg.norm(values, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def several_world() -> SynthWorld:
    return generate_world(SEVERAL)


def test_every_image_shows_and_names_several_concepts_where_the_truth_says(several_world):
    world = several_world
    assert world.shows.shape == (1200, 2) and world.labels.shape == (1200, 2)
    assert all(len(set(row)) == 2 for row in world.shows.tolist())
    unit = _unit(world.features)
    for row in range(0, 1200, 5):
        for concept in world.shows[row].tolist():
            cells = np.flatnonzero(world.region_concept[row] == concept)
            assert 1 <= cells.size <= 2
            assert (unit[row, cells] @ world.looks[concept]).min() > 0.8
        clutter = world.region_concept[row] < 0
        # no clutter region is near the look of a concept the image shows
        assert (unit[row][clutter] @ world.looks[world.shows[row]].T).max() < 0.8
        tags = {t.lower() for t in world.keywords[row]}
        if world.labels[row, 0] >= 0:
            assert {world.names[c] for c in world.labels[row].tolist()} <= tags
        named_concepts = tags & set(world.names)
        assert named_concepts == {world.names[c] for c in world.labels[row].tolist() if c >= 0}
    # labelled independently of the pixels: most images are decoys for some query
    overlap = (world.shows[:, :, None] == world.labels[:, None, :]).any((1, 2))
    assert 0.05 < overlap.mean() < 0.5


def test_each_query_names_concepts_its_image_carries_in_the_modality_its_intent_asks(
    several_world,
):
    world = several_world
    analyzer = query_analyzer()
    sizes = []
    for (concepts, intent), anchor, text in zip(
        world.query_concepts(), world.queries["anchor"], world.queries["query"], strict=True
    ):
        assert world.satisfies(concepts, intent)[anchor]
        words = analyzer(text)
        assert set(words) & set(world.names) == {world.names[c] for c in concepts}
        says = (bool(set(words) & set(VISUAL_WORDS)), bool(set(words) & set(TEXTUAL_WORDS)))
        assert (
            says
            == {"visual": (True, False), "textual": (False, True), "both": (True, True)}[intent]
        )
        assert set(words) <= set(world.names) | set(VISUAL_WORDS + TEXTUAL_WORDS + FILLERS)
        sizes.append(len(concepts))
    intents = world.queries["intent"].value_counts(normalize=True)
    assert 0.1 < intents["both"] < 0.3  # both_intents = 0.2
    assert abs(intents["visual"] - intents["textual"]) < 0.1
    assert set(sizes) == {1, 2}


def test_a_val_or_test_query_has_one_relevant_image_its_own(several_world):
    world = several_world
    judged = world.judgments.merge(world.queries, on="query_id")
    held_out = judged[judged["split"] != "train"]
    # candidates=1000 reaches every split: each query is ranked over its whole split, and the
    # judgments hold its own image alone
    assert world.ranks_whole_split
    assert set(held_out["label"]) == {3}
    assert (held_out.groupby("query_id").size() == 1).all()
    own = world.img_ids[held_out["anchor"].to_numpy()]
    assert (held_out["img_id"].to_numpy() == own).all()
    train = judged[judged["split"] == "train"]
    assert set(train["label"]) == {1}
    row_of = {int(i): r for r, i in enumerate(world.img_ids.tolist())}
    for query_id, group in train.groupby("query_id"):
        concepts, intent = world.query_concepts()[int(query_id) - 1]
        rows = [row_of[i] for i in group["img_id"].tolist()]
        assert world.satisfies(concepts, intent)[rows].all()
        assert len(rows) <= SEVERAL.train_positives


def test_fewer_candidates_are_the_own_image_decoys_and_others():
    world = generate_world(replace(SEVERAL, candidates=30, decoy_candidates=8))
    assert not world.ranks_whole_split
    row_of = {int(i): r for r, i in enumerate(world.img_ids.tolist())}
    judged = world.judgments.merge(world.queries, on="query_id")
    held_out = judged[judged["split"] != "train"]
    assert (held_out.groupby("query_id").size() == 30).all()
    decoys = 0
    for (concepts, intent), anchor, split, query_id in zip(
        world.query_concepts(),
        world.queries["anchor"],
        world.queries["split"],
        world.queries["query_id"],
        strict=True,
    ):
        if split == "train":
            continue
        group = held_out[held_out["query_id"] == query_id]
        rows = np.array([row_of[i] for i in group["img_id"].tolist()])
        assert (world.image_split[rows] == split).all()
        relevant = rows[group["label"].to_numpy() == 3]
        assert relevant.tolist() == [anchor]
        decoys += int(
            (world.carries_any_way(concepts)[rows] & ~world.satisfies(concepts, intent)[rows]).sum()
        )
    assert decoys > 4 * len(held_out["query_id"].unique())  # most queries get several


def _oracle_frame(world: SynthWorld, split: str = "test") -> pd.DataFrame:
    """A scorer that knows the truth and breaks no ties: 1 where the image carries every
    named concept in every asked modality, else the share of those (concept, modality) pairs
    it carries."""
    row_of = {int(i): r for r, i in enumerate(world.img_ids.tolist())}
    named = dict(zip(world.queries["query_id"].tolist(), world.query_concepts(), strict=True))
    test = set(world.queries.loc[world.queries["split"] == split, "query_id"].tolist())
    frame = world.judgments[world.judgments["query_id"].isin(test)].copy()
    if world.ranks_whole_split:  # every image of the split, label 0 where not judged
        pool = world.img_ids[world.image_split == split]
        q, m = np.meshgrid(sorted(test), pool, indexing="ij")
        every = pd.DataFrame({"query_id": q.ravel(), "img_id": m.ravel()})
        frame = every.merge(frame, on=["query_id", "img_id"], how="left").fillna({"label": 0})
        frame["label"] = frame["label"].astype(np.int32)
    scores = np.empty(len(frame))
    for k, (query_id, img_id) in enumerate(
        zip(frame["query_id"].tolist(), frame["img_id"].tolist(), strict=True)
    ):
        concepts, intent = named[query_id]
        modalities = ("visual", "textual") if intent == "both" else (intent,)
        pairs = [world.satisfies((c,), m)[row_of[img_id]] for c in concepts for m in modalities]
        scores[k] = np.mean(pairs)
    return frame.assign(score=scores)


@pytest.mark.parametrize("kind", ["one-concept", "several-concept", "several-candidates"])
def test_the_ceiling_is_what_eval_gives_a_scorer_that_knows_the_truth(kind, several_world):
    several = kind != "one-concept"
    world = {
        "one-concept": lambda: generate_world(SynthConfig(seed=2, images=480)),
        "several-concept": lambda: several_world,
        "several-candidates": lambda: generate_world(replace(SEVERAL, candidates=100)),
    }[kind]()
    ceiling = world.ceiling("test")
    got = evaluate_scores(_oracle_frame(world))
    assert got["queries"] == len(ceiling["per_query"])
    assert got["ndcg@10"] == pytest.approx(ceiling["ndcg@10"], abs=1e-9)
    if not several:
        # every candidate that carries the concept in the asked modality is a true match
        assert ceiling["ndcg@10"] == pytest.approx(1.0)
        return
    # Below 1: one-concept queries tie with every image carrying that concept, and two
    # images can carry the same pair.
    per = ceiling["per_query"]
    if kind == "several-candidates":  # fewer candidates, fewer ties
        assert ceiling["ndcg@10"] > several_world.ceiling("test")["ndcg@10"] + 0.1
    assert 0.3 < ceiling["ndcg@10"] < 0.95
    assert min(per.values()) < 0.3 and max(per.values()) == 1.0


def test_the_concepts_file_holds_the_truth_beside_the_folder(tmp_path):
    config = SynthConfig(seed=3, images=480, queries=120, regions=8, shown=2, labelled=2)
    out = synth(tmp_path / "data", config=config).out
    world = generate_world(config)
    path = concepts_path(out)
    assert path == tmp_path / "data.concepts.parquet"
    concepts = pd.read_parquet(path)
    assert list(concepts.columns) == [
        "kind",
        "id",
        "concept",
        "modality",
        "regions",
        "keyword",
        "ceiling",
    ]
    queries = concepts[concepts["kind"] == "query"]
    prepared = load_prepared(out)
    assert set(queries["id"]) == set(prepared.queries["query_id"])
    for query_id, (named, intent) in zip(
        world.queries["query_id"], world.query_concepts(), strict=True
    ):
        rows = queries[queries["id"] == query_id]
        modalities = ("visual", "textual") if intent == "both" else (intent,)
        assert sorted(zip(rows["concept"], rows["modality"], strict=True)) == sorted(
            (world.names[c], m) for c in named for m in modalities
        )
    ceiling = world.ceiling("test")["per_query"]
    test = queries[queries["id"].isin(list(ceiling))]
    assert np.allclose(test["ceiling"], [ceiling[i] for i in test["id"]])
    assert (
        queries.loc[
            queries["id"].isin(world.queries.query_id[world.queries.split == "train"]), "ceiling"
        ]
        .isna()
        .all()
    )
    images = concepts[concepts["kind"] == "image"]
    row_of = {int(i): r for r, i in enumerate(world.img_ids.tolist())}
    visual = images[images["modality"] == "visual"]
    assert len(visual) == 2 * 480
    for img_id, concept, cells in visual[["id", "concept", "regions"]].itertuples(index=False):
        row = row_of[img_id]
        expected = np.flatnonzero(world.region_concept[row] == world.names.index(concept))
        assert list(cells) == expected.tolist() and 1 <= len(cells) <= 2
    textual = images[images["modality"] == "textual"]
    assert (textual["keyword"] == textual["concept"]).all()
    assert len(textual) == 2 * int((world.labels[:, 0] >= 0).sum())
    # the keyword is a word of the prepared vocabulary, as the analyzer cuts it
    assert set(textual["keyword"]) <= set(prepared.vocabulary)


def test_default_settings_keep_the_folder_and_add_only_the_concepts_file_beside(tmp_path):
    from test_synth import DEFAULT_DIGESTS

    out = synth(tmp_path / "data").out
    digests = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
    assert {name: digests[name] for name in DEFAULT_DIGESTS} == DEFAULT_DIGESTS
    assert "shown" not in (out / "prepared.json").read_text()  # the options it always recorded
    beside = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert beside == ["data", "data.concepts.parquet"]
    concepts = pd.read_parquet(concepts_path(out))
    queries = concepts[concepts["kind"] == "query"]
    assert (queries.groupby("id").size() == 1).all()  # one concept, one intent a query
    assert queries["ceiling"].dropna().eq(1.0).all()


def test_the_cli_writes_a_several_concept_world_and_refuses_to_replace_its_truth(tmp_path):
    runner = CliRunner()
    out = tmp_path / "w"
    args = ["synth", str(out), "--images", "480", "--queries", "90", "--shown", "2"]
    result = runner.invoke(cli, [*args, "--labelled", "3", "--query-concepts", "2"])
    assert result.exit_code == 0, result.output
    assert f"its concepts file is {tmp_path / 'w.concepts.parquet'}" in result.output
    data = load_prepared(out)
    assert data.info["options"]["shown"] == 2 and data.info["options"]["labelled"] == 3
    assert "both" in set(data.queries["intent"])
    # the folder is gone but its truth is still there: refused, then replaced with --force
    import shutil

    shutil.rmtree(out)
    again = runner.invoke(cli, args)
    assert again.exit_code == 1 and "w.concepts.parquet already exists" in again.output
    assert not out.exists()
    assert runner.invoke(cli, [*args, "--force", "-q"]).exit_code == 0


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"shown": 5, "regions": 8}, "shown must be <= regions / 2"),
        ({"labelled": 30, "concepts": 24}, "shown and labelled must be <= concepts"),
        ({"both_intents": 2.0}, "both_intents must be a finite number from 0 to 1"),
    ],
)
def test_bad_several_concept_settings_are_config_errors(settings, message):
    with pytest.raises(ConfigError, match=message):
        SynthConfig(**settings)


def test_output_folder_error_is_what_refuses(tmp_path):
    concepts_path(tmp_path / "x").write_bytes(b"")
    with pytest.raises(OutputFolderError, match=r"x\.concepts\.parquet already exists"):
        synth(tmp_path / "x", images=480, queries=30)


def test_a_world_ranked_over_whole_splits_is_a_pool_folder(tmp_path, monkeypatch):
    import amc_data.prepare.synth as synth_module

    config = replace(SEVERAL, images=480, queries=480, candidates=500)
    monkeypatch.setattr(synth_module, "FOLD_LIMIT", 50)  # as 1,000 is to a split of 1,005
    data = load_prepared(synth(tmp_path / "pool", config=config).out)
    assert data.info["candidates"] == "split"
    images = data.images.sort_values("img_id")
    for split in ("val", "test"):  # 72 images: two folds of 36, in img_id order
        folds = images.loc[images["split"] == split, "fold"].to_numpy()
        assert folds.tolist() == [0] * 36 + [1] * 36
    assert (images.loc[images["split"] == "train", "fold"] == -1).all()
    judged = data.judgments.merge(data.queries, on="query_id")
    assert (judged[judged["split"] != "train"].groupby("query_id").size() == 1).all()
    assert "candidates" not in load_prepared(synth(tmp_path / "list", seed=1, images=480).out).info
    # too few queries to anchor every image: each query ranks the whole split as a judged list
    few = generate_world(replace(config, queries=120))
    assert not few.ranks_whole_split
    judged = few.judgments.merge(few.queries, on="query_id")
    sizes = judged[judged["split"] == "test"].groupby("query_id").size()
    assert (sizes == int((few.image_split == "test").sum())).all()
