"""`amc-data eval RUN --concepts FILE` on a several-concept synth world: concepts.parquet in the
eval folder holds, per concept and modality, the figures computed from the world's truth and
the model's own attention; the weakest concepts and the gate's weight by what the query names
are printed; the run folder's rules know the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import amc_data  # noqa: E402
from amc_data.prepare import load_prepared  # noqa: E402
from amc_data.prepare.synth import SynthConfig, concepts_path, generate_world  # noqa: E402
from amc_data.ranking.checkpoint import load_model  # noqa: E402
from amc_data.ranking.data import image_batch, query_batch  # noqa: E402
from amc_data.ranking.runs import evaluate  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

WORLD = SynthConfig(
    seed=2,
    images=720,
    queries=900,
    concepts=8,
    shown=2,
    labelled=2,
    query_concepts=2,
    candidates=1000,  # the whole split
)
FAST = {"epochs": 4, "dim": 32, "device": "cpu"}
COLUMNS = [
    "concept",
    "modality",
    "queries",
    "ndcg@10",
    "ceiling",
    "share",
    "pairs",
    "mass",
    "chance",
    "visual_weight",
    "pairs_alone",
    "mass_alone",
]


@pytest.fixture(scope="module")
def world_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("concepts")
    data = amc_data.synth(root / "data", config=WORLD).out
    train(data, root / "amc", TrainConfig(**FAST))
    train(data, root / "visual", TrainConfig(**{**FAST, "epochs": 1, "model": "visual"}))
    return data, root / "amc", root / "visual"


@pytest.fixture(scope="module")
def evaluated(world_runs, tmp_path_factory) -> tuple[Path, str]:
    data, amc, visual = world_runs
    out = tmp_path_factory.mktemp("eval") / "out"
    args = [str(amc), str(visual), "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(cli, ["eval", *args, "--concepts", str(concepts_path(data))])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_concepts_parquet_holds_each_named_concept_with_the_truths_figures(world_runs, evaluated):
    out, _ = evaluated
    world = generate_world(WORLD)
    report = pd.read_parquet(out / "amc" / "concepts.parquet")
    assert list(report.columns) == COLUMNS
    # one row per (concept, modality) the test queries name, counted from the world itself
    test = world.queries["split"] == "test"
    named: dict[tuple[str, str], set[int]] = {}
    alone: dict[tuple[str, str], set[int]] = {}  # ... by queries naming no other concept there
    for query_id, (concepts, intent) in zip(
        world.queries["query_id"][test],
        [q for q, t in zip(world.query_concepts(), test, strict=True) if t],
        strict=True,
    ):
        for c in concepts:
            for modality in ("visual", "textual"):
                if intent in (modality, "both"):
                    named.setdefault((world.names[c], modality), set()).add(int(query_id))
                    if len(concepts) == 1:
                        alone.setdefault((world.names[c], modality), set()).add(int(query_id))
    got = report.set_index(["concept", "modality"])
    assert set(got.index) == set(named)
    per_query = pd.read_parquet(out / "amc" / "per_query.parquet").set_index("query_id")
    ceiling = world.ceiling("test")["per_query"]
    for key, queries in named.items():
        row = got.loc[key]
        assert row["queries"] == len(queries)
        assert row["ndcg@10"] == pytest.approx(per_query.loc[sorted(queries), "ndcg@10"].mean())
        assert row["ceiling"] == pytest.approx(np.mean([ceiling[q] for q in queries]))
        assert row["share"] == pytest.approx(row["ndcg@10"] / row["ceiling"])
        # one relevant image a query, which carries what it names
        assert row["pairs"] == len(queries)
        assert 0 <= row["mass"] <= 1 and 0 < row["chance"] < 1
        assert row["pairs_alone"] == len(alone.get(key, ()))
        assert np.isnan(row["mass_alone"]) == (key not in alone)
    assert 0 < sum(map(len, alone.values())) < sum(map(len, named.values()))
    # weakest first
    assert report["share"].is_monotonic_increasing
    # a model without attention gets the NDCG figures and no attention ones
    plain = pd.read_parquet(out / "visual" / "concepts.parquet")
    assert plain["mass"].isna().all() and plain["ndcg@10"].notna().all()


def test_the_attention_mass_is_the_models_own_on_the_truths_regions_and_keyword(world_runs):
    """Recomputed from `model.explain` and the world's truth (not the concepts file): the mass
    on the regions that show the concept, and on the keyword slot of its name."""
    from amc_data.evaluation.concepts import read_concepts, relevant_pairs
    from amc_data.ranking.concepts import attention_on_concepts

    data, amc, _ = world_runs
    prepared = load_prepared(data)
    world = generate_world(WORLD)
    loaded = load_model(amc, prepared, "cpu")
    truth = read_concepts(concepts_path(data))
    test = world.queries.loc[world.queries["split"] == "test", "query_id"].to_numpy()
    pairs = relevant_pairs(truth, prepared.judgments, test)
    measured = attention_on_concepts(loaded.model, prepared, pairs)
    row_of = {int(i): r for r, i in enumerate(world.img_ids.tolist())}
    for k in range(0, len(pairs), max(1, len(pairs) // 12)):
        pair = pairs.iloc[k]
        query = query_batch(prepared, np.array([pair["query_id"]]))
        images = image_batch(prepared, np.array([pair["img_id"]])).map(lambda t: t[None])
        with torch.no_grad():
            attention = loaded.model.explain(query, images)
        concept = world.names.index(pair["concept"])
        if pair["modality"] == "visual":
            cells = world.region_concept[row_of[int(pair["img_id"])]] == concept
            expected = float(attention.region_weights[0, 0].numpy()[cells].sum())
        else:
            word = prepared.vocabulary.index(world.names[concept]) + 1
            expected = float(attention.keyword_weights[0, 0][images.keywords[0, 0] == word].sum())
        assert measured["mass"].iloc[k] == pytest.approx(expected, abs=1e-6)
        assert measured["visual_weight"].iloc[k] == pytest.approx(
            float(attention.modality_weights[0, 0, 0]), abs=1e-6
        )


def test_a_trained_amc_looks_at_its_concepts_and_its_gate_follows_the_query(evaluated):
    """On synth the intent words say the modality, and AMC learns both: the attention on a
    concept's own regions or keyword is well above chance, and the visual weight is far higher
    for queries naming visual concepts only than for those naming textual ones only."""
    out, printed = evaluated
    report = pd.read_parquet(out / "amc" / "concepts.parquet")
    assert (report["mass"] / report["chance"]).median() > 2
    assert (report["mass"] > report["chance"]).mean() >= 0.75
    metrics = json.loads((out / "amc" / "metrics.json").read_text())
    visual, textual = (
        metrics["gate_visual_weight_visual_only"],
        metrics["gate_visual_weight_textual_only"],
    )
    assert visual > textual + 0.2
    assert textual < metrics["gate_visual_weight_both"] < visual
    assert metrics["gate_queries_visual_only"] > 0 and metrics["gate_queries_both"] > 0
    # printed: the weakest concepts of each run, and the gate line of the gated one
    assert "amc: the concepts of lowest share of the ceiling" in printed
    assert "visual: the concepts of lowest share of the ceiling" in printed
    weakest = report.iloc[0]
    assert f"{weakest['concept']}" in printed.split("amc: the concepts")[1]
    assert "amc: visual modality weight (queries) by what the query names: visual concepts " in (
        printed
    )
    assert f"only {visual:.2f}" in printed
    assert "visual: visual modality weight" not in printed  # no gate, no line


def test_train_force_removes_an_eval_folder_holding_the_concept_report(world_runs, tmp_path):
    data, _, _ = world_runs
    run = tmp_path / "run"
    config = TrainConfig(**{**FAST, "epochs": 1})
    train(data, run, config)
    evaluate([run], data, concepts=concepts_path(data), random_baseline=False, device="cpu")
    assert (run / "eval-test" / "concepts.parquet").is_file()
    train(data, run, config, force=True)
    assert not (run / "eval-test").exists()


def test_an_eval_without_concepts_leaves_no_earlier_report_beside_its_metrics(world_runs, tmp_path):
    data, amc, _ = world_runs
    out = tmp_path / "out"
    evaluate([amc], data, out=out, concepts=concepts_path(data), random_baseline=False)
    assert (out / "amc" / "concepts.parquet").is_file()
    evaluate([amc], data, out=out, random_baseline=False)
    assert not (out / "amc" / "concepts.parquet").exists()
    assert "gate_visual_weight_both" not in json.loads((out / "amc" / "metrics.json").read_text())


def test_a_bad_concepts_file_stops_eval_before_scoring(world_runs, tmp_path):
    data, amc, _ = world_runs
    bad = tmp_path / "c.parquet"
    pd.DataFrame({"kind": ["query"], "id": [1]}).to_parquet(bad)
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(amc),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "--concepts",
            str(bad),
        ],
    )
    assert result.exit_code == 1
    assert f"The concepts file {bad} lacks the column(s) concept, modality" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "o").exists()


def test_the_several_concept_coco_world_reports_through_its_own_concepts_file(tmp_path):
    """The other planted world (COCO-shaped, ranked over the whole test pool): its writer's
    file gives each concept the mean ceiling of the captions naming it, and every caption's
    relevant image carries what it names, so each is measured once per concept."""
    from support import planted_multi

    config = planted_multi.MultiConfig(visual=12, textual=10, images=(600, 0, 100, 300))
    world, prepared = planted_multi.prepare_world(tmp_path / "world", config)
    path = planted_multi.write_concepts(world, tmp_path / "concepts.parquet")
    train(prepared, tmp_path / "amc", TrainConfig(**{**FAST, "epochs": 1}))
    evaluation = evaluate([tmp_path / "amc"], prepared, concepts=path, random_baseline=False)
    report = evaluation.runs[0].concepts.set_index(["concept", "modality"])
    ceiling = planted_multi.ceiling(world, "test", fold_size=300)["per_query"]
    naming: dict[tuple[str, str], list[int]] = {}
    for sentid, (row, concepts) in world.captions.items():
        if world.split[row] == "test":
            for c in concepts:
                modality = "visual" if world.is_visual(c) else "textual"
                naming.setdefault((world.names[c], modality), []).append(sentid)
    assert set(report.index) == set(naming)
    for key, sentids in naming.items():
        assert report.loc[key, "queries"] == len(sentids) == report.loc[key, "pairs"]
        assert report.loc[key, "ceiling"] == pytest.approx(np.mean([ceiling[s] for s in sentids]))
    visual = report.xs("visual", level="modality")
    assert (visual["chance"] <= 3 / 49 + 1e-9).all()  # 1-3 of the 7 x 7 cells
    metrics = evaluation.runs[0].metrics
    assert metrics["gate_queries_both"] > metrics["gate_queries_visual_only"] > 0
