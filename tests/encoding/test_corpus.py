"""The synthetic corpus generators produce what they promise, including each defect."""

from __future__ import annotations

import itertools
import json
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from support.corpus import (
    HEAD_KEYWORDS,
    HOSTILE_KEYWORDS,
    SPLITS,
    ClicktureCorpus,
    CocoCorpus,
    DocumentStyle,
    break_json,
    damage_member_crc,
    dev_lines,
    drop_images,
    drop_keywords,
    drop_tagging,
    keyword_pool,
    lite_lines,
    make_clickture,
    make_coco,
    place_zero,
    real_dev_lines,
    remove_member,
    repeat_list_line,
    set_keywords,
    set_split,
    synthetic_dev_lines,
)
from support.reference_encode import reference_clickture, reference_coco


def _read_json(zip_path: Path, member: str) -> dict:
    with zipfile.ZipFile(zip_path) as archive:
        return json.loads(archive.read(member))


def _names(zip_path: Path) -> list[str]:
    with zipfile.ZipFile(zip_path) as archive:
        return archive.namelist()


@pytest.fixture(scope="module")
def clickture(tmp_path_factory: pytest.TempPathFactory) -> ClicktureCorpus:
    dev = dev_lines(300)
    lite = lite_lines(400, seed=1, prefix="lite/")
    return make_clickture(tmp_path_factory.mktemp("clickture"), dev, lite, seed=3)


def test_keyword_pool_is_zipf_ranked_and_distinct() -> None:
    pool = keyword_pool()
    assert len(pool.keywords) == len(set(pool.keywords)) == 100_000
    assert set(pool.keywords[: len(HEAD_KEYWORDS)]) == set(HEAD_KEYWORDS)
    assert all(pool.keywords[1000 + 7 * i] == word for i, word in enumerate(HOSTILE_KEYWORDS))
    assert set(HOSTILE_KEYWORDS) <= set(keyword_pool(hostile_rank=10).keywords[:200])
    # Rank r is drawn about twice as often as rank 2r (weight 1 / r**1.1).
    draws = Counter(pool.draw(np.random.default_rng(0), 400_000).tolist())
    assert 1.8 < draws[0] / draws[1] < 2.5
    assert draws[0] > draws[10] > draws[100] > draws[1000]
    kinds = {
        "phrase": any(" " in k for k in pool.keywords),
        "capitals": any(k.isupper() for k in pool.keywords),
        "accents": any("é" in k for k in pool.keywords),
        "digits": any(any(c.isdigit() for c in k) for k in pool.keywords),
        "stop words": {"the", "and", "of"} <= set(pool.keywords),
    }
    assert all(kinds.values()), kinds
    sample = pool.keywords[:2000]
    assert list(pool.json_ascii[:2000]) == [json.dumps(k) for k in sample]
    assert list(pool.json_utf8[:2000]) == [json.dumps(k, ensure_ascii=False) for k in sample]


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_document_style(tmp_path: Path, ensure_ascii: bool) -> None:
    pool = keyword_pool(hostile_rank=10)
    style = DocumentStyle(keywords_per_image=(2, 3), empty_fraction=0.5, ensure_ascii=ensure_ascii)
    corpus = make_clickture(tmp_path, lite_lines(200), [], style=style, pool=pool)
    with zipfile.ZipFile(corpus.zip_path("dev")) as archive:
        raw = [archive.read(name) for name in archive.namelist()]
    lengths = Counter(len(json.loads(data)["tagging"]["keywords"]) for data in raw)
    assert set(lengths) == {0, 2, 3} and 60 < lengths[0] < 140
    assert all(data.isascii() for data in raw) == ensure_ascii


def test_lite_lines() -> None:
    lines = lite_lines(1000, seed=5)
    assert sorted(int(line) for line in lines) == list(range(1000))
    assert lines != sorted(lines)  # unsorted, as the real lists are
    assert all(len(line) == 8 and line.isdigit() for line in lines)
    assert lite_lines(1000, seed=5) == lines and lite_lines(1000, seed=6) != lines
    assert "00000000" not in lite_lines(50, include_zero=False)
    assert sorted(lite_lines(3, first_id=10, prefix="a/b/")) == [
        "a/b/00000010",
        "a/b/00000011",
        "a/b/00000012",
    ]


def test_place_zero() -> None:
    assert place_zero(["00000005", "00000000", "x/00000002"], present=False) == [
        "00000005",
        "x/00000002",
    ]
    assert place_zero(["00000005", "00000002"], present=True, at=1) == [
        "00000005",
        "00000000",
        "00000002",
    ]


def _shape(lines: Sequence[str]) -> dict[str, object]:
    """What tests rely on in a dev list, and the statistics that make it look like one."""
    ids = np.array([int(line) for line in lines])
    steps = np.diff(ids)
    return {
        "lines": len(lines),
        "8 digits": all(len(line) == 8 and line.isdigit() for line in lines),
        "every id 0..n-1 once": np.array_equal(np.sort(ids), np.arange(len(ids))),
        "first": lines[0],
        "image 0 at": lines.index("00000000"),
        "about half the steps go up": 0.48 < (steps > 0).mean() < 0.52,
        "no two consecutive ids in a row": (np.abs(steps) == 1).mean() < 0.001,
    }


def test_synthetic_dev_lines_have_the_real_lists_shape() -> None:
    lines = synthetic_dev_lines()
    assert _shape(lines) == {
        "lines": 79_665,
        "8 digits": True,
        "every id 0..n-1 once": True,
        "first": "00048500",
        "image 0 at": 71_586,
        "about half the steps go up": True,
        "no two consecutive ids in a row": True,
    }
    assert synthetic_dev_lines() == lines and synthetic_dev_lines(seed=1) != lines  # seeded
    assert dev_lines(3, start=1) == dev_lines()[1:4]


def test_the_real_dev_list_has_the_shape_the_synthetic_one_copies(shared_data: Path) -> None:
    """The real file's own bytes: what `synthetic_dev_lines` imitates is what the file is."""
    lines = real_dev_lines(shared_data)
    assert _shape(lines) == _shape(synthetic_dev_lines())
    assert real_dev_lines(shared_data, 3, start=1) == lines[1:4]
    assert dev_lines() == lines  # the tests use the real list where it is at hand


def test_clickture_members_lists_and_documents(clickture: ClicktureCorpus) -> None:
    for part in ("dev", "lite"):
        lines = clickture.lines(part)
        assert clickture.list_path(part).read_text() == "".join(f"{line}\n" for line in lines)
        names = _names(clickture.zip_path(part))
        expected = [clickture.member(part, line) for line in lines]
        assert names == sorted(expected)  # default order: by name, not list order
        lengths = Counter()
        for line in lines:
            value = _read_json(clickture.zip_path(part), clickture.member(part, line))
            keywords = value["tagging"]["keywords"]
            assert all(isinstance(k, str) for k in keywords)
            assert len(keywords) == len(set(keywords)) == len(value["tagging"]["scores"])
            assert value["url"].endswith(f"{line}.jpg")
            lengths[len(keywords)] += 1
        assert set(lengths) <= {0, *range(10, 31)} and len(lengths) > 15
    assert clickture.member("lite", "lite/00000001") == "keywords_lite/lite/00000001.json"


def test_clickture_is_deterministic(tmp_path: Path) -> None:
    dev, lite = lite_lines(50, seed=1), lite_lines(60, seed=2)
    first = make_clickture(tmp_path / "a", dev, lite, seed=4)
    second = make_clickture(tmp_path / "b", dev, lite, seed=4)
    other = make_clickture(tmp_path / "c", dev, lite, seed=5)
    for part in ("dev", "lite"):
        data = first.zip_path(part).read_bytes()
        assert data == second.zip_path(part).read_bytes()
        assert data != other.zip_path(part).read_bytes()


def test_clickture_knobs(tmp_path: Path) -> None:
    dev = place_zero(lite_lines(40, seed=1), present=True, at=7)
    lite = lite_lines(30, seed=2, include_zero=False)
    corpus = make_clickture(
        tmp_path,
        dev,
        lite,
        wrap="AMC keywords",
        junk=True,
        dir_entries=True,
        member_order="list",
        extra_members=2,
        empty_lines={"00000000", lite[3]},
    )
    names = _names(corpus.zip_path("dev"))
    top = "AMC keywords/"
    assert names[:2] == [top, f"{top}keywords_dev/"]  # folder entries first
    members = [corpus.member("dev", line) for line in dev]
    extras = [f"{top}keywords_dev/00000040.json", f"{top}keywords_dev/00000041.json"]
    assert names[2 : 2 + len(dev) + 2] == members + extras  # list order, then the extras
    junk = names[2 + len(dev) + 2 :]
    assert f"{top}.DS_Store" in junk and f"{top}keywords_dev/.DS_Store" in junk
    assert any(name.startswith("__MACOSX/AMC keywords/keywords_dev/._") for name in junk)
    assert all(name.startswith("__MACOSX/") or name.endswith(".DS_Store") for name in junk)
    for part, line in (("dev", "00000000"), ("lite", lite[3])):
        value = _read_json(corpus.zip_path(part), corpus.member(part, line))
        assert value["tagging"] == {"keywords": [], "scores": []}
    assert "00000000" not in corpus.list_path("lite").read_text().split()


def test_reference_reads_a_wrapped_corpus_with_junk(tmp_path: Path) -> None:
    """Smoke test of both helpers together: the reference copes with the awkward layouts."""
    pool = keyword_pool(hostile_rank=10)
    dev, lite = lite_lines(150, seed=1), lite_lines(120, seed=2, prefix="x/")
    plain = make_clickture(tmp_path / "plain", dev, lite, pool=pool)
    wrapped = make_clickture(tmp_path / "wrapped", dev, lite, wrap="w", junk=True, pool=pool)
    first = reference_clickture(plain.folder, tmp_path / "work", min_df=2)
    second = reference_clickture(wrapped.folder, tmp_path / "work", min_df=2)
    assert first["vocabulary"] == second["vocabulary"] and len(first["vocabulary"]) > 100
    for name, value in first.items():
        assert np.array_equal(value, second[name]), name
    assert len(first["img_keyword_rec_clickture_lite_sk_2.npy"]) > 1000


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> CocoCorpus:
    counts = {"train": 40, "restval": 15, "val": 10, "test": 12}
    return make_coco(tmp_path_factory.mktemp("coco"), counts, seed=2, wrap="coco", junk=True)


def test_coco_dataset_json(coco: CocoCorpus) -> None:
    dataset = _read_json(coco.zip_path, coco.dataset_member)
    assert dataset["dataset"] == "coco"
    images = dataset["images"]
    assert [image["imgid"] for image in images] == list(range(77))
    assert Counter(image["split"] for image in images) == {
        "train": 40,
        "restval": 15,
        "val": 10,
        "test": 12,
    }
    splits = [image["split"] for image in images]
    changes = sum(a != b for a, b in itertools.pairwise(splits))
    assert changes > 20  # interleaved in file order, not grouped by split
    sentids = [s for image in images for s in image["sentids"]]
    assert sentids == list(range(len(sentids)))
    assert len({image["cocoid"] for image in images}) == 77
    for image in images:
        folder = "train2014" if image["split"] == "train" else "val2014"
        assert image["filepath"] == folder
        assert image["filename"] == f"COCO_{folder}_{image['cocoid']:012d}.jpg"
        assert len(image["sentences"]) == 5
        for sentence, sentid in zip(image["sentences"], image["sentids"], strict=True):
            assert set(sentence) == {"tokens", "raw", "imgid", "sentid"}
            assert sentence["imgid"] == image["imgid"] and sentence["sentid"] == sentid
    assert [(i.imgid, i.split, i.filename) for i in coco.images] == [
        (image["imgid"], image["split"], image["filename"]) for image in images
    ]


def test_coco_members(coco: CocoCorpus) -> None:
    names = _names(coco.zip_path)
    assert names[0] == "coco/dataset.json"
    members = [coco.member(image) for image in coco.images]
    assert names[1 : 1 + len(members)] == members
    assert all(name.startswith("__MACOSX/") or name.endswith(".DS_Store") for name in names[78:])
    image = next(i for i in coco.images if i.split == "restval")
    assert coco.member(image) == f"coco/keyword_restval/{image.filename[:-4]}.json"
    assert isinstance(_read_json(coco.zip_path, coco.member(image))["tagging"]["keywords"], list)


def test_coco_knobs_and_reference(tmp_path: Path) -> None:
    corpus = make_coco(
        tmp_path, {"train": 30, "test": 20, "val": 5}, empty_imgids={0, 3}, dir_entries=True
    )
    names = _names(corpus.zip_path)
    assert names[:3] == ["keyword_train/", "keyword_val/", "keyword_test/"]
    assert _read_json(corpus.zip_path, corpus.member(corpus.images[3]))["tagging"]["keywords"] == []
    result = reference_coco(tmp_path, tmp_path / "work", min_df=2)
    pairs = result["img_keyword_rec_coco_sk_2.npy"]
    documents = {image.imgid for image in corpus.images if image.split in ("train", "test")}
    assert set(pairs[:, 0].tolist()) <= documents - {0, 3} and len(pairs) > 100
    with pytest.raises(ValueError, match="unknown splits"):
        make_coco(tmp_path / "x", {"dev": 3})


# --- defects ----------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path: Path) -> ClicktureCorpus:
    return make_clickture(tmp_path, lite_lines(20, seed=1), lite_lines(20, seed=2), wrap="top")


def test_break_json(small: ClicktureCorpus) -> None:
    member = small.member("dev", small.dev_lines[4])
    break_json(small.zip_path("dev"), member)
    with zipfile.ZipFile(small.zip_path("dev")) as archive:
        data = archive.read(member)
    data.decode("utf-8")  # still valid text: the failure is the JSON
    with pytest.raises(json.JSONDecodeError):
        json.loads(data)
    # Nothing else changed.
    assert len(_names(small.zip_path("dev"))) == 20
    assert _read_json(small.zip_path("dev"), small.member("dev", small.dev_lines[5]))


def test_drop_tagging_drop_keywords_set_keywords(small: ClicktureCorpus) -> None:
    zip_path = small.zip_path("lite")
    first, second, third = (small.member("lite", line) for line in small.lite_lines[:3])
    drop_tagging(zip_path, first)
    drop_keywords(zip_path, second)
    set_keywords(zip_path, third)
    assert "tagging" not in _read_json(zip_path, first) and "url" in _read_json(zip_path, first)
    assert _read_json(zip_path, second)["tagging"].keys() == {"scores"}
    assert _read_json(zip_path, third)["tagging"]["keywords"] == "red sink"
    set_keywords(zip_path, third, ["red", 7])
    assert _read_json(zip_path, third)["tagging"]["keywords"] == ["red", 7]


def test_remove_member_and_repeat_list_line(small: ClicktureCorpus) -> None:
    line = small.lite_lines[7]
    remove_member(small.zip_path("lite"), small.member("lite", line))
    assert small.member("lite", line) not in _names(small.zip_path("lite"))
    assert line in small.list_path("lite").read_text().split()  # the list still names it
    repeated = repeat_list_line(small.list_path("dev"), index=2, at=5)
    lines = small.list_path("dev").read_text().splitlines()
    assert repeated == small.dev_lines[2] and lines[5] == repeated and len(lines) == 21
    assert Counter(lines)[repeated] == 2
    with pytest.raises(KeyError):
        remove_member(small.zip_path("lite"), "no/such/member")


def test_damage_member_crc(small: ClicktureCorpus) -> None:
    zip_path = small.zip_path("dev")
    member = small.member("dev", small.dev_lines[9])
    before = zip_path.read_bytes()
    offset = damage_member_crc(zip_path, member)
    after = zip_path.read_bytes()
    assert len(after) == len(before)
    assert [i for i in range(len(before)) if before[i] != after[i]] == [offset]
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.testzip() == member  # the first bad member, and the only one
        with pytest.raises(zipfile.BadZipFile, match="Bad CRC-32"):
            archive.read(member)


def test_coco_defects(tmp_path: Path) -> None:
    corpus = make_coco(tmp_path, {"train": 5, "test": 3}, wrap="w")
    set_split(corpus.zip_path, corpus.dataset_member, imgid=2)
    images = _read_json(corpus.zip_path, corpus.dataset_member)["images"]
    assert [image["split"] for image in images][2] == "holdout"
    assert {image["split"] for image in images} - {"holdout"} <= set(SPLITS)
    drop_images(corpus.zip_path, corpus.dataset_member)
    assert _read_json(corpus.zip_path, corpus.dataset_member) == {"dataset": "coco"}
