"""`export(..., to="wds")`: tar shards that `webdataset.WebDataset` and plain `tarfile` read
back as the prepared folder's images, keywords and features, with the queries and judgments
beside them; the same folder gives the same bytes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from amc_data.exporting import export


def _check_samples(samples: list[dict], wanted: dict[int, dict]) -> None:
    assert sorted(int(s["__key__"]) for s in samples) == sorted(wanted)
    for sample in samples:
        want = wanted[int(sample["__key__"])]
        values = np.load(io.BytesIO(sample["features.npy"]), allow_pickle=False)
        assert values.dtype == want["features"].dtype
        assert np.array_equal(values, want["features"])
        keywords = json.loads(sample["keywords.json"])
        assert keywords == {k: want[k] for k in ("keywords", "keyword_counts")}
        image = json.loads(sample["json"])
        assert image == {k: v for k, v in want.items() if k not in (*keywords, "features")}


def _tar_samples(shards: list[Path]) -> list[dict]:
    """The samples of `shards` read with the standard library alone."""
    samples: dict[str, dict] = {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                assert (member.mtime, member.uid, member.gid, member.mode) == (0, 0, 0, 0o644)
                key, _, extension = member.name.partition(".")
                data = tar.extractfile(member).read()  # type: ignore[union-attr]
                samples.setdefault(key, {"__key__": key})[extension] = data
    return list(samples.values())


def test_wds_export_reads_back_with_tarfile_and_the_same_rows(
    coco_folder: Path, tmp_path: Path, expected
) -> None:
    expected_images, expected_tables = expected
    out = tmp_path / "wds"
    export(coco_folder, out, to="wds", shard_mb=0.003)  # a few samples per shard
    images, tables = expected_images(coco_folder), expected_tables(coco_folder)
    for split, wanted in images.items():
        shards = sorted(out.glob(f"images-{split}-*.tar"))
        assert shards and shards[0].name == f"images-{split}-000000.tar"
        _check_samples(_tar_samples(shards), wanted)
    assert len(list(out.glob("images-train-*.tar"))) > 1
    queries = pq.read_table(out / "queries.parquet").to_pylist()
    judgments = pq.read_table(out / "judgments.parquet").to_pylist()
    for split, want in tables.items():
        got = sorted(tuple(q.values()) for q in queries if q["split"] == split)
        assert got == want["queries"]
        got = sorted(
            (j["query_id"], j["img_id"], j["label"]) for j in judgments if j["split"] == split
        )
        assert got == want["judgments"]


def test_wds_export_streams_through_webdataset(
    synth_folder: Path, tmp_path: Path, expected
) -> None:
    webdataset = pytest.importorskip(
        "webdataset",
        reason='reading an export back needs the export extra: pip install "amc-data[export]"',
    )
    expected_images, _ = expected
    out = tmp_path / "wds"
    export(synth_folder, out, to="wds", shard_mb=0.05)
    images = expected_images(synth_folder)
    for split, wanted in images.items():
        shards = [str(p) for p in sorted(out.glob(f"images-{split}-*.tar"))]
        samples = list(webdataset.WebDataset(shards, shardshuffle=False))
        _check_samples(samples, wanted)


def test_wds_shards_are_bounded_and_the_bytes_fixed(synth_folder: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    export(synth_folder, first, to="wds", shard_mb=0.02)
    export(synth_folder, second, to="wds", shard_mb=0.02)
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(second) for p in second.rglob("*") if p.is_file())
    assert all((first / n).read_bytes() == (second / n).read_bytes() for n in names)
    # A shard stops before the sample that would take it past 20 kB (the end-of-archive
    # blocks and the padding to a 10 kB record come on top).
    for shard in first.glob("*.tar"):
        with tarfile.open(shard) as tar:
            last = tar.getmembers()[-1]
            end = last.offset_data + -(-last.size // 512) * 512
        assert end <= 20_000
