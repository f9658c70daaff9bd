"""`prepare clickture`: the click log and the dev judgments as Microsoft lays them out (and as
options describe other layouts), keys through the id maps, one id space for Lite and dev, the
val/test split of the dev queries, and each bad input reported."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support.prepare_helpers import clickture_inputs, save_features, write_id_map

from amc_data import load_encoded
from amc_data.errors import ConfigError, InputError
from amc_data.prepare import load_prepared
from amc_data.prepare.clickture import (
    DEV_ID_OFFSET,
    ClicktureConfig,
    TsvLayout,
    prepare_clickture,
    split_dev_queries,
)
from amc_data.prepare.queries import query_analyzer


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """Generated inputs with their encode output (shared, never modified)."""
    data_dir = tmp_path_factory.mktemp("clickture-data")
    return data_dir, clickture_inputs(data_dir)


def _run(data_dir: Path, paths: dict[str, Path], out: Path, **config) -> object:
    paths = dict(paths)
    clicks, labels = paths.pop("clicks"), paths.pop("dev_labels")
    id_maps = {k: paths.pop(k) for k in ("id_map", "dev_id_map") if k in paths}
    config.setdefault("min_query_count", 1)
    return prepare_clickture(
        clicks,
        labels,
        out=out,
        data_dir=data_dir,
        **paths,
        **id_maps,
        config=ClicktureConfig(**config),
    )


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.write_text("\n".join(lines) + "\n", encoding=encoding)
    return path


def test_train_on_clicks_and_judge_on_dev_grades(tmp_path, inputs):
    data_dir, paths = inputs
    result = _run(data_dir, paths, tmp_path / "out")
    data = load_prepared(result.out)
    clicks = pd.read_csv(paths["clicks"], sep="\t", header=None, names=["query", "key", "clicks"])
    labels = pd.read_csv(
        paths["dev_labels"], sep="\t", header=None, names=["query", "key", "grade"]
    )
    # Train: one query per distinct click-log query, labels the summed clicks.
    train = data.split_queries("train")
    assert sorted(train["query"]) == sorted(clicks["query"].unique())
    judged = data.judgments.merge(data.queries, on="query_id")
    expected = clicks.assign(img_id=clicks.key.str[3:].astype(int))
    expected = expected.groupby(["query", "img_id"])["clicks"].sum()
    got = judged[judged.split == "train"].set_index(["query", "img_id"])["label"]
    assert got.sort_index().to_dict() == expected.sort_index().to_dict()
    # Dev: grades 3/2/0, images moved to their own id range, originals kept.
    dev = judged[judged.split != "train"]
    grades = labels.assign(
        img_id=DEV_ID_OFFSET + labels.key.str[3:].astype(int),
        label=labels.grade.map({"Excellent": 3, "Good": 2, "Bad": 0}),
    )
    assert dev.set_index(["query", "img_id"])["label"].sort_index().to_dict() == (
        grades.set_index(["query", "img_id"])["label"].sort_index().to_dict()
    )
    images = pq.read_table(result.out / "images.parquet").to_pandas()
    lite = images[images.source == "lite"]
    dev_images = images[images.source == "dev"]
    assert (lite.img_id == lite.source_id).all() and (lite.split == "train").all()
    assert (dev_images.img_id == dev_images.source_id + DEV_ID_OFFSET).all()
    assert set(dev_images.split) <= {"val", "test"}
    # Each image is named by its key in the id map (what a search page shows).
    assert (images.file_name == "img" + images.source_id.astype(str)).all()
    # Lite and dev share ids 0..59; each prepared row holds its own part's keywords.
    for part, offset in (("lite", 0), ("dev", DEV_ID_OFFSET)):
        encoded = load_encoded("clickture", part, data_dir=data_dir)
        for source_id in images.loc[images.source == part, "source_id"][:30]:
            row = data.keywords[data.rows([offset + source_id])[0]]
            assert (row != encoded.matrix[source_id]).nnz == 0
    # Features: Lite rows then dev rows, each in the user's order.
    lite_ids, dev_ids = np.load(paths["feature_ids"]), np.load(paths["dev_feature_ids"])
    lite_rows = np.isin(lite_ids, lite.source_id)
    dev_rows = np.isin(dev_ids, dev_images.source_id)
    assert np.array_equal(
        data.feature_ids, np.concatenate([lite_ids[lite_rows], dev_ids[dev_rows] + DEV_ID_OFFSET])
    )
    assert np.array_equal(data.features[: lite_rows.sum()], np.load(paths["features"])[lite_rows])
    assert result.features_stored == "copy"
    assert data.info["clickture"]["id_space"]["dev"]["offset"] == DEV_ID_OFFSET
    assert (
        data.info["counts"]["queries"]["val"] == 6 and data.info["counts"]["queries"]["test"] == 6
    )


def test_the_dev_split_depends_on_the_query_and_seed_only():
    queries = pd.Series([f"query number {i}" for i in range(40)])
    split = split_dev_queries(queries, 0.25, seed=0)
    assert (split == "val").sum() == 10
    shuffled = queries.sample(frac=1, random_state=3)
    again = dict(zip(shuffled, split_dev_queries(shuffled, 0.25, seed=0), strict=True))
    assert again == dict(zip(queries, split, strict=True))
    # Case and spacing do not move a query; another seed gives another split.
    assert (
        split_dev_queries(pd.Series(["  QUERY   number 3"]), 0.5, 0)[0]
        == split_dev_queries(pd.Series(["query number 3"]), 0.5, 0)[0]
    )
    assert list(split_dev_queries(queries, 0.25, seed=1)) != list(split)


def test_unknown_keys_stop_the_run_or_are_skipped(tmp_path, inputs):
    data_dir, paths = inputs
    clicks = _lines(paths["clicks"])
    clicks[2] = clicks[2].replace("\timg", "\tnoimg")
    clicks[5] = clicks[5].replace("\timg", "\tnoimg")
    clicks.insert(1, "")  # a blank line is skipped, and still counted
    broken = {**paths, "clicks": _write(tmp_path / "clicks.tsv", clicks)}
    with pytest.raises(InputError) as caught:
        _run(data_dir, broken, tmp_path / "out")
    message = str(caught.value)
    assert "2 lines of" in message and "img_id_map.pkl does not map" in message
    assert "line 4: 'noimg" in message and "line 7: 'noimg" in message
    assert "--on-error skip" in message
    result = _run(data_dir, broken, tmp_path / "out", on_error="skip")
    entry = result.skipped["clicks.tsv: unknown image keys"]
    assert entry["count"] == 2 and entry["examples"][0].startswith("line 4: 'noimg")
    recorded = load_prepared(result.out).info["skipped"]
    assert recorded["clicks.tsv: unknown image keys"]["count"] == 2


def test_unknown_grades(tmp_path, inputs):
    data_dir, paths = inputs
    labels = _lines(paths["dev_labels"])
    labels[1] = labels[1].rsplit("\t", 1)[0] + "\tPerfect"
    broken = {**paths, "dev_labels": _write(tmp_path / "labels.tsv", labels)}
    with pytest.raises(
        InputError,
        match=r"1 lines of .* grade other than Excellent, Good or Bad: "
        "line 2: 'Perfect'",
    ):
        _run(data_dir, broken, tmp_path / "out")
    result = _run(data_dir, broken, tmp_path / "out", on_error="skip")
    assert result.skipped["dev judgments: unknown grades"]["count"] == 1
    assert result.counts["judgments"]["val"] + result.counts["judgments"]["test"] == 71


def test_grades_in_any_case_or_as_numbers(tmp_path, inputs):
    data_dir, paths = inputs
    mapping = {"Excellent": "EXCELLENT", "Good": "2", "Bad": "bad"}
    labels = [
        line.rsplit("\t", 1)[0] + "\t" + mapping[line.rsplit("\t", 1)[1]]
        for line in _lines(paths["dev_labels"])
    ]
    changed = {**paths, "dev_labels": _write(tmp_path / "labels.tsv", labels)}
    reference = load_prepared(_run(data_dir, paths, tmp_path / "a").out)
    data = load_prepared(_run(data_dir, changed, tmp_path / "b").out)
    assert data.judgments.equals(reference.judgments)


def test_queries_in_both_train_and_test(tmp_path, inputs):
    data_dir, paths = inputs
    dev_query = _lines(paths["dev_labels"])[0].split("\t")[0]
    clicks = [*_lines(paths["clicks"]), f"  {dev_query.upper()}  \timg3\t4"]
    leaking = {**paths, "clicks": _write(tmp_path / "clicks.tsv", clicks)}
    with pytest.raises(InputError, match=r"1 dev queries .* also appear in the click log"):
        _run(data_dir, leaking, tmp_path / "out")
    result = _run(data_dir, leaking, tmp_path / "out", on_error="skip")
    assert result.skipped["queries in both train and val/test"]["examples"] == [dev_query]
    data = load_prepared(result.out)
    assert dev_query.upper() not in set(data.split_queries("train")["query"])
    assert dev_query in set(data.queries["query"])


def test_queries_the_model_cannot_tell_apart_are_leaks_too(tmp_path, inputs):
    """Punctuation, case, odd spaces and stop words are gone once a query is analyzed, so
    "dog!", "The DOG" and "dog\xa0." are the training query "dog" to the model."""
    data_dir, paths = inputs
    clicks = [*_lines(paths["clicks"]), "dog\timg3\t4"]
    variants = ["dog!", "The DOG", "dog\xa0."]
    labels = [*_lines(paths["dev_labels"])]
    labels += [f"{text}\timg{i}\tGood" for i, text in enumerate(variants)]
    leaking = {
        **paths,
        "clicks": _write(tmp_path / "clicks.tsv", clicks),
        "dev_labels": _write(tmp_path / "labels.tsv", labels),
    }
    with pytest.raises(InputError) as caught:
        _run(data_dir, leaking, tmp_path / "out")
    message = str(caught.value)
    assert "3 dev queries" in message and "also appear in the click log" in message
    assert "'dog!'" in message and "'The DOG'" in message and "'dog\\xa0.'" in message
    assert "punctuation and stop words dropped" in message
    result = _run(data_dir, leaking, tmp_path / "out", on_error="skip")
    entry = result.skipped["queries in both train and val/test"]
    assert entry["count"] == 3 and sorted(entry["examples"]) == sorted(variants)
    data = load_prepared(result.out)
    assert "dog" not in set(data.split_queries("train")["query"])
    dev = set(data.queries.loc[data.queries["split"] != "train", "query"])
    assert set(variants) <= dev


def test_lines_with_the_wrong_number_of_fields(tmp_path, inputs):
    data_dir, paths = inputs
    clicks = _lines(paths["clicks"])
    clicks.insert(3, "a query without the rest")
    broken = {**paths, "clicks": _write(tmp_path / "clicks.tsv", clicks)}
    with pytest.raises(InputError, match=r"line 4: 'a query without the rest' \(1 fields\)"):
        _run(data_dir, broken, tmp_path / "out")
    result = _run(data_dir, broken, tmp_path / "out", on_error="skip")
    assert result.skipped["click log: lines with 3 fields expected"]["count"] == 1


def test_other_layouts_through_the_options(tmp_path, inputs):
    data_dir, paths = inputs
    # key, count, query, an extra column; a header; Latin-1 text.
    rows = [line.split("\t") for line in _lines(paths["clicks"])]
    clicks = ["ImageKey\tClicks\tQuery\tMarket"] + [f"{k}\t{c}\t{q}\ten-US" for q, k, c in rows]
    clicks.append("img1\t3\tcafé crème\ten-GB")
    utf8 = {**paths, "clicks": _write(tmp_path / "clicks-utf8.tsv", clicks)}
    with pytest.raises(InputError, match=r"do not have 3 tab-separated fields .*--clicks-columns"):
        _run(data_dir, utf8, tmp_path / "out")  # read with the default layout
    reordered = {**paths, "clicks": _write(tmp_path / "clicks.tsv", clicks, "latin-1")}
    layout = TsvLayout(("key", "clicks", "query", "-"), header=True, encoding="latin-1")
    result = _run(data_dir, reordered, tmp_path / "out", clicks_layout=layout)
    data = load_prepared(result.out)
    assert "café crème" in set(data.queries["query"])
    assert (
        result.counts["judgments"]["train"]
        == load_prepared(_run(data_dir, paths, tmp_path / "plain").out).info["counts"]["judgments"][
            "train"
        ]
        + 1
    )
    with pytest.raises(ConfigError, match="--clicks-columns must name the columns"):
        ClicktureConfig(clicks_layout=TsvLayout(("query", "key")))


def test_swapped_columns_get_a_hint(tmp_path, inputs):
    data_dir, paths = inputs
    rows = [line.split("\t") for line in _lines(paths["clicks"])]
    swapped = {
        **paths,
        "clicks": _write(tmp_path / "c.tsv", [f"{q}\t{c}\t{k}" for q, k, c in rows]),
    }
    with pytest.raises(
        InputError,
        match=r"not a whole number >= 0.*try --clicks-columns "
        r"query,clicks,key",
    ):
        _run(data_dir, swapped, tmp_path / "out")


def test_undecodable_text_names_the_encoding_option(tmp_path, inputs):
    data_dir, paths = inputs
    clicks = paths["clicks"].read_bytes() + "crème\timg1\t2\n".encode("latin-1")
    (tmp_path / "c.tsv").write_bytes(clicks)
    with pytest.raises(InputError, match="--encoding"):
        _run(data_dir, {**paths, "clicks": tmp_path / "c.tsv"}, tmp_path / "out")


def test_a_tsv_id_map(tmp_path, inputs):
    data_dir, paths = inputs
    lines = ["key\timg_id", *(f"img{i}\t{i}" for i in range(80))]
    id_map = _write(tmp_path / "map.tsv", lines)
    data = load_prepared(_run(data_dir, {**paths, "id_map": id_map}, tmp_path / "out").out)
    assert data.info["counts"]["images"]["train"] == 80
    bad = _write(tmp_path / "bad.tsv", ["img0\t0", "img1\tone"])
    with pytest.raises(InputError, match="the img_id of key 'img1' is 'one'"):
        _run(data_dir, {**paths, "id_map": bad}, tmp_path / "out2")
    huge = write_id_map(tmp_path / "huge.pkl", [DEV_ID_OFFSET + 1])
    clicks = _write(tmp_path / "c.tsv", [f"red car\timg{DEV_ID_OFFSET + 1}\t1"])
    with pytest.raises(InputError, match="ids must stay below"):
        _run(data_dir, {**paths, "id_map": huge, "clicks": clicks}, tmp_path / "out3")


def test_images_without_features(tmp_path, inputs):
    data_dir, paths = inputs
    ids = np.load(paths["dev_feature_ids"])
    kept = ids[~np.isin(ids, [4, 7])]
    features, ids_path = save_features(tmp_path, "dev", kept)
    lacking = {**paths, "dev_features": features, "dev_feature_ids": ids_path}
    labels = _lines(paths["dev_labels"])
    judged = {int(line.split("\t")[1][3:]) for line in labels}
    with pytest.raises(InputError) as caught:
        _run(data_dir, lacking, tmp_path / "out")
    absent = sorted({4, 7} & judged)
    assert f"{len(absent)} of {len(judged)} dev images of the judgments have no row" in str(
        caught.value
    )
    result = _run(data_dir, lacking, tmp_path / "out", missing="skip")
    entry = result.skipped["dev images of the judgments without features"]
    assert entry["examples"] == absent
    data = load_prepared(result.out)
    assert not set(data.judgments["img_id"]) & {DEV_ID_OFFSET + 4, DEV_ID_OFFSET + 7}


def test_missing_inputs(tmp_path, inputs):
    data_dir, paths = inputs
    empty = tmp_path / "empty"
    with pytest.raises(InputError, match="Run `amc-data encode clickture` first"):
        _run(empty, paths, tmp_path / "out")
    copy = tmp_path / "data"
    shutil.copytree(data_dir / "clickture" / "encoded", copy / "clickture" / "encoded")
    with pytest.raises(InputError, match=r"img_id_map\.pkl does not exist.*fetch clickture"):
        _run(copy, paths, tmp_path / "out")


def test_cli(tmp_path, inputs):
    data_dir, paths = inputs
    args = [
        "prepare",
        "clickture",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path / "out"),
        "--min-query-count",
        "1",
        "--val-fraction",
        "0.25",
        "--split-seed",
        "7",
    ]
    for name, path in paths.items():
        args += [f"--{name.replace('_', '-')}", str(path)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "clickture: prepared into" in result.output and "(copy)" in result.output
    data = load_prepared(tmp_path / "out")
    assert data.info["counts"]["queries"]["val"] == 3  # round(0.25 * 12)
    assert data.info["clickture"]["dev_split"]["seed"] == 7
    bad = CliRunner().invoke(cli, [*args, "--force", "--clicks-columns", "query,key"])
    assert bad.exit_code == 2 and "--clicks-columns must name the columns" in bad.output
    labels = _lines(paths["dev_labels"])
    labels[0] = labels[0].rsplit("\t", 1)[0] + "\tSuperb"
    _write(tmp_path / "l.tsv", labels)
    failed = CliRunner().invoke(cli, [*args, "--force", "--dev-labels", str(tmp_path / "l.tsv")])
    assert failed.exit_code == 1 and "'Superb'" in failed.output
    skipped = CliRunner().invoke(
        cli, [*args, "--force", "--dev-labels", str(tmp_path / "l.tsv"), "--on-error", "skip"]
    )
    assert skipped.exit_code == 0, skipped.output
    assert "left out: 1 dev judgments: unknown grades" in skipped.output


def test_negative_counts_and_empty_queries(tmp_path, inputs):
    data_dir, paths = inputs
    clicks = _lines(paths["clicks"])
    clicks[0] = clicks[0].rsplit("\t", 1)[0] + "\t-3"
    clicks[1] = "   \t" + clicks[1].split("\t", 1)[1]
    clicks[2] = clicks[2].rsplit("\t", 1)[0] + "\t 7 "  # spaces around a count are fine
    broken = {**paths, "clicks": _write(tmp_path / "clicks.tsv", clicks)}
    with pytest.raises(InputError, match=r"1 lines of .* not a whole number >= 0: line 1: '-3'"):
        _run(data_dir, broken, tmp_path / "out")
    result = _run(data_dir, broken, tmp_path / "out", on_error="skip")
    assert result.skipped["click log: click counts that are not whole numbers >= 0"]["count"] == 1
    assert result.skipped["click log: empty queries"]["examples"] == ["2"]
    data = load_prepared(result.out)
    assert "" not in set(data.queries["query"])
    query = clicks[2].split("\t")[0]
    key = int(clicks[2].split("\t")[1][3:])
    judged = data.judgments.merge(data.queries, on="query_id")
    label = judged.loc[(judged["query"] == query) & (judged.img_id == key), "label"]
    expected = 7 + sum(
        int(line.rsplit("\t", 1)[1])
        for line in clicks[3:]
        if line.startswith(f"{query}\timg{key}\t")
    )
    assert label.tolist() == [expected]


def test_the_vocabulary_report(tmp_path, inputs):
    """What the query vocabulary keeps and drops, and the empty queries and keyword rows, are
    counted in the result and recorded in prepared.json."""
    data_dir, paths = inputs
    result = _run(data_dir, paths, tmp_path / "out", min_query_count=20)
    data = load_prepared(result.out)
    report = result.vocabulary
    analyzer = query_analyzer()
    seen = Counter(t for q in data.split_queries("train")["query"] for t in analyzer(q))
    kept = {word for word, count in seen.items() if count >= 20}
    assert 0 < len(kept) < len(seen)  # the threshold drops some words, not all
    assert report["query_words_kept"] == len(kept) == len(data.query_vocabulary)
    assert report["query_words_dropped"] == len(seen) - len(kept)
    assert report["query_word_occurrences"] == seen.total()
    assert report["query_word_occurrences_dropped"] == sum(
        count for word, count in seen.items() if word not in kept
    )
    empty = [q for q in data.queries["query"] if not kept & set(analyzer(q))]
    assert report["queries"] == len(data.queries) and report["queries_empty"] == len(empty)
    assert report["keyword_rows"] == data.keywords.shape[0]
    assert report["keyword_rows_empty"] == int((data.keywords.getnnz(axis=1) == 0).sum())
    assert data.info["clickture"]["vocabulary"] == report
