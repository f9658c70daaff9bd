"""`amc-data example coco DIR`: a small example of the COCO layout that `encode coco` and
`prepare coco` read, written only into a new or empty folder, the same bytes for the same
settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from amc_data_cli.main import cli
from click.testing import CliRunner

from amc_data import EncodeConfig, encode
from amc_data.examples import ExampleConfig, write_example


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_example_is_the_coco_layout_encode_reads(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["example", "coco", str(tmp_path / "byod")])
    assert result.exit_code == 0, result.output
    assert "48 images (28 train, 4 restval, 8 val, 8 test)" in result.output
    keywords = tmp_path / "byod" / "coco" / "keywords_coco"
    images = json.loads((keywords / "dataset.json").read_text())["images"]
    assert [image["imgid"] for image in images] == list(range(48))
    for image in images:
        assert len(image["sentences"]) == 5
        assert {s["imgid"] for s in image["sentences"]} == {image["imgid"]}
        stem = image["filename"].removesuffix(".jpg")
        record = json.loads((keywords / f"keyword_{image['split']}" / f"{stem}.json").read_text())
        assert all(isinstance(k, str) for k in record["tagging"]["keywords"])
    features = np.load(tmp_path / "byod" / "features.npy")
    ids = np.load(tmp_path / "byod" / "feature_ids.npy")
    assert features.shape == (48, 4, 16) and features.dtype == np.float16
    assert ids.dtype == np.int64 and sorted(ids.tolist()) == list(range(48))
    # The real encoder takes it as COCO, with every split and no skipped file.
    encoded = encode("coco", data_dir=tmp_path / "byod", config=EncodeConfig(jobs=1, min_df=2))
    record = json.loads((encoded.out_dir / "encode.json").read_text())
    assert not record.get("skipped")
    assert set(record["counts"]) == {"train", "restval", "val", "test"}


def test_the_same_settings_give_the_same_bytes(tmp_path: Path) -> None:
    config = ExampleConfig(seed=3, images=30, regions=2, dim=8)
    write_example("coco", tmp_path / "a", config)
    write_example("coco", tmp_path / "b", config)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    write_example("coco", tmp_path / "c", ExampleConfig(seed=4, images=30, regions=2, dim=8))
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_a_folder_holding_files_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(cli, ["example", "coco", str(out)])
    assert result.exit_code == 2
    assert f"{out} is a folder that is not empty" in result.output
    assert _files(out) == {"notes.txt": b"keep me"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left


def test_an_empty_folder_is_filled_with_the_mode_a_new_folder_gets(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir(mode=0o755)
    result = CliRunner().invoke(cli, ["example", "coco", str(tmp_path / "empty"), "--quiet"])
    assert result.exit_code == 0, result.output
    assert result.output == ""
    assert (tmp_path / "empty" / "features.npy").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    assert (tmp_path / "empty").stat().st_mode & 0o777 == 0o777 & ~_umask()


def test_too_few_images_is_a_bad_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["example", "coco", str(tmp_path / "x"), "--images", "10"])
    assert result.exit_code == 2
    assert "--images" in result.output
    assert not (tmp_path / "x").exists()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
