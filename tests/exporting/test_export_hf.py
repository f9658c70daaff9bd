"""`export(..., to="hf")`: `datasets.load_dataset(DIR, CONFIG)` opens the folder with the
features its card declares, and finds the prepared folder's rows, features exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from amc_data.exporting import export

_EXTRA = 'reading an export back needs the export extra: pip install "amc-data[export]"'
datasets = pytest.importorskip("datasets", reason=_EXTRA)
yaml = pytest.importorskip("yaml", reason="the card's front matter is read with PyYAML")


def _load(out: Path, config: str, cache: Path):
    return datasets.load_dataset(str(out), config, cache_dir=str(cache))


def _check_rows(out: Path, data: Path, cache: Path, expected) -> None:
    expected_images, expected_tables = expected
    images_wanted, tables_wanted = expected_images(data), expected_tables(data)
    images, features = _load(out, "images", cache), _load(out, "features", cache)
    queries, judgments = _load(out, "queries", cache), _load(out, "judgments", cache)
    for split, wanted in images_wanted.items():
        rows = images[split].to_list()
        assert sorted(r["img_id"] for r in rows) == sorted(wanted)
        for row in rows:
            want = wanted[row["img_id"]]
            assert row == {k: v for k, v in want.items() if k != "features"}
        stacked = features[split].with_format("numpy")[:]
        # Row i of `features` is the image of row i of `images`, and its values are exact.
        assert stacked["img_id"].tolist() == [r["img_id"] for r in rows]
        for img_id, values in zip(stacked["img_id"], stacked["features"], strict=True):
            exact = wanted[int(img_id)]["features"]
            assert values.shape == exact.shape
            assert np.array_equal(values.astype(exact.dtype), exact)
        got_queries = sorted(tuple(r.values()) for r in queries[split].to_list())
        got_judgments = sorted(tuple(r.values()) for r in judgments[split].to_list())
        assert got_queries == tables_wanted[split]["queries"]
        assert got_judgments == tables_wanted[split]["judgments"]


def test_hf_export_loads_back_with_the_same_rows_and_features(
    synth_folder: Path, tmp_path: Path, expected
) -> None:
    out = tmp_path / "hf"
    result = export(synth_folder, out, to="hf", shard_mb=0.05)  # features cut into 2 shards
    assert result.out == out.resolve() and result.to == "hf"
    assert len(list((out / "features").glob("train-*.parquet"))) == 2
    _check_rows(out, synth_folder, tmp_path / "cache", expected)
    features = _load(out, "features", tmp_path / "cache")["train"].features
    assert features["features"] == datasets.Array2D(shape=(8, 32), dtype="float16")
    images = _load(out, "images", tmp_path / "cache")["train"].features
    assert images["keywords"] == datasets.List(datasets.Value("string"))
    # `images` is the default config.
    default = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert default["val"].column_names == list(images) and len(default["val"]) == 36


def test_hf_export_of_a_coco_shaped_folder(coco_folder: Path, tmp_path: Path, expected) -> None:
    out = tmp_path / "hf"
    export(coco_folder, out, to="hf")
    _check_rows(out, coco_folder, tmp_path / "cache", expected)
    features = _load(out, "features", tmp_path / "cache")["test"].features["features"]
    assert features == datasets.Array2D(shape=(1, 6), dtype="float32")


def test_the_card_names_source_licences_splits_records_and_citation(
    coco_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "hf"
    export(coco_folder, out, to="hf")
    text = (out / "README.md").read_text(encoding="utf-8")
    _, front, body = text.split("---\n", 2)
    card = yaml.safe_load(front)
    assert card["license"] == "other" and card["license_name"]
    configs = {c["config_name"]: c for c in card["configs"]}
    assert list(configs) == ["images", "features", "queries", "judgments"]
    assert configs["images"]["default"] is True
    assert {f["split"] for f in configs["judgments"]["data_files"]} == {"train", "val", "test"}
    info = {c["config_name"]: c for c in card["dataset_info"]}
    assert {s["name"]: s["num_examples"] for s in info["images"]["splits"]} == {
        "train": 8,
        "val": 4,
        "test": 4,
    }
    assert "CC BY 4.0" in body and "Flickr" in body  # COCO's terms
    assert "Nevatia" in body and "@inproceedings{chen2017amc" in body
    assert "## Encode record" in body and '"dataset": "coco"' in body
    assert '"fold_size": 1000' in body  # the prepare record's options
    # The Parquet files need nothing but pyarrow to read.
    table = pq.read_table(next((out / "images").glob("test-*.parquet")))
    assert table.column_names == [
        *("img_id", "split", "fold", "source_id", "file_name", "keywords", "keyword_counts")
    ]


def test_the_same_folder_exports_to_the_same_bytes(synth_folder: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    export(synth_folder, first, to="hf", shard_mb=0.05)
    export(synth_folder, second, to="hf", shard_mb=0.05)
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
