"""`amc-data eval RUN ... --data DATA` and `amc-data demo`: runs side by side with a random row
and paired tests, the files each run gets, the pictures, refusals, and the demo end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

import amc_data  # noqa: E402
from amc_data.errors import CheckpointError, ConfigError  # noqa: E402
from amc_data.ranking.eval_config import EvalConfig  # noqa: E402
from amc_data.ranking.runs import evaluate  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

SMALL = {"images": 240, "queries": 90}
FAST = {"epochs": 2, "batch_size": 32, "dim": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    amc_data.synth(data, seed=5, **SMALL)
    train(data, root / "amc", TrainConfig(**FAST))
    train(data, root / "visual", TrainConfig(**{**FAST, "model": "visual"}))
    return data, root / "amc", root / "visual"


def test_two_runs_side_by_side_with_a_random_row_and_files_per_run(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, amc, visual = trained
    result = evaluate([amc, visual], data, out=tmp_path / "out", json_path=tmp_path / "all.json")
    names = [run.name for run in result.runs]
    assert sorted(names) == ["amc", "random", "visual"] and names[-1] == "random"
    for name in ("amc", "visual"):
        metrics = json.loads((tmp_path / "out" / name / "metrics.json").read_text())
        for key in (
            "ndcg@5",
            "ndcg@10",
            "ndcg@15",
            "ndcg@20",
            "ndcg@25",
            "dcg@25_challenge",
            "auc",
        ):
            assert 0 <= metrics[key] <= 1
        scores = pd.read_parquet(tmp_path / "out" / name / "scores.parquet")
        assert list(scores.columns) == ["query_id", "img_id", "score", "label"]
        prepared = amc_data.load_prepared(data)
        test_queries = set(prepared.split_queries("test")["query_id"])
        assert set(scores["query_id"]) == test_queries
        judged = prepared.judgments[prepared.judgments["query_id"].isin(test_queries)]
        assert len(scores) == len(judged)
    table = json.loads((tmp_path / "all.json").read_text())
    assert set(table) == {"amc", "visual", "random"}
    assert "p_randomization_vs_best" in table["random"]
    best = result.best
    others = [r for r in result.runs if r.name != best]
    assert all(r.p_randomization is not None and 0 < r.p_randomization <= 1 for r in others)
    table = result.table()
    trained = [row["ndcg@10"] for name, row in table.items() if name != "random"]
    assert table[best]["ndcg@10"] == max(trained)


def test_by_default_results_land_in_each_run_folder(trained: tuple[Path, Path, Path]) -> None:
    data, amc, _ = trained
    evaluate([amc], data, split="val", random_baseline=False)
    assert (amc / "eval-val" / "metrics.json").is_file()


def test_plots_are_written_and_readable(trained: tuple[Path, Path, Path], tmp_path: Path) -> None:
    data, amc, visual = trained
    result = evaluate([amc, visual], data, plot_dir=tmp_path / "plots", examples=2)
    roc = tmp_path / "plots" / "roc.png"
    attention = sorted((tmp_path / "plots").glob("attention-*.png"))
    assert roc in result.plots and len(attention) == 2
    for path in [roc, *attention]:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 400 and image.height >= 300
    records = json.loads((tmp_path / "plots" / "attention.json").read_text())
    assert len(records) == 2
    for record in records:
        assert abs(record["modality"]["visual"] + record["modality"]["keyword"] - 1) < 1e-4
        assert abs(sum(record["regions"]) - 1) < 1e-3


def test_a_run_trained_on_other_data_is_refused(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, amc, _ = trained
    other = tmp_path / "other"
    amc_data.synth(other, seed=6, **SMALL)
    with pytest.raises(CheckpointError, match="vocabulary"):
        evaluate([amc], other)


def test_a_config_and_keyword_options_give_the_same_evaluation(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, amc, visual = trained
    config = EvalConfig(split="val", resamples=500, seed=3, out=tmp_path / "a", relevant=2)
    by_config = evaluate([amc, visual], data, config)
    by_keywords = evaluate(
        [amc, visual], data, split="val", resamples=500, seed=3, out=str(tmp_path / "b"), relevant=2
    )
    assert pd.DataFrame(by_config.table()).equals(pd.DataFrame(by_keywords.table()))
    assert by_config.best == by_keywords.best and by_config.split == "val"
    for run in ("amc", "visual"):
        assert (tmp_path / "a" / run / "metrics.json").read_bytes() == (
            tmp_path / "b" / run / "metrics.json"
        ).read_bytes()
    assert not (tmp_path / "a" / "random").exists()  # the random row writes no files
    # Keywords change the config's fields; a name that is not one is refused.
    changed = evaluate([amc], data, config, random_baseline=False)
    assert [run.name for run in changed.runs] == ["amc"] and changed.split == "val"
    with pytest.raises(TypeError, match="splits"):
        evaluate([amc], data, splits="val")


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"split": "dev"}, "split must be one of test, val, train, not 'dev'."),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, not 'tpu'."),
        ({"examples": -1}, "examples must be a whole number >= 0, not -1."),
        ({"relevant": 0}, "relevant must be a whole number >= 1, not 0."),
        ({"resamples": 0}, "resamples must be a whole number >= 1, not 0."),
        ({"seed": 1.5}, "seed must be a whole number, not 1.5."),
        ({"max_rows": 0}, "max_rows must be a whole number >= 1, not 0."),
        ({"random_baseline": "no"}, "random_baseline must be True or False, not 'no'."),
    ],
)
def test_eval_options_are_checked_once_naming_the_parameter(changes: dict, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        EvalConfig(**changes)
    assert str(caught.value) == words
    assert caught.value.parameter == next(iter(changes))


def test_evaluate_refuses_a_bad_split_by_its_parameter_name(
    trained: tuple[Path, Path, Path],
) -> None:
    data, amc, _ = trained
    with pytest.raises(ConfigError, match=r"^split must be one of test, val, train") as caught:
        evaluate([amc], data, split="dev")
    assert caught.value.parameter == "split"


def test_cli_eval_prints_one_table_and_writes_json(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, amc, visual = trained
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(amc),
            str(visual),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "o"),
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:2] == ["run", "model"] and "best" in result.output
    assert any(line.startswith("amc") for line in lines)
    assert any(line.startswith("random") for line in lines)
    assert json.loads((tmp_path / "m.json").read_text()).keys() == {"amc", "visual", "random"}


@pytest.mark.slow
def test_demo_end_to_end_at_a_reduced_size(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["demo", str(tmp_path / "demo"), "--images", "240", "--queries", "90", "--epochs", "2"]
    )
    assert result.exit_code == 0, result.output
    for kind in ("amc", "visual", "keyword", "fusion", "cca"):
        assert (tmp_path / "demo" / "runs" / kind / "best.pt").is_file()
        assert f"\n{kind}" in result.output or result.output.startswith(kind)
    assert (tmp_path / "demo" / "plots" / "roc.png").stat().st_size > 10_000
    assert "AMC ranks best" in result.output or "AMC did NOT rank best" in result.output
    table = json.loads((tmp_path / "demo" / "eval" / "metrics.json").read_text())
    assert np.isfinite(table["amc"]["ndcg@10"])


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A small prepared COCO folder (test split in five folds) and a run trained on it."""
    from support.prepare_helpers import encoded_coco, save_features

    from amc_data.prepare.coco import CocoConfig, prepare_coco

    root = tmp_path_factory.mktemp("coco")
    made = encoded_coco(root / "data", {"train": 40, "restval": 5, "val": 10, "test": 25})
    ids = np.array([image.imgid for image in made.images], dtype=np.int64)
    features, ids_path = save_features(root, "features", ids, regions=4, dim=6)
    prepared = root / "prepared"
    prepare_coco(
        features,
        ids_path,
        prepared,
        data_dir=root / "data",
        config=CocoConfig(fold_size=5, min_query_count=1),
    )
    train(prepared, root / "run", TrainConfig(**{**FAST, "epochs": 1}))
    return prepared, root / "run"


def test_coco_auc_and_the_random_row_cover_every_caption_image_pair(
    coco: tuple[Path, Path],
) -> None:
    from sklearn.metrics import roc_auc_score

    from amc_data.ranking.checkpoint import load_model
    from amc_data.ranking.scoring import score_matrix

    prepared_path, run = coco
    result = evaluate([run], prepared_path, resamples=200)
    prepared = amc_data.load_prepared(prepared_path)
    captions = np.sort(prepared.split_queries("test")["query_id"].to_numpy())
    images = np.sort(prepared.images.loc[prepared.images["split"] == "test", "img_id"].to_numpy())
    matrix = _kernel_matrix(prepared_path, run, "test")
    model_matrix = score_matrix(load_model(run, prepared).model, prepared, captions, images)
    _assert_the_model_s_ranking(matrix, model_matrix)
    own = prepared.judgments.set_index("query_id").loc[captions, "img_id"].to_numpy()
    relevant = images[None, :] == own[:, None]  # (captions, images)
    amc = next(r for r in result.runs if r.kind == "amc")
    assert amc.metrics["auc"] == pytest.approx(roc_auc_score(relevant.ravel(), matrix.ravel()))
    caption_keys = [k for k in amc.metrics if k.startswith(("i2t_", "t2i_"))]
    assert any("r@1" in k for k in caption_keys) and any("medr" in k for k in caption_keys)
    random = next(r for r in result.runs if r.kind == "random")
    # A random ranker over the whole split: AUC near 0.5, NDCG@10 at chance, not AMC's top-100.
    assert abs(random.metrics["auc"] - 0.5) < 0.15
    assert len(random.scores) >= len(captions) * min(100, len(images))


def test_a_checkpoint_file_s_results_go_beside_it(trained: tuple[Path, Path, Path]) -> None:
    data, amc, _ = trained
    result = CliRunner().invoke(
        cli,
        [
            "eval",
            str(amc / "last.pt"),
            "--data",
            str(data),
            "--device",
            "cpu",
            "--quiet",
            "--resamples",
            "100",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (amc / "last-eval-test" / "metrics.json").is_file()
    assert (amc / "last-eval-test" / "scores.parquet").is_file()


# The dense kernel's scores are the model's within float32 rounding, not bit for bit: this is
# the tolerance it is held to (tests/ranking/test_kernel.py has the same, relative).
SCORE_TOLERANCE = 1e-5


def _kernel_matrix(prepared_path: Path, run: Path, split: str) -> np.ndarray:
    """The whole (captions ascending, images ascending) matrix of the very tiles eval scores
    (the same scorer, queries in the same order, the same tile grid)."""
    from amc_data.ranking.checkpoint import load_model
    from amc_data.ranking.kernel import PoolScorer, row_order
    from amc_data.ranking.runs import _Pool

    prepared = amc_data.load_prepared(prepared_path)
    pool = _Pool.of(prepared, split)
    order = row_order(pool.queries, pool.images, pool.judged)
    scorer = PoolScorer(load_model(run, prepared).model, prepared, order, pool.images)
    matrix = np.full((len(order), len(pool.images)), np.nan, dtype=np.float32)
    for rows, cols, tile in scorer.tiles():
        matrix[rows, cols] = tile
    return matrix[np.argsort(order)]


def _assert_the_model_s_ranking(kernel: np.ndarray, model: np.ndarray) -> None:
    """The kernel's scores are the model's own (`score_pool`) within `SCORE_TOLERANCE`, so each
    query ranks the images as the model does wherever the model's scores differ by more than
    twice it (captions whose words are the same bag tie mathematically: the two paths may order
    them differently by rounding)."""
    np.testing.assert_allclose(kernel, model, rtol=0, atol=SCORE_TOLERANCE)
    apart = model[:, :, None] - model[:, None, :] > 2 * SCORE_TOLERANCE
    assert (kernel[:, :, None] > kernel[:, None, :])[apart].all()


def _whole_matrix_metrics(prepared_path: Path, run: Path, split: str, relevant: int) -> dict:
    """The metrics of a whole-split ranking computed from the whole score matrix, as eval
    computed them before scoring in tiles (the reference), from the very scores of the tiles;
    those are the model's own within `SCORE_TOLERANCE` (checked)."""
    from amc_data.evaluation.metrics import caption_ranking, matrix_auc, ranking_metrics
    from amc_data.ranking.checkpoint import load_model
    from amc_data.ranking.runs import _Pool
    from amc_data.ranking.scoring import pool_frame, score_matrix

    prepared = amc_data.load_prepared(prepared_path)
    pool = _Pool.of(prepared, split)
    matrix = _kernel_matrix(prepared_path, run, split)
    model = load_model(run, prepared).model
    _assert_the_model_s_ranking(matrix, score_matrix(model, prepared, pool.queries, pool.images))
    frame = pool_frame(matrix, pool.queries, pool.images, pool.judged)
    metrics = ranking_metrics(
        frame["query_id"], frame["score"], frame["label"], relevant=relevant
    ).summary()
    rows = np.searchsorted(pool.queries, pool.judged["query_id"])
    cols = np.searchsorted(pool.images, pool.judged["img_id"])
    is_relevant = pool.judged["label"].to_numpy() >= relevant
    metrics["auc"] = matrix_auc(matrix, rows[is_relevant], cols[is_relevant])
    own = pool.judged[pool.judged["label"] > 0].drop_duplicates("query_id")
    own_rows = np.searchsorted(pool.queries, own["query_id"])
    own_cols = np.searchsorted(pool.images, own["img_id"])
    metrics |= caption_ranking(matrix[own_rows].T, own_cols, image_folds=pool.folds).summary()
    return {"metrics": metrics, "frame": frame}


@pytest.mark.parametrize(("split", "relevant"), [("test", 1), ("val", 1), ("test", 2)])
def test_coco_metrics_scored_in_tiles_equal_those_of_the_whole_matrix(
    coco: tuple[Path, Path], tmp_path: Path, split: str, relevant: int
) -> None:
    prepared_path, run = coco
    evaluate([run], prepared_path, split=split, relevant=relevant, out=tmp_path, resamples=50)
    written = json.loads((tmp_path / run.name / "metrics.json").read_text())
    reference = _whole_matrix_metrics(prepared_path, run, split, relevant)
    expected = {k: v if np.isfinite(v) else None for k, v in reference["metrics"].items()}
    assert written.pop("ndcg_gain") == "exp"
    prepared = amc_data.load_prepared(prepared_path)
    images = prepared.images[prepared.images["split"] == split]
    assert written.pop("caption_pool_images") == len(images)
    if split == "test":  # five folds of 5 (CocoConfig.fold_size, recorded in prepared.json)
        assert (written.pop("caption_folds"), written.pop("caption_fold_size")) == (5, 5)
    assert written.keys() == expected.keys()
    for key, value in expected.items():
        assert written[key] == (None if value is None else pytest.approx(value, abs=1e-6)), key
    scores = pd.read_parquet(tmp_path / run.name / "scores.parquet")
    merged = scores.merge(reference["frame"], on=["query_id", "img_id"], how="outer")
    assert len(merged) == len(scores) == len(reference["frame"])
    np.testing.assert_allclose(merged["score_x"], merged["score_y"], rtol=1e-6)
    assert (merged["label_x"] == merged["label_y"]).all()


def test_coco_eval_never_builds_the_whole_score_matrix(
    coco: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import amc_data.ranking.runs as runs
    import amc_data.ranking.scoring as scoring

    def whole_matrix(*args: object, **kwargs: object) -> None:
        raise AssertionError("the whole (queries, images) matrix was built")

    monkeypatch.setattr(scoring, "score_matrix", whole_matrix)
    monkeypatch.setattr(runs, "score_matrix", whole_matrix, raising=False)
    prepared_path, run = coco
    result = evaluate([run], prepared_path, resamples=50)
    assert np.isfinite(result.runs[0].metrics["auc"])
    prepared = amc_data.load_prepared(prepared_path)
    from amc_data.ranking.checkpoint import load_model
    from amc_data.ranking.scoring import score_split

    frame = score_split(load_model(run, prepared).model, prepared, "val", keep=3)
    captions = prepared.split_queries("val")["query_id"]
    assert set(frame["query_id"]) == set(captions)
    assert len(frame) >= 3 * len(captions)


def test_coco_eval_prints_one_caption_table_per_protocol_named_in_its_header(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    prepared, run = coco
    base = ["eval", str(run), "--data", str(prepared), "--device", "cpu", "--quiet"]
    base += ["--resamples", "50", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, base)
    assert result.exit_code == 0, result.output
    assert "Caption ranking, the mean over 5 folds of 5 images" in result.output
    assert "Caption ranking, the whole pool of 25 images" in result.output
    assert "i2t R@10" in result.output and "t2i R@5" in result.output and "rsum" in result.output
    metrics = json.loads((tmp_path / "o" / "run" / "metrics.json").read_text())
    for protocol, old in (("pool", "25"), ("folds", "5")):
        assert metrics[f"t2i_r@5_{protocol}"] == metrics[f"t2i_r@5_{old}"]  # old keys kept
        assert f"{metrics[f'rsum_{protocol}']:.1f}" in result.output
    for fmt, mark in (
        ("markdown", "|---|---|"),
        ("latex", r"\begin{tabular}"),
        ("csv", "run,model"),
    ):
        shown = CliRunner().invoke(cli, [*base, "--format", fmt])
        assert shown.exit_code == 0, shown.output
        assert mark in shown.output and "whole pool of 25 images" in shown.output


def test_ablation_rows_name_their_ablations(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, amc, _ = trained
    train(data, tmp_path / "amc-flat", TrainConfig(**{**FAST, "epochs": 1, "inter": False}))
    args = ["eval", str(amc), str(tmp_path / "amc-flat"), "--data", str(data), "--quiet"]
    args += ["--device", "cpu", "--resamples", "50", "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line}
    assert "amc (no-inter)" in rows["amc-flat"] and "no-" not in rows["amc"]


def test_per_query_metrics_and_the_word_report_are_written(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    data, amc, _ = trained
    args = ["eval", str(amc), "--data", str(data), "--device", "cpu", "--quiet"]
    args += ["--resamples", "50", "--out", str(tmp_path / "o"), "--words", "3"]
    result = CliRunner().invoke(cli, [*args, "--word-min-queries", "2"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "o" / "amc" / "metrics.json").read_text())
    per_query = pd.read_parquet(tmp_path / "o" / "amc" / "per_query.parquet")
    assert len(per_query) == metrics["queries"]
    assert per_query["ndcg@10"].mean() == pytest.approx(metrics["ndcg@10"])
    assert {"first_relevant_rank", "r@1", "r@5", "r@10"} <= set(per_query.columns)
    words = pd.read_parquet(tmp_path / "o" / "amc" / "words.parquet")
    assert list(words.columns) == ["word", "queries", "ndcg@10"] and len(words)
    assert (words["queries"] >= 2).all() and words["ndcg@10"].is_monotonic_increasing
    assert "query words of lowest mean NDCG@10" in result.output
    assert words["word"].iloc[0] in result.output


def test_coco_trec_files_give_amc_data_s_recall_and_ndcg_in_ranx(
    coco: tuple[Path, Path], tmp_path: Path
) -> None:
    ranx = pytest.importorskip("ranx")
    prepared, run = coco
    result = evaluate([run], prepared, trec=tmp_path / "trec", trec_depth=10, out=tmp_path / "o")
    metrics = next(r for r in result.runs if r.name == "run").metrics
    qrels = ranx.Qrels.from_file(str(tmp_path / "trec" / "qrels.txt"), kind="trec")
    ranked = ranx.Run.from_file(str(tmp_path / "trec" / "run.run"), kind="trec")
    for k in (1, 5, 10):
        found = ranx.evaluate(qrels, ranked, f"recall@{k}")
        assert 100 * found == pytest.approx(metrics[f"t2i_r@{k}_pool"], abs=1e-6)
    for k in (5, 10):
        found = ranx.evaluate(qrels, ranked, f"ndcg_burges@{k}")
        assert found == pytest.approx(metrics[f"ndcg@{k}"], abs=1e-6)
    per_query = pd.read_parquet(tmp_path / "o" / "run" / "per_query.parquet")
    assert 100 * (per_query["rank"] <= 5).mean() == pytest.approx(metrics["t2i_r@5_pool"])
    assert (per_query["rank_in_fold"] <= per_query["rank"]).all()


@pytest.mark.parametrize("flag", ["--out", "--plot", "--json", "--trec"])
def test_outputs_inside_a_prepared_folder_are_refused(
    trained: tuple[Path, Path, Path], flag: str
) -> None:
    data, amc, _ = trained
    target = data / "results" / ("m.json" if flag == "--json" else "d")
    result = CliRunner().invoke(
        cli,
        ["eval", str(amc), "--data", str(data), "--device", "cpu", "--quiet", flag, str(target)],
    )
    assert result.exit_code != 0
    assert f"inside the prepared folder {data.resolve()}" in result.output
    assert not (data / "results").exists()
