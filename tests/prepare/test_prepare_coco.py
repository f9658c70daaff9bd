"""`prepare coco`: Karpathy's captions as queries, restval placement, the 1K folds, keywords
from the encode output, features linked or copied, and each bad input named."""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support import corpus
from support.prepare_helpers import encoded_coco, save_features

from amc_data import load_encoded
from amc_data.errors import InputError
from amc_data.prepare import load_prepared
from amc_data.prepare.coco import CocoConfig, prepare_coco

COUNTS = {"train": 30, "restval": 10, "val": 10, "test": 25}
FAST = {"fold_size": 5, "min_query_count": 1}


@pytest.fixture(scope="module")
def coco(tmp_path_factory) -> tuple[Path, corpus.CocoCorpus]:
    """A generated keywords_coco.zip with its encode output (shared, never modified)."""
    data_dir = tmp_path_factory.mktemp("coco-data")
    return data_dir, encoded_coco(data_dir, COUNTS)


def _dataset_json(made: corpus.CocoCorpus) -> dict:
    with zipfile.ZipFile(made.zip_path) as archive:
        return json.loads(archive.read(made.dataset_member))


def _all_features(tmp_path: Path, made: corpus.CocoCorpus, order=None) -> tuple[Path, Path]:
    ids = np.array([image.imgid for image in made.images])
    return save_features(tmp_path, "f", ids if order is None else ids[order])


def test_captions_become_queries_judged_on_their_own_image(tmp_path, coco):
    data_dir, made = coco
    features, ids = _all_features(tmp_path, made, order=np.random.default_rng(1).permutation(75))
    result = prepare_coco(
        features, ids, tmp_path / "out", data_dir=data_dir, config=CocoConfig(**FAST)
    )
    data = load_prepared(result.out)
    assert result.counts["images"] == {"train": 40, "val": 10, "test": 25}  # restval in train
    assert result.counts["queries"] == {"train": 200, "val": 50, "test": 125}
    karpathy = _dataset_json(made)["images"]
    expected = {
        s["sentid"]: (s["raw"].strip(), im["imgid"]) for im in karpathy for s in im["sentences"][:5]
    }
    queries = pq.read_table(result.out / "queries.parquet").to_pandas()
    judgments = pq.read_table(result.out / "judgments.parquet").to_pandas()
    assert len(queries) == 375 and set(queries["query_id"]) == set(expected)
    for query_id, text in zip(queries["query_id"], queries["query"], strict=True):
        assert text == expected[query_id][0]
    assert (judgments["label"] == 1).all()
    assert dict(zip(judgments["query_id"], judgments["img_id"], strict=True)) == {
        q: img for q, (_, img) in expected.items()
    }
    # The test folds follow dataset.json order, fold_size images each.
    images = pq.read_table(result.out / "images.parquet").to_pandas()
    test_order = [im["imgid"] for im in karpathy if im["split"] == "test"]
    folds = dict(zip(images["img_id"], images["fold"], strict=True))
    assert [folds[i] for i in test_order] == [i // 5 for i in range(25)]
    assert (images.loc[images.split != "test", "fold"] == -1).all()
    assert data.info["coco"]["test_folds"] == 5
    # Keywords: each image's row equals its row in the encode output.
    for split in ("train", "restval", "val", "test"):
        encoded = load_encoded("coco", split, data_dir=data_dir)
        for img_id in encoded.images["img_id"]:
            row = data.keywords[data.rows([img_id])[0]]
            assert (row != encoded.matrix[img_id]).nnz == 0
    # Features: every row used, in the user's order: linked, not copied.
    assert result.features_stored == "hardlink"
    assert os.path.samefile(result.out / "features.npy", features)
    assert np.array_equal(data.feature_ids, np.load(ids))
    encode_json = json.loads((data_dir / "coco" / "encoded" / "encode.json").read_text())
    assert data.info["encoded"]["fingerprint"] == encode_json["fingerprint"]
    assert data.info["source"] == "coco" and data.info["options"]["restval"] == "train"


@pytest.mark.parametrize(("restval", "train", "val"), [("val", 30, 20), ("drop", 30, 10)])
def test_restval_can_go_to_val_or_be_dropped(tmp_path, coco, restval, train, val):
    data_dir, made = coco
    features, ids = _all_features(tmp_path, made)
    result = prepare_coco(
        features,
        ids,
        tmp_path / "out",
        data_dir=data_dir,
        config=CocoConfig(restval=restval, **FAST),
    )
    assert result.counts["images"] == {"train": train, "val": val, "test": 25}
    if restval == "drop":  # rows of the dropped images are left out: a copy, not a link
        assert result.features_stored == "copy"
        assert result.counts["features"] == 65
        assert any("10 feature rows belong to no kept image" in n for n in result.notes)


def test_images_without_features_stop_the_run_or_are_left_out(tmp_path, coco):
    data_dir, made = coco
    ids = np.array([image.imgid for image in made.images])
    test_ids = [image.imgid for image in made.images if image.split == "test"]
    lacking = sorted(test_ids[:3])
    features, ids_path = save_features(tmp_path, "f", ids[~np.isin(ids, lacking)])
    with pytest.raises(InputError) as caught:
        prepare_coco(
            features, ids_path, tmp_path / "out", data_dir=data_dir, config=CocoConfig(**FAST)
        )
    message = str(caught.value)
    assert "3 of 75 images have no row in" in message and "--missing skip" in message
    assert f"id {lacking[0]}, {lacking[1]}, {lacking[2]}" in message
    assert not (tmp_path / "out").exists()
    result = prepare_coco(
        features,
        ids_path,
        tmp_path / "out",
        data_dir=data_dir,
        config=CocoConfig(missing="skip", **FAST),
    )
    assert result.counts["images"]["test"] == 22 and result.counts["queries"]["test"] == 110
    assert result.skipped["images without features"]["count"] == 3
    data = load_prepared(result.out)
    assert data.info["skipped"]["images without features"]["examples"] == lacking
    # The folds stay the standard ones: cut before the images were left out.
    folds = data.images.set_index("img_id")["fold"]
    assert [folds.get(i, -9) for i in test_ids[:6]] == [-9, -9, -9, 0, 0, 1]


def test_features_matched_by_coco_id(tmp_path, coco):
    data_dir, made = coco
    karpathy = _dataset_json(made)["images"]
    features, ids = save_features(tmp_path, "f", [im["cocoid"] for im in karpathy])
    result = prepare_coco(
        features,
        ids,
        tmp_path / "out",
        data_dir=data_dir,
        config=CocoConfig(feature_id_kind="cocoid", **FAST),
    )
    data = load_prepared(result.out)
    assert data.feature_ids.tolist() == [im["imgid"] for im in karpathy]
    assert data.images.set_index("img_id")["source_id"].to_dict() == {
        im["imgid"]: im["cocoid"] for im in karpathy
    }


def test_bad_entries_of_dataset_json(tmp_path, coco):
    data_dir, made = coco
    content = _dataset_json(made)
    content["images"][4]["sentences"] = content["images"][4]["sentences"][:3]
    content["images"][9]["split"] = "holdout"
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(content))
    features, ids = _all_features(tmp_path, made)
    with pytest.raises(InputError, match=r"images\[9\] \(split 'holdout'\).*--on-error skip"):
        prepare_coco(
            features,
            ids,
            tmp_path / "out",
            data_dir=data_dir,
            dataset_json=path,
            config=CocoConfig(**FAST),
        )
    result = prepare_coco(
        features,
        ids,
        tmp_path / "out",
        data_dir=data_dir,
        dataset_json=path,
        config=CocoConfig(on_error="skip", **FAST),
    )
    assert sum(result.counts["images"].values()) == 73
    assert result.skipped["dataset.json: captions"]["examples"] == ["images[4] (imgid 4: 3)"]
    assert result.skipped["dataset.json: split"]["count"] == 1
    (tmp_path / "broken.json").write_text("{'images'")
    with pytest.raises(InputError, match="is not valid JSON"):
        prepare_coco(
            features, ids, tmp_path / "o2", data_dir=data_dir, dataset_json=tmp_path / "broken.json"
        )


def test_the_encode_output_must_exist_and_match_the_archive(tmp_path, coco):
    data_dir, made = coco
    features, ids = _all_features(tmp_path, made)
    with pytest.raises(InputError, match="Run `amc-data encode coco` first"):
        prepare_coco(
            features, ids, tmp_path / "out", data_dir=data_dir, encoded=tmp_path / "nowhere"
        )
    other = tmp_path / "data"
    shutil.copytree(data_dir / "coco", other / "coco")
    zip_path = other / "coco" / "keywords_coco.zip"
    os.utime(zip_path, ns=(1, 1))
    with pytest.raises(InputError, match=r"was encoded from another keywords_coco\.zip"):
        prepare_coco(features, ids, tmp_path / "out", data_dir=other)
    with pytest.raises(InputError, match=r"keywords_coco\.zip not found"):
        prepare_coco(features, ids, tmp_path / "out", data_dir=tmp_path / "empty")


def test_bad_feature_files(tmp_path, coco):
    data_dir, made = coco
    features, ids = _all_features(tmp_path, made)
    np.save(tmp_path / "short.npy", np.load(ids)[:-1])
    with pytest.raises(InputError, match=r"has 75 rows but .*short\.npy has 74 ids"):
        prepare_coco(features, tmp_path / "short.npy", tmp_path / "out", data_dir=data_dir)
    repeated = np.load(ids)
    repeated[10] = repeated[3]
    np.save(tmp_path / "twice.npy", repeated)
    pattern = rf"lists image id {repeated[3]} more than once \(rows \[3, 10\]"
    with pytest.raises(InputError, match=pattern):
        prepare_coco(features, tmp_path / "twice.npy", tmp_path / "out", data_dir=data_dir)
    np.save(tmp_path / "ints.npy", np.zeros((75, 4), dtype=np.int8))
    with pytest.raises(InputError, match="expected floating-point features"):
        prepare_coco(tmp_path / "ints.npy", ids, tmp_path / "out", data_dir=data_dir)


def test_a_split_without_keyword_files_gets_empty_keyword_rows(tmp_path):
    data_dir = tmp_path / "data"
    made = corpus.make_coco(data_dir / "coco", {"train": 12, "val": 4, "test": 6}, seed=3)
    for image in made.images:
        if image.split == "val":
            corpus.remove_member(made.zip_path, made.member(image))
    from amc_data import EncodeConfig, encode

    encode("coco", data_dir=data_dir, config=EncodeConfig(jobs=1, min_df=2))
    features, ids = _all_features(tmp_path, made)
    result = prepare_coco(
        features, ids, tmp_path / "out", data_dir=data_dir, config=CocoConfig(**FAST)
    )
    data = load_prepared(result.out)
    val_rows = data.rows(data.split_images("val"))
    assert data.keywords[val_rows].nnz == 0 and data.keywords.nnz > 0
    assert any("4 images have no keyword" in note for note in result.notes)


def test_cli(tmp_path, coco):
    data_dir, made = coco
    features, ids = _all_features(tmp_path, made)
    args = [
        "prepare",
        "coco",
        "--data-dir",
        str(data_dir),
        "--features",
        str(features),
        "--feature-ids",
        str(ids),
        "--out",
        str(tmp_path / "out"),
        "--fold-size",
        "5",
        "--min-query-count",
        "1",
    ]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "coco: prepared into" in result.output and "(hardlink)" in result.output
    assert "test" in result.output and "125" in result.output
    again = CliRunner().invoke(cli, args)
    assert again.exit_code == 1 and "--force" in again.output
    result = CliRunner().invoke(cli, [*args, "--force", "--restval", "drop", "--copy-features"])
    assert result.exit_code == 0, result.output
    assert "(copy)" in result.output
    assert load_prepared(tmp_path / "out").info["options"]["restval"] == "drop"


@pytest.mark.parametrize("missing", ["fail", "skip"])
def test_features_keyed_by_the_other_id_kind_name_the_flag(tmp_path, coco, missing):
    data_dir, made = coco
    karpathy = _dataset_json(made)["images"]
    by_cocoid = save_features(tmp_path, "c", [im["cocoid"] for im in karpathy])
    with pytest.raises(InputError) as caught:  # read as imgids, they match no image
        prepare_coco(
            *by_cocoid,
            tmp_path / "out",
            data_dir=data_dir,
            config=CocoConfig(missing=missing, **FAST),
        )
    message = str(caught.value)
    assert "75 of 75 images have no row" in message and "75 images are found" in message
    assert "Pass --feature-id-kind cocoid." in message and "--missing skip" not in message
    by_imgid = save_features(tmp_path, "i", [im["imgid"] for im in karpathy])
    with pytest.raises(InputError, match="Pass --feature-id-kind imgid"):
        prepare_coco(
            *by_imgid,
            tmp_path / "out",
            data_dir=data_dir,
            config=CocoConfig(missing=missing, feature_id_kind="cocoid", **FAST),
        )
    assert not (tmp_path / "out").exists()


def test_the_query_vocabulary_report_and_its_warning(tmp_path, coco, caplog):
    """Captions whose words are mostly rare: min_query_count drops most of their words (a
    warning names --min-query-count), and the val/test captions made of rare words only are
    left empty; all counted in the result, prepared.json and the CLI's report."""
    data_dir, made = coco
    content = _dataset_json(made)
    for image in content["images"]:
        for sentence in image["sentences"]:
            n = sentence["sentid"]
            rare = f"alpha{n} beta{n}"
            sentence["raw"] = f"A dog, {rare}." if image["split"] in ("train", "restval") else rare
    dataset_json = tmp_path / "dataset.json"
    dataset_json.write_text(json.dumps(content))
    features, ids = _all_features(tmp_path, made)
    with caplog.at_level(logging.WARNING, logger="amc_data.prepare"):
        result = prepare_coco(
            features,
            ids,
            tmp_path / "out",
            data_dir=data_dir,
            dataset_json=dataset_json,
            config=CocoConfig(fold_size=5, min_query_count=2),
        )
    report = result.vocabulary
    assert {key: report[key] for key in report if key.startswith("query")} == {
        "query_words_kept": 1,  # "dog"
        "query_words_dropped": 400,  # two words of each of the 200 training captions
        "query_word_occurrences": 600,
        "query_word_occurrences_dropped": 400,
    }
    assert report["min_count"] == 2 and report["queries"] == 375
    assert report["queries_empty"] == 175
    assert report["queries_empty_per_split"] == {"test": 125, "val": 50}
    assert report["keyword_rows"] == 75
    assert load_prepared(result.out).info["coco"]["vocabulary"] == report
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(
        "400 of 600 training query word occurrences are dropped" in w
        and "175 of 375 queries are left with no word" in w
        and "--min-query-count" in w
        for w in warnings
    )
    args = [
        "prepare",
        "coco",
        "--data-dir",
        str(data_dir),
        "--features",
        str(features),
        "--feature-ids",
        str(ids),
        "--dataset-json",
        str(dataset_json),
        "--out",
        str(tmp_path / "cli-out"),
        "--fold-size",
        "5",
        "--min-query-count",
        "2",
    ]
    shown = CliRunner().invoke(cli, args)
    assert shown.exit_code == 0, shown.output
    assert "query words: 1 kept, 400 dropped" in shown.output
    assert "400 of 600 occurrences" in shown.output
    assert "queries left empty: 175 of 375" in shown.output
    assert "WARNING" in shown.output and "--min-query-count" in shown.output
