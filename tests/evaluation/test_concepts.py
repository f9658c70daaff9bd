"""The concepts file and the per-concept report, without torch: a planted world's truth file is
read back as written and a bad one is refused with what is wrong; the report's figures are the
means and medians a user would compute by hand; the gate's weight is grouped by what the query
names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from support import planted_multi

from amc_data.errors import InputError
from amc_data.evaluation.concepts import (
    CONCEPT_COLUMNS,
    concept_report,
    gate_by_named,
    named_groups,
    read_concepts,
    relevant_pairs,
)

SMALL = planted_multi.MultiConfig(visual=6, textual=5, images=(60, 0, 20, 40))


def _write(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_parquet(path, index=False)
    return path


def _truth_frame() -> pd.DataFrame:
    """Two queries: 1 names a (visual) and b (textual); 2 names a in both modalities. Image 10
    shows a in regions 0 and 3 and is named b; image 20 shows b and is named a."""
    rows = [
        ("query", 1, "a", "visual", [], None, 0.5),
        ("query", 1, "b", "textual", [], None, 0.5),
        ("query", 2, "a", "visual", [], None, 1.0),
        ("query", 2, "a", "textual", [], None, 1.0),
        ("query", 3, "b", "textual", [], None, np.nan),
        ("image", 10, "a", "visual", [0, 3], None, np.nan),
        ("image", 10, "b", "textual", [], "b", np.nan),
        ("image", 20, "b", "visual", [1], None, np.nan),
        ("image", 20, "a", "textual", [], "a", np.nan),
    ]
    return pd.DataFrame(rows, columns=list(CONCEPT_COLUMNS))


def test_a_planted_worlds_truth_file_reads_back_as_its_truth(tmp_path):
    world = planted_multi.build_world(tmp_path / "w", SMALL)
    path = planted_multi.write_concepts(world, tmp_path / "concepts.parquet")
    truth = read_concepts(path)
    names = np.array(world.names)
    test_captions = {s for s, (row, _) in world.captions.items() if world.split[row] == "test"}
    ceiling = planted_multi.ceiling(world, "test", fold_size=40)["per_query"]
    for sentid in sorted(test_captions)[:30]:
        rows = truth.queries[truth.queries["query_id"] == sentid]
        _, concepts = world.captions[sentid]
        assert sorted(rows["concept"]) == sorted(names[list(concepts)])
        assert set(rows["modality"]) == {
            "visual" if world.is_visual(c) else "textual" for c in concepts
        }
        assert rows["ceiling"].to_numpy() == pytest.approx(ceiling[sentid])
    train = {s for s, (row, _) in world.captions.items() if world.split[row] == "train"}
    assert truth.queries[truth.queries["query_id"].isin(train)]["ceiling"].isna().all()
    visual = truth.images[truth.images["modality"] == "visual"]
    for img_id, concept, cells in visual.head(50)[["img_id", "concept", "regions"]].itertuples(
        index=False, name=None
    ):
        c = world.names.index(concept)
        assert list(cells) == np.flatnonzero(world.cell_concept[img_id] == c).tolist()
    textual = truth.images[truth.images["modality"] == "textual"]
    assert (textual["keyword"] == textual["concept"]).all()
    assert len(textual) == world.split.size  # one textual concept an image
    # the decoys are no concept an image carries
    decoy = names[world.decoy_name[0]]
    assert decoy not in set(truth.images[truth.images["img_id"] == 0]["concept"])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda f: f.drop(columns=["regions"]), "lacks the column(s) regions"),
        (lambda f: f.assign(modality="audio"), "column modality holds audio"),
        (lambda f: f.assign(kind="caption"), "column kind holds caption"),
        (
            lambda f: f.assign(keyword=[*f["keyword"][:-1], None]),
            "row 8 (image 20, textual concept a) has no keyword",
        ),
    ],
)
def test_a_bad_concepts_file_is_refused_with_what_is_wrong(tmp_path, change, message):
    path = _write(change(_truth_frame()), tmp_path / "c.parquet")
    with pytest.raises(InputError, match=r"concepts file .*c\.parquet") as caught:
        read_concepts(path)
    assert message in str(caught.value)


def test_a_file_that_is_not_parquet_is_refused(tmp_path):
    path = tmp_path / "c.parquet"
    path.write_text("kind,id\nquery,1\n")
    with pytest.raises(InputError, match=r"Cannot read the concepts file .* as Parquet"):
        read_concepts(path)


def test_the_pairs_are_the_relevant_images_carrying_each_named_concept(tmp_path):
    truth = read_concepts(_write(_truth_frame(), tmp_path / "c.parquet"))
    judgments = pd.DataFrame(
        {
            "query_id": [1, 1, 2, 2, 3],
            "img_id": [10, 20, 10, 20, 20],
            "label": [3, 0, 0, 3, 3],
        }
    )
    pairs = relevant_pairs(truth, judgments, np.array([1, 2, 3]))
    got = sorted(
        pairs[["query_id", "img_id", "concept", "modality"]].itertuples(index=False, name=None)
    )
    # query 2's image 20 is named a but does not show it; query 3's image 20 is not named b
    assert got == [(1, 10, "a", "visual"), (1, 10, "b", "textual"), (2, 20, "a", "textual")]
    assert list(pairs.loc[pairs["modality"] == "visual", "regions"].iloc[0]) == [0, 3]


def test_the_report_is_per_concept_and_modality_weakest_first(tmp_path):
    truth = read_concepts(_write(_truth_frame(), tmp_path / "c.parquet"))
    per_query = pd.DataFrame({"query_id": [1, 2, 3], "ndcg@10": [0.25, 0.9, 0.4]})
    measured = pd.DataFrame(
        {
            "query_id": [1, 1, 2, 2],
            "img_id": [10, 10, 20, 30],
            "concept": ["a", "b", "a", "a"],
            "modality": ["visual", "textual", "textual", "textual"],
            "mass": [0.6, 0.1, 0.8, 0.4],
            "chance": [0.25, 0.05, 0.05, 0.1],
            "visual_weight": [0.7, 0.7, 0.2, 0.4],
        }
    )
    report = concept_report(per_query, truth, measured).set_index(["concept", "modality"])
    assert report.loc[("a", "visual"), "queries"] == 2
    assert report.loc[("a", "visual"), "ndcg@10"] == pytest.approx((0.25 + 0.9) / 2)
    assert report.loc[("a", "visual"), "share"] == pytest.approx(0.575 / 0.75)
    assert report.loc[("a", "textual"), "share"] == pytest.approx(0.9)
    assert report.loc[("a", "textual"), "pairs"] == 2
    assert report.loc[("a", "textual"), "mass"] == pytest.approx(0.6)  # median of 0.8, 0.4
    assert report.loc[("a", "textual"), "visual_weight"] == pytest.approx(0.3)
    assert report.loc[("a", "visual"), "mass"] == pytest.approx(0.6)
    assert report.loc[("a", "visual"), "chance"] == pytest.approx(0.25)
    assert report.loc[("b", "textual"), "queries"] == 2  # queries 1 and 3
    # query 3 has no ceiling: b's ceiling is the mean of what is known
    assert report.loc[("b", "textual"), "ceiling"] == pytest.approx(0.5)
    assert report.loc[("b", "textual"), "share"] == pytest.approx(0.325 / 0.5)
    order = list(
        concept_report(per_query, truth, measured)[["concept", "modality"]].itertuples(
            index=False, name=None
        )
    )
    assert order == [("b", "textual"), ("a", "visual"), ("a", "textual")]
    # without attention figures (a model with none), NaN, and the NDCG figures stand
    plain = concept_report(per_query, truth).set_index(["concept", "modality"])
    assert plain["mass"].isna().all() and (plain["pairs"] == 0).all()
    assert plain.loc[("a", "visual"), "share"] == pytest.approx(0.575 / 0.75)


def test_the_mass_alone_leaves_out_queries_naming_another_concept_in_that_modality(tmp_path):
    # Query 5 names a and b visually: the attention rightly splits between their regions, and a
    # model that finds both gives each about half. a's mass over every pair mixes that split
    # in; alone, over query 4 (a only), it says whether the attention finds a.
    frame = _truth_frame()
    frame.loc[len(frame)] = ("query", 4, "a", "visual", [], None, 1.0)
    frame.loc[len(frame)] = ("query", 5, "a", "visual", [], None, 1.0)
    frame.loc[len(frame)] = ("query", 5, "b", "visual", [], None, 1.0)
    truth = read_concepts(_write(frame, tmp_path / "c.parquet"))
    per_query = pd.DataFrame({"query_id": [1, 2, 3, 4, 5], "ndcg@10": 0.5})
    measured = pd.DataFrame(
        {
            "query_id": [4, 4, 5, 5, 5, 5],
            "img_id": [10, 11, 12, 13, 12, 13],
            "concept": ["a", "a", "a", "a", "b", "b"],
            "modality": "visual",
            "mass": [0.9, 0.7, 0.3, 0.2, 0.6, 0.7],
            "chance": 0.25,
            "visual_weight": 0.8,
        }
    )
    report = concept_report(per_query, truth, measured).set_index(["concept", "modality"])
    assert report.loc[("a", "visual"), "mass"] == pytest.approx(0.5)  # median of all four
    assert report.loc[("a", "visual"), "pairs_alone"] == 2
    assert report.loc[("a", "visual"), "mass_alone"] == pytest.approx(0.8)  # query 4's
    # b is named visually only beside a (query 5): nothing to measure it alone on
    assert report.loc[("b", "visual"), "pairs_alone"] == 0
    assert np.isnan(report.loc[("b", "visual"), "mass_alone"])
    assert report.loc[("b", "visual"), "mass"] == pytest.approx(0.65)
    # without attention figures, NaN and no pairs
    plain = concept_report(per_query, truth).set_index(["concept", "modality"])
    assert plain["mass_alone"].isna().all() and (plain["pairs_alone"] == 0).all()


def test_the_gate_weight_is_grouped_by_what_the_query_names(tmp_path):
    frame = _truth_frame()
    frame.loc[len(frame)] = ("query", 4, "a", "visual", [], None, 1.0)
    truth = read_concepts(_write(frame, tmp_path / "c.parquet"))
    groups = named_groups(truth, np.array([1, 2, 3, 4]))
    assert groups.to_dict() == {1: "both", 2: "both", 3: "textual_only", 4: "visual_only"}
    measured = pd.DataFrame(
        {
            "query_id": [1, 1, 2, 3, 4, 4],
            "img_id": [10, 10, 20, 20, 10, 11],
            "concept": ["a", "b", "a", "b", "a", "a"],
            "modality": ["visual", "textual", "textual", "textual", "visual", "visual"],
            "mass": 0.5,
            "chance": 0.1,
            "visual_weight": [0.6, 0.6, 0.4, 0.1, 0.9, 0.7],
        }
    )
    gate = gate_by_named(truth, measured)
    assert gate == pytest.approx(
        {
            "gate_visual_weight_visual_only": 0.8,
            "gate_queries_visual_only": 1.0,
            "gate_visual_weight_textual_only": 0.1,
            "gate_queries_textual_only": 1.0,
            "gate_visual_weight_both": 0.5,
            "gate_queries_both": 2.0,
        }
    )
    assert gate_by_named(truth, measured.assign(visual_weight=np.nan)) == {}
