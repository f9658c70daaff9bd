"""`prepare coco --precomp DIR`: SCAN/VSE++'s precomputed features, in their own layout, become
a prepared folder whose features stay the user's files (linked, never copied), with the splits
of the files, the 1K folds in testall's order, and the images whose captions differ named."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support.prepare_helpers import encoded_coco

from amc_data.errors import ConfigError, InputError
from amc_data.prepare import load_prepared
from amc_data.prepare.coco import CocoConfig, prepare_coco
from amc_data.prepare.format import FeatureFiles

COUNTS = {"train": 30, "restval": 10, "val": 10, "test": 25}
FAST = {"fold_size": 5, "min_query_count": 1}
REGIONS, DIM = 4, 64  # each feature file outweighs every other file of the folder


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("precomp-data")
    made = encoded_coco(data_dir, COUNTS)
    with zipfile.ZipFile(made.zip_path) as archive:
        karpathy = json.loads(archive.read(made.dataset_member))["images"]
    return data_dir, karpathy


def write_precomp(folder: Path, karpathy: list[dict], changed: int | None = None) -> dict:
    """A coco_precomp folder in SCAN's layout: train (train + restval), dev (val), testall
    (test), each in dataset.json order; train's ids one per caption line, the others one per
    image. The image `changed` (a cocoid) gets one caption other than dataset.json's."""
    folder.mkdir(parents=True)
    groups = {"train": ("train", "restval"), "dev": ("val",), "testall": ("test",)}
    rng = np.random.default_rng(7)
    arrays = {}
    for name, splits in groups.items():
        images = [im for im in karpathy if im["split"] in splits]
        array = rng.standard_normal((len(images), REGIONS, DIM)).astype(np.float32)
        np.save(folder / f"{name}_ims.npy", array)
        arrays[name] = (array, [im["cocoid"] for im in images])
        captions, ids = [], []
        for im in images:
            texts = [s["raw"] for s in im["sentences"][:5]]
            if im["cocoid"] == changed:
                texts[2] = "a purple elephant juggling teapots"
            captions += texts
            ids += [im["cocoid"]] * (5 if name == "train" else 1)
        (folder / f"{name}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
        (folder / f"{name}_ids.txt").write_text("\n".join(map(str, ids)) + "\n")
    return arrays


def _same_file(linked: Path, source: Path) -> bool:
    if linked.is_symlink():
        return linked.resolve() == source.resolve()
    return os.stat(linked).st_ino == os.stat(source).st_ino


def test_precomp_folder_is_linked_split_checked_and_trains(tmp_path, coco):
    data_dir, karpathy = coco
    changed = next(im["cocoid"] for im in karpathy if im["split"] == "val")
    precomp = tmp_path / "coco_precomp"
    arrays = write_precomp(precomp, karpathy, changed=changed)
    result = prepare_coco(
        out=tmp_path / "out",
        data_dir=data_dir,
        config=CocoConfig(**FAST, precomp=str(precomp)),
    )
    assert result.counts["images"] == {"train": 40, "val": 10, "test": 25}
    assert result.features_stored in ("hardlink", "symlink")
    info = json.loads((result.out / "prepared.json").read_text())
    files = info["features"]["files"]
    assert [f["name"] for f in files] == ["features-0.npy", "features-1.npy", "features-2.npy"]
    for entry, name in zip(files, ("train", "dev", "testall"), strict=True):
        # The user's file itself, not a copy: the same inode, or a link to it.
        assert _same_file(result.out / entry["name"], precomp / f"{name}_ims.npy")
        assert entry["rows"] == arrays[name][0].shape[0]
    big = arrays["testall"][0].nbytes
    copies = [
        p.name
        for p in result.out.iterdir()
        if not p.is_symlink() and p.stat().st_nlink == 1 and p.stat().st_size >= big
    ]
    assert copies == []
    assert "geometry" not in info["features"]  # detector boxes: no grid
    recorded = info["coco"]["precomp"]
    assert recorded["folder"] == str(precomp.resolve())
    assert recorded["files"]["train"]["ids_per"] == "caption"
    assert recorded["files"]["dev"]["ids_per"] == "image"
    assert recorded["caption_mismatches"] == {"count": 1, "cocoids": [changed]}
    assert any(str(changed) in note for note in result.notes)

    data = load_prepared(result.out)
    assert isinstance(data.features, FeatureFiles)
    assert data.features.shape == (75, REGIONS, DIM)
    # Each image's features are its precomp row; the test folds follow testall's order.
    by_cocoid = {im["cocoid"]: im["imgid"] for im in karpathy}
    for array, cocoids in arrays.values():
        rows = data.rows(np.array([by_cocoid[c] for c in cocoids]))
        np.testing.assert_array_equal(data.features[rows], array)
    images = data.images.set_index("img_id")
    testall = [by_cocoid[c] for c in arrays["testall"][1]]
    assert images.loc[testall, "fold"].tolist() == [i // 5 for i in range(25)]
    names = {im["imgid"]: im["filename"] for im in karpathy}
    assert all(images.loc[i, "file_name"] == names[i] for i in images.index)

    pytest.importorskip("torch")
    from amc_data.ranking.runs import evaluate
    from amc_data.ranking.training import TrainConfig, train

    run = tmp_path / "run"
    train(result.out, run, TrainConfig(epochs=1, dim=8, batch_size=16, device="cpu"))
    evaluation = evaluate([run], result.out, split="test")
    assert evaluation is not None


def test_precomp_restval_to_val_keeps_the_links_and_drop_copies_only_train(tmp_path, coco):
    data_dir, karpathy = coco
    precomp = tmp_path / "coco_precomp"
    write_precomp(precomp, karpathy)
    moved = prepare_coco(
        out=tmp_path / "val",
        data_dir=data_dir,
        config=CocoConfig(**FAST, precomp=str(precomp), restval="val"),
    )
    assert moved.counts["images"] == {"train": 30, "val": 20, "test": 25}
    dropped = prepare_coco(
        out=tmp_path / "drop",
        data_dir=data_dir,
        config=CocoConfig(**FAST, precomp=str(precomp), restval="drop"),
    )
    assert dropped.counts["images"] == {"train": 30, "val": 10, "test": 25}
    files = json.loads((dropped.out / "prepared.json").read_text())["features"]["files"]
    assert files[0]["stored"] == "copy"  # train less restval: its own file
    assert all(f["stored"] != "copy" for f in files[1:])
    assert load_prepared(dropped.out).features.shape == (65, REGIONS, DIM)


def test_precomp_problems_are_named(tmp_path, coco):
    data_dir, karpathy = coco
    precomp = tmp_path / "coco_precomp"
    write_precomp(precomp, karpathy)
    lines = (precomp / "dev_ids.txt").read_text().splitlines()
    (precomp / "dev_ids.txt").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match=r"dev_ids.txt has 9 ids; expected one per image row"):
        prepare_coco(out=tmp_path / "o", data_dir=data_dir, config=CocoConfig(precomp=str(precomp)))
    (precomp / "dev_ids.txt").write_text("\n".join([*lines[:-1], "999999999"]) + "\n")
    with pytest.raises(InputError, match=r"1 COCO ids are not in .*999999999"):
        prepare_coco(out=tmp_path / "o", data_dir=data_dir, config=CocoConfig(precomp=str(precomp)))
    with pytest.raises(ConfigError, match="precomp replaces features"):
        prepare_coco(
            tmp_path / "f.npy",
            tmp_path / "i.npy",
            out=tmp_path / "o",
            data_dir=data_dir,
            config=CocoConfig(precomp=str(precomp)),
        )
    with pytest.raises(ConfigError, match="features is needed"):
        prepare_coco(out=tmp_path / "o", data_dir=data_dir)


def test_cli_prepare_coco_takes_precomp_instead_of_features(tmp_path, coco):
    data_dir, karpathy = coco
    precomp = tmp_path / "coco_precomp"
    write_precomp(precomp, karpathy)
    runner = CliRunner()
    base = ["prepare", "coco", "--data-dir", str(data_dir), "--fold-size", "5"]
    missing = runner.invoke(cli, [*base, "--out", str(tmp_path / "a")])
    assert missing.exit_code == 2 and "--features" in missing.output
    assert "--precomp" in missing.output
    done = runner.invoke(
        cli,
        [*base, "--min-query-count", "1", "--precomp", str(precomp), "--out", str(tmp_path / "b")],
    )
    assert done.exit_code == 0, done.output
    assert pq.read_table(tmp_path / "b" / "images.parquet").num_rows == 75
