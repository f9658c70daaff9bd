"""What encode tells a user about its vocabulary: words kept and dropped by min_df, word
occurrences dropped, documents left empty (in the result, the encode record and the CLI's
report), with a warning that names --min-df when min_df drops most of a small dataset; and,
when a split's keyword files are not where dataset.json says, what the folder holds instead."""

from __future__ import annotations

import logging
import shutil
import zipfile

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support import corpus
from support.encode_helpers import assert_matches_reference, encode_record, reference_for

from amc_data.encoding.core import EncodeConfig, encode


def test_min_df_dropping_most_of_a_small_set_is_reported_and_warned_about(tmp_path, caplog):
    made = corpus.make_own_coco(tmp_path)
    with caplog.at_level(logging.WARNING, logger="amc_data.encoding"):
        result = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1))
    concept_words = {
        word
        for position, image in enumerate(made.images)
        if image.split != "val"
        for word in corpus.own_coco_keywords(position, image.split)
        if word not in corpus.OWN_COCO_GENERIC
    }
    expected = {
        "min_df": 6,
        "fitting_documents": 32,
        "words_kept": 2,
        "words_dropped": len(concept_words),
        "word_occurrences": 16 * 8 + 32 * 6,
        "word_occurrences_dropped": 16 * 6 + 32 * 6,
        "documents": 48,
        "documents_empty": 32,  # val and test images hold concept words only
    }
    assert result.vocabulary == expected
    assert result.vocabulary_size == 2
    assert {split: result.counts[split]["empty"] for split in corpus.OWN_COCO_COUNTS} == {
        "train": 0,
        "val": 16,
        "test": 16,
    }
    record = encode_record(result.out_dir)
    assert record["vocabulary"] == expected and record["counts"]["val"]["empty"] == 16
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "kept 2 words" in warning and "288 of 320 word occurrences" in warning
    assert "32 of 48 documents are left with no keyword" in warning and "--min-df" in warning
    # The report changes nothing in the outputs: still the authors' encoding, bit for bit.
    assert_matches_reference(result.out_dir, reference_for("coco", tmp_path, tmp_path / "work"))
    # An up-to-date run gives back the recorded report.
    again = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1))
    assert again.up_to_date and again.vocabulary == expected


def test_a_lower_min_df_keeps_the_concept_words_without_a_warning(tmp_path, caplog):
    corpus.make_own_coco(tmp_path)
    with caplog.at_level(logging.WARNING, logger="amc_data.encoding"):
        result = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1, min_df=2))
    report = result.vocabulary
    assert report["words_kept"] > 2  # concept words shared by two fitting images
    assert 2 * report["word_occurrences_dropped"] <= report["word_occurrences"]
    assert 2 * report["documents_empty"] <= report["documents"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_the_cli_reports_the_vocabulary_and_shows_the_warning(tmp_path):
    corpus.make_own_coco(tmp_path)
    args = ["encode", "coco", "--data-dir", str(tmp_path), "--jobs", "1"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "vocabulary: 2 words kept" in result.output
    assert "in fewer than --min-df 6 of the 32 fitting documents" in result.output
    assert "288 of 320 word occurrences dropped" in result.output
    assert "32 of 48 documents left empty" in result.output
    assert "WARNING" in result.output and "lower --min-df" in result.output


def _misname_split(made: corpus.CocoCorpus, split: str) -> list[str]:
    """Rename the split's keyword files (`keyword_val/img_<n>.json`, not the names
    dataset.json gives); return the new names."""
    rewritten = made.zip_path.with_suffix(".new")
    names = []
    with zipfile.ZipFile(made.zip_path) as source, zipfile.ZipFile(rewritten, "w") as out:
        for info in source.infolist():
            data = source.read(info)
            if f"keyword_{split}/" in info.filename and not info.is_dir():
                head = info.filename.rpartition("/")[0]
                info.filename = f"{head}/img_{len(names)}.json"
                names.append(info.filename)
            out.writestr(info, data)
    shutil.move(rewritten, made.zip_path)
    return names


@pytest.mark.parametrize("kind", ["zip", "wrapped zip", "folder"])
def test_misnamed_keyword_files_are_named_with_the_names_expected(tmp_path, caplog, kind):
    wrap = "keywords_coco" if kind == "wrapped zip" else None
    made = corpus.make_coco(tmp_path / "coco", {"train": 30, "val": 6, "test": 12}, wrap=wrap)
    misnamed = _misname_split(made, "val")
    if kind == "folder":  # unzipped in place of the archive
        with zipfile.ZipFile(made.zip_path) as archive:
            archive.extractall(tmp_path / "coco" / "keywords_coco")
        made.zip_path.unlink()
    with caplog.at_level(logging.WARNING, logger="amc_data.encoding"):
        result = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1, min_df=2))
    assert result.counts["val"]["encoded"] == 0
    (warning,) = [r.getMessage() for r in caplog.records if "val images" in r.getMessage()]
    assert "none of the keyword files of the 6 val images" in warning
    first_val = next(image for image in made.images if image.split == "val")
    expected_name = f"keyword_val/{first_val.filename.removesuffix('.jpg')}.json"
    assert expected_name in warning
    assert "keyword_val/ holds 6 other file(s)" in warning
    assert misnamed[0].removeprefix("keywords_coco/") in warning


def test_a_split_whose_folder_is_gone_says_so(tmp_path, caplog):
    made = corpus.make_coco(tmp_path / "coco", {"train": 30, "val": 6, "test": 12})
    for image in made.images:
        if image.split == "val":
            corpus.remove_member(made.zip_path, made.member(image))
    with caplog.at_level(logging.WARNING, logger="amc_data.encoding"):
        encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1, min_df=2))
    assert "the archive has no keyword_val/ folder with files in it" in caplog.text
