"""`amc-data search`: a free-text query ranked over a split's images with a trained run, from the
CLI and from Python; the ranking checked against the evaluation's own scoring path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from amc_data_cli.main import cli  # noqa: E402
from click.testing import CliRunner  # noqa: E402

import amc_data  # noqa: E402
import amc_data.ranking.search as search_module  # noqa: E402
from amc_data.errors import ConfigError, InputError  # noqa: E402
from amc_data.ranking.scoring import score_matrix  # noqa: E402
from amc_data.ranking.search_config import SearchConfig  # noqa: E402
from amc_data.ranking.training import TrainConfig, train  # noqa: E402

FAST = {"epochs": 2, "batch_size": 32, "dim": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A synth folder with a 2 x 2 region grid, an AMC run and a visual baseline run."""
    root = tmp_path_factory.mktemp("search")
    data = root / "data"
    amc_data.synth(data, seed=3, images=240, queries=90, regions=4)
    train(data, root / "amc", TrainConfig(**FAST))
    train(data, root / "visual", TrainConfig(**{**FAST, "model": "visual"}))
    return data, root / "amc", root / "visual"


def _test_query(data: Path) -> tuple[int, str]:
    queries = amc_data.load_prepared(data).split_queries("test")
    row = queries.iloc[0]
    return int(row["query_id"]), str(row["query"])


def test_the_ranking_is_the_models_own_scores_of_that_query(
    world: tuple[Path, Path, Path],
) -> None:
    data, amc, _ = world
    prepared = amc_data.load_prepared(data)
    query_id, text = _test_query(data)
    pool = np.sort(prepared.split_images("test"))
    # The independent path: the query read by id, as evaluation reads it, over the whole pool.
    expected = score_matrix(amc_data.load_model(amc, prepared).model, prepared, [query_id], pool)[0]
    # The full scan from the raw features: the model's scores to float32 rounding.
    result = amc_data.search(amc, prepared, text, top=pool.size, exact=True)
    assert result.images == pool.size and len(result.hits) == pool.size
    assert [hit.rank for hit in result.hits] == list(range(1, pool.size + 1))
    found = {hit.img_id: hit.score for hit in result.hits}
    assert set(found) == set(pool.tolist())
    np.testing.assert_allclose([found[i] for i in pool], expected, rtol=1e-5, atol=1e-6)
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True)
    top = amc_data.search(amc, prepared, text, top=5, exact=True)
    assert [h.img_id for h in top.hits] == [h.img_id for h in result.hits[:5]]
    # From the index (float16 keys and values): within 2e-3 of the model's.
    indexed = amc_data.search(amc, prepared, text, top=pool.size)
    found = {hit.img_id: hit.score for hit in indexed.hits}
    np.testing.assert_allclose([found[i] for i in pool], expected, atol=2e-3)


def test_hits_explain_the_modality_weights_keywords_and_grid_cells(
    world: tuple[Path, Path, Path],
) -> None:
    data, amc, _ = world
    prepared = amc_data.load_prepared(data)
    _, text = _test_query(data)
    result = amc_data.search(amc, prepared, text, top=4)
    rows = prepared.rows(np.array([hit.img_id for hit in result.hits]))
    for hit, row in zip(result.hits, rows, strict=True):
        assert hit.visual_weight is not None and hit.keyword_weight is not None
        assert hit.visual_weight + hit.keyword_weight == pytest.approx(1.0, abs=1e-5)
        image_words = {prepared.vocabulary[i] for i in prepared.keywords[row].indices}
        assert 1 <= len(hit.keywords) <= 3 and {k.word for k in hit.keywords} <= image_words
        assert 1 <= len(hit.regions) <= 3
        for attended in (hit.keywords, hit.regions):
            weights = [item.weight for item in attended]
            assert weights == sorted(weights, reverse=True) and all(0 < w <= 1 for w in weights)
        for region in hit.regions:  # 4 regions: a 2 x 2 grid, row-major
            assert 0 <= region.region < 4
            assert (region.row, region.col) == divmod(region.region, 2)


def test_cached_and_chunked_reads_rank_the_same(
    world: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    data, amc, _ = world
    _, text = _test_query(data)
    cached = amc_data.Searcher(amc, data, split="all", exact=True)
    monkeypatch.setattr(search_module, "CACHE_BYTES", 0)
    monkeypatch.setattr(search_module, "CHUNK_VALUES", 7 * 4 * 32)  # 7 images a chunk
    streamed = amc_data.Searcher(amc, data, split="all", exact=True)
    assert cached._cached is not None and streamed._cached is None
    a, b = cached.search(text, top=20), streamed.search(text, top=20)
    assert a.images == b.images == len(amc_data.load_prepared(data).images)
    assert [h.img_id for h in a.hits] == [h.img_id for h in b.hits]
    np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], rtol=1e-5)


def test_index_blocks_scored_by_threads_side_by_side_give_the_same_scores(
    world: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`search --threads N` scores the index's blocks side by side: the same scores, to the
    bit, in the same order, as one thread; the CLI takes the option."""
    data, amc, _ = world
    monkeypatch.setattr(search_module, "READ_BLOCK", 16)  # 15 blocks of the 240 images
    texts = amc_data.load_prepared(data).split_queries("test")["query"].tolist()[:5]
    one = amc_data.Searcher(amc, data, split="all", threads=1)
    many = amc_data.Searcher(amc, data, split="all", threads=3)
    assert (one.workers, many.workers) == (1, 3)
    for a, b in zip(one.search_many(texts, top=240), many.search_many(texts, top=240), strict=True):
        assert [h.img_id for h in a.hits] == [h.img_id for h in b.hits]
        assert [h.score for h in a.hits] == [h.score for h in b.hits]
    args = ["search", str(amc), texts[0], "--data", str(data), "--split", "all"]
    out = CliRunner().invoke(cli, [*args, "--threads", "2", "--json"])
    assert out.exit_code == 0, out.output
    ranked = [hit["img_id"] for hit in json.loads(out.output)]
    assert ranked == [h.img_id for h in one.search(texts[0]).hits]


def test_unknown_words_are_named_and_a_query_without_known_words_is_refused(
    world: tuple[Path, Path, Path],
) -> None:
    data, amc, _ = world
    _, text = _test_query(data)
    result = amc_data.search(amc, data, f"{text} zzyzx qwerty", top=3)
    assert result.unknown == ["zzyzx", "qwerty"] and "zzyzx" not in result.words
    plain = amc_data.search(amc, data, text, top=3)
    assert [h.img_id for h in result.hits] == [h.img_id for h in plain.hits]
    with pytest.raises(InputError, match=r"zzyzx.*query_vocab\.tsv"):
        amc_data.search(amc, data, "zzyzx")
    with pytest.raises(InputError, match="no word the analyzer keeps"):
        amc_data.search(amc, data, "the of !")
    with pytest.raises(ConfigError, match="split must be one of test, val, train, all, not 'dev'"):
        amc_data.search(amc, data, text, split="dev")
    with pytest.raises(ConfigError, match="top must be"):
        amc_data.search(amc, data, text, top=0)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"split": "dev"}, "split must be one of test, val, train, all, not 'dev'."),
        ({"top": 0}, "top must be a whole number >= 1, not 0."),
        ({"top": True}, "top must be a whole number >= 1, not True."),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda, not 'tpu'."),
    ],
)
def test_search_options_are_checked_once_naming_the_parameter(changes: dict, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        SearchConfig(**changes)
    assert str(caught.value) == words
    assert caught.value.parameter == next(iter(changes))


def test_a_config_and_keyword_options_give_the_same_search(world: tuple[Path, Path, Path]) -> None:
    data, amc, _ = world
    _, text = _test_query(data)
    searcher = amc_data.Searcher(amc, data, SearchConfig(split="all", top=4))
    by_config = searcher.search(text)
    assert len(by_config.hits) == 4 and by_config.split == "all"
    by_keywords = amc_data.search(amc, data, text, split="all", top=4)
    assert by_config.to_dict() == by_keywords.to_dict()
    assert len(searcher.search(text, top=2).hits) == 2  # a call's own top wins
    with pytest.raises(ConfigError, match="top must be a whole number >= 1, not 0") as caught:
        searcher.search(text, top=0)
    assert caught.value.parameter == "top"


def test_cli_table_json_split_and_errors(world: tuple[Path, Path, Path]) -> None:
    data, amc, visual = world
    _, text = _test_query(data)
    runner = CliRunner()
    args = ["search", str(amc), "--data", str(data), *text.split()]
    table = runner.invoke(cli, [*args, "--top", "3"])
    assert table.exit_code == 0, table.output
    lines = table.output.splitlines()
    assert lines[0].startswith("3 best of ") and "test images" in lines[0]
    assert lines[1].split()[:5] == ["rank", "img_id", "score", "visual", "keyword"]
    assert len(lines) == 3 + 3

    listed = runner.invoke(cli, [*args, "--json", "--split", "val", "--top", "2"])
    assert listed.exit_code == 0, listed.output
    hits = json.loads(listed.stdout)
    assert isinstance(hits, list) and [h["rank"] for h in hits] == [1, 2]
    val_images = set(amc_data.load_prepared(data).split_images("val").tolist())
    assert {h["img_id"] for h in hits} <= val_images
    assert set(hits[0]) == {
        *("rank", "img_id", "score", "file_name", "modality_weights", "keywords", "regions")
    }

    unknown = runner.invoke(cli, [*args, "zzyzx", "--json"])
    assert unknown.exit_code == 0 and "zzyzx" in unknown.stderr
    assert json.loads(unknown.stdout)  # the JSON on stdout stays parseable

    refused = runner.invoke(cli, ["search", str(amc), "--data", str(data), "zzyzx"])
    assert refused.exit_code != 0
    assert refused.stderr.count("\n") == 1 and "zzyzx" in refused.stderr
    assert "Traceback" not in refused.output

    baseline = runner.invoke(cli, ["search", str(visual), "--data", str(data), *text.split()])
    assert baseline.exit_code == 0, baseline.output
    first = baseline.output.splitlines()[3].split()
    assert first[3:] == ["-", "-", "-", "-"]  # no modality weights, nothing attended


def test_a_run_of_another_dataset_is_refused(
    world: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, amc, _ = world
    other = tmp_path / "other"
    amc_data.synth(other, config=amc_data.SynthConfig(seed=9, images=120, queries=40, concepts=5))
    with pytest.raises(amc_data.CheckpointError, match="vocabulary"):
        amc_data.search(amc, other, "anything")


def test_a_query_past_the_length_limit_is_refused_naming_limit_and_length(
    world: tuple[Path, Path, Path],
) -> None:
    from amc_data.ranking.search_config import MAX_QUERY_CHARS

    data, amc, _ = world
    _, text = _test_query(data)
    longest = (text + " ") * (MAX_QUERY_CHARS // (len(text) + 1))
    assert len(amc_data.search(amc, data, longest[:MAX_QUERY_CHARS], top=1).hits) == 1
    too_long = "zzyzx " * 160_000  # 960,000 characters
    for query in (longest + "x" * MAX_QUERY_CHARS, too_long):
        with pytest.raises(InputError) as caught:
            amc_data.search(amc, data, query)
        message = str(caught.value)
        assert f"{len(query):,} characters" in message and f"{MAX_QUERY_CHARS:,}" in message
        assert "\n" not in message and len(message) < 300
    searcher = amc_data.Searcher(amc, data)
    with pytest.raises(InputError, match=f"at most {MAX_QUERY_CHARS:,}"):
        searcher.search(too_long)
    refused = CliRunner().invoke(cli, ["search", str(amc), "--data", str(data), *too_long.split()])
    assert refused.exit_code != 0 and refused.stderr.count("\n") == 1
    assert "959,999 characters" in refused.stderr and len(refused.stderr) < 300  # words joined


def test_unknown_words_are_echoed_as_a_few_examples_and_a_count(
    world: tuple[Path, Path, Path],
) -> None:
    data, amc, _ = world
    _, text = _test_query(data)
    unknown = [f"zq{i}x" for i in range(150)]
    args = ["search", str(amc), "--data", str(data), *text.split(), *unknown]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "zq0x" in result.stderr and "(150 in all)" in result.stderr
    assert "zq149x" not in result.stderr and len(result.stderr) < 300
    with pytest.raises(InputError) as caught:
        amc_data.search(amc, data, " ".join(unknown))
    message = str(caught.value)
    assert "(150 in all)" in message and "zq149x" not in message and len(message) < 500


def test_quiet_search_prints_the_results_and_no_notes(world: tuple[Path, Path, Path]) -> None:
    data, amc, _ = world
    _, text = _test_query(data)
    args = ["search", str(amc), "--data", str(data), *text.split(), "zzyzx", "--top", "2"]
    loud, quiet = CliRunner().invoke(cli, args), CliRunner().invoke(cli, [*args, "--quiet"])
    assert loud.exit_code == 0 and quiet.exit_code == 0, quiet.output
    assert "zzyzx" in loud.stderr and quiet.stderr == ""
    assert quiet.stdout == loud.stdout and quiet.stdout.startswith("2 best of ")
