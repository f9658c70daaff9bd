"""Bad input, interrupted runs and up-to-date checks: each error names the file and member (or
list line), says what was expected and found, exits non-zero, and destroys nothing."""

from __future__ import annotations

import json
import os
import shutil
import zipfile

import pytest
from amc_data_cli.main import cli
from click.testing import CliRunner
from support import corpus
from support.encode_helpers import encode_record, small_clickture, small_coco, snapshot

from amc_data.encoding.core import EncodeConfig, encode
from amc_data.errors import ConfigError, InputError, OutputFolderError


@pytest.fixture
def clickture(tmp_path):
    made = small_clickture(tmp_path, n_dev=120, n_lite=80, seed=21)
    return tmp_path, made


def run(data_dir, *args, dataset="clickture"):
    arguments = ["encode", dataset, *args, "--data-dir", str(data_dir), "--jobs", "2"]
    return CliRunner().invoke(cli, arguments)


def _dev_member(made, index=5):
    line = made.lines("dev")[index]
    return line, made.member("dev", line)


def _lite_member(made, index=7):
    line = made.lines("lite")[index]
    return line, made.member("lite", line)


# Each defect: (name, apply(made) -> (what the message must name, the skipped split)).
def _invalid_json(made):
    _line, member = _dev_member(made)
    corpus.break_json(made.zip_path("dev"), member)
    return [member, "keywords_dev.zip", "not valid JSON"], "dev"


def _no_tagging(made):
    _line, member = _lite_member(made)
    corpus.drop_tagging(made.zip_path("lite"), member)
    return [member, "keywords_lite.zip", "no 'tagging' object", "expected"], "lite"


def _no_keywords(made):
    _line, member = _dev_member(made)
    corpus.drop_keywords(made.zip_path("dev"), member)
    return [member, "holds no 'keywords'", "expected"], "dev"


def _keywords_not_strings(made):
    _line, member = _lite_member(made)
    corpus.set_keywords(made.zip_path("lite"), member, ["red", 7])
    return [member, 'keywords ["red", 7]', "expected"], "lite"


def _keywords_a_string(made):
    _line, member = _dev_member(made)
    corpus.set_keywords(made.zip_path("dev"), member, "red sink")
    return [member, 'keywords "red sink"'], "dev"


def _missing_member(made):
    line, member = _lite_member(made)
    corpus.remove_member(made.zip_path("lite"), member)
    return [f"of {made.list_path('lite')}", line, "has no member", member], "lite"


def _repeated_line(made):
    line = corpus.repeat_list_line(made.list_path("dev"), index=3)
    number = len(made.lines("dev")) + 1
    return [f"Line {number} of {made.list_path('dev')}", "repeats line 4", line], "dev"


def _not_an_id(made):
    path = made.list_path("lite")
    path.write_text(path.read_text() + "lite/not-an-id\n")
    return [str(path), "'lite/not-an-id'", "not an image id"], "lite"


def _damaged_member(made):
    _line, member = _dev_member(made, 9)
    corpus.damage_member_crc(made.zip_path("dev"), member)
    return [member, "keywords_dev.zip", "CRC"], "dev"


def _huge_keyword(made):
    """A keyword far longer than any tagger writes: bad input (each distinct one would be held
    several times over in memory)."""
    _line, member = _lite_member(made)
    corpus.set_keywords(made.zip_path("lite"), member, ["red", "x" * 250_000])
    return [member, "250,000 characters", "at most 1,000"], "lite"


DEFECTS = [
    _invalid_json,
    _no_tagging,
    _no_keywords,
    _keywords_not_strings,
    _keywords_a_string,
    _missing_member,
    _repeated_line,
    _not_an_id,
    _damaged_member,
    _huge_keyword,
]


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.__name__.strip("_"))
def test_fail_stops_names_the_culprit_and_keeps_previous_outputs(clickture, defect):
    data_dir, made = clickture
    assert run(data_dir).exit_code == 0
    out_dir = data_dir / "clickture" / "encoded"
    before = snapshot(out_dir)
    expected, _split = defect(made)
    result = run(data_dir)
    assert result.exit_code == 1, result.output
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert "--on-error skip" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(out_dir) == before
    assert sorted(p.name for p in out_dir.parent.iterdir() if p.name.startswith(".encoded")) == [
        ".encoded.lock"
    ]


@pytest.mark.parametrize("defect", DEFECTS, ids=lambda d: d.__name__.strip("_"))
def test_skip_goes_on_and_records_the_item(clickture, defect):
    data_dir, made = clickture
    expected, split = defect(made)
    result = run(data_dir, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    assert "1 item(s) skipped" in result.output
    out_dir = data_dir / "clickture" / "encoded"
    record = encode_record(out_dir)
    assert len(record["skipped"]) == 1
    skipped = record["skipped"][0]
    assert skipped["split"] == split
    for text in expected:
        assert text in skipped["reason"], (text, skipped["reason"])
    assert record["counts"][split]["skipped"] == 1
    counts = record["counts"][split]
    assert counts["documents"] == counts["encoded"] + 1


def test_fail_on_a_first_run_writes_nothing(clickture):
    data_dir, made = clickture
    _invalid_json(made)
    result = run(data_dir)
    assert result.exit_code == 1
    leftovers = [p.name for p in (data_dir / "clickture").iterdir() if "encoded" in p.name]
    assert leftovers == [".encoded.lock"]


@pytest.mark.parametrize(
    ("defect", "expected"),
    [
        (corpus.drop_images, ["dataset.json", "no 'images' list", "Karpathy"]),
        (
            lambda path, member: corpus.set_split(path, member, 3, "holdout"),
            ["images[3]", "split 'holdout'", "expected one of"],
        ),
    ],
    ids=["no-images", "unknown-split"],
)
def test_bad_dataset_json_is_named(tmp_path, defect, expected):
    made = small_coco(tmp_path, per_split=20, seed=4)
    defect(made.zip_path, made.dataset_member)
    with pytest.raises(InputError) as caught:
        encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1))
    for text in expected:
        assert text in str(caught.value)
    assert "keywords_coco.zip" in str(caught.value)
    assert not (tmp_path / "coco" / "encoded").exists()


def test_unknown_split_can_be_skipped(tmp_path):
    made = small_coco(tmp_path, per_split=20, seed=4)
    corpus.set_split(made.zip_path, made.dataset_member, 3, "holdout")
    result = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1, on_error="skip"))
    assert [item.item for item in result.skipped] == [made.images[3].filename]
    assert sum(c["encoded"] for c in result.counts.values()) == len(made.images) - 1


def test_missing_inputs_say_how_to_get_them(tmp_path):
    result = run(tmp_path, dataset="coco")
    assert result.exit_code == 1
    assert "keywords_coco.zip not found" in result.stderr
    assert "amc-data fetch coco" in result.stderr


def test_second_run_does_nothing_until_inputs_or_options_change(clickture):
    data_dir, made = clickture
    first = run(data_dir)
    assert first.exit_code == 0 and "encoded into" in first.output
    out_dir = data_dir / "clickture" / "encoded"
    stamp = (out_dir / "encode.json").stat().st_mtime_ns
    second = run(data_dir)
    assert second.exit_code == 0
    assert "up to date" in second.output
    assert (out_dir / "encode.json").stat().st_mtime_ns == stamp
    forced = run(data_dir, "--force")
    assert "encoded into" in forced.output
    stamp = (out_dir / "encode.json").stat().st_mtime_ns
    os.utime(made.list_path("lite"))  # an input changed (its mtime is part of the identity)
    assert "encoded into" in run(data_dir).output
    assert (out_dir / "encode.json").stat().st_mtime_ns != stamp
    other = run(data_dir, "--min-df", "3")
    assert "encoded into" in other.output
    assert (out_dir / "img_keyword_rec_clickture_dev_sk_3.npy").exists()
    assert not (out_dir / "img_keyword_rec_clickture_dev_sk_6.npy").exists()


def test_interrupted_run_leaves_previous_outputs_untouched(clickture, monkeypatch):
    data_dir, _made = clickture
    encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    out_dir = data_dir / "clickture" / "encoded"
    before = snapshot(out_dir)

    import amc_data.encoding.outputs

    calls = []
    original_add = amc_data.encoding.outputs.OutputWriters.add

    def interrupted_add(self, chunk, skipped):
        calls.append(1)
        original_add(self, chunk, skipped)
        raise KeyboardInterrupt

    monkeypatch.setattr(amc_data.encoding.outputs.OutputWriters, "add", interrupted_add)
    with pytest.raises(KeyboardInterrupt):
        encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1, force=True))
    assert calls
    assert snapshot(out_dir) == before
    assert not list(out_dir.parent.glob(".encoded.staging-*"))


def test_crash_between_the_two_renames_is_repaired(clickture):
    data_dir, _made = clickture
    encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    out_dir = data_dir / "clickture" / "encoded"
    before = snapshot(out_dir)
    out_dir.rename(out_dir.with_name(".encoded.previous-4242"))  # as a crash would leave it
    result = encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1))
    assert result.up_to_date
    assert snapshot(out_dir) == before


def test_foreign_output_folder_is_refused_and_untouched(clickture):
    data_dir, _made = clickture
    foreign = data_dir / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    result = run(data_dir, "--out", str(foreign))
    assert result.exit_code == 1
    assert "did not write" in result.stderr and str(foreign) in result.stderr
    assert [p.name for p in foreign.iterdir()] == ["thesis.tex"]
    with pytest.raises(OutputFolderError):
        encode("clickture", data_dir=data_dir, out=foreign, config=EncodeConfig(jobs=1))


def test_folder_and_zip_may_wrap_differently(tmp_path):
    """Dev unzipped without its folder level, Lite zipped inside a wrapping folder."""
    made = small_clickture(tmp_path, n_dev=150, n_lite=60, seed=2)
    folder = made.folder / "keywords_dev"
    with zipfile.ZipFile(made.zip_path("dev")) as archive:
        for line in made.lines("dev"):
            (folder / f"{line}.json").parent.mkdir(parents=True, exist_ok=True)
            (folder / f"{line}.json").write_bytes(archive.read(made.member("dev", line)))
    made.zip_path("dev").unlink()
    wrapped = made.folder / "wrapped.zip"
    with zipfile.ZipFile(made.zip_path("lite")) as source, zipfile.ZipFile(wrapped, "w") as out:
        for info in source.infolist():
            out.writestr(f"keywords_lite_v1/{info.filename}", source.read(info))
    shutil.move(wrapped, made.zip_path("lite"))
    result = encode("clickture", data_dir=tmp_path, config=EncodeConfig(jobs=1))
    assert result.counts["dev"]["encoded"] == 150
    assert result.counts["lite"]["encoded"] == 60
    record = json.loads((result.out_dir / "encode.json").read_text())
    assert record["inputs"][0]["name"] == "keywords_dev"


def test_output_folder_behind_a_symbolic_link_is_written_through(clickture):
    data_dir, _made = clickture
    target = data_dir / "elsewhere" / "encoded-data"
    target.mkdir(parents=True)
    link = data_dir / "clickture" / "encoded"
    link.symlink_to(target, target_is_directory=True)
    assert run(data_dir).exit_code == 0
    assert link.is_symlink() and (target / "encode.json").exists()
    assert "up to date" in run(data_dir).output
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".encoded-data.")][1:]


def test_the_current_folder_as_output_is_refused_cleanly(clickture, monkeypatch):
    data_dir, _made = clickture
    here = data_dir / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    result = run(data_dir, "--out", ".")
    assert result.exit_code == 1
    assert (
        "is (or holds) the current folder" in result.stderr and "--out ./encoded" in result.stderr
    )
    assert list(here.iterdir()) == []  # nothing left behind, not even a lock file
    assert run(data_dir, "--out", "encoded").exit_code == 0
    assert (here / "encoded" / "encode.json").exists()


def test_another_datasets_output_folder_is_refused(clickture, tmp_path):
    data_dir, _made = clickture
    small_coco(data_dir, per_split=20, seed=1)
    shared_out = tmp_path / "out"
    assert run(data_dir, "--out", str(shared_out)).exit_code == 0
    before = snapshot(shared_out)
    result = run(data_dir, "--out", str(shared_out), dataset="coco")
    assert result.exit_code == 1
    assert "holds the clickture encoding" in result.stderr
    assert snapshot(shared_out) == before


def test_an_edit_inside_an_unzipped_folder_is_noticed(clickture):
    data_dir, made = clickture
    folder = made.folder / "keywords_dev"
    with zipfile.ZipFile(made.zip_path("dev")) as archive:
        archive.extractall(folder)
    made.zip_path("dev").unlink()
    assert "encoded into" in run(data_dir).output
    member = next(folder.rglob("*.json"))
    member.write_text('{"tagging": {"keywords": ["red sink"]}}')
    assert "encoded into" in run(data_dir).output


@pytest.mark.parametrize("spec", ["/no/such/list.txt", "English"])
def test_a_bad_stop_word_list_is_a_clear_error(clickture, spec):
    data_dir, _made = clickture
    result = run(data_dir, "--stop-words", spec)
    assert result.exit_code == 2
    assert "stop-word list" in result.stderr and "'english'" in result.stderr
    assert "Traceback" not in result.stderr


def test_config_accepts_a_path_and_refuses_what_scikit_learn_refuses(clickture, tmp_path):
    data_dir, _made = clickture
    words = tmp_path / "stop.txt"
    words.write_text("red\n", encoding="utf-8")
    result = encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=1, stop_words=words))
    assert encode_record(result.out_dir)["parameters"]["stop_words"] == str(words)
    for bad in ({"min_df": 0}, {"jobs": 2.5}, {"jobs": 0}, {"formats": ("xml",)}):
        with pytest.raises(ConfigError):
            EncodeConfig(**bad)
    assert run(data_dir, "--min-df", "0").exit_code == 2


def test_a_skipped_fitting_document_counts_for_nothing(clickture):
    """Under skip, a bad dev document is out of the document frequencies, recorded once, with
    its list line as the item."""
    data_dir, made = clickture
    line, member = _dev_member(made, 2)
    corpus.break_json(made.zip_path("dev"), member)
    result = encode("clickture", data_dir=data_dir, config=EncodeConfig(jobs=2, on_error="skip"))
    assert [(s.item, s.member) for s in result.skipped] == [(line, member)]
    from sklearn.feature_extraction.text import CountVectorizer

    documents = []
    with zipfile.ZipFile(made.zip_path("dev")) as archive:
        for other in made.lines("dev"):
            if other != line:
                record = json.loads(archive.read(made.member("dev", other)))
                documents.append(" ".join(record["tagging"]["keywords"]))
    fitted = CountVectorizer(min_df=6, stop_words="english").fit(documents)
    words = (result.out_dir / "vocab.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert [w.split("\t")[1] for w in words] == sorted(fitted.vocabulary_)


def test_an_image_id_too_large_for_the_index_is_refused(tmp_path):
    made = small_clickture(tmp_path, n_dev=60, n_lite=20, seed=5)
    path = made.list_path("lite")
    line = made.lines("lite")[0]
    text = path.read_text().replace(f"{line}\n", "lite/3000000000\n", 1)
    path.write_text(text)
    with zipfile.ZipFile(made.zip_path("lite"), "a") as archive:
        archive.writestr("keywords_lite/lite/3000000000.json", '{"tagging": {"keywords": []}}')
    with pytest.raises(InputError, match=r"Image id 3,000,000,000 .* too large"):
        encode("clickture", data_dir=tmp_path, config=EncodeConfig(jobs=1))
    result = encode(
        "clickture", data_dir=tmp_path, config=EncodeConfig(jobs=1, formats=("parquet",))
    )
    assert result.counts["lite"]["encoded"] == 20


def test_an_imgid_beyond_int64_is_a_clear_error_or_skipped(tmp_path):
    made = small_coco(tmp_path, per_split=20, seed=4)

    def edit(value):
        value["images"][3]["imgid"] = 2**63

    corpus._edit_json(made.zip_path, made.dataset_member, edit)
    result = run(tmp_path, dataset="coco")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    assert "images[3]" in result.stderr and "2**63 - 1" in result.stderr
    assert not isinstance(result.exception, OverflowError)
    skipped = encode("coco", data_dir=tmp_path, config=EncodeConfig(jobs=1, on_error="skip"))
    assert [item.item for item in skipped.skipped] == [made.images[3].filename]


def test_files_renamed_or_swapped_inside_an_unzipped_folder_are_noticed(clickture):
    """Count, total size and newest mtime stay the same; names and change times do not."""
    data_dir, made = clickture
    folder = made.folder / "keywords_dev"
    with zipfile.ZipFile(made.zip_path("dev")) as archive:
        archive.extractall(folder)
    made.zip_path("dev").unlink()
    assert "encoded into" in run(data_dir).output
    assert "up to date" in run(data_dir).output
    first, second = (folder / made.member("dev", made.lines("dev")[i]) for i in (0, 1))
    parked = first.with_name("parked")
    first.rename(parked)
    second.rename(first)
    parked.rename(second)
    assert "encoded into" in run(data_dir).output
    # A rename to a name no list line holds is noticed too (and reported as a missing member).
    second.rename(second.with_name("elsewhere.json"))
    result = run(data_dir)
    assert result.exit_code == 1 and "has no member" in result.stderr
