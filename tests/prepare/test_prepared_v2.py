"""Version 2 of the prepared folder: features held as several files read as one array, the
pictures' file names, the geometry of features from `amc-data features`; version-1 folders
still load, and a newer version is refused."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from support.checkpoint_fixtures import DATA as V1_DATA
from support.prepare_helpers import save_features, small_parts

from amc_data.errors import InputError
from amc_data.prepare import load_prepared
from amc_data.prepare.format import FeatureFiles, map_features
from amc_data.prepare.writer import FeatureRows, write_prepared


def _parts_of(tmp: Path, array: np.ndarray, cuts: list[int]) -> list[FeatureRows]:
    """`array` saved as one .npy per piece between `cuts`, each a linkable `FeatureRows`."""
    pieces = np.split(array, cuts)
    rows = []
    for k, piece in enumerate(pieces):
        path = tmp / f"piece{k}.npy"
        np.save(path, piece)
        rows.append(FeatureRows((np.load(path, mmap_mode="r"),), path=path))
    return rows


def test_feature_files_index_like_the_whole_array():
    rng = np.random.default_rng(0)
    whole = rng.standard_normal((10, 3, 2)).astype(np.float32)
    files = FeatureFiles([whole[:4], whole[4:5], whole[5:]])
    assert files.shape == whole.shape and files.dtype == whole.dtype and len(files) == 10
    assert files.nbytes == whole.nbytes and files.ndim == 3
    for key in (0, 4, -1, slice(2, 8), slice(None), np.array([9, 0, 4, 4, 5])):
        np.testing.assert_array_equal(files[key], whole[key])
    grid = np.array([[7, 1], [3, 3]])
    np.testing.assert_array_equal(files[grid], whole[grid])
    np.testing.assert_array_equal(files[np.array([6, 2]), 1], whole[np.array([6, 2]), 1])
    np.testing.assert_array_equal(np.asarray(files), whole)
    with pytest.raises(IndexError):
        files[np.array([10])]


def test_several_feature_files_are_linked_and_read_as_one(tmp_path):
    parts = small_parts(tmp_path)
    whole = parts.pop("features")
    out = write_prepared(tmp_path / "out", features=_parts_of(tmp_path, whole, [5, 7]), **parts)
    info = json.loads((out / "prepared.json").read_text())
    assert info["format_version"] == 2
    files = info["features"]["files"]
    assert [(f["name"], f["rows"]) for f in files] == [
        ("features-0.npy", 5),
        ("features-1.npy", 2),
        ("features-2.npy", 5),
    ]
    assert all(f["stored"] in ("hardlink", "symlink") for f in files)
    assert not (out / "features.npy").exists()
    data = load_prepared(out, check_features=True)
    assert isinstance(data.features, FeatureFiles) and data.features.shape == whole.shape
    rows = data.rows(parts["feature_ids"][::-1])
    np.testing.assert_array_equal(data.features[rows], whole[::-1])
    # A worker reopens the folder: by pickling, or through map_features.
    again = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(again.features[rows], whole[::-1])
    np.testing.assert_array_equal(map_features(out)[np.arange(12)], whole)
    # Replacing the folder removes its feature files too, and only them.
    write_prepared(out, features=whole, force=True, **parts)
    assert sorted(p.name for p in out.glob("features*.npy")) == ["features.npy"]


def test_a_missing_feature_file_is_named(tmp_path):
    parts = small_parts(tmp_path)
    whole = parts.pop("features")
    out = write_prepared(tmp_path / "out", features=_parts_of(tmp_path, whole, [6]), **parts)
    (out / "features-1.npy").unlink()
    with pytest.raises(InputError, match=r"lacks features-1\.npy"):
        load_prepared(out)


def test_file_names_are_kept_and_null_where_unknown(tmp_path):
    parts = small_parts(tmp_path)
    names = [f"img{i}.jpg" if i % 3 else None for i in range(12)]
    parts["images"] = parts["images"].assign(file_name=names)
    data = load_prepared(write_prepared(tmp_path / "named", **parts))
    assert data.images["file_name"].tolist() == names
    plain = load_prepared(write_prepared(tmp_path / "plain", **small_parts(tmp_path)))
    assert plain.images["file_name"].isna().all()


def test_geometry_of_extracted_features_reaches_prepared_json(tmp_path):
    from support.corpus import make_coco  # noqa: F401  (the corpus the coco tests share)
    from support.prepare_helpers import encoded_coco

    from amc_data.prepare.coco import CocoConfig, prepare_coco

    data_dir = tmp_path / "data"
    made = encoded_coco(data_dir)
    ids = np.array([image.imgid for image in made.images])
    features, feature_ids = save_features(tmp_path, "features", ids, regions=4)
    config = CocoConfig(fold_size=5, min_query_count=1)
    plain = prepare_coco(
        features, feature_ids, tmp_path / "plain", data_dir=data_dir, config=config
    )
    assert "geometry" not in json.loads((plain.out / "prepared.json").read_text())["features"]
    shape = list(np.load(features, mmap_mode="r").shape)
    report = {"shape": shape, "grid": 2, "image_size": 224, "resize": 256, "backbone": {}}
    features.with_suffix(".json").write_text(json.dumps(report))
    result = prepare_coco(features, feature_ids, tmp_path / "out", data_dir=data_dir, config=config)
    info = json.loads((result.out / "prepared.json").read_text())
    assert info["features"]["geometry"] == {"image_size": 224, "resize": 256, "grid": 2}
    names = {image.imgid: image.filename for image in made.images}
    images = load_prepared(result.out).images
    assert [names[i] for i in images["img_id"]] == images["file_name"].tolist()


def test_a_version_1_folder_loads_as_before_and_a_newer_one_is_refused(tmp_path):
    data = load_prepared(V1_DATA)
    assert data.info["format_version"] == 1 and isinstance(data.features, np.ndarray)
    assert data.images["file_name"].isna().all()
    newer = tmp_path / "newer"
    shutil.copytree(V1_DATA, newer)
    info = json.loads((newer / "prepared.json").read_text())
    (newer / "prepared.json").write_text(json.dumps({**info, "format_version": 3}))
    with pytest.raises(InputError, match=r"reads version 2 at most.*Upgrade amc-data"):
        load_prepared(newer)
