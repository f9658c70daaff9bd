"""The prepared dataset folder: written atomically, read back with every cross-check, and each
kind of damage reported as an InputError that names the file, the row or id, and the fix."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from support.prepare_helpers import (
    KEYWORDS,
    rewrite_table,
    small_parts,
    write_small,
    write_vocab_tsv,
)

import amc_data
from amc_data.errors import ConfigError, InputError, OutputFolderError
from amc_data.prepare import (
    FeatureRows,
    QueryVocabulary,
    fit_query_vocabulary,
    load_prepared,
    tokenize_queries,
    write_prepared,
)


@pytest.fixture
def prepared(tmp_path: Path) -> Path:
    return write_small(tmp_path / "prepared", tmp_path)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- writing and reading back ------------------------------------------------------------------
def test_round_trip_keeps_every_file_and_records_what_it_was_made_of(tmp_path, prepared):
    parts = small_parts(tmp_path)
    data = load_prepared(prepared)
    assert sorted(p.name for p in prepared.iterdir()) == sorted(
        [
            "prepared.json",
            "features.npy",
            "feature_ids.npy",
            "keywords.npz",
            "vocab.tsv",
            "images.parquet",
            "queries.parquet",
            "judgments.parquet",
            "query_vocab.tsv",
        ]
    )
    assert isinstance(data.features, np.memmap)
    assert np.array_equal(data.features, parts["features"])
    assert data.feature_ids.dtype == np.int64
    assert np.array_equal(data.feature_ids, parts["feature_ids"])
    assert data.keywords.dtype == np.int32
    assert (data.keywords != parts["keywords_csr"]).nnz == 0
    assert data.vocabulary == KEYWORDS
    assert data.query_vocabulary == list(parts["query_vocabulary"].words)
    # The Parquet files, read with pyarrow alone, have the documented types.
    assert pq.read_schema(prepared / "images.parquet").types[:3] == [
        pa.int64(),
        pa.string(),
        pa.int8(),
    ]
    assert pq.read_schema(prepared / "queries.parquet").types[:3] == [
        pa.int64(),
        pa.string(),
        pa.string(),
    ]
    assert pq.read_schema(prepared / "judgments.parquet").types == [
        pa.int64(),
        pa.int64(),
        pa.int32(),
    ]
    info = json.loads((prepared / "prepared.json").read_text())
    assert info == data.info
    assert info["format_version"] == 2 and info["source"] == "synth"
    assert info["amc_data"] == amc_data.__version__
    assert info["counts"]["images"] == {"train": 6, "val": 3, "test": 3}
    assert info["counts"]["queries"] == {"train": 12, "val": 6, "test": 6}
    assert info["features"]["shape"] == [12, 3, 4] and info["features"]["dtype"] == "float32"
    assert info["fingerprints"] == {
        "keywords": _sha256(prepared / "vocab.tsv"),
        "queries": _sha256(prepared / "query_vocab.tsv"),
    }
    assert data.fingerprints == info["fingerprints"]
    assert info["options"] == {"seed": 0}
    assert not list(tmp_path.glob(".prepared.*staging*"))


def test_lookups(prepared):
    data = load_prepared(prepared)
    rows = data.rows(np.array([105, 100]))
    assert data.feature_ids[rows].tolist() == [105, 100]
    with pytest.raises(InputError, match=r"img_id\(s\) 7 have no features"):
        data.rows(np.array([100, 7]))
    assert set(data.split_images("val")) == set(
        data.images.loc[data.images.split == "val", "img_id"]
    )
    assert len(data.split_queries("test")) == 6
    with pytest.raises(ConfigError, match="no split 'dev'"):
        data.split_queries("dev")
    words = data.query_vocabulary
    tokens = data.query_token_ids(np.array([1000, 1001]))  # "a red car by the sea", "dog on ..."
    assert [[words[i] for i in t] for t in tokens] == [["red", "car", "sea"], ["dog", "beach"]]
    with pytest.raises(InputError, match="query_id"):
        data.query_token_ids(np.array([5]))


def test_two_dimensional_features_are_one_region_without_a_copy(tmp_path):
    parts = small_parts(tmp_path)
    flat = parts["features"][:, 0, :].astype(np.float16)
    data = load_prepared(write_small(tmp_path / "p", tmp_path, features=flat))
    assert data.features.shape == (12, 1, 4)
    assert data.features.dtype == np.float16
    assert isinstance(data.features, np.memmap) and not data.features.flags.owndata
    assert np.array_equal(data.features[:, 0], flat)
    assert data.info["features"]["file_shape"] == [12, 4]


def test_a_feature_file_in_the_layout_is_linked_not_copied(tmp_path):
    parts = small_parts(tmp_path)
    source = tmp_path / "user-features.npy"
    np.save(source, parts["features"])
    rows = FeatureRows((np.load(source, mmap_mode="r"),), path=source)
    out = write_small(tmp_path / "p", tmp_path, features=rows)
    assert os.path.samefile(out / "features.npy", source)
    info = load_prepared(out).info["features"]
    assert info["stored"] == "hardlink" and info["source"] == str(source.resolve())
    # Linking can be declined; rows picked from a file are always copied.
    copied = write_small(tmp_path / "c", tmp_path, features=rows, link_features=False)
    assert not os.path.samefile(copied / "features.npy", source)
    picked = FeatureRows(
        (np.load(source, mmap_mode="r"),), rows=(np.arange(12)[::-1],), path=source
    )
    out = write_small(tmp_path / "r", tmp_path, features=picked)
    assert load_prepared(out).info["features"]["stored"] == "copy"
    assert np.array_equal(load_prepared(out).features, parts["features"][::-1])


def test_rows_from_two_files_are_copied_in_order(tmp_path):
    parts = small_parts(tmp_path)
    first, second = parts["features"][:5], parts["features"][5:]
    rows = FeatureRows((first, second), rows=(None, np.arange(second.shape[0])))
    data = load_prepared(write_small(tmp_path / "p", tmp_path, features=rows))
    assert np.array_equal(data.features, parts["features"])


def test_float64_features_are_stored_as_float32_and_integers_refused(tmp_path):
    parts = small_parts(tmp_path)
    out = write_small(tmp_path / "p", tmp_path, features=parts["features"].astype(np.float64))
    assert load_prepared(out).features.dtype == np.float32
    with pytest.raises(InputError, match="floating point"):
        write_small(tmp_path / "q", tmp_path, features=np.ones((12, 3, 4), dtype=np.int32))


# -- the output folder -------------------------------------------------------------------------
def test_an_existing_prepared_folder_is_replaced_only_with_force(tmp_path, prepared):
    with pytest.raises(OutputFolderError, match=r"already holds a prepared dataset.*--force"):
        write_small(prepared, tmp_path)
    parts = small_parts(tmp_path)
    write_small(prepared, tmp_path, force=True, options={"seed": 1}, features=parts["features"] * 2)
    data = load_prepared(prepared)
    assert data.info["options"] == {"seed": 1}
    assert np.array_equal(data.features, parts["features"] * 2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".prepared")) == [
        ".prepared.lock"
    ]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_folders_get_the_mode_the_umask_gives(tmp_path, umask):
    """Not the 0700 of a private temporary folder: others may read what the umask lets them."""
    previous = os.umask(umask)
    try:
        out = write_small(tmp_path / "new" / "prepared", tmp_path)
        replaced = write_small(out, tmp_path, force=True)
    finally:
        os.umask(previous)
    for folder in (out.parent, out, replaced):
        assert oct(folder.stat().st_mode & 0o777) == oct(0o777 & ~umask), folder


def test_a_folder_that_is_not_prepared_is_never_touched(tmp_path):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(OutputFolderError, match="not a prepared dataset"):
        write_small(other, tmp_path, force=True)
    assert [p.name for p in other.iterdir()] == ["holiday.jpg"]
    empty = tmp_path / "empty"
    empty.mkdir()
    load_prepared(write_small(empty, tmp_path))  # an empty folder is fine


def test_a_failed_write_leaves_nothing_and_keeps_the_old_folder(tmp_path, prepared):
    before = (prepared / "prepared.json").read_bytes()
    bad = small_parts(tmp_path)["features"].copy()
    bad[4, 1, 2] = np.nan
    with pytest.raises(InputError, match=r"row 4 \(img_id \d+\) holds NaN or Inf"):
        write_small(prepared, tmp_path, features=bad, force=True)
    assert (prepared / "prepared.json").read_bytes() == before
    assert not list(tmp_path.glob(".prepared.staging-*"))
    with pytest.raises(InputError, match="no judgment"):
        parts = small_parts(tmp_path)
        write_small(tmp_path / "new", tmp_path, judgments=parts["judgments"].iloc[1:])
    assert not (tmp_path / "new").exists()


def test_a_source_this_amc_data_has_not_heard_of_is_written_and_read(tmp_path):
    out = write_small(tmp_path / "p", tmp_path, source="flickr30k")
    assert load_prepared(out).info["source"] == "flickr30k"
    info = json.loads((out / "prepared.json").read_text(encoding="utf-8"))
    info["source"] = ""
    (out / "prepared.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(InputError, match="has source '', not the name of a dataset"):
        load_prepared(out)


def test_write_checks_its_arguments(tmp_path):
    parts = small_parts(tmp_path)
    for bad in ("", " coco", None):
        with pytest.raises(ConfigError, match="source must be the name of the dataset"):
            write_small(tmp_path / "p", tmp_path, source=bad)
    with pytest.raises(InputError, match="12 feature rows but 11 feature ids"):
        write_small(tmp_path / "p", tmp_path, feature_ids=parts["feature_ids"][:11])
    with pytest.raises(InputError, match=r"shape \(12, 4\); expected \(12, 5\)"):
        write_small(tmp_path / "p", tmp_path, keywords_csr=parts["keywords_csr"][:, :4])
    judgments = parts["judgments"].astype({"label": float})
    judgments.loc[3, "label"] = 1.5
    with pytest.raises(InputError, match=r"must hold integers; row 3 holds 1\.5"):
        write_small(tmp_path / "p", tmp_path, judgments=judgments)
    with pytest.raises(ConfigError, match="missing \\['split'\\]"):
        write_small(tmp_path / "p", tmp_path, queries=parts["queries"].drop(columns="split"))
    write_vocab_tsv(tmp_path / "bad.tsv").write_text("id\tword\n0\tcar\n")
    with pytest.raises(InputError, match="not the header"):
        write_small(tmp_path / "p", tmp_path, vocab_tsv_path=tmp_path / "bad.tsv")


# -- every cross-check of load_prepared --------------------------------------------------------
def _load_fails(folder: Path, *patterns: str) -> str:
    with pytest.raises(InputError) as caught:
        load_prepared(folder)
    message = str(caught.value)
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_images_without_features(prepared):
    def add_image(frame):
        extra = frame.iloc[:1].copy()
        extra["img_id"] = 999
        return pd.concat([frame, extra], ignore_index=True)

    rewrite_table(prepared / "images.parquet", add_image)
    _load_fails(
        prepared,
        "images.parquet",
        "1 image(s) with no row in feature_ids.npy",
        "img_id 999",
        "Prepare the dataset again",
    )


def test_features_without_an_image_or_without_an_id(tmp_path, prepared):
    ids = np.load(prepared / "feature_ids.npy")
    original = pq.read_table(prepared / "images.parquet")
    rewrite_table(prepared / "images.parquet", lambda f: f[f.img_id != ids[3]])
    _load_fails(prepared, "feature_ids.npy", "images.parquet does not list", f"img_id {ids[3]}")
    pq.write_table(original, prepared / "images.parquet")
    np.save(prepared / "feature_ids.npy", ids[:-1])
    _load_fails(
        prepared,
        "feature_ids.npy",
        "11 ids but features.npy has 12 rows",
        "feature rows without an id",
    )


def test_duplicate_feature_ids(prepared):
    ids = np.load(prepared / "feature_ids.npy")
    ids[7] = ids[2]
    np.save(prepared / "feature_ids.npy", ids)
    _load_fails(
        prepared,
        "feature_ids.npy",
        f"lists img_id {ids[2]} twice (rows 2 and 7",
        "drop the repeats",
    )


def test_nan_or_inf_in_features_found_chunk_by_chunk(prepared, monkeypatch):
    import amc_data.prepare.format as fmt

    monkeypatch.setattr(fmt, "_CHUNK_BYTES", 48)  # one row (3 x 4 float32) per chunk
    features = np.load(prepared / "features.npy", mmap_mode="r+")
    features[9, 0, 3] = np.inf
    features.flush()
    del features
    ids = np.load(prepared / "feature_ids.npy")
    _load_fails(
        prepared,
        "features.npy row 9",
        f"(img_id {ids[9]})",
        "NaN or Inf",
        "Extract the features of those images again",
    )
    with pytest.raises(InputError, match="row 9"):
        load_prepared(prepared, check_features=True)
    load_prepared(prepared, check_features=False)  # the caller's choice


def test_an_untouched_feature_file_is_not_rescanned(prepared, monkeypatch):
    import amc_data.prepare.format as fmt

    def scan(*_args):
        raise AssertionError("scanned")

    monkeypatch.setattr(fmt, "scan_finite", scan)
    load_prepared(prepared)
    with pytest.raises(AssertionError):
        load_prepared(prepared, check_features=True)


def test_labels_that_are_not_integers(prepared):
    def float_labels(frame):
        frame["label"] = frame["label"].astype(float)
        frame.loc[5, "label"] = 0.5
        return frame

    rewrite_table(prepared / "judgments.parquet", float_labels)
    _load_fails(
        prepared,
        "judgments.parquet",
        "column 'label' is float64, expected int32",
        "row 5 holds 0.5",
    )


def test_labels_outside_their_range_are_refused_at_load_time(tmp_path, prepared):
    """Eval would stop only after scoring, naming neither file nor row."""

    def set_label(row: int, value: int):
        def edit(frame):
            frame.loc[row, "label"] = value
            return frame

        return edit

    rewrite_table(prepared / "judgments.parquet", set_label(21, -5))
    _load_fails(
        prepared,
        "judgments.parquet: row 21 ",
        "label -5",
        "0 or more",
        "Fix the labels",
    )
    # A click count of a train judgment may be large; a val/test grade must fit eval's gain.
    again = write_small(tmp_path / "again", tmp_path)
    rewrite_table(again / "judgments.parquet", set_label(3, 50_000))
    assert load_prepared(again).judgments["label"].max() == 50_000
    rewrite_table(again / "judgments.parquet", set_label(14, 2_000))
    _load_fails(
        again, "judgments.parquet: row 14 ", "label 2000", "at most 1000", "query_id 1014, val"
    )


def test_a_query_without_judgments(prepared):
    rewrite_table(prepared / "judgments.parquet", lambda f: f[f.query_id != 1003])
    _load_fails(
        prepared,
        "queries.parquet",
        "query_id 1003 ('the sea at night', train) has no judgment",
        "drop such queries",
    )


def test_unknown_splits(prepared):
    def rename(frame):
        frame.loc[4, "split"] = "dev"
        return frame

    rewrite_table(prepared / "queries.parquet", rename)
    _load_fails(
        prepared, "queries.parquet", "row 4 (query_id 1004) has split 'dev'", "train, val, test"
    )


def test_unknown_split_of_an_image(tmp_path, prepared):
    rewrite_table(prepared / "images.parquet", lambda f: f.assign(split=f.split.str.upper()))
    _load_fails(prepared, "images.parquet", "row 0", "has split 'TRAIN'")


def test_fingerprints_that_disagree_with_the_files(prepared):
    write_vocab_tsv(prepared / "vocab.tsv", [*KEYWORDS[:-1], "surf"])
    _load_fails(prepared, "vocab.tsv", "prepared.json records", "word ids")


def test_query_vocabulary_fingerprint(prepared):
    path = prepared / "query_vocab.tsv"
    path.write_text(path.read_text().replace("\tsea\t", "\tsky\t"))
    _load_fails(prepared, "query_vocab.tsv", "has sha256", "prepared.json records")


def test_shapes_and_dtypes(prepared):
    features = np.load(prepared / "features.npy")
    np.save(prepared / "features.npy", features.astype(np.float64))
    _load_fails(prepared, "features.npy", "holds float64", "float16 or float32")
    np.save(prepared / "features.npy", features[:, :2])
    _load_fails(prepared, "features.npy", "[12, 2, 4] but prepared.json records float32 [12, 3, 4]")
    np.save(prepared / "features.npy", features)
    ids = np.load(prepared / "feature_ids.npy")
    np.save(prepared / "feature_ids.npy", ids.astype(np.int32))
    _load_fails(prepared, "feature_ids.npy", "holds int32", "expected int64")


def test_keyword_matrix_shape(prepared):
    import scipy.sparse

    matrix = scipy.sparse.load_npz(prepared / "keywords.npz")
    scipy.sparse.save_npz(prepared / "keywords.npz", matrix[:, :3])
    _load_fails(prepared, "keywords.npz", "shape (12, 3); expected (12, 5)")


def test_judgments_of_unknown_queries_or_images_and_leaks(prepared):
    path = prepared / "judgments.parquet"
    original = pq.read_table(path)
    rewrite_table(path, lambda f: f.assign(img_id=f.img_id.where(f.index != 2, 4242)))
    _load_fails(prepared, "judgments.parquet", "row 2 names img_id 4242", "images.parquet")
    pq.write_table(original, path)
    data = load_prepared(prepared)
    test_image = int(data.split_images("test")[0])
    rewrite_table(path, lambda f: f.assign(img_id=f.img_id.where(f.index != 0, test_image)))
    _load_fails(
        prepared,
        "judgments.parquet",
        f"row 0 judges img_id {test_image} (test)",
        "(train)",
        "Keep the splits apart",
    )


def test_duplicate_query_ids_and_judgments(prepared):
    original = pq.read_table(prepared / "judgments.parquet")
    rewrite_table(prepared / "judgments.parquet", lambda f: pd.concat([f, f.iloc[[3]]]))
    _load_fails(prepared, "judgments.parquet", "repeats the judgment of query_id 1003")
    pq.write_table(original, prepared / "judgments.parquet")
    rewrite_table(
        prepared / "queries.parquet",
        lambda f: f.assign(query_id=f.query_id.where(f.index != 1, 1000)),
    )
    _load_fails(prepared, "queries.parquet", "lists query_id 1000 more than once (rows [0, 1]")


def test_missing_files_newer_versions_and_other_folders(tmp_path, prepared):
    _load_fails(tmp_path / "nowhere", "is not a folder")
    _load_fails(tmp_path, "prepared.json not found", "amc-data prepare")
    info = json.loads((prepared / "prepared.json").read_text())
    (prepared / "prepared.json").write_text(json.dumps({**info, "format_version": 99}))
    _load_fails(prepared, "format version 99", "Upgrade amc-data")
    (prepared / "prepared.json").write_text(json.dumps(info))
    (prepared / "keywords.npz").unlink()
    _load_fails(prepared, "lacks keywords.npz", "incomplete")


def test_a_truncated_keyword_file_is_a_one_line_error(prepared):
    data = (prepared / "keywords.npz").read_bytes()
    (prepared / "keywords.npz").write_bytes(data[: len(data) // 2])
    _load_fails(prepared, "keywords.npz", "is not a scipy sparse .npz", "Prepare the dataset again")
    (prepared / "keywords.npz").write_bytes(b"")
    _load_fails(prepared, "keywords.npz", "is not a scipy sparse .npz")


@pytest.mark.parametrize(
    "value, found",
    [(None, "row 3 (query_id 1003) has no query text (null)"), (7, "holds int64, not text")],
)
def test_query_texts_must_be_text(prepared, value, found):
    def edit(frame):
        if value is None:
            frame["query"] = frame["query"].astype(object)
            frame.loc[3, "query"] = None
        else:
            frame["query"] = np.arange(len(frame), dtype=np.int64) + value
        return frame

    rewrite_table(prepared / "queries.parquet", edit)
    _load_fails(prepared, "queries.parquet", found, "Prepare the dataset again")


@pytest.mark.parametrize(
    "field, value, found",
    [
        (("features",), "features.npy", "'features' is text ('features.npy'), expected an object"),
        (("features", "shape"), "12x3x4", "'features.shape' is text"),
        (("features", "shape"), [12, "3", 4], "'features.shape' is [12, '3', 4], expected a list"),
        (("features", "size"), True, "'features.size' is true/false"),
        (("fingerprints",), ["abc"], "'fingerprints' is a list"),
        (("fingerprints", "queries"), 5, "'fingerprints.queries' is a whole number"),
        (("counts",), "many", "'counts' is text"),
        (("candidates",), 1, "'candidates' is a whole number (1), expected text"),
    ],
)
def test_fields_of_prepared_json_of_the_wrong_type(prepared, field, value, found):
    info = json.loads((prepared / "prepared.json").read_text())
    target = info
    for name in field[:-1]:
        target = target[name]
    target[field[-1]] = value
    (prepared / "prepared.json").write_text(json.dumps(info))
    message = _load_fails(prepared, "prepared.json: ", found, "Prepare the dataset again")
    assert "\n" not in message


def test_counts_of_prepared_json_must_match_the_files(prepared):
    info = json.loads((prepared / "prepared.json").read_text())
    info["counts"]["queries"]["val"] = 99
    (prepared / "prepared.json").write_text(json.dumps(info))
    _load_fails(prepared, "prepared.json", "files of two preparations are mixed")


def test_a_dangling_feature_link_is_named(tmp_path):
    parts = small_parts(tmp_path)
    source = tmp_path / "elsewhere" / "f.npy"
    source.parent.mkdir()
    np.save(source, parts["features"])
    rows = FeatureRows((np.load(source, mmap_mode="r"),), path=source)
    out = write_small(tmp_path / "p", tmp_path, features=rows)
    (out / "features.npy").unlink()
    os.symlink(source, out / "features.npy")
    source.unlink()
    _load_fails(out, "lacks features.npy", "link to a file that was moved or deleted", str(source))


# -- the query vocabulary ----------------------------------------------------------------------
def test_query_vocabulary_fit_and_tokenisation(tmp_path):
    queries = ["Red car", "the red CAR and a red dog", "café Zürich", "x y z"]
    vocabulary = fit_query_vocabulary(queries, min_count=2)
    assert vocabulary.words == ("car", "red")  # stop words and 1-letter tokens dropped
    assert vocabulary.counts == (2, 3)
    assert fit_query_vocabulary(queries).words == ("café", "car", "dog", "red", "zürich")
    tokens = tokenize_queries(["red dog car red", "nothing known"], vocabulary)
    assert [t.tolist() for t in tokens] == [[1, 0, 1], []]
    assert all(t.dtype == np.int64 for t in tokens)
    vocabulary.write_tsv(tmp_path / "q.tsv")
    assert (tmp_path / "q.tsv").read_text() == "word_id\tword\tcount\n0\tcar\t2\n1\tred\t3\n"
    assert QueryVocabulary.read_tsv(tmp_path / "q.tsv").words == vocabulary.words
    with pytest.raises(InputError, match="No query word occurs at least 9 times"):
        fit_query_vocabulary(queries, min_count=9)
    with pytest.raises(ConfigError, match="min_count"):
        fit_query_vocabulary(queries, min_count=0)
    (tmp_path / "q.tsv").write_text("word_id\tword\tcount\n0\tcar\t2\n5\tred\t3\n")
    with pytest.raises(InputError, match=r"Line 3 of .*q\.tsv"):
        QueryVocabulary.read_tsv(tmp_path / "q.tsv")


def test_write_prepared_accepts_extra_columns(tmp_path):
    parts = small_parts(tmp_path)
    images = parts["images"].assign(source="synth", source_id=parts["images"].img_id * 10)
    queries = parts["queries"].assign(intent="visual")
    data = load_prepared(
        write_prepared(tmp_path / "p", **{**parts, "images": images, "queries": queries})
    )
    assert data.images["source_id"].tolist() == (data.images["img_id"] * 10).tolist()
    assert set(data.queries["intent"]) == {"visual"}


def test_pickling_sends_the_path_not_the_features(prepared):
    import pickle

    data = load_prepared(prepared)
    data.rows(np.array([100]))  # fills a cache, which is not sent
    blob = pickle.dumps(data)
    assert len(blob) < 20_000 and data.features.tobytes() not in blob
    copy = pickle.loads(blob)
    assert isinstance(copy.features, np.memmap)
    assert np.array_equal(copy.features, data.features)
    assert copy.rows(np.array([105])).tolist() == data.rows(np.array([105])).tolist()
    assert copy.queries.equals(data.queries)


def test_a_crash_between_the_two_renames_is_repaired(tmp_path, prepared):
    before = (prepared / "prepared.json").read_bytes()
    os.replace(prepared, tmp_path / ".prepared.previous-4242")
    (tmp_path / ".prepared.staging-x").mkdir()
    with pytest.raises(OutputFolderError, match="already holds a prepared dataset"):
        write_small(prepared, tmp_path)
    assert (prepared / "prepared.json").read_bytes() == before
    assert not list(tmp_path.glob(".prepared.*-*"))


def test_null_text_is_refused(tmp_path):
    parts = small_parts(tmp_path)
    queries = parts["queries"].astype({"query": object})
    queries.loc[2, "query"] = None
    with pytest.raises(InputError, match="queries column 'query' is empty"):
        write_small(tmp_path / "p", tmp_path, queries=queries)


def test_prepare_loads_no_torch_and_keeps_the_public_names_functions():
    import subprocess
    import sys

    code = (
        "import sys, inspect, amc_data.prepare.coco, amc_data.prepare.clickture, amc_data; "
        "print(inspect.isfunction(amc_data.prepare_coco), inspect.isfunction("
        "amc_data.prepare_clickture), inspect.isfunction(amc_data.load_prepared), "
        "'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True", "True", "False"]
