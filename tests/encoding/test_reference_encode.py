"""The reference encoder on tiny corpora whose every row was worked out by hand.

These hand examples are what make the reference trustworthy: each expected array below was
derived on paper from the keyword lists, not by running code.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support.reference_encode import (
    index_from_pairs,
    reference_clickture,
    reference_coco,
    write_reference,
)


def _zip(path: Path, members: dict[str, object], wrap: str = "") -> None:
    """A zip whose members are JSON-dumped values (bytes are written as they are)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in members.items():
            data = value if isinstance(value, bytes) else json.dumps(value).encode()
            archive.writestr(wrap + name, data)


def _keywords(words: list[str]) -> dict[str, object]:
    return {"tagging": {"keywords": words, "scores": [0.5] * len(words)}, "url": "u"}


# Dev, in list order (unsorted). min_df=2 over these four documents:
#   3: "Red sink the WC red"   -> red sink wc red       (the: stop word)
#   1: "white sink Café"       -> white sink café
#   5: ""                      -> (nothing)
#   2: "blue red-WC"           -> blue red wc           (the hyphen splits)
# document frequencies: red 2, sink 2, wc 2, white 1, café 1, blue 1
# vocabulary: red=0, sink=1, wc=2
DEV = {
    "00000003": ["Red sink", "the WC", "red"],
    "00000001": ["white sink", "Café"],
    "00000005": [],
    "00000002": ["blue", "red-WC"],
}
DEV_PAIRS = [[3, 0], [3, 1], [3, 2], [3, 0], [1, 1], [2, 0], [2, 2]]
# max_img_id is 3 (image 5 has no rows). Image 0 is absent and row 0 is image 3: [0, -1].
DEV_INDEX = [[0, -1], [4, 4], [5, 6], [0, 3]]

# Lite, with a path part in the list lines, encoded with the dev vocabulary:
#   4: "Sink sink SINK green" -> sink sink sink         (green: not in the dev vocabulary)
#   0: "WC ﬁre Fire"          -> wc                     (ﬁre: a ligature, not in the vocabulary;
#                                                         fire: a stop word)
#   2: ""                     -> (nothing)
#   6: "red and RED"          -> red red
#   1: "white green"          -> (nothing: white has df 1 in dev)
LITE = {
    "x/00000004": ["Sink sink SINK", "green"],
    "x/00000000": ["WC", "ﬁre", "Fire"],
    "x/00000002": [],
    "x/00000006": ["red", "and", "RED"],
    "x/00000001": ["white", "green"],
}
LITE_PAIRS = [[4, 1], [4, 1], [4, 1], [0, 2], [6, 0], [6, 0]]
# Image 0 is present but not first: the walk first gives it [0, -1], then its real block.
LITE_INDEX = [[3, 3], [-1, -1], [-1, -1], [-1, -1], [0, 2], [-1, -1], [4, 5]]


def _clickture(folder: Path, wrap: str = "", junk: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, docs in (("dev", DEV), ("lite", LITE)):
        members: dict[str, object] = {
            f"keywords_{part}/{line}.json": _keywords(words) for line, words in docs.items()
        }
        if junk:
            members[f"keywords_{part}/.DS_Store"] = b"\0\0\0\1Bud1"
            members[f"__MACOSX/{wrap}keywords_{part}/._00000001.json"] = b"\0\5\26\7"
        _zip(folder / f"keywords_{part}.zip", members, wrap)
        (folder / f"clickture-{part}.lst").write_text("".join(f"{line}\n" for line in docs))
    return folder


@pytest.mark.parametrize(("wrap", "junk"), [("", False), ("clickture/", True), ("top/", False)])
def test_clickture_by_hand(tmp_path: Path, wrap: str, junk: bool) -> None:
    data = _clickture(tmp_path / "data", wrap, junk)
    result = reference_clickture(data, tmp_path / "work", min_df=2)
    assert result["vocabulary"] == ["red", "sink", "wc"]
    expected = {
        "img_keyword_rec_clickture_dev_sk_2.npy": DEV_PAIRS,
        "img_keyword_ind_clickture_dev_sk_2_sparse.npy": DEV_INDEX,
        "img_keyword_rec_clickture_lite_sk_2.npy": LITE_PAIRS,
        "img_keyword_ind_clickture_lite_sk_2_sparse.npy": LITE_INDEX,
    }
    assert set(result) == {"vocabulary", *expected}
    for name, rows in expected.items():
        array = result[name]
        assert isinstance(array, np.ndarray) and array.dtype == np.int64, name
        assert array.shape == (len(rows), 2), name
        assert array.tolist() == rows, name


def test_clickture_min_df_and_stop_words_are_parameters(tmp_path: Path) -> None:
    data = _clickture(tmp_path / "data")
    # No stop words, min_df 1: every dev token is a word, "the" included.
    result = reference_clickture(data, tmp_path / "work", min_df=1, stop_words="none")
    assert result["vocabulary"] == ["blue", "café", "red", "sink", "the", "wc", "white"]
    # Lite image 1 "white green" now has white (6); image 6 "red and RED" has no "and" in dev.
    assert result["img_keyword_rec_clickture_lite_sk_1.npy"].tolist() == [
        [4, 3],
        [4, 3],
        [4, 3],
        [0, 5],
        [6, 2],
        [6, 2],
        [1, 6],
    ]
    # The default min_df of 6 cuts every word of this tiny corpus: scikit-learn refuses.
    with pytest.raises(ValueError, match="max_df corresponds to < documents than min_df"):
        reference_clickture(data, tmp_path / "work")
    # A custom list: "red" is a stop word, so the vocabulary keeps sink and wc only.
    result = reference_clickture(data, tmp_path / "work", min_df=2, stop_words=["red", "the"])
    assert result["vocabulary"] == ["sink", "wc"]
    assert result["img_keyword_rec_clickture_dev_sk_2.npy"].tolist() == [
        [3, 0],
        [3, 1],
        [1, 0],
        [2, 1],
    ]


def test_clickture_missing_member_fails(tmp_path: Path) -> None:
    data = _clickture(tmp_path / "data")
    with open(data / "clickture-lite.lst", "a") as f:
        f.write("x/00000009\n")
    with pytest.raises(FileNotFoundError, match="00000009"):
        reference_clickture(data, tmp_path / "work", min_df=2)


# COCO, in dataset.json order; only train and test images are documents. min_df=2:
#   imgid 0 val      "sign sign"          -> excluded (else sign would reach df 3)
#   imgid 1 train    "Red car the road"   -> red car road
#   imgid 2 restval  "sign"               -> excluded
#   imgid 3 test     "car CAR red"        -> car car red
#   imgid 4 train    ""                   -> (nothing)
#   imgid 5 test     "road sign"          -> road sign
# document frequencies over images 1, 3, 4, 5: red 2, car 2, road 2, sign 1
# vocabulary: car=0, red=1, road=2
COCO = [
    (0, "val", "val2014", 10, ["sign sign"]),
    (1, "train", "train2014", 20, ["Red car", "the road"]),
    (2, "restval", "val2014", 30, ["sign"]),
    (3, "test", "val2014", 40, ["car", "CAR red"]),
    (4, "train", "train2014", 50, []),
    (5, "test", "val2014", 60, ["road sign"]),
]
COCO_PAIRS = [[1, 1], [1, 0], [1, 2], [3, 0], [3, 0], [3, 1], [5, 2]]
COCO_INDEX = [[0, -1], [0, 2], [-1, -1], [3, 5], [-1, -1], [6, 6]]


def _coco(folder: Path, wrap: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    members: dict[str, object] = {}
    for imgid, split, filepath, cocoid, words in COCO:
        filename = f"COCO_{filepath}_{cocoid:012d}.jpg"
        images.append(
            {
                "filepath": filepath,
                "filename": filename,
                "imgid": imgid,
                "split": split,
                "sentids": [imgid],
                "cocoid": cocoid,
                "sentences": [{"tokens": ["a"], "raw": "A.", "imgid": imgid, "sentid": imgid}],
            }
        )
        members[f"keyword_{split}/{filename[:-4]}.json"] = _keywords(words)
    members["dataset.json"] = {"images": images, "dataset": "coco"}
    _zip(folder / "keywords_coco.zip", members, wrap)
    return folder


@pytest.mark.parametrize("wrap", ["", "keywords_coco/"])
def test_coco_by_hand(tmp_path: Path, wrap: str) -> None:
    result = reference_coco(_coco(tmp_path / "data", wrap), tmp_path / "work", min_df=2)
    assert result["vocabulary"] == ["car", "red", "road"]
    pairs = result["img_keyword_rec_coco_sk_2.npy"]
    index = result["img_keyword_ind_coco_sk_2.npy"]
    assert pairs.dtype == index.dtype == np.int64
    assert pairs.tolist() == COCO_PAIRS
    assert index.tolist() == COCO_INDEX


@pytest.mark.parametrize(
    ("pairs", "index"),
    [
        ([], np.zeros((0, 2))),  # no rows: an empty index, by the stated convention
        ([[0, 7]], [[0, 0]]),
        ([[0, 7], [0, 8], [2, 1]], [[0, 1], [-1, -1], [2, 2]]),
        ([[2, 1], [2, 1]], [[0, -1], [-1, -1], [0, 1]]),
        ([[1, 5], [0, 5], [0, 6]], [[1, 2], [0, 0]]),
    ],
)
def test_index_walk(pairs: list[list[int]], index: list[list[int]]) -> None:
    result = index_from_pairs(np.array(pairs, dtype=np.int64).reshape(-1, 2))
    assert result.dtype == np.int64 and result.shape[1] == 2
    assert result.tolist() == np.asarray(index).tolist()


def test_write_reference(tmp_path: Path) -> None:
    result = reference_coco(_coco(tmp_path / "data"), tmp_path / "work", min_df=2)
    written = write_reference(result, tmp_path / "out")
    names = sorted(path.name for path in written)
    assert names == [
        "img_keyword_ind_coco_sk_2.npy",
        "img_keyword_rec_coco_sk_2.npy",
        "vocabulary.txt",
    ]
    assert np.load(tmp_path / "out" / "img_keyword_rec_coco_sk_2.npy").tolist() == COCO_PAIRS
    assert (tmp_path / "out" / "vocabulary.txt").read_text(encoding="utf-8") == "car\nred\nroad\n"
