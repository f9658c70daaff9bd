"""`encode` against the independent plain reference, bit for bit, and its formats against each
other: the original .npy files, vocab.tsv, CSR matrices and Parquet tables."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse
from amc_data_cli.main import cli
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.feature_extraction.text import CountVectorizer
from support import corpus, reference_encode
from support.encode_helpers import (
    assert_matches_reference,
    encode_record,
    reference_for,
    small_clickture,
    small_coco,
    snapshot,
    vocab_words,
)

from amc_data import load_encoded
from amc_data.encoding.core import EncodeConfig, encode
from amc_data.encoding.formats import original_index
from amc_data.encoding.record import input_records
from amc_data.fetching.manifest import bundled_manifests, record_checksum


@pytest.fixture(scope="module")
def clickture(tmp_path_factory):
    """A Clickture corpus wrapped in a top folder, with junk and folder entries, encoded once."""
    data_dir = tmp_path_factory.mktemp("clickture-data")
    made = small_clickture(
        data_dir,
        n_dev=1500,
        n_lite=2500,
        seed=11,
        wrap="keywords",
        junk=True,
        dir_entries=True,
        empty_lines=[corpus.dev_lines(3)[2]],
    )
    result = encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=2))
    reference = reference_for("clickture", data_dir, data_dir / "reference-work")
    return data_dir, made, result, reference


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("coco-data")
    made = small_coco(data_dir, per_split=400, seed=5, empty_imgids=[0, 7])
    result = encode("coco", data_dir=data_dir, config=EncodeConfig(jobs=2))
    reference = reference_for("coco", data_dir, data_dir / "reference-work")
    return data_dir, made, result, reference


def test_clickture_original_outputs_equal_the_reference_bit_for_bit(clickture):
    data_dir, _made, result, reference = clickture
    out_dir = data_dir / "clickture" / "encoded"
    assert result.out_dir == out_dir
    assert_matches_reference(out_dir, reference)
    dev_index = np.load(out_dir / "img_keyword_ind_clickture_dev_sk_6_sparse.npy")
    assert dev_index[0].tolist() == [0, -1]  # image 0 is not in the dev list: the quirk
    lite_index = np.load(out_dir / "img_keyword_ind_clickture_lite_sk_6_sparse.npy")
    assert lite_index[0, 0] >= 0  # image 0 is listed in Lite: its real block
    images = pd.read_parquet(out_dir / "images.parquet")
    lite = images[images["split"] == "lite"]
    without_rows = {i for i in lite.loc[lite["tokens_kept"] == 0, "img_id"] if i < len(lite_index)}
    assert without_rows  # some Lite images have no in-vocabulary keyword...
    assert set(np.flatnonzero((lite_index == -1).all(axis=1))) == without_rows  # ...and only they


def test_coco_original_outputs_equal_the_reference_bit_for_bit(coco):
    data_dir, made, result, reference = coco
    out_dir = data_dir / "coco" / "encoded"
    assert_matches_reference(out_dir, reference)
    pairs = np.load(out_dir / "img_keyword_rec_coco_sk_6.npy")
    splits = {image.imgid: image.split for image in made.images}
    assert {splits[i] for i in np.unique(pairs[:, 0])} == {"train", "test"}
    assert result.counts["val"]["encoded"] == 400  # the other splits are encoded beside


@pytest.mark.parametrize(("min_df", "stop_words"), [(2, "none"), (9, "english")])
def test_other_parameters_match_the_reference_too(tmp_path, min_df, stop_words):
    small_clickture(tmp_path, n_dev=300, n_lite=200, seed=3)
    config = EncodeConfig(jobs=1, min_df=min_df, stop_words=stop_words, formats=("original",))
    encode("clickture", data_dir=tmp_path, config=config)
    reference = reference_for(
        "clickture",
        tmp_path,
        tmp_path / "work",
        min_df=min_df,
        stop_words=None if stop_words == "none" else stop_words,
    )
    assert_matches_reference(tmp_path / "clickture" / "encoded", reference)


def test_a_stop_word_file_matches_the_reference(tmp_path):
    small_clickture(tmp_path, n_dev=300, n_lite=100, seed=4)
    words = ["white", "sink", "new", "the"]
    stop_file = tmp_path / "stop.txt"
    stop_file.write_text("# my list\n" + "\n".join(words) + "\n", encoding="utf-8")
    config = EncodeConfig(jobs=1, stop_words=str(stop_file), formats=("original",))
    encode("clickture", data_dir=tmp_path, config=config)
    reference = reference_for("clickture", tmp_path, tmp_path / "work", stop_words=words)
    assert_matches_reference(tmp_path / "clickture" / "encoded", reference)


def test_output_is_identical_whatever_the_number_of_jobs(tmp_path):
    small_clickture(tmp_path, n_dev=600, n_lite=900, seed=8)
    snapshots = []
    for jobs in (1, 2, 3):
        out = tmp_path / f"out-{jobs}"
        encode("clickture", data_dir=tmp_path, out=out, config=EncodeConfig(jobs=jobs))
        files = snapshot(out)
        record = encode_record(out)
        files.pop("encode.json")
        for key in ("created", "seconds"):
            record.pop(key)
        record["parameters"].pop("jobs")
        snapshots.append((files, record))
    assert snapshots[0] == snapshots[1] == snapshots[2]


def test_a_folder_stands_in_for_each_archive(tmp_path):
    made = small_clickture(tmp_path, n_dev=300, n_lite=300, seed=9, wrap="top")
    zipped = tmp_path / "zipped"
    encode("clickture", data_dir=tmp_path, out=zipped, config=EncodeConfig(jobs=1))
    for part in ("dev", "lite"):
        with zipfile.ZipFile(made.zip_path(part)) as archive:
            archive.extractall(made.folder / f"keywords_{part}")
        made.zip_path(part).unlink()
    unzipped = tmp_path / "unzipped"
    encode("clickture", data_dir=tmp_path, out=unzipped, config=EncodeConfig(jobs=2))
    files = snapshot(unzipped)
    files.pop("encode.json")
    expected = snapshot(zipped)
    expected.pop("encode.json")
    assert files.keys() == expected.keys()
    for name in files:
        if name != "images.parquet":  # holds the member paths, which differ
            assert files[name] == expected[name], name


def test_csr_parquet_and_pair_matrix_agree(clickture):
    data_dir, _made, result, _reference = clickture
    out_dir = data_dir / "clickture" / "encoded"
    words = vocab_words(out_dir)
    pairs_table = pq.read_table(out_dir / "pairs.parquet").to_pandas()
    images = pd.read_parquet(out_dir / "images.parquet")
    for split in ("dev", "lite"):
        pairs = np.load(out_dir / f"img_keyword_rec_clickture_{split}_sk_6.npy")
        expected = scipy.sparse.coo_matrix(
            (np.ones(len(pairs), dtype=np.int32), (pairs[:, 0], pairs[:, 1])),
            shape=(pairs[:, 0].max() + 1, len(words)),
        ).tocsr()
        matrix = scipy.sparse.load_npz(out_dir / f"clickture_{split}_csr.npz")
        assert matrix.shape[1] == len(words)
        assert matrix.shape[0] >= expected.shape[0]
        assert (matrix[: expected.shape[0]] != expected).nnz == 0
        assert matrix[expected.shape[0] :].nnz == 0
        in_split = pairs_table[pairs_table["split"] == split]
        assert in_split[["img_id", "word_id"]].to_numpy().tolist() == pairs.tolist()
        split_images = images[images["split"] == split]
        assert split_images["tokens_kept"].sum() == len(pairs) == result.counts[split]["pairs"]
        assert len(split_images) == result.counts[split]["encoded"]
    assert str(pairs_table["img_id"].dtype) == "int64"
    assert str(pairs_table["word_id"].dtype) == "int32"
    vocab = pd.read_parquet(out_dir / "vocab.parquet")
    assert vocab["word"].tolist() == words
    assert vocab["word_id"].tolist() == list(range(len(words)))


def test_tokens_seen_kept_positions_and_df_follow_scikit_learn(clickture):
    """The extra columns, checked against scikit-learn's own analyzer on the real documents."""
    data_dir, made, _result, _reference = clickture
    out_dir = data_dir / "clickture" / "encoded"
    analyzer = CountVectorizer(stop_words="english").build_analyzer()
    words = vocab_words(out_dir)
    vocabulary = {word: i for i, word in enumerate(words)}
    images = pd.read_parquet(out_dir / "images.parquet").set_index(["split", "img_id"])
    pairs = pd.read_parquet(out_dir / "pairs.parquet")
    documents = {}
    with zipfile.ZipFile(made.zip_path("dev")) as archive:
        for line in made.lines("dev"):
            keywords = reference_encode.json.loads(archive.read(made.member("dev", line)))
            documents[int(line)] = " ".join(keywords["tagging"]["keywords"])
    dev_pairs = pairs[pairs["split"] == "dev"].groupby("img_id")
    for img_id, document in list(documents.items())[:200]:
        tokens = analyzer(document)
        row = images.loc[("dev", img_id)]
        assert row["tokens_seen"] == len(tokens)
        expected = [(p, vocabulary[t]) for p, t in enumerate(tokens) if t in vocabulary]
        assert row["tokens_kept"] == len(expected)
        got = dev_pairs.get_group(img_id) if expected else pd.DataFrame(columns=pairs.columns)
        assert list(zip(got["position"], got["word_id"], strict=True)) == expected
    fitted = CountVectorizer(min_df=6, stop_words="english").fit_transform(documents.values())
    table = pd.read_csv(out_dir / "vocab.tsv", sep="\t", keep_default_na=False)
    assert table["df"].tolist() == np.asarray((fitted > 0).sum(axis=0)).ravel().tolist()


def test_parquet_is_readable_by_duckdb_and_has_bounded_row_groups(clickture, monkeypatch, tmp_path):
    data_dir, _made, result, _reference = clickture
    out_dir = data_dir / "clickture" / "encoded"
    counts = duckdb.sql(
        f"SELECT split, count(*) AS n FROM '{out_dir / 'pairs.parquet'}' GROUP BY split"
    ).fetchall()
    assert dict(counts) == {s: result.counts[s]["pairs"] for s in ("dev", "lite")}
    # The row-group size is honoured: shrink it and count the groups.
    import amc_data.encoding.outputs

    monkeypatch.setattr(amc_data.encoding.outputs, "PAIRS_ROW_GROUP", 5000)
    out = tmp_path / "small-groups"
    encode("clickture", data_dir=data_dir, out=out, config=EncodeConfig(jobs=1))
    metadata = pq.ParquetFile(out / "pairs.parquet").metadata
    total = sum(result.counts[s]["pairs"] for s in ("dev", "lite"))
    assert metadata.num_row_groups == -(-total // 5000)
    assert all(metadata.row_group(i).num_rows == 5000 for i in range(metadata.num_row_groups - 1))


def test_load_encoded_returns_matrix_vocabulary_and_images(clickture):
    data_dir, made, result, _reference = clickture
    loaded = load_encoded("clickture", "lite", data_dir=data_dir)
    assert loaded.vocabulary == vocab_words(data_dir / "clickture" / "encoded")
    assert len(loaded.images) == result.counts["lite"]["encoded"]
    assert set(loaded.images["split"]) == {"lite"}
    img_id = int(made.lines("lite")[0].split("/")[-1])
    counts = loaded.keywords(img_id)
    assert sum(counts.values()) == loaded.images.set_index("img_id").loc[img_id, "tokens_kept"]


def test_coco_split_without_keyword_files_is_left_out_with_a_warning(tmp_path, caplog):
    made = small_coco(tmp_path, per_split=60, seed=2)
    keep = tmp_path / "keep.zip"
    with zipfile.ZipFile(made.zip_path) as source, zipfile.ZipFile(keep, "w") as out:
        for info in source.infolist():
            if "keyword_val/" not in info.filename:
                out.writestr(info, source.read(info))
    shutil.move(keep, made.zip_path)
    result = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1))
    assert "keyword_val/" in caplog.text
    assert result.counts["val"]["encoded"] == 0
    assert encode_record(result.out_dir)["absent_splits"] == ["val"]
    assert not (result.out_dir / "coco_val_csr.npz").exists()
    reference = reference_for("coco", tmp_path, tmp_path / "work")
    assert_matches_reference(result.out_dir, reference)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 12), st.integers(0, 4)), min_size=0, max_size=30))
def test_index_quirks_match_the_reference_walk(blocks):
    """Any sequence of documents (ids repeat, adjacent or not; empty documents; image 0 or not):
    the index equals the reference's row-by-row walk over the pair matrix."""
    img_ids = np.array([b[0] for b in blocks], dtype=np.int64)
    counts = np.array([b[1] for b in blocks], dtype=np.int64)
    pairs = np.array([[i, 0] for i, c in blocks for _ in range(c)], dtype=np.int64).reshape(-1, 2)
    expected = reference_encode.index_from_pairs(pairs)
    actual = original_index(img_ids, counts)
    assert actual.dtype == np.int64
    assert actual.tolist() == expected.tolist()


def test_the_encode_record_vouches_only_for_files_fetch_knows(clickture, tmp_path):
    data_dir, made, result, _reference = clickture
    record = encode_record(result.out_dir)
    inputs = {item["name"]: item for item in record["inputs"]}
    # A generated list is not the file the bundled manifest knows: no hash is claimed for it.
    assert inputs["clickture-dev.lst"]["size"] > 0
    assert inputs["clickture-dev.lst"]["sha256"] is None
    assert inputs["keywords_dev.zip"]["sha256"] is None  # never fetched, no record
    assert record["parameters"]["min_df"] == 6
    assert record["packages"]["scikit-learn"] != "not installed"
    assert record["vocabulary_size"] == len(vocab_words(result.out_dir))
    # A manifest given with --manifest replaces the bundled one: its hash is vouched for, for
    # a file of its size only.
    listed = made.list_path("dev")
    digest = hashlib.sha256(listed.read_bytes()).hexdigest()
    manifest = tmp_path / "clickture.toml"
    manifest.write_text(
        'name = "clickture"\n'
        + "".join(
            f'[[files]]\nname = "{name}"\nurls = ["https://example.invalid/{name}"]\n{extra}\n'
            for name, extra in [
                ("clickture-dev.lst", f'size = {listed.stat().st_size}\nsha256 = "{digest}"'),
                ("clickture-lite.lst", f'size = 1\nsha256 = "{"cd" * 32}"'),
            ]
        )
    )
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["encode", "clickture", "--data-dir", str(data_dir), "--out", str(out), "-j", "1"]
    assert runner.invoke(cli, [*args, "--manifest", str(manifest)]).exit_code == 0
    inputs = {item["name"]: item for item in encode_record(out)["inputs"]}
    vouched = inputs["clickture-dev.lst"]
    assert (vouched["sha256"], vouched["sha256_source"]) == (digest, "manifest")
    assert inputs["clickture-lite.lst"]["sha256"] is None  # the size differs: not that file
    # A file fetch recorded on first download (no published hash) gets the recorded hash.
    fetched = tmp_path / "fetched"
    fetched.mkdir()
    archive = Path(shutil.copy(made.zip_path("dev"), fetched))
    record_checksum(fetched, archive.name, archive.stat().st_size, "ab" * 32, "download")
    (recorded,) = input_records(fetched, bundled_manifests()["clickture"], [archive])
    assert (recorded["sha256"], recorded["sha256_source"]) == ("ab" * 32, "recorded")


def test_the_real_dev_list_gets_the_bundled_manifests_hash(shared_data, tmp_path):
    """The real file's own bytes: only this part needs the authors' list at hand."""
    real = Path(shutil.copy(shared_data / "clickture-dev.lst", tmp_path / "clickture-dev.lst"))
    (record,) = input_records(tmp_path, bundled_manifests()["clickture"], [real])
    assert record["sha256"] == "e5a1c92899aa568854c513f5731a648cfc16867773facd310d3bce04a85cf41f"
    assert record["sha256_source"] == "manifest"
